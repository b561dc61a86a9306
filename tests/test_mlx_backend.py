"""backend = "mlx": the RL and SFT updates equal torch's, the commands run end to end, and
bad input gets one line.

Equal updates: the same scratch model loaded in torch and in MLX, the same groups, one
step each; the gradients (through an optimizer that records them) agree to 1e-5 of their
scale and the metrics to 1e-5. End to end: `mathrl train|sft|eval|probe|loop` with
--set backend=mlx on the tiny Countdown config; checkpoints load in mlx_lm; a killed and
resumed run equals an uninterrupted one bitwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

mx = pytest.importorskip("mlx.core")

from mathrl.config import load_config  # noqa: E402
from mathrl.errors import ConfigError  # noqa: E402
from mathrl.io import read_jsonl  # noqa: E402
from test_rl_step import make_groups  # noqa: E402

TEXTS = ["12 + 7 = 19, 3 * 4 = 12. Final: 19 (so 8 - 2 = 6)"] * 40


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory) -> Path:
    from mathrl.models.scratch import build_scratch_model

    out = tmp_path_factory.mktemp("mlx") / "scratch"
    build_scratch_model(out, TEXTS, hidden=32, layers=2, heads=2, vocab_size=300, seed=3)
    return out


def both_models(path: Path):
    from mathrl.models.loading import load_model
    from mathrl.models.mlx_model import load_mlx_model

    tm, tok = load_model(str(path), device="cpu")
    mm, _ = load_mlx_model(str(path))
    return tm, mm, tok


class TorchRecorder:
    """Keeps the gradients each torch step would apply; changes no weight."""

    def __init__(self, model) -> None:
        self.model, self.steps = model, []

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.steps.append(
            {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
        )


class MlxRecorder:
    """The same for an MLX step (optimizer.update(model, grads))."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.state: dict = {}

    def update(self, model, grads) -> None:
        from mlx.utils import tree_flatten

        self.steps.append({k: np.array(v) for k, v in tree_flatten(grads)})


def assert_grads_equal(tg: dict, mg: dict) -> None:
    assert tg.keys() <= mg.keys() and tg
    for name, grad in tg.items():
        scale = max(1e-3, float(grad.abs().max()))
        diff = float(np.abs(grad.numpy() - mg[name]).max())
        assert diff <= 1e-5 * scale + 1e-8, (name, diff, scale)


STEP_CASES = {
    "grpo-token-mean": ([], {}),
    "ppo-mu2-kl-k3": (
        ["train.mu=2", "train.kl_coef=0.1", "train.kl_estimator=k3", "train.clip_eps=0.1"],
        {},
    ),
    "buffer-seq-mean": (
        ["train.loss_agg=seq-mean-token-mean", "train.policy_loss=vanilla"],
        {"rollout_logprobs": True},
    ),
    "gspo-tis": (["train.policy_loss=gspo", "train.tis_cap=1.5"], {}),
    "dr-grpo-sum-norm-micro2": (
        ["train.loss_agg=seq-mean-token-sum-norm", "train.micro_batch_size=2"],
        {},
    ),
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_rl_step_equals_torch(scratch_dir, case):
    from mathrl.backends.mlx import MlxBackend
    from mathrl.backends.torch import Reference
    from mathrl.rl.step import train_step

    sets, kw = STEP_CASES[case]
    cfg = load_config(
        overrides=["train.group_size=4", "train.grad_clip=0", "rollout.max_new_tokens=8", *sets],
        env=False,
    )
    tm, mm, tok = both_models(scratch_dir)
    groups = make_groups(vocab=len(tok), low=3)  # not the special tokens
    advantages = torch.tensor([1.0, -1.0, 0.0, 0.5] * 3)
    t_ref = m_ref = None
    if cfg.train.kl_coef > 0:  # a reference that differs, so the KL term has a gradient
        import copy

        t_ref_model = copy.deepcopy(tm)
        m_ref = MlxBackend().reference(cfg, mm)
        with torch.no_grad():
            for p in t_ref_model.parameters():
                p.add_(0.05)
        from mlx.utils import tree_map

        m_ref.update(tree_map(lambda a: a + 0.05, m_ref.parameters()))
        t_ref = Reference(t_ref_model)
    t_opt, m_opt = TorchRecorder(tm), MlxRecorder()
    t_metrics = train_step(cfg, tm, t_ref, t_opt, groups, advantages, 0, **kw)
    m_metrics = train_step(cfg, mm, m_ref, m_opt, groups, advantages, 0, backend=MlxBackend(), **kw)
    assert len(t_opt.steps) == len(m_opt.steps) == cfg.train.mu
    for tg, mg in zip(t_opt.steps, m_opt.steps, strict=True):
        assert_grads_equal(tg, mg)
    assert t_metrics.keys() == m_metrics.keys()
    for k, v in t_metrics.items():
        assert m_metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
    assert t_metrics["train/trained_seqs"] == (12 if cfg.train.kl_coef else 9)


def test_sft_update_equals_torch(scratch_dir):
    from mathrl.backends.mlx import MlxBackend
    from mathrl.backends.torch import TorchBackend

    tm, mm, tok = both_models(scratch_dir)
    rows = [(tok.encode(t)[: 10 + 3 * i], 4 + i) for i, t in enumerate(TEXTS[:4])]
    n_tokens = sum(len(ids) - p for ids, p in rows)
    ts, ms = TorchBackend(), MlxBackend()
    t_loss = ts.sft_backward(tm, rows[:2], n_tokens, 0) + ts.sft_backward(tm, rows[2:], n_tokens, 0)
    m_loss = ms.sft_backward(mm, rows[:2], n_tokens, 0) + ms.sft_backward(mm, rows[2:], n_tokens, 0)
    assert m_loss == pytest.approx(t_loss, rel=1e-5)
    from mlx.utils import tree_flatten

    mg = {k: np.array(v) for k, v in tree_flatten(ms.grads)}
    assert_grads_equal({n: p.grad for n, p in tm.named_parameters()}, mg)


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_lr_schedule_equals_torch(kind):
    from mathrl.backends.mlx import Schedule, make_optimizer
    from mathrl.backends.torch import lr_schedule

    cfg = load_config(
        overrides=[f"train.schedule={kind}", "train.warmup_steps=3", "train.steps=10"], env=False
    )
    t_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    t_sched = lr_schedule(cfg, t_opt)
    m_sched = Schedule(make_optimizer(0.0, cfg.train.lr), cfg.train.lr, 3, 10, kind)
    for _ in range(12):
        assert m_sched.get_last_lr()[0] == pytest.approx(t_sched.get_last_lr()[0], rel=1e-12)
        t_opt.step()
        t_sched.step()
        m_sched.step()


def test_adamw_step_equals_torch():
    """mlx AdamW with bias correction takes torch's steps (3 of them, weight decay on)."""
    from mathrl.backends.mlx import make_optimizer

    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 5)).astype(np.float32)
    grads = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(3)]
    tp = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    t_opt = torch.optim.AdamW([tp], lr=1e-2, weight_decay=0.1)
    import mlx.nn as nn

    class W(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = mx.array(w0)

    m = W()
    m_opt = make_optimizer(0.1, 1e-2)
    for g in grads:
        tp.grad = torch.from_numpy(g)
        t_opt.step()
        m_opt.update(m, {"w": mx.array(g)})
    np.testing.assert_allclose(np.array(m.w), tp.detach().numpy(), atol=1e-6)


# ---- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.autocast=bfloat16"], "model.autocast = 'bfloat16' is not supported"),
        (["rollout.engine=openai"], "rollout.engine = 'openai' is not supported with backend"),
        (["model.device=cuda"], "model.device = 'cuda' is not supported with backend = 'mlx'"),
    ],
)
def test_unsupported_keys_are_refused_by_name(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(overrides=["backend=mlx", *sets], env=False)


def test_mlx_engine_on_torch_backend_is_refused():
    with pytest.raises(ConfigError, match="rollout.engine = 'mlx' needs backend = 'mlx'"):
        load_config(overrides=["rollout.engine=mlx"], env=False)


def test_missing_mlx_names_the_extra(monkeypatch):
    import importlib.util

    from mathrl.errors import MathrlError
    from mathrl.models.backends import require_backend

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlx_lm" else real(name, *a)
    )
    with pytest.raises(MathrlError, match=r"needs mlx_lm: pip install 'mathrl\[mlx\]'"):
        require_backend("mlx")


# ---- end to end ----------------------------------------------------------------------


def test_train_resume_and_outputs(run_train, tmp_path, monkeypatch):
    """4 steps straight == a run that dies in step 3, then --resume to 4 (bitwise on MLX
    CPU); the checkpoint is an mlx-lm model that mlx_lm.load reads and generates from."""
    from mlx_lm import generate, load

    import mathrl.trainer as trainer_mod

    straight, parts = tmp_path / "straight", tmp_path / "parts"
    common = (
        "backend=mlx",
        "train.kl_coef=0.05",  # its reference must be the start weights after the resume too
        "train.schedule=cosine",  # restored mid-way
        "train.warmup_steps=1",
        "rollout.max_new_tokens=16",  # lengths vary, so the brevity reward does
        'task.rewards=[{fn = "reward_fixtures:brevity", completions = "text"}]',
    )
    assert run_train(straight, *common, "train.steps=4").code == 0
    real, calls = trainer_mod.train_step, {"n": 0}

    def dies_in_step_3(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("out of memory in step 3")
        return real(*a, **kw)

    monkeypatch.setattr(trainer_mod, "train_step", dies_in_step_3)
    assert run_train(parts, *common, "train.steps=4").code == 3
    monkeypatch.setattr(trainer_mod, "train_step", real)
    # keep_last 1: the checkpoint the resume loads is rotated away before the next save
    res = run_train(
        parts, *common, "train.steps=4", "checkpoint.keep_last=1",
        extra=("--resume", "--allow-config-change"),
    )  # fmt: skip
    assert res.code == 0, res.err
    ckpt = "checkpoints/step_00000004"
    for name in ("model/model.safetensors", "optimizer.safetensors"):
        a, b = mx.load(str(straight / ckpt / name)), mx.load(str(parts / ckpt / name))
        assert a.keys() == b.keys() and a
        for k in a:
            assert mx.array_equal(a[k], b[k]).item(), (name, k)

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]

    assert strip(read_jsonl(straight / "metrics.jsonl")) == strip(
        read_jsonl(parts / "metrics.jsonl")
    )
    assert read_jsonl(straight / "rollouts.jsonl") == read_jsonl(parts / "rollouts.jsonl")
    rows = read_jsonl(straight / "metrics.jsonl")
    assert all(r["rollout/logprob_diff"] < 1e-4 for r in rows if "rollout/logprob_diff" in r)
    assert all(r["optim/grad_norm"] > 0 for r in rows if "optim/grad_norm" in r)  # it trained
    assert any(r.get("loss/kl", 0) > 0 for r in rows if r["step"] > 2)
    manifest = json.loads((straight / ckpt / "manifest.json").read_text())
    assert manifest["backend"] == "mlx"
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["steps"] == 4 and (straight / "report.html").is_file()
    model, tokenizer = load(str(straight / ckpt / "model"))
    text = generate(model, tokenizer, prompt="3 + 4", max_tokens=5)
    assert isinstance(text, str)


def test_a_torch_only_loss_is_refused_on_mlx():
    from mathrl.algorithms import POLICY_LOSSES, register_policy_loss
    from mathrl.backends import backend_for

    register_policy_loss("zz_torch_only")(lambda *a, **k: None)
    try:
        cfg = load_config(overrides=["backend=mlx", "train.policy_loss=zz_torch_only"], env=False)
        with pytest.raises(
            ConfigError, match="train.policy_loss = 'zz_torch_only' has no MLX form"
        ):
            backend_for(cfg)
    finally:
        POLICY_LOSSES.remove("zz_torch_only")


def test_several_ranks_are_refused(run_train, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = run_train(tmp_path / "r", "backend=mlx")
    assert res.code != 0
    assert "backend = 'mlx' runs in one process: run it without torchrun / --nproc" in res.err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_decoupled_loop_two_iterations(run_cli, tiny_config, tmp_path):
    """`mathrl loop` on MLX: rollout buffers, then training from them, twice; the second
    iteration starts from the first's checkpoint."""
    out = tmp_path / "loop"
    res = run_cli(
        "loop", "-c", tiny_config, "--out", out, "--iters", "2", "--max-steps", "4",
        "--set", "backend=mlx", "--set", "warmup.steps=0",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert sorted(p.name for p in (out / "buffer").iterdir())[:2] == [
        "iter_000.jsonl",
        "iter_001.jsonl",
    ]
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl") if "loss/total" in m] == [
        1,
        2,
        3,
        4,
    ]
    assert (out / "checkpoints" / "step_00000004" / "optimizer.safetensors").is_file()


def test_sft_eval_and_probe_commands(run_cli, tiny_config, tmp_path):
    """SFT writes an mlx-lm checkpoint; eval of it on MLX gives the completions eval on
    torch gives (same model, same seeds); probe runs."""
    sft = tmp_path / "sft"
    assert run_cli("sft", "-c", tiny_config, "--out", sft, "--set", "backend=mlx").code == 0
    model = sft / "checkpoints" / "step_00000003" / "model"
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()
    runs = {}
    for backend in ("mlx", "torch"):
        ev = tmp_path / f"eval-{backend}"
        res = run_cli(
            "eval", "-c", tiny_config, "--model", sft, "--out", ev, "--set", f"backend={backend}",
            "--set", "eval.n=2", "--set", "eval.temperature=1.0",
        )  # fmt: skip
        assert res.code == 0, res.err
        assert json.loads((ev / "eval_summary.json").read_text())["n_problems"] == 20
        runs[backend] = read_jsonl(ev / "eval_examples.jsonl")
    assert len(runs["mlx"]) == 20

    def split(rows: list[dict]) -> tuple[list, list]:
        """(records without log-prob sums, the sums): the sums differ by float rounding."""
        sums = []
        for r in rows:
            for c in [r["greedy"], *r["samples"]]:
                sums.append(c.pop("logprob_sum"))
        return rows, sums

    (m_rows, m_sums), (t_rows, t_sums) = split(runs["mlx"]), split(runs["torch"])
    assert m_rows == t_rows  # the same tokens, texts, rewards
    assert len(m_sums) == 60
    np.testing.assert_allclose(m_sums, t_sums, rtol=1e-4, atol=1e-3)
    pr = tmp_path / "probe"
    res = run_cli(
        "probe", "-c", tiny_config, "--model", sft, "--out", pr, "--samples", "4",
        "--set", "backend=mlx",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert len(read_jsonl(pr / "pass_rates.jsonl")) == 60  # the train split


def test_lora_trains_adapters_only_and_resumes(run_train, tmp_path):
    """model.lora on MLX: only the adapters move (base weights equal the scratch model's),
    the checkpoint is mlx-lm's base + adapters layout (mlx_lm.load with adapter_path reads
    it), resume is bitwise, and eval loads it merged."""
    from mlx_lm import load

    from mathrl.models.mlx_model import load_mlx_model

    lora = (
        "backend=mlx",
        "model.lora.r=4",
        "model.lora.alpha=8",
        "train.kl_coef=0.05",
        "rollout.max_new_tokens=16",  # lengths vary, so the brevity reward does
        'task.rewards=[{fn = "reward_fixtures:brevity", completions = "text"}]',
    )
    straight, parts = tmp_path / "straight", tmp_path / "parts"
    assert run_train(straight, *lora, "train.steps=3", "warmup.steps=0").code == 0
    assert run_train(parts, *lora, "train.steps=2", "warmup.steps=0").code == 0
    res = run_train(
        parts, *lora, "train.steps=3", "warmup.steps=0", extra=("--resume", "--allow-config-change")
    )
    assert res.code == 0, res.err
    ckpt = straight / "checkpoints" / "step_00000003" / "model"
    for name in ("model.safetensors", "adapters.safetensors"):
        a = mx.load(str(ckpt / name))
        b = mx.load(str(parts / "checkpoints" / "step_00000003" / "model" / name))
        assert all(mx.array_equal(a[k], b[k]).item() for k in a) and a.keys() == b.keys()
    base = mx.load(str(ckpt / "model.safetensors"))
    start = mx.load(str(straight / "scratch_model" / "model.safetensors"))
    assert base.keys() == start.keys()
    assert all(mx.array_equal(base[k], start[k]).item() for k in base)  # frozen
    adapters = mx.load(str(ckpt / "adapters.safetensors"))
    assert adapters and all(k.endswith(("lora_a", "lora_b")) for k in adapters)
    assert any(k.endswith("q_proj.lora_b") for k in adapters)
    assert max(float(mx.abs(v).max()) for k, v in adapters.items() if k.endswith("lora_b")) > 0
    # mlx-lm reads it; mathrl's merged load gives the same logits
    model, _ = load(str(ckpt), adapter_path=str(ckpt))
    merged, _ = load_mlx_model(str(ckpt))
    ids = mx.array([[5, 6, 7, 8, 9]])
    assert float(mx.abs(model(ids) - merged(ids)).max()) < 1e-5
    plain, _ = load_mlx_model(str(straight / "scratch_model"))
    assert float(mx.abs(plain(ids) - merged(ids)).max()) > 1e-6  # the adapters count
    # convert --to hf merges the adapters: transformers' logits are the trained model's
    from mathrl.models.loading import load_model
    from mathrl.models.mlx_convert import to_hf

    to_hf(str(ckpt), tmp_path / "hf")
    hf, _ = load_model(str(tmp_path / "hf"), device="cpu")
    with torch.no_grad():
        hf_logits = hf(torch.tensor([[5, 6, 7, 8, 9]])).logits.numpy()
    assert np.abs(hf_logits - np.array(merged(ids))).max() < 1e-4
    # a torch resume of this MLX checkpoint says so in one line
    res = run_train(
        straight, *lora[1:], "train.steps=4", extra=("--resume", "--allow-config-change")
    )
    assert res.code == 2 and "was written by backend = 'mlx': resume it there (this run" in res.err


def test_qlora_on_a_quantised_mlx_model(run_train, tmp_path):
    """LoRA on an 8-bit MLX model: the base stays quantised through training and in the
    checkpoint, which mlx_lm.load reads with its adapters."""
    from mlx_lm import load

    from mathrl.models.mlx_convert import to_mlx
    from mathrl.models.scratch import build_scratch_model

    base = build_scratch_model(
        tmp_path / "base", TEXTS, hidden=64, layers=1, heads=2, vocab_size=300
    )
    to_mlx(str(base), tmp_path / "q8", bits=8)
    res = run_train(
        tmp_path / "run", "backend=mlx", f"model.path={tmp_path / 'q8'}", "model.lora.r=4",
        "train.kl_coef=0.1", "warmup.steps=0", "train.steps=1",
    )  # fmt: skip
    assert res.code == 0, res.err
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000001" / "model"
    assert json.loads((ckpt / "config.json").read_text())["quantization"]["bits"] == 8
    model, _ = load(str(ckpt), adapter_path=str(ckpt))
    q_proj = model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "LoRALinear"
    assert type(q_proj.linear).__name__ == "QuantizedLinear"
    # mathrl's merged load (eval, probe) dequantises where it merges: the same model
    from mathrl.models.mlx_model import load_mlx_model

    merged, _ = load_mlx_model(str(ckpt))
    ids = mx.array([[5, 6, 7, 8, 9, 10]])
    assert float(mx.abs(model(ids) - merged(ids)).max()) < 1e-4
    # full fine-tuning of a quantised model cannot train its weights: refused
    res = run_train(tmp_path / "full", "backend=mlx", f"model.path={tmp_path / 'q8'}")
    assert res.code == 2 and "is a quantised MLX model, whose weights cannot train" in res.err
