"""Per-token log-probabilities of given sequences under a causal LM (the trainer's forward)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each token given the ones before it, at completion positions; 0 elsewhere.

    input_ids, attention_mask, completion_mask: (B, L). Position t scores token t from the
    model's output at t-1, so position 0 is never scored. Logits are computed only at scored
    positions (the lm_head over the full vocabulary dominates memory), in float32. With
    `return_entropy`, also returns the entropy of the model's next-token distribution at each
    scored position, (B, L). Differentiable: wrap in torch.no_grad() for old/ref log-probs.
    """
    targets = completion_mask.bool().clone()  # (B, L)
    targets[:, 0] = False
    # Output at t-1 predicts token t: select outputs with the targets shifted one step left.
    logits = _selected_logits(model, input_ids, attention_mask, targets[:, 1:])  # (N, V)
    logp_all = F.log_softmax(logits.float(), dim=-1)  # (N, V)
    token_logp = logp_all.gather(-1, input_ids[targets].unsqueeze(-1)).squeeze(-1)  # (N,)
    zeros = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    logprobs = zeros.masked_scatter(targets, token_logp)  # (B, L)
    if not return_entropy:
        return logprobs
    entropy_tok = -(logp_all.exp() * logp_all).sum(-1)  # (N,)
    return logprobs, zeros.masked_scatter(targets, entropy_tok)


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
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state  # (B, L, H)
        return model.get_output_embeddings()(hidden[:, :-1][select])  # (N, V)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    return out.logits[:, :-1][select]  # (N, V)


def _head_is_separable(model: nn.Module) -> bool:
    """True if logits are exactly lm_head(decoder hidden states): no scaling or softcapping."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_decoder"):
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    head = model.get_output_embeddings()
    return isinstance(head, nn.Linear) and model.get_decoder() is not None
