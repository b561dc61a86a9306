"""FSDP2 (`train.parallel = "fsdp"`): parameters, gradients and optimizer state sharded
over the ranks with torch.distributed.fsdp.fully_shard, for models that do not fit one
device.

Layout: every decoder layer is one FSDP unit, the rest (embeddings, final norm, LM head:
tied weights stay together) is the root unit. Each rank keeps 1/world of every parameter
and of AdamW's moments; a forward all-gathers a unit's parameters and frees them after,
a backward reduce-scatters its gradients. Gradients are summed over ranks, not averaged
(the loops normalise the loss by the whole batch's token count, as DDP here does).

What the loops must do differently, and this module gives them:
- Rollouts and evaluation decode token by token, and ranks decode different numbers of
  steps: `full_weights` gathers the whole model once for that, decodes with plain tensors
  (no collective per step) and reshards after.
- Training forwards and backwards are collectives under FSDP: every rank runs the same
  number per step (`padded_count`; a rank with less work runs zero-weight passes).
- Checkpoints stay in the one-process format (`full_state`): rank 0 writes the gathered
  model in HF format and the gathered optimizer state keyed like one process keys it, so a
  checkpoint resumes with DDP, FSDP or one process, and `load_optimizer` shards it back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mathrl import dist
from mathrl.errors import ConfigError


def wanted(cfg: Any) -> bool:
    """This run shards its model: train.parallel = "fsdp" with several ranks."""
    return bool(cfg.train.parallel == "fsdp" and dist.current().world > 1)


def check(cfg: Any) -> None:
    """What FSDP here does not do, refused before any work."""
    if wanted(cfg) and cfg.model.lora.r > 0:
        raise ConfigError(
            "train.parallel = 'fsdp' with model.lora: LoRA adapters are small, use "
            "train.parallel = 'ddp' (the base model is frozen and not sharded)"
        )


def shard(model: Any, device: str | None = None) -> Any:
    """fully_shard each decoder layer, then the root; gradients sum over ranks. The shards
    go to `device` (default: where the model is), so a model read on the CPU never sits
    whole on the accelerator. Returns the same module (its class becomes FSDP's subclass)."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(
            f"train.parallel = 'fsdp' shards decoder layers (model.model.layers); "
            f"{type(model).__name__} has none: use train.parallel = 'ddp'"
        )
    where = torch.device(device) if device else next(model.parameters()).device
    if where.type == "cuda" and where.index is not None:
        torch.cuda.set_device(where)
    mesh = init_device_mesh(where.type, (dist.current().world,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for unit in model.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)  # a sum, like all_reduce_grads
            unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-scaled sum
    return model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def full_weights(model: Any) -> Iterator[None]:
    """The whole model on every rank for the block (rollouts, eval): forwards inside run
    locally, however many each rank makes. A collective on entry; nothing when unsharded."""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    layers = [m for m in units if m is not model]
    for unit in layers:
        unit.set_reshard_after_forward(False)
    handles = [unit.unshard(async_op=True) for unit in units]
    for handle in handles:
        if handle is not None:
            handle.wait()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        for unit in layers:
            unit.set_reshard_after_forward(True)


def padded_count(count: int, model: Any) -> int:
    """The number of forward/backward passes every rank makes this step: the largest
    rank's `count` under FSDP (passes are collectives there), else `count`."""
    if not is_sharded(model):
        return count
    return max(dist.gather(count))


def full_state(model: Any, optimizer: Any = None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(model weights or None, optimizer state) to checkpoint, as one process saves them.
    Under FSDP a collective: rank 0 gets the gathered tensors on the CPU (the weights for
    save_pretrained, the optimizer keyed by parameter index); other ranks get empty ones.
    Unsharded: (None, optimizer.state_dict()), the model saves itself."""
    if not is_sharded(model):
        return None, optimizer.state_dict() if optimizer is not None else {}
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    # Before the first step there is no state to gather (every rank agrees: they step
    # together), and torch's gather would initialise it with a zero step, so that the next
    # real step would differ from one process's: the plain state_dict is already indexed.
    gather = optimizer is not None and bool(optimizer.state)
    by_name: dict[str, Any] = (
        dict(get_optimizer_state_dict(model, optimizer, options=options)) if gather else {}
    )
    if not dist.current().is_main:
        return {}, {}
    # a tied weight (the LM head = the embeddings) is saved once, as save_pretrained does
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    tied = every - {name for name, _ in model.named_parameters()}
    weights = {k: v for k, v in weights.items() if k not in tied}
    if not gather:
        return weights, optimizer.state_dict() if optimizer is not None else {}
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    return weights, {
        "state": {index[name]: v for name, v in by_name["state"].items()},
        "param_groups": [
            {**g, "params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]
        ],
    }


def load_optimizer(model: Any, optimizer: Any, saved: dict[str, Any]) -> None:
    """Restore an optimizer state saved as one process saves it (parameter indices); under
    FSDP every rank keeps its shard of it."""
    if not is_sharded(model):
        optimizer.load_state_dict(saved)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    names = _trainable_names(model)
    by_name: Any = {
        "state": {names[i]: v for i, v in saved["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )


@contextlib.contextmanager
def plain_class(model: Any) -> Iterator[None]:
    """The model's own class for the block (save_pretrained records the class name as the
    architecture; FSDP's subclass is FSDP<name>)."""
    cls = type(model)
    if not is_sharded(model):
        yield
        return
    model.__class__ = cls.__bases__[1]  # FSDP's class is (FSDPModule, original)
    try:
        yield
    finally:
        model.__class__ = cls


def _trainable_names(model: Any) -> list[str]:
    """Names of the trainable parameters in optimizer order (shared ones once)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]
