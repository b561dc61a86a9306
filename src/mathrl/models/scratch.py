"""Tiny random-init chat models built locally: a tokenizer trained on given texts + a config.

Used by tests, benchmarks and the offline quickstart: nothing is downloaded. The tokenizer is
byte-level BPE with Qwen2's pre-tokenizer, so every digit is its own token ("123" is always
"1","2","3": arithmetic is not obscured by merges), ChatML special tokens and a ChatML chat
template. `AutoTokenizer` / `AutoModelForCausalLM` reload the saved dir unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from mathrl.errors import ConfigError

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, IM_START, IM_END]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ARCHS = ("qwen2", "llama")
# Qwen2's pre-tokenizer regex: `\p{N}` isolates every digit. Using exactly Qwen2Tokenizer's
# pipeline matters: transformers 5 AutoTokenizer rebuilds it for any qwen2 model dir, whatever
# tokenizer_config.json says, so any other pipeline would tokenize differently after reload.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# 256 byte symbols + the special tokens: the smallest vocabulary byte-level BPE can have.
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`, digits split into single tokens, ChatML specials."""
    if vocab_size < MIN_VOCAB:
        raise ConfigError(f"vocab_size must be >= {MIN_VOCAB} for byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    # BPE merges never cross pre-token boundaries, and each digit is its own pre-token.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # The full byte alphabet keeps any text encodable, even characters unseen in `texts`.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        padding_side="left",
    )


def scratch_config(
    arch: str,
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int | None,
    intermediate: int | None,
    max_position: int,
    special_ids: dict[str, int],
) -> PretrainedConfig:
    """A small Qwen2/Llama config with the tokenizer's special ids."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if hidden % heads != 0:
        raise ConfigError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    kv_heads = kv_heads or heads
    if heads % kv_heads != 0:
        raise ConfigError(f"heads ({heads}) must be divisible by kv_heads ({kv_heads})")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position,
        tie_word_embeddings=True,
        bos_token_id=special_ids[IM_START],
        eos_token_id=special_ids[IM_END],
        pad_token_id=special_ids[PAD_TOKEN],
    )
    if arch == "qwen2":
        return Qwen2Config(**common, use_sliding_window=False)
    return LlamaConfig(**common)


def build_scratch_model(
    out_dir: str | Path,
    texts: Iterable[str],
    arch: str = "qwen2",
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    intermediate: int | None = None,
    vocab_size: int = 512,
    max_position: int = 512,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `texts`, random-init a model (seeded), save both in HF format."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size)
    special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = scratch_config(
        arch,
        len(tokenizer),
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        max_position,
        special_ids,
    )
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Chat models end a turn with <|im_end|>; <|endoftext|> also stops, as in Qwen2.5.
    model.generation_config = GenerationConfig(
        bos_token_id=special_ids[IM_START],
        eos_token_id=[special_ids[IM_END], special_ids[PAD_TOKEN]],
        pad_token_id=special_ids[PAD_TOKEN],
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def with_logit_bias(model: torch.nn.Module, token_id: int, bias: float) -> torch.nn.Module:
    """Replace the model's (tied) output head by an untied copy that adds `bias` to
    `token_id`'s logit, so a random-init model emits it more often (tests and benchmarks
    that need completions ending at varied steps). Returns the model, changed in place."""
    old = model.get_output_embeddings()
    head = torch.nn.Linear(
        old.in_features,
        old.out_features,
        bias=True,
        dtype=old.weight.dtype,
        device=old.weight.device,
    )
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token_id] = bias
    model.set_output_embeddings(head)
    model.config.tie_word_embeddings = False
    return model
