"""Run directory and checkpoint format: the one module that owns both.

    RUN_DIR/
      config.toml  manifest.json  metrics.jsonl  rollouts.jsonl
      checkpoints/step_00000010/{model/, trainer_state.pt, config.toml, manifest.json}
      (model/: the HF model, or under LoRA the adapters and their base's name)
      checkpoints/latest            (text: name of the newest committed checkpoint)

A checkpoint is committed atomically: everything is written into a temp dir beside the
final one and fsynced, the manifest (sizes + sha256 of every file) is written last, then
the dir is renamed into place and the parent fsynced. A dir without a valid manifest is
never used. Re-saving a step renames the old copy aside (`step_N.old`), renames the new
one in, then deletes the old: a crash in between leaves one of them, and `clean_orphans`
puts the old one back when the new one is not in place.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mathrl.errors import MathrlError
from mathrl.io import TMP_PREFIX, atomic_write_text, fsync_dir, read_jsonl, sha256_file, write_jsonl

CKPT_DIR = "checkpoints"
PREFIX = "step_"
MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.pt"
FORMAT_VERSION = 1
ASIDE = ".old"
"""Suffix of a step's previous copy while a re-save of that step swaps in the new one."""


# ---------------------------------------------------------------- run directory


def git_info(cwd: Path | None = None) -> tuple[str, bool]:
    """(short sha or 'nogit', dirty flag) of the source tree."""
    root = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit", False
    return (sha or "nogit"), bool(dirty)


def default_run_dir(base: str | Path = "runs") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(base) / f"{stamp}_{git_info()[0]}"


def versions() -> dict[str, str]:
    """Versions of what a run depends on (for manifests and `mathrl env`)."""

    out = {"python": platform.python_version()}
    for pkg in ("mathrl", "torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def hardware() -> dict[str, Any]:

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "mps_available": bool(
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def write_run_manifest(
    run_dir: Path, seed: int, dataset_fingerprint: str, extra: dict[str, Any] | None = None
) -> None:
    sha, dirty = git_info()
    manifest = {
        "created": datetime.now(UTC).isoformat(),
        "git_sha": sha,
        "git_dirty": dirty,
        "seed": seed,
        "dataset_fingerprint": dataset_fingerprint,
        "versions": versions(),
        "hardware": hardware(),
        "argv": sys.argv,
        **(extra or {}),
    }
    atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


# ---------------------------------------------------------------- checkpoints


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    write_payload: Callable[[Path], None],
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Commit a checkpoint atomically; `write_payload(tmp_dir)` writes model and state."""
    ckpt_root = run_dir / CKPT_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f"{TMP_PREFIX}{step_dir_name(step)}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write_payload(tmp)
        entries = {}
        for f in _files(tmp):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            entries[str(f.relative_to(tmp))] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
        manifest = {
            "format": FORMAT_VERSION,
            "step": step,
            "files": entries,
            "time": time.time(),
            **meta,
        }
        with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        for d in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda p: -len(p.parts)):
            fsync_dir(d)
        aside = final.with_name(final.name + ASIDE)
        if final.exists():  # re-saving a step (e.g. after a resume): swap, never delete first
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    rotate(ckpt_root, keep_last)
    return final


def read_manifest(ckpt: Path, verify_hashes: bool = False) -> dict[str, Any]:
    """The manifest of a committed checkpoint; raises MathrlError saying what is wrong."""
    mpath = ckpt / MANIFEST
    if not mpath.is_file():
        raise MathrlError(f"Not a checkpoint (no {MANIFEST}): {ckpt}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        files = manifest["files"]
        step = int(manifest["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MathrlError(f"Corrupt checkpoint manifest {mpath}: {exc}") from None
    for rel, info in files.items():
        f = ckpt / rel
        if not f.is_file():
            raise MathrlError(f"Checkpoint {ckpt} is incomplete: missing {rel}")
        if f.stat().st_size != info["size"]:
            raise MathrlError(
                f"Checkpoint {ckpt} is damaged: {rel} has {f.stat().st_size} bytes, manifest says {info['size']}"
            )
        if verify_hashes and sha256_file(f) != info["sha256"]:
            raise MathrlError(
                f"Checkpoint {ckpt} is damaged: sha256 of {rel} does not match its manifest"
            )
    manifest["step"] = step
    return manifest


def _step_of(p: Path) -> int | None:
    if not p.name.startswith(PREFIX):
        return None
    try:
        return int(p.name[len(PREFIX) :])
    except ValueError:
        return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Committed-looking checkpoint dirs, oldest first, ordered by step number."""
    root = run_dir / CKPT_DIR
    if not root.is_dir():
        return []
    found = [(s, p) for p in root.iterdir() if p.is_dir() and (s := _step_of(p)) is not None]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path, verify_hashes: bool = True) -> Path | None:
    """The newest checkpoint whose manifest and files check out; damaged ones are skipped."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            read_manifest(ckpt, verify_hashes=verify_hashes)
        except MathrlError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
            continue
        return ckpt
    return None


def rotate(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints, by step number (never mtime)."""
    ckpts = list_checkpoints(ckpt_root.parent)
    for old in ckpts[: max(0, len(ckpts) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)


def clean_orphans(run_dir: Path) -> list[Path]:
    """Remove temp dirs left by a crash mid-save, and settle a re-save's swap (the old copy
    back in place when the new one never arrived, else deleted); returns what was removed."""
    root = run_dir / CKPT_DIR
    removed = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                removed.append(p)
            elif p.name.startswith(PREFIX) and p.name.endswith(ASIDE):
                final = p.with_name(p.name.removesuffix(ASIDE))
                if final.exists():
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
                else:
                    os.replace(p, final)
                    fsync_dir(root)
    return removed


# ---------------------------------------------------------------- model + trainer state


def save_training_checkpoint(
    run_dir: Path,
    step: int,
    save_model: Callable[[Path], None],
    state: dict[str, Any],
    config_toml: str,
    meta: dict[str, Any],
    keep_last: int,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """A training checkpoint's files, committed: save_model(dir) writes the model dir in
    its framework's format (the backend's save_model), the trainer state goes into
    trainer_state.pt, the resolved config beside it; write_extra(tmp) adds files of the
    backend's own (the MLX optimizer state)."""

    def payload(tmp: Path) -> None:
        save_model(tmp / "model")
        torch.save(state, tmp / STATE_FILE)
        (tmp / "config.toml").write_text(config_toml, encoding="utf-8")
        if write_extra is not None:
            write_extra(tmp)

    return save_checkpoint(run_dir, step, payload, {**meta, "versions": versions()}, keep_last)


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    """Trainer state saved beside the model; only tensors and plain containers are loaded."""

    path = ckpt / STATE_FILE
    if not path.is_file():
        raise MathrlError(f"Checkpoint {ckpt} has no {STATE_FILE}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged pickles
        raise MathrlError(f"Cannot read {path}: {type(exc).__name__}: {exc}") from None


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA RNG states, as weights_only-loadable values."""

    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def truncate_logs(run_dir: Path, step: int) -> None:
    """Drop log lines newer than the resumed checkpoint so the continued run re-logs them once."""
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        path = run_dir / name
        if path.exists():
            write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])
