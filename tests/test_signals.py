"""SIGINT / SIGTERM stop a run at a step boundary with a checkpoint, one line and exit
130 / 143, leave no process behind, and --resume continues bitwise; the reward pool's
workers never outlive a killed trainer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mathrl import stopping
from mathrl.io import read_jsonl

TESTS = Path(__file__).resolve().parent
# A reward term that sleeps 20 ms a completion: a tiny step lasts long enough to be hit
# mid-run; weight 0, so the rewards are the task's own.
SLOW = 'task.rewards=[{fn = "task"}, {fn = "reward_fixtures:slow_zero", weight = 0.0}]'


def _start(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mathrl", "train", "-c", str(config), "--out", str(out)]
    sets = ["train.steps=8", "checkpoint.every=4", "train.reward_workers=1", SLOW]
    cmd += [a for s in sets for a in ("--set", s)] + list(extra)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, to check that nothing is left in it
    )


def _wait_for_step(proc: subprocess.Popen, out: Path, step: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        path = out / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.01)
    raise AssertionError(f"step {step} never logged")


def _group_is_empty(pgid: int) -> bool:
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_at_a_step_with_a_checkpoint_and_resume_is_bitwise(
    tiny_config, tmp_path, same_run, signum, code
):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    proc = _start(tiny_config, straight)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    proc = _start(tiny_config, stopped)
    _wait_for_step(proc, stopped, 2)
    os.kill(proc.pid, signum)
    assert proc.wait(timeout=120) == code
    err = proc.stderr.read()
    assert _group_is_empty(proc.pid), "a process of the run outlived it"
    step = len(read_jsonl(stopped / "metrics.jsonl"))
    assert 2 <= step < 8
    ckpt = stopped / f"checkpoints/step_{step:08d}"
    assert (ckpt / "manifest.json").is_file()  # written at the signal, off the every=4 grid
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"stopped by {name} after step {step}; last complete checkpoint: {ckpt}")
    assert last.endswith("--resume") and "continue with: " in last
    proc = _start(tiny_config, stopped, "--resume")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    same_run(straight, stopped, 8)  # weights, Adam moments, train state, metrics, rollouts


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_signal_stops_at_once(tiny_config, tmp_path):
    """The first step hangs in a reward (60 s limit): the first SIGTERM asks, the second
    stops at once; the hung reward worker goes with the pool."""
    out = tmp_path / "run"
    hang = 'task.rewards=[{fn = "task"}, {fn = "reward_fixtures:hangs", weight = 0.0}]'
    proc = _start(tiny_config, out, "--set", hang, "--set", "train.reward_timeout_s=60")
    warm = out / "warmup_sft/checkpoints/step_00000003"
    deadline = time.time() + 120
    while not (warm / "manifest.json").is_file() and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    time.sleep(1.5)  # into the first RL step, waiting on the hung reward
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert _group_is_empty(proc.pid)
    last = proc.stderr.read().strip().splitlines()[-1]
    assert last.startswith(f"stopped by SIGTERM at once; last complete checkpoint: {warm}")
    assert not (out / "metrics.jsonl").exists()  # no step was finished, none logged


def test_reward_workers_die_with_a_killed_parent(tmp_path):
    """SIGKILL of the process that owns a RewardPool (fork) leaves no worker behind, even
    one busy in a hung reward."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time, threading\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from mathrl.rewards import RewardPool\n"
        "from reward_fixtures import hangs\n"
        "pool = RewardPool(timeout_s=60, workers=2, start_method='fork')\n"
        "print(' '.join(str(w.process.pid) for w in pool._workers), flush=True)\n"
        "threading.Thread(target=pool.map, args=(hangs, [([''],)]), daemon=True).start()\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    time.sleep(0.5)  # one worker is now inside hangs()
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    alive = pids
    while alive and time.time() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
        time.sleep(0.05)
    assert alive == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False


def test_check_and_message():
    """The first signal asks; check() saves (or reuses the step's checkpoint) and raises;
    a second signal raises at once; the message has the resume command."""
    before = signal.getsignal(signal.SIGINT)  # default, or SIG_IGN when run in background
    with stopping.graceful_stop():
        stopping.check(3, save=lambda: Path("never"))  # nothing asked yet: no-op
        stopping._handler(signal.SIGTERM, None)
        assert stopping.requested() == signal.SIGTERM
        with pytest.raises(stopping.Stopped) as info:
            stopping.check(3, save=lambda: Path("runs/x/checkpoints/step_00000003"))
        assert (info.value.step, info.value.exit_code) == (3, 143)
        with pytest.raises(stopping.Stopped) as info:
            stopping.check(4, save=lambda: Path("unused"), saved=Path("ck4"))
        assert info.value.checkpoint == Path("ck4")
        stopping._handler(signal.SIGINT, None)  # an echo (torchrun forwards it): the same ask
        stopping._request.at -= stopping.ECHO_S  # a real second signal comes later
        with pytest.raises(stopping.Stopped) as now:
            stopping._handler(signal.SIGINT, None)
        assert now.value.now and now.value.exit_code == 130
    assert stopping.requested() is None  # cleared on the way out, old handlers back
    assert signal.getsignal(signal.SIGINT) is before
    stop = stopping.Stopped(signal.SIGINT, 7, Path("r/checkpoints/step_00000007"), now=False)
    assert stopping.message(stop, ["mathrl", "train", "-c", "my config.toml"]) == (
        "stopped by SIGINT after step 7; last complete checkpoint: "
        "r/checkpoints/step_00000007; continue with: mathrl train -c 'my config.toml' --resume"
    )


def test_resume_line_names_a_default_run_dir():
    """Without --out the run went to runs/<stamp>: the resume line must name it, or the
    resumed command would start a new run."""
    stop = stopping.Stopped(signal.SIGTERM, 2, Path("runs/20261201/checkpoints/x"), now=False)
    stop.run_dir = Path("runs/20261201")
    assert stopping.message(stop, ["mathrl", "train", "-c", "c.toml"]).endswith(
        "continue with: mathrl train -c c.toml --resume --out runs/20261201"
    )
    assert stopping.message(stop, ["mathrl", "train", "--out", "r"]).endswith(
        "continue with: mathrl train --out r --resume"
    )
