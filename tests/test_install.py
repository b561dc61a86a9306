"""mathrl installs and runs without this repository around it.

The wheel is built and installed into a fresh venv with the Dockerfile's own `RUN pip ...`
lines (read from it, in order), then `mathrl` runs the shipped presets by name from a
directory with no checkout. The one change: torch's index, since the PyTorch CPU index is
not reachable here; PyPI plus the machine's pip find-links give the same CPU wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
TORCH_INDEX_HERE = "https://pypi.org/simple"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text())  # `\` + newline continues
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            found.append([])
        found[-1].append(ins)
    return found


def pip_lines(path: Path) -> list[str]:
    return [args for ins, args in instructions(path) if ins == "RUN" and args.startswith("pip ")]


def test_dockerfiles_install_the_same_wheel_the_same_way():
    cpu, cuda = stages(DOCKERFILE), stages(REPO / "Dockerfile.cuda")
    assert cpu[0] == cuda[0]  # one wheel stage: the sources it copies and the build line
    assert ("COPY", "pyproject.toml README.md ./") in cpu[0] and ("COPY", "src ./src") in cpu[0]
    assert pip_lines(DOCKERFILE) == [
        "pip wheel --no-deps --wheel-dir /dist .",
        'pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"',
        "pip install /dist/mathrl-*.whl && rm -rf /dist",
    ]
    args = dict(a.split("=", 1) for ins, a in cpu[1] if ins == "ARG")
    assert args == {
        "TORCH_VERSION": "2.13.0",  # the Makefile's pin
        "TORCH_INDEX_URL": "https://download.pytorch.org/whl/cpu",
    }
    assert "torch==2.13.0" in (REPO / "Makefile").read_text()
    assert cpu[1][0] == ("FROM", "python:3.11-slim") and cpu[1][-2:] == [
        ("ENTRYPOINT", '["mathrl"]'),
        ("CMD", '["--help"]'),
    ]
    assert any(ins == "USER" and a != "root" for ins, a in cpu[1])
    # the CUDA image keeps its base image's torch: pinned as a constraint, never installed
    cuda_runs = " ".join(a for ins, a in cuda[1] if ins == "RUN")
    assert cuda[1][0][1].startswith("pytorch/pytorch:") and "-cuda" in cuda[1][0][1]
    assert "pip install --constraint /tmp/keep-torch.txt /dist/mathrl-*.whl" in cuda_runs


def run(cmd: list[str] | str, cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(
        cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), capture_output=True, text=True
    )
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_installs_in_a_fresh_venv_and_runs_presets_by_name(tmp_path):
    venv, src, dist, work = (tmp_path / d for d in ("venv", "src", "dist", "work"))
    # the Dockerfile's COPY lines; .dockerignore keeps caches out of the image, copytree too
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "src", src / "src", ignore=skip)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {
        "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}",  # `pip` is the fresh venv's
        "TORCH_VERSION": "2.13.0",
        "TORCH_INDEX_URL": TORCH_INDEX_HERE,
        "HF_HUB_OFFLINE": "1",
        "MATHRL_CACHE": str(tmp_path / "cache"),
    }
    env.pop("PIP_NO_CACHE_DIR", None)  # unlike the image, reuse pip's cache
    for line in pip_lines(DOCKERFILE):
        run(re.sub(r"(?<![\w./-])/dist\b", str(dist), line), cwd=src, env=env)

    mathrl = str(venv / "bin" / "mathrl")
    work.mkdir()
    where = run(
        [str(venv / "bin" / "python"), "-c", "import mathrl; print(mathrl.__file__)"], work, env
    )
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout
    listed = run([mathrl, "config", "presets"], work, env)
    assert re.search(r"^countdown/smoke +Countdown smoke run", listed, re.M), listed

    run([mathrl, "train", "-c", "countdown/smoke", "--out", "smoke", "--quiet"], work, env)
    summary = json.loads((work / "smoke" / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["warmup"]["steps"] == 200  # the preset's values
    assert 0.0 <= summary["train_reward_last"] <= 1.0
    assert (work / "smoke" / "checkpoints").is_dir() and (work / "smoke" / "report.html").is_file()

    sets = {
        "warmup.steps": 5,
        "train.steps": 2,
        "train.prompts_per_step": 4,
        "rollout.batch_size": 32,
        "eval.every": 2,
        "eval.limit": 20,
        "data.countdown_train_size": 100,
    }
    overrides = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    out = run([mathrl, "quickstart", "--out", "qs", "--quiet", *overrides], work, env)
    summary = json.loads((work / "qs" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["heldout_n"] == 20
    assert 0.0 <= summary["accuracy_before_rl"] <= 1.0 and summary["step_after_rl"] == 2
    assert "held-out greedy pass@1 (20 problems, split 'test')" in out
    assert "hidden = 128" in (work / "qs" / "config.toml").read_text()  # the quickstart model
