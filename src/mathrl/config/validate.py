"""Range and cross-field checks of a Config (Config.__post_init__ runs them); each
failure names the key.

The choices of a key that names a registered variant come from its registry, so a new
estimator, loss, style, scheme or engine is a valid config value as soon as it is
registered (REGISTRY_CHOICES); only fixed vocabularies are listed here (FIXED_CHOICES).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

import mathrl.config.sections as s
from mathrl.algorithms import ADVANTAGES, AGG_MODES, KL_ESTIMATORS, NEEDS_GROUPS, POLICY_LOSSES
from mathrl.errors import ConfigError
from mathrl.models.backends import BACKENDS
from mathrl.registry import Registry
from mathrl.rewards import GRADERS, PROMPT_STYLES, REWARD_SCHEMES
from mathrl.rewards.functions import BUILTINS, check_specs
from mathrl.rollout.registry import ENGINES, SERVER_ENGINES
from mathrl.tasks.arithmetic import KINDS as ARITHMETIC_KINDS

FIXED_CHOICES: dict[str, tuple[str, ...]] = {
    "model.scratch.arch": ("qwen2", "llama"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.autocast": ("auto", "none", "bfloat16", "float16"),
    "task.name": ("gsm8k", "countdown", "arithmetic", "qa"),
    "train.schedule": ("constant", "cosine"),
    "train.nonfinite": ("skip", "stop"),
    "eval.split": ("auto", "val", "test"),
    "rollout.weight_sync": ("load_weights", "vllm_lora", "none"),
    "rollout.autocast": ("model", "none", "bfloat16", "float16"),
    "rollout.weights": ("model", "fp16", "int8"),
    "rollout.compile": ("off", "default", "cudagraphs"),
    "train.parallel": ("ddp", "fsdp"),
    "data.curriculum": ("uniform", "learnability"),
}

REGISTRY_CHOICES: dict[str, Registry[Any]] = {
    "backend": BACKENDS,
    "task.prompt_style": PROMPT_STYLES,
    "task.reward_scheme": REWARD_SCHEMES,
    "task.grader": GRADERS,
    "data.arithmetic_kind": ARITHMETIC_KINDS,
    "rollout.engine": ENGINES,
    "train.algorithm": ADVANTAGES,
    "train.policy_loss": POLICY_LOSSES,
    "train.loss_agg": AGG_MODES,
    "train.kl_estimator": KL_ESTIMATORS,
}


def choices() -> dict[str, tuple[str, ...]]:
    """Every key with a closed set of values -> the values accepted now."""
    from_registries = {key: tuple(reg.names()) for key, reg in REGISTRY_CHOICES.items()}
    return {**FIXED_CHOICES, **from_registries}


def get_value(cfg: Any, key: str) -> Any:
    """The value at a dotted key, e.g. get_value(cfg, "train.lr")."""
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def check_choices(cfg: Any) -> None:
    """Every key with a closed set of values holds one of them (suggesting the closest)."""
    for key, allowed in choices().items():
        value = get_value(cfg, key)
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), allowed, n=1)
            tip = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"Invalid {key} '{value}'{tip}; choose one of: {', '.join(allowed)}")


MLX_UNSUPPORTED: dict[str, Any] = {
    # key -> the only value(s) the MLX backend runs with (a tuple: any of them)
    "model.autocast": ("auto", "none"),
    "rollout.autocast": ("model", "none"),
    "rollout.weights": ("model",),
    "model.device": ("auto", "cpu"),
    "model.gradient_checkpointing": (False,),
    "rollout.static_decode": (False,),
    "rollout.compile": ("off",),
}


def check_backend(cfg: Any) -> None:
    """Keys the MLX backend does not support, refused by name (it is one process: torchrun
    is refused when the ranks start)."""
    if cfg.backend != "mlx":
        _check(
            cfg.rollout.engine != "mlx",
            "rollout.engine = 'mlx' needs backend = 'mlx' (the MLX model samples itself)",
        )
        return
    for key, ok in MLX_UNSUPPORTED.items():
        value = get_value(cfg, key)
        _check(
            value in ok,
            f"{key} = {value!r} is not supported with backend = 'mlx' "
            f"(use {' or '.join(repr(v) for v in ok)}, or backend = 'torch')",
        )
    _check(
        cfg.rollout.engine in ("hf", "mlx"),
        f"rollout.engine = {cfg.rollout.engine!r} is not supported with backend = 'mlx' "
        "(it samples in-process with MLX: 'hf', the default, means 'mlx' there)",
    )


def check_rollout_compile(cfg: Any) -> None:
    """rollout.compile compiles the static step of the in-process engine."""
    r = cfg.rollout
    if r.compile != "off":
        _check(
            r.static_decode, f"rollout.compile = {r.compile!r} needs rollout.static_decode = true"
        )
    if r.static_decode:
        _check(
            r.engine == "hf",
            f"rollout.static_decode is for rollout.engine = 'hf', not {r.engine!r}",
        )
        _check(
            r.weights == "model",
            f"rollout.static_decode decodes from the model's own weights, not {r.weights!r}",
        )


def check_rollout_weights(cfg: Any) -> None:
    """rollout.weights = fp16/int8: an in-process, lean-decoded, fp32, unadapted model on
    a CPU (the engine checks the model it is handed again: rollout/hf_engine.py)."""
    r = cfg.rollout
    if r.weights == "model":
        return
    name = f"rollout.weights = {r.weights!r}"
    _check(
        r.engine == "hf",
        f"{name} is for in-process rollouts (rollout.engine = 'hf'), not {r.engine!r}: a "
        "server samples in its own precision",
    )
    _check(r.lean_decode, f"{name} needs rollout.lean_decode = true")
    _check(
        not str(cfg.model.device).startswith("cuda"),
        f"{name} runs on CPUs (fbgemm kernels); on a GPU use rollout.autocast = 'bfloat16'",
    )
    _check(
        cfg.model.dtype in ("auto", "float32"),
        f"{name} copies fp32 weights: it needs model.dtype = 'auto' or 'float32', "
        f"not {cfg.model.dtype!r}",
    )
    _check(
        cfg.model.autocast in ("auto", "none") and r.autocast in ("model", "none"),
        f"{name} does not combine with autocast (model.autocast / rollout.autocast)",
    )
    _check(
        cfg.model.lora.r == 0,
        f"{name} is not supported with LoRA (model.lora.r > 0): LoRA policies decode through "
        "transformers' forward, not the lean step",
    )


def check_train(t: s.TrainConfig, r: s.RolloutConfig, sft: s.SFTConfig) -> None:
    """The optimisation: rates, batch shapes, clip ranges, KL, baseline, rewards."""
    for key, v in (("train.lr", t.lr), ("sft.lr", sft.lr)):
        _check(math.isfinite(v) and v > 0, f"{key} must be > 0 and finite, got {v}")
    for key, v in (("train.weight_decay", t.weight_decay), ("sft.weight_decay", sft.weight_decay)):
        _check(math.isfinite(v) and v >= 0, f"{key} must be >= 0 and finite, got {v}")
    _check(t.steps >= 0, f"train.steps must be >= 0, got {t.steps}")
    _check(
        t.prompts_per_step >= 1, f"train.prompts_per_step must be >= 1, got {t.prompts_per_step}"
    )
    _check(t.group_size >= 1, f"train.group_size must be >= 1, got {t.group_size}")
    if t.algorithm in NEEDS_GROUPS:
        _check(
            t.group_size >= 2,
            f"train.group_size must be >= 2 for train.algorithm={t.algorithm}, got {t.group_size}",
        )
    _check(
        r.batch_size >= 1 and r.batch_size % t.group_size == 0,
        f"rollout.batch_size ({r.batch_size}) must be a positive multiple of "
        f"train.group_size ({t.group_size})",
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
    _check(
        t.reward_memory_mb >= 0, f"train.reward_memory_mb must be >= 0, got {t.reward_memory_mb}"
    )
    _check(t.reward_cpu_s >= 0, f"train.reward_cpu_s must be >= 0, got {t.reward_cpu_s}")
    _check(
        t.tis_cap == 0 or (math.isfinite(t.tis_cap) and t.tis_cap >= 1),
        f"train.tis_cap must be 0 (off) or >= 1, got {t.tis_cap}",
    )
    _check(
        t.collective_timeout_s > 0,
        f"train.collective_timeout_s must be > 0, got {t.collective_timeout_s}",
    )
    _check(
        math.isfinite(t.entropy_coef), f"train.entropy_coef must be finite, got {t.entropy_coef}"
    )
    _check(
        0 < t.top_entropy_quantile <= 1,
        f"train.top_entropy_quantile must be in (0, 1], got {t.top_entropy_quantile}",
    )
    for key, v in (("train.sapo_tau_pos", t.sapo_tau_pos), ("train.sapo_tau_neg", t.sapo_tau_neg)):
        _check(math.isfinite(v) and v > 0, f"{key} must be > 0 and finite, got {v}")
    _check(
        t.logprob_chunk_tokens >= 0,
        f"train.logprob_chunk_tokens must be >= 0, got {t.logprob_chunk_tokens}",
    )


def check_sampling(r: s.RolloutConfig, e: s.EvalConfig) -> None:
    """Sampling knobs of rollouts and of evaluation."""
    for key, v in (("rollout.temperature", r.temperature), ("eval.temperature", e.temperature)):
        _check(math.isfinite(v) and v > 0, f"{key} must be > 0, got {v}")
    _check(0 < r.top_p <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    _check(r.top_k >= 0, f"rollout.top_k must be >= 0, got {r.top_k}")
    _check(r.max_new_tokens >= 1, f"rollout.max_new_tokens must be >= 1, got {r.max_new_tokens}")
    _check(r.concurrency >= 1, f"rollout.concurrency must be >= 1, got {r.concurrency}")
    _check(
        r.request_timeout_s > 0,
        f"rollout.request_timeout_s must be > 0, got {r.request_timeout_s}",
    )
    _check(
        r.off_policy_steps in (0, 1),
        f"rollout.off_policy_steps must be 0 or 1, got {r.off_policy_steps}",
    )
    _check(
        r.off_policy_steps == 0 or r.engine in SERVER_ENGINES,
        "rollout.off_policy_steps = 1 samples while the trainer trains, so it needs a rollout "
        "server (rollout.engine = 'openai'); in-process rollouts share the trainer's weights",
    )

    _check(e.n >= 1, f"eval.n must be >= 1, got {e.n}")
    _check(e.batch_size >= 0, f"eval.batch_size must be >= 0, got {e.batch_size}")
    for k in e.k:
        _check(1 <= k <= e.n, f"eval.k entries must be in [1, eval.n={e.n}], got {k}")


def check_task(task: s.TaskConfig, d: s.DataConfig, r: s.RolloutConfig) -> None:
    """The qa task has a data source; task.rewards terms are well formed (imports are
    checked when the run starts, mathrl.data.check_rewards)."""
    _check(
        task.name != "qa" or d.path not in ("auto", "hub", ""),
        "task.name = 'qa' needs data.path: a .jsonl/.json/.csv/.parquet file, a dir with "
        "train.* (and test.*), or hf:owner/name",
    )
    check_specs(task.rewards)
    labels = [m.name for m in task.mixture]
    for m in task.mixture:
        _check(bool(m.name.strip()), "task.mixture entries need a non-empty name")
        _check(
            m.weight > 0 and math.isfinite(m.weight),
            f"task.mixture '{m.name}': weight must be a finite number > 0, got {m.weight}",
        )
        for item in m.set:
            key = item.partition("=")[0].strip()
            _check(
                "=" in item and key != "task.mixture",
                f"task.mixture '{m.name}': set entries are key=value overrides other than "
                f"task.mixture, got {item!r}",
            )
    dupes = sorted({n for n in labels if labels.count(n) > 1})
    _check(not dupes, f"task.mixture names must be unique, repeated: {', '.join(dupes)}")

    if any(spec.fn == "overlong" for spec in task.rewards):
        _check(
            1 <= task.overlong_buffer <= r.max_new_tokens,
            "task.rewards names overlong: task.overlong_buffer must be in [1, "
            f"rollout.max_new_tokens = {r.max_new_tokens}], got {task.overlong_buffer}",
        )


def check_reward_workers(task: s.TaskConfig, t: s.TrainConfig) -> None:
    """User reward functions run only in worker processes (a hard time limit, their own
    process group, memory and CPU limits), never in the trainer."""
    user = [spec.fn for spec in task.rewards if spec.fn not in BUILTINS]
    _check(
        t.reward_workers > 0 or not user,
        f"train.reward_workers = 0 would run task.rewards fn '{user[0] if user else ''}' in the "
        "trainer process without limits: set train.reward_workers >= 1",
    )


def check_model_and_data(model: s.ModelConfig, d: s.DataConfig) -> None:
    """The from-scratch model's shape and the data options."""
    sc = model.scratch
    _check(
        sc.vocab_size >= 259,
        f"model.scratch.vocab_size must be >= 259 (256 bytes + 3 specials), got {sc.vocab_size}",
    )
    _check(
        sc.hidden % sc.heads == 0,
        f"model.scratch.hidden ({sc.hidden}) must be divisible by model.scratch.heads ({sc.heads})",
    )
    _check(d.val_size is None or d.val_size >= 0, f"data.val_size must be >= 0, got {d.val_size}")
    _check(
        0 < d.curriculum_floor <= 0.25,
        f"data.curriculum_floor must be in (0, 0.25] (p(1 - p) is at most 0.25), got "
        f"{d.curriculum_floor}",
    )
    for n in d.countdown_numbers:
        _check(n in (3, 4), f"data.countdown_numbers entries must be 3 or 4, got {n}")
    if d.keep_pass_rate is not None:
        _check(
            d.pass_rates is not None,
            "data.keep_pass_rate needs data.pass_rates (the pass_rates.jsonl of `mathrl probe`)",
        )
        lo_hi = d.keep_pass_rate
        _check(
            len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1] <= 1,
            f"data.keep_pass_rate must be [lo, hi] with 0 <= lo <= hi <= 1, got {lo_hi}",
        )


def check_schedules(
    ck: s.CheckpointConfig,
    log: s.LogConfig,
    w: s.WarmupConfig,
    sft: s.SFTConfig,
    ei: s.ExpertIterConfig,
) -> None:
    """Checkpointing, logging, warm-up, SFT and expert iteration."""
    _check(ck.every >= 0, f"checkpoint.every must be >= 0, got {ck.every}")
    _check(ck.keep_last >= 1, f"checkpoint.keep_last must be >= 1, got {ck.keep_last}")
    _check(log.rollouts_every >= 0, f"log.rollouts_every must be >= 0, got {log.rollouts_every}")
    _check(w.steps >= 0, f"warmup.steps must be >= 0, got {w.steps}")
    _check(w.auto_steps >= 1, f"warmup.auto_steps must be >= 1, got {w.auto_steps}")
    _check(0 <= w.min_positive <= 1, f"warmup.min_positive must be in [0, 1], got {w.min_positive}")
    _check(sft.steps >= 0, f"sft.steps must be >= 0, got {sft.steps}")
    for key in ("rounds", "prompts", "samples", "max_per_prompt", "sft_steps"):
        v = getattr(ei, key)
        _check(v >= 1, f"expert_iter.{key} must be >= 1, got {v}")
