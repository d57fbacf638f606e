"""FP8 (e4m3) Linear layers for inference: rowwise-scaled `torch._scaled_mm`, with a pure-PyTorch reference.

    converted = convert_linears_to_fp8(model.backbone)      # names of the nn.Linear modules swapped in place
    y = fp8_layer(x)                                        # x (B, L, K) or (M, K), bf16 -> bf16

An `Fp8Linear` holds its weight (N, K) in float8_e4m3fn with one fp32 scale per output row (quantised once, at
conversion). Each call quantises its input per row (per token) the same way and runs
`torch._scaled_mm(a, b.t(), scale_a (M, 1), scale_b (1, N), out_dtype=bf16, bias, use_fast_accum=True)`, which
computes `(a * scale_a) @ (b * scale_b).t() + bias` with FP8 tensor cores (CUDA, compute capability >= 8.9; PyTorch
also runs it on CPU, which is what the tests use). The input quantiser is a Triton kernel on CUDA (one read of the
bf16 input, one write of FP8 + scales; the plain torch amax/divide/cast takes several passes and fp32 temporaries,
docs/BENCHMARKS.md "FP8 projections") and `quantize_rowwise_reference` elsewhere.

`fp8_linear_reference` is the definition the fast path is tested against: quantise, dequantise both operands in
fp32, matmul, add the bias.

Scores change under FP8 (3 mantissa bits per operand): FP8 is opt-in (`--dtype fp8`), inference only.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
# An all-zero row gets this amax (not 0): its scale stays finite and its values quantise to 0.
AMAX_FLOOR = 1e-12
# torch._scaled_mm needs both the reduction dim K and the output dim N to be multiples of 16.
SCALED_MM_MULTIPLE = 16


# --------------------------------------------------------------------------------------------------------------------
# Rowwise quantisation


def quantize_rowwise_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q (M, K) float8_e4m3fn, scale (M, 1) fp32) with x ~= q * scale: each row's amax maps to FP8_MAX."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()  # (M, 1)
    scale = amax.clamp(min=AMAX_FLOOR) / FP8_MAX  # (M, 1)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)  # (M, K)
    return q, scale


def dequantize_rowwise(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 values of a rowwise-quantised tensor: q (M, K) * scale (M, 1)."""
    return q.float() * scale


@functools.cache
def _triton_quantizer() -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """The Triton rowwise quantiser, or None where Triton does not import."""
    try:
        from pyserini_ssm.ops.fp8_triton import quantize_rowwise_triton
    except ImportError:
        return None
    return quantize_rowwise_triton


def quantizer_name(device: torch.device | str) -> str:
    """Which input quantiser `quantize_rowwise` runs for tensors on `device`: "triton" or "torch"."""
    return "triton" if torch.device(device).type == "cuda" and _triton_quantizer() is not None else "torch"


def quantize_rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rowwise_reference` of a contiguous (M, K) tensor: the Triton kernel on CUDA, torch elsewhere."""
    if x.is_cuda:
        triton_quantize = _triton_quantizer()
        if triton_quantize is not None:
            return triton_quantize(x)
    return quantize_rowwise_reference(x)


# --------------------------------------------------------------------------------------------------------------------
# The layer and its reference


def fp8_linear_reference(x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
                         bias: torch.Tensor | None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """What `Fp8Linear` computes, in plain fp32 PyTorch: x (..., K), weight_fp8 (N, K), weight_scale (1, N)."""
    shape = x.shape
    q, scale = quantize_rowwise_reference(x.reshape(-1, shape[-1]))  # (M, K), (M, 1)
    weight = weight_fp8.float() * weight_scale.reshape(-1, 1)  # (N, K)
    out = dequantize_rowwise(q, scale) @ weight.t()  # (M, N)
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype).reshape(*shape[:-1], weight_fp8.shape[0])


class QuantizedRows(NamedTuple):
    """An activation already quantised per row for an `Fp8Linear` (by the kernel that produced it, e.g. a norm in
    `ops.rmsnorm`): codes q (M, K) float8_e4m3fn, scale (M, 1) fp32, and the shape (..., K) they stand for."""

    q: torch.Tensor
    scale: torch.Tensor
    shape: torch.Size


class Fp8WeightError(AttributeError):
    """Raised when code reads `.weight` of an `Fp8Linear` (a fused kernel that takes weights, not modules)."""


class Fp8Linear(nn.Module):
    """An inference-only `nn.Linear` with an FP8 e4m3 weight (N, K) and per-output-row fp32 scales (1, N).

    Input (..., K) of any float dtype; output (..., N) bf16. `weight_fp8` is a frozen parameter (so parameter counts
    stay those of the model); `weight_scale` a buffer. Build with `Fp8Linear.from_linear`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if size % SCALED_MM_MULTIPLE:
                raise ValueError(f"Fp8Linear: {name}={size} is not a multiple of {SCALED_MM_MULTIPLE} "
                                 f"(torch._scaled_mm needs it); keep this layer in bf16")
        self.in_features = in_features
        self.out_features = out_features
        self.weight_fp8 = nn.Parameter(torch.zeros(out_features, in_features, dtype=FP8_DTYPE, device=device),
                                       requires_grad=False)  # (N, K)
        self.register_buffer("weight_scale", torch.ones(1, out_features, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=torch.bfloat16, device=device),
                                     requires_grad=False)  # (N,)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Fp8Linear":
        """Quantise `linear`'s weight per output row (its amax -> FP8_MAX); the bias stays, in bf16."""
        weight = linear.weight.detach()  # (N, K)
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=weight.device)
        q, scale = quantize_rowwise_reference(weight)  # (N, K), (N, 1)
        layer.weight_fp8.data.copy_(q)
        layer.weight_scale.copy_(scale.reshape(1, -1))
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().to(torch.bfloat16))
        return layer

    def __getattr__(self, name: str):  # noqa: ANN204 (nn.Module's signature)
        if name == "weight":  # a fused kernel handed this layer's weight: say why there is none
            raise Fp8WeightError("an Fp8Linear has no bf16 .weight (it holds weight_fp8 and weight_scale): code that "
                                 "reads a Linear's weight directly (a fused kernel) must keep that layer in bf16")
        return super().__getattr__(name)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight the layer computes with, in fp32 (N, K)."""
        return self.weight_fp8.float() * self.weight_scale.reshape(-1, 1)

    def forward(self, x: torch.Tensor | QuantizedRows) -> torch.Tensor:
        if isinstance(x, QuantizedRows):  # quantised where it was produced
            q, scale, shape = x
        else:
            shape = x.shape  # (..., K)
            rows = x.reshape(-1, self.in_features)  # (M, K)
            if not rows.is_contiguous():
                rows = rows.contiguous()
            if rows.shape[0] == 0:
                return x.new_zeros(*shape[:-1], self.out_features, dtype=torch.bfloat16)
            q, scale = quantize_rowwise(rows)  # (M, K) e4m3, (M, 1) fp32
        out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                               bias=self.bias, out_dtype=torch.bfloat16, use_fast_accum=True)  # (M, N)
        return out.reshape(*shape[:-1], self.out_features)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 (nn.Module's signature)
        # .to(dtype) / .float() / .half() would turn the FP8 codes into unscaled numbers: refuse before any cast,
        # found by applying `fn` to empty tensors of the layer's dtypes. Moves between devices pass.
        if fn(self.weight_fp8.new_empty(0)).dtype != FP8_DTYPE or \
                fn(self.weight_scale.new_empty(0)).dtype != torch.float32:
            raise RuntimeError("an Fp8Linear cannot be cast to another dtype (only moved between devices); convert "
                               "to FP8 after .to(dtype)")
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"e4m3 rowwise")


# --------------------------------------------------------------------------------------------------------------------
# Conversion


def fp8_shape_ok(linear: nn.Linear) -> bool:
    """Whether `torch._scaled_mm` takes this layer's shape (in and out features multiples of 16)."""
    return linear.in_features % SCALED_MM_MULTIPLE == 0 and linear.out_features % SCALED_MM_MULTIPLE == 0


def convert_linears_to_fp8(module: nn.Module, predicate: Callable[[str, nn.Linear], bool] | None = None,
                           ) -> list[str]:
    """Swap, in place, every `nn.Linear` under `module` for which `predicate(name, layer)` holds (default: all)
    and whose shape `torch._scaled_mm` takes; returns the swapped names (as `named_modules` spells them).

    Layers of other types are untouched (embeddings are `nn.Embedding`); layers of unsupported shapes stay as they
    are. The caller excludes what must stay bf16: a score head, a layer whose `.weight` a fused kernel reads.
    """
    converted: list[str] = []
    targets = [(name, child) for name, child in module.named_modules()
               if type(child) is nn.Linear and fp8_shape_ok(child) and (predicate is None or predicate(name, child))]
    for name, child in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, Fp8Linear.from_linear(child))
        converted.append(name)
    return converted


def fp8_linears(module: nn.Module) -> list[str]:
    """Names of the `Fp8Linear` layers under `module`."""
    return [name for name, child in module.named_modules() if isinstance(child, Fp8Linear)]


__all__ = ["FP8_DTYPE", "FP8_MAX", "Fp8Linear", "QuantizedRows", "Fp8WeightError", "quantize_rowwise",
           "quantize_rowwise_reference", "dequantize_rowwise", "fp8_linear_reference", "convert_linears_to_fp8",
           "fp8_shape_ok", "fp8_linears", "quantizer_name"]
