# ruff: noqa  (throwaway prototypes: evidence for proposed src changes, not project code)
"""Prototype: torch.compile of the lean decode step (issue 18's "compiled decode step").

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/proto/compiled_step.py [smollm2|qwen2-0.5b|tiny] [ROWS] [STEPS]

tiny: bench_grpo.py's tiny model (bench/.cache, built by a bench_grpo run or --spec-only).

Times LeanDecoder._step per call after a prefill: eager on oneDNN-packed weights (the
default), eager on plain weights (MKL), and torch.compile(dynamic=True) of the step on plain
weights (inductor cannot trace oneDNN's opaque packed tensors, and freezing would bake the
weights in as constants: recompiled after every optimizer step). Reports compile time
(first call) and the per-step time over STEPS steps with a growing cache.
"""

import sys
import time

import torch

sys.path.insert(0, "bench")
from bench_decode import build, prompts_for
from mathrl.models.logprobs import left_pad, cache_kwarg, output_cache, position_ids_from_mask
from mathrl.rollout import cpu_gemm
from mathrl.rollout.lean_decode import LeanDecoder

name = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 16
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 64
torch.set_num_threads(2)
if name == "tiny":
    from pathlib import Path

    from mathrl.models.loading import load_model

    tiny = sorted(Path("bench/.cache").glob("tiny-qwen2-*"))[0]
    model, tok = load_model(str(tiny), dtype="float32", device="cpu")
    model.eval()
else:
    model, tok = build(name)
prompts = prompts_for(tok, rows)
ids, mask = left_pad(prompts, 0, torch.device("cpu"))


def decoder(packed: bool) -> LeanDecoder:
    real = cpu_gemm.packed_linear_available
    if not packed:
        cpu_gemm.packed_linear_available = lambda: False
    try:
        dec = LeanDecoder(model)
    finally:
        cpu_gemm.packed_linear_available = real
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=True,
        )
    dec.load_cache(output_cache(out), mask, rows, steps + 8)
    dec.set_rows(list(range(rows)))
    return dec


def run(dec: LeanDecoder, step_fn) -> tuple[float, list[float]]:
    pos = position_ids_from_mask(mask)[:, -1] + 1
    toks = torch.zeros(rows, dtype=torch.long)
    times = []
    with torch.inference_mode():
        for i in range(steps):
            t = time.perf_counter()
            logits = step_fn(toks, pos + i)
            times.append(time.perf_counter() - t)
            toks = logits.argmax(-1)
    return times[0], times


results = {}
for label in ("packed", "mkl", "compiled"):
    dec = decoder(packed=(label == "packed"))
    fn = dec._step
    if label == "compiled":
        # the cache length enters as a tensor's size, so dynamic=True makes it symbolic
        # (an int attribute would be guarded on: one recompile per step)
        def sized(tokens, positions, length, dec=dec):
            dec.used = length.shape[0]
            return dec._step(tokens, positions)

        compiled = torch.compile(sized, dynamic=True)

        def fn(tokens, positions, dec=dec, compiled=compiled):
            used = dec.used
            out = compiled(tokens, positions, torch.empty(used))
            dec.used = used + 1
            return out

    first, times = run(dec, fn)
    med = sorted(times[1:])[len(times[1:]) // 2]
    results[label] = (first, med)
    print(
        f"{name} rows {rows}: {label:9s} first call {first:7.2f} s, median step {med * 1e3:7.1f} ms",
        flush=True,
    )
