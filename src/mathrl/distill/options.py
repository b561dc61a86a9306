"""What `mathrl distill` asks for, checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mathrl.errors import ConfigError
from mathrl.rollout.http import check_api_key

MAX_BODY_BYTES = 8 << 20
"""Largest response body read (a 100k-token reasoning trace is well under 1 MiB)."""


@dataclass
class DistillOptions:
    """What `mathrl distill` asks for; None takes the config's rollout.* value."""

    endpoint: str
    model: str
    out: Path
    n: int = 4
    concurrency: int = 8
    api_key: str | None = None
    keep: str = "correct"
    sft_out: Path | None = None
    limit: int = 0
    max_tokens: int | None = None
    temperature: float | None = None
    timeout_s: float = 600.0
    max_retries: int = 6
    rate_limit: float = 0.0
    split: str = "train"
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    seed: bool = True
    max_body_bytes: int = MAX_BODY_BYTES
    progress_s: float = 10.0

    def __post_init__(self) -> None:
        checks = {
            "--n must be >= 1": self.n >= 1,
            "--concurrency must be in [1, 1024]": 1 <= self.concurrency <= 1024,
            "--keep must be 'all' or 'correct'": self.keep in ("all", "correct"),
            "--limit must be >= 0": self.limit >= 0,
            "--max-tokens must be >= 1": self.max_tokens is None or self.max_tokens >= 1,
            "--temperature must be >= 0": self.temperature is None or self.temperature >= 0,
            "--timeout must be > 0": self.timeout_s > 0,
            "--max-retries must be >= 0": self.max_retries >= 0,
            "--rate-limit must be >= 0 (0 = none)": self.rate_limit >= 0,
            "--split must be train, val or test": self.split in ("train", "val", "test"),
            "--backoff must be >= 0": self.backoff_s >= 0 and self.max_backoff_s >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise ConfigError(message)
        self.out = Path(self.out)
        if self.sft_out is None:
            stem = self.out.name.removesuffix(".jsonl")
            self.sft_out = self.out.with_name(f"{stem}.sft.jsonl")
        if Path(self.sft_out).resolve() == self.out.resolve():
            raise ConfigError("--sft-out must differ from --out")
        check_api_key(self.api_key)  # before anything runs
