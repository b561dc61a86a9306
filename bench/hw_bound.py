"""Hardware bound of a GRPO step on this machine: peak GEMM GFLOP/s and copy bandwidth.

Usage: .venv/bin/python bench/hw_bound.py [--threads 2] [--json out.json]

GEMM: fp32 torch.matmul at a few square sizes and at the shapes of the tiny model's
training matmuls; the best rate is the peak. Copy: `dst.copy_(src)` of a 256 MiB fp32
tensor, counting bytes read + written. A step's bound (`step_bound`):
- generation: max(2*N*(prompt + completion tokens) / peak, decode steps * 4N bytes / bw):
  every decode step must at least read the weights once (batched rows share the read);
- training: 6*N*(prompt + completion tokens of all rows) / peak, + 2*N*tokens for the
  reference model's forward when kl_coef > 0.
N counts each parameter once (a tied embedding is one lm_head matmul per token).
Attention FLOPs and the KV-cache traffic are left out, so the bound is optimistic.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SQUARE = (256, 512, 1024, 2048)
# (M, K, N) of the tiny model's training matmuls: tokens x hidden @ hidden x 4*hidden, ...
SHAPES = ((16384, 256, 1024), (16384, 1024, 256), (16384, 256, 2048))


def best_time(fn, reps: int, min_s: float = 0.3) -> float:
    """Best per-call time of fn over `reps` repeats of a batch lasting >= min_s."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        fn()
        n += 1
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def gemm_gflops(m: int, k: int, n: int, reps: int = 3) -> float:
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    dt = best_time(lambda: torch.matmul(a, b, out=out), reps)
    return 2 * m * k * n / dt / 1e9


def copy_gbps(mib: int = 256, reps: int = 5) -> float:
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dt = best_time(lambda: dst.copy_(src), reps, min_s=0.2)
    return 2 * src.numel() * 4 / dt / 1e9


def measure(threads: int = 2) -> dict:
    """Peak GEMM GFLOP/s and copy GB/s with `threads` torch threads."""
    torch.set_num_threads(threads)
    gemm = {f"{s}x{s}x{s}": gemm_gflops(s, s, s) for s in SQUARE}
    gemm.update({f"{m}x{k}x{n}": gemm_gflops(m, k, n) for m, k, n in SHAPES})
    return {
        "threads": threads,
        "gemm_gflops": gemm,
        "peak_gflops": max(gemm.values()),
        "copy_gbps": copy_gbps(),
    }


def step_bound(
    hw: dict,
    params: int,
    prompt_tokens: list[int],
    group_size: int,
    completion_len: int,
    kl: bool,
) -> dict:
    """Lower bound (s) of one GRPO step: prompts' lengths, group size, fixed completion length."""
    peak = hw["peak_gflops"] * 1e9
    bw = hw["copy_gbps"] * 1e9
    rows = len(prompt_tokens) * group_size
    gen_tokens = sum(prompt_tokens) + rows * completion_len
    gen_flops = 2 * params * gen_tokens
    gen_bytes = completion_len * 4 * params  # one weight read per decode step
    gen_s = max(gen_flops / peak, gen_bytes / bw)
    train_tokens = group_size * sum(prompt_tokens) + rows * completion_len
    train_flops = (6 + (2 if kl else 0)) * params * train_tokens
    train_s = train_flops / peak
    return {
        "generation_gflop": gen_flops / 1e9,
        "training_gflop": train_flops / 1e9,
        "generation_s": gen_s,
        "training_s": train_s,
        "step_s": gen_s + train_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    hw = measure(args.threads)
    for name, v in hw["gemm_gflops"].items():
        print(f"matmul {name:>18}: {v:7.1f} GFLOP/s")
    print(
        f"peak GEMM {hw['peak_gflops']:.1f} GFLOP/s, copy {hw['copy_gbps']:.1f} GB/s "
        f"({hw['threads']} threads)"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(hw, fh, indent=2)


if __name__ == "__main__":
    main()
