"""LoRA end to end on a tiny scratch Qwen2: only adapters train, checkpoints hold adapters
and reload (mathrl, transformers + peft, `mathrl eval`, `mathrl export --merge`), resume is
bitwise, and the KL reference with adapters off is the base model."""

from __future__ import annotations

import json
import os
import tomllib
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import tomli_w
import torch
from safetensors.torch import load_file

peft = pytest.importorskip("peft")
# transformers' own adapter loading reads its deprecated is_gradient_checkpointing
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

from conftest import TINY_COUNTDOWN, assert_same_run  # noqa: E402
from mathrl.checkpoint import latest_checkpoint  # noqa: E402
from mathrl.io import read_jsonl  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # model.lora.targets' default
LAYERS = 2


def _tiny_lora() -> str:
    """conftest's tiny Countdown config with LoRA r=8 on 2 layers, a high lr (so 3 + 2
    steps move the adapters) and a KL term (so the reference is exercised)."""
    cfg = tomllib.loads(TINY_COUNTDOWN)
    cfg["model"]["scratch"]["layers"] = LAYERS
    cfg["model"]["lora"] = {"r": 8}
    cfg["sft"]["lr"] = 1e-2
    cfg["train"].update(lr=1e-2, kl_coef=0.05)
    return tomli_w.dumps(cfg)


TINY_LORA = _tiny_lora()


def hf_name(peft_name: str) -> str:
    """The HF parameter name under a peft one (base_model.model.X, X.base_layer.weight)."""
    return peft_name.removeprefix("base_model.model.").replace(".base_layer", "")


@pytest.fixture(scope="module")
def lora_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lora_cfg") / "tiny_lora.toml"
    path.write_text(TINY_LORA)
    return path


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, lora_config):
    """`mathrl.train` of the tiny LoRA config (3 SFT warm-up + 2 GRPO steps with KL); the
    policy object the RL loop trained, and its parameters as the loop got them."""
    import mathrl
    import mathrl.runs.train

    real_train = mathrl.runs.train.train
    seen: dict = {}

    def spy(cfg, task, model, *args, **kwargs):
        seen["start"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["model"], seen["cfg"] = model, cfg
        return real_train(cfg, task, model, *args, **kwargs)

    out = tmp_path_factory.mktemp("lora") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mathrl.runs.train, "train", spy)
        mathrl.train(lora_config, out)
    seen["model"].eval()
    return out, seen


def some_ids(run_dir: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "scratch_model")
    texts = ["Numbers: 3 5 7. Target: 22.", "Final: (3 + 5) * 2"]
    return torch.tensor([tok(t)["input_ids"][:10] for t in texts])  # (2, 10)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_only_adapters_train_and_base_weights_stay_bit_identical(lora_run):
    from transformers import AutoModelForCausalLM

    out, seen = lora_run
    model = seen["model"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        f"base_model.model.model.layers.{i}.self_attn.{t}.lora_{ab}.default.weight"
        for i in range(LAYERS)
        for t in TARGETS
        for ab in "AB"
    }
    assert trainable == expected
    assert trainable == {n for n, _ in model.named_parameters() if "lora_" in n}
    # base weights: bit-identical to the scratch model on disk, after warm-up and RL
    base = dict(AutoModelForCausalLM.from_pretrained(out / "scratch_model").named_parameters())
    frozen = {n: p for n, p in model.named_parameters() if n not in trainable}
    assert {hf_name(n) for n in frozen} == set(base)
    for n, p in frozen.items():
        assert torch.equal(p, base[hf_name(n)]), n
    # adapters: trained by the warm-up (lora_B starts at zero) and again by RL
    for n in trainable:
        if ".lora_B." in n:
            assert seen["start"][n].abs().sum() > 0, n
    assert any(
        not torch.equal(seen["start"][n], p) for n, p in model.named_parameters() if n in trainable
    )
    # the KL term ran against the adapter-free reference
    assert all(m["loss/kl"] >= 0 for m in read_jsonl(out / "metrics.jsonl"))


def test_checkpoint_holds_adapters_base_reference_and_adapter_optimizer(lora_run):
    out, seen = lora_run
    ckpt = latest_checkpoint(out)
    assert ckpt.name == "step_00000002"
    files = {p.name for p in (ckpt / "model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "mathrl_base.json"} <= files
    assert "tokenizer.json" in files
    assert not files & {"model.safetensors", "config.json"}  # no base weights copied
    base = json.loads((ckpt / "model" / "mathrl_base.json").read_text())
    assert base["path"] == str((out / "scratch_model").resolve())
    conf = json.loads((ckpt / "model" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == base["path"]
    assert (conf["r"], conf["target_modules"]) == (8, sorted(TARGETS))
    # the saved adapters are the trained ones
    saved = load_file(ckpt / "model" / "adapter_model.safetensors")
    trained = peft.get_peft_model_state_dict(seen["model"])
    assert saved.keys() == trained.keys() and len(saved) == LAYERS * len(TARGETS) * 2
    for k in saved:
        assert torch.equal(saved[k], trained[k]), k
    # the optimizer state covers the adapters only
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert len(state["optimizer"]["state"]) == len(saved)
    # the warm-up's checkpoints are adapters too, on the same base
    warm = latest_checkpoint(out / "warmup_sft") / "model"
    assert json.loads((warm / "mathrl_base.json").read_text())["path"] == base["path"]


def test_checkpoint_loads_in_transformers_peft_and_mathrl_with_the_trained_logits(lora_run):
    from transformers import AutoModelForCausalLM

    from mathrl.models.loading import load_model

    out, seen = lora_run
    model_dir = latest_checkpoint(out) / "model"
    ids = some_ids(out)
    want = logits(seen["model"], ids)
    # plain transformers + peft
    base_path = json.loads((model_dir / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    plain = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path), model_dir
    )
    assert torch.equal(logits(plain, ids), want)
    # transformers' own adapter support: from_pretrained on the dir itself
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(model_dir), ids), want)
    # mathrl's loader (what `mathrl eval` uses): adapters merged into a plain model
    merged, tok = load_model(str(model_dir), device="cpu")
    assert not isinstance(merged, peft.PeftModel)
    assert tok.padding_side == "left"
    torch.testing.assert_close(logits(merged, ids), want, rtol=0, atol=1e-5)


def test_moved_run_dir_still_finds_its_scratch_base(lora_run, tmp_path):
    import shutil

    from mathrl.models.lora import base_reference

    out, _ = lora_run
    moved = tmp_path / "moved"
    shutil.copytree(out / "scratch_model", moved / "scratch_model")
    shutil.copytree(latest_checkpoint(out), moved / "checkpoints" / "step_00000002")
    model_dir = moved / "checkpoints" / "step_00000002" / "model"
    info = json.loads((model_dir / "mathrl_base.json").read_text())
    info["path"] = str(tmp_path / "gone")  # the original location no longer exists
    (model_dir / "mathrl_base.json").write_text(json.dumps(info))
    assert base_reference(model_dir) == str((moved / "scratch_model").resolve())


def test_eval_reads_a_lora_run(lora_run, lora_config, run_cli, tmp_path):
    out, _ = lora_run
    res = run_cli("eval", "--model", out, "-c", lora_config, "--out", tmp_path / "ev", "--limit", 4)
    assert res.code == 0, res.err
    summary = json.loads((tmp_path / "ev" / "eval_summary.json").read_text())
    assert summary["n_problems"] == 4


def test_eval_reads_a_lora_checkpoint_dir(lora_run, lora_config, run_cli, tmp_path):
    out, _ = lora_run
    ckpt = latest_checkpoint(out)
    res = run_cli(
        "eval", "--model", ckpt, "-c", lora_config, "--out", tmp_path / "ev", "--limit", 4
    )
    assert res.code == 0, res.err


def test_export_merge_writes_a_plain_hf_model(lora_run, run_cli, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, seen = lora_run
    ckpt = latest_checkpoint(out)
    res = run_cli("export", ckpt, "--out", tmp_path / "x")
    assert res.code == 2 and "pass --merge" in res.err
    assert not (tmp_path / "x").exists()
    res = run_cli("export", "--merge", ckpt, "--out", tmp_path / "merged")
    assert res.code == 0, res.err
    assert res.out.strip() == str(tmp_path / "merged")
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(f.startswith("adapter") for f in files)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert (
        tok("Final: 3")["input_ids"]
        == AutoTokenizer.from_pretrained(ckpt / "model")("Final: 3")["input_ids"]
    )
    ids = some_ids(out)
    torch.testing.assert_close(logits(merged, ids), logits(seen["model"], ids), rtol=0, atol=1e-5)
    # exporting over a non-empty dir is refused
    res = run_cli("export", "--merge", out, "--out", tmp_path / "merged")
    assert res.code == 2 and "not empty" in res.err


def test_kl_reference_with_adapters_off_equals_the_base_model(lora_run):
    from mathrl.backends.torch import reference_model
    from mathrl.models.loading import load_model
    from mathrl.models.logprobs import completion_batch, completion_logprobs

    out, seen = lora_run
    policy, cfg = seen["model"], seen["cfg"]
    ref = reference_model(cfg, policy)
    assert ref is not None and ref.model is None  # no copy: the policy with adapters off
    base, _ = load_model(str(out / "scratch_model"), device="cpu")
    ids = some_ids(out).tolist()
    batch = completion_batch(
        [ids[0][:6], ids[1][:4]],
        [0, 0, 1],
        [ids[0][6:], ids[0][7:], ids[1][4:]],
        0,
        torch.device("cpu"),
    )
    with torch.no_grad():
        for share in (True, False):
            policy_lp = completion_logprobs(policy, batch, share_prompts=share)
            ref_lp = ref.logprobs(policy, batch, share)
            assert torch.equal(ref_lp, completion_logprobs(base, batch, share_prompts=share))
            assert not torch.equal(policy_lp, ref_lp)  # the adapters do change the policy
            # and they are on again afterwards
            assert torch.equal(completion_logprobs(policy, batch, share_prompts=share), policy_lp)


def test_loaded_adapters_must_match_model_lora(lora_run, lora_config, tmp_path):
    from mathrl.config import load_config
    from mathrl.data import make_task
    from mathrl.errors import MathrlError
    from mathrl.policy import load_policy

    out, _ = lora_run
    model_dir = latest_checkpoint(out) / "model"
    cfg = load_config(lora_config, ["model.lora.r=4"])
    with pytest.raises(MathrlError, match=r"holds LoRA adapters with r=8.*model.lora says r=4"):
        load_policy(cfg, make_task(cfg), tmp_path, model_dir)
    # without model.lora the adapters are merged and every weight trains
    cfg = load_config(lora_config, ["model.lora.r=0"])
    model, _ = load_policy(cfg, make_task(cfg), tmp_path, model_dir)
    assert not isinstance(model, peft.PeftModel)
    assert all(p.requires_grad for p in model.parameters())


def test_lora_resume_equals_uninterrupted_run(run_cli, lora_config, tmp_path):
    """Warm-up + 2 RL steps, stop, resume to 4 == warm-up + 4 straight: adapters, Adam, logs."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    train = ("train", "-c", lora_config, "--set")
    assert run_cli(*train, "train.steps=4", "--out", straight).code == 0
    assert run_cli(*train, "train.steps=2", "--out", resumed).code == 0
    res = run_cli(*train, "train.steps=4", "--out", resumed, "--resume", "--allow-config-change")
    assert res.code == 0, res.err
    assert_same_run(straight, resumed, 4, weights="adapter_model.safetensors")


def test_rollouts_of_a_lora_policy_see_the_adapters(lora_run):
    from mathrl.rollout.hf_engine import HFEngine
    from mathrl.rollout.types import SamplingParams

    out, seen = lora_run
    policy = seen["model"]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(latest_checkpoint(out) / "model")
    prompts = some_ids(out).tolist()
    greedy = SamplingParams(n=1, max_new_tokens=8, greedy=True, ignore_eos=True, seed=0)
    with warnings.catch_warnings():
        # the cache goes through peft's forward under the name the base model takes
        warnings.filterwarnings("error", message=".*past_key_values.*")
        lean, plain = [
            HFEngine(policy, tok, lean_decode=flag).generate(prompts, greedy)
            for flag in (True, False)
        ]
    assert [c.token_ids for c in lean.completions] == [c.token_ids for c in plain.completions]
    for a, b in zip(lean.completions, plain.completions, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
