"""Completion tokens/s of HFEngine vs plain `model.generate` on a scratch model (CPU-friendly).

Usage: .venv/bin/python bench/bench_rollout.py [--hidden 256 --layers 4 --runs 3]

A random-init model never says EOS on its own, so the EOS logit gets a bias that makes it
~1.5% likely per step: completions end at varied lengths as in real RL batches (the case
where plain batched `generate` keeps decoding finished rows). Both sides sample the same
way (temperature 1, batch of prompts x n samples) and count only real completion tokens,
up to and including EOS.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathrl.models.logprobs import left_pad
from mathrl.models.precision import set_autocast
from mathrl.models.scratch import build_scratch_model
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.types import SamplingParams

SYLLABLES = ["ka", "to", "mi", "re", "su", "na", "lo", "pe", "vi", "da", "xu", "qo", "ing", "er"]


def corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Random pseudo-words and numbers: enough distinct merges for a ~2k BPE vocab."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(3000)]
    return [
        " ".join(
            rng.choice(words) if rng.random() > 0.1 else str(rng.randint(0, 999))
            for _ in range(rng.randint(5, 25))
        )
        for _ in range(n)
    ]


def add_eos_bias(model: nn.Module, eos_id: int, p_eos: float) -> None:
    """Bias the EOS logit so that, for near-uniform logits, EOS has probability ~p_eos."""
    old = model.get_output_embeddings()
    vocab = old.out_features
    head = nn.Linear(old.in_features, vocab, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[eos_id] = math.log(p_eos * (vocab - 1) / (1 - p_eos))
    model.set_output_embeddings(head)
    model.config.tie_word_embeddings = False


def real_lengths(new_tokens: torch.Tensor, stop_ids: list[int]) -> list[int]:
    """Tokens up to and including the first stop token, per row of (B, T)."""
    lengths = []
    for row in new_tokens.tolist():
        hits = [i for i, t in enumerate(row) if t in stop_ids]
        lengths.append(hits[0] + 1 if hits else len(row))
    return lengths


def bench_generate(model, prompts, engine, n, max_new, seed):
    """(real tok/s, padded tok/s, real tokens) of model.generate on prompts x n rows."""
    rows = [p for p in prompts for _ in range(n)]
    input_ids, attention_mask = left_pad(rows, engine.pad_id, torch.device("cpu"))
    torch.manual_seed(seed)
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
    dt = time.perf_counter() - t0
    new = out[:, input_ids.shape[1] :]
    real = sum(real_lengths(new, engine.stop_token_ids))
    return real / dt, new.numel() / dt, real


def bench_engine(engine, prompts, n, max_new, seed):
    """(real tok/s, real tokens, timing) of HFEngine.generate."""
    result = engine.generate(prompts, SamplingParams(n=n, max_new_tokens=max_new, seed=seed))
    return (
        result.tokens_generated / result.timing["total_s"],
        result.tokens_generated,
        result.timing,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--p-eos", type=float, default=0.015)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="HFEngine with model.autocast=bfloat16 vs model.generate on a bf16 copy",
    )
    args = parser.parse_args()

    texts = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_scratch_model(
            tmp,
            texts,
            hidden=args.hidden,
            layers=args.layers,
            heads=4,
            vocab_size=args.vocab,
            max_position=1024,
        )
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
    add_eos_bias(model, tokenizer.convert_tokens_to_ids("<|im_end|>"), args.p_eos)
    engine = HFEngine(model, tokenizer, batch_size=args.prompts * args.n)
    gen_model = model
    if args.bf16:
        # Each side in its fastest bf16 form: mathrl autocasts an fp32 model (its GEMM
        # weights cast once per call); generate runs on bf16 weights (autocast would recast
        # them at every step).
        set_autocast(model, "bfloat16")
        gen_model = copy.deepcopy(model).to(torch.bfloat16)
        set_autocast(gen_model, "none")
    rng = random.Random(1)
    prompts = [
        tokenizer(" ".join(rng.choices(texts, k=2))).input_ids[: rng.randint(20, 60)]
        for _ in range(args.prompts)
    ]
    print(
        f"model: hidden {args.hidden}, {args.layers} layers, vocab {len(tokenizer)}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"batch: {args.prompts} prompts x {args.n} samples, prompt lens "
        f"{[len(p) for p in prompts]}, max_new_tokens {args.max_new_tokens}"
    )

    # Warm-up at full size: the first full-size call pays one-time allocation costs (several
    # times slower here), which a tiny warm-up call does not absorb.
    bench_engine(engine, prompts, args.n, args.max_new_tokens, 10_000)
    bench_generate(gen_model, prompts, engine, args.n, args.max_new_tokens, 10_000)
    eng, gen, gen_padded = [], [], []
    for run in range(args.runs):
        e_tps, e_tok, timing = bench_engine(engine, prompts, args.n, args.max_new_tokens, run)
        g_tps, g_pad_tps, g_tok = bench_generate(
            gen_model, prompts, engine, args.n, args.max_new_tokens, run
        )
        eng.append(e_tps)
        gen.append(g_tps)
        gen_padded.append(g_pad_tps)
        print(
            f"run {run}: engine {e_tps:7.0f} tok/s ({e_tok} tokens, prefill "
            f"{timing['prefill_s']:.2f}s, decode {timing['decode_s']:.2f}s) | generate "
            f"{g_tps:7.0f} tok/s real, {g_pad_tps:7.0f} incl. padding ({g_tok} tokens)"
        )
    e, g = statistics.median(eng), statistics.median(gen)
    print(
        f"median: HFEngine {e:.0f} tok/s, model.generate {g:.0f} tok/s real "
        f"({statistics.median(gen_padded):.0f} incl. padding); speed-up x{e / g:.2f}"
    )


if __name__ == "__main__":
    main()
