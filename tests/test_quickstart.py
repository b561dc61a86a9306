"""A reduced quickstart: the real configs/quickstart.toml end to end, minutes shrunk to seconds."""

from __future__ import annotations

import json

from conftest import REPO


def test_reduced_quickstart(run_train, tmp_path):
    out = tmp_path / "quickstart"
    sets = {
        "warmup.steps": 20,
        "train.steps": 4,
        "train.prompts_per_step": 4,
        "rollout.batch_size": 32,
        "eval.every": 2,
        "eval.limit": 30,
        "data.countdown_train_size": 200,
        "checkpoint.every": 2,
        "log.quiet": "true",
    }
    config = REPO / "configs/quickstart.toml"
    res = run_train(out, *[f"{k}={v}" for k, v in sets.items()], config=config)
    assert res.code == 0, res.err
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_before_rl", "accuracy_after_rl"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["heldout_n"] == 30 and summary["heldout_split"] == "test"
    assert summary["steps"] == 4 and summary["step_after_rl"] == 4 and summary["wall_s"] > 0
    assert summary["report"] == str(out / "report.html") and (out / "report.html").is_file()
    assert summary["warmup"]["steps"] == 20
    # the before/after table and the report path close the console output
    assert "held-out greedy pass@1 (30 problems, split 'test')" in res.out
    assert f"report:  {out / 'report.html'}" in res.out
    assert f"{100 * summary['accuracy_before_rl']:5.1f} %" in res.out
    html = (out / "report.html").read_text()
    assert "Before / after" in html and "accuracy (summary.json)" in html
