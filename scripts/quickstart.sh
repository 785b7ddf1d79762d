#!/usr/bin/env bash
# Quick start: set up .venv and run the main job on the embedded default data (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/deepreg demo --output "${1:-demo_output}"
