"""The static-shape decode step (rollout/static_decode.py) and rollout.compile."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathrl.errors import MathrlError
from mathrl.models.scratch import build_scratch_model, with_logit_bias
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.static_decode import (
    LEN_BUCKET,
    StaticDecoder,
    compile_options,
    inductor_cache_dir,
    len_bucket,
)
from mathrl.rollout.types import SamplingParams

TEXTS = ["What is 12 + 345? The answer is 357.", "She sold 48 clips in April."] * 5
QUESTIONS = ["What is 12 + 3?", "hi", "She sold 48 clips in April. How many in May?"]


def with_eos_bias(model, tokenizer, bias=3.0):
    """<|im_end|> ~6% per step, so rows stop at varied steps."""
    return with_logit_bias(model, tokenizer.convert_tokens_to_ids("<|im_end|>"), bias)


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory):
    return build_scratch_model(tmp_path_factory.mktemp("m"), TEXTS, hidden=64, layers=2)


@pytest.fixture(scope="module")
def tokenizer(scratch_dir):
    return AutoTokenizer.from_pretrained(scratch_dir)


@pytest.fixture(scope="module")
def qwen2(scratch_dir, tokenizer):
    return with_eos_bias(AutoModelForCausalLM.from_pretrained(scratch_dir).eval(), tokenizer)


@pytest.fixture(scope="module")
def gqa_llama(tmp_path_factory, tokenizer):
    """A Llama with grouped-query attention (4 query heads share 2 K/V heads)."""
    path = build_scratch_model(
        tmp_path_factory.mktemp("llama"), TEXTS, arch="llama", hidden=64, layers=2, kv_heads=2
    )
    return with_eos_bias(AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(q).input_ids for q in QUESTIONS]


def assert_same(a, b):
    """Same tokens and finish reasons; log-probs within 1e-5 (fp32)."""
    assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
    assert [c.finish_reason for c in a.completions] == [c.finish_reason for c in b.completions]
    for x, y in zip(a.completions, b.completions, strict=True):
        torch.testing.assert_close(
            torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("arch", ["qwen2", "llama-gqa"])
@pytest.mark.parametrize(
    ("sampling", "batch_size"),
    [
        (dict(n=4, max_new_tokens=40, seed=3), 8),  # 2 chunks, the second padded with dummy rows
        (dict(n=1, max_new_tokens=40, greedy=True, ignore_eos=True), 64),  # EOS is argmax at once
        (dict(n=8, max_new_tokens=60, seed=1, top_k=5, temperature=0.7), 64),
        (dict(n=2, max_new_tokens=20, seed=5, top_p=0.9, ignore_eos=True), 4),
    ],
)
def test_static_step_equals_the_lean_step(
    arch, sampling, batch_size, qwen2, gqa_llama, tokenizer, prompts, monkeypatch
):
    net = qwen2 if arch == "qwen2" else gqa_llama
    shapes = set()
    real = StaticDecoder.static_step

    def recording(self, tokens, positions, column):
        shapes.add((tokens.shape[0], self.max_len))
        return real(self, tokens, positions, column)

    monkeypatch.setattr(StaticDecoder, "static_step", recording)
    params = SamplingParams(**sampling)
    lean = HFEngine(net, tokenizer, batch_size=batch_size).generate(prompts, params)
    static = HFEngine(net, tokenizer, batch_size=batch_size, static_decode=True).generate(
        prompts, params
    )
    assert_same(static, lean)
    assert len(shapes) == 1  # every chunk and step had one shape (rows, max_len)
    if not params.ignore_eos:
        assert {c.finish_reason for c in static.completions} >= {"eos"}


@pytest.mark.parametrize(
    ("mode", "device", "expected"),
    [
        ("default", "cpu", {"dynamic": False}),
        ("default", "cuda", {"dynamic": False}),
        ("cudagraphs", "cuda", {"dynamic": False, "mode": "reduce-overhead"}),
        ("cudagraphs", "cpu", {"dynamic": False}),  # no CUDA graphs on a CPU
    ],
)
def test_compile_options(mode, device, expected):
    assert compile_options(mode, device) == expected


@pytest.mark.parametrize("bad", ["off", "max-autotune", ""])
def test_compile_options_refuse_other_modes(bad):
    with pytest.raises(ValueError, match="compile mode must be one of"):
        compile_options(bad, "cpu")


def test_len_buckets():
    assert LEN_BUCKET == 128
    assert [len_bucket(n) for n in (1, 127, 128, 129, 300)] == [128, 128, 128, 256, 384]


def test_inductor_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert inductor_cache_dir() == tmp_path / "mathrl" / "torchinductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert inductor_cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(compile="default"), "needs rollout.static_decode = true"),
        (dict(compile="graphs", static_decode=True), "rollout.compile must be one of"),
        (dict(static_decode=True, weights="fp16"), "decodes from the model's own weights"),
    ],
)
def test_bad_options_are_one_line_errors(qwen2, tokenizer, kwargs, message):
    with pytest.raises(MathrlError, match=message):
        HFEngine(qwen2, tokenizer, **kwargs)


def test_compiled_step_compiles_once_and_follows_weight_updates(qwen2, tokenizer, prompts):
    """Two calls of two chunks each (one padded), 16 steps: one compile; after an in-place
    weight update (what an optimizer step does) the kept decoder samples the new weights."""
    torch._dynamo.reset()
    counter = CompileCounter()
    engine = HFEngine(
        qwen2, tokenizer, batch_size=8, static_decode=True, compile="default",
        compile_backend=counter,
    )  # fmt: skip
    eager = HFEngine(qwen2, tokenizer, batch_size=8, static_decode=True)
    params = SamplingParams(n=4, max_new_tokens=16, seed=11)
    first = engine.generate(prompts, params)
    assert_same(first, eager.generate(prompts, params))
    assert counter.frame_count == 1
    assert first.timing["compile_s"] > 0
    assert max(len(c.token_ids) for c in first.completions) > 8  # many steps, one compile
    layer = qwen2.model.layers[0]
    saved = layer.self_attn.q_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.self_attn.q_proj.weight.mul_(3.0)  # q/k/v are packed copies: refreshed
            qwen2.lm_head.bias.add_(0.5)  # the model's own tensor: read in place
        engine.update_weights(qwen2)  # as the trainer does after every optimizer step
        second = engine.generate(prompts, params)
        assert_same(second, eager.generate(prompts, params))
        assert [c.logprobs for c in second.completions] != [c.logprobs for c in first.completions]
    finally:
        with torch.no_grad():
            layer.self_attn.q_proj.weight.copy_(saved)
            qwen2.lm_head.bias.sub_(0.5)
    assert counter.frame_count == 1  # no recompilation per step, per chunk or per call
    assert second.timing["compile_s"] == 0.0
    # a prompt width in another bucket: one more compile, once
    long_prompts = [prompts[0] * 20] * 3  # one width: one bucket for both chunks
    assert len_bucket(len(long_prompts[0])) > len_bucket(max(map(len, prompts)))
    engine.generate(long_prompts, params)  # two chunks: compiled for the first only
    assert counter.frame_count == 2


@pytest.mark.slow
def test_inductor_compiled_step_equals_eager(qwen2, tokenizer, prompts):
    """rollout.compile = "default" through inductor (a C++ compile: ~1 min on 2 cores)."""
    torch._dynamo.reset()
    params = SamplingParams(n=4, max_new_tokens=24, seed=2)
    compiled = HFEngine(qwen2, tokenizer, batch_size=8, static_decode=True, compile="default")
    eager = HFEngine(qwen2, tokenizer, batch_size=8, static_decode=True)
    result = compiled.generate(prompts, params)
    assert_same(result, eager.generate(prompts, params))
    assert result.timing["compile_s"] > 0
