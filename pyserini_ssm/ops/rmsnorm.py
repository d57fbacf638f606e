"""RMSNorms of the Mamba-2 short-SSD path, lean: the residual add + RMSNorm between layers (`add_rmsnorm`) and the
mixer's gated RMSNorm, norm(y * silu(z)) (`gated_rmsnorm`), forward and backward in Triton, with pure-PyTorch
references (`add_rmsnorm_reference`, `gated_rmsnorm_reference`).

They compute what mamba_ssm's `layer_norm_fn(..., is_rms_norm=True)` and `RMSNormGated` (one group,
norm_before_gate=False) compute, in the same fp32 order, dtypes included: the output in the input's dtype, the
residual in fp32 when `residual_in_fp32`, the weight's gradient in the weight's dtype. Why not call mamba_ssm's:
its wrappers pass about 40 arguments through `triton.autotune` and four `triton.heuristics` layers, about 0.3 ms of
host time a call under the profiler (bin/profile-training-step --host, H200, 2026-12-02), and a 128-pair training
step makes about 200 of them: the host, not the GPU, set that step's pace. These kernels take a dozen arguments and
several rows per program (the gated norm's 3,072 channels fill 75 % of a 4,096-lane block either way).

    x (..., N) + residual (..., N) -> r (fp32);  y = r * rstd * w,  rstd = 1 / sqrt(mean(r^2) + eps)
    g = y * silu(z);  out = g * rstd_g * w
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

# Values one program holds per tensor: rows x the power-of-two width (forward: 4 rows of mamba2-780m's 1,536
# channels in 2,048 lanes, 2 of the gated norm's 3,072 in 4,096; the backward, with more tensors live, half as many
# rows), 32 or 16 a thread at 8 warps: no register spills.
FORWARD_VALUES, BACKWARD_VALUES, WARPS = 8192, 4096, 8
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
    import triton
    import triton.language as tl

    @triton.jit
    def add_fwd(x_ptr, r_ptr, w_ptr, y_ptr, ro_ptr, rstd_ptr, q_ptr, scale_ptr, M, N, s_x, s_r, s_y, s_ro, s_q,
                eps, HAS_R: tl.constexpr, STORE_RO: tl.constexpr, QUANT: tl.constexpr, ROUND: tl.constexpr,
                ROWS: tl.constexpr, BN: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BN)
        row_ok = rows < M
        ok = row_ok[:, None] & (cols < N)[None, :]
        rows = rows.to(tl.int64)[:, None]
        x = tl.load(x_ptr + rows * s_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        if HAS_R:
            x += tl.load(r_ptr + rows * s_r + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        if STORE_RO:
            tl.store(ro_ptr + rows * s_ro + cols[None, :], x, mask=ok)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / N + eps)
        row_index = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        if QUANT:  # ops.fp8's quantisation of the output as stored (the scale as torch's CUDA: amax x fp32(1/448))
            out = x * rstd[:, None] * w[None, :]
            if ROUND == 1:
                out = out.to(tl.bfloat16).to(tl.float32)
            elif ROUND == 2:
                out = out.to(tl.float16).to(tl.float32)
            scale = tl.maximum(tl.max(tl.where(ok, tl.abs(out), 0.0), axis=1), 1e-12) * 0.0022321429569274187
            # one IEEE division a row, then a multiplication a value. An IEEE division a value (tl.div_rn: a long
            # instruction sequence) is what ran on the H200 on 2026-12-02, FP8 packed 6 % under the unfused figure
            # of another machine; the cause was not isolated, and this form has not been timed
            q = tl.minimum(tl.maximum(out * tl.div_rn(tl.full([ROWS], 1.0, tl.float32), scale)[:, None], -448.0),
                           448.0)
            tl.store(q_ptr + rows * s_q + cols[None, :], q.to(tl.float8e4nv), mask=ok)
            tl.store(scale_ptr + row_index, scale, mask=row_ok)
        else:
            tl.store(rstd_ptr + row_index, rstd, mask=row_ok)
            tl.store(y_ptr + rows * s_y + cols[None, :], x * rstd[:, None] * w[None, :], mask=ok)

    @triton.jit
    def add_bwd(x_ptr, w_ptr, dy_ptr, dro_ptr, rstd_ptr, dx_ptr, dr_ptr, dw_ptr, M, N, s_x, s_dy, s_dro, s_dx,
                s_dr, HAS_DRO: tl.constexpr, STORE_DR: tl.constexpr, ROWS: tl.constexpr, RPP: tl.constexpr,
                BN: tl.constexpr):
        # x: the saved residual r (the normed input); RPP contiguous rows a program, dw summed per program (a static
        # loop: Triton's interpreter cannot loop to a runtime bound)
        pid = tl.program_id(0)
        cols = tl.arange(0, BN)
        col_ok = cols < N
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw = tl.zeros([ROWS, BN], dtype=tl.float32)
        for step in range(0, RPP // ROWS):
            rows = pid * RPP + step * ROWS + tl.arange(0, ROWS)
            row_ok = rows < M
            ok = row_ok[:, None] & col_ok[None, :]
            r64 = rows.to(tl.int64)[:, None]
            x = tl.load(x_ptr + r64 * s_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + r64 * s_dy + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
            xhat = x * rstd[:, None]
            wdy = w[None, :] * dy
            c = tl.sum(xhat * wdy, axis=1) / N
            dx = (wdy - xhat * c[:, None]) * rstd[:, None]
            if HAS_DRO:
                dx += tl.load(dro_ptr + r64 * s_dro + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            dw += dy * xhat
            tl.store(dx_ptr + r64 * s_dx + cols[None, :], dx, mask=ok)
            if STORE_DR:
                tl.store(dr_ptr + r64 * s_dr + cols[None, :], dx, mask=ok)
        tl.store(dw_ptr + pid * N + cols, tl.sum(dw, axis=0), mask=col_ok)

    @triton.jit
    def gated_fwd(y_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, q_ptr, scale_ptr, M, N, s_y, s_z, s_o, s_q, eps,
                  QUANT: tl.constexpr, ROUND: tl.constexpr, ROWS: tl.constexpr, BN: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BN)
        row_ok = rows < M
        ok = row_ok[:, None] & (cols < N)[None, :]
        rows = rows.to(tl.int64)[:, None]
        y = tl.load(y_ptr + rows * s_y + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + rows * s_z + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        g = y * (z * tl.sigmoid(z))
        rstd = 1.0 / tl.sqrt(tl.sum(g * g, axis=1) / N + eps)
        row_index = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        if QUANT:  # ops.fp8's quantisation of the output as stored (the scale as torch's CUDA: amax x fp32(1/448))
            out = g * rstd[:, None] * w[None, :]
            if ROUND == 1:
                out = out.to(tl.bfloat16).to(tl.float32)
            elif ROUND == 2:
                out = out.to(tl.float16).to(tl.float32)
            scale = tl.maximum(tl.max(tl.where(ok, tl.abs(out), 0.0), axis=1), 1e-12) * 0.0022321429569274187
            # one IEEE division a row, then a multiplication a value. An IEEE division a value (tl.div_rn: a long
            # instruction sequence) is what ran on the H200 on 2026-12-02, FP8 packed 6 % under the unfused figure
            # of another machine; the cause was not isolated, and this form has not been timed
            q = tl.minimum(tl.maximum(out * tl.div_rn(tl.full([ROWS], 1.0, tl.float32), scale)[:, None], -448.0),
                           448.0)
            tl.store(q_ptr + rows * s_q + cols[None, :], q.to(tl.float8e4nv), mask=ok)
            tl.store(scale_ptr + row_index, scale, mask=row_ok)
        else:
            tl.store(rstd_ptr + row_index, rstd, mask=row_ok)
            tl.store(out_ptr + rows * s_o + cols[None, :], g * rstd[:, None] * w[None, :], mask=ok)

    @triton.jit
    def gated_bwd(y_ptr, z_ptr, w_ptr, do_ptr, rstd_ptr, dy_ptr, dz_ptr, dw_ptr, M, N, s_y, s_z, s_do, s_dy, s_dz,
                  ROWS: tl.constexpr, RPP: tl.constexpr, BN: tl.constexpr):
        pid = tl.program_id(0)
        cols = tl.arange(0, BN)
        col_ok = cols < N
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        dw = tl.zeros([ROWS, BN], dtype=tl.float32)
        for step in range(0, RPP // ROWS):
            rows = pid * RPP + step * ROWS + tl.arange(0, ROWS)
            row_ok = rows < M
            ok = row_ok[:, None] & col_ok[None, :]
            r64 = rows.to(tl.int64)[:, None]
            y = tl.load(y_ptr + r64 * s_y + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + r64 * s_z + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            do = tl.load(do_ptr + r64 * s_do + cols[None, :], mask=ok, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
            sig = tl.sigmoid(z)
            gate = z * sig
            ghat = y * gate * rstd[:, None]
            wdo = w[None, :] * do
            c = tl.sum(ghat * wdo, axis=1) / N
            dg = (wdo - ghat * c[:, None]) * rstd[:, None]
            dw += do * ghat
            tl.store(dy_ptr + r64 * s_dy + cols[None, :], dg * gate, mask=ok)
            tl.store(dz_ptr + r64 * s_dz + cols[None, :], dg * y * sig * (1.0 + z * (1.0 - sig)), mask=ok)
        tl.store(dw_ptr + pid * N + cols, tl.sum(dw, axis=0), mask=col_ok)

    return add_fwd, add_bwd, gated_fwd, gated_bwd


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


def _add_forward(x2, r2, weight, eps, residual_dtype, quantize: bool = False):
    rows, n = x2.shape
    store = r2 is not None or residual_dtype != x2.dtype
    q, scale = _quantized_outputs(rows, n, x2.device, quantize)
    y = torch.empty_like(x2) if not quantize else None
    ro = torch.empty(rows, n, device=x2.device, dtype=residual_dtype) if store else x2
    rstd = torch.empty(rows, device=x2.device, dtype=torch.float32)
    block, rows_at_once = _block(n, FORWARD_VALUES)
    _kernels()[0][(-(-rows // rows_at_once),)](
        x2, r2 if r2 is not None else x2, weight, y if y is not None else x2, ro, rstd,
        q if q is not None else x2, scale if scale is not None else rstd, rows, n, x2.stride(0),
        r2.stride(0) if r2 is not None else 0, y.stride(0) if y is not None else 0, ro.stride(0),
        q.stride(0) if q is not None else 0, float(eps),
        HAS_R=r2 is not None, STORE_RO=store, QUANT=quantize, ROUND=_round_code(x2.dtype), ROWS=rows_at_once,
        BN=block, num_warps=WARPS)
    return (y if not quantize else (q, scale)), ro, rstd


class AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, residual_dtype):
        shape = x.shape
        y, ro, rstd = _add_forward(_rows(x), _rows(residual) if residual is not None else None, weight, eps,
                                   residual_dtype)
        ctx.save_for_backward(ro, weight, rstd)
        ctx.shape, ctx.x_dtype, ctx.eps, ctx.has_residual = shape, x.dtype, eps, residual is not None
        return y.view(shape), ro.view(shape)

    @staticmethod
    def backward(ctx, dy, dro):
        ro, weight, rstd = ctx.saved_tensors
        rows, n = ro.shape
        dy = _rows(dy)
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
            num_warps=WARPS)
        dresidual = (dr if dr is not None else dx).view(ctx.shape) if ctx.has_residual else None
        return dx.view(ctx.shape), dresidual, dw.sum(0).to(weight.dtype), None, None


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                residual_in_fp32: bool = True, quantize: bool = False) -> tuple[Any, torch.Tensor]:
    """(y, r): y = RMSNorm(x + residual) * weight in x's dtype, r = x + residual (the next layer's residual: fp32
    when `residual_in_fp32` and residual is None, else residual's dtype), as mamba_ssm's
    `layer_norm_fn(x, weight, None, residual, prenorm=True, residual_in_fp32, eps, is_rms_norm=True)`.

    `quantize` (inference): y as `ops.fp8.QuantizedRows`, e4m3 codes and per-row scales written by the norm kernel
    itself, for an `Fp8Linear` next (the codes `quantize_rowwise` gives for y, without y's write and read)."""
    residual_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, residual, weight)):
        if quantize:
            raise ValueError("FP8 outputs are for inference: no gradient flows through them")
        return AddRMSNormFn.apply(x, residual, weight, eps, residual_dtype)
    y, ro, _ = _add_forward(_rows(x), _rows(residual) if residual is not None else None, weight, eps,
                            residual_dtype, quantize)
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
            dy.stride(0), dz.stride(0), ROWS=rows_at_once, RPP=ROWS_PER_PROGRAM, BN=block, num_warps=WARPS)
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
