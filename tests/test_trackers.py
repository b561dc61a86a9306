"""W&B (offline) and TensorBoard loggers: the logged values read back from their files.

Both are in the dev extra, so these tests run (never skip) in `make test`. The W&B run is
offline with telemetry and error reporting off: no network (checked with strace: the only
connect() is to wandb-core's local unix socket).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from mathrl.errors import ConfigError
from mathrl.trackers import TensorBoardLogger, WandbLogger, scalars

# Floats exactly representable in float32, so TensorBoard returns them unchanged.
STEP1 = {"reward/mean": 0.5, "loss/kl": 0.25, "eval/n": 3, "skip": None, "nonfinite": ["x"]}
STEP2 = {"reward/mean": 0.75, "bad": float("nan")}


def test_scalars_keeps_finite_numbers_only() -> None:
    assert scalars({**STEP1, **STEP2}) == {"reward/mean": 0.75, "loss/kl": 0.25, "eval/n": 3.0}


def test_tensorboard_event_values(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log(STEP1, 1)
    logger.log(STEP2, 2)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["eval/n", "loss/kl", "reward/mean"]
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in acc.Scalars("loss/kl")] == [(1, 0.25)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/n")] == [(1, 3.0)]


def wandb_records(path: Path) -> list[bytes]:
    """Payloads of a .wandb file: a 7-byte W&B header, then LevelDB-log records in 32 KiB blocks."""
    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if n == 0 and kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL or LAST fragment
            out.append(buf)
            buf = b""
    return out


def wandb_history(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(history rows, run config) decoded from a .wandb file with wandb's own protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows, config = [], {}
    for payload in wandb_records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            rows.append({k: v for k, v in items.items() if not k.startswith("_") or k == "_step"})
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    return rows, config


def test_wandb_offline_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")  # no Sentry
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    logger = WandbLogger("mathrl-test", tmp_path / "run", {"train": {"lr": 0.5}, "seed": 3})
    logger.log(STEP1, 1)
    logger.log(STEP2, 2)
    logger.close()
    [run_file] = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    rows, config = wandb_history(run_file)
    assert rows == [
        {"_step": 1, "reward/mean": 0.5, "loss/kl": 0.25, "eval/n": 3.0},
        {"_step": 2, "reward/mean": 0.75},
    ]
    assert config["train"] == {"lr": 0.5} and config["seed"] == 3


def test_wandb_bad_mode_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wandb mode"):
        WandbLogger("p", tmp_path, {}, mode="sometimes")


@pytest.mark.parametrize(
    ("module", "make", "message"),
    [
        ("wandb", lambda p: WandbLogger("p", p, {}), "pip install 'mathrl\\[wandb\\]'"),
        (
            "torch.utils.tensorboard",
            lambda p: TensorBoardLogger(p),
            "pip install 'mathrl\\[tensorboard\\]'",
        ),
    ],
    ids=["wandb", "tensorboard"],
)
def test_missing_extra_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, make: Any, message: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ConfigError, match=message):
        make(tmp_path)
