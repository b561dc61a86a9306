"""evaluate / probe on a tiny scratch model, and the `eval` / `probe` CLI commands."""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from mathrl.config import load_config
from mathrl.data import load_pass_rates, make_task
from mathrl.errors import ConfigError
from mathrl.eval.evaluate import eval_engine, eval_kwargs, evaluate, write_eval
from mathrl.eval.metrics import pass_at_k, summarize
from mathrl.eval.probe import TOO_HARD, probe
from mathrl.groups import score_examples
from mathrl.models.loading import load_model
from mathrl.models.scratch import build_scratch_model
from mathrl.rewards import RewardPool, RewardResult
from mathrl.rollout.chat import prompt_token_ids
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.sampler import prompt_seed, resolve_seeds
from mathrl.rollout.types import Completion, GenerationResult, RolloutEngine, SamplingParams

COUNTDOWN = [
    "task.name=countdown",
    "data.countdown_train_size=200",
    "data.countdown_test_size=50",
    "data.countdown_max_number=10",
    "data.countdown_max_target=30",
]


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, COUNTDOWN)


@pytest.fixture(scope="module")
def task(cfg):
    return make_task(cfg)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, task):
    out = tmp_path_factory.mktemp("scratch")
    return build_scratch_model(out, task.corpus()[:200], hidden=64, layers=2, heads=4)


@pytest.fixture(scope="module")
def policy(model_dir):
    return load_model(str(model_dir), dtype="float32", device="cpu")


def run_eval(policy, task, cfg):
    model, tokenizer = policy
    return evaluate(
        model,
        tokenizer,
        task,
        cfg=cfg,
        split="test",
        limit=8,
        n=4,
        ks=(1, 2, 4),
        max_new_tokens=12,
        batch_size=16,
        seed=0,
        progress=False,
    )


def test_evaluate_summary_records_and_determinism(policy, task, cfg, tmp_path):
    result = run_eval(policy, task, cfg)
    s = result.summary
    fractions = ["pass@1", "pass@1_lenient", "mean@4", "pass@2", "pass@4", "maj@1", "maj@2"]
    fractions += ["maj@4", "truncated_frac", "sampled_truncated_frac", "pass@1_lo", "pass@1_hi"]
    for key in fractions:
        assert 0.0 <= s[key] <= 1.0, key
    assert s["n_problems"] == 8 and s["split"] == "test" and s["n"] == 4
    assert s["entropy"] > 0 and 0 < s["len_mean"] <= 12
    assert len(result.records) == 8
    for r in result.records:
        assert len(r["samples"]) == 4
        assert {"prompt_id", "question", "gold", "greedy", "pass_rate"} <= set(r)
        assert {"completion", "pred", "correct", "reward"} <= set(r["samples"][0])
    greedy = [r["greedy"]["correct"] for r in result.records]
    assert s["pass@1"] == sum(greedy) / 8  # recomputed from the records
    assert s["mean@4"] == pytest.approx(sum(r["pass_rate"] for r in result.records) / 8)
    recomputed = summarize(result.records, (1, 2, 4))
    assert recomputed == {k: s[k] for k in recomputed}
    state = torch.random.get_rng_state()
    again = run_eval(policy, task, cfg)
    assert again.records == result.records  # same seed: same problems, same completions
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched

    examples, summary = write_eval(result, tmp_path)
    assert len(examples.read_text().splitlines()) == 8
    assert json.loads(summary.read_text()) == s


def test_probe_writes_pass_rates(policy, task, cfg, tmp_path):
    model, tokenizer = policy
    result = probe(
        model,
        tokenizer,
        task,
        cfg=cfg,
        limit=4,
        n=4,
        group_size=4,
        max_new_tokens=8,
        batch_size=16,
        progress=False,
        out_dir=tmp_path,
    )
    assert result.stats["n_prompts"] == 4 and result.stats["n_samples"] == 16
    assert result.stats["verdict"] == TOO_HARD  # a random model never solves Countdown
    rates = load_pass_rates(tmp_path / "pass_rates.jsonl")
    assert len(rates) == 4 and set(rates.values()) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    summary = json.loads((tmp_path / "probe_summary.json").read_text())
    assert summary["verdict"] == TOO_HARD and summary["split"] == "train"


def parity_reward(text: str, gold: str) -> RewardResult:
    """Correct iff the completion has an even length; pred carries the example's gold."""
    ok = len(text) % 2 == 0
    return RewardResult(float(ok), {}, f"{gold}:{len(text) % 3}", ok, ok, True, "ok")


class ParityTask:
    """The Countdown task with a reward a random model passes about half the time."""

    def __init__(self, base):
        self.base, self.name, self.fingerprint = base, "parity", base.fingerprint

    def examples(self, split):
        return self.base.examples(split)

    def messages(self, ex):
        return self.base.messages(ex)

    def reward_call(self, ex):
        return parity_reward, (ex.gold,)


def test_evaluate_metrics_consistent_with_records(policy, task, cfg):
    """Non-trivial scores: records align with their examples across chunks; metrics recompute."""
    model, tokenizer = policy
    with RewardPool(timeout_s=5.0, workers=0) as pool:
        result = evaluate(
            model,
            tokenizer,
            ParityTask(task),
            cfg=cfg,
            limit=10,
            n=4,
            ks=(1, 2, 4),
            max_new_tokens=12,
            batch_size=8,
            seed=3,
            progress=False,
            pool=pool,
        )
    s, records = result.summary, result.records
    for r in records:  # batch_size 8 // n 4: five chunks of 2 problems each
        assert all(x["pred"].startswith(r["gold"] + ":") for x in [r["greedy"], *r["samples"]])
        assert r["greedy"]["correct"] == (len(r["greedy"]["completion"]) % 2 == 0)
    counts = [sum(x["correct"] for x in r["samples"]) for r in records]
    assert 0 < s["mean@4"] < 1, "the parity reward should give mixed outcomes"
    assert s["mean@4"] == pytest.approx(sum(counts) / 40)
    assert s["pass@2"] == pytest.approx(sum(pass_at_k(4, c, 2) for c in counts) / 10)
    assert s["pass@4"] == sum(c > 0 for c in counts) / 10
    assert s["mean@4"] <= s["pass@2"] <= s["pass@4"]
    assert s["maj@1"] == sum(r["samples"][0]["correct"] for r in records) / 10
    assert s["pass@1"] == sum(r["greedy"]["correct"] for r in records) / 10


def test_evaluate_calls_the_engine_with_prompts_by_length_and_keeps_problem_order(
    policy, task, cfg
):
    """Engine calls take the problems in order of prompt length (less padding per
    prefill); the records come back in problem order, the same as one call gives."""
    model, tokenizer = policy
    engine = HFEngine(model, tokenizer, batch_size=3)
    calls, real = [], engine.generate

    def spy(prompts, sampling, seeds=None):
        calls.append([len(p) for p in prompts])
        return real(prompts, sampling, seeds=seeds)

    engine.generate = spy
    kw = dict(limit=12, max_new_tokens=6, seed=3, progress=False)
    split = evaluate(model, tokenizer, task, batch_size=3, engine=engine, **kw)
    flat = [n for call in calls for n in call]
    assert len(calls) == 4 and flat == sorted(flat) and len(set(flat)) > 1, calls
    whole = evaluate(model, tokenizer, task, batch_size=64, cfg=cfg, **kw)
    assert [r["prompt_id"] for r in split.records] == [r["prompt_id"] for r in whole.records]
    for a, b in zip(split.records, whole.records, strict=True):  # log-probs: float rounding
        assert a["greedy"]["logprob_sum"] == pytest.approx(b["greedy"]["logprob_sum"], abs=1e-4)
        assert {**a["greedy"], "logprob_sum": 0} == {**b["greedy"], "logprob_sum": 0}


class SeedEcho(RolloutEngine):
    """Writes each completion as "seed:sample" (the seed its prompt sampled with) and
    records each call's prompt lengths and the seeds it was given."""

    def __init__(self):
        self.calls, self.given = [], []

    def generate(self, prompts, sampling, seeds=None):
        self.calls.append([len(p) for p in prompts])
        self.given.append(seeds)
        seeds = resolve_seeds(sampling, len(prompts), seeds)
        comps = [
            Completion(i, k, p, [1], f"{seeds[i]}:{k}", "eos", [-0.5])
            for i, p in enumerate(prompts)
            for k in range(sampling.n)
        ]
        return GenerationResult(comps)


@pytest.mark.parametrize("per_call", [0, 1, 3, 100])
def test_score_examples_seeds_by_index_and_keeps_example_order(policy, task, per_call):
    """Example i samples with prompt_seed(seed, i) under every sampling, whatever the
    chunking; calls of per_call prompts take them by length; rows come back in order."""
    _, tokenizer = policy
    examples = task.examples("test")[:7]
    samplings = [SamplingParams(n=1, greedy=True, seed=4), SamplingParams(n=3, seed=9)]
    engine = SeedEcho()
    with RewardPool(timeout_s=5.0, workers=0) as pool:
        out = score_examples(engine, pool, task, tokenizer, examples, samplings, per_call=per_call)
    assert len(out) == 7 and all(len(rows) == 2 for rows in out)
    for i, rows in enumerate(out):
        for sampling, got in zip(samplings, rows, strict=True):
            want = [f"{prompt_seed(sampling.seed, i)}:{k}" for k in range(sampling.n)]
            assert [r["completion"] for r in got] == want
    chunk = per_call or 7
    assert len(engine.calls) == 2 * -(-7 // chunk)  # both samplings per chunk
    lengths = [n for call in engine.calls[::2] for n in call]
    expected = [len(prompt_token_ids(tokenizer, task.messages(ex))) for ex in examples]
    assert lengths == (expected if chunk >= 7 else sorted(expected))


def test_score_examples_without_seed_lets_the_engine_draw(policy, task):
    _, tokenizer = policy
    engine = SeedEcho()
    with RewardPool(timeout_s=5.0, workers=0) as pool:
        out = score_examples(
            engine, pool, task, tokenizer, task.examples("test")[:2], [SamplingParams(n=2)]
        )
    assert engine.given == [None] and [len(rows[0]) for rows in out] == [2, 2]


def test_engine_is_built_from_the_config(policy, task, cfg):
    """No engine passed: the config's rollout settings build it; neither is an error."""
    model, tokenizer = policy
    lean = load_config(None, [*COUNTDOWN, "rollout.lean_decode=false"])
    engine = eval_engine(None, lean, model, tokenizer, batch_size=5)
    assert isinstance(engine, HFEngine) and engine.batch_size == 5 and not engine.lean_decode
    given = SeedEcho()
    assert eval_engine(given, None, model, tokenizer, batch_size=5) is given
    with pytest.raises(ConfigError, match="engine or the config"):
        evaluate(model, tokenizer, task, limit=2, progress=False)
    with pytest.raises(ConfigError, match="engine or the config"):
        probe(model, tokenizer, task, limit=2, n=2, progress=False)


def run_cli(monkeypatch, args):
    """Run the real `mathrl` entry point in-process."""
    from mathrl import cli

    monkeypatch.setattr(sys, "argv", ["mathrl", *args])
    try:
        cli.main()
    except SystemExit as exc:
        return exc.code or 0
    return 0


SMALL = [
    "rollout.max_new_tokens=8",
    "rollout.batch_size=8",
    "eval.n=2",
    "eval.k=[1,2]",
    "eval.limit=4",
]


def sets(items):
    return [a for item in COUNTDOWN + SMALL for a in ("--set", item)] + items


def test_cli_eval_two_models_side_by_side(monkeypatch, model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    m = str(model_dir)
    code = run_cli(monkeypatch, ["eval", "-m", m, "-m", m, *sets(["--out", str(out), "-q"])])
    assert code == 0
    err = capsys.readouterr().err
    assert f"to {out}" in err and "pass@1" in err
    table = json.loads((out / "eval_table.json").read_text())
    labels = [row["label"] for row in table["models"]]
    assert len(labels) == 2 and labels[0] != labels[1]
    for label in labels:
        assert (out / label / "eval_summary.json").is_file()
        assert len((out / label / "eval_examples.jsonl").read_text().splitlines()) == 4
    assert (out / "config.toml").is_file()


def test_cli_probe(monkeypatch, model_dir, tmp_path, capsys):
    out = tmp_path / "pr"
    args = ["probe", "-m", str(model_dir), "--limit", "3", "--n", "2", "--out", str(out), "-q"]
    assert run_cli(monkeypatch, args[:1] + sets(args[1:])) == 0
    err = capsys.readouterr().err
    assert f"verdict: {TOO_HARD}" in err and str(out) in err
    assert len((out / "pass_rates.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "probe_summary.json").read_text())["n"] == 2


def test_cli_eval_missing_model_is_one_line(monkeypatch, tmp_path, capsys):
    out = tmp_path / "never"
    code = run_cli(monkeypatch, ["eval", "--model", "/nonexistent", "--out", str(out)])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err == "error: model not found: /nonexistent"
    assert not out.exists()


def test_eval_has_its_own_batch_size():
    """eval.batch_size, else max(rollout.batch_size, 64): a preset's small training batch
    (GSM8K smoke: 8) does not make eval decode 8 rows at a time."""

    def batch(*sets: str) -> int:
        return eval_kwargs(load_config(None, list(sets), env=False))["batch_size"]

    assert batch("rollout.batch_size=8") == 64
    assert batch("rollout.batch_size=256") == 256
    assert batch("rollout.batch_size=8", "eval.batch_size=16") == 16
    assert load_config("gsm8k/smoke", env=False).rollout.batch_size == 8  # the case above
