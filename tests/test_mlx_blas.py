"""mathrl.mlx_blas: mlx's GEMMs on a system OpenBLAS (Linux), loaded only when mlx is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mathrl import mlx_blas

FOUND = next((p for p in mlx_blas.CANDIDATES if os.path.isfile(p)), None)
CHECK = """
import os, sys, mathrl, numpy as np
import mlx.core as mx
from mathrl import mlx_blas
a = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((48, 32)).astype(np.float32)
err = float(np.abs(np.array(mx.array(a) @ mx.array(b)) - a @ b).max())
maps = open("/proc/self/maps").read()  # the shared objects mapped into this process
system = [os.path.realpath(p) for p in mlx_blas.CANDIDATES if os.path.isfile(p)]
print(mlx_blas._loaded[0], any(p in maps for p in system), err < 1e-4)
"""


def run(env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != mlx_blas.ENV}
    if env_value is not None:
        env[mlx_blas.ENV] = env_value
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
@pytest.mark.skipif(FOUND is None, reason="no system OpenBLAS (apt install libopenblas0-pthread)")
def test_mlx_binds_to_the_system_openblas_and_multiplies_correctly():
    out = run(None)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [FOUND, "True", "True"]
    named = run(FOUND)  # the same library by name
    assert named.stdout.split() == [FOUND, "True", "True"], named.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_off_keeps_the_wheels_blas_and_a_bad_path_is_one_line():
    out = run("off")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "False", "True"]
    bad = run("/nonexistent/libblas.so")
    assert bad.returncode != 0
    assert "MATHRL_MLX_BLAS=/nonexistent/libblas.so: cannot load it" in bad.stderr


def test_nothing_is_loaded_once_mlx_is_imported_or_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert mlx_blas._choose() is None
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "mlx.core", object())
    assert mlx_blas._choose() is None
