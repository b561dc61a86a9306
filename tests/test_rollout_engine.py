"""HFEngine on a tiny scratch model: ordering, seeding, greedy == HF generate, exact logprobs."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathrl.errors import ConfigError, MathrlError
from mathrl.models.logprobs import left_pad, sequence_logprobs
from mathrl.models.scratch import build_scratch_model, with_logit_bias
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.registry import make_engine
from mathrl.rollout.sampler import prompt_chunks, top_p_filter
from mathrl.rollout.stops import DecodeRows, saved_eos, stop_ids
from mathrl.rollout.types import RolloutEngine, SamplingParams

TEXTS = ["What is 12 + 345? The answer is 357.", "She sold 48 clips in April."] * 5
QUESTIONS = ["What is 12 + 3?", "hi", "She sold 48 clips in April. How many in May?"]


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory):
    return build_scratch_model(tmp_path_factory.mktemp("m"), TEXTS, hidden=64, layers=2)


@pytest.fixture(scope="module")
def tokenizer(scratch_dir):
    return AutoTokenizer.from_pretrained(scratch_dir)


@pytest.fixture(scope="module")
def model(scratch_dir, tokenizer):
    """EOS-biased (~6% per step) so completions stop at varied lengths."""
    model = AutoModelForCausalLM.from_pretrained(scratch_dir).eval()
    return with_logit_bias(model, tokenizer.convert_tokens_to_ids("<|im_end|>"), 3.0)


@pytest.fixture(scope="module")
def plain_model(scratch_dir):
    return AutoModelForCausalLM.from_pretrained(scratch_dir).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(q).input_ids for q in QUESTIONS]


def as_ids(result):
    return [c.token_ids for c in result.completions]


@pytest.mark.parametrize("batch_size", [2, 5, 64])
def test_prompt_major_order(model, tokenizer, prompts, batch_size):
    engine = HFEngine(model, tokenizer, batch_size=batch_size)
    result = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=6, seed=0))
    order = [(c.prompt_index, c.sample_index) for c in result.completions]
    assert order == [(p, s) for p in range(3) for s in range(3)]
    assert all(c.prompt_ids == prompts[c.prompt_index] for c in result.completions)
    assert result.tokens_generated == sum(len(c.token_ids) for c in result.completions)
    assert set(result.timing) == {"prefill_s", "decode_s", "total_s"}


def test_seeding(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer)
    sampling = SamplingParams(n=4, max_new_tokens=12, seed=7)
    a = engine.generate(prompts, sampling)
    b = engine.generate(prompts, sampling)
    c = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12, seed=8))
    assert as_ids(a) == as_ids(b)
    assert [x.logprobs for x in a.completions] == [x.logprobs for x in b.completions]
    assert as_ids(a) != as_ids(c)
    torch.manual_seed(1)
    d = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12))
    torch.manual_seed(1)
    assert as_ids(d) == as_ids(engine.generate(prompts, SamplingParams(n=4, max_new_tokens=12)))


def recomputed_logprobs(model, completions):
    """Forward pass over prompt + completion, left-padded; (rows of) completion log-probs."""
    rows = [c.prompt_ids + c.token_ids for c in completions]
    input_ids, attention_mask = left_pad(rows, 0, torch.device("cpu"))
    completion_mask = torch.zeros_like(input_ids)
    for i, c in enumerate(completions):
        completion_mask[i, input_ids.shape[1] - len(c.token_ids) :] = 1
    with torch.no_grad():
        logprobs = sequence_logprobs(model, input_ids, attention_mask, completion_mask)
    return [logprobs[i, input_ids.shape[1] - len(c.token_ids) :] for i, c in enumerate(completions)]


@pytest.mark.parametrize("sampling_kw", [{}, {"temperature": 1.2, "top_p": 0.95, "top_k": 100}])
def test_logprobs_match_forward_pass(model, tokenizer, prompts, sampling_kw):
    # batch_size 8 with n=4: two chunks; EOS bias: rows finish (and leave the cache) at
    # different steps. Exact logprobs prove the shared prefill and row dropping are right.
    engine = HFEngine(model, tokenizer, batch_size=8)
    result = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=24, seed=0, **sampling_kw))
    reasons = {c.finish_reason for c in result.completions}
    assert reasons == {"eos", "length"}
    assert len({len(c.token_ids) for c in result.completions}) > 3
    expected_all = recomputed_logprobs(model, result.completions)
    for c, expected in zip(result.completions, expected_all, strict=True):
        # Raw-distribution log-probs (temperature 1), whatever the sampling knobs.
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_finish_reasons_and_text(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer)
    result = engine.generate(prompts, SamplingParams(n=6, max_new_tokens=10, seed=0))
    stops = set(engine.stop_token_ids)
    for c in result.completions:
        assert 1 <= len(c.token_ids) <= 10 and len(c.logprobs) == len(c.token_ids)
        assert not stops & set(c.token_ids[:-1])
        if c.finish_reason == "eos":
            assert c.token_ids[-1] in stops
            assert c.text == tokenizer.decode(c.token_ids[:-1], skip_special_tokens=True)
        else:
            assert len(c.token_ids) == 10 and c.token_ids[-1] not in stops


def test_ignore_eos_gives_full_length(model, tokenizer, prompts):
    engine = HFEngine(model, tokenizer)
    result = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=15, ignore_eos=True))
    assert all(len(c.token_ids) == 15 for c in result.completions)
    assert all(c.finish_reason == "length" for c in result.completions)
    # The bias makes EOS frequent: it was sampled, and decoding went on past it.
    assert any(set(engine.stop_token_ids) & set(c.token_ids[:-1]) for c in result.completions)


def pick_stop_token(greedy_ids):
    """A token whose first occurrence differs between rows (and is absent from one if possible)."""
    best = None
    for tok in sorted({t for row in greedy_ids for t in row}):
        firsts = {row.index(tok) if tok in row else None for row in greedy_ids}
        if len(firsts) >= 2 and (best is None or None in firsts):
            best = tok
    assert best is not None
    return best


def test_greedy_equals_hf_generate(plain_model, tokenizer, prompts):
    free = HFEngine(plain_model, tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=16, greedy=True, ignore_eos=True)
    )
    stop = pick_stop_token(as_ids(free))
    engine = HFEngine(plain_model, tokenizer, stop_token_ids=[stop])
    result = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=16, greedy=True))
    input_ids, attention_mask = left_pad(prompts, engine.pad_id, torch.device("cpu"))
    out = plain_model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=False,
        max_new_tokens=16,
        eos_token_id=stop,
        pad_token_id=engine.pad_id,
    )
    lengths = set()
    for c in result.completions:
        expected = out[c.prompt_index, input_ids.shape[1] :].tolist()
        assert c.token_ids == expected[: len(c.token_ids)]
        lengths.add(len(c.token_ids))
        if c.finish_reason == "length":
            assert len(c.token_ids) == 16
    assert len(lengths) >= 2


@pytest.mark.parametrize(
    "variant",
    [
        {"top_k": 1},
        {"top_p": 1e-6},
        {"temperature": 0.0},
        {"top_k": 1, "temperature": 3.0},
    ],
)
def test_degenerate_sampling_equals_greedy(model, tokenizer, prompts, variant):
    engine = HFEngine(model, tokenizer)
    greedy = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=12, greedy=True))
    other = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=12, seed=5, **variant))
    assert as_ids(other) == as_ids(greedy)


def test_top_p_filter_hand_computed():
    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = top_p_filter(scores, 0.7).isfinite().tolist()
    assert kept == [[True, True, False, False]]
    assert top_p_filter(scores, 0.96).isfinite().all()
    assert top_p_filter(scores, 0.4).isfinite().tolist() == [[True, False, False, False]]


def test_restores_training_mode(model, tokenizer, prompts):
    model.train()
    HFEngine(model, tokenizer).generate(prompts, SamplingParams(max_new_tokens=2))
    assert model.training
    model.eval()


def test_make_engine(model, tokenizer):
    assert isinstance(make_engine("hf", model, tokenizer, batch_size=4), HFEngine)
    with pytest.raises(ConfigError, match="Unknown rollout engine 'vllm2'"):
        make_engine("vllm2", model, tokenizer)


def test_empty_prompt_rejected(model, tokenizer):
    with pytest.raises(MathrlError, match="prompt 1 is empty"):
        HFEngine(model, tokenizer).generate([[5], []], SamplingParams())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n": 0}, "sampling.n"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_sampling_params_validation(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**kwargs)


def test_inverse_cdf_sampling_matches_the_distribution():
    """200k draws from a 5-token distribution (one token impossible): frequencies within 4 SE."""
    from mathrl.rollout.sampler import inverse_cdf_sample, row_keys, uniforms

    probs = torch.tensor([0.1, 0.0, 0.6, 0.25, 0.05])
    u = uniforms(row_keys(list(range(2000)), 1), 100).flatten()  # 200k counter-based draws
    draws = inverse_cdf_sample(probs.repeat(len(u), 1), u)
    freq = torch.bincount(draws, minlength=5).double() / len(draws)
    assert freq[1] == 0.0  # a zero-probability token is never drawn
    se = (probs.double() * (1 - probs.double()) / len(draws)).sqrt()
    assert ((freq - probs.double()).abs() <= 4 * se + 1e-12).all(), freq
    # one-hot rows always give their token, also at the vocabulary's ends and at u's ends
    eye = torch.eye(5)
    for edge in (0.0, 0.5, 1.0 - 2.0**-53):
        u = torch.full((5,), edge, dtype=torch.float64)
        assert inverse_cdf_sample(eye, u).tolist() == [0, 1, 2, 3, 4]


def _full_cdf_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The oracle: one float64 cumsum over the whole vocabulary (the sampler before it
    searched block by block)."""
    cdf = probs.cumsum(-1, dtype=torch.float64)
    tok = torch.searchsorted(cdf, u.to(torch.float64)[:, None] * cdf[:, -1:], right=True)
    return tok.clamp_(max=probs.shape[-1] - 1).squeeze(-1)


@pytest.mark.parametrize("vocab", [5, 1023, 1024, 1025, 3000, 49_152, 151_936])
def test_two_level_inverse_cdf_equals_one_cumsum(vocab):
    """Block sums then one block's cumsum pick the token a single cumsum picks: peaked,
    flat and top-k-masked rows, and single-token rows at the blocks' edges."""
    from mathrl.rollout.sampler import CDF_BLOCK, inverse_cdf_sample

    gen = torch.Generator().manual_seed(vocab)
    peaked = torch.softmax(3 * torch.randn(8, vocab, generator=gen), dim=-1)
    flat = torch.softmax(0.1 * torch.randn(8, vocab, generator=gen), dim=-1)
    scores = torch.randn(8, vocab, generator=gen)
    kth = torch.topk(scores, min(5, vocab)).values[:, -1:]
    top5 = torch.softmax(scores.masked_fill(scores < kth, float("-inf")), dim=-1)
    edges = sorted({0, CDF_BLOCK - 1, CDF_BLOCK, vocab - 1} & set(range(vocab)))
    one_hot = torch.zeros(len(edges), vocab)
    one_hot[range(len(edges)), edges] = 1.0
    probs = torch.cat([peaked, flat, top5, one_hot])
    for u in (
        torch.rand(len(probs), generator=gen, dtype=torch.float64),
        torch.zeros(len(probs), dtype=torch.float64),
        torch.full((len(probs),), 1.0 - 2.0**-53, dtype=torch.float64),
    ):
        got = inverse_cdf_sample(probs, u)
        assert got.tolist() == _full_cdf_sample(probs, u).tolist()
        # float64 probs take torch's block sums (the path off the CPU), float32 numpy's
        assert inverse_cdf_sample(probs.double(), u).tolist() == got.tolist()
        assert (probs.gather(1, got[:, None]) > 0).all()  # never a zero-probability token
    assert (
        inverse_cdf_sample(
            one_hot, torch.rand(len(edges), generator=gen, dtype=torch.float64)
        ).tolist()
        == edges
    )


@pytest.mark.parametrize(
    "x", [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFE, 0xFFFFFFFF]
)
def test_mix32_tensor_equals_integer_form(x):
    """The int64 tensor hash (16-bit split multiply: no overflow) equals exact integer math."""
    from mathrl.rollout.sampler import _mix32, _mix32_int

    ref = x
    ref ^= ref >> 16
    ref = (ref * 0x7FEB352D) % 2**32
    ref ^= ref >> 15
    ref = (ref * 0x846CA68B) % 2**32
    ref ^= ref >> 16
    assert _mix32(torch.tensor([x])).item() == _mix32_int(x) == ref


def test_counter_uniforms_are_uniform_and_independent():
    """1000 streams x 200 steps: mean, variance, deciles and lag-1 correlations as U(0, 1)'s."""
    from mathrl.rollout.sampler import prompt_seed, row_keys, uniforms

    seeds = [prompt_seed(123, i) for i in range(250)]
    u = uniforms(row_keys(seeds, 4), 200)  # (1000, 200)
    m = u.numel()
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 4 * (1 / 12 / m) ** 0.5
    assert abs(float(u.var()) - 1 / 12) < 0.002
    deciles = torch.histc(u.float(), bins=10, min=0, max=1) / m
    assert ((deciles - 0.1).abs() < 4 * (0.09 / m) ** 0.5).all(), deciles
    c = u - 0.5
    for a, b in ((c[:, 1:], c[:, :-1]), (c[1:], c[:-1]), (c[4:], c[:-4])):  # step, sample, prompt
        corr = float((a * b).mean() / (a.std() * b.std()))
        assert abs(corr) < 4 / a.numel() ** 0.5, corr
    assert len(set(u[:, 0].tolist())) == 1000  # no two streams share a first draw
    # prompt_seed(s, 0) is s: one prompt sent alone with seed s keys like prompt 0 of a call
    assert prompt_seed(99, 0) == 99 and prompt_seed(-1, 0) == 2**64 - 1
    assert torch.equal(
        row_keys([prompt_seed(5, 1)], 3), row_keys([prompt_seed(5, 0), prompt_seed(5, 1)], 3)[3:]
    )


def test_a_prompts_samples_do_not_depend_on_its_batch(model, tokenizer, prompts):
    """Prompt 1 alone (seeded as prompt 1 of the full call) gives the full call's samples,
    whatever the batch size: the per-row streams make rollouts world-size invariant."""
    from mathrl.rollout.sampler import prompt_seed

    sampling = SamplingParams(n=4, max_new_tokens=12, seed=11)
    full = HFEngine(model, tokenizer, batch_size=64).generate(prompts, sampling)
    for batch_size in (1, 4, 64):
        engine = HFEngine(model, tokenizer, batch_size=batch_size)
        alone = engine.generate([prompts[1]], sampling, seeds=[prompt_seed(11, 1)])
        assert as_ids(alone) == as_ids(full)[4:8]
        split = engine.generate(prompts[1:], sampling, seeds=[prompt_seed(11, i) for i in (1, 2)])
        assert as_ids(split) == as_ids(full)[4:]
    with pytest.raises(MathrlError, match="2 seeds for 3 prompts"):
        engine.generate(prompts, sampling, seeds=[1, 2])


def test_prompt_chunks_sort_by_length_only_when_there_are_several():
    lengths = [5, 2, 9, 2, 7]
    assert prompt_chunks(lengths, 2) == [[1, 3], [0, 4], [2]]  # stable: 1 before 3
    assert prompt_chunks(lengths, 4) == [[1, 3, 0, 4], [2]]
    assert prompt_chunks(lengths, 5) == [[0, 1, 2, 3, 4]]  # one chunk: as given
    assert prompt_chunks([], 3) == []


@pytest.mark.parametrize("lean", [True, False])
def test_chunks_take_prompts_by_length_and_answer_in_the_callers_order(model, tokenizer, lean):
    """Prompts of 30, 5, 28 and 6 tokens, two per chunk: the chunks prefill (5, 6) and
    (28, 30) wide, not (30, 5) and (28, 6); completions come back prompt-major and the
    same as one chunk of all four gives."""
    ids = tokenizer("She sold 48 clips in April and 7 more in May.").input_ids
    prompts = [(ids * 3)[:30], ids[:5], (ids * 3)[:28], ids[:6]]
    sampling = SamplingParams(n=2, max_new_tokens=5, seed=3)
    widths = []

    def record(module, args, kwargs):
        if kwargs["input_ids"].shape[1] > 1:  # a prefill, not a decode step
            widths.append(tuple(kwargs["input_ids"].shape))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        split = HFEngine(model, tokenizer, batch_size=4, lean_decode=lean).generate(
            prompts, sampling
        )
    finally:
        hook.remove()
    assert widths == [(2, 6), (2, 30)]
    order = [(c.prompt_index, c.sample_index) for c in split.completions]
    assert order == [(p, s) for p in range(4) for s in range(2)]
    assert all(c.prompt_ids == prompts[c.prompt_index] for c in split.completions)
    whole = HFEngine(model, tokenizer, batch_size=8, lean_decode=lean).generate(prompts, sampling)
    assert as_ids(split) == as_ids(whole)


def test_reserved_kv_cache_gives_identical_samples(model, tokenizer, prompts, monkeypatch):
    """Decode K/V written in place (default) == transformers' concatenating cache, bitwise."""
    from mathrl.rollout import model_step

    converted = []
    real = model_step.reserve_cache
    monkeypatch.setattr(model_step, "reserve_cache", lambda c, e: converted.append(real(c, e)))
    params = SamplingParams(n=4, max_new_tokens=24, seed=5, temperature=1.1)
    engine = HFEngine(model, tokenizer, batch_size=8, reserve_kv=True, lean_decode=False)
    a = engine.generate(prompts, params)
    n_layers = model.config.num_hidden_layers
    assert converted and all(k == n_layers for k in converted)  # every layer, every chunk
    engine = HFEngine(model, tokenizer, batch_size=8, reserve_kv=False, lean_decode=False)
    b = engine.generate(prompts, params)
    assert len({c.finish_reason for c in a.completions}) == 2  # rows leave the cache mid-way
    assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
    assert [c.logprobs for c in a.completions] == [c.logprobs for c in b.completions]


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory, tokenizer):
    """A Llama with grouped-query attention (4 query heads share 2 K/V heads), EOS-biased."""
    path = build_scratch_model(
        tmp_path_factory.mktemp("llama"), TEXTS, arch="llama", hidden=64, layers=2, kv_heads=2
    )
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return with_logit_bias(model, tokenizer.convert_tokens_to_ids("<|im_end|>"), 3.0)


@pytest.mark.parametrize("arch", ["qwen2", "llama-gqa"])
@pytest.mark.parametrize(("n", "batch_size", "max_new"), [(4, 8, 40), (1, 64, 40), (8, 64, 60)])
def test_lean_decode_equals_transformers_forward(
    arch, n, batch_size, max_new, model, gqa_llama, tokenizer, prompts, monkeypatch
):
    """The lean step (shared prompt K/V) samples what transformers' forward does, both
    under the engine's one decode loop, each moving live rows into finished rows' slots."""
    from mathrl.rollout import hf_engine

    net = model if arch == "qwen2" else gqa_llama
    moves = []
    real = hf_engine._compact

    def counting(lean, slot_row, *args):
        moves.append(sum(r < 0 for r in slot_row[: len([r for r in slot_row if r >= 0])]))
        return real(lean, slot_row, *args)

    monkeypatch.setattr(hf_engine, "_compact", counting)
    params = SamplingParams(n=n, max_new_tokens=max_new, seed=3)
    lean = HFEngine(net, tokenizer, batch_size=batch_size).generate(prompts, params)
    assert moves and max(moves) > 0  # rows finished, and live rows moved into their slots
    moves.clear()
    ref = HFEngine(net, tokenizer, batch_size=batch_size, lean_decode=False).generate(
        prompts, params
    )
    assert moves and max(moves) > 0  # transformers' cache rows moved too (ModelStep)
    assert as_ids(lean) == as_ids(ref)
    assert [c.finish_reason for c in lean.completions] == [c.finish_reason for c in ref.completions]
    for a, b in zip(lean.completions, ref.completions, strict=True):
        torch.testing.assert_close(
            torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0
        )
    # and against a full forward pass over prompt + completion
    for c, expected in zip(
        lean.completions, recomputed_logprobs(net, lean.completions), strict=True
    ):
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


def test_lean_decode_declines_what_it_does_not_implement(model, tokenizer, prompts):
    from mathrl.rollout.lean_decode import LeanDecoder, unsupported_reason

    assert unsupported_reason(model) is None
    model.config.hidden_act = "gelu"
    try:
        assert unsupported_reason(model) == "hidden_act 'gelu' is not silu"
        with pytest.raises(ValueError, match="not silu"):
            LeanDecoder(model)
    finally:
        model.config.hidden_act = "silu"
    model.config.use_sliding_window = True
    try:
        assert unsupported_reason(model) == "sliding-window attention"
    finally:
        model.config.use_sliding_window = False
    assert "model_type 'gpt2'" in unsupported_reason(
        type("M", (), {"config": type("C", (), {"model_type": "gpt2"})()})()
    )


def test_no_deprecated_cache_kwarg(model, tokenizer, prompts):
    """The KV cache is passed under the name the installed transformers expects, silently."""
    import warnings

    from mathrl.models.logprobs import completion_batch, completion_logprobs

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lean in (True, False):
            engine = HFEngine(model, tokenizer, batch_size=8, lean_decode=lean)
            result = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=4, seed=0))
        comps = [c.token_ids for c in result.completions]
        batch = completion_batch(prompts, [i // 2 for i in range(6)], comps, 0, torch.device("cpu"))
        completion_logprobs(model, batch)
    assert not [w for w in caught if "past_key_values" in str(w.message)]


def test_rollouts_in_another_precision_than_the_model(model, tokenizer, prompts):
    """rollout.autocast = bfloat16 on an fp32 model: the same samples as the model set to
    autocast bf16 (one code path), log-probs off the fp32 forward's by bf16 rounding (what
    rollout/logprob_diff shows and train.tis_cap corrects), and the model itself untouched."""
    import copy

    from mathrl.models.precision import autocast_dtype, set_autocast

    sampling = SamplingParams(n=4, max_new_tokens=12, seed=3)
    low = HFEngine(model, tokenizer, batch_size=8, autocast="bfloat16").generate(prompts, sampling)
    assert autocast_dtype(model) is None  # training still runs in fp32
    as_model = copy.deepcopy(model)
    set_autocast(as_model, "bfloat16")
    same = HFEngine(as_model, tokenizer, batch_size=8).generate(prompts, sampling)
    assert as_ids(low) == as_ids(same)
    assert [c.logprobs for c in low.completions] == [c.logprobs for c in same.completions]
    fp32 = recomputed_logprobs(model, low.completions)
    gap = torch.cat(
        [torch.tensor(c.logprobs) - e for c, e in zip(low.completions, fp32, strict=True)]
    )
    assert 1e-4 < float(gap.abs().mean()) < 0.2, float(gap.abs().mean())
    with pytest.raises(MathrlError, match="rollout.autocast must be one of"):
        HFEngine(model, tokenizer, autocast="int4")


@pytest.mark.parametrize(("weights", "lo", "hi"), [("fp16", 1e-6, 1e-2), ("int8", 1e-3, 0.5)])
def test_rollouts_from_fp16_and_int8_weight_copies(
    weights, lo, hi, model, tokenizer, prompts, monkeypatch
):
    """rollout.weights = fp16 / int8: log-probs off the fp32 forward's by the copy's
    rounding; one copy serves calls while the weights stay, and an optimizer step (in
    place) makes the next call re-make it: never a stale copy."""
    import copy

    from mathrl.rollout import hf_engine

    built = []
    real = hf_engine.LeanDecoder

    def counting(*args, **kwargs):
        built.append(kwargs.get("weights", "model"))
        return real(*args, **kwargs)

    monkeypatch.setattr(hf_engine, "LeanDecoder", counting)
    net = copy.deepcopy(model)
    engine = HFEngine(net, tokenizer, batch_size=8, weights=weights)
    sampling = SamplingParams(n=4, max_new_tokens=12, seed=3)
    a, b = engine.generate(prompts, sampling), engine.generate(prompts, sampling)
    assert built == [weights]
    assert engine._cached is not None and engine._cached[1].sk == []  # no K/V held between calls
    assert as_ids(a) == as_ids(b)
    assert [c.logprobs for c in a.completions] == [c.logprobs for c in b.completions]
    fp32 = recomputed_logprobs(net, a.completions)
    gap = torch.cat(
        [torch.tensor(c.logprobs) - e for c, e in zip(a.completions, fp32, strict=True)]
    )
    assert lo < float(gap.abs().mean()) < hi, float(gap.abs().mean())

    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    sum(p.square().sum() for p in net.parameters()).backward()
    optimizer.step()
    after = engine.generate(prompts, sampling)
    assert built == [weights, weights]
    fresh = HFEngine(net, tokenizer, batch_size=8, weights=weights).generate(prompts, sampling)
    assert as_ids(after) == as_ids(fresh)
    assert [c.logprobs for c in after.completions] == [c.logprobs for c in fresh.completions]
    assert as_ids(after) != as_ids(a)  # the step did change what is sampled


def test_weight_copies_refused_in_one_line(model, tokenizer):
    """What fp16/int8 copies cannot serve is refused when the engine is built (or handed
    new weights), in one line."""
    import copy

    from mathrl.models.precision import set_autocast

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    autocast = copy.deepcopy(model)
    set_autocast(autocast, "bfloat16")
    cases = [
        (dict(weights="int4"), model, "rollout.weights must be one of model, fp16, int8"),
        (dict(weights="int8", lean_decode=False), model, "needs rollout.lean_decode = true"),
        (dict(weights="fp16"), bf16, "copies fp32 weights; this model has torch.bfloat16"),
        (dict(weights="int8"), autocast, "does not combine with autocast"),
        (dict(weights="int8", autocast="bfloat16"), model, "does not combine with autocast"),
    ]
    for kwargs, net, message in cases:
        with pytest.raises(MathrlError, match=message) as err:
            HFEngine(net, tokenizer, **kwargs)
        assert "\n" not in str(err.value)
    engine = HFEngine(model, tokenizer, weights="int8")
    with pytest.raises(MathrlError, match="copies fp32 weights"):
        engine.update_weights(bf16)
    assert engine.model is model


def test_evaluation_samples_from_the_models_own_weights(model, tokenizer):
    """rollout.weights reaches training rollouts (kept copy only outside the loop), never
    evaluation: eval accuracy is the checkpoint's."""
    from mathrl.config import load_config
    from mathrl.groups import rollout_engine

    cfg = load_config(overrides=["rollout.weights=int8"], env=False)
    assert rollout_engine(cfg, model, tokenizer).weights == "int8"
    assert rollout_engine(cfg, model, tokenizer).keep_copy
    assert not rollout_engine(cfg, model, tokenizer, run_dir=Path(".")).keep_copy
    assert rollout_engine(cfg, model, tokenizer, evaluation=True).weights == "model"


def test_engine_base_imports_no_framework():
    """The base, the stop rule and the seeds load without torch, transformers or mlx (the
    config imports the base through the engine registry)."""
    code = (
        "import sys; from mathrl.rollout import types, stops, seeds, registry; "
        "print(sorted({'torch', 'transformers', 'mlx'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


class Letters:
    """A tokenizer stub: decode writes token t as chr(96 + t) (1 -> "a"); 9 is the eos."""

    eos_token_id, unk_token_id = 9, 0

    def decode(self, ids, skip_special_tokens):
        return "".join(chr(96 + t) for t in ids)  # the eos too: the base must drop it

    def convert_tokens_to_ids(self, token):
        return 0  # no <|im_end|>: the unk id


class EchoEngine(RolloutEngine):
    """Only the chunk decode: sample j of a prompt repeats its last token j + 1 times; a
    prompt ending in 1 has its first sample stop (eos 9). Records each chunk's prompts."""

    def __init__(self, batch_size):
        self.tokenizer, self.batch_size, self.chunks = Letters(), batch_size, []

    def _decode_chunk(self, chunk, state):
        self.chunks.append(chunk.prompts)
        rows = []
        for p in chunk.prompts:
            for j in range(chunk.sampling.n):
                ids = [p[-1]] * (j + 1) + ([9] if j == 0 and p[-1] == 1 else [])
                rows.append((ids, [-0.5] * len(ids), "eos" if ids[-1] == 9 else "length"))
        return rows


def test_the_base_chunks_by_length_and_answers_in_the_callers_order():
    prompts = [[3, 3, 3], [1], [2, 2], [4, 4, 4, 4]]
    engine = EchoEngine(batch_size=4)  # n = 2: two prompts a chunk
    result = engine.generate(prompts, SamplingParams(n=2, seed=0))
    assert engine.chunks == [[[1], [2, 2]], [[3, 3, 3], [4, 4, 4, 4]]]
    got = [
        (c.prompt_index, c.sample_index, c.token_ids, c.text, c.finish_reason)
        for c in result.completions
    ]
    assert got == [
        (0, 0, [3], "c", "length"),
        (0, 1, [3, 3], "cc", "length"),
        (1, 0, [1, 9], "a", "eos"),  # the stop token stays in the ids, not in the text
        (1, 1, [1, 1], "aa", "length"),
        (2, 0, [2], "b", "length"),
        (2, 1, [2, 2], "bb", "length"),
        (3, 0, [4], "d", "length"),
        (3, 1, [4, 4], "dd", "length"),
    ]
    assert result.tokens_generated == 13 and result.completions[2].prompt_ids == [1]


@pytest.mark.parametrize(
    ("stops", "ignore_eos", "steps", "done", "finish", "tokens"),
    [
        # rows 0, 1, 2 draw 5, 9, 6; then rows 0 and 2 (row 1 has stopped) draw 9, 9
        (
            [9],
            False,
            [([0, 1, 2], [5, 9, 6]), ([0, 2], [9, 9])],
            [[1], [0, 1]],
            ["eos"] * 3,
            [[5, 9], [9], [6, 9]],
        ),
        # a stop drawn as the last allowed token ends its row too
        (
            [9],
            False,
            [([0, 1], [7, 8]), ([0, 1], [8, 9])],
            [[], [1]],
            ["length", "eos"],
            [[7, 8], [8, 9]],
        ),
        ([8, 9], False, [([0, 1], [8, 5]), ([1], [9])], [[0], [0]], ["eos", "eos"], [[8], [5, 9]]),
        (
            [9],
            True,
            [([0, 1], [9, 9]), ([0, 1], [9, 5])],
            [[], []],
            ["length"] * 2,
            [[9, 9], [9, 5]],
        ),
    ],
)
def test_stop_rule(stops, ignore_eos, steps, done, finish, tokens):
    out = DecodeRows(len(finish), stops, ignore_eos)
    assert [out.add(rows, toks, [-1.0] * len(toks)) for rows, toks in steps] == done
    assert [row[0] for row in out.rows()] == tokens and [row[2] for row in out.rows()] == finish


@pytest.mark.parametrize(
    ("stops", "ignore_eos", "block", "tokens", "logprobs", "finish"),
    [
        # cut after the first stop; a row with none keeps all; an empty block keeps nothing
        ([9], False, [[5, 9, 9, 7], [5, 6, 7, 8]], [[5, 9], [5, 6, 7, 8]], [[0, 1], [0, 1, 2, 3]],
         ["eos", "length"]),
        ([8, 9], False, [[8, 5], [6, 9]], [[8], [6, 9]], [[0], [0, 1]], ["eos", "eos"]),
        ([9], True, [[9, 9], [9, 5]], [[9, 9], [9, 5]], [[0, 1], [0, 1]], ["length"] * 2),
        ([9], False, [[], []], [[], []], [[], []], ["length"] * 2),
    ],
)  # fmt: skip
def test_stop_rule_on_a_block(stops, ignore_eos, block, tokens, logprobs, finish):
    """add_block keeps what add would, step by step (the static decode's whole block)."""
    out = DecodeRows(len(block), stops, ignore_eos)
    out.add_block(block, [[float(i) for i in range(len(row))] for row in block])
    assert [list(row) for row in out.rows()] == [
        [t, lp, f] for t, lp, f in zip(tokens, logprobs, finish, strict=True)
    ]
    stepwise = DecodeRows(len(block), stops, ignore_eos)
    live = list(range(len(block)))
    for step in range(len(block[0])):
        done = stepwise.add(live, [block[r][step] for r in live], [float(step)] * len(live))
        live = [r for i, r in enumerate(live) if i not in done]
    assert stepwise.rows() == out.rows()


def test_stop_ids_from_the_tokenizer_and_generation_config(tmp_path):
    tok = Letters()
    assert stop_ids(tok, None) == [9]
    assert stop_ids(tok, [4, 9, 2]) == [2, 4, 9] and stop_ids(tok, 3) == [3, 9]
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [7, 8]}')
    mlx_like = SimpleNamespace(name_or_path=str(tmp_path))
    assert saved_eos(mlx_like) == [7, 8]
    assert saved_eos(SimpleNamespace(mathrl_generation_config='{"eos_token_id": 5}')) == 5
    assert saved_eos(SimpleNamespace(name_or_path=str(tmp_path / "none"))) is None
    tok.eos_token_id = None
    with pytest.raises(MathrlError, match="no stop token"):
        stop_ids(tok, None)
