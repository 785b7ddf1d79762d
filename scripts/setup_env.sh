#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install DeepRegistrationLib into it.
# Usage: scripts/setup_env.sh [extra]   e.g. "test" installs the test extras too.
# torch is installed first, pinned to 2.13.0 (a CPU build that these machines have on disk; on other
# machines pip downloads it from PyPI). Any torch >= 2.1 works with the library.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
if [ -n "${1:-}" ]; then
  .venv/bin/python -m pip install --quiet -e ".[$1]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
