#!/usr/bin/env bash
# Set up .venv with the test extras and run the whole test suite (see README). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test
.venv/bin/python -m pytest Testing/Python "$@"
