"""report.html content (escaping, inlined images, no URLs), compare overlays, CLI smoke."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import pytest
from markupsafe import escape  # jinja2's autoescape: `"` -> &#34;, where html.escape gives &quot;

from mathrl import cli
from mathrl.errors import MathrlError
from mathrl.report.headline import wall_text
from mathrl.report.html import (
    before_after_rows,
    compare_runs,
    pick_samples,
    summary_rows,
    write_report,
)
from mathrl.report.plots import load_metrics
from test_report_plots import CONFIG, SCRIPT, make_run, metric_rows, rollout_rows, write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(run dir, report.html text) of the hand-written run, built once for this module."""
    run = make_run(tmp_path_factory.mktemp("report"))
    return run, write_report(run).read_text()


def test_report_is_self_contained_and_escaped(report: tuple[Path, str]) -> None:
    run, html = report
    assert escape(CONFIG) in html  # the config, escaped (it holds a </pre><script> comment)
    assert "abc1234" in html and "f00d" in html  # manifest: git sha, dataset fingerprint
    assert SCRIPT not in html and escape(SCRIPT) in html  # worst completion of the last step
    assert "<img src=x" not in html and "<b>bold</b>" not in html
    assert "<script" not in html.lower()
    assert re.search(r"https?://", html) is None
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == len(list((run / "plots").glob("*.png"))) == 12 + 4  # + the headline four
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)


# Untrusted text in every place of a run directory that the report shows.
PAYLOAD = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'


def evil_run(tmp_path: Path, where: str) -> Path:
    """A small run directory with PAYLOAD in one place."""
    run = tmp_path / "evil"
    run.mkdir()
    metric = PAYLOAD if where == "metric key" else "reward/mean"
    write_jsonl(run / "metrics.jsonl", [{"step": s, metric: s / 4} for s in (1, 2)])
    record = {"step": 2, "prompt_id": "p1", "reward": 1.0, "completion": "ok", "pred": "1"}
    record |= {"gold": "1", "finish_reason": "stop", "messages": [{"role": "user", "content": "q"}]}
    if where in ("completion", "prompt_id", "pred", "gold", "finish_reason"):
        record[where] = PAYLOAD
    elif where == "prompt":
        record["messages"] = [{"role": "user", "content": PAYLOAD}]
    elif where == "reward_components":
        record["reward_components"] = {PAYLOAD: 1.0}
    write_jsonl(run / "rollouts.jsonl", [record])
    manifest = {PAYLOAD: PAYLOAD} if where == "manifest" else {"git_sha": "abc"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "config.toml").write_text(f"# {PAYLOAD}\n" if where == "config" else "seed = 0\n")
    if where == "summary key":
        summary = {f"{PAYLOAD}_before_rl": 0.1, f"{PAYLOAD}_after_rl": 0.2}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.mark.parametrize(
    "where",
    [
        "completion", "prompt", "prompt_id", "pred", "gold", "finish_reason",
        "reward_components", "manifest", "config", "summary key", "metric key",
    ],
)  # fmt: skip
def test_untrusted_text_is_escaped(tmp_path: Path, where: str) -> None:
    html = write_report(evil_run(tmp_path, where)).read_text()
    assert "<script" not in html.lower() and "<img src=x" not in html
    assert re.search(r"<[^>]*onerror", html) is None  # no tag carries the handler
    shown = json.dumps({PAYLOAD: 1.0}) if where == "reward_components" else PAYLOAD
    assert str(escape(shown)) in html  # shown, as text


def headline(html: str) -> str:
    """The page from its top to the end of the collapsed metric table."""
    return html[: html.index("</details>")]


def test_report_headline_from_summary(report: tuple[Path, str]) -> None:
    top = headline(report[1])
    assert "greedy pass@1 (200 problems, split &#39;test&#39;)" in top
    assert "25.0 % &rarr; 50.0 %" in top and '<span class="gain up">+25.0 points</span>' in top
    assert "before RL (step 0): 95% CI [19.0, 31.0]" in top
    assert "after RL (step 4): 95% CI [43.0, 57.0]" in top
    facts = dict(re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", top))
    assert facts == {
        "model": "scratch", "task": "countdown", "algorithm": "grpo (ppo_clip loss)",
        "RL steps": "4", "SFT warm-up": "3 steps", "wall time": "5 min 12 s",
    }  # fmt: skip
    alts = re.findall(r'<img alt="([^"]*)"', top)
    assert alts == [
        "headline_accuracy",
        "headline_reward",
        "headline_length",
        "headline_entropy_kl",
    ]
    assert "<details>" in top  # the metric table: present and closed


def test_headline_from_metrics_without_summary(tmp_path: Path) -> None:
    """A run stopped before its summary: held-out evals from metrics.jsonl, the rest n/a."""
    run = tmp_path / "stopped"
    run.mkdir()
    evals = [
        {"step": 0, "eval/pass@1": 0.5, "eval/pass@1_lo": 0.4, "eval/pass@1_hi": 0.6},
        {"step": 2, "reward/mean": 0.3},
        {"step": 4, "eval/pass@1": 0.4, "eval/n_problems": 100},
    ]
    write_jsonl(run / "metrics.jsonl", evals)
    top = headline(write_report(run).read_text())
    assert "(100 problems)" in top and "50.0 % &rarr; 40.0 %" in top
    assert '<span class="gain down">-10.0 points</span>' in top
    assert "before RL (step 0): 95% CI [40.0, 60.0]" in top
    assert "after RL (step 4): no CI logged" in top
    facts = dict(re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", top))
    assert facts == {
        "model": "n/a", "task": "n/a", "algorithm": "n/a", "RL steps": "4", "wall time": "n/a",
    }  # fmt: skip
    alts = re.findall(r'<img alt="([^"]*)"', top)
    assert alts == ["headline_accuracy", "headline_reward"]  # no length, entropy or KL logged


def test_headline_without_heldout_evals_says_na(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [{"step": s, "reward/mean": s / 4} for s in (1, 2)])
    top = headline(write_report(run).read_text())
    assert "n/a &rarr; n/a" in top and '<span class="gain flat">n/a</span>' in top
    assert "before RL: n/a (no held-out eval at step 0)" in top
    assert "after RL: n/a (no held-out eval)" in top


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "n/a"), (-1.0, "n/a"), (0.04, "0.0 s"), (59.94, "59.9 s"), (59.96, "1 min 00 s"),
     (312.4, "5 min 12 s"), (3599.4, "59 min 59 s"), (3600, "1 h 00 min"), (7410, "2 h 03 min")],
)  # fmt: skip
def test_wall_text(seconds: float | None, text: str) -> None:
    assert wall_text(seconds) == text


def test_report_tables(report: tuple[Path, str]) -> None:
    html = report[1]
    assert "Before / after" in html
    assert "accuracy (summary.json)" in html  # 0.25 -> 0.5
    assert "step (summary.json)" not in html  # step_before_rl / step_after_rl are not metrics
    assert "eval/pass@1 (step 2 -&gt; 4)" in html  # 0.05 -> 0.1
    assert "<td>0.1 @ 1</td><td>0.4 @ 4</td>" in html  # reward/mean first/last


def test_before_after_leaves_out_eval_bookkeeping(tmp_path: Path) -> None:
    run = tmp_path / "evals"
    run.mkdir()
    row = {"eval/pass@1_lo": 0.1, "eval/pass@1_hi": 0.3, "eval/n_problems": 30, "eval/time_s": 2.0}
    write_jsonl(run / "metrics.jsonl", [{"step": s, "eval/pass@1": s / 8, **row} for s in (0, 4)])
    labels = [r[0] for r in before_after_rows(run, load_metrics(run / "metrics.jsonl"))]
    assert labels == ["eval/pass@1 (step 0 -> 4)"]


def test_report_without_rollouts_or_summary(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [{"step": s, "reward/mean": s / 4} for s in (1, 2)])
    html = write_report(run).read_text()
    assert "no rollouts.jsonl" in html and "no config.toml" in html
    assert "accuracy (summary.json)" not in html


def test_summary_rows_first_last_by_hand() -> None:
    rows = {r[0]: r for r in summary_rows(metric_rows())}
    assert list(rows)[:3] == ["reward/mean", "reward/accuracy", "eval/pass@1"]  # headline first
    assert rows["loss/kl"][1:3] == ["0.002 @ 1", "0.008 @ 4"]  # the None at step 3 is skipped
    assert rows["eval/pass@1"][1:3] == ["0.05 @ 2", "0.1 @ 4"]
    assert rows["reward/mean"][3] == pytest.approx(0.3)


def test_pick_samples_from_last_step() -> None:
    best, worst = pick_samples(rollout_rows(), n=2)
    assert [r["reward"] for r in best] == [1.1, 1.0]
    assert [r["reward"] for r in worst] == [-0.5, 0.1]
    assert {r["step"] for r in best + worst} == {3}


def test_compare_overlays_common_curves(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a")
    b = tmp_path / "b"
    b.mkdir()
    write_jsonl(
        b / "metrics.jsonl", [{"step": s, "reward/mean": s / 5, "loss/kl": 0.1} for s in (1, 2)]
    )
    paths = compare_runs(a, b, tmp_path / "cmp")
    assert [p.name for p in paths] == ["compare_loss.png", "compare_reward.png", "compare.html"]
    assert all(p.stat().st_size > 1000 for p in paths)
    html = paths[-1].read_text()
    assert html.count('src="data:image/png;base64,') == 2 and re.search(r"https?://", html) is None


def test_compare_without_common_keys_is_an_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for run, key in ((a, "reward/mean"), (b, "sft/loss")):
        run.mkdir()
        write_jsonl(run / "metrics.jsonl", [{"step": 1, key: 1.0}])
    with pytest.raises(MathrlError, match="no metric key in common"):
        compare_runs(a, b, tmp_path / "cmp")


# ---------------------------------------------------------------- CLI through mathrl.cli.main


@pytest.fixture
def mathrl_main(monkeypatch: pytest.MonkeyPatch):
    """Run `mathrl ARGS` through cli.main."""

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["mathrl", *args])
        try:
            cli.main()
        except SystemExit as e:
            return int(e.code or 0)
        return 0

    return run


def test_cli_report(tmp_path: Path, mathrl_main, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    assert mathrl_main("report", str(run), "--prompt-id", "p2") == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    assert (run / "plots" / "prompt_p2.png").stat().st_size > 1000
    assert mathrl_main("report", str(tmp_path / "nothing")) == 2
    assert "no such metrics file" in capsys.readouterr().err


def test_cli_compare(tmp_path: Path, mathrl_main, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = make_run(tmp_path, "a", warmup=False), make_run(tmp_path, "b", scale=2.0, warmup=False)
    assert mathrl_main("compare", str(a), str(b), "--out", str(tmp_path / "cmp")) == 0
    printed = capsys.readouterr().out.split()
    assert printed[-1] == str(tmp_path / "cmp" / "compare.html")
    assert {Path(p).stem for p in printed[:-1]} == {
        "compare_eval", "compare_loss", "compare_optim", "compare_policy", "compare_reward",
        "compare_rollout", "compare_time",
    }  # fmt: skip


def test_cli_help_texts(mathrl_main, capsys: pytest.CaptureFixture[str]) -> None:
    assert mathrl_main("report", "--help") == 0
    assert "--prompt-id" in capsys.readouterr().out
    assert mathrl_main("compare", "--help") == 0
    assert "overlay PNGs" in capsys.readouterr().out
