"""`mathrl convert`: HF -> MLX (float / quantised) -> HF on a tiny scratch model, CPU only."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

mx = pytest.importorskip("mlx.core")
mlx_lm = pytest.importorskip("mlx_lm")
nn = pytest.importorskip("mlx.nn")

from safetensors.numpy import load_file  # noqa: E402

from mathrl.checkpoint import save_checkpoint  # noqa: E402
from mathrl.errors import MathrlError  # noqa: E402
from mathrl.models.loading import load_model  # noqa: E402
from mathrl.models.mlx_convert import safetensors_metadata, to_hf, to_mlx  # noqa: E402
from mathrl.models.scratch import build_scratch_model  # noqa: E402

TEXTS = ["12 + 34 = 46", "7 * 8 = 56", "what is 9 - 4? 5", "hello world"] * 10
PROMPT = "12 + 34 = 46 and 7 * 8 = 56"
# Max |logit - original logit| over every position and vocab entry, as a fraction of the
# original logits' std (0.165 on this model). Measured (group 64): 8-bit 0.039 (max abs
# 0.0065), 4-bit 0.59 (0.097), float 0; mlx-lm's own forward on the MLX dir agrees to 1e-6.
TOLERANCE = {8: 0.1, 4: 1.0}


def build(out: Path, seed: int = 0) -> Path:
    # hidden = intermediate = 64: every layer's input size is one group of 64, none of 128
    return build_scratch_model(
        out, TEXTS, hidden=64, layers=2, heads=4, intermediate=64, vocab_size=300, seed=seed
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("src") / "model")


def torch_logits(model_dir: Path) -> np.ndarray:
    model, tokenizer = load_model(str(model_dir), device="cpu")
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    with torch.no_grad():
        return model(ids).logits[0].float().numpy()  # (T, V)


def mlx_logits(model_dir: Path) -> np.ndarray:
    model, tokenizer = mlx_lm.load(str(model_dir))
    ids = mx.array([tokenizer.encode(PROMPT)])
    return np.array(model(ids)[0].astype(mx.float32))  # (T, V)


def expected_bits_per_weight(model_dir: Path, bits: int) -> float:
    """Matrices: `bits` + a float32 scale and bias per 64 weights; norms and biases: 32."""
    weights = load_file(model_dir / "model.safetensors").values()
    matrices = sum(w.size for w in weights if w.ndim == 2)
    vectors = sum(w.size for w in weights if w.ndim == 1)
    return (matrices * (bits + 64 / 64) + vectors * 32) / (matrices + vectors)


def config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_round_trip_stays_within_tolerance(source, tmp_path, bits):
    mlx_dir, hf_dir = tmp_path / "mlx", tmp_path / "hf"
    quantised = to_mlx(str(source), mlx_dir, bits=bits)
    assert config(mlx_dir)["quantization"] == {"group_size": 64, "bits": bits, "mode": "affine"}
    assert quantised.bits_per_weight == pytest.approx(expected_bits_per_weight(source, bits))
    assert safetensors_metadata(mlx_dir / "model.safetensors")["format"] == "mlx"

    back = to_hf(str(mlx_dir), hf_dir)
    assert back.bits_per_weight == 32.0
    cfg = config(hf_dir)
    assert "quantization" not in cfg and "quantization_config" not in cfg
    assert cfg["dtype"] == "float32"
    assert safetensors_metadata(hf_dir / "model.safetensors")["format"] == "pt"

    # every weight is within one quantisation step, (max - min) / (2^bits - 1) of its group
    original, restored = (
        load_file(source / "model.safetensors"),
        load_file(hf_dir / "model.safetensors"),
    )
    assert set(original) == set(restored)
    for name, w in original.items():
        if w.ndim == 1:  # norms and biases are not quantised
            np.testing.assert_array_equal(restored[name], w)
            continue
        groups = w.reshape(w.shape[0], -1, 64)
        step = (groups.max(-1) - groups.min(-1)) / (2**bits - 1)
        err = np.abs(restored[name] - w).reshape(groups.shape).max(-1)
        assert (err <= step + 1e-7).all(), name
        assert err.max() > 0, name  # it was quantised

    expected, got = torch_logits(source), torch_logits(hf_dir)
    rel = np.abs(got - expected).max() / expected.std()
    assert 0 < rel < TOLERANCE[bits]


def test_float_round_trip_is_exact_and_mlx_lm_matches_torch(source, tmp_path):
    mlx_dir, hf_dir = tmp_path / "mlx", tmp_path / "hf"
    assert to_mlx(str(source), mlx_dir).bits_per_weight == 32.0
    assert "quantization" not in config(mlx_dir)
    to_hf(str(mlx_dir), hf_dir)
    original, restored = (
        load_file(source / "model.safetensors"),
        load_file(hf_dir / "model.safetensors"),
    )
    for name, w in original.items():
        np.testing.assert_array_equal(restored[name], w)
    expected = torch_logits(source)
    np.testing.assert_array_equal(torch_logits(hf_dir), expected)
    # mlx-lm reads rope_theta (10000, in transformers 5's rope_parameters) from the MLX dir;
    # with its own Qwen2 default (1e6) the logits would differ by far more than 1e-5
    assert config(mlx_dir)["rope_theta"] == 10000.0
    np.testing.assert_allclose(mlx_logits(mlx_dir), expected, atol=1e-5)
    # the tokenizer comes through unchanged
    _, tok_a = load_model(str(source), device="cpu")
    _, tok_b = load_model(str(hf_dir), device="cpu")
    assert tok_a.encode(PROMPT) == tok_b.encode(PROMPT)


def test_quantised_mlx_dir_loads_and_generates_with_mlx_lm(source, tmp_path):
    mlx_dir = tmp_path / "mlx"
    to_mlx(str(source), mlx_dir, bits=8, group_size=32)
    assert config(mlx_dir)["quantization"]["group_size"] == 32
    expected = torch_logits(source)
    rel = np.abs(mlx_logits(mlx_dir) - expected).max() / expected.std()
    assert rel < TOLERANCE[8]

    model, tokenizer = mlx_lm.load(str(mlx_dir))
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    tokens = [r.token for r in mlx_lm.stream_generate(model, tokenizer, PROMPT, max_tokens=6)]
    assert 1 <= len(tokens) <= 6
    assert isinstance(mlx_lm.generate(model, tokenizer, PROMPT, max_tokens=6), str)


def test_dtype_option_sets_weights_and_config(source, tmp_path):
    mlx_dir, hf_dir = tmp_path / "mlx", tmp_path / "hf"
    to_mlx(str(source), mlx_dir, bits=4, dtype="bf16")  # an alias
    scales = mx.load(str(mlx_dir / "model.safetensors"))["model.layers.0.mlp.up_proj.scales"]
    assert scales.dtype == mx.bfloat16
    assert config(mlx_dir)["dtype"] == "bfloat16"
    to_hf(str(mlx_dir), hf_dir, dtype="float16")
    assert config(hf_dir)["dtype"] == "float16"
    model, _ = load_model(str(hf_dir), dtype="float16", device="cpu")
    assert model.model.embed_tokens.weight.dtype == torch.float16


def test_requantising_an_mlx_dir_dequantises_first(source, tmp_path):
    to_mlx(str(source), tmp_path / "q8", bits=8)
    to_mlx(str(tmp_path / "q8"), tmp_path / "q4", bits=4)
    assert config(tmp_path / "q4")["quantization"]["bits"] == 4
    expected = torch_logits(source)
    to_hf(str(tmp_path / "q4"), tmp_path / "hf")
    assert np.abs(torch_logits(tmp_path / "hf") - expected).max() / expected.std() < TOLERANCE[4]


def test_failure_leaves_no_out_and_force_replaces(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("mlx_lm.utils.save_config", broken)
    with pytest.raises(OSError, match="disk full"):
        to_mlx(str(source), out, bits=8, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir left
    assert [p.name for p in out.iterdir()] == ["stale.txt"]  # the old out untouched
    monkeypatch.undo()

    to_mlx(str(source), out, bits=8, force=True)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_group_size_that_divides_no_layer_is_refused(source, tmp_path):
    with pytest.raises(MathrlError, match="--group-size 128: no layer's input size"):
        to_mlx(str(source), tmp_path / "out", bits=4, group_size=128)
    assert not (tmp_path / "out").exists()


def fake_run(run_dir: Path, models: list[Path]) -> None:
    """A run dir whose checkpoints (real manifests) hold `models` at steps 1, 2, ..."""
    for step, model in enumerate(models, start=1):
        save_checkpoint(
            run_dir, step, lambda tmp, m=model: shutil.copytree(m, tmp / "model"), {}, keep_last=5
        )


def test_cli_converts_run_and_checkpoint_dirs_and_back(source, tmp_path, run_cli):
    other = build(tmp_path / "other", seed=1)
    run = tmp_path / "run"
    fake_run(run, [source, other])
    embed = "model.embed_tokens.weight"

    result = run_cli("convert", "--to", "mlx", "--model", run, "--out", tmp_path / "latest")
    assert result.code == 0, result.err
    assert result.out.startswith(f"wrote {tmp_path / 'latest'} (7 files, ")
    assert result.out.rstrip().endswith("32.00 bits per weight)")
    got = load_file(tmp_path / "latest" / "model.safetensors")[embed]
    np.testing.assert_array_equal(got, load_file(other / "model.safetensors")[embed])

    step1 = run / "checkpoints" / "step_00000001"
    result = run_cli("convert", "--to", "mlx", "-m", step1, "-o", tmp_path / "q", "--bits", "8")
    assert result.code == 0, result.err
    assert f"{expected_bits_per_weight(source, 8):.2f} bits per weight" in result.out
    result = run_cli("convert", "--to", "hf", "-m", tmp_path / "q", "-o", tmp_path / "hf")
    assert result.code == 0, result.err
    expected = torch_logits(source)  # step 1 holds `source`
    assert np.abs(torch_logits(tmp_path / "hf") - expected).max() / expected.std() < 0.1


def _no_mlx(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlx" else real(name, *a)
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--to", "mlx", "--bits", "7"], "--bits 7: mlx quantises to 2, 3, 4, 5, 6, 8 bits"),
        (
            ["--to", "mlx", "--bits", "4", "--group-size", "48"],
            "--group-size 48: choose one of 32, 64, 128",
        ),
        (["--to", "mlx", "--dtype", "int8"], "--dtype 'int8': choose one of auto, float32"),
        (["--to", "hf", "--bits", "8"], "--bits applies to --to mlx"),
        (["--to", "hf"], "is not an MLX model (its safetensors are not mlx-lm's"),
        (
            ["--to", "mlx", "--out", "{nonempty}"],
            "exists and is not empty; choose another --out or pass --force",
        ),
        (["--to", "mlx", "--out", "{source}", "--force"], "holds the model being converted"),
        (["--to", "mlx", "--model", "{tmp}/missing"], "model not found: "),
        (["--to", "mlx", "--model", "scratch"], "--model scratch: build a model first"),
        (["--to", "mlx", "no-mlx"], "needs mlx: pip install 'mathrl[mlx]'"),
    ],
)
def test_bad_input_is_one_line(source, tmp_path, run_cli, monkeypatch, args, message):
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "x").write_text("x")
    if "no-mlx" in args:
        args = [a for a in args if a != "no-mlx"]
        _no_mlx(monkeypatch)
    fill = {"{nonempty}": str(tmp_path / "nonempty"), "{source}": str(source)}
    args = [fill.get(a, a.replace("{tmp}", str(tmp_path))) for a in args]
    defaults = {"--model": str(source), "--out": str(tmp_path / "out")}
    extra = [x for k, v in defaults.items() if k not in args for x in (k, v)]
    result = run_cli("convert", *args, *extra)
    assert result.code == 2
    assert result.err.startswith("error: ") and message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert (source / "config.json").is_file() and (tmp_path / "nonempty" / "x").is_file()


def test_sharded_hf_weights_load_through_their_index(source, tmp_path, monkeypatch):
    import mlx_lm.utils

    real = mlx_lm.utils.make_shards  # a limit of 0 GiB: one tensor per shard
    monkeypatch.setattr(mlx_lm.utils, "make_shards", lambda w: real(w, max_file_size_gb=0))
    to_mlx(str(source), tmp_path / "mlx")
    to_hf(str(tmp_path / "mlx"), tmp_path / "hf")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    np.testing.assert_array_equal(torch_logits(tmp_path / "hf"), torch_logits(source))
