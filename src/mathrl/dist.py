"""Data parallelism on torch.distributed: which rank this is, and the few collectives the
loops need. torchrun (or `mathrl train --nproc N`, which calls torchrun's launcher) starts
the processes and sets RANK / WORLD_SIZE / MASTER_ADDR; `init()` joins the group.

What each rank does (the loops call the functions below, and one process is world 1):
- samples its share of every step's prompts (a group never splits across ranks; seeds come
  from the prompt's global index, so a prompt samples the same on any number of ranks);
- sees every rank's groups (`gather`): rewards, advantages and logged metrics are those of
  the whole batch, exactly as one process computes them;
- sums gradients over ranks (`all_reduce_grads`) after normalising its losses by the global
  token count (`all_sum`): token-mean over all ranks' tokens, not a mean of means;
- agrees on stopping (`agree_stop`), so a signal stops every rank at the same step;
- leaves writing (checkpoints, logs, rollouts, report) to rank 0 (`on_main`).

With train.parallel = "ddp" every rank holds the full model and optimizer state (gradients
are all-reduced once per optimizer step, after accumulation, which is what DDP with no_sync
computes); with "fsdp" they are sharded (mathrl.fsdp).
Collectives time out after `timeout_s` (train.collective_timeout_s), not torch's 30 minutes:
a dead rank makes the others fail within that bound, and torchrun stops them sooner.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from mathrl.errors import MathrlError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place: rank in [0, world)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_current = Dist()

WRITE_TIMEOUT_S = 3600.0
"""How long ranks wait for rank 0's work in on_main (writing a checkpoint, a report)."""
_writer: list[Any] = [None]  # the process group on_main waits on (gloo, WRITE_TIMEOUT_S)


def current() -> Dist:
    """This process's place (world 1 unless init() joined a group)."""
    return _current


def speaks() -> bool:
    """Rank 0 of a torchrun job, or a plain process: the one that prints shared outcomes
    (read from the environment, so it holds before init() and after close())."""
    return os.environ.get("RANK", "0") == "0"


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(timeout_s: float, device: str = "cpu") -> Dist:
    """Join the process group torchrun described (gloo on CPU, nccl on CUDA); world 1 when
    not launched. Idempotent."""

    global _current
    if not launched():
        return _current
    if not tdist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local)
        try:
            tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError) as e:
            raise MathrlError(f"could not join the process group ({backend}): {e}") from None
    if _writer[0] is None:
        # rank 0's writes (a checkpoint of a large model) may outlast the collective
        # timeout: the others wait for them on a CPU group with a longer one (a rank 0
        # that dies still ends the wait at once: gloo sees its connection go)
        wait = datetime.timedelta(seconds=max(timeout_s, WRITE_TIMEOUT_S))
        _writer[0] = tdist.new_group(backend="gloo", timeout=wait)
    _current = Dist(
        tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )
    return _current


def rank_device(device: str) -> str:
    """A rank's device: "cuda" means this rank's GPU (LOCAL_RANK) when there are several."""
    if _current.world > 1 and device == "cuda":
        return f"cuda:{_current.local_rank}"
    return device


def close() -> None:
    """Leave the process group (at the end of a command)."""

    global _current
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
    _writer[0] = None
    _current = Dist()


@contextlib.contextmanager
def joined() -> Iterator[None]:
    """Leave the process group (if init() joined one) when the block ends, however it ends."""
    try:
        yield
    finally:
        close()


def share(items: list[T]) -> tuple[int, list[T]]:
    """This rank's contiguous share of `items` and the global index of its first item."""
    d = _current
    if len(items) % d.world:
        raise MathrlError(f"{len(items)} items do not split evenly over {d.world} ranks")
    k = len(items) // d.world
    return d.rank * k, items[d.rank * k : (d.rank + 1) * k]


def share_uneven(items: list[T]) -> tuple[int, list[T]]:
    """This rank's contiguous share of `items` (sizes differ by at most one, earlier ranks
    get the larger ones) and the global index of its first item; share() when they split."""
    d = _current
    bounds = [r * len(items) // d.world for r in range(d.world + 1)]
    return bounds[d.rank], items[bounds[d.rank] : bounds[d.rank + 1]]


def my_indices(count: int) -> list[int]:
    """This rank's indices of `count` items, strided (rank, rank + world, ...): shares
    differ by at most one item, so any count splits."""
    return list(range(count))[_current.rank :: _current.world]


def gather_in_order(items: list[tuple[int, T]]) -> list[T]:
    """Every rank's (index, item) pairs, on every rank, as one list ordered by index."""
    pairs = [pair for part in gather(items) for pair in part]
    return [item for _, item in sorted(pairs, key=lambda pair: pair[0])]


def gather(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (picklable objects)."""

    if _current.world == 1:
        return [obj]
    out: list[Any] = [None] * _current.world
    _collective(lambda: tdist.all_gather_object(out, obj), "gathering results")
    return out


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sums over ranks (float64)."""

    if _current.world == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device())
    _collective(lambda: tdist.all_reduce(t), "summing counts")
    return t.tolist()


def all_reduce_grads(model: Any) -> None:
    """Sum the trainable parameters' gradients over ranks, in one flat buffer per dtype."""

    if _current.world == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    # torch.distributed.tensor takes ~1-2 s to import: only FSDP runs reach this line
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in params):
        return  # FSDP (mathrl.fsdp) reduce-scattered them during the backward pass
    # A parameter no rank gave a gradient stays without one, as in one process (AdamW then
    # skips it: no weight decay, no momentum step); one some rank missed gets zeros there.
    has = torch.tensor([float(p.grad is not None) for p in params], device=_device())
    _collective(partial(tdist.all_reduce, has), "summing gradients")
    params = [p for p, n in zip(params, has.tolist(), strict=True) if n > 0]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for same in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in same])
        _collective(partial(tdist.all_reduce, flat), "summing gradients")
        offset = 0
        for g in same:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def agree_stop(signum: int | None) -> int | None:
    """The signal any rank received (the largest number), so all stop at the same step."""

    if _current.world == 1:
        return signum
    t = torch.tensor([float(signum or 0)], dtype=torch.float64, device=_device())
    _collective(lambda: tdist.all_reduce(t, op=tdist.ReduceOp.MAX), "agreeing to stop")
    return int(t.item()) or None


def on_main(fn: Callable[[], T]) -> T:
    """fn() on rank 0 (the writer); every rank gets its result, or raises its error, after
    it returns."""
    if _current.world == 1:
        return fn()

    box: list[Any] = [None]
    if _current.is_main:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # every rank fails the same way, not just rank 0
            box[0] = ("error", e)
    _collective(
        lambda: tdist.broadcast_object_list(box, src=0, group=_writer[0]), "waiting for rank 0"
    )
    kind, value = box[0]
    if kind == "error":
        value.shared = True  # the same error on every rank: only rank 0 prints it
        raise value
    return value


def _device() -> torch.device:

    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_step: list[int | None] = [None]


def at_step(step: int | None) -> None:
    """The step the loop is in (named when a collective fails)."""
    _step[0] = step


_comm_s = [0.0]


def comm_seconds() -> float:
    """Seconds spent in collectives so far (waiting for peers included)."""
    return _comm_s[0]


def _collective(fn: Callable[[], Any], what: str) -> None:
    """A collective; a peer that died or timed out becomes one line naming this rank."""
    t0 = time.perf_counter()
    try:
        fn()
    except RuntimeError as e:  # DistBackendError and gloo's errors are RuntimeErrors
        where = f" in step {_step[0]}" if _step[0] is not None else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MathrlError(
            f"rank {_current.rank} of {_current.world}{where}: {what} failed: another rank "
            f"died or timed out ({first})"
        ) from None
    finally:
        _comm_s[0] += time.perf_counter() - t0
