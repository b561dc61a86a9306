"""Typed config tree: defaults < config file < MATHRL_CONFIG < --set a.b=value.

Each field is documented once, by the string literal under it; `field_docs()` reads those
strings so `mathrl config keys` and `--help` show them.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from mathrl.errors import ConfigError

ENV_CONFIG = "MATHRL_CONFIG"
GROUP_ALGORITHMS = ("grpo", "dr_grpo", "rloo")


@dataclass
class ScratchConfig:
    """A model built from a config in code, with a tokenizer trained on the task's text."""

    arch: str = "qwen2"
    """Architecture of the from-scratch model: qwen2 or llama."""
    hidden: int = 128
    """Hidden size of the from-scratch model."""
    layers: int = 3
    """Number of transformer layers of the from-scratch model."""
    heads: int = 4
    """Attention heads of the from-scratch model."""
    vocab_size: int = 512
    """Target vocabulary size of the locally trained tokenizer."""
    max_position: int = 512
    """Maximum sequence length of the from-scratch model."""


@dataclass
class LoraConfig:
    """Optional LoRA adapters (needs the peft extra); r = 0 trains all weights."""

    r: int = 0
    """LoRA rank; 0 disables LoRA."""
    alpha: float = 16.0
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters."""


@dataclass
class ModelConfig:
    """Which policy to train and where it runs."""

    path: str = "scratch"
    """HF hub id, local HF dir, .gguf file, 'smollm2-135m-instruct' (offline), or 'scratch'."""
    dtype: str = "auto"
    """auto (bf16 on CUDA, else fp32), float32, bfloat16 or float16."""
    autocast: str = "none"
    """Mixed precision: none, bfloat16 or float16. Forwards (rollout, training, eval) run
    under torch.autocast in this dtype while weights and optimizer state stay in
    model.dtype (use float32 weights with it). Fast on GPUs and CPUs with AMX/AVX512-BF16."""
    device: str = "auto"
    """auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps."""
    threads: int = 0
    """torch CPU threads; 0 uses every core."""
    scratch: ScratchConfig = field(default_factory=ScratchConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TaskConfig:
    """The task: data, prompt and reward."""

    name: str = "countdown"
    """gsm8k or countdown."""
    prompt_style: str = "final_line"
    """final_line (Final: N), hash (#### N), boxed (\\boxed{N}) or think_answer."""
    reward_scheme: str = "format"
    """format (1 correct / 0.1 formatted / 0), binary (strict 1/0) or lenient (lenient 1/0)."""
    system_prompt: str | None = None
    """Override the style's system prompt (None keeps the default)."""
    use_math_verify: bool = False
    """Compare LaTeX answers with math-verify (needs the math-verify extra)."""


@dataclass
class DataConfig:
    """Where examples come from."""

    path: str = "../shared/data/gsm8k"
    """GSM8K: a .jsonl/.parquet file or dir with train/test files, or 'hub' for openai/gsm8k."""
    hub_revision: str = "e53f048856ff4f594e959d75785d2c2d37b678ee"
    """Pinned revision of openai/gsm8k when data.path = 'hub'."""
    val_size: int = 512
    """Train problems reserved for validation (GSM8K)."""
    split_seed: int = 31415
    """Seed of the train/validation split."""
    countdown_numbers: list[int] = field(default_factory=lambda: [3])
    """How many numbers a generated Countdown instance has (choices among 3 and 4)."""
    countdown_max_number: int = 20
    """Largest number of a generated Countdown instance."""
    countdown_max_target: int = 100
    """Largest target of a generated Countdown instance."""
    countdown_train_size: int = 10000
    """Generated Countdown training instances."""
    countdown_test_size: int = 1000
    """Generated Countdown held-out instances (never in training)."""
    keep_pass_rate: list[float] | None = None
    """Keep only training prompts whose probed pass rate lies in [lo, hi] (needs data.pass_rates)."""
    pass_rates: str | None = None
    """pass_rates.jsonl written by `mathrl probe` (used by data.keep_pass_rate)."""


@dataclass
class RolloutConfig:
    """Sampling of completions."""

    engine: str = "hf"
    """Rollout engine: hf (in-process, KV-cached)."""
    max_new_tokens: int = 256
    """Maximum completion length in tokens."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables."""
    batch_size: int = 64
    """Sequences decoded at once (a multiple of train.group_size)."""
    ignore_eos: bool = False
    """Always generate max_new_tokens (benchmarks)."""
    lean_decode: bool = True
    """Llama/Qwen2 models decode with mathrl's lean step: the same samples and log-probs as
    transformers' forward, less overhead, each prompt's K/V shared by its group. Other
    architectures always use transformers' forward."""


@dataclass
class TrainConfig:
    """The RL optimisation."""

    algorithm: str = "grpo"
    """Advantage estimator: grpo, dr_grpo, rloo or reinforce."""
    policy_loss: str = "ppo_clip"
    """Policy loss: ppo_clip, vanilla or gspo."""
    loss_agg: str = "token-mean"
    """Loss aggregation: token-mean, seq-mean-token-mean or seq-mean-token-sum-norm."""
    steps: int = 100
    """Optimizer steps (one rollout batch each, times mu updates)."""
    prompts_per_step: int = 8
    """Distinct prompts per rollout batch."""
    group_size: int = 8
    """Completions per prompt."""
    lr: float = 1e-6
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    schedule: str = "constant"
    """Learning-rate schedule after warm-up: constant or cosine."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    micro_batch_size: int = 16
    """Sequences per forward/backward (gradient accumulation over the batch)."""
    mu: int = 1
    """Optimizer updates per rollout batch; > 1 reuses old log-probs (PPO style)."""
    clip_eps: float = 0.2
    """PPO lower clip range."""
    clip_eps_high: float | None = None
    """PPO upper clip range (DAPO clip-higher); None uses clip_eps."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the reference model; 0 builds no reference."""
    kl_estimator: str = "k3"
    """KL estimator: k1 or k3."""
    baseline_momentum: float = 0.9
    """EMA momentum of the REINFORCE baseline; 0 disables the baseline."""
    drop_zero_std: bool = False
    """Drop groups whose rewards are all equal and resample (dynamic sampling)."""
    min_positive: int = 0
    """Keep sampling until a round has this many positive-reward samples."""
    share_prompts: bool = True
    """Training forward runs each group's prompt once and shares its KV cache across the group (same values, less compute); false runs every prompt+completion row in full."""
    max_total_rollouts: int = 0
    """Bound on completions sampled per step when resampling; 0 means 4x the batch."""
    reward_timeout_s: float = 5.0
    """Time limit of one reward call; a timed-out sample gets reward 0."""
    reward_workers: int = 1
    """Reward worker processes (they bound the time of each call)."""
    nonfinite: str = "skip"
    """On a non-finite loss or gradient: skip the step, or stop the run."""


@dataclass
class SFTConfig:
    """Supervised warm-up / fine-tuning."""

    steps: int = 0
    """Optimizer steps of `mathrl sft` (the warm-up inside train/loop is [warmup])."""
    lr: float = 1e-4
    """SFT learning rate."""
    batch_size: int = 32
    """Sequences per SFT step."""
    max_len: int = 512
    """Truncate SFT sequences to this many tokens."""
    data: str | None = None
    """prompt/response or messages JSONL; None uses the task's own solutions."""


@dataclass
class WarmupConfig:
    """SFT warm-up before RL in `train` and `loop` (lr, batch_size, max_len from [sft])."""

    steps: int = 0
    """Warm up with this many SFT steps on the task's own solutions before RL; 0: none, unless min_positive triggers one."""
    min_positive: float = 0.0
    """Probe RL's first round from the starting model first: if fewer than this fraction of its samples are correct, warm up for auto_steps; 0 disables the probe."""
    auto_steps: int = 200
    """SFT steps of a warm-up triggered by min_positive."""


@dataclass
class ExpertIterConfig:
    """`mathrl expert-iter`: rounds of sample -> keep correct -> SFT -> eval."""

    rounds: int = 3
    """Rounds to run."""
    prompts: int = 256
    """Training prompts sampled per round (a seeded draw per round)."""
    samples: int = 8
    """Completions per prompt (at rollout.temperature)."""
    max_per_prompt: int = 2
    """Distinct correct completions kept per prompt."""
    sft_steps: int = 100
    """SFT steps per round on the kept completions (lr, batch_size, max_len from [sft])."""


@dataclass
class CheckpointConfig:
    """When and how checkpoints are written."""

    every: int = 50
    """Write a checkpoint every this many steps (and at the end); 0: only at the end."""
    keep_last: int = 3
    """Keep this many newest checkpoints."""


@dataclass
class EvalConfig:
    """Held-out evaluation."""

    every: int = 0
    """Evaluate every this many training steps (and before the first); 0 disables periodic eval."""
    split: str = "auto"
    """Held-out split for eval: val, test, or auto (val when it is non-empty, else test)."""
    limit: int = 200
    """Held-out problems per evaluation (seeded sample); 0 = all."""
    n: int = 1
    """Samples per problem for mean@n and pass@k."""
    k: list[int] = field(default_factory=lambda: [1])
    """k values for pass@k (each <= n)."""
    temperature: float = 1.0
    """Sampling temperature for mean@n/pass@k (pass@1 greedy is always reported)."""


@dataclass
class LogConfig:
    """Where metrics go."""

    every: int = 1
    """Print metrics to the console every this many steps."""
    rollouts_every: int = 1
    """Write the step's completions to rollouts.jsonl every this many steps (and at the last step); 0: never. Long runs: 10 keeps the file 10x smaller."""
    quiet: bool = False
    """No progress bars or console tables (CI)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs the wandb extra)."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard extra)."""


@dataclass
class Config:
    """Everything a run needs; saved as TOML into every run directory."""

    seed: int = 0
    """Seed of python, numpy and torch RNGs and of sampling."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    expert_iter: ExpertIterConfig = field(default_factory=ExpertIterConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        validate(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "model.scratch.arch": ("qwen2", "llama"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.autocast": ("none", "bfloat16", "float16"),
    "task.name": ("gsm8k", "countdown"),
    "task.prompt_style": ("final_line", "hash", "boxed", "think_answer"),
    "task.reward_scheme": ("format", "binary", "lenient"),
    "rollout.engine": ("hf",),
    "train.algorithm": ("grpo", "dr_grpo", "rloo", "reinforce"),
    "train.policy_loss": ("ppo_clip", "vanilla", "gspo"),
    "train.loss_agg": ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
    "train.schedule": ("constant", "cosine"),
    "train.kl_estimator": ("k1", "k3"),
    "train.nonfinite": ("skip", "stop"),
    "eval.split": ("auto", "val", "test"),
}


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    """Range and cross-field checks; each failure names the key."""
    for key, allowed in CHOICES.items():
        value = get_value(cfg, key)
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), allowed, n=1)
            tip = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"Invalid {key} '{value}'{tip}; choose one of: {', '.join(allowed)}")
    t, r = cfg.train, cfg.rollout
    for key in ("train.lr", "sft.lr"):
        v = get_value(cfg, key)
        _check(math.isfinite(v) and v > 0, f"{key} must be > 0 and finite, got {v}")
    _check(t.steps >= 0, f"train.steps must be >= 0, got {t.steps}")
    _check(
        t.prompts_per_step >= 1, f"train.prompts_per_step must be >= 1, got {t.prompts_per_step}"
    )
    _check(t.group_size >= 1, f"train.group_size must be >= 1, got {t.group_size}")
    if t.algorithm in GROUP_ALGORITHMS:
        _check(
            t.group_size >= 2,
            f"train.group_size must be >= 2 for train.algorithm={t.algorithm}, got {t.group_size}",
        )
    _check(
        r.batch_size >= 1 and r.batch_size % t.group_size == 0,
        f"rollout.batch_size ({r.batch_size}) must be a positive multiple of train.group_size ({t.group_size})",
    )
    _check(
        t.micro_batch_size >= 1, f"train.micro_batch_size must be >= 1, got {t.micro_batch_size}"
    )
    _check(
        math.isfinite(t.kl_coef) and t.kl_coef >= 0, f"train.kl_coef must be >= 0, got {t.kl_coef}"
    )
    _check(0 < t.clip_eps < 1, f"train.clip_eps must be in (0, 1), got {t.clip_eps}")
    if t.clip_eps_high is not None:
        _check(t.clip_eps_high > 0, f"train.clip_eps_high must be > 0, got {t.clip_eps_high}")
    _check(t.mu >= 1, f"train.mu must be >= 1, got {t.mu}")
    _check(t.grad_clip >= 0, f"train.grad_clip must be >= 0, got {t.grad_clip}")
    _check(
        0 <= t.baseline_momentum < 1,
        f"train.baseline_momentum must be in [0, 1), got {t.baseline_momentum}",
    )
    _check(t.reward_timeout_s > 0, f"train.reward_timeout_s must be > 0, got {t.reward_timeout_s}")
    _check(t.reward_workers >= 0, f"train.reward_workers must be >= 0, got {t.reward_workers}")
    for key in ("rollout.temperature", "eval.temperature"):
        v = get_value(cfg, key)
        _check(math.isfinite(v) and v > 0, f"{key} must be > 0, got {v}")
    _check(0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    _check(r.top_k >= 0, f"rollout.top_k must be >= 0, got {r.top_k}")
    _check(r.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1, got {r.max_new_tokens}")
    sc = cfg.model.scratch
    _check(
        sc.vocab_size >= 259,
        f"model.scratch.vocab_size must be >= 259 (256 bytes + 3 specials), got {sc.vocab_size}",
    )
    _check(
        sc.hidden % sc.heads == 0,
        f"model.scratch.hidden ({sc.hidden}) must be divisible by model.scratch.heads ({sc.heads})",
    )
    _check(cfg.data.val_size >= 0, f"data.val_size must be >= 0, got {cfg.data.val_size}")
    for n in cfg.data.countdown_numbers:
        _check(n in (3, 4), f"data.countdown_numbers entries must be 3 or 4, got {n}")
    _check(cfg.checkpoint.every >= 0, f"checkpoint.every must be >= 0, got {cfg.checkpoint.every}")
    _check(
        cfg.checkpoint.keep_last >= 1,
        f"checkpoint.keep_last must be >= 1, got {cfg.checkpoint.keep_last}",
    )
    _check(
        cfg.log.rollouts_every >= 0,
        f"log.rollouts_every must be >= 0, got {cfg.log.rollouts_every}",
    )
    w = cfg.warmup
    _check(w.steps >= 0, f"warmup.steps must be >= 0, got {w.steps}")
    _check(w.auto_steps >= 1, f"warmup.auto_steps must be >= 1, got {w.auto_steps}")
    _check(0 <= w.min_positive <= 1, f"warmup.min_positive must be in [0, 1], got {w.min_positive}")
    _check(cfg.sft.steps >= 0, f"sft.steps must be >= 0, got {cfg.sft.steps}")
    for key in ("rounds", "prompts", "samples", "max_per_prompt", "sft_steps"):
        v = getattr(cfg.expert_iter, key)
        _check(v >= 1, f"expert_iter.{key} must be >= 1, got {v}")
    e = cfg.eval
    _check(e.n >= 1, f"eval.n must be >= 1, got {e.n}")
    for k in e.k:
        _check(1 <= k <= e.n, f"eval.k entries must be in [1, eval.n={e.n}], got {k}")
    if cfg.data.keep_pass_rate is not None and cfg.data.pass_rates is None:
        raise ConfigError(
            "data.keep_pass_rate needs data.pass_rates (the pass_rates.jsonl of `mathrl probe`)"
        )
    if cfg.data.keep_pass_rate is not None:
        lo_hi = cfg.data.keep_pass_rate
        _check(
            len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1] <= 1,
            f"data.keep_pass_rate must be [lo, hi] with 0 <= lo <= hi <= 1, got {lo_hi}",
        )


# ---------------------------------------------------------------- introspection


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right under each field."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def iter_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """Every leaf key as (dotted name, type, default, doc)."""
    out = []
    hints = _hints(cls)
    default_obj = cls() if cls is not Config else _raw_default()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            out += iter_keys(tp, name + ".")
        else:
            out.append((name, tp, getattr(default_obj, f.name), field_docs(cls).get(f.name, "")))
    return out


def _raw_default() -> Config:
    return Config()


def type_name(tp: Any) -> str:
    """Readable type name for messages: int, float, list[int], str | None ..."""
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def get_value(cfg: Any, key: str) -> Any:
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------- coercion


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a TOML/YAML value or a --set string to the field's type."""
    fail = ConfigError(f"Failed to coerce {value!r} for {key} ({type_name(tp)})")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise fail
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            items: list[Any] = [s.strip().strip("'\"") for s in text.split(",") if s.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            items = [value]
        return [_coerce(v, item_tp, key) for v in items]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise fail
    if tp is int:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    raise fail from None
                if f.is_integer():
                    return int(f)
        raise fail
    if tp is float:
        if isinstance(value, bool):
            raise fail
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise fail from None
        raise fail
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise fail
    raise fail


# ---------------------------------------------------------------- loading


def _unknown_key(key: str) -> ConfigError:
    known = [k for k, *_ in iter_keys()]
    hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    tip = f" (did you mean '{hint[0]}'?)" if hint else ""
    return ConfigError(f"Unknown config key '{key}'{tip}")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML file into a flat {dotted key: value} dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file not found: {path}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"Cannot parse config file {path}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a table of settings")
    return _flatten(data)


def parse_set(items: list[str]) -> dict[str, str]:
    """Parse repeated `--set a.b=value` into a dict."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def _apply(raw: dict[str, Any], values: dict[str, Any]) -> None:
    known = {k: tp for k, tp, _, _ in iter_keys()}
    for key, value in values.items():
        if key not in known:
            raise _unknown_key(key)
        raw[key] = _coerce(value, known[key], key)


def build(flat: dict[str, Any]) -> Config:
    """Build a validated Config from a flat {dotted key: typed value} dict."""

    def make(cls: type, prefix: str) -> Any:
        kwargs = {}
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = prefix + f.name
            if dataclasses.is_dataclass(tp):
                kwargs[f.name] = make(tp, key + ".")
            elif key in flat:
                kwargs[f.name] = flat[key]
        if cls is Config:
            return cls(**kwargs)
        return cls(**kwargs)

    return make(Config, "")


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, env: bool = True
) -> Config:
    """Resolve the config: defaults < file < MATHRL_CONFIG file < --set overrides."""
    flat: dict[str, Any] = {}
    if path is not None:
        _apply(flat, read_config_file(path))
    env_path = os.environ.get(ENV_CONFIG) if env else None
    if env_path:
        _apply(flat, read_config_file(env_path))
    _apply(flat, parse_set(overrides or []))
    return build(flat)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dumps_toml(cfg: Config) -> str:
    """Serialise the resolved config as TOML (None values are written as comments)."""
    lines: list[str] = []

    def emit(obj: Any, section: str) -> None:
        scalars, subs = [], []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            (subs if dataclasses.is_dataclass(v) else scalars).append((f.name, v))
        if section and scalars:
            lines.append(f"\n[{section}]")
        for name, v in scalars:
            lines.append(f"# {name} = None" if v is None else f"{name} = {_toml_value(v)}")
        for name, v in subs:
            emit(v, f"{section}.{name}" if section else name)

    emit(cfg, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def config_hash(cfg: Config) -> str:
    import hashlib

    return hashlib.sha256(dumps_toml(cfg).encode()).hexdigest()[:16]
