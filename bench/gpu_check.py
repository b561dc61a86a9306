"""One-shot GPU check of mathrl: environment ceilings, CUDA correctness, rollout speed, end to end.

Usage (bench/gpu_check.sh wraps this; run from the repo root with mathrl importable):

    python bench/gpu_check.py --device cuda --out OUT_DIR            # the full check (~5 min, H200)
    python bench/gpu_check.py --device cpu --quick --out /tmp/gpuchk # the same code paths, tiny

Steps (each in its own try: one failure does not hide the rest; PASS/FAIL per step):
  env      versions, device, bf16/fp32 GEMM TFLOP/s and device copy GB/s (roofline ceilings)
  correct  HFEngine (lean decode on and off) vs transformers: greedy tokens == model.generate,
           sampled log-probs == a full forward and == the trainer's completion_logprobs, lean ==
           reference, same seed == same samples; fp32 and under bf16 autocast (model.autocast)
  rollout  HFEngine vs model.generate completion tokens/s (tiny scratch model fp32; a
           Qwen2-0.5B-shaped model with random weights in bf16), batch 16 and 64
  decode   issue 31: a Qwen2-0.5B-shaped model (random weights, bf16 on CUDA) at batch 64 and
           256: model.generate vs the engine's lean step, its static step eager and compiled
           (--compile: cudagraphs on CUDA = torch.compile mode="reduce-overhead"), tok/s,
           compile seconds, static == lean tokens (greedy)
  memory   peak memory of one forward + backward of that shape with and without
           model.gradient_checkpointing (CUDA: max_memory_allocated; CPU: not measured)
  split    the GRPO step's time split (rollout / reward / train) of a short quickstart run
           with the static step compiled
  auto     the quickstart with the shipped precision defaults only (also part of e2e_more)
  e2e      `mathrl train` on configs/quickstart.toml (fewer steps) on the device in fp32, bf16
           autocast and the default dtype ('auto'), then `mathrl eval` on the fp32 run

Everything lands in OUT_DIR/gpu_check.json (rewritten after every check) and on stdout.
A global time budget (--budget-s) skips what would not fit instead of being killed mid-way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
T0 = time.perf_counter()
RESULTS: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "checks": {}}
OUT: Path = Path(".")
ARGS: argparse.Namespace


def elapsed() -> float:
    return time.perf_counter() - T0


def left() -> float:
    return ARGS.budget_s - elapsed()


def save() -> None:
    RESULTS["elapsed_s"] = round(elapsed(), 1)
    (OUT / "gpu_check.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def sync() -> None:
    if torch.cuda.is_available() and ARGS.device.startswith("cuda"):
        torch.cuda.synchronize()


def check(name: str, min_left_s: float = 0.0):
    """Decorator-ish runner: run fn, record PASS/FAIL/SKIP with its numbers and any error."""

    def run(fn, *a, **kw):
        entry: dict = {}
        RESULTS["checks"][name] = entry
        if left() < min_left_s:
            entry.update(status="SKIP", reason=f"time budget: {left():.0f}s left < {min_left_s}s")
            print(f"[SKIP] {name}: {entry['reason']}", flush=True)
            save()
            return None
        print(f"\n=== {name} (t={elapsed():.0f}s) ===", flush=True)
        t = time.perf_counter()
        try:
            ok = fn(entry, *a, **kw)
            entry["status"] = "PASS" if ok is not False else "FAIL"
        except Exception as e:  # noqa: BLE001 - a check's failure is a result
            entry["status"] = "FAIL"
            entry["error"] = f"{type(e).__name__}: {e}"[:2000]
            entry["traceback"] = traceback.format_exc()[-4000:]
            print(entry["traceback"], flush=True)
        entry["wall_s"] = round(time.perf_counter() - t, 1)
        shown = {k: v for k, v in entry.items() if k not in ("traceback",)}
        print(f"[{entry['status']}] {name}: {json.dumps(shown, default=str)[:3000]}", flush=True)
        save()
        return entry

    return run


# --------------------------------------------------------------------------- env


def check_env(entry: dict) -> bool:
    import transformers

    import mathrl

    dev = torch.device(ARGS.device)
    entry.update(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        transformers=transformers.__version__,
        mathrl_file=mathrl.__file__,
        device=ARGS.device,
        cpu_threads=torch.get_num_threads(),
        allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        float32_matmul_precision=torch.get_float32_matmul_precision(),
    )
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        entry.update(
            gpu=p.name,
            sms=p.multi_processor_count,
            mem_gib=round(p.total_memory / 2**30, 1),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    n = 1024 if ARGS.quick else 8192
    iters = 3 if ARGS.quick else 10

    def gemm(dtype, tf32=False):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            for _ in range(3):
                a @ b
            sync()
            t = time.perf_counter()
            for _ in range(iters):
                a @ b
            sync()
            dt = (time.perf_counter() - t) / iters
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        return round(2 * n**3 / dt / 1e12, 2)

    entry["gemm_n"] = n
    entry["bf16_tflops"] = gemm(torch.bfloat16)
    entry["fp32_tflops"] = gemm(torch.float32)
    if dev.type == "cuda":
        entry["tf32_tflops"] = gemm(torch.float32, tf32=True)
    nbytes = (64 if ARGS.quick else 2048) * 2**20
    x = torch.empty(nbytes // 4, device=dev)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        y.copy_(x)
    sync()
    dt = (time.perf_counter() - t) / iters
    entry["copy_GBps_read_plus_write"] = round(2 * nbytes / dt / 1e9, 1)
    # Launch overhead: what bounds small models' decode steps.
    z = torch.zeros(16, device=dev)
    sync()
    t = time.perf_counter()
    for _ in range(2000):
        z.add_(1)
    sync()
    entry["tiny_op_us"] = round((time.perf_counter() - t) / 2000 * 1e6, 2)
    del x, y
    return True


# --------------------------------------------------------------------------- correctness

TEXTS = ["What is 12 + 345? The answer is 357.", "She sold 48 clips in April."] * 5
QUESTIONS = ["What is 12 + 3?", "hi", "She sold 48 clips in April. How many in May?"]


def recomputed_logprobs(model, completions, device):
    """Full forward over prompt + completion, left-padded: each completion's log-probs."""
    from mathrl.models.logprobs import left_pad, sequence_logprobs

    rows = [c.prompt_ids + c.token_ids for c in completions]
    input_ids, attention_mask = left_pad(rows, 0, device)
    completion_mask = torch.zeros_like(input_ids)
    for i, c in enumerate(completions):
        completion_mask[i, input_ids.shape[1] - len(c.token_ids) :] = 1
    with torch.no_grad():
        lp = sequence_logprobs(model, input_ids, attention_mask, completion_mask)
    w = input_ids.shape[1]
    return [lp[i, w - len(c.token_ids) :].float().cpu() for i, c in enumerate(completions)]


def trainer_logprobs(model, prompts, completions, device):
    """The trainer's path: completion_logprobs with shared prompts (one forward per prompt)."""
    from mathrl.models.logprobs import completion_batch, completion_logprobs

    batch = completion_batch(
        prompts,
        [c.prompt_index for c in completions],
        [c.token_ids for c in completions],
        0,
        device,
    )
    with torch.no_grad():
        lp = completion_logprobs(model, batch)
    return [lp[i, : len(c.token_ids)].float().cpu() for i, c in enumerate(completions)]


def max_diff(a_list, b_list) -> float:
    return max(
        float((torch.tensor(a, dtype=torch.float32) - b).abs().max()) if len(a) else 0.0
        for a, b in zip(a_list, b_list, strict=True)
    )


def pick_stop_token(greedy_ids):
    """A token whose first occurrence differs between rows (and is absent from one if possible)."""
    best = None
    for tok in sorted({t for row in greedy_ids for t in row}):
        firsts = {row.index(tok) if tok in row else None for row in greedy_ids}
        if len(firsts) >= 2 and (best is None or None in firsts):
            best = tok
    return best


def ids(result):
    return [c.token_ids for c in result.completions]


def first_divergence(a, b):
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_correct(entry: dict, autocast: str) -> bool:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathrl.models.logprobs import left_pad
    from mathrl.models.precision import set_autocast
    from mathrl.models.scratch import build_scratch_model, with_logit_bias
    from mathrl.rollout.hf_engine import HFEngine
    from mathrl.rollout.types import SamplingParams

    dev = torch.device(ARGS.device)
    bf16 = autocast != "none"
    # fp32: the CPU tests' tolerances (1e-4 vs a forward, 1e-5 lean vs reference); under
    # bf16 autocast the README quotes ~0.015 nats between sampler and trainer.
    tol_fwd, tol_lean = (0.05, 0.05) if bf16 else (1e-4, 1e-5)
    entry.update(autocast=autocast, tol_vs_forward=tol_fwd, tol_lean_vs_ref=tol_lean)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scratch_model(tmp, TEXTS, hidden=64, layers=2)
        tok = AutoTokenizer.from_pretrained(path)
        plain = AutoModelForCausalLM.from_pretrained(path).eval().to(dev)
        biased = AutoModelForCausalLM.from_pretrained(path).eval().to(dev)
        lpath = build_scratch_model(
            Path(tmp) / "llama", TEXTS, arch="llama", hidden=64, layers=2, kv_heads=2
        )
        llama = AutoModelForCausalLM.from_pretrained(lpath).eval().to(dev)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    with_logit_bias(biased, im_end, 3.0)
    with_logit_bias(llama, im_end, 3.0)
    for m in (plain, biased, llama):
        set_autocast(m, autocast)
    prompts = [tok(q).input_ids for q in QUESTIONS]

    # 1. greedy: HFEngine (lean on / off) == model.generate
    free = HFEngine(plain, tok).generate(
        prompts, SamplingParams(max_new_tokens=16, greedy=True, ignore_eos=True)
    )
    stop = pick_stop_token(ids(free))
    stop_ids = [stop] if stop is not None else None
    input_ids, attention_mask = left_pad(prompts, HFEngine(plain, tok).pad_id, dev)
    from mathrl.models.precision import forward_autocast

    with torch.no_grad(), forward_autocast(plain):
        out = plain.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            max_new_tokens=16,
            eos_token_id=stop if stop is not None else im_end,
            pad_token_id=HFEngine(plain, tok).pad_id,
        )
    greedy = {}
    for lean in (True, False):
        eng = HFEngine(plain, tok, stop_token_ids=stop_ids, lean_decode=lean)
        res = eng.generate(prompts, SamplingParams(n=2, max_new_tokens=16, greedy=True))
        rows_ok, divs = 0, []
        for c in res.completions:
            exp = out[c.prompt_index, input_ids.shape[1] :].tolist()[: len(c.token_ids)]
            if c.token_ids == exp:
                rows_ok += 1
            else:
                divs.append(first_divergence(c.token_ids, exp))
        key = "lean" if lean else "ref"
        greedy[key] = ids(res)
        entry[f"greedy_{key}_rows_equal_generate"] = f"{rows_ok}/{len(res.completions)}"
        if divs:
            entry[f"greedy_{key}_first_divergence"] = divs
            ok &= bf16  # under bf16 the paths round differently: information only
    entry["greedy_lean_equals_ref"] = greedy["lean"] == greedy["ref"]
    ok &= entry["greedy_lean_equals_ref"] or bf16

    # 2. sampled: log-probs vs a full forward and vs the trainer's path; lean vs reference
    for net_name, net in (("qwen2", biased), ("llama_gqa", llama)):
        for n, bs, max_new in ((4, 8, 24), (8, 64, 60)):
            params = SamplingParams(n=n, max_new_tokens=max_new, seed=3)
            tag = f"{net_name}_n{n}_bs{bs}"
            lean = HFEngine(net, tok, batch_size=bs).generate(prompts, params)
            ref = HFEngine(net, tok, batch_size=bs, lean_decode=False).generate(prompts, params)
            same_tokens = ids(lean) == ids(ref)
            entry[f"{tag}_lean_tokens_equal_ref"] = same_tokens
            # Under bf16 the two paths round differently, so a sampled token may flip
            # (information only); in fp32 they must agree.
            entry[f"{tag}_finish_reasons"] = sorted({c.finish_reason for c in lean.completions})
            if same_tokens:
                d = max_diff(
                    [c.logprobs for c in lean.completions],
                    [torch.tensor(c.logprobs) for c in ref.completions],
                )
                entry[f"{tag}_lean_vs_ref_logp_maxdiff"] = d
                ok &= d <= tol_lean
            else:
                ok &= bf16
                entry[f"{tag}_rows_differing"] = sum(
                    a != b for a, b in zip(ids(lean), ids(ref), strict=True)
                )
            for name, res in (("lean", lean), ("ref", ref)):
                d = max_diff(
                    [c.logprobs for c in res.completions],
                    recomputed_logprobs(net, res.completions, dev),
                )
                entry[f"{tag}_{name}_vs_forward_logp_maxdiff"] = d
                ok &= d <= tol_fwd
            d = max_diff(
                [c.logprobs for c in lean.completions],
                trainer_logprobs(net, prompts, lean.completions, dev),
            )
            entry[f"{tag}_lean_vs_trainer_logp_maxdiff"] = d
            ok &= d <= tol_fwd
    # 3. same seed, same samples (engine's own CUDA generator)
    params = SamplingParams(n=4, max_new_tokens=24, seed=7)
    a = HFEngine(biased, tok, batch_size=8).generate(prompts, params)
    b = HFEngine(biased, tok, batch_size=8).generate(prompts, params)
    entry["same_seed_same_samples"] = ids(a) == ids(b) and [c.logprobs for c in a.completions] == [
        c.logprobs for c in b.completions
    ]
    ok &= entry["same_seed_same_samples"]
    if bf16:
        # how far the bf16-autocast sampler is from the fp32 trainer (information only)
        set_autocast(biased, "none")
        entry["bf16_sampler_vs_fp32_forward_logp_maxdiff"] = max_diff(
            [c.logprobs for c in a.completions], recomputed_logprobs(biased, a.completions, dev)
        )
    return bool(ok)


# --------------------------------------------------------------------------- rollout speed


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    syl = ["ka", "to", "mi", "re", "su", "na", "lo", "pe", "vi", "da", "xu", "qo", "ing", "er"]
    rng = random.Random(seed)
    words = ["".join(rng.choices(syl, k=rng.randint(1, 4))) for _ in range(3000)]
    return [
        " ".join(
            rng.choice(words) if rng.random() > 0.1 else str(rng.randint(0, 999))
            for _ in range(rng.randint(5, 25))
        )
        for _ in range(n)
    ]


def real_lengths(new_tokens: torch.Tensor, stop_ids: list[int]) -> list[int]:
    lengths = []
    for row in new_tokens.tolist():
        hits = [i for i, t in enumerate(row) if t in stop_ids]
        lengths.append(hits[0] + 1 if hits else len(row))
    return lengths


_TOKENIZER_DIR: dict = {}


def scratch_tokenizer_dir(tmp: str):
    """A 2k-vocab scratch tokenizer + tiny model dir (built once)."""
    from mathrl.models.scratch import build_scratch_model

    if "path" not in _TOKENIZER_DIR:
        _TOKENIZER_DIR["texts"] = corpus()
        _TOKENIZER_DIR["path"] = build_scratch_model(
            Path(tmp) / "tiny",
            _TOKENIZER_DIR["texts"],
            hidden=256,
            layers=4,
            heads=4,
            vocab_size=2048,
            max_position=1024,
        )
    return _TOKENIZER_DIR["path"], _TOKENIZER_DIR["texts"]


def make_model(kind: str, tmp: str, dev: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathrl.models.scratch import IM_END, PAD_TOKEN, SPECIAL_TOKENS, scratch_config

    path, texts = scratch_tokenizer_dir(tmp)
    tok = AutoTokenizer.from_pretrained(path)
    if kind == "tiny":
        model = AutoModelForCausalLM.from_pretrained(path).to(dev, dtype).eval()
    else:
        # Qwen2-0.5B's body (hidden 896, 24 layers, 14 heads / 2 KV heads, MLP 4864) with the
        # scratch 2k vocab; random weights, built on the device.
        shape = (
            dict(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=512)
            if ARGS.quick
            else dict(hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864)
        )
        special = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        cfg = scratch_config(
            "qwen2",
            len(tok),
            shape["hidden"],
            shape["layers"],
            shape["heads"],
            shape["kv_heads"],
            shape["intermediate"],
            1024,
            special,
        )
        torch.manual_seed(0)
        with dev:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
        model.generation_config.eos_token_id = [special[IM_END], special[PAD_TOKEN]]
        model.generation_config.pad_token_id = special[PAD_TOKEN]
    return model, tok, texts


def add_eos_bias(model: nn.Module, eos_id: int, p_eos: float) -> None:
    from mathrl.models.scratch import with_logit_bias

    vocab = model.get_output_embeddings().out_features
    with_logit_bias(model, eos_id, math.log(p_eos * (vocab - 1) / (1 - p_eos)))


def bench_generate(model, prompts, engine, n, max_new, seed, dev):
    from mathrl.models.logprobs import left_pad

    rows = [p for p in prompts for _ in range(n)]
    input_ids, attention_mask = left_pad(rows, engine.pad_id, dev)
    torch.manual_seed(seed)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new,
            eos_token_id=engine.stop_token_ids,
            pad_token_id=engine.pad_id,
        )
    sync()
    dt = time.perf_counter() - t0
    new = out[:, input_ids.shape[1] :]
    real = sum(real_lengths(new, engine.stop_token_ids))
    return real / dt, real, new.shape[1]


def bench_engine(engine, prompts, n, max_new, seed):
    from mathrl.rollout.types import SamplingParams

    sync()
    t0 = time.perf_counter()
    result = engine.generate(prompts, SamplingParams(n=n, max_new_tokens=max_new, seed=seed))
    sync()
    dt = time.perf_counter() - t0
    return result.tokens_generated / dt, result.tokens_generated, result.timing


def check_rollout(entry: dict, kind: str) -> bool:
    from mathrl.models.precision import set_autocast
    from mathrl.rollout.hf_engine import HFEngine

    dev = torch.device(ARGS.device)
    max_new = 32 if ARGS.quick else 256
    runs = 1 if ARGS.quick else 3
    p_eos = 0.005  # ~1/200 per step: lengths spread over 1..256, mean ~140
    dtype = torch.float32 if kind == "tiny" else torch.bfloat16
    model, tok, texts = make_model(kind, tempfile.mkdtemp(prefix="gpuchk_model_"), dev, dtype)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    add_eos_bias(model, eos, p_eos)
    entry.update(
        model=kind,
        dtype=str(dtype),
        params_M=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        layers=model.config.num_hidden_layers,
        hidden=model.config.hidden_size,
        vocab=model.config.vocab_size,
        max_new_tokens=max_new,
        p_eos=p_eos,
        runs=runs,
    )
    if kind != "tiny" and not ARGS.quick:
        runs = 2
        entry["runs"] = runs
    rng = random.Random(1)
    for batch in (16, 64):
        if batch > 16 and left() < 60:
            entry["note"] = f"batch {batch} skipped: time budget"
            break
        variants = [("engine", True)] + ([("engine_nolean", False)] if batch == 64 else [])
        n = 8
        n_prompts = batch // n
        prompts = [
            tok(" ".join(rng.choices(texts, k=2))).input_ids[: rng.randint(20, 60)]
            for _ in range(n_prompts)
        ]
        res: dict = {}
        for name, lean in variants:
            eng = HFEngine(model, tok, batch_size=batch, lean_decode=lean)
            bench_engine(eng, prompts, n, max_new, 10_000)  # warm-up at full size
            tps = []
            for r in range(runs):
                t, ntok, timing = bench_engine(eng, prompts, n, max_new, r)
                tps.append(t)
            res[f"{name}_tok_s"] = round(statistics.median(tps))
            res[f"{name}_tokens_last"] = ntok
            res[f"{name}_decode_ms_per_step_last"] = round(1000 * timing["decode_s"] / max_new, 2)
        eng = HFEngine(model, tok, batch_size=batch)
        bench_generate(model, prompts, eng, n, max_new, 10_000, dev)
        tps = []
        for r in range(runs):
            t, ntok, width = bench_generate(model, prompts, eng, n, max_new, r, dev)
            tps.append(t)
        res["generate_tok_s"] = round(statistics.median(tps))
        res["generate_tokens_last"] = ntok
        res["speedup_engine_vs_generate"] = round(res["engine_tok_s"] / res["generate_tok_s"], 2)
        entry[f"batch{batch}"] = res
        print(f"  {kind} batch {batch}: {res}", flush=True)
    if kind != "tiny":
        # mathrl's recommended mixed precision on the same shape: fp32 weights + bf16 autocast
        model = model.float()
        set_autocast(model, "bfloat16")
        batch, n = 64, 8
        prompts = [
            tok(" ".join(rng.choices(texts, k=2))).input_ids[: rng.randint(20, 60)]
            for _ in range(batch // n)
        ]
        eng = HFEngine(model, tok, batch_size=batch)
        bench_engine(eng, prompts, n, max_new, 10_000)
        tps = [bench_engine(eng, prompts, n, max_new, r)[0] for r in range(runs)]
        entry["batch64_engine_fp32_weights_bf16_autocast_tok_s"] = round(statistics.median(tps))
    del model
    if dev.type == "cuda":
        entry["max_mem_alloc_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
    return True


# --------------------------------------------------------------------------- issue 31


def check_decode(entry: dict) -> bool:
    """Static decode (eager, compiled) vs the lean step vs model.generate on the 0.5B shape."""
    from mathrl.rollout.hf_engine import HFEngine
    from mathrl.rollout.types import SamplingParams

    dev = torch.device(ARGS.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    max_new = 16 if ARGS.quick else 256
    runs = 1 if ARGS.quick else 2
    model, tok, texts = make_model("large", tempfile.mkdtemp(prefix="gpuchk_model_"), dev, dtype)
    add_eos_bias(model, tok.convert_tokens_to_ids("<|im_end|>"), 0.005)
    entry.update(dtype=str(dtype), max_new_tokens=max_new, runs=runs, compile=ARGS.compile)
    rng = random.Random(2)
    ok = True
    for batch in (8, 16) if ARGS.quick else (64, 256):
        if left() < 45:
            entry[f"batch{batch}"] = "skipped: time budget"
            break
        n = 8
        prompts = [
            tok(" ".join(rng.choices(texts, k=2))).input_ids[: rng.randint(20, 60)]
            for _ in range(batch // n)
        ]
        engines = {
            "lean": HFEngine(model, tok, batch_size=batch),
            "static": HFEngine(model, tok, batch_size=batch, static_decode=True),
        }
        if ARGS.compile != "off":
            engines["compiled"] = HFEngine(
                model, tok, batch_size=batch, static_decode=True, compile=ARGS.compile
            )
        res: dict = {}
        for name, eng in engines.items():
            t0 = time.perf_counter()
            warm = eng.generate(prompts, SamplingParams(n=n, max_new_tokens=max_new, seed=99))
            res[f"{name}_first_call_s"] = round(time.perf_counter() - t0, 2)
            res[f"{name}_compile_s"] = round(warm.timing.get("compile_s", 0.0), 2)
            res[f"{name}_tok_s"] = round(
                statistics.median(bench_engine(eng, prompts, n, max_new, r)[0] for r in range(runs))
            )
        bench_generate(model, prompts, engines["lean"], n, max_new, 10_000, dev)
        res["generate_tok_s"] = round(
            statistics.median(
                bench_generate(model, prompts, engines["lean"], n, max_new, r, dev)[0]
                for r in range(runs)
            )
        )
        for name in engines:
            res[f"{name}_x_generate"] = round(res[f"{name}_tok_s"] / res["generate_tok_s"], 2)
        # n as above: the same rows, so the compiled engine reuses its compiled step
        greedy = SamplingParams(n=n, max_new_tokens=max_new, greedy=True)
        ids = {
            name: [c.token_ids for c in eng.generate(prompts, greedy).completions]
            for name, eng in engines.items()
        }
        res["greedy_equal"] = {name: ids[name] == ids["lean"] for name in engines}
        ok = ok and all(res["greedy_equal"].values())
        entry[f"batch{batch}"] = res
        print(f"  decode batch {batch}: {res}", flush=True)
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return ok


def check_memory(entry: dict) -> bool:
    """Peak memory of one forward + backward with and without gradient checkpointing."""
    from mathrl.policy import enable_gradient_checkpointing

    dev = torch.device(ARGS.device)
    batch, length = (2, 64) if ARGS.quick else (8, 1024)
    entry.update(batch=batch, tokens=length)
    for ckpt in (False, True):
        model, tok, _ = make_model(
            "large", tempfile.mkdtemp(prefix="gpuchk_m_"), dev, torch.float32
        )
        if ckpt:
            enable_gradient_checkpointing(model)
        model.train()
        ids = torch.randint(5, model.config.vocab_size, (batch, length), device=dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])
        (-logp.mean()).backward()
        sync()
        key = "checkpointing" if ckpt else "plain"
        entry[f"{key}_fwd_bwd_s"] = round(time.perf_counter() - t0, 3)
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
            entry[f"{key}_peak_GiB_above_weights"] = round(peak / 2**30, 2)
        del model, logits, logp
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return True


# --------------------------------------------------------------------------- end to end


def cli(args: list[str], log: Path, timeout: float) -> tuple[int, float, str]:
    cmd = [sys.executable, "-c", "from mathrl.cli import main; main()", *args]
    print("  $ mathrl " + " ".join(args), flush=True)
    t = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ARGS.workdir
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    dt = time.perf_counter() - t
    text = log.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-25:])
    print("  | " + tail.replace("\n", "\n  | "), flush=True)
    return rc, dt, tail


def median_of(rows: list[dict], key: str, skip_first: bool = True):
    vals = [r[key] for r in rows if key in r]
    if skip_first:
        vals = vals[1:]
    return round(statistics.median(vals), 4) if vals else None


def check_train(entry: dict, tag: str, sets: list[str], grpo_steps: int, warmup: int) -> bool:
    run_dir = Path(ARGS.runs) / tag
    config = str(REPO / "configs" / "quickstart.toml")
    eval_limit = 50 if ARGS.quick else 500
    args = [
        "train",
        "-c",
        config,
        "--out",
        str(run_dir),
        "--set",
        f"model.device={ARGS.device}",
        "--set",
        f"warmup.steps={warmup}",
        "--set",
        f"train.steps={grpo_steps}",
        "--set",
        f"eval.every={max(1, grpo_steps // 3)}",
        "--set",
        f"eval.limit={eval_limit}",
        "--set",
        f"checkpoint.every={grpo_steps}",
        "--set",
        "log.rollouts_every=50",
        "--set",
        f"log.every={max(1, grpo_steps // 6)}",
    ]
    if ARGS.quick:
        args += ["--set", "data.countdown_train_size=1000", "--set", "data.countdown_test_size=50"]
    for s in sets:
        args += ["--set", s]
    entry.update(grpo_steps=grpo_steps, warmup_steps=warmup, sets=sets, run_dir=str(run_dir))
    timeout = max(30.0, min(ARGS.step_timeout_s, left() - 20))
    entry["timeout_s"] = round(timeout)
    rc, dt, tail = cli(args, OUT / f"train_{tag}.log", timeout)
    entry.update(rc=rc, wall_s_cli=round(dt, 1))
    if rc != 0:
        entry["log_tail"] = tail
    summary = run_dir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        entry["summary"] = {
            k: s.get(k)
            for k in (
                "steps",
                "wall_s",
                "accuracy_before_rl",
                "accuracy_after_rl",
                "accuracy_before_rl_ci95",
                "accuracy_after_rl_ci95",
                "heldout_n",
                "accuracy_gain",
                "train_reward_first",
                "train_reward_last",
            )
        }
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        steps = [r for r in rows if "time/step_s" in r]
        evals = [r for r in rows if "eval/pass@1" in r]
        entry["grpo_steps_logged"] = len(steps)
        entry["step_s_median"] = median_of(steps, "time/step_s")
        entry["rollout_s_median"] = median_of(steps, "time/rollout_s")
        entry["train_s_median"] = median_of(steps, "time/train_s")
        entry["reward_s_median"] = median_of(steps, "time/reward_s")
        entry["rollout_tok_s_median"] = median_of(steps, "perf/rollout_tokens_per_s")
        entry["eval_curve"] = [(r["step"], r["eval/pass@1"]) for r in evals]
        entry["eval_time_s"] = [round(r.get("eval/time_s", 0), 2) for r in evals]
        if steps:
            entry["train_reward_mean_last10"] = round(
                statistics.mean(r.get("reward/mean", 0) for r in steps[-10:]), 3
            )
        sft = run_dir / "warmup_sft" / "metrics.jsonl"
        if sft.exists():
            srows = [json.loads(x) for x in sft.read_text().splitlines() if x.strip()]
            keys = sorted({k for r in srows for k in r if "time" in k or k.endswith("_s")})
            entry["sft_time_keys"] = keys[:6]
            for k in keys:
                if "step" in k:
                    entry["sft_step_s_median"] = median_of(srows, k)
                    break
    return rc == 0 and summary.exists()


def check_eval(entry: dict, tag: str) -> bool:
    run_dir = Path(ARGS.runs) / tag
    out = Path(ARGS.runs) / f"{tag}_eval"
    limit = 50 if ARGS.quick else 500
    args = [
        "eval",
        "--model",
        str(run_dir),
        "-c",
        str(REPO / "configs" / "quickstart.toml"),
        "--limit",
        str(limit),
        "--out",
        str(out),
        "--set",
        f"model.device={ARGS.device}",
        "-q",
    ]
    if ARGS.quick:
        args += ["--set", "data.countdown_train_size=1000", "--set", "data.countdown_test_size=50"]
    timeout = max(30.0, min(ARGS.step_timeout_s, left() - 10))
    rc, dt, tail = cli(args, OUT / f"eval_{tag}.log", timeout)
    entry.update(rc=rc, wall_s_cli=round(dt, 1))
    if rc != 0:
        entry["log_tail"] = tail[-2000:]
    summary = out / "eval_summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
        entry["eval_summary"] = {
            k: data.get(k)
            for k in ("n_problems", "pass@1", "pass@1_lo", "pass@1_hi", "len_mean", "time_s")
        }
    return rc == 0 and summary.exists()


# --------------------------------------------------------------------------- main


def main() -> None:
    global ARGS, OUT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a CPU run of every code path")
    p.add_argument("--out", default="gpu_check_out")
    p.add_argument("--runs", default=None, help="where run dirs go (default OUT/runs)")
    p.add_argument("--workdir", default=None, help="cwd of the CLI subprocesses")
    p.add_argument("--steps", default="env,decode,memory,split,correct")
    p.add_argument("--compile", default=None, help="rollout.compile of the static step")
    p.add_argument("--budget-s", type=float, default=420.0)
    p.add_argument("--step-timeout-s", type=float, default=150.0)
    p.add_argument("--grpo-steps", type=int, default=300)
    p.add_argument("--warmup-steps", type=int, default=250)
    ARGS = p.parse_args()
    if ARGS.compile is None:
        ARGS.compile = "cudagraphs" if ARGS.device.startswith("cuda") else "off"
    OUT = Path(ARGS.out)
    OUT.mkdir(parents=True, exist_ok=True)
    ARGS.runs = ARGS.runs or str(OUT / "runs")
    ARGS.workdir = ARGS.workdir or tempfile.mkdtemp(prefix="gpuchk_cwd_")
    if ARGS.quick:
        ARGS.grpo_steps = min(ARGS.grpo_steps, 6)
        ARGS.warmup_steps = min(ARGS.warmup_steps, 10)
    RESULTS["args"] = vars(ARGS)
    steps = ARGS.steps.split(",")
    print(f"gpu_check: device {ARGS.device}, quick {ARGS.quick}, steps {steps}", flush=True)

    if "env" in steps:
        check("env")(check_env)
    if "decode" in steps:
        check("decode_qwen2_0.5b_shape", 60)(check_decode)
    if "memory" in steps:
        check("memory_gradient_checkpointing", 30)(check_memory)
    if "split" in steps:
        split_sets = ["rollout.static_decode=true", f"rollout.compile={ARGS.compile}"]
        steps_split = 3 if ARGS.quick else 30
        check("grpo_step_split", 60)(check_train, "split", split_sets, steps_split, 0)
    if "correct" in steps:
        check("correct_fp32", 30)(check_correct, "none")
        check("correct_bf16_autocast", 30)(check_correct, "bfloat16")
    g, w = ARGS.grpo_steps, ARGS.warmup_steps
    if "e2e" in steps:
        check("train_quickstart_fp32", 60)(check_train, "qs_fp32", ["model.dtype=float32"], g, w)
        check("eval_quickstart_fp32", 20)(check_eval, "qs_fp32")
    if "rollout" in steps:
        check("rollout_tiny_fp32", 40)(check_rollout, "tiny")
        check("rollout_qwen2_0.5b_shape_bf16", 60)(check_rollout, "large")
    if "e2e_more" in steps:
        check("train_quickstart_bf16_autocast", 90)(
            check_train, "qs_bf16ac", ["model.dtype=float32", "model.autocast=bfloat16"], g, w
        )
    if "e2e_more" in steps or "auto" in steps:
        # The quickstart as shipped. Since 2026-11-30 (after the first check): model.dtype
        # auto = fp32 weights and model.autocast auto = bf16 forwards on a CUDA GPU.
        check("train_quickstart_dtype_auto", 90)(check_train, "qs_auto", [], g, w)

    print("\n=== summary ===")
    for name, e in RESULTS["checks"].items():
        extra = e.get("error") or e.get("reason") or ""
        print(f"[{e.get('status')}] {name} ({e.get('wall_s', 0)}s) {extra}".rstrip())
    print(f"total {elapsed():.0f}s; results: {OUT / 'gpu_check.json'}")
    save()


if __name__ == "__main__":
    main()
