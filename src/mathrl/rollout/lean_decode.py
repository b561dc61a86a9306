"""A lean decode step for Llama-family decoders (Llama, Qwen2): one token per row per call.

Why: on a CPU (and for small models anywhere) a transformers decode forward is bound by
Python and dispatch overhead, not by its GEMMs: mask building, output dataclasses, cache
objects, kwargs plumbing and ~15 module calls per layer. This step does the same maths
with the fewest tensor ops: q/k/v in one GEMM, gate/up in one GEMM, K/V written in place
into preallocated buffers, one rotary table per step. A prompt's keys are stored and read
once for all the rows that continue it (a GRPO group), not once per row.

Same values as the model's own forward (tested against it to float tolerance); the prefill
still runs through transformers, whose cache this step continues. Weights are packed
(copied) when the decoder is built, so a decoder serves the weights of its build time:
HFEngine builds one per generate call, or keeps an fp16/int8 one while no parameter changes. For anything outside the supported family (other attention
kinds, sliding windows, other activations, scaled logits) `unsupported_reason` says why,
and the engine falls back to transformers' forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mathrl.rollout import cpu_gemm
from mathrl.rollout.cpu_gemm import WEIGHT_MODES, CpuLinear

SUPPORTED_TYPES = ("llama", "qwen2")


# A GEMM weight: a float tensor, or a packed/fp16/int8 copy with its bias inside.
Weight = torch.Tensor | CpuLinear


@dataclass
class _Layer:
    ln1: nn.Module  # the layer's own input RMSNorm (kept in the model's dtype)
    qkv_w: Weight  # (q + 2 kv, H) packed q/k/v projections
    qkv_b: torch.Tensor | None
    o_w: Weight
    o_b: torch.Tensor | None
    ln2: nn.Module  # post-attention RMSNorm
    gate_up_w: Weight  # (2 I, H) packed gate/up projections
    down_w: Weight


def unsupported_reason(model: nn.Module) -> str | None:
    """Why `model` cannot use the lean step, or None if it can."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model_type {kind!r} is not one of {SUPPORTED_TYPES}"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(cfg, 'hidden_act', None)!r} is not silu"
    if getattr(cfg, "use_sliding_window", False) or any(
        t != "full_attention" for t in getattr(cfg, "layer_types", None) or []
    ):
        return "sliding-window attention"
    if getattr(cfg, "mlp_bias", False):
        return "MLP biases"
    if getattr(cfg, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return f"attention implementation {cfg._attn_implementation!r}"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "tensor-parallel pretraining layout"
    if any(hasattr(m, "lora_A") for m in model.modules()):
        # under peft q/k/v/o_proj.weight is the base layer's: packing it would sample from
        # the base model, not the adapted policy
        return "LoRA adapters (peft): the packed weights would be the base layers' alone"
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return "output head is not a Linear"
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
        return "scaled or soft-capped logits"
    return None


class LeanDecoder:
    """Decode steps for one generate call, on K/V buffers it owns (see module doc)."""

    def __init__(
        self, model: nn.Module, weights: str = "model", rows: int = 64, pack: bool = True
    ) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"lean decode does not support this model: {reason}")
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {weights!r}")
        base = model.get_decoder()
        cfg = model.config
        self.embed = base.embed_tokens.weight
        self.rotary = base.rotary_emb
        self.norm = base.norm
        head = model.get_output_embeddings()
        self.head_w: Weight = head.weight
        self.head_b: torch.Tensor | None = head.bias
        attn0 = base.layers[0].self_attn
        self.head_dim = int(attn0.head_dim)
        self.scaling = float(attn0.scaling)
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(cfg.num_key_value_heads)
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv * self.head_dim
        self.device_type = self.embed.device.type
        if weights != "model" or (
            pack
            and self.device_type == "cpu"
            and self.embed.dtype == torch.float32
            and not torch.is_autocast_enabled(self.device_type)
            and cpu_gemm.packed_linear_available()
        ):
            # On a CPU: every GEMM weight packed once here (cpu_gemm.py), biases folded in:
            # fp32 reordered for oneDNN (for batches of about `rows` rows), or an fp16/int8
            # copy. The embedding lookup, norms and attention keep the model's precision.
            self.head_w, self.head_b = cpu_gemm.pack(weights, self.head_w, self.head_b, rows), None
            # layer by layer: one layer's concatenated copies alive at a time
            self.layers = [
                _packed_layer(self._pack(layer), weights, rows)
                for layer in base.layers[: cfg.num_hidden_layers]
            ]
        else:
            self.layers = [self._pack(layer) for layer in base.layers[: cfg.num_hidden_layers]]
            if torch.is_autocast_enabled(self.device_type):
                # Under autocast (models/precision.py) the GEMM weights are cast once, here,
                # not at every step; attention, norms and the residual stream stay in fp32.
                low = torch.get_autocast_dtype(self.device_type)
                self.head_w, self.head_b = _cast(self.head_w, low), _cast(self.head_b, low)
                self.layers = [
                    _Layer(**{k: _cast(v, low) for k, v in vars(layer).items()})
                    for layer in self.layers
                ]
        self.pk: list[torch.Tensor] = []  # per layer: prompt keys, transposed (P, Hkv, D, Lp)
        self.pv: list[torch.Tensor] = []  # prompt values (P, Hkv, Lp, D)
        self.sk: list[torch.Tensor] = []  # generated keys (rows, Hkv, extra, D)
        self.sv: list[torch.Tensor] = []  # generated values (rows, Hkv, extra, D)
        self.used = 0  # generated positions filled in every slot

    @staticmethod
    def _pack(layer: nn.Module) -> _Layer:
        a, m = layer.self_attn, layer.mlp
        biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
        qkv_b = (
            None
            if all(b is None for b in biases)
            else torch.cat(
                [
                    b if b is not None else p.weight.new_zeros(p.out_features)
                    for b, p in zip(biases, (a.q_proj, a.k_proj, a.v_proj), strict=True)
                ]
            )
        )
        return _Layer(
            ln1=layer.input_layernorm,
            qkv_w=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
            qkv_b=qkv_b,
            o_w=a.o_proj.weight,
            o_b=a.o_proj.bias,
            ln2=layer.post_attention_layernorm,
            gate_up_w=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
            down_w=m.down_proj.weight,
        )

    def load_cache(self, cache: Any, prompt_mask: torch.Tensor, rows: int, extra: int) -> None:
        """Continue a prefill of P prompts (cache K/V (P, Hkv, Lp, D), mask (P, Lp)).

        The prompts' K/V are kept once, however many rows continue each prompt (no
        copies: a group of n samples reads its prompt's keys once per step); each of the
        `rows` rows gets room for `extra` generated positions of its own.
        """
        self.pk, self.pv, self.sk, self.sv = [], [], [], []
        for i in range(len(self.layers)):
            keys, values = _layer_kv(cache, i)
            _, h, _, d = keys.shape
            # Prompt keys are stored transposed, (.., D, Lp): the score matmul reads in order.
            self.pk.append(keys.transpose(-1, -2).contiguous())
            # Under autocast transformers leaves values in low precision and rotated keys
            # in fp32: hold both in the keys' dtype, as the attention maths runs in it.
            self.pv.append(values.to(keys.dtype))
            self.sk.append(keys.new_empty((rows, h, extra, d)))
            self.sv.append(keys.new_empty((rows, h, extra, d)))
        # Additive key mask of the prompts' left padding: 0 for a token, -inf for padding.
        self.prompt_bias = torch.zeros(prompt_mask.shape, device=prompt_mask.device)
        self.prompt_bias.masked_fill_(prompt_mask == 0, float("-inf"))  # (P, Lp)
        self.used = 0

    def release(self) -> None:
        """Drop the K/V buffers of the last call (the packed weights stay)."""
        self.pk, self.pv, self.sk, self.sv = [], [], [], []

    def set_rows(self, row_prompt: list[int]) -> None:
        """Slot i of the batch continues prompt row_prompt[i] (call after moving rows).

        Queries of a prompt's rows are laid out as (P, rank within prompt) so one batched
        matmul per prompt scores them against that prompt's keys.
        """
        rank = []  # each slot's rank among the slots of its prompt
        count: dict[int, int] = {}
        for p in row_prompt:
            rank.append(count.get(p, 0))
            count[p] = rank[-1] + 1
        self.width = max(count.values())  # most rows continuing one prompt
        flat = [p * self.width + r for p, r in zip(row_prompt, rank, strict=True)]
        device = self.prompt_bias.device
        # In order (slot i = prompt i // width, all groups full): no scatter/gather needed.
        self.in_order = flat == list(range(self.prompt_bias.shape[0] * self.width))
        self.flat = torch.tensor(flat, device=device)  # (b,) slot -> padded (P * width) index
        self.row_bias = self.prompt_bias[torch.tensor(row_prompt, device=device)][:, None, None]

    def move_rows(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy generated K/V of slots src -> dst; src and dst must not overlap."""
        n = self.used
        for keys, values in zip(self.sk, self.sv, strict=True):
            keys[dst, :, :n] = keys[src, :, :n]
            values[dst, :, :n] = values[src, :, :n]

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (b, V) after feeding tokens (b,) at positions (b,) to slots 0..b-1.

        Writes each slot's K/V at generated position `used`.
        """
        with torch.autocast(self.device_type, enabled=False):  # dtypes are explicit here
            return self._step(tokens, positions)

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        x = F.embedding(tokens, self.embed)  # (b, H)
        cos, sin = self.rotary(x, positions[:, None])  # (b, 1, D) each
        for i, layer in enumerate(self.layers):
            qkv = _linear(layer.ln1(x), layer.qkv_w, layer.qkv_b)  # (b, q + 2 kv)
            qk = qkv[:, : self.q_size + self.kv_size].view(b, -1, self.head_dim)
            qk = _rotate(qk, cos, sin)  # (b, heads + kv heads, D): one rotation for both
            q, k = qk[:, : self.n_heads], qk[:, self.n_heads :]
            v = qkv[:, self.q_size + self.kv_size :].view(b, self.n_kv, self.head_dim)
            self.sk[i][:b, :, self.used] = k
            self.sv[i][:b, :, self.used] = v
            att = self._attend(i, q, b)  # (b, heads * D)
            x = x + _linear(att, layer.o_w, layer.o_b)
            gate, up = _linear(layer.ln2(x), layer.gate_up_w).chunk(2, dim=-1)
            x = x + _linear(F.silu(gate) * up, layer.down_w)
        self.used += 1
        return _linear(self.norm(x), self.head_w, self.head_b)

    def _attend(self, i: int, q: torch.Tensor, b: int) -> torch.Tensor:
        """Attention of queries q (b, heads, D) over prompt keys + own generated keys.

        One softmax over [prompt keys | generated keys]: the same maths as attending to
        the concatenated cache, without copying the prompt's keys per row.
        """
        kv, d, g = self.n_kv, self.head_dim, self.n_heads // self.n_kv
        pk, pv = self.pk[i], self.pv[i]  # (P, kv, D, Lp), (P, kv, Lp, D)
        lp = pk.shape[-1]
        qg = (q * self.scaling).view(b, kv, g, d)
        # Prompt part: queries as (P, kv, width * g, D), one matmul per prompt.
        s_prompt = self._by_prompt(qg) @ pk  # (P, kv, width * g, Lp)
        s_prompt = self._by_row(s_prompt, b)  # (b, kv, g, Lp)
        n = self.used + 1
        sk, sv = self.sk[i][:b, :, :n], self.sv[i][:b, :, :n]  # (b, kv, n, D)
        s_own = qg @ sk.transpose(-1, -2)  # (b, kv, g, n)
        scores = torch.cat([s_prompt.float() + self.row_bias, s_own.float()], dim=-1)
        probs = scores.softmax(dim=-1).to(q.dtype)
        p_prompt, p_own = probs[..., :lp], probs[..., lp:]
        o_prompt = self._by_row(self._by_prompt(p_prompt) @ pv, b)  # (b, kv, g, D)
        out = o_prompt + p_own @ sv  # (b, kv, g, D)
        return out.reshape(b, self.q_size)

    def _by_prompt(self, x: torch.Tensor) -> torch.Tensor:
        """Rows (b, kv, g, m) -> (P, kv, width * g, m), each prompt's rows together."""
        b, kv, g, m = x.shape
        n_prompts = self.prompt_bias.shape[0]
        if not self.in_order:
            padded = x.new_zeros((n_prompts * self.width, kv, g, m))
            padded[self.flat] = x
            x = padded
        x = x.view(n_prompts, self.width, kv, g, m).transpose(1, 2)
        return x.reshape(n_prompts, kv, self.width * g, m)

    def _by_row(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """Inverse of _by_prompt: (P, kv, width * g, m) -> (b, kv, g, m)."""
        n_prompts, kv, _, m = x.shape
        g = self.n_heads // self.n_kv
        x = x.view(n_prompts, kv, self.width, g, m).transpose(1, 2)
        x = x.reshape(n_prompts * self.width, kv, g, m)
        return x if self.in_order else x[self.flat]


def _linear(x: torch.Tensor, w: Weight, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear in the weight's dtype (low precision under autocast, else as given); a
    packed weight (cpu_gemm.py) carries its bias and returns fp32."""
    if not isinstance(w, torch.Tensor):
        return w(x)
    return F.linear(x.to(w.dtype), w, b)


def _packed_layer(layer: _Layer, mode: str, rows: int) -> _Layer:
    """The layer with its four GEMM weights in cpu_gemm's `mode` form (biases folded in)."""

    def pack(w: Weight, b: torch.Tensor | None = None) -> Weight:
        assert isinstance(w, torch.Tensor)
        return cpu_gemm.pack(mode, w, b, rows)

    return _Layer(
        ln1=layer.ln1,
        qkv_w=pack(layer.qkv_w, layer.qkv_b),
        qkv_b=None,
        o_w=pack(layer.o_w, layer.o_b),
        o_b=None,
        ln2=layer.ln2,
        gate_up_w=pack(layer.gate_up_w),
        down_w=pack(layer.down_w),
    )


def _cast(t: Any, dtype: torch.dtype) -> Any:
    """A floating-point tensor in `dtype`; anything else (None, norm modules) unchanged."""
    return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on x (b, heads, D) with cos/sin (b, 1, D), as apply_rotary_pos_emb."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _layer_kv(cache: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of layer `index` of a transformers cache (5.x layers or legacy)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[index].keys, layers[index].values
    return cache.key_cache[index], cache.value_cache[index]
