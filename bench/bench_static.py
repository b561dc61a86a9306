"""Rollout decode on the GRPO benchmark's shape: lean step vs static step, eager and compiled.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_static.py [--runs 3] [--prompt-tokens 150]

A scratch Qwen2 of the tiny GRPO benchmark's size (hidden 256, 4 layers, 2,048 vocab,
random weights) samples 8 prompts x 8 completions x 128 tokens (temperature 1, EOS
ignored: fixed length) through HFEngine three ways: the lean step (the default),
`rollout.static_decode` (eager) and `rollout.compile = "default"` (inductor; the engine is
kept, as in training, so the warm-up call pays the compile). Prints the warm-up call's
compile seconds and each path's median call wall over `runs` calls, the paths interleaved
call by call so machine noise hits all alike, and the ratios to the lean step.
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
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.types import SamplingParams


class _Ids:
    """The engine's tokenizer needs: a pad id and a decode (the text is not used)."""

    pad_token_id = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(2)
    texts = ["Use 3 5 7 to make 22: 3 * 5 + 7 = 22", "Use 2 9 4 to make 17: 2 * 4 + 9"] * 20
    path = build_scratch_model(
        Path(tempfile.mkdtemp()) / "m", texts, hidden=256, layers=4, vocab_size=2048
    )
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    vocab = model.config.vocab_size
    prompts = [[5 + (i * 7 + j) % (vocab - 5) for j in range(args.prompt_tokens)] for i in range(8)]
    params = SamplingParams(n=8, max_new_tokens=128, temperature=1.0, ignore_eos=True)
    common = dict(batch_size=64, stop_token_ids=[1])
    engines = {
        "lean": HFEngine(model, _Ids(), **common),
        "static": HFEngine(model, _Ids(), static_decode=True, **common),
        "compiled": HFEngine(model, _Ids(), static_decode=True, compile="default", **common),
    }
    for name, engine in engines.items():  # warm-up; the compiled path compiles here
        result = engine.generate(prompts, params, seeds=list(range(8)))
        print(f"{name:8s} warm-up {result.timing['total_s']:6.2f} s, "
              f"compile {result.timing.get('compile_s', 0.0):5.1f} s")  # fmt: skip
    walls: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.runs):
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.generate(prompts, params, seeds=list(range(8)))
            walls[name].append(time.perf_counter() - t0)
    lean = statistics.median(walls["lean"])
    for name, values in walls.items():
        wall = statistics.median(values)
        print(f"{name:8s} median {wall:6.2f} s  x{wall / lean:.2f} lean  "
              f"({', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip


if __name__ == "__main__":
    main()
