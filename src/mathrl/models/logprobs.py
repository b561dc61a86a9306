"""Per-token log-probabilities of given sequences under a causal LM (the trainer's forward)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.utils.checkpoint import checkpoint

from mathrl.models.precision import forward_autocast, pad_multiple


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, so left padding does not shift RoPE."""
    # (B, L): pads get 0; they are masked out of attention anyway.
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    return_entropy: bool = False,
    entropy_grad: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each token given the ones before it, at completion positions; 0 elsewhere.

    input_ids, attention_mask, completion_mask: (B, L). Position t scores token t from the
    model's output at t-1, so position 0 is never scored. Logits are computed only at scored
    positions (the lm_head over the full vocabulary dominates memory), in float32. With
    `return_entropy`, also returns the entropy of the model's next-token distribution at each
    scored position, (B, L), computed without a graph unless `entropy_grad` (a loss term).
    Differentiable: wrap in torch.no_grad() for old/ref log-probs.
    """
    targets = completion_mask.bool().clone()  # (B, L)
    targets[:, 0] = False
    # Output at t-1 predicts token t: select outputs with the targets shifted one step left.
    with forward_autocast(model):
        logits = _selected_logits(model, input_ids, attention_mask, targets[:, 1:])  # (N, V)
    return _scatter_scores(logits, input_ids, targets, return_entropy, entropy_grad)


def _scatter_scores(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    targets: torch.Tensor,
    return_entropy: bool,
    entropy_grad: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(N, V) logits of the `targets` (B, T) positions -> (B, T) log-probs [and entropies]."""
    token_logp, entropy_tok = _token_scores(
        logits, token_ids[targets], return_entropy, entropy_grad
    )
    return _place(token_logp, entropy_tok, targets)


def _place(
    token_logp: torch.Tensor, entropy_tok: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(N,) scores of the `targets` (B, T) positions laid out as (B, T), 0 elsewhere."""
    zeros = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    logprobs = zeros.masked_scatter(targets, token_logp)  # (B, T)
    if entropy_tok is None:
        return logprobs
    return logprobs, zeros.masked_scatter(targets, entropy_tok)


def _token_scores(
    logits: torch.Tensor, ids: torch.Tensor, entropy: bool, entropy_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N,) log-prob of `ids` and (N,) entropy (None unless `entropy`) under (N, V) logits,
    in float32; the entropy keeps its graph only with `entropy_grad` (a loss term)."""
    logp_all = F.log_softmax(logits.float(), dim=-1)  # (N, V)
    token_logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # (N,)
    if not entropy:
        return token_logp, None
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy_tok = -(logp_all.exp() * logp_all).sum(-1)  # (N,)
    return token_logp, entropy_tok


def _head_chunk(
    head: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, entropy: bool, entropy_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk's log-probs and entropies, (n,) each, from (n, H) decoder states."""
    return _token_scores(head(hidden), ids, entropy, entropy_grad)


def head_scores(
    head: nn.Module,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    chunk_tokens: int = 0,
    entropy_grad: bool = False,
    entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N,) log-probs of `ids` and (N,) entropies (None unless `entropy`) from (N, H)
    last hidden states.

    chunk_tokens > 0: the head runs on at most that many positions at a time, and with
    grad each chunk is checkpointed (its logits recomputed in backward), so no more than
    one chunk's (chunk_tokens, V) float32 logits ever exist; the values and gradients are
    the plain path's. 0: one (N, V) pass.
    """
    n = hidden.shape[0]
    if chunk_tokens <= 0 or n <= chunk_tokens:
        return _head_chunk(head, hidden, ids, entropy, entropy_grad)
    parts = []
    for start in range(0, n, chunk_tokens):
        args = (head, hidden[start : start + chunk_tokens], ids[start : start + chunk_tokens])
        if torch.is_grad_enabled():  # recomputed in backward: the logits are not kept
            parts.append(checkpoint(_head_chunk, *args, entropy, entropy_grad, use_reentrant=False))
        else:
            parts.append(_head_chunk(*args, entropy, entropy_grad))
    logp = torch.cat([p[0] for p in parts])  # (N,)
    return logp, torch.cat([p[1] for p in parts]) if entropy else None


def round_up(width: int, multiple: int) -> int:
    """width rounded up to a multiple of `multiple` (see models.precision.pad_multiple)."""
    return -(-width // multiple) * multiple


def cache_kwarg(module: nn.Module, cache: Any) -> dict[str, Any]:
    """{name: cache} for module's forward: `cache` (transformers >= 5.23), else
    `past_key_values` (older; 5.x still takes it but warns, and drops it in 5.40). A peft
    model's forward passes its keyword arguments on: the base model's signature decides."""
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    params = _forward_params(type(base))
    return {"cache" if "cache" in params else "past_key_values": cache}


@functools.cache
def _forward_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned, under either name (see cache_kwarg)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def left_pad(
    prompts: list[list[int]], pad_id: int, device: torch.device, multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (P, width), prompts right-aligned.

    width is the longest prompt, rounded up to a multiple of `multiple`.
    """
    width = round_up(max(len(p) for p in prompts), multiple)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, width - len(p) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def pad_batch(
    seqs: list[list[int]],
    prompt_lens: list[int],
    pad_id: int,
    device: torch.device,
    multiple: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) input ids, attention mask and completion mask (L: see left_pad)."""
    width = round_up(max(len(s) for s in seqs), multiple)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    completion_mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, (s, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
        completion_mask[i, p : len(s)] = 1.0
    return input_ids.to(device), attention_mask.to(device), completion_mask.to(device)


@dataclass
class CompletionBatch:
    """Completions and the distinct prompts they continue (one micro-batch of the trainer).

    prompt_ids, prompt_mask: (P, Lp), left-padded. row_prompt: (B,), each row's prompt.
    completion_ids, completion_mask: (B, T), right-padded. Log-probs come back as (B, T).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    row_prompt: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor


def completion_batch(
    prompts: list[list[int]],
    row_prompt: list[int],
    completions: list[list[int]],
    pad_id: int,
    device: torch.device,
    multiple: int = 1,
) -> CompletionBatch:
    """Pad `prompts` (left) and `completions` (right); row i continues prompts[row_prompt[i]].

    Both widths are rounded up to a multiple of `multiple` (see left_pad).
    """
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, torch.device("cpu"), multiple)
    c_width = round_up(max(1, max(len(c) for c in completions)), multiple)
    completion_ids = torch.full((len(completions), c_width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(completions), c_width), dtype=torch.float32)
    for i, c in enumerate(completions):
        completion_ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[i, : len(c)] = 1.0
    return CompletionBatch(
        prompt_ids.to(device),
        prompt_mask.to(device),
        torch.tensor(row_prompt, dtype=torch.long, device=device),
        completion_ids.to(device),
        completion_mask.to(device),
    )


def completion_logprobs(
    model: nn.Module,
    batch: CompletionBatch,
    return_entropy: bool = False,
    share_prompts: bool = True,
    chunk_tokens: int = 0,
    entropy_grad: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, T) log-probs of each completion token (0 at padding) [and entropies].

    chunk_tokens, entropy_grad: see head_scores (the shared-prompt path; a model whose
    head is not separable computes its logits in one pass). The entropies are metrics
    without a graph unless entropy_grad.

    With `share_prompts` (and a model whose logits are lm_head(decoder states)), each
    distinct prompt runs through the decoder once and its key/value cache is shared by all
    rows that continue it; gradients flow through the shared prompt states. A GRPO group
    of G samples then pays for its prompt once instead of G times. Otherwise every row
    runs as one full prompt+completion sequence. Both give the same values (tested).
    """
    targets = batch.completion_mask.bool()
    if share_prompts and _head_is_separable(model):
        with forward_autocast(model):
            hidden = _shared_prompt_hidden(model, batch)  # (B, T, H)
            head = model.get_output_embeddings()
            logp, entropy = head_scores(
                head,
                hidden[targets],
                batch.completion_ids[targets],
                chunk_tokens,
                entropy_grad,
                entropy=return_entropy,
            )  # (N,), (N,) or None
        return _place(logp, entropy, targets)
    ids, attn, cmask = _full_sequences(batch, pad_multiple(model))
    out = sequence_logprobs(model, ids, attn, cmask, return_entropy, entropy_grad)
    # Scored positions come in the same row-major order in both layouts: move them over.
    full = cmask.bool()

    def to_completion(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(targets.shape, device=x.device).masked_scatter(targets, x[full])

    return tuple(map(to_completion, out)) if return_entropy else to_completion(out)  # type: ignore[arg-type,return-value]


def _shared_prompt_hidden(model: nn.Module, batch: CompletionBatch) -> torch.Tensor:
    """Decoder states (B, T, H) whose row t predicts completion token t; prompts run once."""
    decoder = model.get_decoder()
    p_pos = position_ids_from_mask(batch.prompt_mask)  # (P, Lp)
    out = decoder(
        input_ids=batch.prompt_ids,
        attention_mask=batch.prompt_mask,
        position_ids=p_pos,
        use_cache=True,
    )
    cache = output_cache(out)
    rows = batch.row_prompt
    cache.batch_select_indices(rows)  # (P, ...) -> (B, ...): differentiable indexing
    last = out.last_hidden_state[:, -1][rows]  # (B, H): left padding puts real ends last
    width = batch.completion_ids.shape[1]
    attn = torch.cat([batch.prompt_mask[rows], batch.completion_mask.long()], dim=1)
    pos = p_pos[rows][:, -1:] + 1 + torch.arange(width, device=p_pos.device)  # (B, T)
    hidden = decoder(
        input_ids=batch.completion_ids,
        attention_mask=attn,
        position_ids=pos,
        **cache_kwarg(decoder, cache),
        use_cache=True,
    ).last_hidden_state  # (B, T, H): row t is the state after completion token t
    return torch.cat([last[:, None], hidden[:, :-1]], dim=1)


def _full_sequences(
    batch: CompletionBatch, multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt+completion rows (ids, attention mask, completion mask), (B, L)."""
    prompts = [
        p[m.bool()].tolist() for p, m in zip(batch.prompt_ids, batch.prompt_mask, strict=True)
    ]
    rows = batch.row_prompt.tolist()
    comps = [
        c[m.bool()].tolist()
        for c, m in zip(batch.completion_ids, batch.completion_mask, strict=True)
    ]
    seqs = [prompts[r] + c for r, c in zip(rows, comps, strict=True)]
    lens = [len(prompts[r]) for r in rows]
    return pad_batch(seqs, lens, 0, batch.completion_ids.device, multiple)


def _selected_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    select: torch.Tensor,
) -> torch.Tensor:
    """Logits (N, V) at the positions where `select` (B, L-1) is true, from outputs [:, :-1]."""
    position_ids = position_ids_from_mask(attention_mask)
    if _head_is_separable(model):
        decoder = model.get_decoder()
        hidden = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,  # a training forward: no KV cache to build
        ).last_hidden_state  # (B, L, H)
        return model.get_output_embeddings()(hidden[:, :-1][select])  # (N, V)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    return out.logits[:, :-1][select]  # (N, V)


def _head_is_separable(model: nn.Module) -> bool:
    """True if logits are exactly lm_head(decoder hidden states): no scaling or softcapping."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_decoder"):
        return False
    if isinstance(model, FSDPModule):
        # FSDP2 gathers the head's weights in the whole model's forward only: under
        # train.parallel = "fsdp" logits come from model(...)
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    head = model.get_output_embeddings()
    return isinstance(head, nn.Linear) and model.get_decoder() is not None
