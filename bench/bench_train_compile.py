"""Does torch.compile pay for the training forward/backward on a CPU? (issue 31, train.compile)

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_train_compile.py [--steps 10]
           [--batch 64] [--tokens 48]

The quickstart's model (scratch Qwen2: hidden 128, 3 layers, 512 vocab) and micro-batch
shape (64 completions x 48 prompt+completion tokens, padded to one fixed shape, as a
bucketed train step would be): one forward + backward of the token-mean NLL per step,
eager vs `torch.compile(model, dynamic=False)` (inductor). Prints the compile seconds
(first step), the median step of each after that, and the steps needed to earn back
the compile.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from mathrl.models.scratch import build_scratch_model


def step(model, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])
    (-logp.mean()).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    texts = ["Use 3 5 7 to make 22: 3 * 5 + 7 = 22", "Use 2 9 4 to make 17: 2 * 4 + 9"] * 20
    path = build_scratch_model(
        Path(tempfile.mkdtemp()) / "m", texts, hidden=128, layers=3, vocab_size=512
    )
    eager = AutoModelForCausalLM.from_pretrained(path).train()
    compiled = torch.compile(AutoModelForCausalLM.from_pretrained(path).train(), dynamic=False)
    torch.manual_seed(0)
    ids = torch.randint(5, eager.config.vocab_size, (args.batch, args.tokens))
    first = step(compiled, ids)
    step(eager, ids)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(args.steps):  # interleaved: machine noise hits both alike
        times["eager"].append(step(eager, ids))
        times["compiled"].append(step(compiled, ids))
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(
        f"compile (first step) {first:.1f} s; step eager {e * 1e3:.1f} ms, compiled {c * 1e3:.1f} ms"
    )
    print(
        f"compiled / eager {c / e:.2f}; steps to earn back the compile: "
        f"{'never' if c >= e else f'{first / (e - c):.0f}'}"
    )


if __name__ == "__main__":
    main()
