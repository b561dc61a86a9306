"""A static-shape decode step: every tensor shape fixed for a chunk, so it compiles once.

The lean step (lean_decode.py) changes shape every token: its generated K/V grows by one
column and finished rows leave the batch. Here a chunk decodes a fixed number of rows
(`rows`; finished rows stay in place, their tokens ignored) against one preallocated K/V
buffer per layer of `rows x max_len` positions: the prompt's keys in columns [0, Lp), the
token generated at step t in column Lp + t, written at a per-row column index (a tensor,
not a Python int). Attention reads all `max_len` columns, masked by a per-row validity
mask (the prompt's left padding and the columns not yet written are masked). So the step
has one shape per (rows, max_len) bucket, which `torch.compile` specialises once:

- rows: the call's chunk rows (whole groups, up to rollout.batch_size); a last, smaller
  chunk is padded with dummy rows to the same count;
- max_len: prompt width + max_new_tokens, rounded up to a multiple of LEN_BUCKET (128).

A training run therefore compiles once or twice (GSM8K's prompt widths fall in one or two
buckets), evaluation once more for its own row count.

The maths is the lean step's (same GEMMs, same rotary, one softmax over prompt and
generated keys); its tokens and log-probs equal the lean step's (tested: greedy exactly,
sampled with the same per-completion streams, log-probs to 1e-5 in fp32).

`compile`: "off" runs the step eagerly (fp32 weights prepacked for oneDNN on a CPU, as the
lean step); "default" is `torch.compile(dynamic=False)` of the step (inductor); on CUDA
"cudagraphs" is `mode="reduce-overhead"` (CUDA graphs, the K/V buffers and weights marked
static so a replay copies nothing), on a CPU the same as "default". A compiled decoder is
kept by the engine across calls (weights refreshed in place), so its compiled step is
reused; inductor's cache stays on disk (`inductor_cache_dir`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mathrl.rollout.lean_decode import LeanDecoder, _layer_kv, _linear, _rotate

COMPILE_MODES = ("off", "default", "cudagraphs")
LEN_BUCKET = 128  # max_len is a multiple of this: few shapes, little masked waste


def len_bucket(length: int) -> int:
    """`length` rounded up to a multiple of LEN_BUCKET."""
    return -(-length // LEN_BUCKET) * LEN_BUCKET


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled kernels between runs: $TORCHINDUCTOR_CACHE_DIR if set,
    else $XDG_CACHE_HOME/mathrl/torchinductor (~/.cache/mathrl/torchinductor); set here
    before the first compile (torch's own default lies under /tmp, wiped on reboot)."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(base) / "mathrl" / "torchinductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def compile_options(mode: str, device_type: str) -> dict[str, Any]:
    """torch.compile's keyword arguments for rollout.compile = `mode` on `device_type`."""
    if mode not in COMPILE_MODES or mode == "off":
        raise ValueError(f"compile mode must be one of {COMPILE_MODES[1:]}, got {mode!r}")
    if mode == "cudagraphs" and device_type == "cuda":
        return {"dynamic": False, "mode": "reduce-overhead"}
    return {"dynamic": False}


class StaticDecoder(LeanDecoder):
    """Fixed-shape decode steps over `rows` rows (see module doc); `backend` overrides
    torch.compile's backend (tests count compiles with one)."""

    def __init__(
        self, model: nn.Module, rows: int, compile: str = "off", backend: Any = None
    ) -> None:
        super().__init__(model, rows=rows, pack=compile == "off")
        self.model = model
        self.rows = rows
        self.mode = compile
        self.compile_s = 0.0  # seconds spent in first calls of new buckets (compiling)
        self.check_every = 1 if self.device_type == "cpu" else 16  # "all finished?" syncs
        self._buffers: dict[int, tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = {}
        self._compiled: set[int] = set()  # max_len buckets already run once
        self._row_index = torch.arange(rows, device=self.embed.device)
        self._step_fn = self._static_step
        if compile != "off":
            inductor_cache_dir()
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
            options = compile_options(compile, self.device_type)
            if backend is not None:
                options = {"dynamic": False, "backend": backend}
            self._step_fn = torch.compile(self._static_step, **options)
            if self._cudagraphs:
                for t in _weight_tensors(self):
                    torch._dynamo.mark_static_address(t)

    @property
    def _cudagraphs(self) -> bool:
        return self.mode == "cudagraphs" and self.device_type == "cuda"

    def refresh(self) -> None:
        """Copy the model's current weights into this decoder's copies, in place (the same
        addresses: a compiled or captured step keeps reading them)."""
        fresh = LeanDecoder(self.model, pack=False)
        for old, new in zip(_weight_tensors(self), _weight_tensors(fresh), strict=True):
            if old.data_ptr() != new.data_ptr():  # the model's own tensors need no copy
                old.copy_(new)

    def load_cache(self, cache: Any, prompt_mask: torch.Tensor, n: int, extra: int) -> None:
        """Continue a prefill of P prompts (K/V (P, Hkv, Lp, D), mask (P, Lp)): row r
        continues prompt r // n (dummy rows past P * n continue the last prompt)."""
        n_prompts, lp = prompt_mask.shape
        max_len = len_bucket(lp + extra)
        keys, values, valid = self._buffers_for(max_len, _layer_kv(cache, 0)[0])
        device = prompt_mask.device
        row_prompt = (torch.arange(self.rows, device=device) // n).clamp_(max=n_prompts - 1)
        for i in range(len(self.layers)):
            k, v = _layer_kv(cache, i)
            keys[i][:, :, :, :lp] = k.to(keys[i].dtype)[row_prompt].transpose(-1, -2)
            values[i][:, :, :lp] = v.to(values[i].dtype)[row_prompt]
            values[i][:, :, lp:] = 0  # masked columns: 0 probability times a finite value
        valid.zero_()
        valid[:, :lp] = prompt_mask[row_prompt] != 0
        self.keys, self.values, self.valid = keys, values, valid
        self.start = lp  # step t writes column lp + t
        self.max_len = max_len

    def _buffers_for(
        self, max_len: int, like: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The K/V buffers of bucket `max_len`, allocated once per bucket and reused."""
        if max_len not in self._buffers:
            h, d, count = self.n_kv, self.head_dim, len(self.layers)
            keys = [like.new_zeros((self.rows, h, d, max_len)) for _ in range(count)]
            values = [like.new_zeros((self.rows, h, max_len, d)) for _ in range(count)]
            valid = torch.zeros((self.rows, max_len), dtype=torch.bool, device=like.device)
            if self._cudagraphs:
                for t in [*keys, *values, valid]:
                    torch._dynamo.mark_static_address(t)
            self._buffers[max_len] = (keys, values, valid)
        return self._buffers[max_len]

    def release(self) -> None:
        """Drop the K/V buffers (a compiled decoder keeps them: their addresses are baked in)."""
        if self.mode == "off":
            self._buffers.clear()

    def static_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor
    ) -> torch.Tensor:
        """Logits (rows, V) after feeding tokens (rows,) at positions (rows,); each row's
        K/V goes to cache column columns[r]."""
        first = self.max_len not in self._compiled
        t0 = time.perf_counter()
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device_type, enabled=False):  # dtypes are explicit here
            logits = self._step_fn(tokens, positions, columns)
        if first:
            self._compiled.add(self.max_len)
            if self.mode != "off":
                self.compile_s += time.perf_counter() - t0
        return logits

    def _static_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, columns: torch.Tensor
    ) -> torch.Tensor:
        r = tokens.shape[0]
        rows = self._row_index
        kv, d, g = self.n_kv, self.head_dim, self.n_heads // self.n_kv
        x = F.embedding(tokens, self.embed)  # (r, H)
        cos, sin = self.rotary(x, positions[:, None])  # (r, 1, D) each
        self.valid[rows, columns] = True
        bias = torch.zeros(self.valid.shape, device=x.device).masked_fill_(
            ~self.valid, float("-inf")
        )[:, None, None, :]  # (r, 1, 1, max_len)
        for i, layer in enumerate(self.layers):
            qkv = _linear(layer.ln1(x), layer.qkv_w, layer.qkv_b)  # (r, q + 2 kv)
            qk = qkv[:, : self.q_size + self.kv_size].view(r, -1, d)
            qk = _rotate(qk, cos, sin)
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]  # (r, heads, D), (r, kv, D)
            v = qkv[:, self.q_size + self.kv_size :].view(r, kv, d)
            keys, values = self.keys[i], self.values[i]  # (r, kv, D, L), (r, kv, L, D)
            keys[rows, :, :, columns] = k.to(keys.dtype)
            values[rows, :, columns] = v.to(values.dtype)
            qg = (q * self.scaling).view(r, kv, g, d)
            scores = (qg @ keys).float() + bias  # (r, kv, g, L)
            probs = scores.softmax(dim=-1).to(q.dtype)
            att = (probs @ values).reshape(r, self.q_size)  # (r, heads * D)
            x = x + _linear(att, layer.o_w, layer.o_b)
            gate, up = _linear(layer.ln2(x), layer.gate_up_w).chunk(2, dim=-1)
            x = x + _linear(F.silu(gate) * up, layer.down_w)
        return _linear(self.norm(x), self.head_w, self.head_b)


def _weight_tensors(decoder: LeanDecoder) -> list[torch.Tensor]:
    """The tensors a decoder's step reads its weights from (packed forms excluded)."""
    tensors = [decoder.embed, decoder.head_w, decoder.head_b]
    tensors += [t for layer in decoder.layers for t in vars(layer).values()]
    return [t for t in tensors if isinstance(t, torch.Tensor)]
