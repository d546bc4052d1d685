#!/usr/bin/env bash
# Set up (first time only), then run the whole test suite. Extra arguments go to pytest.
# Two workers by default (GPTLAB_TEST_WORKERS; 0 runs in this process): most tests spend their time starting
# Python processes, waiting on them and on files, so a 2-core machine runs two at once at nearly twice the pace.
# Whole files go to one worker (--dist loadfile), so a module's trained fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${GPTLAB_TEST_WORKERS:-2}" --dist loadfile "$@"
