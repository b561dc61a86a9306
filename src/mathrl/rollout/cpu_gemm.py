"""Decode-shaped GEMMs on CPUs: fp32 weights prepacked for oneDNN, fp16 and int8 copies.

Why: decoding a real-size model on a CPU is bound by its linear layers, and torch's fp32
GEMM (MKL) at decode shapes (16-64 rows x a wide weight) reached 33-120 GFLOP/s on the
2-core AMD AVX2 machine of BENCHMARKS.md ("Decode GEMMs"), against a 185 GFLOP/s peak.
Three packed forms of a weight, each called as `linear(x)` with its bias inside:

- `PackedLinear` (the lean step's default on CPUs, rollout.weights = "model"): the fp32
  weight reordered once per generate call into oneDNN's blocked layout (the op torch's
  inductor uses for CPU linears): 1.1-2.7x MKL's speed there, the same fp32 maths up to
  summation order (~1e-6 relative).
- `Fp16Linear` (rollout.weights = "fp16"): fbgemm's fp16-weight GEMM (fp32 activations
  and accumulation; the weight is rounded to fp16, ~2e-4 relative): 0.9-1.8x PackedLinear
  (most at 16 rows), half the weight bytes.
- `Int8Linear` (rollout.weights = "int8"): fbgemm's dynamic int8 GEMM (the kernel behind
  torch.ao's quantize_dynamic): 1.3-2.7x Fp16Linear, a quarter of the bytes, but coarse.
  Weights are quantised per output channel (symmetric, max |w| / 127); the kernel
  quantises each call's activations per tensor (8-bit with reduce_range, which avoids the
  int16 saturation of AVX2's u8 x s8 multiply: without it the error is ~10x larger), so
  an outlier channel of the residual stream costs every row precision.

fp16 and int8 log-probs differ from the trainer's (rollout/logprob_diff); train.tis_cap
corrects the policy gradient for it.

Why not other kernels: torch._int_mm and torch._weight_int8pack_mm run at 4-6 GOP/s on
this CPU (reference loops); bf16 GEMMs without AMX at ~20 GFLOP/s; torchao's int8
configs reach fast kernels only through torch.compile. torch marks its quantized-tensor
constructors deprecated; the one call that builds them is here, and a torch without these
ops gives one clear error (`unavailable`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

WEIGHT_MODES = ("model", "fp16", "int8")


def unavailable(mode: str, device: torch.device) -> str | None:
    """Why rollout.weights = `mode` cannot run on `device` with this torch, or None."""
    if mode == "model":
        return None
    if device.type != "cpu":
        return (
            f"rollout.weights = {mode!r} runs on CPUs (fbgemm kernels), not {device.type}; "
            "on a GPU use rollout.autocast = 'bfloat16'"
        )
    ops = torch.ops.quantized
    needed = {
        "fp16": ("linear_prepack_fp16", "linear_dynamic_fp16"),
        "int8": ("linear_prepack", "linear_dynamic"),
    }[mode]
    if not all(hasattr(ops, op) for op in needed):
        return (
            f"rollout.weights = {mode!r} needs fbgemm's {' / '.join(needed)}, which this "
            f"torch ({torch.__version__}) lacks; use rollout.weights = 'model'"
        )
    if not ({"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines)):
        return (
            f"rollout.weights = {mode!r} needs torch's x86/fbgemm quantized engine, which "
            "this build lacks (not an x86 CPU?); use rollout.weights = 'model'"
        )
    return None


def packed_linear_available() -> bool:
    """torch has oneDNN and its prepacked-linear ops (CPU builds since torch 2.0)."""
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear:
    """y = x @ W.T + b with an fp32 W reordered for oneDNN (tuned for `rows` rows)."""

    __slots__ = ("weight", "bias", "out_features")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> None:
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, rows))
        self.bias = None if bias is None else bias.detach().contiguous()
        self.out_features = int(weight.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) fp32 -> (..., N) fp32."""
        return packed_linear(x, self.weight, self.bias, self.out_features)

    def parts(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """(packed weight, bias, output width): packed_linear's arguments."""
        return self.weight, self.bias, self.out_features


def packed_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """y = x @ W.T + b with W packed by PackedLinear. Under torch.compile it is an op inductor
    calls as it is: inductor lowers oneDNN's linear only for weights frozen into the graph,
    and a policy's weights change every optimizer step (static_decode.py passes them in)."""
    if torch.compiler.is_compiling():
        return _packed_linear_op(x, weight, bias, out_features)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@torch.library.custom_op("mathrl::packed_linear", mutates_args=())
def _packed_linear_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@_packed_linear_op.register_fake
def _(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


class Fp16Linear:
    """y = x @ W.T + b with W held in fp16 (fbgemm's packed layout), fp32 arithmetic."""

    __slots__ = ("packed",)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        b = None if bias is None else bias.detach().float().contiguous()
        self.packed: Any = torch.ops.quantized.linear_prepack_fp16(weight.detach().float(), b)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) in any float dtype -> (..., N) fp32."""
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self.packed)


class Int8Linear:
    """y = x @ W.T + b with W held as per-channel int8 (fbgemm's packed layout)."""

    __slots__ = ("packed",)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)  # (N,)
        q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
        zero = torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
        with warnings.catch_warnings():  # torch's quantized-tensor deprecation (module doc)
            warnings.simplefilter("ignore", UserWarning)
            qw = torch._make_per_channel_quantized_tensor(q, scales.double(), zero, 0)
        b = None if bias is None else bias.detach().float().contiguous()
        self.packed: Any = torch.ops.quantized.linear_prepack(qw, b)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) in any float dtype -> (..., N) fp32."""
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, True)


CpuLinear = PackedLinear | Fp16Linear | Int8Linear


def pack(mode: str, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> CpuLinear:
    """`weight` (and bias) in the packed form of rollout.weights = `mode` ("model": fp32
    for oneDNN, tuned for `rows` rows)."""
    if mode == "fp16":
        return Fp16Linear(weight, bias)
    if mode == "int8":
        return Int8Linear(weight, bias)
    return PackedLinear(weight, bias, rows)
