"""Files the package writes: crash-safe JSONL appends and strict reads, atomic whole files.

A crash can only tear the LAST line of a file (each batch of records is one O_APPEND write).
`read_jsonl` skips such a torn tail with a warning; the next `append_jsonl` drops it first
(truncating the file back to its last newline), so a torn record never ends up in the middle
of the file, where a malformed line is an error. Small files (configs, summaries, whole
JSONL files) are replaced atomically: readers see the old or the new content. No torch here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from mathrl.errors import DataError

CACHE_ENV = "MATHRL_CACHE"
"""Environment variable naming mathrl's cache (converted models, prepared datasets)."""

TMP_PREFIX = ".tmp_"
"""Prefix of files and dirs being written; a crash can leave them behind (cleaned on resume)."""


def cache_root() -> Path:
    """mathrl's cache: $MATHRL_CACHE, else ~/.cache/mathrl (converted GGUFs, prepared data)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mathrl").expanduser()


def append_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Append records as JSON lines in one write, then fsync. NaN/inf raise DataError."""
    path = Path(path)
    data = "".join(_dump(r, path, i) + "\n" for i, r in enumerate(records)).encode()
    if not data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _drop_torn_tail(fd, path)
        view = memoryview(data)
        while view:  # os.write may write less than asked (e.g. signals, huge batches)
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL file; a torn last line is skipped with a warning."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    lines = raw.split(b"\n")
    # A complete file ends with "\n": split leaves an empty last item. Otherwise it is a tail
    # that a crash may have cut short.
    tail = lines.pop()
    records = []
    for lineno, line in enumerate(lines, start=1):
        if line.strip():
            records.append(_parse(line, path, lineno))
    if tail.strip():
        try:
            records.append(_parse(tail, path, len(lines) + 1))
        except DataError as e:
            warnings.warn(f"skipping torn last line: {e}", stacklevel=2)
    return records


def _dump(record: dict[str, Any], path: Path, index: int) -> str:
    """One JSON line; names the offending field of a NaN/inf or unserializable value."""
    try:
        return json.dumps(record, allow_nan=False, default=_to_builtin, ensure_ascii=False)
    except (ValueError, TypeError) as e:
        where = _bad_field(record) or "?"
        raise DataError(
            f"{path}: record {index}, field {where!r}: cannot write JSON: {e}"
        ) from None


def _to_builtin(value: Any) -> Any:
    """numpy / torch scalars -> Python numbers (json calls this for unknown types)."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _bad_field(value: Any, prefix: str = "") -> str | None:
    """Dotted path of the first NaN/inf or unserializable value, if any."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return prefix
        if value is None or isinstance(value, str | int | float | bool):
            return None
        return prefix
    for key, item in items:
        found = _bad_field(item, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def _parse(line: bytes, path: Path, lineno: int) -> dict[str, Any]:
    """One JSON object, or DataError naming file:line."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}:{lineno}: malformed JSON: {e}") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def _drop_torn_tail(fd: int, path: Path) -> None:
    """Make the file end with a newline: a torn last line is cut off, a valid one completed."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    # Read backwards to the last newline; the tail is at most one (usually short) record.
    start, chunk = size, 4096
    tail = b""
    while start > 0:
        start = max(0, start - chunk)
        tail = os.pread(fd, size - start, start)
        if b"\n" in tail:
            break
    cut = start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    last = os.pread(fd, size - cut, cut)
    try:
        json.loads(last)
    except (json.JSONDecodeError, UnicodeDecodeError):
        warnings.warn(
            f"{path}: dropping a torn last line ({size - cut} bytes) before appending",
            stacklevel=3,
        )
        os.ftruncate(fd, cut)
        return
    # A complete record that only lacks its newline: keep it.
    os.write(fd, b"\n")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file so readers see the old or the new content, never a mix."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Replace a whole JSONL file atomically (same line format and checks as append_jsonl)."""
    path = Path(path)
    atomic_write_text(path, "".join(_dump(r, path, i) + "\n" for i, r in enumerate(records)))
