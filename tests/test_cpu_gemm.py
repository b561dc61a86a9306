"""Packed CPU linears of the lean decode step (rollout/cpu_gemm.py) against plain maths."""

import pytest
import torch
import torch.nn.functional as F

from mathrl.rollout import cpu_gemm
from mathrl.rollout.cpu_gemm import Fp16Linear, Int8Linear, PackedLinear

pytestmark = pytest.mark.skipif(
    cpu_gemm.unavailable("int8", torch.device("cpu")) is not None
    or not cpu_gemm.packed_linear_available(),
    reason="this torch lacks the oneDNN / fbgemm CPU ops",
)


def weights(n=300, k=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.05, torch.randn(n, generator=g)


@pytest.mark.parametrize("rows", [1, 5, 16, 64])
def test_packed_fp32_equals_linear(rows):
    """oneDNN's reordered weight: F.linear's values up to summation order, at any row count
    (the packing is tuned for 16 rows)."""
    w, b = weights()
    x = torch.randn(rows, 200)
    for bias in (b, None):
        got = PackedLinear(w, bias, rows=16)(x)
        torch.testing.assert_close(got, F.linear(x, w, bias), atol=1e-5, rtol=1e-5)


def test_fp16_weights_equal_linear_on_rounded_weights():
    """fp16 copy: exactly the maths of the fp16-rounded weight in fp32 (not fp16 arithmetic:
    the sum of 200 products would then be off by ~1e-2)."""
    w, b = weights()
    x = torch.randn(7, 200)
    expected = F.linear(x, w.half().float(), b)
    torch.testing.assert_close(Fp16Linear(w, b)(x), expected, atol=1e-5, rtol=1e-5)
    assert (Fp16Linear(w, b)(x) - F.linear(x, w, b)).abs().max() > 1e-6  # it did round


def test_int8_exact_on_representable_values():
    """Rows that are integers times their scale, and activations on an 8-bit grid that
    the kernel's 7-bit reduce_range quantisation hits exactly: the product is exact."""
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (40, 24), generator=g).float()
    q[:, 0] = 127  # each row's max |w| is 127 steps: scale = row_scale exactly
    row_scale = torch.rand(40, generator=g) * 0.01 + 1e-3
    w = q * row_scale[:, None]
    # activations: 0..127 steps of 0.25 (min 0, max 31.75: 128 levels, the 7-bit range)
    x = torch.randint(0, 128, (5, 24), generator=g).float() * 0.25
    x[0, 0], x[0, 1] = 0.0, 127 * 0.25
    got = Int8Linear(w)(x)
    torch.testing.assert_close(got, x @ w.T, atol=1e-4, rtol=1e-5)


def test_int8_close_on_gaussian_values():
    """Generic inputs: within a few percent of the largest output (7-bit activations)."""
    w, b = weights(seed=2)
    x = torch.randn(16, 200)
    ref = F.linear(x, w, b)
    err = (Int8Linear(w, b)(x) - ref).abs().max() / ref.abs().max()
    assert 1e-4 < float(err) < 0.05, float(err)


def test_unavailable_says_why():
    assert cpu_gemm.unavailable("model", torch.device("cuda")) is None
    msg = cpu_gemm.unavailable("int8", torch.device("cuda"))
    assert msg is not None and "CPU" in msg and "rollout.autocast" in msg
    assert cpu_gemm.unavailable("fp16", torch.device("cpu")) is None
