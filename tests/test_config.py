"""Config system: precedence, coercion and every error message."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path

import pytest

from mathrl.config import (
    Config,
    ConfigError,
    config_hash,
    dumps_toml,
    field_docs,
    iter_keys,
    load_config,
)

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("**/*.toml"))


def test_defaults_validate_and_every_key_is_documented():
    keys = iter_keys()
    assert len(keys) > 50
    undocumented = [k for k, _, _, doc in keys if not doc]
    assert undocumented == []
    assert field_docs(Config)["seed"].startswith("Seed")


@pytest.mark.parametrize(
    "item, key, expected",
    [
        ("train.lr=5e-7", "lr", 5e-7),
        ("train.lr=3", "lr", 3.0),
        ("train.group_size=4", "group_size", 4),
        ("train.drop_zero_std=true", "drop_zero_std", True),
        ("train.drop_zero_std=False", "drop_zero_std", False),
        ("train.clip_eps_high=none", "clip_eps_high", None),
        ("train.clip_eps_high=0.28", "clip_eps_high", 0.28),
        ("train.algorithm=rloo", "algorithm", "rloo"),
    ],
)
def test_set_coerces_to_field_type(item, key, expected):
    cfg = load_config(overrides=[item, "rollout.batch_size=64"], env=False)
    assert getattr(cfg.train, key) == expected
    assert type(getattr(cfg.train, key)) is type(expected)


def test_set_lists():
    cfg = load_config(
        overrides=["data.countdown_numbers=[3,4]", "eval.n=8", "eval.k=1,4,8"], env=False
    )
    assert cfg.data.countdown_numbers == [3, 4]
    assert cfg.eval.k == [1, 4, 8]


def test_precedence_file_env_set(tmp_path, monkeypatch):
    base = tmp_path / "base.toml"
    base.write_text("seed = 1\n[train]\nlr = 0.1\nsteps = 7\n")
    env = tmp_path / "env.yaml"
    env.write_text("train:\n  lr: 0.2\n")
    monkeypatch.setenv("MATHRL_CONFIG", str(env))
    cfg = load_config(base, ["seed=3"])
    assert (cfg.seed, cfg.train.lr, cfg.train.steps) == (3, 0.2, 7)
    monkeypatch.delenv("MATHRL_CONFIG")
    assert load_config(base).train.lr == 0.1


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(overrides=["train.lr=5e-7", 'task.system_prompt=hi "there"'], env=False)
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(cfg))
    tomllib.loads(path.read_text())
    again = load_config(path, env=False)
    assert again == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trian.lr=1"], "Unknown config key 'trian.lr' (did you mean 'train.lr'?)"),
        (["train.group_size=abc"], "Failed to coerce 'abc' for train.group_size (int)"),
        (["train.group_size=2.5"], "Failed to coerce '2.5' for train.group_size (int)"),
        (["train.drop_zero_std=yes"], "Failed to coerce 'yes' for train.drop_zero_std (bool)"),
        (["train.lr=none"], "Failed to coerce 'none' for train.lr (float)"),
        (["train.lr=-1"], "train.lr must be > 0 and finite, got -1.0"),
        (["train.lr=nan"], "train.lr must be > 0 and finite, got nan"),
        (["train.lr=inf"], "train.lr must be > 0 and finite, got inf"),
        (["sft.weight_decay=-0.1"], "sft.weight_decay must be >= 0 and finite, got -0.1"),
        (["train.weight_decay=nan"], "train.weight_decay must be >= 0 and finite, got nan"),
        (["train.group_size=1"], "train.group_size must be >= 2 for train.algorithm=grpo, got 1"),
        (
            ["train.group_size=3"],
            "rollout.batch_size (64) must be a positive multiple of train.group_size (3)",
        ),
        (["train.kl_coef=-0.1"], "train.kl_coef must be >= 0, got -0.1"),
        (["rollout.temperature=0"], "rollout.temperature must be > 0, got 0.0"),
        (["rollout.top_p=1.5"], "rollout.top_p must be in (0, 1], got 1.5"),
        (["train.algorithm=grop"], "Invalid train.algorithm 'grop' (did you mean 'grpo'?)"),
        (["task.name=gsm9k"], "Invalid task.name 'gsm9k' (did you mean 'gsm8k'?)"),
        (["model.autocast=bf16"], "Invalid model.autocast 'bf16'"),
        (["eval.k=[1,4]"], "eval.k entries must be in [1, eval.n=1], got 4"),
        (["train.lr"], "--set expects key=value, got 'train.lr'"),
        (["data.countdown_numbers=[5]"], "data.countdown_numbers entries must be 3 or 4, got 5"),
        (["rollout.weights=int4"], "Invalid rollout.weights 'int4' (did you mean 'int8'?)"),
        (
            ["rollout.weights=int8", "rollout.engine=openai"],
            "rollout.weights = 'int8' is for in-process rollouts (rollout.engine = 'hf'), "
            "not 'openai'",
        ),
        (
            ["rollout.weights=fp16", "rollout.lean_decode=false"],
            "rollout.weights = 'fp16' needs rollout.lean_decode = true",
        ),
        (
            ["rollout.weights=fp16", "model.device=cuda"],
            "rollout.weights = 'fp16' runs on CPUs (fbgemm kernels)",
        ),
        (
            ["rollout.weights=int8", "model.dtype=bfloat16"],
            "rollout.weights = 'int8' copies fp32 weights: it needs model.dtype = 'auto' or",
        ),
        (
            ["rollout.weights=fp16", "rollout.autocast=bfloat16"],
            "rollout.weights = 'fp16' does not combine with autocast",
        ),
        (
            ["rollout.weights=int8", "model.lora.r=8"],
            "rollout.weights = 'int8' is not supported with LoRA",
        ),
        (
            ["rollout.weights=int8", "backend=mlx"],
            "rollout.weights = 'int8' is not supported with backend = 'mlx'",
        ),
        (["rollout.compile=default"], "rollout.compile = 'default' needs rollout.static_decode"),
        (["rollout.compile=graphs"], "rollout.compile"),
        (
            ["rollout.static_decode=true", "rollout.weights=fp16"],
            "rollout.static_decode decodes from the model's own weights, not 'fp16'",
        ),
        (
            ["rollout.static_decode=true", "rollout.engine=openai"],
            "rollout.static_decode is for rollout.engine = 'hf', not 'openai'",
        ),
        (
            ["model.gradient_checkpointing=true", "backend=mlx"],
            "model.gradient_checkpointing = True is not supported with backend = 'mlx'",
        ),
    ],
)
def test_config_errors_name_the_problem(overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=overrides, env=False)
    assert message in str(exc.value)


def test_reinforce_allows_group_size_one():
    cfg = load_config(overrides=["train.algorithm=reinforce", "train.group_size=1"], env=False)
    assert cfg.train.group_size == 1


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml", env=False)
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1")
    with pytest.raises(ConfigError, match="Cannot parse config file"):
        load_config(bad, env=False)
    typo = tmp_path / "typo.toml"
    typo.write_text("[train]\nlearning_rate = 1e-5\n")
    with pytest.raises(ConfigError, match="Unknown config key 'train.learning_rate'"):
        load_config(typo, env=False)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError, match="Failed to coerce 'many' for train.steps"):
        load_config(wrong, env=False)


def test_presets_load():
    names = {f"{p.parent.name}/{p.stem}" for p in PRESETS}
    for task in ("gsm8k", "countdown"):
        for size in ("smoke", "medium", "prod"):
            assert f"{task}/{size}" in names
    for p in PRESETS:
        assert isinstance(load_config(p, env=False), Config)


@pytest.mark.parametrize(
    "preset", [None, *PRESETS], ids=lambda p: f"{p.parent.name}/{p.stem}" if p else "defaults"
)
def test_dumps_toml_reloads_to_the_same_config(preset, tmp_path):
    cfg = load_config(preset, env=False)  # builds the Config only; no data is read
    path = tmp_path / "resolved.toml"
    path.write_text(dumps_toml(cfg))
    again = load_config(path, env=False)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_every_optional_key_defaults_to_none():
    # dumps_toml leaves None values out (TOML has no null), which reads back as the
    # default; so an optional key whose default is not None would not round-trip
    for key, tp, default, _ in iter_keys():
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            assert type(None) in typing.get_args(tp), key
            assert default is None, f"{key} is optional but defaults to {default!r}"


def test_none_values_are_left_out_of_the_toml():
    cfg = load_config(overrides=["train.clip_eps_high=0.28"], env=False)
    table = tomllib.loads(dumps_toml(cfg))
    assert table["train"]["clip_eps_high"] == 0.28
    assert "system_prompt" not in table["task"] and "pass_rates" not in table["data"]


def test_config_hash_follows_values():
    base = Config()
    assert config_hash(base) == config_hash(Config())
    changed = dataclasses.replace(base, seed=1)
    assert config_hash(changed) != config_hash(base)


@pytest.mark.parametrize(
    "display", ["log.quiet=true", "log.every=7", "log.rollouts_every=0", "log.tensorboard=true"]
)
def test_config_hash_leaves_out_display_only_options(display):
    """Resume compares config_hash: a display option ([log]) changes no result."""
    base = config_hash(load_config(None, [], env=False))
    assert config_hash(load_config(None, [display], env=False)) == base
    assert config_hash(load_config(None, [display, "train.lr=2e-6"], env=False)) != base


def test_registry_keys_list_their_names_in_the_key_docs():
    docs = {key: doc for key, _, _, doc in iter_keys()}
    assert docs["train.algorithm"].endswith(
        "One of: dr_grpo, grpo, reinforce, reinforce_pp, reinforce_pp_baseline, rloo."
    )
    assert "boxed, final_line, hash, think_answer" in docs["task.prompt_style"]
    assert "\n" not in docs["model.autocast"] and "  " not in docs["model.autocast"]
