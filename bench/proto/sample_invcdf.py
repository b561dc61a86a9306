# ruff: noqa  (throwaway prototypes: evidence for proposed src changes, not project code)
"""Prototype: inverse-CDF sampling vs HFEngine.sample_next (torch.multinomial) per decode step.

Usage: .venv/bin/python bench/proto/sample_invcdf.py
"""

import time

import torch

torch.set_num_threads(2)
from mathrl.rollout.sampler import sample_next
from mathrl.rollout.types import SamplingParams

g = torch.Generator().manual_seed(0)
sp = SamplingParams(n=1, max_new_tokens=1, temperature=1.0, top_p=1.0, top_k=0)


def inv_cdf_sample(logits, gen):
    """Inverse-CDF sampling: one uniform per row instead of one exponential per vocab entry."""
    logp = torch.log_softmax(logits, dim=-1)  # (b, V)
    cdf = logp.exp().cumsum(-1, dtype=torch.float64)  # (b, V)
    u = torch.rand(logits.shape[0], 1, generator=gen, dtype=torch.float64) * cdf[:, -1:]
    tok = torch.searchsorted(cdf, u, right=True).clamp_(max=logits.shape[-1] - 1).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


for V in (2048, 49152):
    x = torch.randn(64, V)
    for name, f in (
        ("sample_next", lambda: sample_next(x, sp, g)),
        ("inv-cdf", lambda: inv_cdf_sample(x, g)),
    ):
        f()
        t = time.perf_counter()
        for _ in range(50):
            f()
        print(V, name, "%.2f ms" % ((time.perf_counter() - t) / 50 * 1e3))
# distribution check on a small vocab
x = torch.tensor([[0.0, 1.0, 2.0, -1.0, float("-inf")]]).repeat(200000, 1)
tok, _ = inv_cdf_sample(x, g)
print("empirical", torch.bincount(tok, minlength=5).double().div(len(tok)).tolist())
print("expected ", torch.softmax(x[0], -1).tolist())
