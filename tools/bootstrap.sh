#!/usr/bin/env bash
# Create .venv (Python >= 3.12) with megaindex and its test dependencies; idempotent.
# Usage: bash tools/bootstrap.sh            (CPU/dev machine)
#        EXTRAS=test,gpu bash tools/bootstrap.sh   (GPU node with CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local c
  for c in "${PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for c in "$(pyenv root)"/versions/3.1[2-9]*/bin/python3; do
      [ -x "$c" ] && { echo "$c"; return 0; }
    done
  fi
  return 1
}

extras="${EXTRAS:-test}"
stamp=".venv/.megaindex-stamp"
want="$(cat setup.py | sha1sum | cut -c1-16)-$extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
py="$(find_python)" || { echo "bootstrap: need Python >= 3.12 (megatron-core 0.19 requires it); set PYTHON=/path/to/python3.12" >&2; exit 1; }
echo "bootstrap: creating .venv with $py ($("$py" --version))"
"$py" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first and pinned: a bare `torch` requirement would pull a newer multi-GB CUDA build.
.venv/bin/pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/pip install -q -e ".[$extras]"
echo "$want" > "$stamp"
echo "bootstrap: ready (.venv/bin/megaindex, .venv/bin/python -m pytest)"
