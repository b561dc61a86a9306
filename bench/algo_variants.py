"""The algorithm-variant table (BENCHMARKS.md, "Algorithm variants"): one recipe trained
with GRPO as it is and with each variant, one run at a time, then one table.

    python bench/algo_variants.py --out runs/variants --seeds 0 1
    python bench/algo_variants.py --out runs/variants --table-only   # re-read finished runs
    python bench/algo_variants.py --config my_recipe.toml --only grpo cispo_mu2
    python bench/algo_variants.py --config skills/cpu --extra model.path=WARMED \
        --eval add task.mixture=[] task.name=arithmetic data.arithmetic_kind=add \
        --eval word task.mixture=[] task.name=arithmetic data.arithmetic_kind=word

--config names the recipe (a preset name or a TOML file; default the quickstart), so the
same table runs on the real-model recipe. Each run is `mathrl train --config C --out
OUT/<variant>_s<seed> --set seed=<seed> --set ...`; a finished run (summary.json present)
is not run again. The table: held-out greedy pass@1 after RL with its 95 % CI (from
summary.json), and the mean completion length, policy entropy, truncated share and
masked share over the last LAST steps (metrics.jsonl).

Each --eval NAME SET... adds a column: `mathrl eval --config C --model RUN --set SET...`
of every finished run (greedy, strict and lenient, 95 % CI) into RUN/eval_NAME, skipped
when done. A recipe whose training run evaluates nothing (a task mixture: held-out
accuracy per task) gets its table from these.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

LAST = 100
"""Steps at the end of a run over which the training metrics are averaged."""

VARIANTS: dict[str, list[str]] = {
    "grpo": [],
    "mask_truncated": ["train.mask_truncated=true"],
    "overlong": ['task.rewards=[{fn="task"},{fn="overlong"}]', "task.overlong_buffer=4"],
    "top_entropy_20": ["train.top_entropy_quantile=0.2"],
    "reinforce_pp_baseline": ["train.algorithm=reinforce_pp_baseline"],
    # with mu = 1 every update is on-policy (ratio 1), where cispo's gradient is
    # ppo_clip's exactly: two updates per batch let the ratio move, against GRPO at mu = 2
    "cispo_mu2": ["train.policy_loss=cispo", "train.mu=2", "train.clip_eps_high=4.0"],
    "grpo_mu2": ["train.mu=2"],
}
"""Variant name -> --set overrides on top of the recipe (overlong_buffer: a quarter of
the quickstart's 16 new tokens; set it for another recipe with --extra)."""


def run_variant(config: str, out: Path, name: str, seed: int, extra: list[str]) -> Path:
    """Train one variant at one seed (skipped when its summary exists); its run dir."""
    run_dir = out / f"{name}_s{seed}"
    if (run_dir / "summary.json").exists():
        return run_dir
    sets = [f"seed={seed}", *VARIANTS[name], *extra]
    cmd = [sys.executable, "-m", "mathrl", "train", "--config", config, "--out", str(run_dir)]
    cmd += ["--quiet"] + [arg for s in sets for arg in ("--set", s)]
    t0 = time.time()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_logged(cmd, run_dir.with_suffix(".log"))
    print(f"{name} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    return run_dir


def run_logged(cmd: list[str], log: Path) -> None:
    """Run cmd at nice 19 with its output in log; a failure stops the table."""
    with log.open("w") as f:
        subprocess.run(["nice", "-n", "19", *cmd], stdout=f, stderr=subprocess.STDOUT, check=True)


def eval_run(config: str, run_dir: Path, name: str, sets: list[str], limit: int) -> dict:
    """Greedy pass@1 (strict, lenient, 95 % CI) of a finished run under `sets`, evaluated
    once into run_dir/eval_<name>."""
    out = run_dir / f"eval_{name}"
    if not (out / "eval_summary.json").exists():
        cmd = [sys.executable, "-m", "mathrl", "eval", "--config", config, "--model"]
        cmd += [str(run_dir), "--out", str(out), "--limit", str(limit), "--quiet"]
        cmd += [arg for s in sets for arg in ("--set", s)]
        run_logged(cmd, out.with_suffix(".log"))
    summary = json.loads((out / "eval_summary.json").read_text())
    return {
        "strict": summary["pass@1"],
        "ci": (summary["pass@1_lo"], summary["pass@1_hi"]),
        "lenient": summary["pass@1_lenient"],
    }


def mean_of(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else None


def row_of(run_dir: Path) -> dict:
    """One table row from a finished run's summary.json and metrics.jsonl."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    train = [m for m in metrics if "reward/mean" in m]
    last = [m for m in train if m["step"] > summary["steps"] - LAST]
    return {
        "run": run_dir.name,
        "before": summary.get("accuracy_before_rl"),
        "after": summary.get("accuracy_after_rl"),
        "ci": summary.get("accuracy_after_rl_ci95"),
        "evals": {},
        "len": mean_of(last, "rollout/len_mean"),
        "entropy": mean_of(last, "policy/entropy"),
        "truncated": mean_of(last, "rollout/clipped_frac"),
        "masked": mean_of(last, "policy/entropy_masked_frac"),
        "wall_s": summary["wall_s"],
    }


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def pct(x: float | None, ci: tuple[float, float] | None = None) -> str:
    if x is None:
        return "-"
    return f"{x:.1%}" + (f" [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else "")


def table(rows: list[dict], evals: list[str]) -> str:
    cols = ["run", "pass@1 before", "pass@1 after [95 % CI]"]
    cols += [f"{name} strict [95 % CI] / lenient" for name in evals]
    cols += ["len (last 100)", "entropy", "truncated", "entropy-masked", "wall s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["run"], pct(r["before"]), pct(r["after"], r["ci"])]
        for name in evals:
            e = r["evals"].get(name)
            cells.append(f"{pct(e['strict'], e['ci'])} / {pct(e['lenient'])}" if e else "-")
        cells += [fmt(r["len"], ".2f"), fmt(r["entropy"], ".3f"), fmt(r["truncated"], ".3f")]
        cells += [fmt(r["masked"], ".2f"), f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="quickstart", help="recipe: preset name or TOML file")
    ap.add_argument("--out", type=Path, default=Path("runs/variants"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--extra", nargs="*", default=[], help="--set overrides for every run")
    ap.add_argument(
        "--eval",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "SET"),
        help="a held-out column: NAME then --set overrides for `mathrl eval` (repeatable)",
    )
    ap.add_argument("--limit", type=int, default=500, help="problems per --eval column")
    ap.add_argument("--table-only", action="store_true", help="only read finished runs")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    for seed in args.seeds:  # seed-major: a second seed only once every variant has one
        for name in args.only:
            run_dir = args.out / f"{name}_s{seed}"
            if not args.table_only:
                run_variant(args.config, args.out, name, seed, args.extra)
            if (run_dir / "summary.json").exists():
                row = row_of(run_dir)
                for name, *sets in args.eval:
                    done = (run_dir / f"eval_{name}" / "eval_summary.json").exists()
                    if done or not args.table_only:
                        row["evals"][name] = eval_run(args.config, run_dir, name, sets, args.limit)
                rows.append(row)
    print(table(sorted(rows, key=lambda r: r["run"]), [name for name, *_ in args.eval]))


if __name__ == "__main__":
    main()
