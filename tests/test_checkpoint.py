"""Atomic checkpoint commit, validation, rotation and orphan clean-up."""

from __future__ import annotations

import errno
import json
import random

import numpy as np
import pytest
import torch

from mathrl import checkpoint as ck
from mathrl.errors import MathrlError


def _payload(content: bytes):
    def write(tmp):
        (tmp / "model").mkdir()
        (tmp / "model" / "weights.bin").write_bytes(content)
        (tmp / "state.pt").write_bytes(b"state")

    return write


def test_commit_writes_manifest_and_latest(tmp_path):
    path = ck.save_checkpoint(tmp_path, 5, _payload(b"abc"), {"config_hash": "h"}, keep_last=3)
    assert path.name == "step_00000005"
    m = ck.read_manifest(path, verify_hashes=True)
    assert m["step"] == 5 and m["config_hash"] == "h"
    assert m["files"]["model/weights.bin"]["size"] == 3
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000005"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp_")]


def test_rotation_is_by_step_number_not_mtime(tmp_path):
    for step in (100, 20, 3, 40):  # written out of order: mtime order != step order
        ck.save_checkpoint(tmp_path, step, _payload(b"x"), {}, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000040", "step_00000100"]


def test_failure_mid_write_cleans_temp_and_keeps_previous(tmp_path):
    ck.save_checkpoint(tmp_path, 1, _payload(b"good"), {}, keep_last=3)

    def broken(tmp):
        (tmp / "part").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        ck.save_checkpoint(tmp_path, 2, broken, {}, keep_last=3)
    names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert sorted(names) == ["latest", "step_00000001"]
    assert ck.latest_checkpoint(tmp_path).name == "step_00000001"


@pytest.mark.parametrize("damage", ["truncate", "zero", "delete", "manifest", "flip"])
def test_damaged_newest_checkpoint_falls_back(tmp_path, damage):
    ck.save_checkpoint(tmp_path, 1, _payload(b"first"), {}, keep_last=3)
    newest = ck.save_checkpoint(tmp_path, 2, _payload(b"second"), {}, keep_last=3)
    f = newest / "model" / "weights.bin"
    if damage == "truncate":
        f.write_bytes(b"sec")
    elif damage == "zero":
        f.write_bytes(b"")
    elif damage == "delete":
        f.unlink()
    elif damage == "manifest":
        (newest / "manifest.json").write_text("{not json")
    else:  # same size, different bytes: only the hash catches it
        f.write_bytes(b"SECOND")
    with pytest.warns(UserWarning, match="step_00000002"):
        assert ck.latest_checkpoint(tmp_path).name == "step_00000001"
    with pytest.raises(MathrlError, match="step_00000002"):
        ck.read_manifest(newest, verify_hashes=True)


def test_orphans_and_dirs_without_manifest_are_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp_step_00000009.123").mkdir(parents=True)
    (root / "step_00000009").mkdir()  # a dir that never got a manifest
    with pytest.warns(UserWarning, match=r"step_00000009"):
        assert ck.latest_checkpoint(tmp_path) is None
    removed = ck.clean_orphans(tmp_path)
    assert [p.name for p in removed] == [".tmp_step_00000009.123"]


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ck.rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_run_manifest_has_versions_and_fingerprint(tmp_path):
    ck.write_run_manifest(tmp_path, 7, "abc")
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["seed"] == 7 and m["dataset_fingerprint"] == "abc"
    assert m["versions"]["torch"].startswith("2.") and "git_sha" in m


_KILL_CHILD = """
import os, signal, sys
from pathlib import Path
from mathrl import checkpoint as ck

run_dir, where = Path(sys.argv[1]), sys.argv[2]
def die():
    os.kill(os.getpid(), signal.SIGKILL)

def payload(tmp):
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.bin").write_bytes(b"second")
    if where == "between_files":
        die()
    (tmp / "state.pt").write_bytes(b"state")

if where == "before_rename":
    ck.os.replace = lambda *a: die()
if where == "before_latest":
    ck.atomic_write_text = lambda *a: die()
ck.save_checkpoint(run_dir, 2, payload, {}, keep_last=3)
"""


@pytest.mark.parametrize(
    ("where", "survivor"),
    [("between_files", 1), ("before_rename", 1), ("before_latest", 2)],
)
def test_sigkill_during_checkpoint_write(tmp_path, where, survivor):
    """A real SIGKILL at three points of a save: resume finds the last complete checkpoint."""
    import signal
    import subprocess
    import sys

    ck.save_checkpoint(tmp_path, 1, _payload(b"first"), {}, keep_last=3)
    proc = subprocess.run([sys.executable, "-c", _KILL_CHILD, str(tmp_path), where], check=False)
    assert proc.returncode == -signal.SIGKILL
    root = tmp_path / "checkpoints"
    orphans = sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp_"))
    assert len(orphans) == (0 if where == "before_latest" else 1)
    # the pointer still names step 1 when the kill came before it moved
    assert (root / "latest").read_text().strip() == "step_00000001"
    found = ck.latest_checkpoint(tmp_path)
    assert found.name == f"step_{survivor:08d}"
    assert (found / "model" / "weights.bin").read_bytes() == (b"first", b"second")[survivor - 1]
    ck.clean_orphans(tmp_path)
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp_")]


def test_resume_refuses_a_changed_dataset_unless_allowed(tmp_path):
    from mathrl.config import Config
    from mathrl.run_setup import checkpoint_meta, resume_point

    cfg = Config()
    ck.save_checkpoint(tmp_path, 3, _payload(b"w"), checkpoint_meta(cfg, "a" * 64), keep_last=2)
    assert resume_point(tmp_path, cfg, "a" * 64, allow_change=False).name == "step_00000003"
    with pytest.raises(MathrlError, match=r"Dataset changed since step_00000003"):
        resume_point(tmp_path, cfg, "b" * 64, allow_change=False)
    assert resume_point(tmp_path, cfg, "b" * 64, allow_change=True).name == "step_00000003"
    with pytest.raises(MathrlError, match="holds no complete checkpoint"):
        resume_point(tmp_path / "empty", cfg, "a" * 64, allow_change=False)


class _NoLogger:
    def log(self, metrics, step):
        pass


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_sft_refuses_to_checkpoint_nonfinite_weights(tmp_path, backend):
    """The one writer's refusal holds for SFT too: a NaN put into the weights after step 1
    stops the step-1 checkpoint, naming the step, and nothing is committed."""
    from mathrl.config import load_config
    from mathrl.models.scratch import build_scratch_model
    from mathrl.policy import load_policy
    from mathrl.sft import train_sft
    from mathrl.shards import Encoded

    if backend == "mlx":
        pytest.importorskip("mlx.core")
    model_dir = tmp_path / "scratch"
    build_scratch_model(model_dir, ["1 + 2 = 3"] * 20, hidden=16, layers=1, heads=2, vocab_size=260)
    cfg = load_config(
        overrides=[f"backend={backend}", f"model.path={model_dir}", "sft.batch_size=2"],
        env=False,
    )
    model, tokenizer = load_policy(cfg, None, tmp_path)  # type: ignore[arg-type]
    rows = [Encoded(tokenizer.encode("1 + 2 = 3"), 3)] * 2

    def poison(step, metrics):
        if backend == "mlx":
            import mlx.core as mx
            from mlx.utils import tree_flatten, tree_unflatten

            name, w = tree_flatten(model.trainable_parameters())[0]
            model.update(tree_unflatten([(name, w * mx.nan)]))
        else:
            with torch.no_grad():
                next(model.parameters()).mul_(float("nan"))

    with pytest.raises(
        MathrlError, match="Refusing to checkpoint step 1: model weights are not finite"
    ):
        train_sft(
            cfg, model, tokenizer, lambda rng, n: rows, tmp_path / "run", _NoLogger(), "fp",
            steps=1, on_step=poison,
        )  # fmt: skip
    assert ck.list_checkpoints(tmp_path / "run") == []


_RESAVE_CHILD = """
import os, signal, sys
from pathlib import Path
from mathrl import checkpoint as ck

run_dir, where = Path(sys.argv[1]), sys.argv[2]
final = str(run_dir / "checkpoints" / "step_00000002")
aside = final + ".old"

def hook(event, args):
    # a real SIGKILL at a file-system call, found by Python's audit events
    if where == "before_rename_in" and event == "os.rename" and str(args[1]) == final:
        os.kill(os.getpid(), signal.SIGKILL)
    if where == "before_delete_old" and event == "shutil.rmtree" and str(args[0]) == aside:
        if os.path.exists(aside):  # the old copy is aside and the new one in place
            os.kill(os.getpid(), signal.SIGKILL)

def payload(tmp):
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.bin").write_bytes(b"second")

sys.addaudithook(hook)
ck.save_checkpoint(run_dir, 2, payload, {}, keep_last=1)
"""


@pytest.mark.parametrize(
    ("where", "content"), [("before_rename_in", b"first"), ("before_delete_old", b"second")]
)
def test_sigkill_while_resaving_a_step_never_loses_it(tmp_path, where, content):
    """Re-saving step 2 (keep_last = 1: the only checkpoint) killed mid-swap: the step
    survives, old or new, once the next start has cleaned up."""
    import signal
    import subprocess
    import sys

    ck.save_checkpoint(tmp_path, 2, _payload(b"first"), {}, keep_last=1)
    proc = subprocess.run([sys.executable, "-c", _RESAVE_CHILD, str(tmp_path), where], check=False)
    assert proc.returncode == -signal.SIGKILL
    ck.clean_orphans(tmp_path)  # what a resume does first
    found = ck.latest_checkpoint(tmp_path)
    assert found is not None and found.name == "step_00000002"
    assert (found / "model" / "weights.bin").read_bytes() == content
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "latest",
        "step_00000002",
    ]
