"""The Triton kernels of `ops.rmsnorm` (which launches them and holds their references): the residual add +
RMSNorm and the gated RMSNorm, forward and backward. Imports triton: load it lazily.

The row count M is not specialised: Triton compiles another variant of a kernel for an int divisible by 16, and a
row of 32,768 tokens then stopped a rerank run for 6.5 s of compilation (H200, 2026-12-02)."""

import triton
import triton.language as tl


@triton.jit
def _row_block(first_row, M, N, ROWS: tl.constexpr, BN: tl.constexpr):
    """ROWS rows from `first_row` of an (M, N) tensor: (row indices, their int64 column for offsets, row mask, block
    mask, column indices)."""
    rows = first_row + tl.arange(0, ROWS)
    cols = tl.arange(0, BN)
    row_ok = rows < M
    return rows, rows.to(tl.int64)[:, None], row_ok, row_ok[:, None] & (cols < N)[None, :], cols


@triton.jit
def _rstd(v, N, eps):
    """1 / sqrt(mean(v^2) + eps) of each row of v (ROWS, BN), masked lanes 0."""
    return 1.0 / tl.sqrt(tl.sum(v * v, axis=1) / N + eps)


@triton.jit
def _rms_grad(hat, wgrad, rstd, N):
    """The gradient of the normed input v of out = hat * w, hat = v * rstd, from hat and wgrad = w * d(out):
    (wgrad - hat * mean(hat * wgrad)) * rstd, per row."""
    c = tl.sum(hat * wgrad, axis=1) / N
    return (wgrad - hat * c[:, None]) * rstd[:, None]


@triton.jit
def _store_normed(out, rstd, ok, row_ok, row_index, out_offsets, q_offsets, out_ptr, rstd_ptr, q_ptr, scale_ptr,
                  QUANT: tl.constexpr, ROUND: tl.constexpr, ROWS: tl.constexpr):
    """A forward's normed rows `out` (ROWS, BN) fp32: stored with their rstd (the backward reads it), or with
    QUANT as `ops.fp8`'s rowwise e4m3 codes and scales of the values as they would be stored (ROUND 1: bf16,
    2: fp16, 0: fp32), the scale as torch computes it on CUDA, amax x fp32(1/448)."""
    if QUANT:
        if ROUND == 1:
            out = out.to(tl.bfloat16).to(tl.float32)
        elif ROUND == 2:
            out = out.to(tl.float16).to(tl.float32)
        scale = tl.maximum(tl.max(tl.where(ok, tl.abs(out), 0.0), axis=1), 1e-12) * 0.0022321429569274187
        # One IEEE division a row, then a multiplication a value. An IEEE division a value (tl.div_rn: a long
        # instruction sequence) is what ran on the H200 on 2026-12-02, FP8 packed 6 % under the unfused figure of
        # another machine; the cause was not isolated, and this form has not been timed.
        q = tl.minimum(tl.maximum(out * tl.div_rn(tl.full([ROWS], 1.0, tl.float32), scale)[:, None], -448.0), 448.0)
        tl.store(q_ptr + q_offsets, q.to(tl.float8e4nv), mask=ok)
        tl.store(scale_ptr + row_index, scale, mask=row_ok)
    else:
        tl.store(rstd_ptr + row_index, rstd, mask=row_ok)
        tl.store(out_ptr + out_offsets, out, mask=ok)


@triton.jit(do_not_specialize=["M"])
def add_rmsnorm_fwd(x_ptr, r_ptr, w_ptr, y_ptr, ro_ptr, rstd_ptr, q_ptr, scale_ptr, ss_ptr, M, N, s_x, s_r, s_y,
                    s_ro, s_q, s_ss, parts, width, eps_x, eps,
                    HAS_R: tl.constexpr, STORE_RO: tl.constexpr, QUANT: tl.constexpr, ROUND: tl.constexpr,
                    ROWS: tl.constexpr, BN: tl.constexpr, X_SCALED: tl.constexpr, PB: tl.constexpr):
    # X_SCALED: x stands for x * rstd_x, rstd_x = 1 / sqrt(sum of the row's `parts` partial sums of squares (ss,
    # (M, parts) fp32) / width + eps_x): the gated RMSNorm's row scale, applied after a bias-free out_proj
    row_index, rows, row_ok, ok, cols = _row_block(tl.program_id(0) * ROWS, M, N, ROWS, BN)
    x = tl.load(x_ptr + rows * s_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    if X_SCALED:
        offs_s = tl.arange(0, PB)
        ss = tl.load(ss_ptr + rows * s_ss + offs_s[None, :], mask=row_ok[:, None] & (offs_s < parts)[None, :],
                     other=0.0)
        x = x * (1.0 / tl.sqrt(tl.sum(ss, axis=1) / width + eps_x))[:, None]
    if HAS_R:
        x += tl.load(r_ptr + rows * s_r + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    if STORE_RO:
        tl.store(ro_ptr + rows * s_ro + cols[None, :], x, mask=ok)
    rstd = _rstd(x, N, eps)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    _store_normed(x * rstd[:, None] * w[None, :], rstd, ok, row_ok, row_index, rows * s_y + cols[None, :],
                  rows * s_q + cols[None, :], y_ptr, rstd_ptr, q_ptr, scale_ptr, QUANT, ROUND, ROWS)


@triton.jit(do_not_specialize=["M"])
def add_rmsnorm_bwd(x_ptr, w_ptr, dy_ptr, dro_ptr, rstd_ptr, dx_ptr, dr_ptr, dw_ptr, M, N, s_x, s_dy, s_dro, s_dx,
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
        rows, r64, row_ok, ok, cols = _row_block(pid * RPP + step * ROWS, M, N, ROWS, BN)
        x = tl.load(x_ptr + r64 * s_x + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + r64 * s_dy + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        xhat = x * rstd[:, None]
        dx = _rms_grad(xhat, w[None, :] * dy, rstd, N)
        if HAS_DRO:
            dx += tl.load(dro_ptr + r64 * s_dro + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        dw += dy * xhat
        tl.store(dx_ptr + r64 * s_dx + cols[None, :], dx, mask=ok)
        if STORE_DR:
            tl.store(dr_ptr + r64 * s_dr + cols[None, :], dx, mask=ok)
    tl.store(dw_ptr + pid * N + cols, tl.sum(dw, axis=0), mask=col_ok)


@triton.jit(do_not_specialize=["M"])
def gated_rmsnorm_fwd(y_ptr, z_ptr, w_ptr, out_ptr, rstd_ptr, q_ptr, scale_ptr, M, N, s_y, s_z, s_o, s_q, eps,
                      QUANT: tl.constexpr, ROUND: tl.constexpr, ROWS: tl.constexpr, BN: tl.constexpr):
    row_index, rows, row_ok, ok, cols = _row_block(tl.program_id(0) * ROWS, M, N, ROWS, BN)
    y = tl.load(y_ptr + rows * s_y + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + rows * s_z + cols[None, :], mask=ok, other=0.0).to(tl.float32)
    g = y * (z * tl.sigmoid(z))
    rstd = _rstd(g, N, eps)
    w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    _store_normed(g * rstd[:, None] * w[None, :], rstd, ok, row_ok, row_index, rows * s_o + cols[None, :],
                  rows * s_q + cols[None, :], out_ptr, rstd_ptr, q_ptr, scale_ptr, QUANT, ROUND, ROWS)


@triton.jit(do_not_specialize=["M"])
def gated_rmsnorm_bwd(y_ptr, z_ptr, w_ptr, do_ptr, rstd_ptr, dy_ptr, dz_ptr, dw_ptr, M, N, s_y, s_z, s_do, s_dy, s_dz,
                      ROWS: tl.constexpr, RPP: tl.constexpr, BN: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BN)
    col_ok = cols < N
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw = tl.zeros([ROWS, BN], dtype=tl.float32)
    for step in range(0, RPP // ROWS):
        rows, r64, row_ok, ok, cols = _row_block(pid * RPP + step * ROWS, M, N, ROWS, BN)
        y = tl.load(y_ptr + r64 * s_y + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + r64 * s_z + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        do = tl.load(do_ptr + r64 * s_do + cols[None, :], mask=ok, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        sig = tl.sigmoid(z)
        gate = z * sig
        ghat = y * gate * rstd[:, None]
        dg = _rms_grad(ghat, w[None, :] * do, rstd, N)
        dw += do * ghat
        tl.store(dy_ptr + r64 * s_dy + cols[None, :], dg * gate, mask=ok)
        tl.store(dz_ptr + r64 * s_dz + cols[None, :], dg * y * sig * (1.0 + z * (1.0 - sig)), mask=ok)
    tl.store(dw_ptr + pid * N + cols, tl.sum(dw, axis=0), mask=col_ok)
