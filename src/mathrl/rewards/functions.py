"""Reward functions from the user's own code, in TRL's form, weighted with the built-ins.

    def my_reward(completions, **columns) -> list[float | None]

is called as GRPOTrainer calls it: `completions` (one per sample; chat messages
`[{"role": "assistant", "content": ...}]` by default, as TRL passes them for chat prompts,
or plain strings with `completions = "text"`), `prompts` (the chat messages) and every
column of the example as keyword lists of the same length. `None` means "cannot be
scored": that function is left out of the sample's reward and the sample's reason says so.

task.rewards lists `RewardFn`s; the reward is sum(weight * value). `fn` is an import path
`pkg.module:name` or a built-in: `task` (the task's reward under task.reward_scheme),
`correct` (1/0 strict), `format` (1/0 format followed) or `overlong` (DAPO's soft length
penalty, `overlong_penalty`: it needs the token count, so the trainer adds it after the
pool has scored the text, `with_overlong`). Each value is logged as the
reward component `name` (default: the function's name), so metrics read `reward/<name>`.

Scoring runs inside the bounded reward pool (mathrl.rewards.pool), one completion per
call, so a slow or hanging user function costs that sample a timeout, not the run.
No torch here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mathrl.errors import ConfigError
from mathrl.rewards.pool import CPU_S, MEMORY_MB, RewardPool
from mathrl.rewards.scoring import RewardResult, combine

BUILTINS = ("task", "correct", "format", "overlong")
"""Built-in reward values a RewardFn may name instead of an import path."""

RESERVED = frozenset(
    {"mean", "std", "accuracy", "accuracy_lenient", "frac_zero_std", "failed", "unscored"}
)
"""reward/* metric names taken by the trainer's own statistics."""

PASSED = ("completions", "prompts")
"""Keyword arguments every reward function receives besides the example's columns."""


@dataclass(frozen=True)
class RewardFn:
    """One weighted reward term of task.rewards."""

    fn: str
    """Import path `pkg.module:function` (TRL signature), or task, correct or format."""
    weight: float = 1.0
    """Weight of this term in the reward."""
    name: str = ""
    """Metric name (reward/<name>); empty: the function's own name."""
    completions: str = "messages"
    """How completions are passed: messages (TRL's chat form) or text (plain strings)."""

    @property
    def label(self) -> str:
        return self.name or self.fn.rpartition(":")[2] or self.fn


def check_specs(specs: Sequence[RewardFn]) -> None:
    """Static checks of task.rewards (no import): forms, weights, unique metric names."""
    seen: set[str] = set()
    for spec in specs:
        if spec.fn not in BUILTINS:
            module, _, attr = spec.fn.partition(":")
            if not module or not attr or not all(p.isidentifier() for p in module.split(".")):
                raise ConfigError(
                    f"task.rewards fn '{spec.fn}' must be 'pkg.module:function' or one of "
                    f"{', '.join(BUILTINS)}"
                )
        if not math.isfinite(spec.weight):
            raise ConfigError(f"task.rewards weight of '{spec.fn}' must be finite")
        if spec.completions not in ("messages", "text"):
            raise ConfigError(
                f"task.rewards completions of '{spec.fn}' must be messages or text, "
                f"got '{spec.completions}'"
            )
        label = spec.label
        if label in seen or label in RESERVED:
            taken = "used twice" if label in seen else "a reward/* statistic"
            raise ConfigError(f"task.rewards name '{label}' is {taken}: set a distinct name")
        if spec.fn not in BUILTINS and label in BUILTINS:
            raise ConfigError(f"task.rewards name '{label}' is a built-in: set another name")
        seen.add(label)


@functools.cache
def resolve(path: str) -> Callable[..., Any]:
    """The function at `pkg.module:name` (on sys.path or in the current directory); a
    one-line ConfigError when it does not resolve."""
    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:  # `mathrl` as a console script: find ./my_rewards.py too
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module failing at import time
        raise ConfigError(
            f"task.rewards fn '{path}': cannot import {module_name} ({type(exc).__name__}: "
            f"{str(exc)[:120]})"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"task.rewards fn '{path}': {module_name} has no function '{attr}'")
    return fn


def check_signature(path: str, fn: Callable[..., Any], columns: Sequence[str]) -> None:
    """fn takes `completions` and every other argument it requires is a column we pass."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return  # builtins / C functions: the trial call decides
    given = set(PASSED) | set(columns)
    missing = [
        p.name
        for p in params.values()
        if p.default is p.empty
        and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and p.name not in given
    ]
    var_keyword = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if "completions" not in params and (missing or not var_keyword):
        raise ConfigError(
            f"task.rewards fn '{path}' must take completions (TRL signature: "
            "fn(completions, **kwargs) -> list[float | None])"
        )
    if missing:
        raise ConfigError(
            f"task.rewards fn '{path}' needs column '{missing[0]}', which the data lacks "
            f"(columns: {', '.join(sorted(columns))})"
        )


def _accepted(fn: Callable[..., Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs fn can take: all of them with **kwargs, else only the named parameters."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def call_batch(
    spec: RewardFn,
    fn: Callable[..., Any],
    completions: Sequence[str],
    prompts: Sequence[Any],
    columns: Sequence[dict[str, Any]],
) -> list[float | None]:
    """Call fn on a batch in TRL's form; check it returned one number or None per sample."""
    if spec.completions == "messages":
        passed: list[Any] = [[{"role": "assistant", "content": c}] for c in completions]
    else:
        passed = list(completions)
    names = sorted({k for row in columns for k in row} - set(PASSED))
    kwargs = {"completions": passed, "prompts": list(prompts)}
    kwargs.update({k: [row.get(k) for row in columns] for k in names})
    out = fn(**_accepted(fn, kwargs))
    if not isinstance(out, list | tuple) or len(out) != len(completions):
        got = f"{type(out).__name__} of length {len(out)}" if hasattr(out, "__len__") else None
        raise ConfigError(
            f"task.rewards fn '{spec.fn}' must return a list of {len(completions)} floats or "
            f"None (one per completion), got {got or type(out).__name__}"
        )
    values: list[float | None] = []
    for v in out:
        if v is None:
            values.append(None)
        elif isinstance(v, int | float) and math.isfinite(v):
            values.append(float(v))
        else:
            raise ConfigError(
                f"task.rewards fn '{spec.fn}' returned {v!r}: each item must be a finite "
                "number or None"
            )
    return values


def score_with_functions(
    completion: str,
    base_fn: Callable[..., RewardResult],
    base_args: tuple[Any, ...],
    specs: tuple[RewardFn, ...],
    prompt: Any,
    columns: dict[str, Any],
) -> RewardResult:
    """The task's own result, its reward replaced by the weighted task.rewards terms."""
    base = base_fn(completion, *base_args)
    builtin = {"task": base.reward, "correct": float(base.correct), "format": float(base.format_ok)}
    values: dict[str, float] = {}
    weights: dict[str, float] = {}
    unscored = []
    for spec in specs:
        if spec.fn == "overlong":
            continue  # a function of the token count: with_overlong adds it
        if spec.fn in BUILTINS:
            value: float | None = builtin[spec.fn]
        else:
            (value,) = call_batch(spec, resolve(spec.fn), [completion], [prompt], [columns])
        if value is None:
            unscored.append(spec.label)
            continue
        values[spec.label], weights[spec.label] = value, spec.weight
    reason = base.reason + (f"; unscored: {', '.join(unscored)}" if unscored else "")
    return dataclasses.replace(
        base,
        reward=combine(values, weights),
        components={**base.components, **values},
        reason=reason,
    )


def overlong_penalty(n_tokens: int, max_tokens: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (Yu et al., 2025): 0 up to max_tokens - buffer
    tokens, then linear down to -1 at max_tokens, and -1 beyond."""
    if buffer < 1 or buffer > max_tokens:
        raise ConfigError(f"overlong buffer must be in [1, {max_tokens}], got {buffer}")
    excess = n_tokens - (max_tokens - buffer)
    return 0.0 if excess <= 0 else -min(1.0, excess / buffer)


def with_overlong(
    result: RewardResult,
    n_tokens: int,
    specs: Sequence[RewardFn],
    max_tokens: int,
    buffer: int,
) -> RewardResult:
    """`result` with each `overlong` term of specs added: weight x overlong_penalty, logged
    as the component of its label."""
    terms = [spec for spec in specs if spec.fn == "overlong"]
    if not terms:
        return result
    value = overlong_penalty(n_tokens, max_tokens, buffer)
    return dataclasses.replace(
        result,
        reward=result.reward + sum(spec.weight * value for spec in terms),
        components={**result.components, **{spec.label: value for spec in terms}},
    )


def preflight(
    specs: Sequence[RewardFn],
    completions: Sequence[str],
    prompts: Sequence[Any],
    columns: Sequence[dict[str, Any]],
    timeout_s: float,
    memory_mb: int = MEMORY_MB,
    cpu_s: int = CPU_S,
) -> None:
    """Before training: every function imports, takes what we pass, and returns one value
    per completion (called once on a small batch, within `timeout_s`); else a ConfigError.
    The import and the call run in a reward worker, as training's calls do: user code never
    runs in this process, and a hang is killed with everything it started."""
    check_specs(specs)
    user = [spec for spec in specs if spec.fn not in BUILTINS]
    if not user:
        return
    items = [(spec, list(completions), list(prompts), list(columns)) for spec in user]
    with RewardPool(timeout_s, workers=1, memory_mb=memory_mb, cpu_s=cpu_s) as pool:
        results = pool.map(_trial, items)
    for spec, result in zip(user, results, strict=True):
        if result.reason == "timeout":
            raise ConfigError(
                f"task.rewards fn '{spec.fn}' did not return within {timeout_s:g} s on a "
                f"batch of {len(completions)} (train.reward_timeout_s bounds each call)"
            )
        if result.reason.startswith("error: "):  # the worker died or the call escaped
            raise ConfigError(
                f"task.rewards fn '{spec.fn}' failed on a batch of {len(completions)}: "
                f"{result.reason.removeprefix('error: ')}"
            )
        if result.reason != "ok":
            raise ConfigError(result.reason)


def _trial(
    spec: RewardFn,
    completions: list[str],
    prompts: list[Any],
    columns: list[dict[str, Any]],
) -> RewardResult:
    """In a reward worker: import spec.fn, check its signature, call it once; reason 'ok'
    or the one-line message of what is wrong."""
    try:
        fn = resolve(spec.fn)
        check_signature(spec.fn, fn, sorted({k for row in columns for k in row}))
        call_batch(spec, fn, completions, prompts, columns)
    except ConfigError as exc:
        return RewardResult(0.0, reason=str(exc))
    except Exception as exc:
        return RewardResult(
            0.0,
            reason=f"task.rewards fn '{spec.fn}' raised {type(exc).__name__}: {str(exc)[:160]} "
            f"on a batch of {len(completions)}",
        )
    return RewardResult(1.0, reason="ok")
