"""MLXEngine on a tiny scratch model: greedy == mlx-lm, exact log-probs, per-row streams,
the same tokens as the torch HFEngine, eos handling; its sampler against sampler.py's."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import mlx.nn as mnn  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mlx_lm.generate import generate_step  # noqa: E402
from mlx_lm.models.cache import RotatingKVCache  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from mathrl.errors import MathrlError  # noqa: E402
from mathrl.models.loading import load_model  # noqa: E402
from mathrl.models.mlx_model import (  # noqa: E402
    completion_arrays,
    completion_logprobs_mlx,
    load_mlx_model,
)
from mathrl.models.scratch import build_scratch_model  # noqa: E402
from mathrl.rollout.hf_engine import HFEngine  # noqa: E402
from mathrl.rollout.mlx_engine import (  # noqa: E402
    MLXEngine,
    inverse_cdf_sample_mx,
    sample_next_mx,
)
from mathrl.rollout.sampler import inverse_cdf_sample, prompt_seed, sample_next  # noqa: E402
from mathrl.rollout.types import SamplingParams  # noqa: E402

TEXTS = ["What is 12 + 345? The answer is 357.", "She sold 48 clips in April."] * 5
QUESTIONS = ["What is 12 + 3?", "hi", "She sold 48 clips in April. How many in May?"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A scratch model with its own random lm_head: tied to the embeddings, a random model
    just repeats its input token, so greedy decoding would test nothing."""
    path = build_scratch_model(tmp_path_factory.mktemp("m"), TEXTS, hidden=64, layers=2)
    tied = AutoModelForCausalLM.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    config.tie_word_embeddings = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        state = {k: v for k, v in tied.state_dict().items() if k != "lm_head.weight"}
        model.load_state_dict(state, strict=False)
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, 0.7)
    model.generation_config = tied.generation_config
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def mlx_model(model_dir):
    return load_mlx_model(str(model_dir))


@pytest.fixture(scope="module")
def tokenizer(mlx_model):
    return mlx_model[1]


@pytest.fixture(scope="module")
def biased(model_dir, tokenizer):
    """The model with +6 on <|im_end|>'s logit, so completions stop at varied lengths."""
    return with_logit_bias(load_mlx_model(str(model_dir))[0], tokenizer, 6.0)


def with_logit_bias(model, tokenizer, bias):
    """Replace the lm_head by a copy with a bias on <|im_end|> (as test_rollout_engine does)."""
    weight = model.lm_head.weight
    head = mnn.Linear(weight.shape[1], weight.shape[0], bias=True)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    head.weight = weight
    head.bias = mx.zeros(weight.shape[0]).at[eos].add(bias)
    model.lm_head = head
    return model


@pytest.fixture(scope="module")
def torch_engine(model_dir):
    """HFEngine on the same model dir, loaded by the torch backend's loader."""
    return HFEngine(*load_model(str(model_dir), device="cpu"), batch_size=8)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    """Three lengths, and a one-token prompt: its row is all padding but the last column."""
    return [tokenizer(q).input_ids for q in QUESTIONS] + [[5]]


def engine(model, tokenizer, **kwargs):
    return MLXEngine(model, tokenizer, **kwargs)


def ids(result):
    return [c.token_ids for c in result.completions]


@pytest.mark.parametrize("prefill_step", [2048, 3])
def test_greedy_equals_mlx_lm_generate(mlx_model, tokenizer, prompts, prefill_step):
    model = mlx_model[0]
    result = engine(model, tokenizer, batch_size=8, prefill_step=prefill_step).generate(
        prompts, SamplingParams(max_new_tokens=12, greedy=True, ignore_eos=True)
    )
    argmax = lambda logprobs: mx.argmax(logprobs, axis=-1)  # noqa: E731
    for prompt, c in zip(prompts, result.completions, strict=True):
        steps = list(generate_step(mx.array(prompt), model, max_tokens=12, sampler=argmax))
        assert c.token_ids == [int(tok) for tok, _ in steps]
        # the log-probs too: greedy tokens alone barely depend on the context here
        want = [float(logprobs[int(tok)]) for tok, logprobs in steps]
        np.testing.assert_allclose(c.logprobs, want, atol=1e-5, rtol=0)
    # the reference is no degenerate repetition of one token
    assert min(len(set(t)) for t in ids(result)) >= 3
    assert len({tuple(t) for t in ids(result)}) == len(prompts)


@pytest.mark.parametrize("sampling_kw", [{}, {"temperature": 1.3, "top_p": 0.9, "top_k": 40}])
def test_logprobs_match_full_forward(biased, tokenizer, prompts, sampling_kw):
    # batch_size 8 with n=4: two chunks; rows finish (and leave the cache) at different steps.
    result = engine(biased, tokenizer, batch_size=8).generate(
        prompts, SamplingParams(n=4, max_new_tokens=20, seed=0, **sampling_kw)
    )
    assert {c.finish_reason for c in result.completions} == {"eos", "length"}
    assert len({len(c.token_ids) for c in result.completions}) > 5
    # the trainer's forward: right-padded prompt + completion rows, no cache
    arrays = completion_arrays([c.prompt_ids for c in result.completions], ids(result), pad_id=0)
    expected, _ = completion_logprobs_mlx(biased, arrays[0], arrays[1])  # (B, T)
    for i, c in enumerate(result.completions):
        want = np.array(expected[i, : len(c.token_ids)])
        np.testing.assert_allclose(c.logprobs, want, atol=1e-4, rtol=0)


def test_a_prompts_samples_do_not_depend_on_its_batch(biased, tokenizer, prompts):
    sampling = SamplingParams(n=3, max_new_tokens=16, seed=5)
    together = engine(biased, tokenizer, batch_size=8).generate(prompts, sampling)
    one_by_one = engine(biased, tokenizer, batch_size=1).generate(prompts, sampling)
    assert ids(one_by_one) == ids(together)
    for i, prompt in enumerate(prompts):
        alone = engine(biased, tokenizer, batch_size=8).generate(
            [prompt], sampling, seeds=[prompt_seed(5, i)]
        )
        assert ids(alone) == ids(together)[3 * i : 3 * i + 3]
        for a, b in zip(alone.completions, together.completions[3 * i :], strict=False):
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    other_seed = engine(biased, tokenizer, batch_size=8).generate(
        prompts, SamplingParams(n=3, max_new_tokens=16, seed=6)
    )
    assert ids(other_seed) != ids(together)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(n=2, max_new_tokens=16, seed=3),
        SamplingParams(n=2, max_new_tokens=16, seed=4, temperature=0.8, top_p=0.9, top_k=20),
        SamplingParams(max_new_tokens=16, greedy=True),
    ],
    ids=["temperature-1", "top-p-top-k", "greedy"],
)
def test_same_tokens_as_the_torch_engine(mlx_model, tokenizer, torch_engine, prompts, sampling):
    want = torch_engine.generate(prompts, sampling)
    got = engine(mlx_model[0], tokenizer, batch_size=8).generate(prompts, sampling)
    assert ids(got) == ids(want)
    assert [c.finish_reason for c in got.completions] == [c.finish_reason for c in want.completions]
    for g, w in zip(got.completions, want.completions, strict=True):
        np.testing.assert_allclose(g.logprobs, w.logprobs, atol=1e-4, rtol=0)
        assert g.text == w.text


def test_same_tokens_as_the_torch_engine_when_rows_stop(biased, tokenizer, model_dir, prompts):
    # Both models +6 on <|im_end|>: rows leave both engines' batches at the same steps.
    torch_model, torch_tokenizer = load_model(str(model_dir), device="cpu")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        torch_model.lm_head.bias = torch.nn.Parameter(torch.zeros(torch_model.config.vocab_size))
        torch_model.lm_head.bias[eos] = 6.0
    sampling = SamplingParams(n=4, max_new_tokens=20, seed=2)
    want = HFEngine(torch_model, torch_tokenizer, batch_size=8).generate(prompts, sampling)
    got = engine(biased, tokenizer, batch_size=8).generate(prompts, sampling)
    assert ids(got) == ids(want)
    assert [c.finish_reason for c in got.completions] == [c.finish_reason for c in want.completions]
    assert {c.finish_reason for c in got.completions} == {"eos", "length"}


def test_eos_rows_end_with_the_stop_token_and_text_omits_it(biased, tokenizer, prompts):
    eng = engine(biased, tokenizer)
    assert eng.stop_token_ids == sorted(
        tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    )
    stops = set(eng.stop_token_ids)
    result = eng.generate(prompts, SamplingParams(n=4, max_new_tokens=20, seed=1))
    for c in result.completions:
        *body, last = c.token_ids
        assert not stops & set(body)
        if c.finish_reason == "eos":
            assert last in stops
            assert c.text == tokenizer.decode(body, skip_special_tokens=True)
        else:
            assert len(c.token_ids) == 20 and last not in stops
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert {c.finish_reason for c in result.completions} == {"eos", "length"}

    full = eng.generate(prompts, SamplingParams(n=4, max_new_tokens=20, seed=1, ignore_eos=True))
    assert {len(c.token_ids) for c in full.completions} == {20}
    assert {c.finish_reason for c in full.completions} == {"length"}
    assert any(stops & set(c.token_ids[:-1]) for c in full.completions)
    # ignore_eos draws the same tokens up to where the stop ended a completion
    for short, long in zip(result.completions, full.completions, strict=True):
        assert long.token_ids[: len(short.token_ids)] == short.token_ids


def test_a_stop_drawn_as_the_last_allowed_token_is_eos(model_dir, tokenizer, prompts):
    certain = with_logit_bias(load_mlx_model(str(model_dir))[0], tokenizer, 50.0)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    result = engine(certain, tokenizer).generate(prompts, SamplingParams(max_new_tokens=1, seed=0))
    assert [(c.token_ids, c.finish_reason, c.text) for c in result.completions] == [
        ([eos], "eos", "")
    ] * len(prompts)


@pytest.mark.parametrize("batch_size", [2, 64])
def test_prompt_major_order_and_timing(biased, tokenizer, prompts, batch_size):
    result = engine(biased, tokenizer, batch_size=batch_size).generate(
        prompts, SamplingParams(n=3, max_new_tokens=6, seed=0)
    )
    order = [(c.prompt_index, c.sample_index) for c in result.completions]
    assert order == [(p, s) for p in range(len(prompts)) for s in range(3)]
    assert all(c.prompt_ids == prompts[c.prompt_index] for c in result.completions)
    assert result.tokens_generated == sum(len(c.token_ids) for c in result.completions)
    assert set(result.timing) == {"prefill_s", "decode_s", "total_s"}
    assert result.timing["total_s"] >= result.timing["prefill_s"] + result.timing["decode_s"]


def test_restores_training_mode(biased, tokenizer, prompts):
    biased.train()
    engine(biased, tokenizer).generate(prompts[:1], SamplingParams(max_new_tokens=2, seed=0))
    assert biased.training
    biased.eval()
    engine(biased, tokenizer).generate(prompts[:1], SamplingParams(max_new_tokens=2, seed=0))
    assert not biased.training


def test_bad_input_is_refused(biased, tokenizer):
    with pytest.raises(MathrlError, match="prompt 1 is empty"):
        engine(biased, tokenizer).generate([[1], []], SamplingParams())
    with pytest.raises(MathrlError, match="batch_size"):
        engine(biased, tokenizer, batch_size=0)
    with pytest.raises(MathrlError, match="prefill_step"):
        engine(biased, tokenizer, prefill_step=0)


def test_sliding_window_caches_are_refused(mlx_model, tokenizer, prompts):
    class SlidingWindow(mnn.Module):
        """The model, but with mlx-lm's sliding-window cache (as Gemma/Mistral make)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        @property
        def layers(self):
            return self.inner.layers

        def make_cache(self):
            return [RotatingKVCache(max_size=8) for _ in self.layers]

        def __call__(self, inputs, cache=None):
            return self.inner(inputs, cache=cache)

    eng = engine(SlidingWindow(mlx_model[0]), tokenizer, stop_token_ids=[2])
    with pytest.raises(MathrlError, match="plain KV caches only; this model uses RotatingKVCache"):
        eng.generate(prompts, SamplingParams(max_new_tokens=2, seed=0))


@pytest.mark.parametrize(
    ("probs", "u", "token"),
    [
        ([0.25, 0.25, 0.5], 0.0, 0),
        ([0.25, 0.25, 0.5], 0.2499999, 0),
        ([0.25, 0.25, 0.5], 0.25, 1),  # right=True: a cdf step equal to u is passed
        ([0.25, 0.25, 0.5], 0.5, 2),
        ([0.25, 0.25, 0.5], 1 - 2**-53, 2),
        ([0.0, 0.5, 0.0, 0.5, 0.0], 0.0, 1),  # zero-probability tokens are never drawn
        ([0.0, 0.5, 0.0, 0.5, 0.0], 0.5, 3),
        ([0.0, 0.5, 0.0, 0.5, 0.0], 1 - 2**-53, 3),
        ([0.0, 0.0, 1.0], 0.7, 2),
    ],
)
def test_inverse_cdf_sample_hand_computed(probs, u, token):
    got = inverse_cdf_sample_mx(mx.array([probs]), np.array([u]))
    assert got.tolist() == [token]
    assert inverse_cdf_sample(
        torch.tensor([probs]), torch.tensor([u], dtype=torch.float64)
    ).tolist() == [token]


def test_inverse_cdf_sample_equals_torch_on_a_large_vocab():
    # Flat-ish probs over 150k tokens: a float32 cumsum picks another token in ~1 of 4
    # rows here; the fixed-point one must agree with torch's float64 cumsum on all.
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(16, 151_936, generator=gen), dim=-1)
    u = torch.rand(16, generator=gen, dtype=torch.float64)
    want = inverse_cdf_sample(probs, u).tolist()
    assert inverse_cdf_sample_mx(mx.array(probs.numpy()), u.numpy()).tolist() == want


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"temperature": 0.7},
        {"top_k": 5},
        {"top_p": 0.8},
        {"temperature": 1.5, "top_p": 0.95, "top_k": 50},
        {"greedy": True},
    ],
)
def test_sample_next_equals_torch(kw):
    gen = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(64, 300, generator=gen)
    u = torch.rand(64, generator=gen, dtype=torch.float64)
    sampling = SamplingParams(**kw)
    want_tok, want_logp = sample_next(logits, sampling, u)
    tok, logp = sample_next_mx(mx.array(logits.numpy()), sampling, u.numpy())
    assert tok.tolist() == want_tok.tolist()
    np.testing.assert_allclose(np.array(logp), want_logp.numpy(), atol=1e-6, rtol=0)
