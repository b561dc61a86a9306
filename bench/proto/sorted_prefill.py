# ruff: noqa  (throwaway prototypes: evidence for proposed src changes, not project code)
"""Prototype: HFEngine chunks taken by prompt length vs in the caller's order.

Usage: MATHRL_GSM8K=DIR HF_HUB_OFFLINE=1 .venv/bin/python bench/proto/sorted_prefill.py [PROMPTS] [BATCH] [NEW] [RUNS]

SmolLM2-135M-Instruct on the first PROMPTS GSM8K test questions (chat template, file
order), `eval`-style: one greedy sample each, BATCH rows per chunk, NEW tokens (EOS
ignored, so both orders decode the same number of tokens). Prints prefill / decode / wall
seconds per order, interleaved run by run, medians of RUNS, and the share of real tokens
in the padded prefill.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from mathrl.models.loading import load_model
from mathrl.rollout import hf_engine, sampler
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.types import SamplingParams

count = int(sys.argv[1]) if len(sys.argv) > 1 else 64
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 16
new = int(sys.argv[3]) if len(sys.argv) > 3 else 32
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
torch.set_num_threads(2)
model, tok = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
model.eval()
rows = [json.loads(l) for l in open(Path(os.environ["MATHRL_GSM8K"]) / "test.jsonl")][:count]
prompts = [
    tok(
        tok.apply_chat_template(
            [{"role": "user", "content": r["question"]}], tokenize=False, add_generation_prompt=True
        )
    ).input_ids
    for r in rows
]
in_order = lambda lengths, per: [
    list(range(len(lengths)))[i : i + per] for i in range(0, len(lengths), per)
]
sorted_chunks = sampler.prompt_chunks
real = sum(map(len, prompts))
for name, fn in (("file order", in_order), ("by length", sorted_chunks)):
    padded = sum(
        max(len(prompts[i]) for i in c) * len(c) for c in fn([len(p) for p in prompts], batch)
    )
    print(f"{name}: {real / padded:.0%} of {padded} padded prefill tokens are real")
sampling = SamplingParams(n=1, max_new_tokens=new, temperature=0.0, ignore_eos=True)
times = {"file order": [], "by length": []}
HFEngine(model, tok, batch_size=batch).generate(prompts[:2], sampling)  # warm-up
for run in range(runs):
    for name, fn in (("file order", in_order), ("by length", sorted_chunks)):
        hf_engine.prompt_chunks = fn
        t0 = time.perf_counter()
        res = HFEngine(model, tok, batch_size=batch).generate(prompts, sampling)
        wall = time.perf_counter() - t0
        times[name].append((res.timing["prefill_s"], res.timing["decode_s"], wall))
        print(
            f"run {run} {name}: prefill {res.timing['prefill_s']:.2f} s, decode {res.timing['decode_s']:.2f} s, wall {wall:.2f} s",
            flush=True,
        )
for name, t in times.items():
    med = [statistics.median(x[k] for x in t) for k in range(3)]
    print(f"{name}: medians prefill {med[0]:.2f} s, decode {med[1]:.2f} s, wall {med[2]:.2f} s")
