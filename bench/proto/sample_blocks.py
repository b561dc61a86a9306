# ruff: noqa  (throwaway prototypes: evidence for proposed src changes, not project code)
"""Sampler: one float64 cumsum over the vocabulary vs sampler.inverse_cdf_sample's two-level
search (float64 block sums, then one block's cumsum). Same tokens asserted; medians of 15
interleaved calls. Usage: .venv/bin/python bench/proto/sample_blocks.py
"""

import torch, time, statistics
from mathrl.rollout.sampler import inverse_cdf_sample

torch.set_num_threads(2)


def old(probs, u):
    cdf = probs.cumsum(-1, dtype=torch.float64)
    tok = torch.searchsorted(cdf, u.to(torch.float64)[:, None] * cdf[:, -1:], right=True)
    return tok.clamp_(max=probs.shape[-1] - 1).squeeze(-1)


g = torch.Generator().manual_seed(0)
for V in (49152, 151936):
    for b in (16, 64):
        probs = torch.softmax(3 * torch.randn(b, V, generator=g), -1)
        u = torch.rand(b, dtype=torch.float64, generator=g)
        assert old(probs, u).tolist() == inverse_cdf_sample(probs, u).tolist()
        res = {}
        for f in (old, inverse_cdf_sample) * 1:
            f(probs, u)
        ts = {old: [], inverse_cdf_sample: []}
        for _ in range(15):
            for f in (old, inverse_cdf_sample):
                t = time.perf_counter()
                f(probs, u)
                ts[f].append(time.perf_counter() - t)
        a, bb = (statistics.median(ts[f]) * 1e3 for f in (old, inverse_cdf_sample))
        print(f"V {V} rows {b}: one cumsum {a:.2f} ms, two-level {bb:.2f} ms ({a / bb:.1f}x)")
