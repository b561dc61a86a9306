"""Shipped presets by name (mathrl.config.presets), `mathrl config presets` and `mathrl quickstart`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from conftest import REPO
from mathrl.config import ConfigError, get_value, load_config
from mathrl.config.presets import describe, list_presets, resolve_config

SHIPPED = REPO / "src" / "mathrl" / "presets"
NAMES = sorted(p.relative_to(SHIPPED).with_suffix("").as_posix() for p in SHIPPED.rglob("*.toml"))


def flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def test_list_presets_names_every_shipped_file():
    assert list_presets() == NAMES
    expected = {f"{t}/{s}" for t in ("countdown", "gsm8k") for s in ("smoke", "medium", "prod")}
    assert set(NAMES) == expected | {"quickstart", "gsm8k/cpu", "skills/cpu"}
    # the checkout's configs/ is the same directory (a symlink), so old paths keep working
    assert (REPO / "configs").resolve() == SHIPPED.resolve()


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_resolves_by_name_and_loads_its_values(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here: the name alone finds it
    path = resolve_config(name)
    assert path.resolve() == (SHIPPED / f"{name}.toml").resolve()
    for spelling in (f"{name}.toml", f"configs/{name}.toml", f"./configs/{name}.toml"):
        assert resolve_config(spelling) == path
    cfg = load_config(path, env=False)
    written = flat(tomllib.loads(path.read_text()))
    assert written, name
    for key, value in written.items():
        got = get_value(cfg, key)
        if isinstance(value, list) and value and isinstance(value[0], dict):  # task.mixture
            got = [{k: getattr(e, k) for k in row} for e, row in zip(got, value, strict=True)]
        assert got == value, key


def test_preset_values_are_the_files():
    smoke = load_config(resolve_config("countdown/smoke"), env=False)
    assert (smoke.train.steps, smoke.warmup.steps, smoke.model.path) == (4, 200, "scratch")
    quick = load_config(resolve_config("quickstart"), env=False)
    assert (quick.train.steps, quick.warmup.steps, quick.eval.limit) == (600, 250, 500)
    assert load_config(resolve_config("gsm8k/prod"), env=False).train.group_size == 16
    cpu = load_config(resolve_config("gsm8k/cpu"), env=False)  # README's GSM8K CPU recipe
    assert (cpu.model.path, cpu.task.prompt_style, cpu.warmup.steps, cpu.train.steps) == (
        "smollm2-135m-instruct",
        "hash",
        40,
        10,
    )


def test_an_existing_file_wins_over_a_preset_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for rel in ("countdown/smoke.toml", "configs/quickstart.toml", "quickstart"):
        Path(rel).parent.mkdir(parents=True, exist_ok=True)
        Path(rel).write_text("[train]\nsteps = 7\n")
        assert resolve_config(rel) == Path(rel)
        assert load_config(resolve_config(rel), env=False).train.steps == 7
    assert resolve_config("countdown/smoke") == SHIPPED / "countdown/smoke.toml"  # no suffix


@pytest.mark.parametrize(
    "value, hint",
    [
        ("countdown/smok", "(did you mean 'countdown/smoke'?)"),
        ("configs/gsm8k/prod.tom", "(did you mean 'gsm8k/prod'?)"),
        ("quickstrt.toml", "(did you mean 'quickstart'?)"),
        ("/nonexistent/run.yaml", "nor is it a preset; presets: countdown/medium,"),
    ],
)
def test_unknown_name_is_one_line_with_the_presets_and_a_hint(value, hint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        resolve_config(value)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"Config file not found: {value}, ")
    assert hint in message and ", ".join(NAMES) in message


def test_describe_is_the_first_comment_line():
    assert describe("countdown/smoke") == (
        "Countdown smoke run: a from-scratch tiny model, a short SFT warm-up, a few GRPO steps."
    )


def test_cli_config_presets_and_names_for_config(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_cli("config", "presets")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert [ln.split()[0] for ln in lines] == NAMES
    assert lines[NAMES.index("quickstart")].endswith(describe("quickstart"))
    res = run_cli("config", "show", "-c", "countdown/smoke", "--set", "train.steps=9")
    assert res.code == 0, res.err
    assert 'path = "scratch"' in res.out and "steps = 9" in res.out
    res = run_cli("config", "show", "-c", "countdwn/smoke")
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: Config file not found: countdwn/smoke, ")
    assert "did you mean 'countdown/smoke'?" in lines[0]


QUICK_SETS = {
    "warmup.steps": 5,
    "train.steps": 2,
    "train.prompts_per_step": 4,
    "rollout.batch_size": 32,
    "eval.every": 2,
    "eval.limit": 20,
    "data.countdown_train_size": 100,
    "checkpoint.every": 1,
}


def test_quickstart_is_train_on_the_quickstart_preset(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is relative: runs/quickstart
    sets = [a for k, v in QUICK_SETS.items() for a in ("--set", f"{k}={v}")]
    res = run_cli("quickstart", *sets, "--quiet")
    assert res.code == 0, res.err
    out = tmp_path / "runs" / "quickstart"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["heldout_n"] == 20
    assert 0.0 <= summary["accuracy_before_rl"] <= 1.0 and summary["step_after_rl"] == 2
    assert summary["warmup"]["steps"] == 5
    resolved = tomllib.loads((out / "config.toml").read_text())
    assert resolved["model"]["scratch"]["hidden"] == 128  # the quickstart preset's model
    assert resolved["data"]["countdown_max_target"] == 100
    # like `train`: an existing run needs --resume (the one-line hint says so)
    res = run_cli("quickstart", *sets, "--quiet")
    assert res.code == 2
    assert "already holds a run: pass --resume to continue it" in res.err
    res = run_cli("quickstart", *sets, "--quiet", "--resume")
    assert res.code == 0, res.err
