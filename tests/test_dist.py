"""Data-parallel RL and SFT on torch.distributed (gloo, 2 processes on the CPU).

Two ranks with 4 prompts each must do what one process does with 8: the same rollouts (token
for token: a prompt's seed comes from its global index, and a group never splits) and the
same parameters up to fp32 summation order. Tolerance: gradients are summed over ranks
(rank 0's micro-batches + rank 1's) instead of in one running sum, which moves each gradient
by a few ulps; Adam divides by sqrt(v), and over a handful of steps at lr 1e-3 that stays
far below 1e-5 in any weight (measured: 9e-7 after 3 SFT + 3 GRPO steps that moved the
weights by 3e-3), while a real difference (a lost rank's gradient, a mean of means) moves
weights by ~1e-4 or more.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mathrl.io import read_jsonl

ATOL = 1e-5
pytestmark = pytest.mark.slow


def torchrun(nproc: int, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m mathrl ARGS` (one thread per rank)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mathrl",
        *map(str, args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=rank_env())


def mathrl(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m mathrl ARGS` in a child process, as torchrun() runs it."""
    cmd = [sys.executable, "-m", "mathrl", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=rank_env())


def rank_env() -> dict[str, str]:
    tests = str(Path(__file__).parent)  # reward_fixtures, imported by path
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:08d}" / "model" / "model.safetensors")


def layout(run: Path, step: int) -> tuple[int, str]:
    """(world_size, parallel) of the run that wrote checkpoint `step`."""
    manifest = json.loads((run / "checkpoints" / f"step_{step:08d}" / "manifest.json").read_text())
    return manifest["world_size"], manifest["parallel"]


def assert_close_weights(a: Path, b: Path, step: int) -> float:
    wa, wb = weights(a, step), weights(b, step)
    assert wa.keys() == wb.keys() and wa
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= ATOL, worst
    return worst


def test_two_ranks_equal_one_process_rl(tmp_path, tiny_config, run_train):
    """3 GRPO steps (after a 3-step SFT warm-up, also data-parallel): 2 ranks x 4 prompts
    = 1 rank x 8 prompts: identical rollouts, metrics of the whole batch, weights within
    ATOL; rank 0 alone wrote the run dir."""
    sets = [
        "train.steps=3",
        "train.prompts_per_step=8",
        "rollout.batch_size=32",
        "log.rollouts_every=1",
        # a reward that varies within groups, so every step moves the weights
        'task.rewards=[{fn = "reward_fixtures:brevity", completions = "text"}]',
        # held-out eval split over the ranks (7 problems: 4 + 3), 2 samples each
        "eval.every=3",
        "eval.limit=7",
        "eval.n=2",
        "eval.k=[1, 2]",
    ]
    one = run_train(tmp_path / "one", *sets)
    assert one.code == 0, one.err
    flags = [a for s in [*sets, "model.threads=1"] for a in ("--set", s)]
    # `mathrl train --nproc 2`: the same as torchrun --standalone --nproc-per-node 2
    two = mathrl("train", "--nproc", "2", "-c", tiny_config, "--out", tmp_path / "two", *flags)
    assert two.returncode == 0, two.stderr[-3000:]
    ra, rb = (
        read_jsonl(tmp_path / "one" / "rollouts.jsonl"),
        read_jsonl(tmp_path / "two" / "rollouts.jsonl"),
    )
    assert len(ra) == 3 * 8 * 4
    keys = ("step", "prompt_id", "completion", "completion_tokens", "reward", "group_id")
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x["advantage"] == pytest.approx(y["advantage"], abs=1e-6)
    ma = [m for m in read_jsonl(tmp_path / "one" / "metrics.jsonl") if "reward/mean" in m]
    mb = [m for m in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "reward/mean" in m]
    assert [m["reward/mean"] for m in ma] == [m["reward/mean"] for m in mb]
    assert [m["rollout/sampled"] for m in mb] == [32.0] * 3  # both ranks' samples counted
    assert [m["loss/policy"] for m in ma] == pytest.approx([m["loss/policy"] for m in mb], abs=1e-5)
    assert_close_weights(tmp_path / "one", tmp_path / "two", 3)
    ea = [m for m in read_jsonl(tmp_path / "one" / "metrics.jsonl") if "eval/mean_reward" in m]
    eb = [m for m in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "eval/mean_reward" in m]
    assert len(ea) == 2 and ea[0].keys() == eb[0].keys()  # before RL and after step 3
    for x, y in zip(ea, eb, strict=True):
        for k in x:
            if k.startswith("eval/") and "time" not in k and "per_s" not in k:
                assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), k
    assert (tmp_path / "two" / "summary.json").is_file()
    assert two.stderr.count("trained 3 steps") == 1  # one rank speaks


def test_dynamic_sampling_on_two_ranks_equals_one_process(tmp_path, tiny_config, run_train):
    """drop_zero_std + min_positive + max_total_rollouts (DAPO's dynamic sampling) on 2
    ranks choose the groups one process chooses: each resampling round is split over the
    ranks (odd rounds unevenly), the choice made on the gathered round; same rollouts,
    same counts, weights within ATOL."""
    sets = [
        "train.steps=2",
        "train.prompts_per_step=4",
        "rollout.batch_size=16",
        "log.rollouts_every=1",
        # even-length prompts score a flat 0.5: their groups are dropped and resampled
        'task.rewards=[{fn = "reward_fixtures:brevity_odd_prompts", completions = "text"}]',
        "train.drop_zero_std=true",
        "train.min_positive=4",
        "train.max_total_rollouts=48",
    ]
    one = run_train(tmp_path / "one", *sets)
    assert one.code == 0, one.err
    flags = [a for s in [*sets, "model.threads=1"] for a in ("--set", s)]
    two = mathrl("train", "--nproc", "2", "-c", tiny_config, "--out", tmp_path / "two", *flags)
    assert two.returncode == 0, two.stderr[-3000:]
    keys = ("step", "prompt_id", "completion", "reward", "group_id")
    ra, rb = (read_jsonl(tmp_path / run / "rollouts.jsonl") for run in ("one", "two"))
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]
    assert all(len(set(r["reward"] for r in ra if r["group_id"] == g["group_id"])) > 1 for g in ra)
    for x, y in zip(ra, rb, strict=True):
        assert x["advantage"] == pytest.approx(y["advantage"], abs=1e-6)
    counts = ("rollout/rounds", "rollout/sampled", "rollout/dropped_groups")
    ma, mb = (
        [m for m in read_jsonl(tmp_path / run / "metrics.jsonl") if "reward/mean" in m]
        for run in ("one", "two")
    )
    assert [[m[k] for k in counts] for m in ma] == [[m[k] for k in counts] for m in mb]
    assert any(m["rollout/rounds"] > 1 and m["rollout/dropped_groups"] > 0 for m in ma)
    assert_close_weights(tmp_path / "one", tmp_path / "two", 2)


def test_two_ranks_equal_one_process_sft(tmp_path, tiny_config, run_cli):
    sets = ["sft.steps=4", "sft.batch_size=8"]
    flags = [a for s in sets for a in ("--set", s)]
    one = run_cli("sft", "-c", tiny_config, "--out", tmp_path / "one", *flags)
    assert one.code == 0, one.err
    two = torchrun(
        2, "sft", "-c", tiny_config, "--out", tmp_path / "two", *flags, "--set", "model.threads=1"
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert_close_weights(tmp_path / "one", tmp_path / "two", 4)
    la = [m["sft/loss"] for m in read_jsonl(tmp_path / "one" / "metrics.jsonl")]
    lb = [m["sft/loss"] for m in read_jsonl(tmp_path / "two" / "metrics.jsonl")]
    assert la == pytest.approx(lb, abs=1e-5) and len(la) == 4


def test_eval_and_probe_split_problems_over_ranks_one_process_commands_refuse(
    tmp_path, tiny_config
):
    """`mathrl eval` on 2 ranks: the summary of 1 process (13 problems: 7 + 6, 3 samples
    each), written once; `probe` likewise; `expert-iter` runs in one process and says so."""
    import json

    args = ["-c", tiny_config, "--model", "scratch", "--limit", "13"]
    sets = ["--set", "eval.n=3", "--set", "eval.k=[1, 3]", "--set", "model.threads=1"]
    one = mathrl("eval", *args, *sets, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    # a config made for FSDP training: eval still loads whole models (no sharded decode)
    fsdp = ["--set", "train.parallel=fsdp"]
    two = torchrun(2, "eval", *args, *sets, *fsdp, "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    sa = json.loads((tmp_path / "one" / "eval_summary.json").read_text())
    sb = json.loads((tmp_path / "two" / "eval_summary.json").read_text())
    assert sa["n_problems"] == sb["n_problems"] == 13
    for k, v in sa.items():
        if isinstance(v, float) and "time" not in k and "per_s" not in k:
            assert v == pytest.approx(sb[k], rel=1e-5, abs=1e-7), k
    ra = read_jsonl(tmp_path / "one" / "eval_examples.jsonl")
    rb = read_jsonl(tmp_path / "two" / "eval_examples.jsonl")
    assert [r["prompt_id"] for r in ra] == [r["prompt_id"] for r in rb]
    assert [[s["completion"] for s in r["samples"]] for r in ra] == [
        [s["completion"] for s in r["samples"]] for r in rb
    ]
    assert (two.stdout + two.stderr).count("n_problems") == 1  # one table
    # probe: the ranks split the prompts, the pass rates and verdict are one process's
    # --samples, not --n: torchrun's own parser takes `--n` for one of its options
    probe = ["probe", "-c", tiny_config, "--model", "scratch", "--limit", "9", "--samples", "4"]
    p1 = mathrl(*probe, "--set", "model.threads=1", "--out", tmp_path / "p1")
    p2 = torchrun(2, *probe, "--set", "model.threads=1", "--out", tmp_path / "p2")
    assert p1.returncode == 0 and p2.returncode == 0, (p1.stderr + p2.stderr)[-3000:]
    assert read_jsonl(tmp_path / "p1" / "pass_rates.jsonl") == read_jsonl(
        tmp_path / "p2" / "pass_rates.jsonl"
    )
    assert (p2.stdout + p2.stderr).count("verdict:") == 1
    suite = ["eval", "--suite", "synthetic", "-c", tiny_config, "--model", "scratch"]
    r = torchrun(2, *suite, "--out", tmp_path / "x")
    assert r.returncode != 0 and r.stderr.count("launch it without torchrun") == 1  # rank 0


# Countdown scored by reward_fixtures.even_length_correct in every process of a command
# (its ranks and reward workers): what conftest's use_reward does in-process.
EXPERT = """
import reward_fixtures
from mathrl.tasks.countdown import CountdownTask
_real = CountdownTask.reward_call
CountdownTask.reward_call = lambda self, ex: (reward_fixtures.even_length_correct, _real(self, ex)[1])
"""


def test_expert_iter_on_two_ranks_equals_one_process(tmp_path, tiny_config):
    """expert-iter --nproc 2: the ranks split each round's sampling (the same samples, so
    the same kept completions), its SFT and its eval; weights within ATOL of one process."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(EXPERT)
    env = rank_env()
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])
    sets = [
        "expert_iter.rounds=2",
        "expert_iter.prompts=6",
        "expert_iter.samples=4",
        "expert_iter.sft_steps=2",
        "sft.batch_size=5",
        "eval.every=1",
        "eval.limit=5",
        "model.threads=1",
    ]
    flags = [a for s in sets for a in ("--set", s)]
    base = [sys.executable, "-m", "mathrl", "expert-iter", "-c", str(tiny_config), *flags]
    runs = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        runs[name] = tmp_path / name
        done = subprocess.run(
            [*base, *extra, "--out", str(runs[name])], capture_output=True, text=True, env=env
        )
        assert done.returncode == 0, done.stderr[-3000:]
    for r in (1, 2):
        data = f"expert_iter/round_{r:03d}/data.jsonl"
        kept = read_jsonl(runs["one"] / data)
        assert kept and kept == read_jsonl(runs["two"] / data)
    assert done.stderr.count("expert iteration: 2 rounds") == 1  # rank 0 speaks
    ma, mb = (read_jsonl(runs[n] / "metrics.jsonl") for n in ("one", "two"))
    assert [m["step"] for m in mb] == [0, 1, 2]
    for x, y in zip(ma, mb, strict=True):
        for k in x:
            if k.startswith(("ei/", "eval/")) and "time" not in k and "per_s" not in k:
                assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), k
    assert_close_weights(runs["one"], runs["two"], 2)
    assert layout(runs["two"], 2)[0] == 2 and layout(runs["one"], 2)[0] == 1


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of `rank` among the launcher's children (torchrun's workers carry RANK)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def test_a_killed_rank_or_a_signal_stops_the_run_and_resume_continues_it(
    tmp_path, tiny_config, same_run
):
    """SIGKILL of rank 1 after checkpoint 2: the job exits non-zero within the collective
    timeout, no half-written checkpoint is taken as the latest, and --resume on 2 ranks
    ends exactly where an uninterrupted 2-rank run ends. SIGTERM to the launcher: both ranks
    stop at one step with a checkpoint, exit 143, and resume exactly. A 2-rank checkpoint
    also resumes on 1 process."""
    import signal
    import time

    from mathrl.checkpoint import latest_checkpoint

    sets = [
        "train.steps=8",
        "train.prompts_per_step=4",
        "log.rollouts_every=1",
        "model.threads=1",
        "train.collective_timeout_s=20",
        'task.rewards=[{fn = "reward_fixtures:brevity", completions = "text"}]',
    ]
    flags = [a for s in sets for a in ("--set", s)]
    whole = mathrl("train", "--nproc", "2", "-c", tiny_config, "--out", tmp_path / "whole", *flags)
    assert whole.returncode == 0, whole.stderr[-3000:]

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mathrl", "train", "--nproc", "2", "-c", str(tiny_config)]
    launcher = subprocess.Popen(
        [*cmd, "--out", str(run), *flags], env=rank_env(), stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step_00000002" / "manifest.json").is_file():
        assert time.monotonic() < deadline and launcher.poll() is None, "no checkpoint 2"
        time.sleep(0.02)
    victim = rank_pid(launcher.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode != 0
    assert time.monotonic() - killed_at < 20 + 10  # the collective timeout bounds it
    latest = latest_checkpoint(run)
    assert latest is not None and 2 <= int(latest.name.split("_")[1]) < 8
    assert rank_pid(launcher.pid, 0) is None  # no rank left behind

    resumed = mathrl("train", "--nproc", "2", "-c", tiny_config, "--out", run, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_run(tmp_path / "whole", run, 8)

    # SIGTERM (what schedulers send) to the launcher: every rank stops after the same step,
    # rank 0 writes its checkpoint, one line says how to continue, exit 143
    termed = tmp_path / "termed"
    launcher = subprocess.Popen(
        [*cmd, "--out", str(termed), *flags], env=rank_env(), stderr=subprocess.PIPE, text=True
    )
    while not (termed / "checkpoints" / "step_00000002" / "manifest.json").is_file():
        assert time.monotonic() < deadline + 120 and launcher.poll() is None, "no checkpoint 2"
        time.sleep(0.02)
    launcher.send_signal(signal.SIGTERM)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 143, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("stopped by SIGTERM after step")]
    assert len(lines) == 1, err[-3000:]
    assert err.count("SIGTERM received") == 1, err[-3000:]  # rank 0 says it, once
    step = int(lines[0].split("after step ")[1].split(";")[0])
    assert f"checkpoints/step_{step:08d}" in lines[0] and "--nproc 2" in lines[0]
    assert lines[0].endswith("--resume")
    assert latest_checkpoint(termed).name == f"step_{step:08d}"
    assert rank_pid(launcher.pid, 0) is None and rank_pid(launcher.pid, 1) is None
    resumed = mathrl(
        "train", "--nproc", "2", "-c", tiny_config, "--out", termed, *flags, "--resume"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_run(tmp_path / "whole", termed, 8)

    # the 2-rank checkpoint continues on one process: same global batch, same rollouts
    one = tmp_path / "one"
    import shutil

    shutil.copytree(run, one)
    shutil.rmtree(one / "checkpoints" / "step_00000008")
    shutil.rmtree(one / "checkpoints" / "step_00000007")
    single = mathrl("train", "-c", tiny_config, "--out", one, *flags, "--resume")
    assert single.returncode == 0, single.stderr[-3000:]
    rows = lambda d: [(r["step"], r["completion"]) for r in read_jsonl(d / "rollouts.jsonl")]  # noqa: E731
    assert rows(one) == rows(run)
    assert_close_weights(run, one, 8)


def test_a_hanging_reward_on_one_rank_does_not_hang_the_job(tmp_path, tiny_config):
    """Rank 1's first reward call hangs for 600 s: its pool gives that sample reward 0 after
    train.reward_timeout_s, and both ranks finish the run long before the hang would end (the
    bound is the subprocess timeout, far from both: a loaded CI machine takes ~30-60 s to
    start two ranks, so a tighter wall bound would measure the machine)."""
    flag = tmp_path / "hung"
    sets = [
        "train.steps=2",
        "train.prompts_per_step=4",
        "warmup.steps=0",
        "warmup.min_positive=0",
        "train.reward_timeout_s=1",
        "model.threads=1",
        "log.rollouts_every=1",
        'task.rewards=[{fn = "reward_fixtures:hang_once_on_rank1", completions = "text"}]',
    ]
    flags = [a for s in sets for a in ("--set", s)]
    cmd = [sys.executable, "-m", "mathrl", "train", "--nproc", "2", "-c", str(tiny_config)]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "run"), *flags],
        capture_output=True,
        text=True,
        timeout=300,  # raises if the job waited for the 600 s hang
        env={**rank_env(), "MATHRL_TEST_HANG_FLAG": str(flag)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert flag.exists()
    rows = read_jsonl(tmp_path / "run" / "rollouts.jsonl")
    timed_out = [r for r in rows if "timeout" in str(r["reason"])]
    assert len(rows) == 2 * 4 * 4 and len(timed_out) >= 1
    assert all(r["reward"] == 0.0 for r in timed_out)


def test_fsdp_equals_one_process_and_resumes(tmp_path, tiny_config, run_train):
    """train.parallel = "fsdp" on 2 ranks (parameters, gradients and AdamW state sharded)
    = one process: the SFT warm-up with 3 + 2 rows per rank in micro-batches of 2, then GRPO
    where some groups have zero advantage, so ranks train on different numbers of rows and
    the one with fewer runs zero-weight passes; weights within ATOL. Its checkpoints are
    one-process ones: plain transformers loads the model, a 2-rank FSDP resume ends bitwise
    where the straight run ends, and one process resumes it within ATOL."""
    from transformers import AutoConfig

    sets = [
        "train.steps=3",
        "train.prompts_per_step=8",
        "train.micro_batch_size=2",
        "sft.batch_size=5",
        "rollout.batch_size=32",
        "log.rollouts_every=1",
        'task.rewards=[{fn = "reward_fixtures:brevity_odd_prompts", completions = "text"}]',
    ]
    one = run_train(tmp_path / "one", *sets)
    assert one.code == 0, one.err
    flags = [a for s in [*sets, "model.threads=1", "train.parallel=fsdp"] for a in ("--set", s)]
    two = mathrl("train", "--nproc", "2", "-c", tiny_config, "--out", tmp_path / "two", *flags)
    assert two.returncode == 0, two.stderr[-3000:]
    ra, rb = (read_jsonl(tmp_path / r / "rollouts.jsonl") for r in ("one", "two"))
    keys = ("step", "prompt_id", "completion_tokens", "reward")
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]
    # the zero-weight passes ran: some step gave the ranks different numbers of micro-batches
    trained = [
        [
            sum(
                r["advantage"] != 0
                for r in rb
                if r["step"] == s and (int(r["group_id"].split(":")[1]) < 4) == first
            )
            for first in (True, False)
        ]
        for s in (1, 2, 3)
    ]
    assert any((a + 1) // 2 != (b + 1) // 2 for a, b in trained), trained
    assert_close_weights(tmp_path / "one", tmp_path / "two", 3)
    assert layout(tmp_path / "two", 3) == (2, "fsdp") and layout(tmp_path / "one", 3) == (1, "none")
    # gradients are summed over ranks, as one process sums them (a mean would halve them)
    for log in ("metrics.jsonl", "warmup_sft/metrics.jsonl"):
        ga, gb = (
            [
                m.get("optim/grad_norm", m.get("sft/grad_norm"))
                for m in read_jsonl(tmp_path / r / log)
            ]
            for r in ("one", "two")
        )
        assert len(ga) == 3 and None not in ga and ga == pytest.approx(gb, rel=1e-4), log
    warm = "warmup_sft/checkpoints/step_00000003/model/model.safetensors"
    wa, wb = load_file(tmp_path / "one" / warm), load_file(tmp_path / "two" / warm)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= ATOL
    model_dir = tmp_path / "two" / "checkpoints" / "step_00000003" / "model"
    assert AutoConfig.from_pretrained(model_dir).architectures == ["Qwen2ForCausalLM"]

    # resume the 2-rank run from step 2: FSDP on 2 ranks bitwise, one process within ATOL
    for name, extra in (("again", ["--nproc", "2"]), ("single", [])):
        run = tmp_path / name
        shutil.copytree(tmp_path / "two", run)
        shutil.rmtree(run / "checkpoints" / "step_00000003")
        r = mathrl("train", *extra, "-c", tiny_config, "--out", run, *flags, "--resume")
        assert r.returncode == 0, r.stderr[-3000:]
        if name == "again":
            wa, wb = weights(tmp_path / "two", 3), weights(run, 3)
            assert all(torch.equal(wa[k], wb[k]) for k in wa)
        else:
            assert_close_weights(tmp_path / "two", run, 3)


def test_fsdp_shards_the_kl_reference_too(tmp_path, tiny_config, run_train):
    """With train.kl_coef > 0 the reference model is sharded like the policy and the KL
    term matches one process's."""
    sets = [
        "train.steps=2",
        "train.prompts_per_step=8",
        "train.kl_coef=0.5",
        "warmup.steps=0",
        "rollout.batch_size=32",
        'task.rewards=[{fn = "reward_fixtures:brevity", completions = "text"}]',
    ]
    one = run_train(tmp_path / "one", *sets)
    assert one.code == 0, one.err
    flags = [a for s in [*sets, "model.threads=1", "train.parallel=fsdp"] for a in ("--set", s)]
    two = mathrl("train", "--nproc", "2", "-c", tiny_config, "--out", tmp_path / "two", *flags)
    assert two.returncode == 0, two.stderr[-3000:]
    ka = [m["loss/kl"] for m in read_jsonl(tmp_path / "one" / "metrics.jsonl") if "loss/kl" in m]
    kb = [m["loss/kl"] for m in read_jsonl(tmp_path / "two" / "metrics.jsonl") if "loss/kl" in m]
    assert len(ka) == 2 and ka[1] > 0 and ka == pytest.approx(kb, rel=1e-4, abs=1e-7)
    assert_close_weights(tmp_path / "one", tmp_path / "two", 2)
    assert layout(tmp_path / "two", 2) == (2, "fsdp")


RANK_SCRIPT = """
import sys, time
from mathrl import dist
from mathrl.errors import MathrlError
dist.init(timeout_s=1.0)
me = dist.current()
# rank 0 works for 3 s inside on_main (a checkpoint write): the others wait it out
got = dist.on_main(lambda: time.sleep(3) or 42)
print("on_main", got, flush=True)
# a plain collective keeps the 1 s timeout: rank 1 gives up on a rank 0 that is 3 s late
if me.rank == 0:
    time.sleep(3)
try:
    dist.all_sum([1.0])
    print("all_sum ok", flush=True)
except MathrlError as e:
    print("all_sum failed:", e, flush=True)
"""


def test_rank_0_writing_longer_than_the_collective_timeout_does_not_time_the_others_out(
    tmp_path,
):
    """on_main waits for rank 0 on its own group (an hour), while train.collective_timeout_s
    still bounds every other collective (here 1 s)."""
    import socket

    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**rank_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    out = [p.communicate(timeout=60)[0] for p in procs]
    assert all("on_main 42" in o for o in out), out
    assert "all_sum failed: rank 1 of 2" in out[1], out


SLOW_RANK_1 = """
import os, time
if os.environ.get("RANK") == "1":
    import mathrl.warmup as w
    read = w.read_decision
    def late_read(wdir):
        time.sleep(3)  # rank 0 decides and writes its decision meanwhile
        return read(wdir)
    w.read_decision = late_read
"""


def test_a_rank_that_reads_the_warmup_decision_late_still_joins_rank_0s(tmp_path, tiny_config):
    """`loop` resumes its warm-up decision from the run dir. A rank reading that file itself
    found the one rank 0 had just written, skipped the collective of its write, and paired
    every later collective wrongly: it loaded the scratch model before rank 0 built it
    (seen once under load). Rank 1 here reads it 3 s late: the decision must come from rank 0."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_RANK_1)
    env = rank_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    args = ["loop", "-c", tiny_config, "--iters", "1", "--max-steps", "1", "--nproc", "2"]
    cmd = [sys.executable, "-m", "mathrl", *map(str, args), "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "warm-up decision: warmup.steps = 3" in two.stderr + two.stdout
    assert (tmp_path / "two" / "checkpoints" / "step_00000001").is_dir()


def test_the_decoupled_loop_on_two_ranks_equals_one_process(tmp_path, tiny_config):
    """`mathrl loop --nproc 2` (rollout into buffer files, train from them, twice): the
    buffers hold one process's samples in its order, and the weights end within ATOL."""
    sets = [
        "train.prompts_per_step=4",
        "model.threads=1",
        'task.rewards=[{fn = "reward_fixtures:brevity", completions = "text"}]',
    ]
    flags = [a for s in sets for a in ("--set", s)]
    args = ["loop", "-c", tiny_config, "--iters", "2", "--max-steps", "4", *flags]
    one = mathrl(*args, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = mathrl(*args, "--nproc", "2", "--out", tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    keys = ("step", "prompt_id", "completion_ids", "reward")
    for it in (0, 1):
        ra, rb = (
            read_jsonl(tmp_path / r / "buffer" / f"iter_{it:03d}.jsonl") for r in ("one", "two")
        )
        assert len(ra) == 2 * 4 * 4
        assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]
        for x, y in zip(ra, rb, strict=True):
            assert x["logprobs"] == pytest.approx(y["logprobs"], abs=1e-4)
    assert_close_weights(tmp_path / "one", tmp_path / "two", 4)
    assert layout(tmp_path / "two", 4) == (2, "ddp")
    assert two.stderr.count("loop finished at step 4") == 1
