"""Peak memory and time of the training head: one (N, V) pass against chunks.

    python bench/bench_logprob_chunks.py                       # SmolLM2-shaped head
    python bench/bench_logprob_chunks.py --hidden 896 --vocab 151936 --tokens 2048

Each setting runs in its own process (ru_maxrss is a process's peak): N random last hidden
states through a Linear(H, V) head, log-probs and entropies (models.logprobs.head_scores),
backward of their sum. Reports the peak resident memory above the process's baseline
(model and inputs allocated, before the pass) and the median of --repeats pass times.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def one(hidden: int, vocab: int, tokens: int, chunk: int, repeats: int) -> dict:
    import torch

    from mathrl.models.logprobs import head_scores

    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    states = torch.randn(tokens, hidden, requires_grad=True)
    ids = torch.randint(0, vocab, (tokens,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lp, ent = head_scores(head, states, ids, chunk_tokens=chunk, entropy_grad=True)
        (lp.sum() + 0.01 * ent.sum()).backward()
        times.append(time.perf_counter() - t0)
        head.zero_grad(set_to_none=True)
        states.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"chunk": chunk, "peak_mib": (peak - base) / 1024, "median_s": statistics.median(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 1024, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.hidden, args.vocab, args.tokens, args.one, args.repeats)))
        return
    logits_mib = args.tokens * args.vocab * 4 / 2**20
    print(f"H={args.hidden} V={args.vocab} N={args.tokens}: fp32 logits {logits_mib:.0f} MiB")
    print("| chunk_tokens | peak above baseline (MiB) | fwd+bwd median (s) |\n|---|---|---|")
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--one", str(chunk)]
        cmd += ["--hidden", str(args.hidden), "--vocab", str(args.vocab)]
        cmd += ["--tokens", str(args.tokens), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        label = "0 (one pass)" if chunk == 0 else str(chunk)
        print(f"| {label} | {r['peak_mib']:.0f} | {r['median_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
