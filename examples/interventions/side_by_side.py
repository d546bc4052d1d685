"""The seed's GPT-2 small table beside this study's results.json, as Markdown (docs/reproduction.md).

    python examples/interventions/side_by_side.py examples/interventions/results.json

Every figure on the right comes from results.json (`gptlab experiment report --format json`); the seed's
figures are their published table (GPT-2 small, 3.26B FineWeb tokens, 8xA100), typed in below.
"""

from __future__ import annotations

import json
import sys

# variant -> (the seed's test loss, its improvement over their baseline 3.692; positive is better)
SEED = {
    "baseline": (3.692, None),
    "lr-schedule": (3.602, 0.090),
    "no-dropout": (3.641, 0.051),
    "weight-decay-gpt2": (3.643, 0.049),
    "qkv-bias": (3.669, 0.023),
    "gradient-clipping": (3.678, 0.014),
    "no-amp": (3.679, 0.013),
    "weight-decay-cerebras": (3.867, -0.175),
    "weight-tying": (3.874, -0.182),
}


def direction(improvement: float | None) -> str:
    return "-" if improvement is None else "better" if improvement > 0 else "worse"


def main(path: str) -> None:
    results = json.load(open(path, encoding="utf-8"))
    rows = {row["run"]: row for row in results["rows"]}
    print(
        "| intervention | seed: test loss | seed: improvement | here: test loss | here: improvement (95% CI) | here: verdict | directions |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (loss, improvement) in sorted(SEED.items(), key=lambda item: item[1][0]):
        row = rows.get(name)
        if row is None:
            print(f"| {name} | {loss:.3f} | {improvement:+.3f} | not run | | | |")
            continue
        here = row["improvement"]
        ci = row["improvement_ci"]
        interval = f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ""
        if name == "baseline":
            agree = "-"
        elif row["noise"] == "within noise":
            agree = f"seed {direction(improvement)}; here within noise"
        else:
            agree = "agree" if direction(here) == direction(improvement) else "disagree"
        print(
            f"| {name} | {loss:.3f} | {'-' if improvement is None else f'{improvement:+.3f}'} | "
            f"{row['test_loss']:.4f} | {'-' if here is None else f'{here:+.4f}'}{interval} | {row['noise']} | {agree} |"
        )
    for name, row in rows.items():
        if name not in SEED:
            print(
                f"| {name} (not in the seed's table) | - | - | {row['test_loss']:.4f} | {row['improvement']:+.4f} | "
                f"{row['noise']} | - |"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results.json")
