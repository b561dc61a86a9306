"""transformers' own forward as a decode step, for models the lean step does not support.

`ModelStep` gives HFEngine's decode loop the lean step's interface (load_cache, step,
move_rows, set_rows, release) over transformers' KV cache, so one loop serves both.
`_RoomyLayer` lets that cache take each step's K/V in place instead of concatenating.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicLayer

from mathrl.models.logprobs import cache_kwarg


class ModelStep:
    """transformers' forward behind the lean step's interface: the decode step of models
    LeanDecoder does not support (and of rollout.lean_decode = false).

    The prefill's cache is continued as transformers keeps it: each prompt's K/V copied
    for the n rows of its group, decode K/V written in place when `reserve` (_RoomyLayer).
    """

    def __init__(self, model: nn.Module, reserve: bool = True) -> None:
        self.model = model
        self.reserve = reserve
        self.cache: Any = None
        self.mask = torch.empty(0)  # (rows, L): the attention mask so far
        self._index: torch.Tensor | None = None  # slot -> old slot, set by move_rows

    def load_cache(self, cache: Any, prompt_mask: torch.Tensor, rows: int, extra: int) -> None:
        """Continue a prefill of P prompts (mask (P, Lp)) with rows / P rows per prompt and
        room for `extra` generated tokens."""
        n = rows // prompt_mask.shape[0]
        if n > 1:  # the prompt's K/V rows copied per sample
            cache.batch_repeat_interleave(n)
            prompt_mask = prompt_mask.repeat_interleave(n, dim=0)  # (rows, Lp)
        if self.reserve:
            reserve_cache(cache, extra)
        self.cache, self.mask, self._index = cache, prompt_mask, None

    def release(self) -> None:
        self.cache, self.mask = None, torch.empty(0)

    def move_rows(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Slots dst take the K/V of slots src (carried out by the next set_rows)."""
        self._index = torch.arange(self.mask.shape[0], device=self.mask.device)
        self._index[dst] = src

    def set_rows(self, row_prompt: list[int]) -> None:
        """Keep the first len(row_prompt) slots (after the moves), one cache copy."""
        size = len(row_prompt)
        if self._index is None and size == self.mask.shape[0]:
            return
        index = self._index if self._index is not None else torch.arange(self.mask.shape[0])
        index = index[:size].to(self.mask.device)
        self.cache.batch_select_indices(index)
        self.mask, self._index = self.mask[index], None

    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits (b, V) after feeding tokens (b,) at positions (b,) to slots 0..b-1."""
        ones = self.mask.new_ones(self.mask.shape[0], 1)
        self.mask = torch.cat([self.mask, ones], dim=1)  # (b, L + 1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=positions[:, None],
            **cache_kwarg(self.model, self.cache),
            use_cache=True,
        )
        return out.logits[:, -1]


class _RoomyLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into a buffer with room to grow.

    transformers' DynamicLayer torch.cat-s the whole cache at every decode step, so a
    completion of T tokens copies O(T^2) key/value columns; here each step writes its
    column in place. Values are identical (tested: same tokens and log-probs).
    """

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, m = self.keys.shape[0], self.keys.shape[-2], key_states.shape[-2]
        if n + m > self._kbuf.shape[-2]:  # out of room (should not happen): grow the buffer
            _reserve(self, max(m, n))
        self._kbuf[:b, :, n : n + m] = key_states
        self._vbuf[:b, :, n : n + m] = value_states
        self.keys, self.values = self._kbuf[:b, :, : n + m], self._vbuf[:b, :, : n + m]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        # Compact the kept rows to the front of the same buffer, copying only the used
        # positions (the buffer's spare room is never copied; rows past b' are unused).
        b, n = len(indices), self.keys.shape[-2]
        kept_k, kept_v = self.keys[indices], self.values[indices]  # (b', H, n, D) copies
        self._kbuf[:b, :, :n] = kept_k
        self._vbuf[:b, :, :n] = kept_v
        self.keys, self.values = self._kbuf[:b, :, :n], self._vbuf[:b, :, :n]


def _reserve(layer: Any, extra: int) -> None:
    """Move a layer's keys/values into a buffer with `extra` more positions."""
    b, h, n, d = layer.keys.shape
    layer._kbuf = layer.keys.new_empty((b, h, n + extra, d))
    layer._vbuf = layer.values.new_empty((b, h, n + extra, d))
    layer._kbuf[:, :, :n] = layer.keys
    layer._vbuf[:, :, :n] = layer.values
    layer.keys, layer.values = layer._kbuf[:, :, :n], layer._vbuf[:, :, :n]


def reserve_cache(cache: Any, extra: int) -> int:
    """Give each plain DynamicLayer of `cache` room for `extra` tokens; returns how many.

    Other layer kinds (sliding window, quantised, static) are left as they are.
    """
    converted = 0
    for layer in getattr(cache, "layers", []):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.dim() == 4:
            _reserve(layer, extra)
            layer.__class__ = _RoomyLayer
            converted += 1
    return converted
