"""Batched, KV-cached sampling on a transformers model, without `model.generate`.

Why our own loop: we need the log-prob of every sampled token, and `generate` wastes work
on RL batches. A call with more prompts than one chunk holds takes them in order of
length, so each chunk's left padding is small (GSM8K's test questions in chunks of 64:
57 % of the padded prefill tokens are real in file order, 96 % sorted). Per chunk:
1. prefill each unique prompt once (left-padded, position ids from the mask), then repeat
   its KV cache rows for the n samples of its group;
2. decode one token per step (`_decode`, one loop for every step function): a row that
   emits a stop token (or hits max_new_tokens) leaves the batch and its KV cache once a
   quarter of the rows have finished, so the batch shrinks as completions finish instead
   of decoding padding until the longest one ends. The step is the lean one
   (lean_decode.py) for Llama/Qwen2 models, transformers' own forward (`ModelStep`) for
   the rest; the static-shape step (static_decode.py) has its own loop, which keeps every
   row and syncs with the host only to ask whether all have finished.

Returned log-probs are under the unmodified model distribution (log_softmax of the raw
logits: temperature 1, no top-k/top-p), which is what the trainer's forward recomputes.
Each completion draws from its own stream of uniforms keyed by (prompt seed, sample index)
(rollout/sampler.py): a prompt's samples do not depend on the batch size or on the other
prompts of the call, up to the float rounding of a differently shaped forward.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mathrl.errors import MathrlError
from mathrl.models.logprobs import (
    left_pad,
    output_cache,
    position_ids_from_mask,
)
from mathrl.models.precision import AUTOCAST_DTYPES, autocast_dtype, autocast_to, pad_multiple
from mathrl.rollout import cpu_gemm
from mathrl.rollout.cpu_gemm import WEIGHT_MODES
from mathrl.rollout.lean_decode import LeanDecoder, unsupported_reason
from mathrl.rollout.model_step import ModelStep
from mathrl.rollout.sampler import row_keys, sample_next, uniforms
from mathrl.rollout.static_decode import COMPILE_MODES, StaticDecoder
from mathrl.rollout.stops import DecodeRows, Row, default_stop_ids
from mathrl.rollout.types import Chunk, RolloutEngine, SamplingParams, eval_mode


class HFEngine(RolloutEngine):
    """In-process rollout engine on a transformers causal LM (shares the trainer's weights).

    batch_size caps the rows (prompts x n) decoded together; a chunk always holds whole
    groups, so a group larger than batch_size is decoded alone. stop_token_ids defaults to
    default_stop_ids(model, tokenizer).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        batch_size: int = 64,
        stop_token_ids: list[int] | None = None,
        reserve_kv: bool = True,
        lean_decode: bool = True,
        autocast: str = "model",
        weights: str = "model",
        keep_copy: bool = True,
        static_decode: bool = False,
        compile: str = "off",
        compile_backend: Any = None,
    ) -> None:
        if batch_size < 1:
            raise MathrlError(f"batch_size must be >= 1, got {batch_size}")
        if autocast != "model" and autocast not in AUTOCAST_DTYPES:
            choices = ", ".join(["model", *AUTOCAST_DTYPES])
            raise MathrlError(f"rollout.autocast must be one of {choices}, got {autocast!r}")
        # "model": sample in the model's own precision (model.autocast); else in this one,
        # whatever the trainer uses (the sampler's log-probs then differ: train.tis_cap)
        self.autocast: torch.dtype | None | str = (
            "model" if autocast == "model" else AUTOCAST_DTYPES[autocast]
        )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.reserve_kv = reserve_kv  # write decode K/V in place (model_step._RoomyLayer)
        # Llama/Qwen2 decode through LeanDecoder (same values, a fraction of the overhead).
        self.lean_decode = lean_decode
        # "fp16" / "int8": decode from copies of the GEMM weights in that precision
        # (rollout/cpu_gemm.py), kept between calls until a parameter changes (_lean_for).
        if weights not in WEIGHT_MODES:
            raise MathrlError(
                f"rollout.weights must be one of {', '.join(WEIGHT_MODES)}, got {weights!r}"
            )
        self.weights = weights
        # keep_copy: hold the fp16/int8 copy between calls (serving); the training loop
        # drops it after each call, so backward and the optimizer never carry it.
        self.keep_copy = keep_copy
        self._cached: tuple[Any, LeanDecoder] | None = None
        if not lean_decode and weights != "model":
            raise MathrlError(f"rollout.weights = {weights!r} needs rollout.lean_decode = true")
        self._check_weights(model)
        if compile not in COMPILE_MODES:
            raise MathrlError(f"rollout.compile must be one of {COMPILE_MODES}, got {compile!r}")
        if compile != "off" and not static_decode:
            raise MathrlError(f"rollout.compile = {compile!r} needs rollout.static_decode = true")
        if static_decode and weights != "model":
            raise MathrlError("rollout.static_decode decodes from the model's own weights")
        # the static-shape step (static_decode.py); a compiled one is kept across calls
        self.static_decode = static_decode and lean_decode
        self.compile = compile
        self.compile_backend = compile_backend
        self._static: StaticDecoder | None = None
        self.stop_token_ids = stop_token_ids or default_stop_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.stop_token_ids[0]

    def _precision(self) -> Any:
        """The autocast context rollouts run under (see `autocast`)."""
        return autocast_to(self.model, self._precision_dtype(self.model))

    def _check_weights(self, model: nn.Module) -> None:
        """rollout.weights = fp16/int8 can sample from `model`, or one line says why not."""
        if self.weights == "model":
            return
        name = f"rollout.weights = {self.weights!r}"
        why = cpu_gemm.unavailable(self.weights, next(model.parameters()).device)
        if why is None and (arch := unsupported_reason(model)) is not None:
            why = f"{name} needs the lean decode step, which does not support this model ({arch})"
        low = {p.dtype for p in model.parameters() if p.dtype != torch.float32}
        if why is None and low:
            why = f"{name} copies fp32 weights; this model has {sorted(map(str, low))[0]} ones"
        if why is None and self._precision_dtype(model) is not None:
            why = f"{name} does not combine with autocast (model.autocast / rollout.autocast)"
        if why is not None:
            raise MathrlError(why)

    def _precision_dtype(self, model: nn.Module) -> torch.dtype | None:
        """The autocast dtype rollouts of `model` would run under (None: none)."""
        if self.autocast == "model":
            return autocast_dtype(model)
        return self.autocast  # type: ignore[return-value]

    def update_weights(self, model: nn.Module) -> None:
        """Sample from `model` from now on (weights are shared in-process: no copy)."""
        self._check_weights(model)
        if model is not self.model:  # the same model: a kept compiled step refreshes in place
            self._static = None
        self.model = model
        self._cached = None

    def _lean_for(self, rows: int) -> LeanDecoder | ModelStep:
        """The step function of the current weights: the lean decoder, or transformers'
        forward (ModelStep) for a model it does not support or with lean_decode off.

        The model's own weights are packed per call (a fast copy, and holding it would
        double the weights' memory between steps); an fp16/int8 copy is kept while every
        parameter keeps its identity and version counter (an optimizer step or a load
        bumps them): mathrl serve quantises once per weight load, not per request.
        """
        if not self.lean_decode or unsupported_reason(self.model) is not None:
            return ModelStep(self.model, self.reserve_kv)
        if self.static_decode:
            return self._static_for(rows)
        if self.weights == "model":
            return LeanDecoder(self.model, rows=rows)
        key = _weights_key(self.model)
        if self._cached is None or self._cached[0] != key:
            self._cached = None  # free the old copy before building the new one
            self._cached = (key, LeanDecoder(self.model, weights=self.weights))
        return self._cached[1]

    def _static_for(self, rows: int) -> StaticDecoder:
        """The static decoder for `rows` rows: built per call when eager (weights packed,
        as the lean step's); when compiled, kept while the model and row count stay, its
        weights refreshed in place, so the compiled step is reused."""
        if self.compile == "off":
            return StaticDecoder(self.model, rows)
        dec = self._static
        if dec is not None and dec.model is self.model and dec.rows == rows:
            dec.refresh()
            return dec
        self._static = None  # free the old buffers first
        self._static = StaticDecoder(self.model, rows, self.compile, self.compile_backend)
        return self._static

    @contextmanager
    def _decoding(self, rows: int) -> Iterator[LeanDecoder | ModelStep]:
        """Eval mode, inference mode and the rollout precision around all the chunks of a
        call, and the step function they share: a lean decoder is packed once per call
        (inside autocast: it casts its GEMM weights); the weights only change between calls."""
        with eval_mode(self.model), torch.inference_mode(), self._precision():
            lean = self._lean_for(rows)
            try:
                yield lean
            finally:
                lean.release()  # a kept fp16/int8 decoder keeps no K/V between calls
                if not self.keep_copy:
                    self._cached = None

    def _decode_chunk(self, chunk: Chunk, lean: LeanDecoder | ModelStep) -> list[Row]:
        """Prefill the chunk's prompts once, then decode all n samples of each."""
        device = next(self.model.parameters()).device
        prompts, sampling, n = chunk.prompts, chunk.sampling, chunk.sampling.n
        u = None  # (B, max_new_tokens): row r's uniform at decode step t
        if not sampling.is_greedy:
            u = uniforms(row_keys(chunk.seeds, n, device), sampling.max_new_tokens)
        t0 = time.perf_counter()
        multiple = pad_multiple(self.model, self.autocast)  # bounded shapes under autocast
        input_ids, attention_mask = left_pad(prompts, self.pad_id, device, multiple)  # (P, Lp)
        position_ids = position_ids_from_mask(attention_mask)  # (P, Lp)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = output_cache(out)
        # One prefill per prompt; its last logits repeated for the n samples of its group.
        logits = out.logits[:, -1].float().repeat_interleave(n, dim=0)  # (B, V), B = P * n
        next_pos = position_ids[:, -1].repeat_interleave(n) + 1  # (B,)
        if isinstance(lean, StaticDecoder):
            lean.load_cache(cache, attention_mask, n, sampling.max_new_tokens)
        else:  # a LeanDecoder keeps one copy of each prompt's K/V for its group
            lean.load_cache(cache, attention_mask, len(prompts) * n, sampling.max_new_tokens)
        del cache, out
        t1 = time.perf_counter()
        chunk.timing["prefill_s"] += t1 - t0
        if isinstance(lean, StaticDecoder):
            compile_s = lean.compile_s
            rows = self._decode_static(lean, logits, next_pos, sampling, u)
            chunk.timing["compile_s"] = chunk.timing.get("compile_s", 0.0) + (
                lean.compile_s - compile_s
            )
        else:
            rows = self._decode(lean, logits, n, next_pos, sampling, u)
        chunk.timing["decode_s"] += time.perf_counter() - t1
        return rows

    def _decode(
        self,
        lean: LeanDecoder | ModelStep,
        logits: torch.Tensor,
        n: int,
        next_pos: torch.Tensor,
        sampling: SamplingParams,
        u: torch.Tensor | None,
    ) -> list[Row]:
        """Sample until every row stops; finished rows leave the batch lazily.

        Row r continues prompt r // n. A finished row keeps its slot (decoded as waste)
        until a quarter of the slots are dead; then live rows from the tail move into the
        dead slots, so a compaction copies only the moved rows' generated K/V. The sampler
        always sees the live rows in original-row order, each with its own uniform: the
        same seeds give the same tokens whichever step function decodes them.
        """
        batch = logits.shape[0]
        out = DecodeRows(batch, self.stop_token_ids, sampling.ignore_eos)
        feed = torch.zeros(batch, dtype=torch.long, device=logits.device)  # next input token
        slot_row = list(range(batch))  # original row in each slot, -1 once finished
        slot_prompt = [row // n for row in range(batch)]
        lean.set_rows(slot_prompt)
        live = list(range(batch))  # slots of unfinished rows, by original row
        live_t = torch.arange(batch, device=logits.device)
        live_rows = live_t  # the original row of each live slot, in sampler order
        in_order = True  # live == range(size): the logits rows are the sampler's rows
        size = batch  # slots in use: live rows plus not-yet-compacted dead ones
        for step in range(sampling.max_new_tokens):
            step_logits = logits if in_order else logits.index_select(0, live_t)
            step_u = None if u is None else u[live_rows, step]  # (b_live,)
            next_tok, tok_logp = sample_next(step_logits, sampling, step_u)  # (b_live,)
            rows = [slot_row[slot] for slot in live]
            done = out.add(rows, next_tok.tolist(), tok_logp.tolist())
            if step == sampling.max_new_tokens - 1:
                break
            feed.index_copy_(0, live_t, next_tok)
            if done:
                for i in done:
                    slot_row[live[i]] = -1
                live = [s for s in live if slot_row[s] >= 0]
                if not live:
                    break
                if size - len(live) >= max(1, size // 4):
                    size = _compact(lean, slot_row, slot_prompt, size, feed, next_pos)
                    live = sorted(range(size), key=slot_row.__getitem__)
                live_t = torch.tensor(live, device=logits.device)
                live_rows = torch.tensor([slot_row[s] for s in live], device=logits.device)
                in_order = live == list(range(size))
            logits = lean.step(feed[:size], next_pos[:size]).float()
            next_pos = next_pos + 1
        return out.rows()

    def _decode_static(
        self,
        dec: StaticDecoder,
        logits: torch.Tensor,
        next_pos: torch.Tensor,
        sampling: SamplingParams,
        u: torch.Tensor | None,
    ) -> list[Row]:
        """The loop of a StaticDecoder: every row stays in the batch (finished ones masked
        out of the result), tokens and log-probs collected on the device; the only host
        syncs are an "all finished?" check every dec.check_every steps and the final copy.
        Row r samples with uniform u[r, t] at step t, as in _decode: the same tokens."""
        batch, rows, steps = logits.shape[0], dec.rows, sampling.max_new_tokens
        device = logits.device
        if rows > batch:  # a short chunk: dummy rows (already finished) fill the shape
            extra = rows - batch
            logits = torch.cat([logits, logits[-1:].expand(extra, -1)])
            next_pos = torch.cat([next_pos, next_pos[-1:].expand(extra)])
            if u is not None:
                u = torch.cat([u, u.new_zeros((extra, steps))])
        tokens = torch.zeros((rows, steps), dtype=torch.long, device=device)
        logps = torch.zeros((rows, steps), dtype=torch.float32, device=device)
        stops = torch.tensor(self.stop_token_ids, device=device)
        finished = torch.arange(rows, device=device) >= batch  # (rows,)
        column = torch.zeros((1,), dtype=torch.long, device=device)  # the step's K/V column
        taken = steps
        for step in range(steps):
            next_tok, tok_logp = sample_next(logits, sampling, None if u is None else u[:, step])
            tokens[:, step], logps[:, step] = next_tok, tok_logp
            if not sampling.ignore_eos:
                finished |= torch.isin(next_tok, stops)
            if step == steps - 1:
                break
            if (step + 1) % dec.check_every == 0 and bool(finished.all()):
                taken = step + 1
                break
            logits = dec.static_step(next_tok, next_pos, column).float()
            next_pos, column = next_pos + 1, column + 1
        out = DecodeRows(batch, self.stop_token_ids, sampling.ignore_eos)
        out.add_block(tokens[:batch, :taken].tolist(), logps[:batch, :taken].tolist())
        return out.rows()


def _weights_key(model: nn.Module) -> tuple[tuple[int, int, int], ...]:
    """Identity, storage address and version counter of every parameter: equal keys, equal
    weights (in-place updates bump the version; a replaced tensor is another object).
    Writes through `p.data` bypass the version counter: mathrl makes none, and
    update_weights drops the copy whatever the key."""
    return tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())


def _compact(
    lean: LeanDecoder | ModelStep,
    slot_row: list[int],
    slot_prompt: list[int],
    size: int,
    feed: torch.Tensor,
    next_pos: torch.Tensor,
) -> int:
    """Move live slots from the tail into dead slots below the live count; returns it."""
    alive = [s for s in range(size) if slot_row[s] >= 0]
    new_size = len(alive)
    holes = [s for s in range(new_size) if slot_row[s] < 0]
    movers = [s for s in alive if s >= new_size]
    if holes:
        dst = torch.tensor(holes, device=feed.device)
        src = torch.tensor(movers, device=feed.device)
        lean.move_rows(src, dst)
        feed[dst], next_pos[dst] = feed[src], next_pos[src]
        for d, s in zip(holes, movers, strict=True):
            slot_row[d], slot_prompt[d] = slot_row[s], slot_prompt[s]
    del slot_row[new_size:], slot_prompt[new_size:]
    lean.set_rows(slot_prompt)
    return new_size
