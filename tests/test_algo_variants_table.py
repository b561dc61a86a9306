"""bench/algo_variants.py's table from finished runs (--table-only): the training run's
own held-out numbers where it has them, and one column per --eval from RUN/eval_NAME."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("algo_variants", ROOT / "bench/algo_variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, name: str, summary: dict, metrics: list[dict], evals: dict) -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"steps": 2, "wall_s": 61.4, **summary}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    for ev, (p, lo, hi, lenient) in evals.items():
        (run / f"eval_{ev}").mkdir()
        greedy = {"pass@1": p, "pass@1_lo": lo, "pass@1_hi": hi, "pass@1_lenient": lenient}
        # the file `mathrl eval` writes: the greedy pass@1 at the top level
        summary = {"split": "test", "n_problems": 500, **greedy, "n": 1}
        (run / f"eval_{ev}" / "eval_summary.json").write_text(json.dumps(summary))


def test_table_only_reads_summaries_metrics_and_eval_columns(tmp_path, monkeypatch, capsys):
    metrics = [
        {"step": 1, "reward/mean": 0.5, "rollout/len_mean": 10.0, "policy/entropy": 0.5},
        {"step": 2, "reward/mean": 0.7, "rollout/len_mean": 14.0, "policy/entropy": 0.3},
    ]
    _run(tmp_path, "grpo_s0", {}, metrics, {"add": (0.474, 0.43, 0.518, 0.5)})
    mixed = {
        "accuracy_before_rl": 0.1,
        "accuracy_after_rl": 0.25,
        "accuracy_after_rl_ci95": [0.2, 0.3],
    }
    _run(tmp_path, "cispo_mu2_s0", mixed, metrics, {})
    argv = ["algo_variants.py", "--out", str(tmp_path), "--table-only", "--only", "grpo"]
    argv += ["cispo_mu2", "--eval", "add", "data.arithmetic_kind=add"]
    monkeypatch.setattr(sys, "argv", argv)
    _module().main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| run | pass@1 before | pass@1 after [95 % CI] | add strict")
    # the mean over both steps (LAST = 100 covers them): len 12.00, entropy 0.400
    assert lines[2] == (
        "| cispo_mu2_s0 | 10.0% | 25.0% [20.0%, 30.0%] | - | 12.00 | 0.400 | - | - | 61 |"
    )
    assert lines[3] == (
        "| grpo_s0 | - | - | 47.4% [43.0%, 51.8%] / 50.0% | 12.00 | 0.400 | - | - | 61 |"
    )
