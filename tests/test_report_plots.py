"""Plots from a hand-written run directory; the per-prompt accuracy matrix by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from mathrl.errors import DataError
from mathrl.report.plots import (
    line_plot,
    prompt_accuracy_matrix,
    prompt_curve,
    reward_component_keys,
    smooth,
    write_plots,
)

CONFIG = (
    'seed = 0\n\n[train]\nalgorithm = "grpo"\npolicy_loss = "ppo_clip"\nlr = 0.0001\n'
    '# a comment with </pre><script>alert("cfg")</script>\n'
)
MANIFEST = {
    "git_sha": "abc1234",
    "dataset_fingerprint": "f00d",
    "versions": {"torch": "2.13"},
    "task": "countdown",
    "model": "scratch",
}
# summary.json as runs write it (report.summary.run_summary), numbers picked by hand
SUMMARY = {
    "steps": 4,
    "wall_s": 312.4,
    "heldout_split": "test",
    "accuracy_before_rl": 0.25,
    "accuracy_before_rl_ci95": [0.19, 0.31],
    "step_before_rl": 0,
    "accuracy_after_rl": 0.5,
    "accuracy_after_rl_ci95": [0.43, 0.57],
    "step_after_rl": 4,
    "heldout_n": 200,
    "accuracy_gain": 0.25,
    "warmup": {"warmup": True, "steps": 3},
}
SCRIPT = "<script>alert(1)</script>"

# prompt_id, step, correct, reward, completion. Hand-computed accuracies:
#   p1: step 1 -> 1/2, step 2 -> 2/2, step 3 -> 0/2;  p2: step 1 -> 0/2, step 3 -> 2/2
#   p3: step 2 only (seen at one step, so not in the heatmap)
ROLLOUTS = [
    ("p1", 1, True, 1.0, "a"),
    ("p1", 1, False, 0.1, "b"),
    ("p2", 1, False, 0.0, "c"),
    ("p2", 1, False, 0.1, "d"),
    ("p1", 2, True, 1.0, "e"),
    ("p1", 2, True, 1.0, "f"),
    ("p3", 2, True, 1.0, "g"),
    ("p3", 2, False, 0.0, "h"),
    ("p1", 3, False, 0.1, "i"),
    ("p1", 3, False, -0.5, SCRIPT),
    ("p2", 3, True, 1.1, "best & <b>bold</b>"),
    ("p2", 3, True, 1.0, "j"),
]


def metric_rows(scale: float = 1.0) -> list[dict[str, Any]]:
    """Four steps of RL metrics (eval only at steps 2 and 4, one non-finite entry)."""
    rows = []
    for step in range(1, 5):
        x = scale * step / 10
        rows.append(
            {
                "step": step,
                "reward/mean": x,
                "reward/std": 0.1,
                "reward/correct": x / 2,
                "reward/format": 1.0,
                "reward/accuracy": x / 2,
                "reward/accuracy_lenient": x,
                "reward/frac_zero_std": 0.5,
                "reward/failed": 0,
                "rollout/len_mean": 10.0 + step,
                "rollout/len_max": 20,
                "rollout/clipped_frac": 0.0,
                "policy/entropy": 1.0 - x,
                "loss/policy": -x,
                "loss/total": -x,
                "loss/clip_frac": 0.01,
                "loss/approx_kl": 0.001 * step,
                "loss/kl": None if step == 3 else 0.002 * step,
                "optim/grad_norm": 1.0,
                "optim/lr": 1e-4,
                "time/rollout_s": 2.0,
                "time/reward_s": 0.1,
                "time/train_s": 1.0,
                "time/step_s": 3.1,
                **({"nonfinite": ["loss/kl"]} if step == 3 else {}),
                **({"eval/pass@1": x / 4} if step % 2 == 0 else {}),
            }
        )
    return rows


def rollout_rows() -> list[dict[str, Any]]:
    """ROLLOUTS as rollouts.jsonl records."""
    return [
        {
            "step": step,
            "prompt_id": pid,
            "correct": correct,
            "reward": reward,
            "completion": text,
            "messages": [
                {"role": "user", "content": f"question {pid} <img src=x onerror=alert(2)>"}
            ],
            "gold": "42",
            "pred": "42" if correct else "7",
            "group_id": f"{step}:{pid}",
        }
        for pid, step, correct, reward, text in ROLLOUTS
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]], torn: bool = False) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + ('{"step": 99, "reward/me' if torn else ""))


def make_run(tmp_path: Path, name: str = "run", scale: float = 1.0, warmup: bool = True) -> Path:
    """A complete run directory written by hand."""
    run = tmp_path / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(CONFIG)
    (run / "manifest.json").write_text(json.dumps(MANIFEST))
    (run / "summary.json").write_text(json.dumps(SUMMARY))
    write_jsonl(run / "metrics.jsonl", metric_rows(scale))
    write_jsonl(run / "rollouts.jsonl", rollout_rows())
    if warmup:
        (run / "warmup_sft").mkdir()
        write_jsonl(
            run / "warmup_sft" / "metrics.jsonl",
            [{"step": s, "sft/loss": 2.0 / s} for s in (1, 2, 3)],
        )
    return run


EXPECTED = {
    "reward", "eval", "accuracy", "entropy", "length", "kl", "clip_frac", "frac_zero_std",
    "loss", "time", "warmup_sft_loss", "prompt_heatmap", "prompt_p1",
}  # fmt: skip


def test_write_plots_writes_every_plot(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    paths = write_plots(run, prompt_id="p1")
    assert {p.stem for p in paths} == EXPECTED
    for p in paths:
        assert p.parent == run / "plots"
        image = imread(p)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01  # not a blank canvas


def test_missing_keys_skip_their_plots(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(
        run / "metrics.jsonl", [{"step": 1, "reward/mean": 0.5}, {"step": 2, "reward/mean": 0.7}]
    )
    assert [p.name for p in write_plots(run)] == ["reward.png"]


def test_torn_last_line_is_tolerated(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [{"step": 1, "reward/mean": 0.5}], torn=True)
    with pytest.warns(UserWarning, match="torn"):
        assert [p.name for p in write_plots(run)] == ["reward.png"]


@pytest.mark.parametrize("content", [None, "", "\n\n"], ids=["missing", "empty", "blank_lines"])
def test_no_metrics_is_a_clear_error(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(DataError, match="metrics.jsonl"):
        write_plots(tmp_path)


def test_unknown_prompt_id_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'nope'"):
        write_plots(make_run(tmp_path), prompt_id="nope")


def test_prompt_accuracy_matrix_by_hand() -> None:
    prompt_ids, steps, matrix = prompt_accuracy_matrix(rollout_rows())
    assert prompt_ids == ["p1", "p2"]  # p1 seen at 3 steps, p2 at 2, p3 at 1 (dropped)
    assert steps == [1, 2, 3]
    expected = np.array([[0.5, 1.0, 0.0], [0.0, np.nan, 1.0]])
    np.testing.assert_array_equal(matrix, expected)  # NaN == NaN here


def test_prompt_accuracy_matrix_caps_and_ties() -> None:
    rows = [{"prompt_id": pid, "step": s, "correct": True} for pid in (7, 3) for s in (1, 2)]
    prompt_ids, steps, matrix = prompt_accuracy_matrix(rows, max_prompts=1)
    assert prompt_ids == ["3"] and steps == [1, 2]  # tie on steps seen -> lowest id; ids as str
    assert matrix.tolist() == [[1.0, 1.0]]
    assert prompt_accuracy_matrix([])[2].shape == (0, 0)


def test_prompt_curve_by_hand() -> None:
    steps, acc, mean_reward = prompt_curve(rollout_rows(), "p1")
    assert steps == [1, 2, 3]
    assert acc == [0.5, 1.0, 0.0]
    assert all(math.isclose(a, b) for a, b in zip(mean_reward, [0.55, 1.0, -0.2], strict=True))


def test_reward_components_exclude_statistics() -> None:
    assert reward_component_keys(metric_rows()) == ["reward/correct", "reward/format"]


def test_smoothing_by_hand(tmp_path: Path) -> None:
    np.testing.assert_allclose(smooth([1.0, 2.0, 3.0, 4.0], 2), [1.0, 1.5, 2.5, 3.5])
    rows = [{"step": s, "policy/entropy": 1.0 + (s % 3)} for s in range(1, 41)]
    assert line_plot(rows, [["policy/entropy"]], "long", tmp_path / "e.png") == tmp_path / "e.png"
    assert line_plot(rows, [["loss/kl"]], "absent", tmp_path / "kl.png") is None
