"""Peak CPU memory of one train forward + backward, with and without gradient checkpointing.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_memory.py [--models smollm2,qwen2-0.5b]
           [--batch 8] [--tokens 512]

Each (model, checkpointing) pair runs in its own process, so its peak resident memory
(ru_maxrss) is its own: `peak_MiB` is the peak minus the resident memory after the model
loaded (activations, gradients, the optimizer-free backward's buffers). The loss is the
token-mean negative log-likelihood of random ids (fp32 logits, as the trainer's log-probs).
smollm2 = SmolLM2-135M-Instruct (real weights, offline); qwen2-0.5b = Qwen2-0.5B's shape
with random weights (bench_decode.py's).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def child(model_name: str, ckpt: bool, batch: int, tokens: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_decode import build

    from mathrl.policy import enable_gradient_checkpointing

    torch.set_num_threads(2)
    model, _ = build(model_name)
    if ckpt:
        enable_gradient_checkpointing(model)
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(5, 49_000, (batch, tokens))
    loaded = _rss_mib()
    t0 = time.perf_counter()
    logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])
    (-logp.mean()).backward()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "model": model_name,
        "checkpointing": ckpt,
        "batch": batch,
        "tokens": tokens,
        "loaded_MiB": round(loaded),
        "peak_MiB": round(peak - loaded),
        "fwd_bwd_s": round(wall, 2),
    }


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,qwen2-0.5b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, ckpt = args.child.split(":")
        print(json.dumps(child(name, ckpt == "1", args.batch, args.tokens)))
        return
    for name in args.models.split(","):
        for ckpt in ("0", "1"):
            cmd = [sys.executable, __file__, "--child", f"{name}:{ckpt}"]
            cmd += ["--batch", str(args.batch), "--tokens", str(args.tokens)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
