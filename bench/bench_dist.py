"""Data parallelism on this machine: 1 rank x 2 threads against 2 ranks x 1 thread (gloo).

Usage: .venv/bin/python bench/bench_dist.py [--steps 6 --runs 2]   (make bench-dist)

Workload: Countdown, a scratch Qwen2-style model (hidden 256, 4 layers, vocab 2048), 8 prompts
x 8 samples x 64 tokens (EOS ignored: fixed length), GRPO, no SFT warm-up, no eval. Both
layouts run the same global batch (2 ranks: 4 prompts each). Per layout: the median step
time over steps 2..N (step 1 pays for warm-up), rollout tokens per second of step time, and
the communication share: time in collectives / step time on rank 0 (it includes waiting for
the slower rank, so it is an upper bound on what the wire costs). The layouts alternate
run by run so machine load hits both alike. On 2 CPU cores there is no target: the figure
shows the overhead multi-GPU users pay. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = """
seed = 0
[model]
path = "scratch"
[model.scratch]
hidden = 256
layers = 4
heads = 4
vocab_size = 2048
max_position = 512
[task]
name = "countdown"
[warmup]
steps = 0
min_positive = 0
[rollout]
max_new_tokens = 64
batch_size = 64
ignore_eos = true
[train]
steps = {steps}
prompts_per_step = 8
group_size = 8
lr = 1e-5
micro_batch_size = 16
[eval]
every = 0
[checkpoint]
every = 0
[log]
quiet = true
"""


def run(layout: str, steps: int, tmp: Path, i: int) -> dict[str, float]:
    """One training run; median step time, tokens/s and comm share of steps 2..N."""
    cfg = tmp / "dist.toml"
    cfg.write_text(CONFIG.format(steps=steps))
    out = tmp / f"{layout}-{i}"
    threads, nproc = (2, 1) if layout == "1x2" else (1, 2)
    cmd = [sys.executable, "-m", "mathrl", "train", "-c", str(cfg), "--out", str(out)]
    cmd += ["--set", f"model.threads={threads}", "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{layout} failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r][1:]
    step = statistics.median(r["time/step_s"] for r in rows)
    tokens = 8 * 8 * 64
    comm = statistics.median(r.get("time/comm_s", 0.0) / r["time/step_s"] for r in rows)
    return {"step_s": step, "tokens_per_s": tokens / step, "comm_share": comm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_dist_"))
    results: dict[str, list[dict[str, float]]] = {"1x2": [], "2x1": []}
    for i in range(args.runs):
        order = ["1x2", "2x1"] if i % 2 == 0 else ["2x1", "1x2"]
        for layout in order:
            results[layout].append(run(layout, args.steps, tmp, i))
    print(f"8 prompts x 8 samples x 64 tokens, {args.steps} steps, {args.runs} runs each")
    print(f"{'ranks x threads':<16} {'step s':>8} {'tokens/s':>9} {'comm share':>11}")
    summary = {}
    for layout, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        summary[layout] = med
        print(
            f"{layout:<16} {med['step_s']:>8.2f} {med['tokens_per_s']:>9.0f} "
            f"{med['comm_share']:>10.1%}"
        )
    ratio = summary["2x1"]["tokens_per_s"] / summary["1x2"]["tokens_per_s"]
    print(f"2 ranks / 1 rank tokens/s: {ratio:.2f}x")
    print(json.dumps({"runs": results, "median": summary, "ratio_2x1_over_1x2": ratio}))


if __name__ == "__main__":
    main()
