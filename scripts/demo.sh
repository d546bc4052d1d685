#!/usr/bin/env bash
# Set up (first time only), then run the demo: prepare the embedded corpus, train a small GPT for a few
# minutes on the CPU, and print the summary, the test loss beside the unigram baseline, and a sample.
# Extra arguments go to `gptlab demo` (see `gptlab demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gptlab demo "$@"
