#!/usr/bin/env bash
# Build llama.cpp's own server, `llama-server`, into the venv (next to its python, where the `llama_server` mode
# looks first). Its source is the llama.cpp inside the pinned llama-cpp-python sdist: the same llama.cpp the Python
# bindings run, fetched from the package registry like everything else. It decodes several requests together, which
# scoring uses (`benchmark_scores.server_parallel`). About 5 minutes on 2 cores; a stamp keyed by the pin and this
# script skips it when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${WEBDANCER_VENV:-.venv}"
target="$VENV/bin/llama-server"
version="$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml | cut -d= -f3)"
stamp="$VENV/.llama-server-stamp"
want="$( (echo "$version"; cat "$0") | sha256sum | cut -d' ' -f1)"
if [ -x "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "[llama-server] ready: $target"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "[llama-server] building llama.cpp's server from llama-cpp-python $version (about 5 minutes on 2 cores)"
"$VENV/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
# cmake from the system, else PyPI's wheel in the venv (pip's own llama-cpp-python build fetches one the same way).
command -v cmake >/dev/null || "$VENV/bin/pip" install -q cmake
PATH="$(cd "$VENV/bin" && pwd):$PATH"
# As in bootstrap.sh: for this CPU, without the AMX kernels that crash on VMs reporting AMX. Static, so the binary
# needs no library of the build; no HTTPS (it serves 127.0.0.1 and downloads nothing).
no_amx=""
[ "$(uname -m)" = x86_64 ] && no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$work/llama_cpp_python-$version/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" >"$work/cmake.log" 2>&1 || {
  tail -20 "$work/cmake.log"
  exit 1
}
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log"
  exit 1
}
install -m 755 "$work/build/bin/llama-server" "$target.partial"
"$target.partial" --version >/dev/null 2>&1  # it runs on this CPU
mv "$target.partial" "$target"
echo "$want" >"$stamp"
echo "[llama-server] ready: $target"
