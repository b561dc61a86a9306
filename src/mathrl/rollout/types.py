"""The rollout interface: sampling parameters, completions, and the engine base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from mathrl.errors import ConfigError

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


class RolloutEngine(ABC):
    """Samples completions for token-id prompts; one implementation per backend."""

    @abstractmethod
    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingParams,
        seeds: list[int] | None = None,
    ) -> GenerationResult:
        """`sampling.n` completions per prompt, prompt-major; seeds[i] is prompt i's seed
        (default: rollout.sampler.prompt_seed(sampling.seed, i))."""

    def update_weights(self, model: Any) -> None:  # noqa: B027 - deliberate no-op default
        """Make the engine sample from `model`'s current weights (no-op when shared in-process)."""
