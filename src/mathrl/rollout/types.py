"""The rollout interface: sampling parameters, completions, and the engine base class."""

from __future__ import annotations

import time
from abc import ABC
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

from mathrl.errors import ConfigError
from mathrl.rollout.seeds import checked_seeds, prompt_chunks
from mathrl.rollout.stops import Row

FinishReason = Literal["eos", "length"]


@dataclass
class SamplingParams:
    """How to sample completions; `greedy` (or temperature 0) ignores the other knobs."""

    n: int = 1
    """Completions per prompt (the GRPO group size)."""
    max_new_tokens: int = 256
    """Hard cap on generated tokens, the stop token included."""
    temperature: float = 1.0
    """Softmax temperature for sampling; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables."""
    seed: int | None = None
    """Seed of the call: prompt i samples with prompt_seed(seed, i); None draws one from
    torch's global RNG."""
    ignore_eos: bool = False
    """Never stop early: every completion gets exactly max_new_tokens tokens."""
    greedy: bool = False
    """Always take the most likely token."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"sampling.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k must be >= 0, got {self.top_k}")

    @property
    def is_greedy(self) -> bool:
        """True if sampling reduces to argmax."""
        return self.greedy or self.temperature == 0


@dataclass
class Completion:
    """One sampled completion of one prompt.

    `token_ids` include the stop token when finish_reason is "eos" (so training learns to
    stop); `text` is decoded without it and without other special tokens. `logprobs[i]` is
    the log-prob of token_ids[i] under the unmodified model distribution (temperature 1, no
    top-k/top-p): what the trainer recomputes, so old and new log-probs are comparable.
    """

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float]


@dataclass
class GenerationResult:
    """Completions ordered prompt-major (prompt 0 samples 0..n-1, prompt 1 ...) and timings."""

    completions: list[Completion]
    timing: dict[str, float] = field(default_factory=dict)
    """Seconds: prefill_s, decode_s, total_s."""
    tokens_generated: int = 0

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of total time."""
        total = self.timing.get("total_s", 0.0)
        return self.tokens_generated / total if total > 0 else 0.0


@dataclass
class Chunk:
    """Whole groups of a call's prompts, decoded together (RolloutEngine._decode_chunk)."""

    prompts: list[list[int]]
    seeds: list[int]
    """seeds[p]: prompt p's seed."""
    sampling: SamplingParams
    timing: dict[str, float]
    """The call's seconds: a chunk adds what it spends to prefill_s and decode_s."""


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """`model` in eval mode (no dropout: LoRA layers have some), its mode restored after;
    a torch or an MLX module."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class GenerationStopped(Exception):
    """generate()'s `stop` said so before a chunk: the call's completions are dropped."""


class RolloutEngine(ABC):
    """Samples completions for token-id prompts; one implementation per backend.

    generate() is written here once: seeds, chunks of whole groups (by length when there is
    more than one), each completion's text (the stop rule), records in the caller's order.
    An engine implements the per-chunk decode (`_decode_chunk`), and where it needs one a
    set-up around all the chunks of a call (`_decoding`); a test double may override
    generate() itself instead.
    """

    tokenizer: Any
    batch_size: int = 64
    """Rows (prompts x n) decoded together; a chunk always holds whole groups."""

    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingParams,
        seeds: list[int] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """`sampling.n` completions per prompt, prompt-major, in chunks of whole groups.

        seeds[i] is prompt i's seed; by default rollout.seeds.prompt_seed(sampling.seed, i).
        `stop()`, when given, is asked before each chunk; True raises GenerationStopped
        (`mathrl serve`: every client of the call has gone).
        """
        seeds = checked_seeds(prompts, sampling, seeds)
        n = sampling.n
        per_chunk = self._prompts_per_chunk(sampling, len(prompts))
        chunks = prompt_chunks([len(p) for p in prompts], per_chunk)
        completions: list[Completion] = []
        timing = {"prefill_s": 0.0, "decode_s": 0.0, "total_s": 0.0}
        t0 = time.perf_counter()
        with self._decoding(min(per_chunk, len(prompts)) * n) as state:
            for indices in chunks:
                if stop is not None and stop():
                    raise GenerationStopped
                chunk = Chunk(
                    [prompts[i] for i in indices], [seeds[i] for i in indices], sampling, timing
                )
                completions += [
                    self._completion(indices[r // n], r % n, chunk.prompts[r // n], *row)
                    for r, row in enumerate(self._decode_chunk(chunk, state))
                ]
        timing["total_s"] = time.perf_counter() - t0
        completions.sort(key=lambda c: (c.prompt_index, c.sample_index))  # prompt-major
        n_tokens = sum(len(c.token_ids) for c in completions)
        return GenerationResult(completions, timing, n_tokens)

    def _prompts_per_chunk(self, sampling: SamplingParams, count: int) -> int:
        """How many of a call's `count` prompts one chunk holds: whole groups, one prefill
        per prompt, about batch_size rows (a group larger than that alone)."""
        return max(1, self.batch_size // sampling.n)

    def _decoding(self, rows: int) -> AbstractContextManager[Any]:
        """What holds around all the chunks of one call (at most `rows` rows each): eval
        mode, no autograd, weights packed once. It yields the `state` each chunk gets."""
        return nullcontext()

    def _decode_chunk(self, chunk: Chunk, state: Any) -> list[Row]:
        """The n samples of each of the chunk's prompts: row p*n + j is sample j of prompt
        p, its ids ending at the stop rule (rollout/stops.py); `state`: what _decoding yields."""
        raise NotImplementedError(f"{type(self).__name__} implements no _decode_chunk")

    def _completion(
        self,
        prompt_index: int,
        sample_index: int,
        prompt_ids: list[int],
        token_ids: list[int],
        logprobs: list[float],
        finish: str,
    ) -> Completion:
        """A Completion whose text omits the stop token and other special tokens."""
        text_ids = token_ids[:-1] if finish == "eos" else token_ids
        return Completion(
            prompt_index=prompt_index,
            sample_index=sample_index,
            prompt_ids=list(prompt_ids),
            token_ids=token_ids,
            text=str(self.tokenizer.decode(text_ids, skip_special_tokens=True)),
            finish_reason="eos" if finish == "eos" else "length",
            logprobs=logprobs,
        )

    def update_weights(self, model: Any) -> None:  # noqa: B027 - deliberate no-op default
        """Make the engine sample from `model`'s current weights (no-op when shared in-process)."""
