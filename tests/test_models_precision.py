"""Mixed precision (model.autocast): forwards in bf16, fp32 weights and gradients."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathrl.errors import ConfigError
from mathrl.models.logprobs import completion_batch, completion_logprobs
from mathrl.models.precision import (
    autocast_dtype,
    forward_autocast,
    low_precision_weights_warning,
    pad_multiple,
    set_autocast,
)
from mathrl.models.scratch import build_scratch_model
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.types import SamplingParams

TEXTS = ["What is 12 + 345? The answer is 357.", "She sold 48 clips in April."] * 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = build_scratch_model(tmp_path_factory.mktemp("m"), TEXTS, hidden=64, layers=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = [tokenizer(q).input_ids for q in ["What is 12 + 3?", "She sold 48 clips."]]
    return model, tokenizer, prompts


def test_set_autocast_validates_and_travels_with_copies(setup):
    model = copy.deepcopy(setup[0])
    assert autocast_dtype(model) is None
    with pytest.raises(ConfigError, match="unknown autocast dtype 'bf16'"):
        set_autocast(model, "bf16")
    set_autocast(model, "bfloat16")
    assert autocast_dtype(copy.deepcopy(model)) is torch.bfloat16  # the KL reference copy
    with forward_autocast(model):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") is torch.bfloat16
    set_autocast(model, "none")
    with forward_autocast(model):
        assert not torch.is_autocast_enabled("cpu")


def rollout_and_rescore(model, tokenizer, prompts, lean):
    """Sampler log-probs vs the trainer's forward on the same tokens, per completion."""
    engine = HFEngine(model, tokenizer, batch_size=8, lean_decode=lean)
    result = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=16, seed=0))
    comps = [c.token_ids for c in result.completions]
    batch = completion_batch(prompts, [i // 4 for i in range(8)], comps, 0, torch.device("cpu"))
    with torch.no_grad():
        trained = completion_logprobs(model, batch)
    sampled = torch.zeros_like(trained)
    for i, c in enumerate(result.completions):
        sampled[i, : len(c.logprobs)] = torch.tensor(c.logprobs)
    return sampled, trained, batch.completion_mask.bool()


@pytest.mark.parametrize("lean", [True, False])
def test_bf16_rollout_and_training_forwards_agree_to_bf16_rounding(setup, lean):
    model, tokenizer, prompts = setup
    model = copy.deepcopy(model)
    sampled32, trained32, mask = rollout_and_rescore(model, tokenizer, prompts, lean)
    assert (sampled32 - trained32)[mask].abs().max() < 1e-4  # fp32: the same numbers
    set_autocast(model, "bfloat16")
    sampled, trained, mask16 = rollout_and_rescore(model, tokenizer, prompts, lean)
    gap = (sampled - trained)[mask16].abs().max()
    assert 0 < gap < 0.1  # bf16 GEMMs: a small sampler/trainer gap, not a broken forward
    # and autocast really ran: the bf16 training forward moved away from fp32's values
    assert (trained - trained32)[mask & mask16].abs().max() > 1e-4 or not (mask & mask16).any()


def test_bf16_training_step_keeps_fp32_weights_and_gradients(setup):
    model, _, prompts = setup
    model = copy.deepcopy(model).train()
    set_autocast(model, "bfloat16")
    batch = completion_batch(prompts, [0, 0, 1], [[5, 6, 7], [8, 9], [10]], 0, torch.device("cpu"))
    logprobs = completion_logprobs(model, batch)
    logprobs.sum().backward()  # outside autocast, as torch recommends
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert logprobs.dtype == torch.float32


def test_low_precision_weights_warning_names_the_fix():
    fp32 = [torch.zeros(3)]
    assert low_precision_weights_warning(fp32, 1e-6) is None
    msg = low_precision_weights_warning(fp32 + [torch.zeros(3, dtype=torch.bfloat16)], 1e-6)
    assert msg.startswith(
        "training bfloat16 weights: an AdamW step moves a weight by about lr (1e-06)"
    )
    assert "model.dtype=float32 with model.autocast=bfloat16" in msg
    # and the reason is real: a 1e-6 step on a typical weight is lost in bf16, kept in fp32
    w = torch.tensor([0.02])
    assert (w.bfloat16() + 1e-6).item() == w.bfloat16().item()
    assert (w + 1e-6).item() != w.item()


def test_cpu_autocast_pads_to_bounded_shapes_without_changing_logprobs(setup):
    """Widths round up to 32 under CPU autocast (bounded kernel shapes); values unchanged."""
    model, _, prompts = setup
    model = copy.deepcopy(model)
    assert pad_multiple(model) == 1
    set_autocast(model, "bfloat16")
    assert pad_multiple(model) == 32
    set_autocast(model, "none")
    comps = [[5, 6, 7], [8, 9], [10]]
    plain = completion_batch(prompts, [0, 0, 1], comps, 0, torch.device("cpu"))
    padded = completion_batch(prompts, [0, 0, 1], comps, 0, torch.device("cpu"), multiple=32)
    assert (
        plain.prompt_ids.shape[1] == max(map(len, prompts)) and plain.completion_ids.shape[1] == 3
    )
    assert padded.prompt_ids.shape[1] == 32 and padded.completion_ids.shape[1] == 32
    with torch.no_grad():
        a = completion_logprobs(model, plain)
        b = completion_logprobs(model, padded)
    torch.testing.assert_close(b[:, :3], a, atol=1e-5, rtol=0)
    assert (b[:, 3:] == 0).all()


def test_lean_decode_on_bf16_weights_matches_transformers(setup):
    """model.dtype=bfloat16 (no autocast): the lean step runs in bf16 like the model."""
    model, tokenizer, prompts = setup
    model = copy.deepcopy(model).to(torch.bfloat16)
    params = SamplingParams(n=4, max_new_tokens=12, seed=1)
    lean = HFEngine(model, tokenizer, batch_size=8).generate(prompts, params)
    ref = HFEngine(model, tokenizer, batch_size=8, lean_decode=False).generate(prompts, params)
    same = [
        (a, b)
        for a, b in zip(lean.completions, ref.completions, strict=True)
        if a.token_ids == b.token_ids
    ]
    assert len(same) >= 6  # bf16 rounding may flip a rare sample; most rows agree
    gap = max(max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) for a, b in same)
    assert gap < 0.1
