"""Choosing the next token from logits: greedy, or sampled with temperature / top-k / top-p,
with the chosen token's log-prob under the raw (temperature 1) distribution.

Where the randomness comes from: every completion has its own stream of uniforms, a pure
function of (prompt seed, sample index, decode step) computed with 32-bit integer hashing
(`uniforms`). So a prompt's samples do not depend on which other prompts share its batch,
on the batch size, on the number of ranks that split a step's prompts, or on the device:
the same integers give the same uniforms on CPU, CUDA and any other backend. A prompt's
seed is `prompt_seed(seed, i)`, the i-th prompt of a call seeded `seed`; `prompt_seed(s, 0)`
is `s`, so one prompt sent alone with seed s (an HTTP request) samples like prompt i of a
call when s = prompt_seed(seed, i).
"""

from __future__ import annotations

import numpy as np
import torch

# Re-exported: a prompt's seed picks its stream here, and callers reach both through the sampler.
from mathrl.rollout.seeds import (  # noqa: F401
    checked_seeds,
    prompt_chunks,
    prompt_seed,
    resolve_seeds,
)
from mathrl.rollout.types import SamplingParams

MASK32 = 0xFFFFFFFF
CDF_BLOCK = 1024  # entries per block of inverse_cdf_sample's two-level search
_M1, _M2 = 0x7FEB352D, 0x846CA68B  # the "lowbias32" multipliers (C. Wellons' hash-prospector)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32), without int64 overflow (16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash ("lowbias32"): every input bit moves every output bit."""
    x = x ^ (x >> 16)
    x = _mul32(x, _M1)
    x = x ^ (x >> 15)
    x = _mul32(x, _M2)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """_mix32 on a Python int (same values)."""
    x ^= x >> 16
    x = (x * _M1) & MASK32
    x ^= x >> 15
    x = (x * _M2) & MASK32
    return x ^ (x >> 16)


def row_keys(seeds: list[int], n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The stream key (B,) of each row, B = len(seeds) * n, prompt-major: row p*n + j is
    sample j of the prompt seeded seeds[p]."""
    keys = []
    for s in seeds:
        s %= 2**64
        base = _mix32_int(_mix32_int((s & MASK32) ^ 0x3C6EF372) ^ (s >> 32))
        keys += [_mix32_int(base ^ _mix32_int(j + 0x2545F491)) for j in range(n)]
    return torch.tensor(keys, dtype=torch.int64, device=device)


def uniforms(keys: torch.Tensor, steps: int) -> torch.Tensor:
    """Uniforms in [0, 1) of shape (B, steps), float64 with 53 random bits: row r, column t
    is the draw of stream keys[r] at decode step t."""
    t = torch.arange(steps, dtype=torch.int64, device=keys.device)
    x = _mix32(keys[:, None] ^ _mix32(t * 2 + 0x1B873593)[None, :])  # (B, steps)
    a = _mix32(x ^ 0x68E31DA4) >> 5  # 27 bits
    b = _mix32(x ^ 0x5BD1E995) >> 6  # 26 bits
    return (a * 2**26 + b).to(torch.float64) * 2.0**-53


def sample_next(
    logits: torch.Tensor, sampling: SamplingParams, u: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next tokens (b,) and their log-probs (b,) under the raw distribution, from logits
    (b, V) and one uniform per row u (b,) float64 (unused, and may be None, when greedy)."""
    logp = torch.log_softmax(logits, dim=-1)  # (b, V), temperature 1
    if sampling.is_greedy:
        next_tok = logits.argmax(dim=-1)
    else:
        if u is None:
            raise ValueError("sampling needs one uniform per row")
        if sampling.temperature == 1.0 and sampling.top_k == 0 and sampling.top_p >= 1.0:
            probs = logp.exp()  # the raw distribution: no second softmax
        else:
            scores = logits / sampling.temperature
            if sampling.top_k > 0:
                kth = torch.topk(scores, min(sampling.top_k, scores.shape[-1])).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if sampling.top_p < 1.0:
                scores = top_p_filter(scores, sampling.top_p)
            probs = torch.softmax(scores, dim=-1)
        next_tok = inverse_cdf_sample(probs, u)
    return next_tok, logp.gather(-1, next_tok[:, None]).squeeze(-1)


def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of probs (b, V): the first index whose cumulative mass exceeds u (b,).

    Exact like torch.multinomial, but one uniform per row instead of one exponential per
    vocabulary entry (10x faster per decode step here; BENCHMARKS.md). The cumulative mass
    is summed in float64, which keeps the rounding of a 150k-entry sum far below any
    token's probability, and right=True never lands on a zero-probability token (its cdf
    step is flat). Two levels: float64 sums of blocks of CDF_BLOCK entries locate the block
    holding u, then a cumsum of that block alone locates the token, instead of a cumsum
    over the whole vocabulary (a sequential pass: 83 ms at 64 x 152k here, 7 ms this way).
    """
    b, vocab = probs.shape
    block = CDF_BLOCK
    ends = _block_sums(probs, block).cumsum(-1)  # (b, nb): the cdf at each block's end
    target = u.to(device=probs.device, dtype=torch.float64)[:, None] * ends[:, -1:]  # (b, 1)
    blk = torch.searchsorted(ends, target, right=True).clamp_(max=ends.shape[1] - 1)
    before = torch.where(blk > 0, ends.gather(1, (blk - 1).clamp(min=0)), 0.0)  # (b, 1)
    offsets = torch.arange(block, device=probs.device)
    index = blk * block + offsets  # (b, block)
    inside = probs.gather(1, index.clamp(max=vocab - 1)) * (index < vocab)  # (b, block)
    cdf = inside.cumsum(-1, dtype=torch.float64)
    j = torch.searchsorted(cdf, target - before, right=True)  # (b, 1)
    # u at the block's very end (the two sums round differently by an ulp): its last
    # token with mass, never the zero-probability padding after it
    last = (offsets * (inside > 0)).amax(-1, keepdim=True)
    return (blk * block + torch.minimum(j, last)).squeeze(-1)


def _block_sums(probs: torch.Tensor, block: int) -> torch.Tensor:
    """float64 sums (b, ceil(V / block)) of consecutive blocks of float32 probs (b, V).

    On a CPU through numpy: torch converts float32 to float64 at ~4 ns per entry here
    (43 ms for 64 x 152k), numpy sums with a float64 accumulator in 7 ms.
    """
    b, vocab = probs.shape
    full = vocab // block * block
    if probs.device.type == "cpu" and probs.dtype == torch.float32:
        x = probs.detach().contiguous().numpy()
        sums = x[:, :full].reshape(b, -1, block).sum(-1, dtype=np.float64)
        if full < vocab:
            sums = np.concatenate([sums, x[:, full:].sum(-1, keepdims=True, dtype=np.float64)], 1)
        return torch.from_numpy(sums)
    out = probs[:, :full].reshape(b, -1, block).sum(-1, dtype=torch.float64)
    if full < vocab:
        out = torch.cat([out, probs[:, full:].sum(-1, keepdim=True, dtype=torch.float64)], 1)
    return out


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask tokens outside the smallest set whose probability reaches top_p (b, V)."""
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token if the ones before it already reach top_p; the first token always stays.
    drop_sorted = (cum - sorted_scores.softmax(dim=-1)) >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))
