"""Pure evaluation metrics (no torch): greedy pass@1, sampled mean@n / pass@k / maj@k, entropy, lengths.

Definitions, stated up front:
- `pass@1` is GREEDY and strict (the headline number); `pass@1_lenient` uses the lenient
  extractor on the same greedy completions; `format_rate` is the share of those greedy
  completions that end in the requested answer format (format compliance).
- With n > 1 samples per problem (at `temperature`): `mean@n` is the mean strict accuracy
  of the samples (it equals the unbiased sampled pass@1, so no separate sampled `pass@1`
  key exists); `pass@k` (k > 1) is the unbiased estimator of Chen et al. (2021) averaged
  over problems; `maj@k` majority-votes the first k samples. n = 1 is greedy only.
- CIs (`<key>_lo`, `<key>_hi`) are normal-approximation 95% intervals over problems, the
  per-problem values being 0/1 (greedy), c/n (mean@n) or the unbiased pass@k estimate.
  They treat the problems as the random sample and ignore the (smaller) sampling noise
  within a problem, so they are slightly narrow for small n.
- `entropy` is the mean negative log-prob of the sampled tokens under the T=1 model
  distribution (the engine returns only the sampled token's log-prob). Sampling at T=1
  makes it a Monte-Carlo estimate of the per-token entropy; at T != 1 it is a
  cross-entropy (T-samples scored at T=1), still useful to compare checkpoints.
- `limit` takes the first `limit` problems of a seeded permutation of the split, so the
  same seed gives the same problems and a larger limit is a superset of a smaller one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from mathrl.errors import DataError
from mathrl.rewards import format_number, parse_number
from mathrl.tasks import Example


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): no huge binomials.
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def normalize_pred(pred: str | None) -> str | None:
    """Canonical vote key: a number in canonical form (`72.0` -> `72`), else whitespace-free text."""
    if pred is None:
        return None
    value = parse_number(pred)
    if value is not None:
        return format_number(value)
    text = "".join(pred.split())
    return text or None


def maj_at_k(preds: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 if the most frequent normalised prediction among the first k samples is correct.

    `correct[i]` is sample i's grade, so this works when the grade is not `pred == gold`
    (Countdown: many expressions reach the target). An answer counts as correct if any of
    its samples was graded correct. None predictions do not vote; with no vote at all the
    result is 0. Ties go to the tied answer that appears FIRST in sample order (not the
    correct one), so the result is deterministic and not optimistic.
    """
    if not 1 <= k <= len(preds) or len(preds) != len(correct):
        raise ValueError(f"maj_at_k needs 1 <= k <= len(preds) == len(correct), got k={k}")
    counts: dict[str, int] = {}
    right: dict[str, bool] = {}
    for pred, ok in zip(preds[:k], correct[:k], strict=True):
        key = normalize_pred(pred)
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1  # dicts keep first-seen order
        right[key] = right.get(key, False) or bool(ok)
    if not counts:
        return 0.0
    best = max(counts.values())
    winner = next(key for key, c in counts.items() if c == best)
    return 1.0 if right[winner] else 0.0


def mean_ci(
    values: Sequence[float], z: float = 1.96, bounds: tuple[float, float] | None = None
) -> tuple[float, float, float]:
    """(mean, lo, hi): mean +- z * sample std / sqrt(len); clipped to `bounds` if given."""
    if not values:
        raise ValueError("mean_ci needs at least one value")
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(var / n)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(bounds[0], lo), min(bounds[1], hi)
    return mean, lo, hi


def token_entropy(logprob_sums: Sequence[float], n_tokens: Sequence[int]) -> float:
    """Token-mean negative log-prob of sampled tokens: a Monte-Carlo entropy estimate at T=1."""
    total = sum(n_tokens)
    return -sum(logprob_sums) / total if total else 0.0


def select_examples(examples: list[Example], limit: int, seed: int) -> list[Example]:
    """The first `limit` of a seeded permutation (in split order); limit <= 0 keeps all."""
    if limit <= 0 or limit >= len(examples):
        return list(examples)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:limit])]


def _ci_keys(out: dict[str, Any], key: str, values: Sequence[float]) -> None:
    out[key], out[f"{key}_lo"], out[f"{key}_hi"] = mean_ci(values, bounds=(0.0, 1.0))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(records: list[dict[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Summary metrics from per-example records (see module docstring for definitions)."""
    if not records:
        raise DataError("nothing to summarize: no evaluated problems")
    greedy = [r["greedy"] for r in records]
    out: dict[str, Any] = {"n_problems": len(records)}
    _ci_keys(out, "pass@1", [float(g["correct"]) for g in greedy])
    out["pass@1_lenient"] = _mean([float(g["correct_lenient"]) for g in greedy])
    # format compliance: the share of greedy completions in the requested answer format
    out["format_rate"] = _mean([float(g.get("format_ok", False)) for g in greedy])
    out["mean_reward"] = _mean([g["reward"] for g in greedy])
    out["len_mean"] = _mean([g["n_tokens"] for g in greedy])
    out["truncated_frac"] = _mean([float(g["finish_reason"] == "length") for g in greedy])
    n = len(records[0]["samples"])
    if n > 1:
        samples = [s for r in records for s in r["samples"]]
        _ci_keys(out, f"mean@{n}", [r["pass_rate"] for r in records])
        counts = [sum(s["correct"] for s in r["samples"]) for r in records]
        for k in sorted(set(ks) - {1}):  # sampled pass@1 is mean@n
            _ci_keys(out, f"pass@{k}", [pass_at_k(n, c, k) for c in counts])
        for k in sorted(set(ks)):
            votes = [
                maj_at_k([s["pred"] for s in r["samples"]], [s["correct"] for s in r["samples"]], k)
                for r in records
            ]
            out[f"maj@{k}"] = _mean(votes)
        out["entropy"] = token_entropy(
            [s["logprob_sum"] for s in samples], [s["n_tokens"] for s in samples]
        )
        out["sampled_mean_reward"] = _mean([s["reward"] for s in samples])
        out["sampled_len_mean"] = _mean([s["n_tokens"] for s in samples])
        out["sampled_truncated_frac"] = _mean(
            [float(s["finish_reason"] == "length") for s in samples]
        )
    return out


def eval_metrics(summary: dict[str, Any], prefix: str = "eval/") -> dict[str, float]:
    """The numeric summary entries under `prefix` (e.g. `eval/pass@1`), ready for a logger."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in summary.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
