"""Which seed each prompt of a call samples with, and which chunk decodes it.

Plain Python, so the engine base (rollout/types.py), which the config imports through the
engine registry, loads no framework. The streams of uniforms a seed keys live in sampler.py.
"""

from __future__ import annotations

from typing import Protocol

from mathrl.errors import MathrlError

_GOLDEN64 = 0x9E3779B97F4A7C15  # 2^64 / phi: consecutive prompts get well-spread seeds


class Seeded(Protocol):
    """What the seeds need of a SamplingParams (types.py imports this module, not back)."""

    @property
    def seed(self) -> int | None: ...


def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt `index` of a call seeded `seed`, as an unsigned 64-bit int."""
    return (seed + index * _GOLDEN64) % 2**64


def resolve_seeds(sampling: Seeded, count: int, seeds: list[int] | None) -> list[int]:
    """Each prompt's seed: `seeds` as given, else prompt_seed(sampling.seed, i); a missing
    sampling.seed is drawn from torch's global RNG (so torch.manual_seed still fixes a run)."""
    if seeds is not None:
        if len(seeds) != count:
            raise MathrlError(f"got {len(seeds)} seeds for {count} prompts")
        return [int(s) for s in seeds]
    seed = sampling.seed
    if seed is None:
        # Only here: importing torch costs ~3 s, and the HTTP engine needs it for nothing else.
        import torch

        seed = int(torch.randint(0, 2**62, ()).item())
    return [prompt_seed(seed, i) for i in range(count)]


def checked_seeds(prompts: list[list[int]], sampling: Seeded, seeds: list[int] | None) -> list[int]:
    """What every generate() does first: refuse an empty prompt, then each prompt's seed
    (resolve_seeds)."""
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise MathrlError(f"prompt {i} is empty: every prompt needs at least one token")
    return resolve_seeds(sampling, len(prompts), seeds)


def prompt_chunks(lengths: list[int], per_chunk: int) -> list[list[int]]:
    """Prompt indices per chunk of at most `per_chunk`: all in order when one chunk holds
    them; otherwise by length (stable), so a chunk's prompts pad to similar widths."""
    order = list(range(len(lengths)))
    if len(lengths) > per_chunk:
        order.sort(key=lambda i: lengths[i])
    return [order[i : i + per_chunk] for i in range(0, len(order), per_chunk)]
