#!/usr/bin/env bash
# Creates .venv and installs gptlab with its test tools; does nothing when they are already current.
# torch is pinned to the CPU build this project's machines carry; on a GPU machine, install your own
# CUDA build of torch first (or set GPTLAB_TORCH="torch" to take whatever pip resolves).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${GPTLAB_TORCH:-torch==2.13.0}
stamp=.venv/.gptlab-installed
wanted="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
# The book's own GPTModel, used by the tests as the reference gptlab must match. Its declared dependencies
# (TensorFlow, JupyterLab) are not needed for the model code, hence --no-deps.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llms-from-scratch==1.0.19
echo "$wanted" > "$stamp"
