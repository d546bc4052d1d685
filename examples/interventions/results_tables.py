"""docs/reproduction.md's two tables, as Markdown, from results.json: this study's table, and the seed's GPT-2
small table beside it.

    python examples/interventions/results_tables.py examples/interventions/results.json

Every figure of this study comes from results.json (`gptlab experiment report --format json`); the seed's
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


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def study_table(rows: list[dict]) -> None:
    print(
        "| run | seeds | test loss | sd | improvement | improvement 95% CI | p (Holm) | verdict | time | tokens/s | cost |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ci = row["improvement_ci"]
        cells = [
            row["run"],
            str(row["seeds"]),
            f"{row['test_loss']:.4f}",
            "-" if row["sd"] is None else f"{row['sd']:.4f}",
            "-" if row["improvement"] is None else f"{row['improvement']:+.4f}",
            f"{ci[0]:+.4f} to {ci[1]:+.4f}" if ci else "-",
            "-" if row["p_holm"] is None else f"{row['p_holm']:.2g}",
            row["verdict"],
            clock(row["training_seconds"]),
            "-" if row["tokens_per_second"] is None else f"{row['tokens_per_second']:,.0f}",
            "-" if row["cost"] is None else f"${row['cost']:.4f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main(path: str) -> None:
    results = json.load(open(path, encoding="utf-8"))
    study_table(results["rows"])
    print()
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
        elif here == 0:
            agree = f"seed {direction(improvement)}; here exactly the baseline"
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
