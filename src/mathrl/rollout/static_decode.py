"""A static-shape decode step: every tensor shape fixed for a chunk, so it compiles once.

The lean step (lean_decode.py) changes shape every token: its generated K/V grows by one
column and finished rows leave the batch. Here a chunk decodes a fixed number of rows
(`rows`, whole groups of n samples; finished rows stay in place, their tokens ignored)
against K/V buffers allocated once per shape bucket. As in the lean step, each prompt's
K/V is held once and read once per step by all n rows of its group (on a CPU the step is
bound by reading the cache: a copy per row would read the prompt n times):

- prompt K/V per layer: (P, kv heads, ..., prompt_len) for the P = rows / n prompts, the
  prompt's keys in columns [0, Lp), the columns up to prompt_len masked;
- generated K/V per layer: (rows, kv heads, ..., new) columns; step t writes column t of
  every row (one index for all rows: they all start together), columns > t masked.

Attention reads all prompt_len + new columns with one softmax over both parts, masked by
an additive bias. So the step has one shape per bucket (rows, n, prompt_len, new), which
`torch.compile` specialises once:

- rows: the call's chunk rows (whole groups, up to rollout.batch_size); a last, smaller
  chunk is padded with dummy groups (continuing its last prompt) to the same count;
- prompt_len: the chunk's prompt width rounded up to a multiple of LEN_BUCKET (128);
- new: max_new_tokens.

A training run therefore compiles once or twice (GSM8K's prompt widths fall in one or two
buckets), evaluation once more for its own row count and sample count.

The maths is the lean step's (same GEMMs, same rotary, one softmax over prompt and
generated keys); its tokens and log-probs equal the lean step's (tested: greedy exactly,
sampled with the same per-completion streams, log-probs to 1e-5 in fp32).

`compile`: "off" runs the step eagerly (fp32 weights prepacked for oneDNN on a CPU, as the
lean step); "default" is `torch.compile(dynamic=False)` of the step (inductor; on a CPU the
same prepacked GEMMs, through an op inductor calls as it is, cpu_gemm.packed_linear); on CUDA
"cudagraphs" is `mode="reduce-overhead"` (CUDA graphs, the K/V buffers and weights marked
static so a replay copies nothing), on a CPU the same as "default". A compiled decoder is
kept by the engine across calls (its weights re-packed on a CPU, copied in place on CUDA),
so its compiled step is reused; inductor's cache stays on disk (`inductor_cache_dir`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mathrl.rollout.cpu_gemm import PackedLinear, packed_linear
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
        super().__init__(model, rows=rows)
        self.model = model
        self.rows = rows
        self.mode = compile
        self.compile_s = 0.0  # seconds spent in first calls of new buckets (compiling)
        self.check_every = 1 if self.device_type == "cpu" else 16  # "all finished?" syncs
        self._buffers: dict[tuple[int, int, int], _Buffers] = {}
        self._compiled: set[tuple[int, int, int]] = set()  # buckets already run once
        self._step_fn = self._static_step
        self._gemms = self._packed_gemms()
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
        """Take the model's current weights: packed for oneDNN anew (a compiled step gets
        them as an argument), or copied into this decoder's copies in place (the same
        addresses: a captured CUDA graph keeps reading them)."""
        if self._gemms is not None:
            fresh = LeanDecoder(self.model, rows=self.rows)
            self.layers, self.head_w, self.head_b = fresh.layers, fresh.head_w, fresh.head_b
            self._gemms = self._packed_gemms()
            return
        fresh = LeanDecoder(self.model, pack=False)
        for old, new in zip(_weight_tensors(self), _weight_tensors(fresh), strict=True):
            if old.data_ptr() != new.data_ptr():  # the model's own tensors need no copy
                old.copy_(new)

    def _packed_gemms(self) -> list[tuple[torch.Tensor, torch.Tensor | None, int]] | None:
        """packed_linear's arguments for every GEMM of a step (each layer's q/k/v, o,
        gate/up and down, then the head), made once per weight version: a compiled step
        gets them as an argument, so re-packed weights (refresh) need no recompile. None
        when not packed: the step reads its weight tensors in place (CUDA graphs keep
        their addresses)."""
        if not isinstance(self.head_w, PackedLinear):
            return None
        pairs = [*(p for layer in self.layers for p in _layer_gemms(layer)), (self.head_w, None)]
        return [w.parts() for w, _ in pairs]

    def load_cache(self, cache: Any, prompt_mask: torch.Tensor, n: int, extra: int) -> None:
        """Continue a prefill of P prompts (K/V (P, Hkv, Lp, D), mask (P, Lp)) with n rows
        each and room for `extra` generated tokens; row r continues prompt r // n (dummy
        groups past the P prompts continue the last one)."""
        n_prompts, lp = prompt_mask.shape
        if self.rows % n:
            raise ValueError(f"rows ({self.rows}) must be whole groups of n = {n}")
        slots = self.rows // n
        self.bucket = (n, len_bucket(lp), extra)
        buf = self._buffers_for(self.bucket, _layer_kv(cache, 0)[0])
        source = torch.arange(slots, device=prompt_mask.device).clamp_(max=n_prompts - 1)
        for i in range(len(self.layers)):
            k, v = _layer_kv(cache, i)
            buf.pk[i][..., :lp] = k.to(buf.pk[i].dtype)[source].transpose(-1, -2)
            buf.pv[i][:, :, :lp] = v.to(buf.pv[i].dtype)[source]
            buf.pv[i][:, :, lp:] = 0  # masked columns: 0 probability times a finite value
        buf.prompt_bias.fill_(float("-inf"))
        buf.prompt_bias[:, 0, 0, :lp].masked_fill_(prompt_mask[source] != 0, 0.0)
        self.buf = buf

    @property
    def max_len(self) -> int:
        """Key columns each row attends to: the prompt bucket plus the generated ones."""
        _, prompt_len, new = self.bucket
        return prompt_len + new

    def _buffers_for(self, bucket: tuple[int, int, int], like: torch.Tensor) -> _Buffers:
        """The K/V buffers of `bucket` (n, prompt_len, new), allocated once and reused."""
        if bucket not in self._buffers:
            n, prompt_len, new = bucket
            h, d, count, slots = self.n_kv, self.head_dim, len(self.layers), self.rows // n
            buf = _Buffers(
                pk=[like.new_zeros((slots, h, d, prompt_len)) for _ in range(count)],
                pv=[like.new_zeros((slots, h, prompt_len, d)) for _ in range(count)],
                sk=[like.new_zeros((self.rows, h, d, new)) for _ in range(count)],
                sv=[like.new_zeros((self.rows, h, new, d)) for _ in range(count)],
                prompt_bias=torch.zeros((slots, 1, 1, prompt_len), device=like.device),
                columns=torch.arange(new, device=like.device),
            )
            if self._cudagraphs:
                for t in buf.tensors():
                    torch._dynamo.mark_static_address(t)
            self._buffers[bucket] = buf
        return self._buffers[bucket]

    def release(self) -> None:
        """Drop the K/V buffers (a compiled decoder keeps them: their addresses are baked in)."""
        if self.mode == "off":
            self._buffers.clear()

    def static_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, column: torch.Tensor
    ) -> torch.Tensor:
        """Logits (rows, V) after feeding tokens (rows,) at positions (rows,); every row's
        K/V goes to generated column `column` (a (1,) tensor: the step's index)."""
        first = self.bucket not in self._compiled
        t0 = time.perf_counter()
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(self.device_type, enabled=False):  # dtypes are explicit here
            logits = self._step_fn(tokens, positions, column, self.buf, self._gemms)
        if first:
            self._compiled.add(self.bucket)
            if self.mode != "off":
                self.compile_s += time.perf_counter() - t0
        return logits

    def _static_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        column: torch.Tensor,
        buf: _Buffers,
        gemms: list[tuple[torch.Tensor, torch.Tensor | None, int]] | None,
    ) -> torch.Tensor:
        plain = []  # unpacked weights, read in place (a packed decoder's stay untouched)
        if gemms is None:
            plain = [p for layer in self.layers for p in _layer_gemms(layer)]
            plain.append((self.head_w, self.head_b))

        def linear(x: torch.Tensor, k: int) -> torch.Tensor:
            return _linear(x, *plain[k]) if gemms is None else packed_linear(x, *gemms[k])

        r = tokens.shape[0]
        slots = buf.prompt_bias.shape[0]
        kv, d, g = self.n_kv, self.head_dim, self.n_heads // self.n_kv
        n = r // slots
        x = F.embedding(tokens, self.embed)  # (r, H)
        cos, sin = self.rotary(x, positions[:, None])  # (r, 1, D) each
        own_bias = torch.zeros(buf.columns.shape, device=x.device).masked_fill_(
            buf.columns > column, float("-inf")
        )  # (new,): the columns generated so far, this step's included
        prompt_len = buf.prompt_bias.shape[-1]
        for i, layer in enumerate(self.layers):
            qkv = linear(layer.ln1(x), 4 * i)  # (r, q + 2 kv)
            qk = qkv[:, : self.q_size + self.kv_size].view(r, -1, d)
            qk = _rotate(qk, cos, sin)
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]  # (r, heads, D), (r, kv, D)
            v = qkv[:, self.q_size + self.kv_size :].view(r, kv, d)
            sk, sv = buf.sk[i], buf.sv[i]  # (r, kv, D, new), (r, kv, new, D)
            sk.index_copy_(3, column, k.to(sk.dtype)[..., None])
            sv.index_copy_(2, column, v.to(sv.dtype)[:, :, None])
            qg = (q * self.scaling).view(r, kv, g, d)
            # prompt part: each prompt's n rows as one (n * g)-row matmul on its keys
            by_prompt = qg.view(slots, n, kv, g, d).transpose(1, 2).reshape(slots, kv, n * g, d)
            s_prompt = (by_prompt @ buf.pk[i]).float() + buf.prompt_bias  # (P, kv, n g, Lp)
            s_prompt = s_prompt.view(slots, kv, n, g, prompt_len).transpose(1, 2)
            s_own = (qg @ sk).float() + own_bias  # (r, kv, g, new)
            scores = torch.cat([s_prompt.reshape(r, kv, g, prompt_len), s_own], dim=-1)
            probs = scores.softmax(dim=-1).to(q.dtype)
            p_prompt, p_own = probs[..., :prompt_len], probs[..., prompt_len:]
            p_prompt = p_prompt.reshape(slots, n, kv, g, prompt_len).transpose(1, 2)
            o_prompt = p_prompt.reshape(slots, kv, n * g, prompt_len) @ buf.pv[i]
            o_prompt = o_prompt.view(slots, kv, n, g, d).transpose(1, 2).reshape(r, kv, g, d)
            att = (o_prompt + p_own @ sv).reshape(r, self.q_size)  # (r, heads * D)
            x = x + linear(att, 4 * i + 1)
            gate, up = linear(layer.ln2(x), 4 * i + 2).chunk(2, dim=-1)
            x = x + linear(F.silu(gate) * up, 4 * i + 3)
        return linear(self.norm(x), 4 * len(self.layers))


@dataclass
class _Buffers:
    """The K/V of one shape bucket: prompt keys (P, kv, D, Lp) and values (P, kv, Lp, D),
    generated keys (rows, kv, D, new) and values (rows, kv, new, D) per layer, the prompt
    mask as an additive bias (P, 1, 1, Lp) and the generated columns' indices (new,)."""

    pk: list[torch.Tensor]
    pv: list[torch.Tensor]
    sk: list[torch.Tensor]
    sv: list[torch.Tensor]
    prompt_bias: torch.Tensor
    columns: torch.Tensor

    def tensors(self) -> list[torch.Tensor]:
        return [*self.pk, *self.pv, *self.sk, *self.sv, self.prompt_bias, self.columns]


def _layer_gemms(layer: Any) -> list[tuple[Any, torch.Tensor | None]]:
    """A layer's four GEMMs in step order, (weight, bias) each."""
    return [
        (layer.qkv_w, layer.qkv_b),
        (layer.o_w, layer.o_b),
        (layer.gate_up_w, None),
        (layer.down_w, None),
    ]


def _weight_tensors(decoder: LeanDecoder) -> list[torch.Tensor]:
    """The tensors a decoder's step reads its weights from (packed forms excluded)."""
    tensors = [decoder.embed, decoder.head_w, decoder.head_b]
    tensors += [t for layer in decoder.layers for t in vars(layer).values()]
    return [t for t in tensors if isinstance(t, torch.Tensor)]
