"""GFLOP/s of decode-shaped GEMMs on this CPU: MKL, oneDNN prepacked, fbgemm fp16 and int8.

Usage: .venv/bin/python bench/decode_gemms.py [--threads 2] [--rows 16,64]

The shapes are one decode step's linears of Qwen2-0.5B (hidden 896) and SmolLM2-135M
(hidden 576): q/k/v packed, o, gate/up packed, down, and the vocabulary head. Each form
is what the lean decode step can call (rollout/cpu_gemm.py); "bf16" is F.linear on bf16
tensors (what rollout.autocast = bfloat16 runs). Best of 3 timed batches of >= 0.3 s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hw_bound import best_time  # noqa: E402

from mathrl.rollout.cpu_gemm import Fp16Linear, Int8Linear, PackedLinear  # noqa: E402

SHAPES = {  # name: (N, K) of y = x @ W.T, W (N, K)
    "0.5B qkv": (1152, 896),
    "0.5B o": (896, 896),
    "0.5B gate_up": (9728, 896),
    "0.5B down": (896, 4864),
    "0.5B head": (151936, 896),
    "135M qkv": (960, 576),
    "135M gate_up": (3072, 576),
    "135M down": (576, 1536),
    "135M head": (49152, 576),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="16,64")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    forms = ("mkl", "onednn", "fp16", "int8", "bf16")
    print(f"| rows | shape (N x K) | {' | '.join(forms)} |")
    print(f"|---|---|{'---|' * len(forms)}")
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n, k) in SHAPES.items():
            w, x = torch.randn(n, k) * 0.02, torch.randn(rows, k)
            calls = {
                "mkl": lambda w=w, x=x: F.linear(x, w),
                "onednn": lambda p=PackedLinear(w, None, rows), x=x: p(x),
                "fp16": lambda p=Fp16Linear(w), x=x: p(x),
                "int8": lambda p=Int8Linear(w), x=x: p(x),
                "bf16": lambda w=w.bfloat16(), x=x.bfloat16(): F.linear(x, w),
            }
            rates = [2 * rows * n * k / best_time(calls[f], 3) / 1e9 for f in forms]
            print(
                f"| {rows} | {name} ({n} x {k}) | " + " | ".join(f"{r:.0f}" for r in rates) + " |"
            )


if __name__ == "__main__":
    main()
