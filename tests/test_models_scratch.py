"""Scratch models: tokenizer + random-init model saved in HF format, reloadable offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mathrl.errors import ConfigError
from mathrl.models.scratch import build_scratch_model, train_tokenizer

TEXTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "What is 12 + 345? The answer is 357.",
    "It's 2024: we don't round 3.14159 to 3!",
] * 5

PROBES = [
    "What is 12345 + 6?<|im_end|> hi",
    "  1,000.50 \n\n x=-3  ",
    "héllo wörld 😀 42 it's -abc",
    "<|im_start|>user\n7*8<|im_end|>\n",
]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_reload_via_auto_classes_gives_same_ids(tmp_path, arch):
    out = build_scratch_model(tmp_path / arch, TEXTS, arch=arch, hidden=64, layers=2)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    reference = train_tokenizer(TEXTS)
    for text in PROBES:
        assert tokenizer(text).input_ids == reference(text).input_ids, text
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    ids = torch.tensor([tokenizer("What is 1+2?").input_ids])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_digits_are_single_tokens():
    tokenizer = train_tokenizer(TEXTS * 20)
    assert tokenizer.tokenize("x=12345") == ["x", "=", "1", "2", "3", "4", "5"]
    for digit in "0123456789":
        assert len(tokenizer(digit).input_ids) == 1


def test_special_tokens_and_chat_template(tmp_path):
    out = build_scratch_model(tmp_path, TEXTS, hidden=64)
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(text).input_ids
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 2
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(out)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id


def test_deterministic(tmp_path):
    a = build_scratch_model(tmp_path / "a", TEXTS, hidden=64, seed=3)
    b = build_scratch_model(tmp_path / "b", TEXTS, hidden=64, seed=3)
    c = build_scratch_model(tmp_path / "c", TEXTS, hidden=64, seed=4)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    sa, sb, sc = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])


def test_does_not_touch_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_scratch_model(tmp_path, TEXTS, hidden=64)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 100}, "vocab_size"),
        ({"arch": "gpt2"}, "unknown arch"),
        ({"hidden": 60, "heads": 8}, "divisible"),
        ({"heads": 4, "kv_heads": 3}, "kv_heads"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_scratch_model(tmp_path, TEXTS, **{"hidden": 64, **kwargs})
