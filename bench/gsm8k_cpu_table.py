"""The GSM8K CPU recipe's table and plot from bench/gsm8k_cpu.sh's evals.

    python bench/gsm8k_cpu_table.py runs/gsm8k_cpu [--plot docs/gsm8k_cpu.png]

Reads OUT/eval_{base,warmup,rl,sft}/eval_examples.jsonl (the same seeded test problems,
greedy) and prints a Markdown table: strict and lenient pass@1 and format compliance with
95 % CIs, mean completion length, eval wall time; then paired differences (the same
problems, so the CI of a difference is that of the per-problem differences).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mathrl.eval.metrics import mean_ci
from mathrl.io import read_jsonl

MODELS = {
    "base": "SmolLM2-135M-Instruct",
    "warmup": "+ 40 SFT steps (the recipe's warm-up)",
    "rl": "+ GRPO (the recipe: `mathrl train -c gsm8k/cpu`)",
    "sft": "+ SFT for GRPO's time instead (control)",
}
KEYS = {"correct": "strict pass@1", "correct_lenient": "lenient pass@1", "format_ok": "format"}


def pct(mean: float, lo: float, hi: float) -> str:
    return f"{100 * mean:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()
    rows: dict[str, dict[str, list[float]]] = {}
    walls: dict[str, float] = {}
    ids: list[str] | None = None
    for name in MODELS:
        d = args.out / f"eval_{name}"
        if not (d / "eval_examples.jsonl").is_file():
            continue
        recs = read_jsonl(d / "eval_examples.jsonl")
        if ids is None:
            ids = [r["prompt_id"] for r in recs]
        assert [r["prompt_id"] for r in recs] == ids, f"{name}: other problems"
        rows[name] = {k: [float(r["greedy"][k]) for r in recs] for k in KEYS}
        rows[name]["len"] = [float(r["greedy"]["n_tokens"]) for r in recs]
        walls[name] = json.loads((d / "eval_summary.json").read_text())["time_s"]
    n = len(ids or [])
    print(
        f"| model ({n} test problems, greedy) | "
        + " | ".join(KEYS.values())
        + " | mean length | eval wall |"
    )
    print("|---|" + "---|" * (len(KEYS) + 2))
    for name, cols in rows.items():
        cells = [pct(*mean_ci(cols[k], bounds=(0.0, 1.0))) for k in KEYS]
        mean_len = sum(cols["len"]) / len(cols["len"])
        print(
            f"| {MODELS[name]} | "
            + " | ".join(cells)
            + f" | {mean_len:.0f} tokens | {walls[name]:.0f} s |"
        )
    print()
    for a, b in (("warmup", "base"), ("rl", "warmup"), ("rl", "sft"), ("sft", "warmup")):
        if a in rows and b in rows:
            for k in ("correct", "correct_lenient"):
                diff = [x - y for x, y in zip(rows[a][k], rows[b][k], strict=True)]
                m, lo, hi = mean_ci(diff)
                print(
                    f"- {a} - {b}, {KEYS[k]}: {100 * m:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                )
    if args.plot is not None:
        plot(rows, args.plot, n)


def plot(rows: dict[str, dict[str, list[float]]], path: Path, n: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    width = 0.8 / max(1, len(rows))
    for i, (name, cols) in enumerate(rows.items()):
        stats = [mean_ci(cols[k], bounds=(0.0, 1.0)) for k in KEYS]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(KEYS))]
        means = [100 * m for m, _, _ in stats]
        errs = [[100 * (m - lo) for m, lo, _ in stats], [100 * (hi - m) for m, _, hi in stats]]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=MODELS[name])
    ax.set_xticks(range(len(KEYS)), list(KEYS.values()))
    ax.set_ylabel("% of test problems (95 % CI)")
    ax.set_title(f"GSM8K test, {n} problems, greedy: SmolLM2-135M-Instruct on 2 CPU cores")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
