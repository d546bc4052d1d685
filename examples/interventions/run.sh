#!/usr/bin/env bash
# The seed's intervention table (GPT-2 small on FineWeb, 8xA100), reproduced end to end at a size a 2-core CPU
# runs: a 2-layer, 64-wide GPT-2 on the embedded Brown Corpus. What it means and what it does not:
# docs/reproduction.md.
#
#   bash examples/interventions/run.sh              # the whole study: 5 seeds, 45 runs, then the stack of winners
#   SEEDS=3 bash examples/interventions/run.sh      # the first 3 seeds (what docs/reproduction.md publishes)
#   SEEDS=2 bash examples/interventions/run.sh      # a quick look; a later run without SEEDS keeps these runs
#
# Every step is restartable: run it again after a crash or Ctrl-C and it carries on where it stopped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bash "$root/scripts/setup.sh"                # the .venv with torch 2.13.0+cpu; a no-op when current
. "$root/.venv/bin/activate"
cd "$here"
seeds=(${SEEDS:+--seeds "$SEEDS"})
jobs="${JOBS:-2}"                            # runs at once; each gets cores/jobs threads (OMP_NUM_THREADS)

# 1. the data: the embedded Brown Corpus (no download), GPT-2 tokens, split 90/5/5 by document
[ -f data/meta.json ] || gptlab prepare brown data

# 2. baseline + eight interventions over the seeds, 2 at a time; then the interventions that were better beyond
#    noise are stacked (experiment.json: "stacks": {"winners": "winners"}), the choice recorded in
#    runs/winners/stack.json, and the stack trained on the same seeds
gptlab experiment plan experiment.json "${seeds[@]}"
time gptlab experiment run experiment.json --jobs "$jobs" --no-progress "${seeds[@]}"

# 3. the table: JSON (results.json, what docs/reproduction.md's table is read from), Markdown, charts and an
#    HTML page; --budget time adds the equal-time view (fp32 against bf16 autocast at the cheapest run's time)
gptlab experiment report experiment.json "${seeds[@]}" --budget time --format json > results.json
gptlab experiment report experiment.json "${seeds[@]}" --budget time --format markdown --charts charts \
    -o report.html > results.md

# 4. samples: "Every effort moves you" + 20 tokens, top-k 25, seed 1, from each variant's seed-1 run
for run in runs/*/seed-1; do
    [ -f "$run/summary.json" ] || continue
    printf '%s: ' "${run%/seed-1}"
    gptlab generate "$run" --seed 1 --json | python -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["text"]))'
done | tee samples.txt
