"""sft-pretokenize shards: exact contents, streaming, tokenizer check, training from them."""

from __future__ import annotations

import json
import random

import pytest
from safetensors.torch import load_file

from mathrl.checkpoint import latest_checkpoint
from mathrl.errors import DataError
from mathrl.io import read_jsonl
from mathrl.shards import Encoded, read_meta, shard_sampler, tokenizer_fingerprint, write_shards

ROWS = [Encoded([1, 2, 3, 4], 2), Encoded([5, 6, 7], 1), Encoded([8, 9, 10, 11, 12], 3)]


def test_shard_layout_by_hand(tmp_path):
    meta = write_shards(ROWS, tmp_path / "s", max_len=6, pad_id=0, shard_rows=2, meta={})
    assert [s["rows"] for s in meta["shards"]] == [2, 1] and meta["rows"] == 3
    first = load_file(str(tmp_path / "s" / "shard_00000.safetensors"))
    assert first["input_ids"].tolist() == [[1, 2, 3, 4, 0, 0], [5, 6, 7, 0, 0, 0]]
    assert first["labels"].tolist() == [
        [-100, -100, 3, 4, -100, -100],
        [-100, 6, 7, -100, -100, -100],
    ]
    assert first["response_mask"].tolist() == [[0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert first["lengths"].tolist() == [4, 3] and first["prompt_lens"].tolist() == [2, 1]
    assert read_meta(tmp_path / "s")["max_len"] == 6
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(ROWS, tmp_path / "s", 6, 0, 2, {})


class FakeTok:
    eos_token_id = 1
    chat_template = None

    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return self.vocab


def test_sampler_streams_whole_rows_and_checks_the_tokenizer(tmp_path):
    tok = FakeTok({"a": 0, "b": 1})
    write_shards(ROWS, tmp_path / "s", 6, 0, 2, {"tokenizer": tokenizer_fingerprint(tok)})
    sample = shard_sampler(tmp_path / "s", tok)
    seen = set()
    rng = random.Random(0)
    for _ in range(30):
        batch = sample(rng, 4)
        in_first = {r.ids in ([1, 2, 3, 4], [5, 6, 7]) for r in batch}
        assert len(in_first) == 1  # one shard per batch
        seen |= {(tuple(r.ids), r.prompt_len) for r in batch}
    assert seen == {(tuple(r.ids), r.prompt_len) for r in ROWS}
    with pytest.raises(DataError, match="another tokenizer"):
        shard_sampler(tmp_path / "s", FakeTok({"a": 0, "c": 1}))
    (tmp_path / "s" / "shard_00001.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="unreadable shard"):
        for _ in range(30):
            sample(rng, 2)


def test_pretokenize_then_sft_from_shards(run_cli, tiny_config, tmp_path):
    # a scratch model of the tiny config: its dir has the tokenizer that sft will use
    assert run_cli("sft", "-c", tiny_config, "--out", tmp_path / "base", "--steps", "1").code == 0
    model = latest_checkpoint(tmp_path / "base") / "model"
    data = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"prompt": f"{i}+1?", "response": f"Final: {i + 1}"}) for i in range(10)]
    data.write_text("\n".join(lines) + "\n")
    shards = tmp_path / "shards"
    res = run_cli(
        "sft-pretokenize", "-c", tiny_config, "--data", data, "--out", shards,
        "--model", model, "--shard-rows", "4",
    )  # fmt: skip
    assert res.code == 0, res.err
    meta = json.loads((shards / "meta.json").read_text())
    assert meta["rows"] == 10 and [s["rows"] for s in meta["shards"]] == [4, 4, 2]
    res = run_cli(
        "sft", "-c", tiny_config, "--out", tmp_path / "sft", "--data", shards,
        "--steps", "3", "--set", f"model.path={model}",
    )  # fmt: skip
    assert res.code == 0, res.err
    assert [m["step"] for m in read_jsonl(tmp_path / "sft" / "metrics.jsonl")] == [1, 2, 3]
    res = run_cli("sft-pretokenize", "-c", tiny_config, "--data", data, "--out", tmp_path / "x")
    assert res.code == 2 and "needs a real tokenizer" in res.err
