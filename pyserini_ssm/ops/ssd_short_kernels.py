"""The Triton kernels of the short-sequence SSD (`ops.ssd_short`): dt/cumsum, the masked C B^T, the forward variants
and the two backward kernels, at module level (Triton's interpreter resolves a kernel's helpers, such as the conv
tile of `ops.conv_kernels` that the forward reads x through, from its module's globals). Imports triton: load it
lazily; `ops.ssd_short` launches the kernels and holds the math they implement (its docstring) and the autograd
function.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import triton
import triton.language as tl

from pyserini_ssm.ops.conv_kernels import conv_silu_tile


class ShortSSDKernels(NamedTuple):
    """The kernels, by name (the forward variant is chosen in `ops.ssd_short`)."""

    dt_cumsum: Any
    cb: Any
    fwd: Any
    fwd_factored: Any
    fwd_wide: Any
    bwd_columns: Any
    bwd_rows: Any
    bwd_dt: Any


@triton.jit
def dt_cumsum_kernel(dt_raw_ptr, bias_ptr, A_ptr, dt_ptr, cs_ptr, tile_start_ptr, tile_end_ptr,
                     s_dtr_t, s_dt_t, s_dt_h, heads, dt_min, dt_max,
                     BT: tl.constexpr, HB: tl.constexpr, HAS_BIAS: tl.constexpr):
    # One program per (tile, block of HB heads): dt = clamp(softplus(dt_raw + bias)), cs = cumsum(dt * A) over
    # the tile. (One program per tile over all heads ran 55 us a layer at 32k tokens on the H200: 85-148
    # programs of one (BT, 64) scan each do not fill the GPU.)
    tile = tl.program_id(0)
    ts = tl.load(tile_start_ptr + tile)
    te = tl.load(tile_end_ptr + tile)
    rows = ts + tl.arange(0, BT)
    offs_h = tl.program_id(1) * HB + tl.arange(0, HB)
    head_ok = offs_h < heads
    ok = (rows < te)[:, None] & head_ok[None, :]
    v = tl.load(dt_raw_ptr + rows[:, None] * s_dtr_t + offs_h[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + offs_h, mask=head_ok, other=0.0).to(tl.float32)[None, :]
    dt = tl.where(v <= 20.0, tl.log(tl.exp(v) + 1.0), v)
    dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dt = tl.where(ok, dt, 0.0)
    a = dt * tl.load(A_ptr + offs_h, mask=head_ok, other=0.0).to(tl.float32)[None, :]
    cs = tl.cumsum(a, axis=0)
    out = rows[:, None] * s_dt_t + offs_h[None, :] * s_dt_h  # (T, H) or (H, T) storage (DT_LAYOUT)
    tl.store(dt_ptr + out, dt, mask=ok)
    tl.store(cs_ptr + out, cs, mask=ok)

@triton.jit
def cb_kernel(B_ptr, C_ptr, cb_ptr, seq_start_ptr, tile_start_ptr, tile_end_ptr,
              s_b_t, s_b_g, s_c_t, s_c_g, groups,
              N: tl.constexpr, BM: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr,
              DOT_PRECISION: tl.constexpr):
    # One program per (block pair i >= j, group, tile): C_i B_j^T masked to s <= t in the same sequence, stored
    # once and read by every head of the group (ngroups = 1: by all heads).
    pair = tl.program_id(0)
    g = tl.program_id(1)
    tile = tl.program_id(2)
    block = pair // NB
    jb = pair % NB
    ts = tl.load(tile_start_ptr + tile)
    te = tl.load(tile_end_ptr + tile)
    r0 = ts + block * BM
    if (jb > block) | (r0 >= te):
        return
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, N)
    rows = r0 + offs_m
    cols = ts + jb * BM + offs_m
    row_ok = rows < te
    col_ok = cols < te
    if tl.load(seq_start_ptr + r0) < ts + (jb + 1) * BM:  # the rows' sequences reach this column block
        C_i = tl.load(C_ptr + rows[:, None] * s_c_t + g * s_c_g + offs_n[None, :], mask=row_ok[:, None],
                      other=0.0)
        B_j = tl.load(B_ptr + cols[:, None] * s_b_t + g * s_b_g + offs_n[None, :], mask=col_ok[:, None],
                      other=0.0)
        ss_i = tl.load(seq_start_ptr + rows, mask=row_ok, other=-1)
        ss_j = tl.load(seq_start_ptr + cols, mask=col_ok, other=-2)
        keep = (ss_i[:, None] == ss_j[None, :]) & (cols[None, :] <= rows[:, None])
        cb = tl.where(keep, tl.dot(C_i, tl.trans(B_j), input_precision=DOT_PRECISION), 0.0)
        base = cb_ptr + (tile * groups + g) * BT * BT
        tl.store(base + (block * BM + offs_m)[:, None] * BT + jb * BM + offs_m[None, :],
                 cb.to(cb_ptr.dtype.element_ty))

@triton.jit
def fwd_kernel(x_ptr, cb_ptr, dt_ptr, cs_ptr, D_ptr, y_ptr, seq_start_ptr, tile_start_ptr, tile_end_ptr,
               s_x_t, s_x_h, s_y_t, s_y_h, s_dt_t, s_dt_h, heads, heads_per_group, groups,
               P: tl.constexpr, BM: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr, HAS_D: tl.constexpr,
               DOT_PRECISION: tl.constexpr, LOADED_BOUNDS: tl.constexpr, HC: tl.constexpr):
    # Heads vary fastest in the grid: the programs running together read the same tile's CB (L2 hits).
    h0 = tl.program_id(0) * HC
    block = tl.program_id(1)
    tile = tl.program_id(2)
    ts = tl.load(tile_start_ptr + tile)
    te = tl.load(tile_end_ptr + tile)
    r0 = ts + block * BM
    if r0 >= te:
        return
    dtype = x_ptr.dtype.element_ty
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, P)
    rows = r0 + offs_m
    row_ok = rows < te
    j_lo = (tl.load(seq_start_ptr + r0) - ts) // BM  # the first column block the rows' sequences reach
    for hh in range(HC):  # heads of this program: the tile prologue is paid once
        h = h0 + hh
        g = h // heads_per_group
        cs_i = tl.load(cs_ptr + rows * s_dt_t + h * s_dt_h, mask=row_ok, other=0.0)
        cb_base = cb_ptr + (tile * groups + g) * BT * BT + (block * BM + offs_m)[:, None] * BT
        acc = tl.zeros((BM, P), dtype=tl.float32)
        # The same body twice: with loaded loop bounds (compiled; loads can be pipelined) or a static loop with
        # runtime skips (Triton's interpreter cannot loop to loaded bounds).
        if LOADED_BOUNDS:
          for jb in range(j_lo, block + 1):
            cols = ts + jb * BM + offs_m
            col_ok = cols < te
            cb = tl.load(cb_base + jb * BM + offs_m[None, :]).to(tl.float32)  # masked C_i B_j^T
            cs_j = tl.load(cs_ptr + cols * s_dt_t + h * s_dt_h, mask=col_ok, other=0.0)
            dt_j = tl.load(dt_ptr + cols * s_dt_t + h * s_dt_h, mask=col_ok, other=0.0)
            m = cb * tl.exp(tl.minimum(cs_i[:, None] - cs_j[None, :], 0.0))
            x_j = tl.load(x_ptr + cols[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=col_ok[:, None],
                          other=0.0)
            xdt = (x_j.to(tl.float32) * dt_j[:, None]).to(dtype)
            acc += tl.dot(m.to(dtype), xdt, input_precision=DOT_PRECISION)
        else:
          for jb in range(0, NB):
           if (jb >= j_lo) & (jb <= block):
            cols = ts + jb * BM + offs_m
            col_ok = cols < te
            cb = tl.load(cb_base + jb * BM + offs_m[None, :]).to(tl.float32)  # masked C_i B_j^T
            cs_j = tl.load(cs_ptr + cols * s_dt_t + h * s_dt_h, mask=col_ok, other=0.0)
            dt_j = tl.load(dt_ptr + cols * s_dt_t + h * s_dt_h, mask=col_ok, other=0.0)
            m = cb * tl.exp(tl.minimum(cs_i[:, None] - cs_j[None, :], 0.0))
            x_j = tl.load(x_ptr + cols[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=col_ok[:, None],
                          other=0.0)
            xdt = (x_j.to(tl.float32) * dt_j[:, None]).to(dtype)
            acc += tl.dot(m.to(dtype), xdt, input_precision=DOT_PRECISION)
        if HAS_D:
            x_i = tl.load(x_ptr + rows[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=row_ok[:, None],
                          other=0.0)
            acc += tl.load(D_ptr + h).to(tl.float32) * x_i.to(tl.float32)
        tl.store(y_ptr + rows[:, None] * s_y_t + h * s_y_h + offs_p[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None])

@triton.jit
def _x_rows(x_ptr, rows, row_ok, h, s_x_t, s_x_h, seq_start_ptr, xw_ptr, xb_ptr, s_xw_c, s_xw_k,
            P: tl.constexpr, CONV: tl.constexpr, CONV_W: tl.constexpr, CONV_BIAS: tl.constexpr):
    """Head h's x (len(rows), P) in x's dtype, 0 at rows outside `row_ok`: loaded, or with CONV computed from the
    conv's input (x_ptr then points at it; heads contiguous, s_x_h == P) as silu(causal conv) rounded to x's dtype,
    the value `ops.conv_packed` would have stored."""
    offs_p = tl.arange(0, P)
    if CONV:
        start = tl.load(seq_start_ptr + rows, mask=row_ok, other=0)
        x = conv_silu_tile(x_ptr, rows, row_ok, start, h * s_x_h + offs_p, offs_p < P, s_x_t, xw_ptr, s_xw_c,
                           s_xw_k, xb_ptr, CONV_W, CONV_BIAS, True)
        x = tl.where(row_ok[:, None], x, 0.0).to(x_ptr.dtype.element_ty)
    else:
        x = tl.load(x_ptr + rows[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=row_ok[:, None], other=0.0)
    return x


@triton.jit
def _gate_rows(z_ptr, rows, row_ok, h, s_z_t, P: tl.constexpr):
    """Head h's columns of the gate z (len(rows), P) in fp32, 0 at rows outside `row_ok` (z's heads contiguous)."""
    offs_p = tl.arange(0, P)
    return tl.load(z_ptr + rows[:, None] * s_z_t + h * P + offs_p[None, :], mask=row_ok[:, None],
                   other=0.0).to(tl.float32)


@triton.jit
def fwd_factored_kernel(x_ptr, cb_ptr, dt_ptr, cs_ptr, D_ptr, y_ptr, seq_start_ptr, tile_start_ptr,
                        tile_end_ptr, s_x_t, s_x_h, s_y_t, s_y_h, s_dt_t, s_dt_h, heads, heads_per_group, groups,
                        xw_ptr, xb_ptr, s_xw_c, s_xw_k, z_ptr, s_z_t, nw_ptr, sumsq_ptr,
                        P: tl.constexpr, BM: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr,
                        HAS_D: tl.constexpr, DOT_PRECISION: tl.constexpr, LOADED_BOUNDS: tl.constexpr,
                        HC: tl.constexpr, CONV: tl.constexpr, CONV_W: tl.constexpr, CONV_BIAS: tl.constexpr,
                        GATE: tl.constexpr, GATE_EARLY: tl.constexpr):
    # As fwd_kernel, but only the diagonal block pays the full (BM, BM) masked exp. Off the diagonal (j < i,
    # whole blocks before the rows) exp(cs_t - cs_s) = u_t v_s with e = cs[r0 - 1]: u = exp(cs_t - e) and
    # v = exp(e - cs_s), both <= 1 (cs never increases: A < 0, dt >= 0), so nothing overflows and the products
    # that underflow are those whose true value does. Y_i = L_ii o CB_ii (dt X_i) + u o sum_j CB_ij (v dt X_j).
    # With CONV (inference) x_ptr is the conv's input: every x tile goes through the causal conv + SiLU on its way
    # in (`_x_rows`), and the conv's x channels are never stored.
    # With GATE (inference) the gated RMSNorm's row-local part runs here: g = y silu(z) (z: the head's columns of
    # in_proj's gate, row stride s_z_t), sumsq[t, h] = sum_p g^2 (fp32, (T, H)), and g * norm weight is stored
    # instead of y; the row's rstd (all heads' sums) is applied after out_proj (ops.rmsnorm's ScaledRows).
    h0 = tl.program_id(0) * HC
    block = tl.program_id(1)
    tile = tl.program_id(2)
    ts = tl.load(tile_start_ptr + tile)
    te = tl.load(tile_end_ptr + tile)
    r0 = ts + block * BM
    if r0 >= te:
        return
    dtype = x_ptr.dtype.element_ty
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, P)
    rows = r0 + offs_m
    row_ok = rows < te
    j_lo = (tl.load(seq_start_ptr + r0) - ts) // BM  # the first column block the rows' sequences reach
    for hh in range(HC):
        h = h0 + hh
        g = h // heads_per_group
        cb_row = cb_ptr + (tile * groups + g) * BT * BT + (block * BM + offs_m)[:, None] * BT
        cs_i = tl.load(cs_ptr + rows * s_dt_t + h * s_dt_h, mask=row_ok, other=0.0)
        dt_i = tl.load(dt_ptr + rows * s_dt_t + h * s_dt_h, mask=row_ok, other=0.0)
        x_i = _x_rows(x_ptr, rows, row_ok, h, s_x_t, s_x_h, seq_start_ptr, xw_ptr, xb_ptr, s_xw_c, s_xw_k, P,
                      CONV, CONV_W, CONV_BIAS)
        if GATE and GATE_EARLY:  # issued with the row's other loads (held in registers through the loop)
            z_i = _gate_rows(z_ptr, rows, row_ok, h, s_z_t, P)
        cb = tl.load(cb_row + block * BM + offs_m[None, :]).to(tl.float32)
        m = cb * tl.exp(tl.minimum(cs_i[:, None] - cs_i[None, :], 0.0)) * dt_i[None, :]  # dt folded in
        acc = tl.dot(m.to(dtype), x_i, input_precision=DOT_PRECISION)
        if j_lo < block:
            e = tl.load(cs_ptr + (r0 - 1) * s_dt_t + h * s_dt_h)
            off = tl.zeros((BM, P), dtype=tl.float32)
            if LOADED_BOUNDS:
                for jb in range(j_lo, block):
                    cols = ts + jb * BM + offs_m  # inside the tile, before row r0 - 1 (so v <= 1)
                    cs_j = tl.load(cs_ptr + cols * s_dt_t + h * s_dt_h)
                    dt_j = tl.load(dt_ptr + cols * s_dt_t + h * s_dt_h)
                    v = tl.exp(tl.minimum(e - cs_j, 0.0)) * dt_j
                    x_j = _x_rows(x_ptr, cols, cols < te, h, s_x_t, s_x_h, seq_start_ptr, xw_ptr, xb_ptr, s_xw_c,
                                  s_xw_k, P, CONV, CONV_W, CONV_BIAS)
                    xv = (x_j.to(tl.float32) * v[:, None]).to(dtype)
                    cb_j = tl.load(cb_row + jb * BM + offs_m[None, :])  # masked C_i B_j^T, inputs' dtype
                    off += tl.dot(cb_j, xv, input_precision=DOT_PRECISION)
            else:
                for jb in range(0, NB):
                  if (jb >= j_lo) & (jb < block):
                    cols = ts + jb * BM + offs_m  # inside the tile, before row r0 - 1 (so v <= 1)
                    cs_j = tl.load(cs_ptr + cols * s_dt_t + h * s_dt_h)
                    dt_j = tl.load(dt_ptr + cols * s_dt_t + h * s_dt_h)
                    v = tl.exp(tl.minimum(e - cs_j, 0.0)) * dt_j
                    x_j = _x_rows(x_ptr, cols, cols < te, h, s_x_t, s_x_h, seq_start_ptr, xw_ptr, xb_ptr, s_xw_c,
                                  s_xw_k, P, CONV, CONV_W, CONV_BIAS)
                    xv = (x_j.to(tl.float32) * v[:, None]).to(dtype)
                    cb_j = tl.load(cb_row + jb * BM + offs_m[None, :])  # masked C_i B_j^T, inputs' dtype
                    off += tl.dot(cb_j, xv, input_precision=DOT_PRECISION)
            acc += tl.exp(tl.minimum(cs_i - e, 0.0))[:, None] * off
        if HAS_D:
            acc += tl.load(D_ptr + h).to(tl.float32) * x_i.to(tl.float32)
        if GATE:
            if not GATE_EARLY:  # loaded where it is used: fewer registers held through the column loop
                z_i = _gate_rows(z_ptr, rows, row_ok, h, s_z_t, P)
            acc = acc * (z_i * tl.sigmoid(z_i))
            tl.store(sumsq_ptr + rows * heads + h, tl.sum(acc * acc, axis=1), mask=row_ok)
            acc = acc * tl.load(nw_ptr + h * P + offs_p).to(tl.float32)[None, :]
        tl.store(y_ptr + rows[:, None] * s_y_t + h * s_y_h + offs_p[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None])

@triton.jit
def fwd_wide_kernel(x_ptr, cb_ptr, dt_ptr, cs_ptr, D_ptr, y_ptr, seq_start_ptr, tile_start_ptr, tile_end_ptr,
                    s_x_t, s_y_t, s_y_h, s_dt_t, s_dt_h, heads, heads_per_group, groups,
                    P: tl.constexpr, BM: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr, HAS_D: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, LOADED_BOUNDS: tl.constexpr, HC: tl.constexpr):
    # fwd_factored_kernel for HC heads of one group at once. Off the diagonal the decay is rank one per head
    # (u_t v_s), so the HC heads' v dt X_j tiles sit side by side as (BM, HC P) columns of ONE dot with the
    # CB tile, loaded once; x's heads are contiguous (stride P), so that tile is one contiguous row slice.
    # The diagonal block, with its full masked exp per head, is a batched (HC, BM, BM) x (HC, BM, P) dot.
    h0 = tl.program_id(0) * HC
    block = tl.program_id(1)
    tile = tl.program_id(2)
    ts = tl.load(tile_start_ptr + tile)
    te = tl.load(tile_end_ptr + tile)
    r0 = ts + block * BM
    if r0 >= te:
        return
    g = h0 // heads_per_group
    dtype = x_ptr.dtype.element_ty
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, P)
    offs_w = tl.arange(0, HC * P)
    heads_c = h0 + tl.arange(0, HC)
    rows = r0 + offs_m
    row_ok = rows < te
    j_lo = (tl.load(seq_start_ptr + r0) - ts) // BM  # the first column block the rows' sequences reach
    cb_row = cb_ptr + (tile * groups + g) * BT * BT + (block * BM + offs_m)[:, None] * BT
    cs_i = tl.load(cs_ptr + heads_c[:, None] * s_dt_h + rows[None, :] * s_dt_t, mask=row_ok[None, :],
                   other=0.0)  # (HC, BM)
    dt_i = tl.load(dt_ptr + heads_c[:, None] * s_dt_h + rows[None, :] * s_dt_t, mask=row_ok[None, :], other=0.0)
    x_i = tl.load(x_ptr + rows[None, :, None] * s_x_t + (heads_c[:, None, None] * P + offs_p[None, None, :]),
                  mask=row_ok[None, :, None], other=0.0)  # (HC, BM, P)
    cb = tl.load(cb_row + block * BM + offs_m[None, :]).to(tl.float32)
    m = cb[None, :, :] * tl.exp(tl.minimum(cs_i[:, :, None] - cs_i[:, None, :], 0.0)) * dt_i[:, None, :]
    acc = tl.dot(m.to(dtype), x_i, input_precision=DOT_PRECISION)  # (HC, BM, P)
    if j_lo < block:
        e = tl.load(cs_ptr + (r0 - 1) * s_dt_t + heads_c * s_dt_h)  # (HC,)
        off = tl.zeros((BM, HC * P), dtype=tl.float32)
        if LOADED_BOUNDS:
                for jb in range(j_lo, block):
                    cols = ts + jb * BM + offs_m  # inside the tile, before row r0 - 1 (so v <= 1)
                    cs_j = tl.load(cs_ptr + cols[:, None] * s_dt_t + heads_c[None, :] * s_dt_h)  # (BM, HC)
                    dt_j = tl.load(dt_ptr + cols[:, None] * s_dt_t + heads_c[None, :] * s_dt_h)
                    v = tl.exp(tl.minimum(e[None, :] - cs_j, 0.0)) * dt_j
                    v_wide = tl.reshape(tl.broadcast_to(v[:, :, None], (BM, HC, P)), (BM, HC * P))
                    x_j = tl.load(x_ptr + cols[:, None] * s_x_t + h0 * P + offs_w[None, :])  # (BM, HC P)
                    xv = (x_j.to(tl.float32) * v_wide).to(dtype)
                    cb_j = tl.load(cb_row + jb * BM + offs_m[None, :])  # masked C_i B_j^T, inputs' dtype
                    off += tl.dot(cb_j, xv, input_precision=DOT_PRECISION)
        else:
                for jb in range(0, NB):
                  if (jb >= j_lo) & (jb < block):
                    cols = ts + jb * BM + offs_m  # inside the tile, before row r0 - 1 (so v <= 1)
                    cs_j = tl.load(cs_ptr + cols[:, None] * s_dt_t + heads_c[None, :] * s_dt_h)  # (BM, HC)
                    dt_j = tl.load(dt_ptr + cols[:, None] * s_dt_t + heads_c[None, :] * s_dt_h)
                    v = tl.exp(tl.minimum(e[None, :] - cs_j, 0.0)) * dt_j
                    v_wide = tl.reshape(tl.broadcast_to(v[:, :, None], (BM, HC, P)), (BM, HC * P))
                    x_j = tl.load(x_ptr + cols[:, None] * s_x_t + h0 * P + offs_w[None, :])  # (BM, HC P)
                    xv = (x_j.to(tl.float32) * v_wide).to(dtype)
                    cb_j = tl.load(cb_row + jb * BM + offs_m[None, :])  # masked C_i B_j^T, inputs' dtype
                    off += tl.dot(cb_j, xv, input_precision=DOT_PRECISION)
        off_heads = tl.permute(tl.reshape(off, (BM, HC, P)), (1, 0, 2))  # (HC, BM, P)
        acc += tl.exp(tl.minimum(cs_i - e[:, None], 0.0))[:, :, None] * off_heads
    if HAS_D:
        acc += tl.load(D_ptr + heads_c).to(tl.float32)[:, None, None] * x_i.to(tl.float32)
    tl.store(y_ptr + rows[None, :, None] * s_y_t + heads_c[:, None, None] * s_y_h + offs_p[None, None, :],
             acc.to(y_ptr.dtype.element_ty), mask=row_ok[None, :, None])

@triton.jit
def bwd_columns_kernel(x_ptr, cb_ptr, dt_ptr, cs_ptr, D_ptr, dy_ptr, dx_ptr, ddt_ptr, colsum_ptr, ddd_ptr,
                       seq_end_ptr, tile_start_ptr, tile_end_ptr,
                       s_x_t, s_x_h, s_dy_t, s_dy_h, s_dx_t, s_dx_h, s_dt_t, s_dt_h, heads, heads_per_group,
                       groups,
                       P: tl.constexpr, BM: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr,
                       HAS_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # One program per (head, column block j, tile): dXdt_j = sum_i M_ij^T dY_i and colsum_j of dM o M.
    h = tl.program_id(0)
    block = tl.program_id(1)
    tile = tl.program_id(2)
    ts = tl.load(tile_start_ptr + tile)
    te = tl.load(tile_end_ptr + tile)
    c0 = ts + block * BM
    if c0 >= te:
        return
    g = h // heads_per_group
    dtype = x_ptr.dtype.element_ty
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, P)
    cols = c0 + offs_m
    col_ok = cols < te
    x_j = tl.load(x_ptr + cols[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=col_ok[:, None], other=0.0)
    dt_j = tl.load(dt_ptr + cols * s_dt_t + h * s_dt_h, mask=col_ok, other=0.0)
    cs_j = tl.load(cs_ptr + cols * s_dt_t + h * s_dt_h, mask=col_ok, other=0.0)
    xdt = (x_j.to(tl.float32) * dt_j[:, None]).to(dtype)
    last = tl.minimum(c0 + BM, te) - 1
    i_hi = (tl.load(seq_end_ptr + last).to(tl.int32) - 1 - ts) // BM  # the last row block that sees these columns
    cb_base = cb_ptr + (tile * groups + g) * BT * BT + block * BM + offs_m[None, :]
    dxdt = tl.zeros((BM, P), dtype=tl.float32)
    colsum = tl.zeros((BM,), dtype=tl.float32)
    for ib in range(0, NB):
      if (ib >= block) & (ib <= i_hi):
        rows = ts + ib * BM + offs_m
        row_ok = rows < te
        cs_i = tl.load(cs_ptr + rows * s_dt_t + h * s_dt_h, mask=row_ok, other=0.0)
        dy_i = tl.load(dy_ptr + rows[:, None] * s_dy_t + h * s_dy_h + offs_p[None, :], mask=row_ok[:, None],
                       other=0.0).to(dtype)
        cb = tl.load(cb_base + (ib * BM + offs_m)[:, None] * BT).to(tl.float32)  # (BM rows, BM cols)
        cb = tl.where(row_ok[:, None], cb, 0.0)  # rows past the tile were never written
        m = cb * tl.exp(tl.minimum(cs_i[:, None] - cs_j[None, :], 0.0))
        dxdt += tl.dot(tl.trans(m.to(dtype)), dy_i, input_precision=DOT_PRECISION)
        dm = tl.dot(dy_i, tl.trans(xdt), input_precision=DOT_PRECISION)
        colsum += tl.sum(dm * m, axis=0)
    dy_j = tl.load(dy_ptr + cols[:, None] * s_dy_t + h * s_dy_h + offs_p[None, :], mask=col_ok[:, None],
                   other=0.0).to(tl.float32)
    xf = x_j.to(tl.float32)
    dx = dxdt * dt_j[:, None]
    if HAS_D:
        dx += tl.load(D_ptr + h).to(tl.float32) * dy_j
    tl.store(dx_ptr + cols[:, None] * s_dx_t + h * s_dx_h + offs_p[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=col_ok[:, None])
    tl.store(ddt_ptr + cols * heads + h, tl.sum(dxdt * xf, axis=1), mask=col_ok)
    tl.store(colsum_ptr + cols * heads + h, colsum, mask=col_ok)
    tl.store(ddd_ptr + cols * heads + h, tl.sum(dy_j * xf, axis=1), mask=col_ok)

@triton.jit
def bwd_rows_kernel(x_ptr, B_ptr, C_ptr, cb_ptr, dt_ptr, cs_ptr, dy_ptr, rowsum_ptr, dB_ptr, dC_ptr,
                    seq_start_ptr, tile_start_ptr, tile_end_ptr,
                    s_x_t, s_x_h, s_b_t, s_b_g, s_c_t, s_c_g, s_dy_t, s_dy_h, s_db_t, s_db_g, s_dt_t, s_dt_h,
                    heads, heads_per_group, groups,
                    HPP: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BM: tl.constexpr, NB: tl.constexpr,
                    BT: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # One program per (tile, row block i, heads of one group): S_ij = sum_h dM_h o L_h, dC_i = sum_j S_ij B_j,
    # dB_j += S_ij^T C_i (atomics: several row blocks reach one column block), rowsum_i of dM o M per head.
    tile = tl.program_id(0)
    block = tl.program_id(1)
    h0 = tl.program_id(2) * HPP
    ts = tl.load(tile_start_ptr + tile)
    te = tl.load(tile_end_ptr + tile)
    r0 = ts + block * BM
    if r0 >= te:
        return
    g = h0 // heads_per_group
    dtype = x_ptr.dtype.element_ty
    offs_m = tl.arange(0, BM)
    offs_p = tl.arange(0, P)
    offs_n = tl.arange(0, N)
    rows = r0 + offs_m
    row_ok = rows < te
    C_i = tl.load(C_ptr + rows[:, None] * s_c_t + g * s_c_g + offs_n[None, :], mask=row_ok[:, None], other=0.0)
    ss_i = tl.load(seq_start_ptr + rows, mask=row_ok, other=-1)
    j_lo = (tl.load(seq_start_ptr + r0) - ts) // BM
    cb_base = cb_ptr + (tile * groups + g) * BT * BT + (block * BM + offs_m)[:, None] * BT
    dC = tl.zeros((BM, N), dtype=tl.float32)
    for jb in range(0, NB):
      if (jb >= j_lo) & (jb <= block):
        cols = ts + jb * BM + offs_m
        col_ok = cols < te
        B_j = tl.load(B_ptr + cols[:, None] * s_b_t + g * s_b_g + offs_n[None, :], mask=col_ok[:, None],
                      other=0.0)
        ss_j = tl.load(seq_start_ptr + cols, mask=col_ok, other=-2)
        keep = (ss_i[:, None] == ss_j[None, :]) & (cols[None, :] <= rows[:, None])
        cb = tl.where(keep, tl.load(cb_base + jb * BM + offs_m[None, :]).to(tl.float32), 0.0)
        s = tl.zeros((BM, BM), dtype=tl.float32)
        for hh in range(HPP):
            h = h0 + hh
            cs_i = tl.load(cs_ptr + rows * s_dt_t + h * s_dt_h, mask=row_ok, other=0.0)
            cs_j = tl.load(cs_ptr + cols * s_dt_t + h * s_dt_h, mask=col_ok, other=0.0)
            dt_j = tl.load(dt_ptr + cols * s_dt_t + h * s_dt_h, mask=col_ok, other=0.0)
            decay = tl.where(keep, tl.exp(tl.minimum(cs_i[:, None] - cs_j[None, :], 0.0)), 0.0)
            dy_i = tl.load(dy_ptr + rows[:, None] * s_dy_t + h * s_dy_h + offs_p[None, :],
                           mask=row_ok[:, None], other=0.0).to(dtype)
            x_j = tl.load(x_ptr + cols[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=col_ok[:, None],
                          other=0.0)
            xdt = (x_j.to(tl.float32) * dt_j[:, None]).to(dtype)
            dm = tl.dot(dy_i, tl.trans(xdt), input_precision=DOT_PRECISION)  # (BM, BM) fp32
            dml = dm * decay
            tl.atomic_add(rowsum_ptr + rows * heads + h, tl.sum(dml * cb, axis=1), mask=row_ok)
            s += dml
        dC += tl.dot(s.to(dtype), B_j, input_precision=DOT_PRECISION)
        dB_j = tl.dot(tl.trans(s.to(dtype)), C_i, input_precision=DOT_PRECISION)  # (BM, N)
        tl.atomic_add(dB_ptr + cols[:, None] * s_db_t + g * s_db_g + offs_n[None, :], dB_j,
                      mask=col_ok[:, None])
    tl.atomic_add(dC_ptr + rows[:, None] * s_db_t + g * s_db_g + offs_n[None, :], dC, mask=row_ok[:, None])

@triton.jit
def bwd_dt_kernel(rowsum_ptr, colsum_ptr, ddt_x_ptr, ddd_ptr, dt_ptr, dt_raw_ptr, bias_ptr, A_ptr, seq_end_ptr,
                  tile_start_ptr, tile_end_ptr, ddt_raw_ptr, da_dt_ptr, dbias_ptr, dd_ptr,
                  s_dtr_t, s_dt_t, s_dt_h, s_out_t, heads, dt_min, dt_max,
                  BT: tl.constexpr, HB: tl.constexpr, HAS_BIAS: tl.constexpr):
    # One program per (tile, block of HB heads): the cumulative-sum chain of the backward on the tile's tokens.
    # d cs = rowsum - colsum; da_r = sum of d cs over r <= t < seq_end_r (float64: the terms of one sequence
    # nearly cancel), from the tile's inclusive prefix P as P[seq_end_r - 1] - P[r] + d cs_r; ddt = ddt_x + da A
    # through the clamp and the softplus to ddt_raw; per-tile sums of da dt (dA), ddt_raw (dt_bias), ddd (dD).
    tile = tl.program_id(0)
    offs_h = tl.program_id(1) * HB + tl.arange(0, HB)
    ts = tl.load(tile_start_ptr + tile)
    te = tl.load(tile_end_ptr + tile)
    rows = ts + tl.arange(0, BT)
    row_ok = rows < te
    head_ok = offs_h < heads
    ok = row_ok[:, None] & head_ok[None, :]
    th = rows[:, None] * heads + offs_h[None, :]  # the (T, H) fp32 buffers of the other backward kernels
    dcs = (tl.load(rowsum_ptr + th, mask=ok, other=0.0) - tl.load(colsum_ptr + th, mask=ok, other=0.0))
    dcs = dcs.to(tl.float64)
    prefix = tl.cumsum(dcs, axis=0)
    last = tl.load(seq_end_ptr + rows, mask=row_ok, other=ts + 1).to(tl.int32) - 1 - ts  # in [0, BT)
    at_last = tl.gather(prefix, tl.broadcast_to(last[:, None], (BT, HB)), axis=0)
    da = tl.where(ok, at_last - prefix + dcs, 0.0)
    dt = tl.load(dt_ptr + rows[:, None] * s_dt_t + offs_h[None, :] * s_dt_h, mask=ok, other=0.0)
    a = tl.load(A_ptr + offs_h, mask=head_ok, other=0.0)
    ddt = tl.load(ddt_x_ptr + th, mask=ok, other=0.0) + da.to(tl.float32) * a[None, :]
    v = tl.load(dt_raw_ptr + rows[:, None] * s_dtr_t + offs_h[None, :], mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + offs_h, mask=head_ok, other=0.0).to(tl.float32)[None, :]
    soft = tl.where(v <= 20.0, tl.log(tl.exp(v) + 1.0), v)  # as dt_cumsum_kernel
    inside = (soft >= dt_min) & (soft <= dt_max)
    ddt_raw = tl.where(inside & ok, ddt, 0.0) * tl.where(v <= 20.0, tl.sigmoid(v), 1.0)
    tl.store(ddt_raw_ptr + rows[:, None] * s_out_t + offs_h[None, :], ddt_raw.to(ddt_raw_ptr.dtype.element_ty),
             mask=ok)
    out = tile * heads + offs_h
    tl.store(da_dt_ptr + out, tl.sum(da * dt.to(tl.float64), axis=0), mask=head_ok)
    tl.store(dbias_ptr + out, tl.sum(ddt_raw.to(tl.float64), axis=0), mask=head_ok)
    ddd = tl.load(ddd_ptr + th, mask=ok, other=0.0).to(tl.float64)
    tl.store(dd_ptr + out, tl.sum(ddd, axis=0), mask=head_ok)


@functools.cache
def triton_kernels() -> ShortSSDKernels:
    return ShortSSDKernels(dt_cumsum=dt_cumsum_kernel, cb=cb_kernel, fwd=fwd_kernel, fwd_factored=fwd_factored_kernel,
                           fwd_wide=fwd_wide_kernel, bwd_columns=bwd_columns_kernel, bwd_rows=bwd_rows_kernel,
                           bwd_dt=bwd_dt_kernel)
