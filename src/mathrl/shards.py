"""Pre-tokenised SFT shards: tokenise a pairs file once, stream fixed-length rows after.

A shard directory holds `meta.json` and `shard_XXXXX.safetensors` files. Each shard has
(N, max_len) tensors, right-padded with `pad_id`:
- `input_ids` (int32): prompt + response + eos, cut at max_len;
- `labels` (int64): the input id at response positions, -100 elsewhere;
- `response_mask` (uint8): 1 at response positions;
- `lengths`, `prompt_lens` (int32, (N,)): real length and prompt length of each row.
meta.json: format, max_len, pad_id, rows, shard names and sizes, the source file's sha256
and a fingerprint of the tokenizer, so `mathrl sft` refuses shards made with another one.

Streaming: each SFT step picks one shard (probability proportional to its rows) and draws
its batch from that shard, so only one shard is in memory at a time.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file

from mathrl.errors import DataError
from mathrl.io import atomic_write_text, sha256_file
from mathrl.models.identity import tokenizer_fingerprint

FORMAT = 1
META = "meta.json"


class Encoded(NamedTuple):
    """One tokenised SFT row: prompt + response ids and where the response starts."""

    ids: list[int]
    prompt_len: int


def write_shards(
    rows: list[Encoded],
    out_dir: Path,
    max_len: int,
    pad_id: int,
    shard_rows: int,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write rows as fixed-length shards plus meta.json (written last); returns the meta."""

    if not rows:
        raise DataError("nothing to pre-tokenise: no rows")
    if shard_rows < 1:
        raise DataError(f"shard rows must be >= 1, got {shard_rows}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / META).exists():
        raise DataError(f"{out_dir} already holds shards; choose another --out or delete it")
    shards = []
    for k, start in enumerate(range(0, len(rows), shard_rows)):
        chunk = rows[start : start + shard_rows]
        ids = torch.full((len(chunk), max_len), pad_id, dtype=torch.int32)
        labels = torch.full((len(chunk), max_len), -100, dtype=torch.int64)
        mask = torch.zeros((len(chunk), max_len), dtype=torch.uint8)
        for i, row in enumerate(chunk):
            n = len(row.ids)
            ids[i, :n] = torch.tensor(row.ids, dtype=torch.int32)
            labels[i, row.prompt_len : n] = torch.tensor(row.ids[row.prompt_len :])
            mask[i, row.prompt_len : n] = 1
        name = f"shard_{k:05d}.safetensors"
        save_file(
            {
                "input_ids": ids,
                "labels": labels,
                "response_mask": mask,
                "lengths": torch.tensor([len(r.ids) for r in chunk], dtype=torch.int32),
                "prompt_lens": torch.tensor([r.prompt_len for r in chunk], dtype=torch.int32),
            },
            str(out_dir / name),
        )
        shards.append({"file": name, "rows": len(chunk), "sha256": sha256_file(out_dir / name)})
    full = {
        "format": FORMAT,
        "max_len": max_len,
        "pad_id": pad_id,
        "rows": len(rows),
        "shards": shards,
        **meta,
    }
    atomic_write_text(out_dir / META, json.dumps(full, indent=2) + "\n")
    return full


def read_meta(shard_dir: Path) -> dict[str, Any]:
    path = shard_dir / META
    if not path.is_file():
        raise DataError(f"{shard_dir}: no {META}; not a shard dir (make one with sft-pretokenize)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: shard format {meta.get('format')!r}, expected {FORMAT}")
    for s in meta["shards"]:
        if not (shard_dir / s["file"]).is_file():
            raise DataError(f"{shard_dir / s['file']}: missing shard listed in {META}")
    return meta


def shard_sampler(shard_dir: Path, tokenizer: Any) -> Callable[[random.Random, int], list[Encoded]]:
    """A batch sampler over a shard dir (one shard per batch, loaded lazily, one at a time)."""

    meta = read_meta(shard_dir)
    if meta.get("tokenizer") != tokenizer_fingerprint(tokenizer):
        raise DataError(
            f"{shard_dir} was tokenised with another tokenizer than this model's; "
            "pre-tokenise again with this model (sft-pretokenize --model ...)"
        )
    sizes = [s["rows"] for s in meta["shards"]]
    loaded: dict[str, Any] = {}

    def shard(k: int) -> dict[str, torch.Tensor]:
        name = meta["shards"][k]["file"]
        if name not in loaded:
            loaded.clear()
            try:
                loaded[name] = load_file(str(shard_dir / name))
            except Exception as e:  # a truncated or foreign file
                raise DataError(f"{shard_dir / name}: unreadable shard ({e})") from None
        return loaded[name]

    def sample(rng: random.Random, n: int) -> list[Encoded]:
        k = rng.choices(range(len(sizes)), weights=sizes)[0]
        t = shard(k)
        out = []
        for i in rng.choices(range(sizes[k]), k=n):
            length = int(t["lengths"][i])
            out.append(Encoded(t["input_ids"][i, :length].tolist(), int(t["prompt_lens"][i])))
        return out

    return sample
