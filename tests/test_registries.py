"""The registries are the only lists of names: the config accepts exactly what they hold."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mathrl.algorithms import (
    ADVANTAGES,
    AGG_MODES,
    KL_ESTIMATORS,
    NEEDS_GROUPS,
    POLICY_LOSSES,
    register_advantage,
    unregister_advantage,
)
from mathrl.config import REGISTRY_CHOICES, ConfigError, choices, load_config
from mathrl.models.backends import BACKENDS
from mathrl.registry import Registry
from mathrl.rewards import GRADERS, PROMPT_STYLES, REWARD_SCHEMES
from mathrl.rollout.registry import ENGINES
from mathrl.tasks.arithmetic import KINDS as ARITHMETIC_KINDS

REGISTRIES: dict[str, Registry[Any]] = {
    "backend": BACKENDS,
    "train.algorithm": ADVANTAGES,
    "train.policy_loss": POLICY_LOSSES,
    "train.loss_agg": AGG_MODES,
    "train.kl_estimator": KL_ESTIMATORS,
    "rollout.engine": ENGINES,
    "task.prompt_style": PROMPT_STYLES,
    "task.reward_scheme": REWARD_SCHEMES,
    "task.grader": GRADERS,
    "data.arithmetic_kind": ARITHMETIC_KINDS,
}


# values valid only with another key set: the MLX engine samples for the MLX backend
NEEDS = {("rollout.engine", "mlx"): ["backend=mlx"]}


def _load(key: str, value: str) -> Any:
    return load_config(overrides=[*NEEDS.get((key, value), []), f"{key}={value}"], env=False)


def test_the_config_reads_each_of_these_keys_from_its_registry():
    assert REGISTRY_CHOICES == REGISTRIES
    for key, registry in REGISTRIES.items():
        assert list(choices()[key]) == registry.names(), key


@pytest.mark.parametrize(
    ("key", "name"), [(key, name) for key, reg in REGISTRIES.items() for name in reg.names()]
)
def test_every_registered_name_is_a_valid_config_value(key, name):
    from mathrl.config.validate import get_value

    assert get_value(_load(key, name), key) == name


@pytest.mark.parametrize("key", REGISTRIES)
def test_an_unregistered_name_is_refused_naming_the_key(key):
    names = REGISTRIES[key].names()
    typo = names[0][:-1] + "z"  # one letter off a real name
    with pytest.raises(ConfigError) as exc:
        _load(key, typo)
    message = str(exc.value)
    assert message.startswith(f"Invalid {key} '{typo}'")
    assert message.endswith(f"choose one of: {', '.join(names)}")


def test_a_typo_gets_the_closest_name():
    with pytest.raises(
        ConfigError, match=r"Invalid train.algorithm 'grp' \(did you mean 'grpo'\?\)"
    ):
        _load("train.algorithm", "grp")


@pytest.fixture
def registered(request: pytest.FixtureRequest) -> Iterator[str]:
    """Register a throwaway entry in the registry of `request.param`'s key, then remove it."""
    key = request.param
    registry = REGISTRIES[key]
    name = "zz_dummy"
    if registry is ADVANTAGES:
        register_advantage(name)(lambda rewards, group_size, **_: rewards)
    else:
        registry.add(name, object())
    try:
        yield key
    finally:
        if registry is ADVANTAGES:
            unregister_advantage(name)
        else:
            registry.remove(name)
    assert name not in registry


@pytest.mark.parametrize("registered", list(REGISTRIES), indirect=True)
def test_registering_an_entry_makes_it_a_config_choice(registered):
    from mathrl.config.validate import get_value

    key = registered
    assert get_value(_load(key, "zz_dummy"), key) == "zz_dummy"
    assert "zz_dummy" in choices()[key]


def test_a_new_estimator_says_whether_it_needs_groups():
    register_advantage("zz_grouped", needs_groups=True)(lambda rewards, group_size, **_: rewards)
    try:
        assert "zz_grouped" in NEEDS_GROUPS
        overrides = ["train.algorithm=zz_grouped", "train.group_size=1"]
        with pytest.raises(ConfigError, match="group_size must be >= 2 for train.algorithm=zz_"):
            load_config(overrides=overrides, env=False)
    finally:
        unregister_advantage("zz_grouped")
    assert "zz_grouped" not in NEEDS_GROUPS
    with pytest.raises(ConfigError, match="Invalid train.algorithm 'zz_grouped'"):
        _load("train.algorithm", "zz_grouped")


def test_registry_basics():
    reg: Registry[int] = Registry("thing")
    reg.add("b", 2)
    assert reg.register("a")(1) == 1
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    assert reg.get("a") == 1 and "a" in reg and "c" not in reg
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        reg.add("a", 3)
    with pytest.raises(ConfigError, match=r"Unknown thing 'aa' \(did you mean 'a'\?\)"):
        reg.get("aa")
    with pytest.raises(ConfigError, match=r"Unknown thing 'zzz' \(choose from a, b\)"):
        reg.get("zzz")
    assert reg.remove("a") == 1 and reg.names() == ["b"]
