"""model.gradient_checkpointing: the same gradients, layers recomputed in the backward."""

import copy

import torch
from transformers import AutoModelForCausalLM

from mathrl.models.scratch import build_scratch_model
from mathrl.policy import enable_gradient_checkpointing

TEXTS = ["What is 12 + 345? The answer is 357.", "She sold 48 clips in April."] * 5


def loss_and_grads(model, ids, mask):
    model.train()
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
    loss = -(logp * mask[:, 1:]).sum() / mask[:, 1:].sum()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_gradients_equal_with_and_without_checkpointing(tmp_path):
    path = build_scratch_model(tmp_path / "m", TEXTS, hidden=64, layers=2)
    plain = AutoModelForCausalLM.from_pretrained(path)
    ckpt = copy.deepcopy(plain)
    enable_gradient_checkpointing(ckpt)
    calls = []
    # transformers checkpoints the layer's forward (no module hooks of the layer itself on
    # the recompute): count its first submodule's calls instead
    ckpt.model.layers[0].input_layernorm.register_forward_pre_hook(lambda *a: calls.append(1))
    torch.manual_seed(0)
    ids = torch.randint(5, plain.config.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding in one row
    loss_a, grads_a = loss_and_grads(plain, ids, mask)
    loss_b, grads_b = loss_and_grads(ckpt, ids, mask)
    assert len(calls) == 2  # layer 0 ran again in the backward: checkpointed
    torch.testing.assert_close(loss_b, loss_a, atol=0, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-7, rtol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in grads_a.values())
