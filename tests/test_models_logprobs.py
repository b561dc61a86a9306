"""sequence_logprobs equals a naive per-sequence full-logits computation, with left padding."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM

from mathrl.models import logprobs as logprobs_mod
from mathrl.models.logprobs import position_ids_from_mask, sequence_logprobs
from mathrl.models.scratch import build_scratch_model

TEXTS = ["What is 12 + 345? The answer is 357.", "She sold 48 clips in April."] * 5


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request, tmp_path_factory):
    out = build_scratch_model(
        tmp_path_factory.mktemp(request.param), TEXTS, arch=request.param, hidden=64, seed=1
    )
    return AutoModelForCausalLM.from_pretrained(out).eval()


def left_padded_batch():
    """3 rows of real lengths 12, 8, 5 left-padded to 12; completions = last 4/3/2 tokens."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 250, (3, 12), generator=gen)
    attention_mask = torch.ones(3, 12, dtype=torch.long)
    attention_mask[1, :4] = 0
    attention_mask[2, :7] = 0
    input_ids[attention_mask == 0] = 0
    completion_mask = torch.zeros(3, 12, dtype=torch.long)
    completion_mask[0, 8:] = 1
    completion_mask[1, 9:] = 1
    completion_mask[2, 10:] = 1
    return input_ids, attention_mask, completion_mask


def naive_logprobs(model, input_ids, attention_mask, completion_mask):
    """Each row unpadded and run alone; full logits; log-prob of token t from logits t-1."""
    out = torch.zeros(input_ids.shape)
    entropy = torch.zeros(input_ids.shape)
    for b in range(input_ids.shape[0]):
        real = attention_mask[b].bool()
        ids = input_ids[b][real]
        logp = torch.log_softmax(model(ids[None]).logits[0].float(), -1)  # (T, V)
        start = int((~real).sum())
        for t in range(1, len(ids)):
            if completion_mask[b, start + t]:
                out[b, start + t] = logp[t - 1, ids[t]]
                entropy[b, start + t] = -(logp[t - 1].exp() * logp[t - 1]).sum()
    return out, entropy


@pytest.mark.parametrize("separable_head", [True, False])
def test_matches_naive_with_left_padding(model, monkeypatch, separable_head):
    # False: the full-logits path used for models whose logits are not just lm_head(hidden).
    monkeypatch.setattr(logprobs_mod, "_head_is_separable", lambda m: separable_head)
    batch = left_padded_batch()
    with torch.no_grad():
        logprobs, entropy = sequence_logprobs(model, *batch, return_entropy=True)
        expected, expected_entropy = naive_logprobs(model, *batch)
    assert logprobs.shape == (3, 12)
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, expected_entropy, atol=1e-5, rtol=0)
    # Scored exactly at completion positions, each a real log-prob.
    assert (logprobs[batch[2] == 0] == 0).all()
    assert (logprobs[batch[2] == 1] < 0).all()


def test_position_zero_is_never_scored(model):
    ids = torch.tensor([[5, 6, 7]])
    ones = torch.ones_like(ids)
    with torch.no_grad():
        logprobs = sequence_logprobs(model, ids, ones, ones)
    assert logprobs[0, 0] == 0 and (logprobs[0, 1:] < 0).all()


def test_gradients_flow(model):
    batch = left_padded_batch()
    logprobs = sequence_logprobs(model, *batch)
    logprobs.sum().backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad()


def test_position_ids_from_mask():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def _naive_completion_logprobs(model, prompt, completion):
    """One row, unpadded, full logits: log-prob of each completion token and the entropy."""
    ids = torch.tensor(prompt + completion)
    logp = torch.log_softmax(model(ids[None]).logits[0].float(), -1)  # (L, V)
    rows = range(len(prompt) - 1, len(ids) - 1)
    lp = torch.stack([logp[t, ids[t + 1]] for t in rows])
    ent = torch.stack([-(logp[t].exp() * logp[t]).sum() for t in rows])
    return lp, ent


# 3 prompts of lengths 7, 3, 5; 6 rows continuing them (two each, in mixed order),
# completions of lengths 4, 1, 3, 4, 2, 3: left-padded prompts and right-padded completions.
PROMPTS = [[5, 9, 13, 17, 21, 25, 29], [40, 41, 42], [60, 61, 62, 63, 64]]
ROWS = [0, 1, 2, 0, 2, 1]
COMPS = [[70, 71, 72, 73], [80], [90, 91, 92], [100, 101, 102, 103], [110, 111], [120, 121, 122]]


@pytest.mark.parametrize("share", [True, False])
def test_completion_logprobs_match_naive(model, share):
    from mathrl.models.logprobs import completion_batch, completion_logprobs

    batch = completion_batch(PROMPTS, ROWS, COMPS, pad_id=0, device=torch.device("cpu"))
    with torch.no_grad():
        lp, ent = completion_logprobs(model, batch, return_entropy=True, share_prompts=share)
    assert lp.shape == ent.shape == (6, 4)
    for i, (p, c) in enumerate(zip(ROWS, COMPS, strict=True)):
        want_lp, want_ent = _naive_completion_logprobs(model, PROMPTS[p], c)
        torch.testing.assert_close(lp[i, : len(c)], want_lp, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ent[i, : len(c)], want_ent, atol=2e-5, rtol=1e-5)
        assert (lp[i, len(c) :] == 0).all() and (ent[i, len(c) :] == 0).all()


def test_shared_prompt_gradients_equal_full_rows(model):
    """The shared-prompt forward gives the same parameter gradients as running every row."""
    from mathrl.models.logprobs import completion_batch, completion_logprobs

    batch = completion_batch(PROMPTS, ROWS, COMPS, pad_id=0, device=torch.device("cpu"))
    weights = torch.linspace(-1, 1, 24).reshape(6, 4)  # an arbitrary per-token loss weight
    grads = []
    for share in (True, False):
        model.zero_grad(set_to_none=True)
        (completion_logprobs(model, batch, share_prompts=share) * weights).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("chunk", [1, 3, 5, 100])
def test_chunked_head_equals_the_plain_path(model, chunk):
    """Log-probs, entropies and parameter gradients (through both) of the chunked head
    equal the one-pass head's, fp32 to 1e-5: only chunk x V logits exist at once."""
    from mathrl.models.logprobs import completion_batch, completion_logprobs

    batch = completion_batch(PROMPTS, ROWS, COMPS, pad_id=0, device=torch.device("cpu"))
    weights = torch.linspace(-1, 1, 24).reshape(6, 4)  # arbitrary per-token loss weights
    results = []
    for chunk_tokens in (0, chunk):
        model.zero_grad(set_to_none=True)
        lp, ent = completion_logprobs(
            model, batch, return_entropy=True, chunk_tokens=chunk_tokens, entropy_grad=True
        )
        (lp * weights + 0.3 * ent * weights.flip(0)).sum().backward()
        results.append((lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()]))
    (lp0, ent0, g0), (lp1, ent1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=0)
    assert ent0.abs().sum() > 0 and all(g.abs().sum() > 0 for g in g0[-1:])
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad(set_to_none=True)


def test_chunked_head_never_holds_more_than_a_chunk_of_logits(model, monkeypatch):
    """Every head call in forward and in the recomputing backward sees <= chunk rows."""
    from mathrl.models.logprobs import completion_batch, completion_logprobs

    batch = completion_batch(PROMPTS, ROWS, COMPS, pad_id=0, device=torch.device("cpu"))
    head = model.get_output_embeddings()
    seen: list[int] = []
    handle = head.register_forward_hook(lambda mod, args, out: seen.append(out.shape[0]))
    try:
        lp, ent = completion_logprobs(model, batch, return_entropy=True, chunk_tokens=4)
        lp.sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    n_tokens = sum(len(c) for c in COMPS)  # 17: 5 chunks in forward, 5 again in backward
    assert max(seen) == 4 and sum(seen) == 2 * n_tokens and len(seen) == 10
    assert not ent.requires_grad  # a metric: no graph without entropy_grad
