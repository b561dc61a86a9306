"""One smoke test per subcommand through the real entry point, plus bad input."""

from __future__ import annotations

import json
import os
import tomllib

import pytest

from mathrl.checkpoint import latest_checkpoint, read_manifest
from mathrl.io import read_jsonl
from mathrl.tasks.gsm8k import GSM8KTask

ROLLOUT_FIELDS = {
    "iter",
    "step",
    "prompt_id",
    "task",
    "messages",
    "completion",
    "completion_tokens",
    "finish_reason",
    "reward",
    "reward_components",
    "pred",
    "gold",
    "correct",
    "group_id",
}


def test_env_and_config_commands(run_cli, tiny_config):
    res = run_cli("env")
    assert res.code == 0
    info = json.loads(res.out)
    assert info["versions"]["torch"].startswith("2.") and "cpu_count" in info["hardware"]
    res = run_cli("config", "keys")
    assert res.code == 0 and "train.lr (float, default 1e-06)" in res.out
    res = run_cli("config", "show", "-c", tiny_config, "--set", "train.lr=5e-7")
    assert res.code == 0 and tomllib.loads(res.out)["train"]["lr"] == 5e-7


def test_ctrl_c_in_a_command_without_graceful_stop_exits_130(run_cli, monkeypatch):
    """typer turns a KeyboardInterrupt into exit code 130, returned (not raised) to main()."""

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("mathrl.config.iter_keys", interrupted)
    res = run_cli("config", "keys")
    assert res.code == 130 and res.err.strip().splitlines()[-1] == "interrupted"


def test_train_writes_every_artifact(run_cli, tiny_config, tmp_path):
    out = tmp_path / "run"
    res = run_cli("train", "-c", tiny_config, "--out", out)
    assert res.code == 0, res.err
    assert tomllib.loads((out / "config.toml").read_text())["train"]["steps"] == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["dataset_fingerprint"]) == 64 and manifest["seed"] == 0
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    for key in (
        "reward/mean",
        "reward/frac_zero_std",
        "rollout/len_mean",
        "optim/lr",
        "time/rollout_s",
        "loss/clip_frac",
    ):
        assert key in metrics[-1], key
    rollouts = read_jsonl(out / "rollouts.jsonl")
    assert len(rollouts) == 2 * 2 * 4
    assert ROLLOUT_FIELDS <= set(rollouts[0])
    assert {r["group_id"] for r in rollouts} == {"1:0", "1:1", "2:0", "2:1"}
    # the SFT warm-up ran first, in its own directory
    assert [m["step"] for m in read_jsonl(out / "warmup_sft" / "metrics.jsonl")] == [1, 2, 3]
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step_00000002" and read_manifest(ckpt, verify_hashes=True)["kind"] == "rl"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert (out / "report.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["report"]) == (2, str(out / "report.html"))
    assert "accuracy_after_rl" not in summary  # the tiny config runs no held-out eval
    # training into the same dir again without --resume would mix two runs: refused
    res = run_cli("train", "-c", tiny_config, "--out", out)
    assert res.code == 2 and "already holds a run: pass --resume" in res.err
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]


def test_resume_equals_uninterrupted_run(run_cli, tiny_config, tmp_path, same_run):
    """2 steps, stop, resume to 4 == 4 steps straight: parameters, optimizer, logs."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    assert (
        run_cli("train", "-c", tiny_config, "--out", straight, "--set", "train.steps=4").code == 0
    )
    assert run_cli("train", "-c", tiny_config, "--out", resumed, "--set", "train.steps=2").code == 0
    # resuming with a different config is refused unless allowed knowingly
    res = run_cli(
        "train", "-c", tiny_config, "--out", resumed, "--set", "train.steps=4", "--resume"
    )
    assert res.code == 2 and "Config changed since step_00000002" in res.err
    res = run_cli(
        "train",
        "-c",
        tiny_config,
        "--out",
        resumed,
        "--set",
        "train.steps=4",
        "--resume",
        "--allow-config-change",
    )
    assert res.code == 0, res.err
    same_run(straight, resumed, 4)


def test_a_refused_resume_writes_nothing_and_display_options_are_no_change(
    run_cli, tiny_config, tmp_path
):
    """`train -q`, then --resume: another lr is refused before config.toml or manifest.json
    is touched; a resume that changes only display options ([log]) is the same config."""
    out, base = tmp_path / "run", ("-c", tiny_config, "--out", tmp_path / "run")
    assert run_cli("train", *base, "--set", "warmup.steps=0", "-q").code == 0
    before = {name: (out / name).read_bytes() for name in ("config.toml", "manifest.json")}
    res = run_cli("train", *base, "--set", "warmup.steps=0", "--set", "train.lr=0.002", "--resume")
    assert res.code == 2 and "Config changed since step_00000002" in res.err
    assert {name: (out / name).read_bytes() for name in before} == before
    display = ("log.quiet=false", "log.every=5", "log.rollouts_every=2")
    sets = [arg for kv in ("warmup.steps=0", *display) for arg in ("--set", kv)]
    res = run_cli("train", *base, *sets, "--resume")
    assert res.code == 0, res.err
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]


def test_sft_command_on_pairs_file(run_cli, tiny_config, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        json.dumps({"prompt": "2+2?", "response": "Final: 4"})
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "3+3?"},
                    {"role": "assistant", "content": "Final: 6"},
                ]
            }
        )
        + "\n"
    )
    res = run_cli(
        "sft", "-c", tiny_config, "--out", tmp_path / "sft", "--data", data, "--steps", "4"
    )
    assert res.code == 0, res.err
    losses = [m["sft/loss"] for m in read_jsonl(tmp_path / "sft" / "metrics.jsonl")]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert read_manifest(latest_checkpoint(tmp_path / "sft"))["kind"] == "sft"


def test_decoupled_rollout_train_buffer_loop(run_cli, tiny_config, tmp_path):
    out = tmp_path / "dec"
    res = run_cli("rollout", "-c", tiny_config, "--out", out, "--iter", "0", "--steps", "2")
    assert res.code == 0, res.err
    records = read_jsonl(out / "buffer" / "iter_000.jsonl")
    assert len(records) == 2 * 2 * 4 and {"prompt_ids", "completion_ids", "logprobs"} <= set(
        records[0]
    )
    res = run_cli(
        "train-buffer",
        "-c",
        tiny_config,
        "--out",
        out,
        "--buffer",
        out / "buffer" / "iter_000.jsonl",
    )
    assert res.code == 0, res.err
    assert read_manifest(latest_checkpoint(out))["step"] == 2
    loop_dir = tmp_path / "loop"
    res = run_cli("loop", "-c", tiny_config, "--out", loop_dir, "--iters", "2", "--max-steps", "3")
    assert res.code == 0, res.err
    assert sorted(p.name for p in (loop_dir / "buffer").iterdir()) == [
        "iter_000.jsonl",
        "iter_001.jsonl",
    ]
    assert read_manifest(latest_checkpoint(loop_dir))["step"] == 3  # ceil(3/2)=2 steps, then 1
    # running the loop again resumes and finds nothing left to do
    res = run_cli("loop", "-c", tiny_config, "--out", loop_dir, "--iters", "2", "--max-steps", "3")
    assert res.code == 0 and read_manifest(latest_checkpoint(loop_dir))["step"] == 3


def test_score_command_exact_rewards(run_cli, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [
        {"answer": "2 + 2 = 4\n#### 4", "completion": "so\nFinal: 4"},
        {"answer": "#### 1,000", "completion": "Final: 999"},
        {"answer": "#### 7", "completion": "the answer is 7"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("score", "--task", "gsm8k", "--input", src, "--output", tmp_path / "out.jsonl")
    assert res.code == 0, res.err
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["reward"] for r in out] == [1.0, 0.1, 0.0]
    assert [r["correct"] for r in out] == [True, False, False]
    assert [r["gold"] for r in out] == ["4", "1000", "7"]
    assert out[2]["correct_lenient"] is True
    cd = tmp_path / "cd.jsonl"
    cd.write_text(
        json.dumps({"nums": [3, 5, 7], "target": 22, "completion": "Final: 3*5+7"})
        + "\n"
        + json.dumps({"nums": [3, 5, 7], "target": 22, "completion": "Final: __import__('os')"})
        + "\n"
    )
    res = run_cli(
        "score", "--task", "countdown", "--input", cd, "--output", tmp_path / "cd_out.jsonl"
    )
    assert res.code == 0, res.err
    assert [r["reward"] for r in read_jsonl(tmp_path / "cd_out.jsonl")] == [1.0, 0.0]
    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        json.dumps({"gold": "Paris", "completion": "Final: paris."})
        + "\n"
        + json.dumps({"gold": "B", "completion": "Final: Rome"})
        + "\n"
    )
    args = ["--input", qa, "--output", tmp_path / "qa_out.jsonl", "--grader", "exact"]
    res = run_cli("score", "--task", "qa", *args)
    assert res.code == 0, res.err
    assert [r["reward"] for r in read_jsonl(tmp_path / "qa_out.jsonl")] == [1.0, 0.1]


def test_data_prepare(run_cli, tmp_path):
    res = run_cli(
        "data",
        "prepare",
        "countdown",
        "--out",
        tmp_path / "cd",
        "--set",
        "data.countdown_train_size=50",
        "--set",
        "data.countdown_test_size=10",
        "--set",
        "data.countdown_max_number=9",
    )
    assert res.code == 0, res.err
    assert len(read_jsonl(tmp_path / "cd" / "train.jsonl")) == 50
    assert len(read_jsonl(tmp_path / "cd" / "test.jsonl")) == 10
    gsm = tmp_path / "gsm"
    gsm.mkdir()
    (gsm / "train.jsonl").write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": f"#### {i}"}) + "\n" for i in range(30))
    )
    (gsm / "test.jsonl").write_text(json.dumps({"question": "t", "answer": "#### 1"}) + "\n")
    res = run_cli(
        "data",
        "prepare",
        "gsm8k",
        "--source",
        gsm,
        "--out",
        tmp_path / "g",
        "--set",
        "data.val_size=5",
    )
    assert res.code == 0, res.err
    fp = json.loads((tmp_path / "g" / "fingerprint.json").read_text())
    assert fp["counts"] == {"train": 25, "val": 5, "test": 1} and len(fp["fingerprint"]) == 64
    # The prepared dir holds the whole official train split: read back, it is the same task.
    assert len(read_jsonl(tmp_path / "g" / "train.jsonl")) == 30
    again = GSM8KTask(str(tmp_path / "g"), val_size=5)
    assert again.fingerprint == fp["fingerprint"]
    assert [ex.id for ex in again.examples("val")] == [
        ex.id for ex in GSM8KTask(str(gsm), val_size=5).examples("val")
    ]


def test_data_prepare_gsm8k_defaults_to_the_cache(run_cli, tmp_path, monkeypatch):
    """Without --out, GSM8K goes to mathrl's cache, where data.path = 'auto' finds it."""
    gsm = tmp_path / "gsm"
    gsm.mkdir()
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(12)]
    (gsm / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (gsm / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    monkeypatch.setenv("MATHRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MATHRL_GSM8K", raising=False)
    res = run_cli("data", "prepare", "gsm8k", "--source", gsm, "--set", "data.val_size=2")
    assert res.code == 0, res.err
    assert read_jsonl(tmp_path / "cache/data/gsm8k/train.jsonl") == rows
    assert GSM8KTask("auto", val_size=2).source == str(tmp_path / "cache/data/gsm8k")
    res = run_cli("data", "prepare", "countdown")
    assert res.code == 2 and "data prepare countdown needs --out" in res.err


BAD_INPUT = [
    (["train", "--set", "trian.lr=1"], "Unknown config key 'trian.lr' (did you mean 'train.lr'?)"),
    (
        ["train", "--set", "train.group_size=abc"],
        "Failed to coerce 'abc' for train.group_size (int)",
    ),
    (["train", "--set", "train.lr=-1"], "train.lr must be > 0 and finite"),
    (["train", "--set", "train.algorithm=ppo"], "Invalid train.algorithm 'ppo'"),
    (["train", "--set", "task.name=math"], "Invalid task.name 'math'"),
    (["train", "--config", "/nonexistent.toml"], "Config file not found: /nonexistent.toml"),
    (
        ["train", "--set", "task.name=gsm8k", "--set", "data.path=/nonexistent"],
        "Dataset path not found: /nonexistent",
    ),
    (["train", "--set", "task.name=gsm8k", "--set", "data.path={empty}"], "Dataset file is empty"),
    (
        ["train", "--set", "task.name=gsm8k", "--set", "data.path={schema}"],
        "lacks string fields 'question' and 'answer'",
    ),
    (["train", "--set", "task.name=gsm8k", "--set", "data.path={corrupt}"], ":2: malformed JSON"),
    (["train", "--resume"], "--resume given but the run directory does not exist"),
    (
        ["score", "--task", "algebra", "--input", "{score_in}", "--output", "{tmp}/o.jsonl"],
        "Unknown task 'algebra'",
    ),
    (
        ["score", "--task", "gsm8k", "--input", "{tmp}/missing.jsonl", "--output", "{tmp}/o.jsonl"],
        "missing.jsonl",
    ),
]


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_exits_with_one_clear_line(run_cli, tiny_config, tmp_path, args, message):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "schema.jsonl").write_text('{"problem": "x", "solution": "y"}\n')
    (tmp_path / "corrupt.jsonl").write_text(
        '{"question": "q", "answer": "#### 1"}\n{"question": \n'
    )
    (tmp_path / "score_in.jsonl").write_text('{"completion": "x"}\n')
    names = {
        "empty": tmp_path / "empty.jsonl",
        "schema": tmp_path / "schema.jsonl",
        "corrupt": tmp_path / "corrupt.jsonl",
        "score_in": tmp_path / "score_in.jsonl",
        "tmp": tmp_path,
    }
    args = [a.format(**names) for a in args]
    if args[0] == "train":
        args += ["--out", str(tmp_path / "run")]
        if "--config" not in args:
            args += ["--config", str(tiny_config)]
    res = run_cli(*args)
    assert res.code != 0
    lines = [ln for ln in res.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]


def test_rollouts_every_thins_the_rollout_log(run_train, tmp_path):
    out = tmp_path / "run"
    res = run_train(out, "train.steps=5", "log.rollouts_every=2", "warmup.steps=0")
    assert res.code == 0, res.err
    rows = read_jsonl(out / "rollouts.jsonl")
    # steps 2 and 4, and the last step 5; 2 prompts x 4 samples each
    assert sorted({r["step"] for r in rows}) == [2, 4, 5] and len(rows) == 3 * 8
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]


def test_run_deterministic_switches_torch_and_is_recorded(run_train, tmp_path, monkeypatch):
    """run.deterministic = true: deterministic kernels on, cuBLAS workspace set, cuDNN
    deterministic, and the manifest says so; the next run without it switches them off."""
    import torch

    from mathrl.run_setup import CUBLAS_WORKSPACE

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        res = run_train(tmp_path / "det", "run.deterministic=true", "train.steps=1")
        assert res.code == 0, res.err
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        assert json.loads((tmp_path / "det/manifest.json").read_text())["deterministic"] is True
        res = run_train(tmp_path / "plain", "train.steps=1")
        assert res.code == 0, res.err
        assert not torch.are_deterministic_algorithms_enabled()
        assert json.loads((tmp_path / "plain/manifest.json").read_text())["deterministic"] is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
