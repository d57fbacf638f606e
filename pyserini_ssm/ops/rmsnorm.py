"""RMSNorms of the Mamba-2 short-SSD path, lean: the residual add + RMSNorm between layers (`add_rmsnorm`) and the
mixer's gated RMSNorm, norm(y * silu(z)) (`gated_rmsnorm`), forward and backward in Triton (`ops.rmsnorm_kernels`,
imported on first use), with pure-PyTorch references (`add_rmsnorm_reference`, `gated_rmsnorm_reference`).

They compute what mamba_ssm's `layer_norm_fn(..., is_rms_norm=True)` and `RMSNormGated` (one group,
norm_before_gate=False) compute, in the same fp32 order, dtypes included: the output in the input's dtype, the
residual in fp32 when `residual_in_fp32`, the weight's gradient in the weight's dtype. Why not call mamba_ssm's:
its wrappers pass about 40 arguments through `triton.autotune` and four `triton.heuristics` layers, about 0.3 ms of
host time a call under the profiler (bin/profile-training-step --host, H200, 2026-12-02), and a 128-pair training
step makes about 200 of them: the host, not the GPU, set that step's pace. These kernels take about 20 arguments,
with no autotuner or heuristics around them, and several rows per program (the gated norm's 3,072 channels fill
75 % of a 4,096-lane block either way).

    x (..., N) + residual (..., N) -> r (fp32);  y = r * rstd * w,  rstd = 1 / sqrt(mean(r^2) + eps)
    g = y * silu(z);  out = g * rstd_g * w
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

# Values one program holds per tensor: rows x the power-of-two width (forward: 4 rows of mamba2-780m's 1,536
# channels in 2,048 lanes, 2 of the gated norm's 3,072 in 4,096; the backward, with more tensors live, half as many
# rows), 32 or 16 a thread at 8 warps: no register spills.
# PYSERINI_SSM_NORM_VALUES and PYSERINI_SSM_NORM_WARPS override the forward's two (bin/profile-short-ssd
# --norm-configs times other settings: on the H200 none was faster by more than 2 %, 2026-12-02).
FORWARD_VALUES = int(os.environ.get("PYSERINI_SSM_NORM_VALUES", "8192"))
BACKWARD_VALUES = 4096
WARPS = int(os.environ.get("PYSERINI_SSM_NORM_WARPS", "8"))
BACKWARD_WARPS = 8
# Rows one backward program runs through, summing its share of the weight's gradient: at 32k tokens 512 programs
# and a (512, N) fp32 buffer of partial sums to add up.
ROWS_PER_PROGRAM = 64


def add_rmsnorm_reference(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                          residual_in_fp32: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(y in x's dtype, the new residual r = x + residual in fp32 when `residual_in_fp32` or residual's dtype)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    r = x.to(compute) if residual is None else x.to(compute) + residual.to(compute)
    rstd = torch.rsqrt(r.square().mean(-1, keepdim=True) + eps)
    residual_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
    return (r * rstd * weight.to(compute)).to(x.dtype), r.to(residual_dtype)


def gated_rmsnorm_reference(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """norm(y * silu(z)) * weight over the last dimension (one group), in y's dtype."""
    compute = torch.float64 if y.dtype == torch.float64 else torch.float32
    g = y.to(compute) * F.silu(z.to(compute))
    return (g * torch.rsqrt(g.square().mean(-1, keepdim=True) + eps) * weight.to(compute)).to(y.dtype)


@functools.cache
def _kernels():
    from pyserini_ssm.ops import rmsnorm_kernels as kernels

    return (kernels.add_rmsnorm_fwd, kernels.add_rmsnorm_bwd, kernels.gated_rmsnorm_fwd,
            kernels.gated_rmsnorm_bwd)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(M, N) view of (..., N) with unit stride on N (a copy only when the last stride is not 1)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _block(n: int, values: int) -> tuple[int, int]:
    """(power-of-two width, rows at once) of a program over rows of `n` values holding about `values` of each
    tensor; rows at once divides ROWS_PER_PROGRAM."""
    import triton

    block = triton.next_power_of_2(n)
    return block, max(1, min(ROWS_PER_PROGRAM, values // block))


def _backward_programs(rows: int) -> int:
    """Programs of a backward: ROWS_PER_PROGRAM rows each (a fixed count: no recompilation per row length)."""
    return -(-rows // ROWS_PER_PROGRAM)


def _round_code(dtype: torch.dtype) -> int:
    return {torch.bfloat16: 1, torch.float16: 2}.get(dtype, 0)


def _quantized_outputs(rows: int, n: int, device: torch.device, quantize: bool):
    from pyserini_ssm.ops.fp8 import FP8_DTYPE

    if not quantize:
        return None, None
    return (torch.empty(rows, n, device=device, dtype=FP8_DTYPE),
            torch.empty(rows, 1, device=device, dtype=torch.float32))


def _add_forward(x2, r2, weight, eps, residual_dtype, quantize: bool = False, scaled: "ScaledRows | None" = None):
    import triton

    rows, n = x2.shape
    # the sum is stored unless it is x itself (scaled rows exist only inside the kernel: never aliased to x)
    store = r2 is not None or residual_dtype != x2.dtype or scaled is not None
    q, scale = _quantized_outputs(rows, n, x2.device, quantize)
    y = torch.empty_like(x2) if not quantize else None
    ro = torch.empty(rows, n, device=x2.device, dtype=residual_dtype) if store else x2
    rstd = torch.empty(rows, device=x2.device, dtype=torch.float32)
    block, rows_at_once = _block(n, FORWARD_VALUES)
    sums = scaled.sumsq if scaled is not None else rstd
    if scaled is not None and (sums.shape[0] != rows or sums.stride(-1) != 1 or sums.dtype != torch.float32):
        raise ValueError(f"ScaledRows: sumsq {tuple(sums.shape)} {sums.dtype} does not give one fp32 row of sums "
                         f"for each of the {rows} rows")
    parts = sums.shape[1] if scaled is not None else 1
    _kernels()[0][(-(-rows // rows_at_once),)](
        x2, r2 if r2 is not None else x2, weight, y if y is not None else x2, ro, rstd,
        q if q is not None else x2, scale if scale is not None else rstd, sums, rows, n, x2.stride(0),
        r2.stride(0) if r2 is not None else 0, y.stride(0) if y is not None else 0, ro.stride(0),
        q.stride(0) if q is not None else 0, sums.stride(0) if scaled is not None else 0, parts,
        float(scaled.width) if scaled is not None else 1.0, float(scaled.eps) if scaled is not None else 0.0,
        float(eps), HAS_R=r2 is not None, STORE_RO=store, QUANT=quantize, ROUND=_round_code(x2.dtype),
        ROWS=rows_at_once, BN=block, X_SCALED=scaled is not None, PB=triton.next_power_of_2(parts),
        num_warps=WARPS)
    return (y if not quantize else (q, scale)), ro, rstd


class AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, residual_dtype):
        shape = x.shape
        y, ro, rstd = _add_forward(_rows(x), _rows(residual) if residual is not None else None, weight, eps,
                                   residual_dtype)
        ctx.save_for_backward(ro, weight, rstd)
        ctx.shape, ctx.x_dtype, ctx.eps, ctx.has_residual = shape, x.dtype, eps, residual is not None
        # an unused residual output (the final norm) gets no gradient: None, not a zero tensor to add
        ctx.set_materialize_grads(False)
        return y.view(shape), ro.view(shape)

    @staticmethod
    def backward(ctx, dy, dro):
        ro, weight, rstd = ctx.saved_tensors
        rows, n = ro.shape
        dy = _rows(dy) if dy is not None else torch.zeros(rows, n, device=ro.device, dtype=ctx.x_dtype)
        dro = _rows(dro) if dro is not None else None
        dx = torch.empty(rows, n, device=ro.device, dtype=ctx.x_dtype)
        dr = torch.empty_like(ro) if ctx.has_residual and ro.dtype != ctx.x_dtype else None
        programs = _backward_programs(rows)
        dw = torch.empty(programs, n, device=ro.device, dtype=torch.float32)
        block, rows_at_once = _block(n, BACKWARD_VALUES)
        _kernels()[1][(programs,)](
            ro, weight, dy, dro if dro is not None else dy, rstd, dx, dr if dr is not None else dx, dw, rows, n,
            ro.stride(0), dy.stride(0), dro.stride(0) if dro is not None else 0, dx.stride(0),
            dr.stride(0) if dr is not None else 0,
            HAS_DRO=dro is not None, STORE_DR=dr is not None, ROWS=rows_at_once, RPP=ROWS_PER_PROGRAM, BN=block,
            num_warps=BACKWARD_WARPS)
        dresidual = (dr if dr is not None else dx).view(ctx.shape) if ctx.has_residual else None
        return dx.view(ctx.shape), dresidual, dw.sum(0).to(weight.dtype), None, None


class ScaledRows(NamedTuple):
    """Rows `values` (..., N) that stand for values * rstd, rstd = 1 / sqrt(sum(sumsq[row]) / width + eps) per row:
    a mixer's output whose gated RMSNorm left its row scale for later (`ops.ssd_short.ssd_short_inference` with
    `gate`: out_proj(g rstd) = rstd out_proj(g) for a bias-free out_proj). `add_rmsnorm` applies it."""

    values: torch.Tensor  # (..., N)
    sumsq: torch.Tensor  # (rows, parts) fp32: partial sums of squares of the gated values, per row
    width: int  # how many values those sums cover (the gated norm's width)
    eps: float  # the gated norm's eps


def scaled_rows_reference(rows: ScaledRows) -> torch.Tensor:
    """The rows a ScaledRows stands for, in fp32."""
    rstd = torch.rsqrt(rows.sumsq.double().sum(-1) / rows.width + rows.eps).float()
    return rows.values.float() * rstd.view(*rows.values.shape[:-1], 1)


def add_rmsnorm(x: torch.Tensor | ScaledRows, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                residual_in_fp32: bool = True, quantize: bool = False) -> tuple[Any, torch.Tensor]:
    """(y, r): y = RMSNorm(x + residual) * weight in x's dtype, r = x + residual (the next layer's residual: fp32
    when `residual_in_fp32` and residual is None, else residual's dtype), as mamba_ssm's
    `layer_norm_fn(x, weight, None, residual, prenorm=True, residual_in_fp32, eps, is_rms_norm=True)`.

    `quantize` (inference): y as `ops.fp8.QuantizedRows`, e4m3 codes and per-row scales written by the norm kernel
    itself, for an `Fp8Linear` next (the codes `quantize_rowwise` gives for y, without y's write and read).
    x as `ScaledRows` (inference): its row scale is applied as x is read."""
    scaled = x if isinstance(x, ScaledRows) else None
    if scaled is not None:
        x = scaled.values
    residual_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, weight)):
        if quantize or scaled is not None:
            raise ValueError("FP8 outputs and ScaledRows are for inference: no gradient flows through them")
        return AddRMSNormFn.apply(x, residual, weight, eps, residual_dtype)
    y, ro, _ = _add_forward(_rows(x), _rows(residual) if residual is not None else None, weight, eps,
                            residual_dtype, quantize, scaled)
    return _shaped(y, x.shape), ro.view(x.shape)


def _shaped(y, shape: torch.Size) -> Any:
    if isinstance(y, tuple):
        from pyserini_ssm.ops.fp8 import QuantizedRows

        return QuantizedRows(y[0], y[1], shape)
    return y.view(shape)


def _gated_forward(y2, z2, weight, eps, quantize: bool = False):
    rows, n = y2.shape
    q, scale = _quantized_outputs(rows, n, y2.device, quantize)
    out = torch.empty(rows, n, device=y2.device, dtype=y2.dtype) if not quantize else None
    rstd = torch.empty(rows, device=y2.device, dtype=torch.float32)
    block, rows_at_once = _block(n, FORWARD_VALUES)
    _kernels()[2][(-(-rows // rows_at_once),)](
        y2, z2, weight, out if out is not None else y2, rstd, q if q is not None else y2,
        scale if scale is not None else rstd, rows, n, y2.stride(0), z2.stride(0),
        out.stride(0) if out is not None else 0, q.stride(0) if q is not None else 0, float(eps),
        QUANT=quantize, ROUND=_round_code(y2.dtype), ROWS=rows_at_once, BN=block, num_warps=WARPS)
    return (out if not quantize else (q, scale)), rstd


class GatedRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, z, weight, eps):
        y2, z2 = _rows(y), _rows(z)
        out, rstd = _gated_forward(y2, z2, weight, eps)
        ctx.save_for_backward(y2, z2, weight, rstd)
        ctx.shapes, ctx.dtypes = (y.shape, z.shape), (y.dtype, z.dtype)
        return out.view(y.shape)

    @staticmethod
    def backward(ctx, dout):
        y2, z2, weight, rstd = ctx.saved_tensors
        rows, n = y2.shape
        dout = _rows(dout)
        dy = torch.empty(rows, n, device=y2.device, dtype=ctx.dtypes[0])
        dz = torch.empty(rows, n, device=y2.device, dtype=ctx.dtypes[1])
        programs = _backward_programs(rows)
        dw = torch.empty(programs, n, device=y2.device, dtype=torch.float32)
        block, rows_at_once = _block(n, BACKWARD_VALUES)
        _kernels()[3][(programs,)](
            y2, z2, weight, dout, rstd, dy, dz, dw, rows, n, y2.stride(0), z2.stride(0), dout.stride(0),
            dy.stride(0), dz.stride(0), ROWS=rows_at_once, RPP=ROWS_PER_PROGRAM, BN=block,
            num_warps=BACKWARD_WARPS)
        return dy.view(ctx.shapes[0]), dz.view(ctx.shapes[1]), dw.sum(0).to(weight.dtype), None


def gated_rmsnorm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float,
                  quantize: bool = False) -> Any:
    """norm(y * silu(z)) * weight over the last dimension (one group), in y's dtype: mamba_ssm's
    `RMSNormGated(d, group_size=d, norm_before_gate=False)`. y and z (..., N) of one shape, any row strides.
    `quantize` (inference): the output as `ops.fp8.QuantizedRows` for an `Fp8Linear` (see `add_rmsnorm`)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (y, z, weight)):
        if quantize:
            raise ValueError("FP8 outputs are for inference: no gradient flows through them")
        return GatedRMSNormFn.apply(y, z, weight, eps)
    return _shaped(_gated_forward(_rows(y), _rows(z), weight, eps, quantize)[0], y.shape)
