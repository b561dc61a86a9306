"""Batched, KV-cached sampling on an mlx-lm model: the MLX backend's HFEngine.

The chunk decode of the RolloutEngine base (rollout/types.py), as in rollout/hf_engine.py.
Per chunk of whole groups (~batch_size rows):
1. prefill each unique prompt once, then copy its KV rows for the n samples of its group;
2. decode one token per step; a row that emits a stop token leaves the batch and the KV
   cache at once (its rows are dropped, not masked), so finished rows cost no compute.

mlx-lm pieces used: the model's forward, and `BatchKVCache` for everything batched:
per-row RoPE offsets, the causal mask over left padding, `prepare`/`finalize` (prefill
right-padded, then roll each row's K/V so the padding sits on the left, as BatchGenerator
does), and `filter` (drop finished rows; with repeated indices, copy a prompt's rows for
its n samples). Written here instead:
- the loop, not `BatchGenerator`: its samplers see only log-probs (no decode step, so no
  per-row stream of uniforms) and run one row at a time when they differ; it extracts a
  prompt cache for every finished row, and prefills each of a group's n rows separately;
- the sampler (`sample_next_mx`), a port of rollout/sampler.py's `sample_next` so that
  MLX and torch choose the same token from the same logits and uniforms: the uniforms
  themselves come from sampler.py's integer hashes (`row_keys`, `uniforms`), unchanged.
  torch draws from a float64 cumsum, which Metal lacks; on mlx's CPU a float32 cumsum of
  flat-ish probs over 150k tokens was off by up to 3e-4 and drew another token than
  torch in 28% of rows, so `inverse_cdf_sample_mx` sums in exact integer fixed point
  (cdf error ~1e-10; no disagreement in the same rows).

Prefill evaluates only the cache (mlx is lazy: the unused (P, L, V) logits of the prompt
are never computed); the last prompt token's forward gives the (P, V) logits the first
token is drawn from, as in mlx-lm's own generate.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

from mathrl.errors import MathrlError
from mathrl.rollout.sampler import row_keys, uniforms
from mathrl.rollout.stops import DecodeRows, Row, saved_eos, stop_ids
from mathrl.rollout.types import Chunk, RolloutEngine, SamplingParams, eval_mode

TICK_BITS = 24  # first fixed-point level: probs in units of 2^-24 (a float32 mantissa)


class MLXEngine(RolloutEngine):
    """In-process rollout engine on an mlx-lm model (shares the trainer's weights).

    batch_size caps the rows (prompts x n) decoded together; a chunk holds whole groups.
    stop_token_ids defaults to stops.stop_ids (tokenizer eos + generation_config.json
    eos + <|im_end|>). prefill_step: prompt tokens per prefill forward (bounds memory).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 64,
        stop_token_ids: list[int] | None = None,
        prefill_step: int = 2048,
    ) -> None:
        if batch_size < 1:
            raise MathrlError(f"batch_size must be >= 1, got {batch_size}")
        if prefill_step < 1:
            raise MathrlError(f"prefill_step must be >= 1, got {prefill_step}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.prefill_step = prefill_step
        # an mlx-lm model has no generation_config: its eos is the saved file's
        self.stop_token_ids = stop_token_ids or stop_ids(tokenizer, saved_eos(model))
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_token_ids[0]

    def update_weights(self, model: Any) -> None:
        """Sample from `model` from now on (weights are shared in-process: no copy)."""
        self.model = model

    def _decoding(self, rows: int) -> AbstractContextManager[None]:
        return eval_mode(self.model)

    def _decode_chunk(self, chunk: Chunk, state: None) -> list[Row]:
        """Prefill the chunk's prompts once, then decode all n samples of each."""
        prompts, sampling, n = chunk.prompts, chunk.sampling, chunk.sampling.n
        u = None  # (B, max_new_tokens): row r's uniform at decode step t
        if not sampling.is_greedy:
            u = uniforms(row_keys(chunk.seeds, n), sampling.max_new_tokens).numpy()
        t0 = time.perf_counter()
        cache, logits = self._prefill(prompts)  # logits (P, V)
        if n > 1:  # the prompt's K/V rows copied for the n samples of its group
            group_rows = mx.repeat(mx.arange(len(prompts)), n)  # (B,) = 0,0,..,1,1,..
            for layer in cache:
                layer.filter(group_rows)
            logits = logits[group_rows]  # (B, V)
        mx.eval(logits, [layer.state for layer in cache])
        t1 = time.perf_counter()
        chunk.timing["prefill_s"] += t1 - t0
        rows = self._decode(cache, logits, sampling, u)
        chunk.timing["decode_s"] += time.perf_counter() - t1
        return rows

    def _prefill(self, prompts: list[list[int]]) -> tuple[list[Any], mx.array]:
        """Batched prefill: (one BatchKVCache per layer, last-token logits (P, V)).

        As mlx-lm's BatchGenerator: every prompt token but the last, right-padded, in
        chunks of prefill_step; then `finalize` rolls each row's K/V so its padding sits
        on the left (left padding from the start would give the pad positions query rows
        that see no key at all, whose softmax a fused attention kernel may turn into NaN).
        """
        heads = [p[:-1] for p in prompts]
        width = max(len(h) for h in heads)
        padding = [width - len(h) for h in heads]
        cache = self._make_cache(len(prompts))
        if width > 0:
            ids = mx.array([h + [self.pad_id] * pad for h, pad in zip(heads, padding, strict=True)])
            for layer in cache:
                layer.prepare(right_padding=padding)
            for start in range(0, width, self.prefill_step):
                self.model(ids[:, start : start + self.prefill_step], cache=cache)
                mx.eval([layer.state for layer in cache])  # only the cache: logits unused
            for layer in cache:
                layer.finalize()
        last = mx.array([p[-1:] for p in prompts])  # (P, 1)
        logits = self.model(last, cache=cache)[:, -1].astype(mx.float32)  # (P, V)
        return cache, logits

    def _make_cache(self, rows: int) -> list[Any]:
        """One BatchKVCache per layer; other cache kinds (sliding window, SSM) are refused."""
        kinds = {type(c).__name__ for c in make_prompt_cache(self.model)}
        if kinds != {KVCache.__name__}:
            raise MathrlError(
                f"the MLX rollout engine supports plain KV caches only; this model uses "
                f"{', '.join(sorted(kinds))}"
            )
        return [BatchKVCache([0] * rows) for _ in self.model.layers]

    def _decode(
        self,
        cache: list[Any],
        logits: mx.array,
        sampling: SamplingParams,
        u: np.ndarray | None,
    ) -> list[Row]:
        """Sample until every row stops; finished rows leave the batch and the KV cache."""
        out = DecodeRows(logits.shape[0], self.stop_token_ids, sampling.ignore_eos)
        rows = list(range(logits.shape[0]))  # original row of each active row
        for step in range(sampling.max_new_tokens):
            step_u = None if u is None else u[rows, step]  # (b,)
            next_tok, tok_logp = sample_next_mx(logits, sampling, step_u)  # (b,), (b,)
            done = out.add(rows, np.array(next_tok).tolist(), np.array(tok_logp).tolist())
            if step == sampling.max_new_tokens - 1:
                break
            if done:
                stopped = set(done)
                keep = [i for i in range(len(rows)) if i not in stopped]
                if not keep:
                    break
                keep_idx = mx.array(keep)
                for layer in cache:
                    layer.filter(keep_idx)
                rows = [rows[i] for i in keep]
                next_tok = next_tok[keep_idx]
            logits = self.model(next_tok[:, None], cache=cache)[:, -1].astype(mx.float32)
        return out.rows()


def sample_next_mx(
    logits: mx.array, sampling: SamplingParams, u: np.ndarray | None
) -> tuple[mx.array, mx.array]:
    """sampler.sample_next in MLX: next tokens (b,) and their raw (temperature 1) log-probs
    (b,), from float32 logits (b, V) and one float64 uniform per row u (b,)."""
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (b, V), temperature 1
    if sampling.is_greedy:
        next_tok = mx.argmax(logits, axis=-1)
    else:
        if u is None:
            raise ValueError("sampling needs one uniform per row")
        if sampling.temperature == 1.0 and sampling.top_k == 0 and sampling.top_p >= 1.0:
            probs = mx.exp(logp)  # the raw distribution: no second softmax
        else:
            scores = logits / sampling.temperature
            if sampling.top_k > 0:
                k = min(sampling.top_k, scores.shape[-1])
                kth = mx.min(mx.topk(scores, k, axis=-1), axis=-1, keepdims=True)  # (b, 1)
                scores = mx.where(scores < kth, -mx.inf, scores)
            if sampling.top_p < 1.0:
                scores = top_p_filter_mx(scores, sampling.top_p)
            probs = mx.softmax(scores, axis=-1)
        next_tok = inverse_cdf_sample_mx(probs, u)
    return next_tok, mx.take_along_axis(logp, next_tok[:, None], axis=-1).squeeze(-1)


def top_p_filter_mx(scores: mx.array, top_p: float) -> mx.array:
    """sampler.top_p_filter in MLX: mask tokens outside the smallest set reaching top_p."""
    order = mx.argsort(-scores, axis=-1)  # (b, V) descending
    sorted_scores = mx.take_along_axis(scores, order, axis=-1)
    sorted_probs = mx.softmax(sorted_scores, axis=-1)
    # Drop a token if the ones before it already reach top_p; the first token always stays.
    drop_sorted = (mx.cumsum(sorted_probs, axis=-1) - sorted_probs) >= top_p
    drop = mx.put_along_axis(mx.zeros(scores.shape, dtype=mx.bool_), order, drop_sorted, axis=-1)
    return mx.where(drop, -mx.inf, scores)


def inverse_cdf_sample_mx(probs: mx.array, u: np.ndarray) -> mx.array:
    """sampler.inverse_cdf_sample in MLX: the first index whose cumulative mass exceeds
    u * total, per row of probs (b, V) float32, u (b,) float64.

    The cumsum is exact integer fixed point: a prob in units of 2^-(24+k) splits into
    hi (units of 2^-24) + mid (units of 2^-(24+k)) + lo (the float32 remainder, < 1 unit);
    hi and mid sum exactly in int32 and only lo rounds, so the cdf is off by ~1e-10, like
    torch's float64 one (a plain float32 cumsum of 150k probs is off by up to ~3e-4).
    """
    vocab = probs.shape[-1]
    k = max(0, math.floor(math.log2(2**30 / (3 * vocab + 3))))  # int32 room: see `limit`
    scaled = probs * float(2**TICK_BITS)  # exact: a power-of-two scale
    hi = mx.floor(scaled)
    frac = (scaled - hi) * float(2**k)  # exact, in [0, 2^k)
    mid = mx.floor(frac)
    hi_cum = mx.cumsum(hi.astype(mx.int32), axis=-1)  # (b, V) <= ~2^24
    mid_cum = mx.cumsum(mid.astype(mx.int32), axis=-1)  # (b, V) <= V * 2^k
    lo_cum = mx.cumsum(frac - mid, axis=-1)  # (b, V) float32 <= V: the only rounding
    totals = np.array(mx.stack([hi_cum[:, -1], mid_cum[:, -1]], axis=-1)).astype(np.float64)
    lo_total = np.array(lo_cum[:, -1]).astype(np.float64)
    # target v = u * total in units of 2^-(24+k) (float64: 2^-18 units at most 2^35),
    # split like the cdf into (v_hi, v_mid, v_lo)
    v = u * (totals[:, 0] * 2.0**k + totals[:, 1] + lo_total)  # (b,)
    v_hi = np.floor(v / 2.0**k)
    rem = v - v_hi * 2.0**k
    v_mid = np.floor(rem)
    # cdf <= v  <=>  (hi_cum - v_hi) * 2^k + (mid_cum - v_mid) + (lo_cum - v_lo) <= 0. When
    # |hi_cum - v_hi| >= limit the first term alone decides the sign, so clipping it there
    # keeps the sum exact in int32 (|sum| < 2^30) without changing any sign.
    limit = 2 * vocab + 2
    d_hi = mx.clip(hi_cum - mx.array(v_hi.astype(np.int32))[:, None], -limit, limit)
    d_int = d_hi * (2**k) + (mid_cum - mx.array(v_mid.astype(np.int32))[:, None])
    d_lo = lo_cum - mx.array((rem - v_mid).astype(np.float32))[:, None]
    below = d_int.astype(mx.float32) + d_lo <= 0  # (b, V): cdf <= v
    return mx.minimum(mx.sum(below, axis=-1), vocab - 1).astype(mx.int32)
