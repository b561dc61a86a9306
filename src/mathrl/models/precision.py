"""Mixed precision: forwards under torch.autocast, weights and optimizer state unchanged.

`model.autocast = "bfloat16"` keeps fp32 weights (the optimizer's master copy) and runs
every forward that mathrl makes of the model - rollouts, training and reference
log-probs, SFT, eval - with low-precision GEMMs. Worth it on GPUs and on CPUs with
AMX/AVX512-BF16 (BENCHMARKS.md); the sampler's log-probs then differ from the trainer's
by bf16 rounding, which the PPO ratio sees as a small off-policy gap.

The setting travels with the model (set_autocast, read by forward_autocast), so every
code path that runs the model honours it, and a deep copy (the KL reference) keeps it.
Backward passes run outside the context, as torch recommends: autocast records the
dtypes it chose in the forward graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mathrl.errors import ConfigError

AUTOCAST_DTYPES = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ATTR = "_mathrl_autocast"


def set_autocast(model: nn.Module, dtype: str) -> None:
    """Run `model`'s forwards under autocast to `dtype` ("none" turns it off)."""
    if dtype not in AUTOCAST_DTYPES:
        raise ConfigError(
            f"unknown autocast dtype {dtype!r}; choose one of {', '.join(AUTOCAST_DTYPES)}"
        )
    setattr(model, _ATTR, AUTOCAST_DTYPES[dtype])


def autocast_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype `model`'s forwards autocast to, or None."""
    return getattr(model, _ATTR, None)


def forward_autocast(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """torch.autocast on the model's device in its dtype; nothing when it has none."""
    return autocast_to(model, autocast_dtype(model))


@contextlib.contextmanager
def autocast_to(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast on the model's device in `dtype` (None: nothing), whatever the model's
    own setting: a sampler in another precision than the trainer (rollout.autocast)."""
    if dtype is None:
        yield
        return
    device = next(model.parameters()).device
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def low_precision_weights_warning(params: list[torch.Tensor], lr: float) -> str | None:
    """Why training these weights directly in bf16/fp16 loses updates, or None if fp32."""
    low = {p.dtype for p in params} & {torch.bfloat16, torch.float16}
    if not low:
        return None
    name = "bfloat16" if torch.bfloat16 in low else "float16"
    return (
        f"training {name} weights: an AdamW step moves a weight by about lr ({lr:g}), far "
        f"below {name}'s resolution for most weights, so most updates round away; use "
        "model.dtype=float32 with model.autocast=bfloat16 (mixed precision)"
    )


# Under CPU autocast, oneDNN's bf16 kernels keep per-shape state that is never freed
# (measured: +35 MB of RSS for each new sequence length, with or without its primitive
# cache; fp32 does not grow). RL batches bring new lengths every step, so batches are
# padded to a multiple of this, which bounds the distinct shapes.
CPU_AUTOCAST_PAD_MULTIPLE = 32


def pad_multiple(model: nn.Module, dtype: torch.dtype | None | str = "model") -> int:
    """Round padded sequence widths up to this for `model`'s forwards under autocast to
    `dtype` (default: the model's own) (1: no rounding)."""
    if (autocast_dtype(model) if dtype == "model" else dtype) is None:
        return 1
    if next(model.parameters()).device.type != "cpu":
        return 1
    return CPU_AUTOCAST_PAD_MULTIPLE
