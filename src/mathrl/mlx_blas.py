"""A fast BLAS for MLX on Linux: load a system OpenBLAS before mlx is imported.

Why: the `mlx[cpu]` wheel for Linux ships netlib's reference BLAS, whose single-threaded
sgemm runs at 4-5 GFLOP/s on the 2-core test machine (torch's GEMMs: 130-185). A shared
library loaded with RTLD_GLOBAL before `import mlx.core` comes first in the global symbol
scope, so libmlx's cblas/sgemm calls bind to it instead of the bundled copy: with Debian's
OpenBLAS (`apt install libopenblas0-pthread`) MLX's matmuls run 10-25x faster
(BENCHMARKS.md). Same maths, another summation order.

MATHRL_MLX_BLAS picks the library: a path, or "off" to keep the wheel's own; unset, the
first OpenBLAS found at the usual distribution paths. On macOS mlx uses Accelerate and
nothing is loaded. `import mathrl` installs a hook (`install`) that loads it when mlx is
first imported, by mathrl, mlx-lm or the user, so a torch-only process never loads it;
mlx imported before mathrl keeps the wheel's BLAS. Stdlib only.
"""

from __future__ import annotations

import ctypes
import importlib.abc
import os
import sys
from collections.abc import Sequence
from types import ModuleType

ENV = "MATHRL_MLX_BLAS"
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",  # Debian/Ubuntu, libopenblas0-*
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",  # Fedora/RHEL
    "/usr/lib/libopenblas.so.0",  # Arch, Alpine
)
_loaded: list[str | None] = []  # the path loaded (None: none), once per process


def load() -> str | None:
    """Load the BLAS for MLX (see module doc) once; the path loaded, or None.

    Does nothing off Linux, when mlx is already imported (too late to rebind), or with
    MATHRL_MLX_BLAS=off. A named library that cannot be loaded is an error (one line).
    """
    if _loaded:
        return _loaded[0]
    path = _choose()
    if path is not None:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            if os.environ.get(ENV):  # asked for by name: say so
                from mathrl.errors import ConfigError

                raise ConfigError(f"{ENV}={path}: cannot load it ({e})") from None
            path = None  # a found but broken system library: keep mlx's own BLAS
    _loaded.append(path)
    return path


class _BeforeMlx(importlib.abc.MetaPathFinder):
    """Loads the BLAS the first time anything imports mlx, then steps aside."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if fullname == "mlx":
            sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
            load()
        return None  # the normal finders import mlx itself


def install() -> None:
    """Load the BLAS just before mlx's first import (see module doc); idempotent."""
    if "mlx" in sys.modules or any(isinstance(f, _BeforeMlx) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeMlx())


def _choose() -> str | None:
    if not sys.platform.startswith("linux") or "mlx.core" in sys.modules:
        return None
    named = os.environ.get(ENV, "").strip()
    if named.lower() in ("off", "0", "none"):
        return None
    if named:
        return named
    return next((p for p in CANDIDATES if os.path.isfile(p)), None)
