# ruff: noqa  (throwaway prototypes: evidence for proposed src changes, not project code)
"""Prototype: forward each group's prompt once in the training pass, its KV shared by the group.

Usage: .venv/bin/python bench/proto/prefix_train.py MODEL_DIR SPEC.json [GROUPS_PER_MICRO_BATCH]
Compares log-probs, gradients and fwd+bwd time with mathrl's sequence_logprobs on 8 prompts
x 8 random 128-token completions (micro-batches of whole groups).
"""

import json
import sys
import time

import torch

from mathrl.models.loading import load_model
from mathrl.models.logprobs import sequence_logprobs
from mathrl.models.logprobs import left_pad
from mathrl.models.logprobs import pad_batch

torch.set_num_threads(2)
path = sys.argv[1]
spec = json.load(open(sys.argv[2]))
mb_groups = int(sys.argv[3]) if len(sys.argv) > 3 else 2
model, tok = load_model(path, dtype="float32", device="cpu")
model.train()
P, G, T = 8, 8, 128
prompts = [r["ids"] for r in spec["prompts"][:P]]
gen = torch.Generator().manual_seed(0)
comps = [torch.randint(0, len(tok), (T,), generator=gen).tolist() for _ in range(P * G)]
pad = tok.pad_token_id


def baseline(groups):
    rows = [i for g in groups for i in range(g * G, (g + 1) * G)]
    seqs = [prompts[i // G] + comps[i] for i in rows]
    ids, attn, cmask = pad_batch(
        seqs, [len(prompts[i // G]) for i in rows], pad, torch.device("cpu")
    )
    lp = sequence_logprobs(model, ids, attn, cmask)
    return torch.stack([lp[j][cmask[j].bool()] for j in range(len(rows))])  # (B, T)


def shared(groups):
    p_ids, p_attn = left_pad([prompts[g] for g in groups], pad, torch.device("cpu"))  # (g, Lp)
    p_pos = (p_attn.cumsum(-1) - 1).clamp(min=0)
    dec = model.get_decoder()
    out = dec(input_ids=p_ids, attention_mask=p_attn, position_ids=p_pos, use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(G)
    last_h = out.last_hidden_state[:, -1].repeat_interleave(
        G, 0
    )  # (B, H) predicts completion token 0
    c_ids = torch.tensor([comps[i] for g in groups for i in range(g * G, (g + 1) * G)])  # (B, T)
    attn = torch.cat([p_attn.repeat_interleave(G, 0), torch.ones_like(c_ids)], 1)
    pos = p_pos[:, -1:].repeat_interleave(G, 0) + 1 + torch.arange(T)
    h = dec(
        input_ids=c_ids,
        attention_mask=attn,
        position_ids=pos,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state
    hid = torch.cat([last_h[:, None], h[:, :-1]], 1)  # (B, T, H)
    logits = model.get_output_embeddings()(hid).float()
    return torch.log_softmax(logits, -1).gather(-1, c_ids[..., None]).squeeze(-1)


groups_list = [list(range(k, k + mb_groups)) for k in range(0, P, mb_groups)]
a = baseline(groups_list[0])
b = shared(groups_list[0])
print("max |logp diff|:", (a - b).abs().max().item())


def step(fn):
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    for gs in groups_list:
        fn(gs).sum().backward()
    return time.perf_counter() - t


step(baseline)
step(shared)
for _ in range(3):
    print(
        "fwd+bwd over 64 rows: baseline %.2f s, shared prompt %.2f s"
        % (step(baseline), step(shared)),
        flush=True,
    )
# gradient agreement
model.zero_grad()
baseline(groups_list[0]).sum().backward()
g1 = [p.grad.clone() for p in model.parameters()]
model.zero_grad()
shared(groups_list[0]).sum().backward()
g2 = [p.grad.clone() for p in model.parameters()]
print(
    "max rel grad diff:", max(((x - y).norm() / (x.norm() + 1e-12)).item() for x, y in zip(g1, g2))
)
