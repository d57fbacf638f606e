"""A Mamba-2 SSD for packed rows of short sequences: Triton forward and backward (`ShortSSDFn`), and its tiling.

Almost every reranking pair is shorter than one SSD chunk (DL19 pairs average 101 tokens, 99.3 % of their tokens are
in pairs of at most 256). For those the SSD needs no state passing: within one sequence (zero initial state) it is
the causal, decayed product of `ops.ssd_reference`,

    Y_h = (L_h o C B^T)(dt_h * X_h) + D_h X_h,   L_h[t, s] = exp(cs_t - cs_s) for s <= t in the same sequence.

The host (`plan_short_ssd`, once per forward, shared by every layer) cuts a packed row into tiles of whole sequences
of at most `block_t` tokens, greedily in row order; sequences longer than `block_t` are left out of every tile and
go to mamba_ssm's chunked kernel (`models.mamba2_mixer`). One Triton program per (tile, block of BM rows, head)
computes C_i B_j^T for the column blocks its rows can see (same sequence, s <= t; blocks of other sequences are
skipped), the decay from the tile's cumulative sum, and accumulates (L o CB) (dt X) with `tl.dot`.

Forward variants (env switches, opt-in until timed by bin/profile-short-ssd; the backward is the same for all):
"factored" pays the (BM, BM) masked exp only on the diagonal block: before it the decay is exactly rank one,
exp(cs_t - cs_s) = exp(cs_t - e) exp(e - cs_s) with e = cs of the row before the row block (both factors <= 1);
"wide" runs FWD_HEADS heads of a group per program and puts their off-diagonal tiles side by side as the columns of
one dot with the CB tile; DT_LAYOUT "ht" stores dt and cs (H, T) so a head's loads of consecutive tokens coalesce.

Backward: two kernels. One per (tile, column block, head) accumulates dXdt_j = sum_i M_ij^T dY_i (so dX = dt dXdt +
D dY, ddt += x . dXdt, dD) and the column sums of dM o M; one per (tile, row block, heads of one group) forms
dM = dY Xdt^T per head, the row sums of dM o M and S = sum_h dM_h o L_h, and from S (shared by the group's heads)
dC = S B and dB = S^T C. The cumulative-sum chain (d cs = rowsum - colsum, da = reverse cumsum per sequence, dA, ddt,
softplus, dt_bias) runs in torch on (T, H) tensors.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_BLOCK_T = 256  # tile: the longest sequence this kernel takes (longer ones: mamba_ssm's chunked scan)
BLOCK_M = int(os.environ.get("PYSERINI_SSM_SSD_BLOCK_M", "64"))  # rows (and columns) per sub-block of a tile
NUM_WARPS = int(os.environ.get("PYSERINI_SSM_SSD_WARPS", "4"))
ROWS_WARPS = int(os.environ.get("PYSERINI_SSM_SSD_ROWS_WARPS", "8"))  # the dB/dC kernel holds more state
# Forward loop over column blocks with loaded bounds (software-pipelined loads) instead of a static loop with
# runtime skips. Opt-in until measured (bin/profile-short-ssd times both).
LOADED_BOUNDS = os.environ.get("PYSERINI_SSM_SSD_LOADED_BOUNDS", "0") == "1"
FWD_HEADS_PER_PROGRAM = int(os.environ.get("PYSERINI_SSM_SSD_FWD_HEADS", "1"))  # heads one forward program runs
# Heads one dB/dC program sums its S over (a divisor of heads per group, at most this): fewer heads per program give
# more programs (at 13k tokens and 16 heads, 624 programs: under 5 per SM) for more dB/dC atomics.
ROWS_HEADS_LIMIT = int(os.environ.get("PYSERINI_SSM_SSD_ROWS_HEADS", "16"))
# Where dt and cs (fp32, per token and head) live: "th" (T, H) rows, or "ht" (H, T) so that the forward's per-head
# loads of BM consecutive tokens are contiguous instead of stride-H gathers. Opt-in until measured.
DT_LAYOUT = os.environ.get("PYSERINI_SSM_SSD_DT_LAYOUT", "th")
# The forward kernel: "default" (the full masked exp on every column block), "factored" (off-diagonal column blocks
# through the exact factorisation exp(cs_t - cs_s) = exp(cs_t - e) exp(e - cs_s), e = cs of the row before the row
# block: one exp per row and per column instead of one per pair, both factors <= 1), "wide" (factored, with the
# off-diagonal blocks of FWD_HEADS heads in one dot over heads x headdim columns: the CB tile is loaded once).
FWD_VARIANT = os.environ.get("PYSERINI_SSM_SSD_FWD", "default")
FWD_VARIANTS = ("default", "factored", "wide")
if FWD_VARIANT not in FWD_VARIANTS or DT_LAYOUT not in ("th", "ht"):
    raise ValueError(f"PYSERINI_SSM_SSD_FWD must be one of {FWD_VARIANTS} and PYSERINI_SSM_SSD_DT_LAYOUT th or ht, "
                     f"got {FWD_VARIANT!r} and {DT_LAYOUT!r}")
SOFTPLUS_THRESHOLD = 20.0  # as torch's softplus and mamba_ssm's _chunk_cumsum kernels


# --------------------------------------------------------------------------------------------------------------------
# Host-side tiling


def tile_sequences(lengths: np.ndarray, block_t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy tiles of whole sequences in row order: (tile_first_seq, tile_end_seq, is_long) where tile k holds the
    sequences tile_first_seq[k] .. tile_end_seq[k]-1 (at most `block_t` tokens) and is_long (S,) marks the sequences
    longer than `block_t` (in no tile)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    is_long = lengths > block_t
    firsts: list[int] = []
    ends: list[int] = []
    used = block_t + 1  # forces a new tile on the first short sequence
    for index, length in enumerate(lengths.tolist()):  # once per forward, a few hundred sequences
        if length > block_t:
            used = block_t + 1  # a long sequence ends the tile: tiles are contiguous token ranges
            continue
        if used + length > block_t:
            firsts.append(index)
            ends.append(index + 1)
            used = length
        else:
            ends[-1] = index + 1
            used += length
    return np.asarray(firsts, dtype=np.int64), np.asarray(ends, dtype=np.int64), is_long


@dataclass
class ShortSSDPlan:
    """How one packed row (1, T) is split: tiles (token ranges of whole short sequences) and the long tokens."""

    tokens: int
    block_t: int
    tile_start: torch.Tensor  # (K,) int32, first token of each tile
    tile_end: torch.Tensor  # (K,) int32, one past its last token
    seq_start: torch.Tensor  # (T,) int32, first token of each token's sequence
    seq_end: torch.Tensor  # (T,) int64, one past the last token of each token's sequence
    long_index: torch.Tensor | None  # (T_long,) int64 tokens of sequences longer than block_t, or None
    long_seq_idx: torch.Tensor | None  # (1, T_long) int32 their sequence ids (for mamba_ssm's seq_idx)
    sequences: int
    long_sequences: int

    @property
    def tiles(self) -> int:
        return int(self.tile_start.shape[0])

    @property
    def long_tokens(self) -> int:
        return 0 if self.long_index is None else int(self.long_index.shape[0])


def plan_short_ssd(seq_idx: torch.Tensor | None, tokens: int, device: torch.device,
                   block_t: int = DEFAULT_BLOCK_T) -> ShortSSDPlan:
    """The tiling of one row (1, T) from its `seq_idx` (runs of equal ids are sequences; None: one sequence).
    One device-to-host copy (the sequence lengths)."""
    if seq_idx is None:
        lengths = np.asarray([tokens], dtype=np.int64)
    else:
        ids = seq_idx.reshape(-1)
        if ids.shape[0] != tokens:
            raise ValueError(f"seq_idx has {ids.shape[0]} tokens, the row {tokens}")
        _, counts = torch.unique_consecutive(ids, return_counts=True)
        lengths = counts.cpu().numpy().astype(np.int64)
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    first, end, is_long = tile_sequences(lengths, block_t)
    tile_start = starts[first]
    tile_end = starts[end]
    seq_start = np.repeat(starts[:-1], lengths)
    seq_end = np.repeat(starts[1:], lengths)
    long_index = long_seq_idx = None
    if is_long.any():
        long_ids = np.nonzero(is_long)[0]
        long_tokens = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in long_ids])
        long_index = torch.from_numpy(long_tokens).to(device)
        long_seq_idx = torch.from_numpy(np.repeat(np.arange(len(long_ids), dtype=np.int32), lengths[long_ids]))
        long_seq_idx = long_seq_idx.to(device).unsqueeze(0)

    def as_device(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)

    return ShortSSDPlan(
        tokens=tokens, block_t=block_t,
        tile_start=as_device(tile_start, torch.int32), tile_end=as_device(tile_end, torch.int32),
        seq_start=as_device(seq_start, torch.int32), seq_end=as_device(seq_end, torch.int64),
        long_index=long_index, long_seq_idx=long_seq_idx,
        sequences=len(lengths), long_sequences=int(is_long.sum()),
    )


# --------------------------------------------------------------------------------------------------------------------
# Triton kernels (built on first use: importing this module needs no triton)


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def dt_cumsum_kernel(dt_raw_ptr, bias_ptr, A_ptr, dt_ptr, cs_ptr, tile_start_ptr, tile_end_ptr,
                         s_dtr_t, s_dt_t, s_dt_h, heads, dt_min, dt_max,
                         BT: tl.constexpr, HB: tl.constexpr, HAS_BIAS: tl.constexpr):
        # One program per tile, all heads at once (rows of dt_raw are contiguous over heads: coalesced loads):
        # dt = clamp(softplus(dt_raw + bias)), cs = cumsum(dt * A) over the tile.
        tile = tl.program_id(0)
        ts = tl.load(tile_start_ptr + tile)
        te = tl.load(tile_end_ptr + tile)
        rows = ts + tl.arange(0, BT)
        offs_h = tl.arange(0, HB)
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
    def fwd_factored_kernel(x_ptr, cb_ptr, dt_ptr, cs_ptr, D_ptr, y_ptr, seq_start_ptr, tile_start_ptr,
                            tile_end_ptr, s_x_t, s_x_h, s_y_t, s_y_h, s_dt_t, s_dt_h, heads, heads_per_group, groups,
                            P: tl.constexpr, BM: tl.constexpr, NB: tl.constexpr, BT: tl.constexpr,
                            HAS_D: tl.constexpr, DOT_PRECISION: tl.constexpr, LOADED_BOUNDS: tl.constexpr,
                            HC: tl.constexpr):
        # As fwd_kernel, but only the diagonal block pays the full (BM, BM) masked exp. Off the diagonal (j < i,
        # whole blocks before the rows) exp(cs_t - cs_s) = u_t v_s with e = cs[r0 - 1]: u = exp(cs_t - e) and
        # v = exp(e - cs_s), both <= 1 (cs never increases: A < 0, dt >= 0), so nothing overflows and the products
        # that underflow are those whose true value does. Y_i = L_ii o CB_ii (dt X_i) + u o sum_j CB_ij (v dt X_j).
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
            x_i = tl.load(x_ptr + rows[:, None] * s_x_t + h * s_x_h + offs_p[None, :], mask=row_ok[:, None],
                          other=0.0)
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
                        x_j = tl.load(x_ptr + cols[:, None] * s_x_t + h * s_x_h + offs_p[None, :])
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
                        x_j = tl.load(x_ptr + cols[:, None] * s_x_t + h * s_x_h + offs_p[None, :])
                        xv = (x_j.to(tl.float32) * v[:, None]).to(dtype)
                        cb_j = tl.load(cb_row + jb * BM + offs_m[None, :])  # masked C_i B_j^T, inputs' dtype
                        off += tl.dot(cb_j, xv, input_precision=DOT_PRECISION)
                acc += tl.exp(tl.minimum(cs_i - e, 0.0))[:, None] * off
            if HAS_D:
                acc += tl.load(D_ptr + h).to(tl.float32) * x_i.to(tl.float32)
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

    return (dt_cumsum_kernel, cb_kernel, fwd_kernel, bwd_columns_kernel, bwd_rows_kernel, fwd_factored_kernel,
            fwd_wide_kernel)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 tensors: exact fp32 products, not TF32


def _heads_per_program(heads_per_group: int, limit: int = 16) -> int:
    return max(d for d in range(1, min(heads_per_group, limit) + 1) if heads_per_group % d == 0)


def _check(x: torch.Tensor, B: torch.Tensor) -> None:
    _, _, head_dim = x.shape
    state = B.shape[-1]
    for name, value in (("headdim", head_dim), ("d_state", state)):
        if value < 16 or value & (value - 1):
            raise ValueError(f"the short SSD kernel needs {name} a power of two >= 16, got {value}")
    if x.stride(-1) != 1 or B.stride(-1) != 1:
        raise ValueError("the short SSD kernel needs unit stride on the last dimension")


def _dt_cumsum(dt_raw, dt_bias, A, plan: ShortSSDPlan, dt_limit) -> tuple[torch.Tensor, torch.Tensor]:
    dt_cumsum_kernel = _kernels()[0]
    tokens, heads = dt_raw.shape
    # (T, H) views, 0 outside the tiles; stored (H, T) under DT_LAYOUT "ht" (per-head loads contiguous)
    if DT_LAYOUT == "ht":
        dt = torch.zeros(heads, tokens, device=dt_raw.device, dtype=torch.float32).t()
        cs = torch.zeros(heads, tokens, device=dt_raw.device, dtype=torch.float32).t()
    else:
        dt = torch.zeros(tokens, heads, device=dt_raw.device, dtype=torch.float32)
        cs = torch.zeros_like(dt)
    if plan.tiles:
        import triton

        dt_cumsum_kernel[(plan.tiles,)](
            dt_raw, dt_bias if dt_bias is not None else A, A, dt, cs, plan.tile_start, plan.tile_end,
            dt_raw.stride(0), dt.stride(0), dt.stride(1), heads, float(dt_limit[0]), float(dt_limit[1]),
            BT=plan.block_t, HB=triton.next_power_of_2(heads), HAS_BIAS=dt_bias is not None, num_warps=8,
        )
    return dt, cs


def _masked_cb(B, C, plan: ShortSSDPlan, dtype: torch.dtype) -> torch.Tensor:
    """(K, G, BT, BT) C_i B_j^T of every tile and group, zero outside s <= t in one sequence (blocks a tile's rows
    never read are left unwritten). Stored in the inputs' dtype (fp32 inputs: fp32)."""
    cb_kernel = _kernels()[1]
    groups, state = B.shape[1], B.shape[2]
    blocks = plan.block_t // BLOCK_M
    cb = torch.empty(plan.tiles, groups, plan.block_t, plan.block_t, device=B.device, dtype=dtype)
    if plan.tiles:
        cb_kernel[(blocks * blocks, groups, plan.tiles)](
            B, C, cb, plan.seq_start, plan.tile_start, plan.tile_end,
            B.stride(0), B.stride(1), C.stride(0), C.stride(1), groups,
            N=state, BM=BLOCK_M, NB=blocks, BT=plan.block_t, DOT_PRECISION=_dot_precision(dtype), num_warps=4,
        )
    return cb


def ssd_short_forward(x, dt, cs, cb, D, plan: ShortSSDPlan, fill_long: bool = True) -> torch.Tensor:
    """Y (T, H, P) for the tiled tokens (zeros at long-sequence tokens when `fill_long`, else left unwritten).
    x (T, H, P), dt/cs (T, H) fp32 from `_dt_cumsum`, cb from `_masked_cb`, D (H,) or None."""
    kernels = _kernels()
    tokens, heads, head_dim = x.shape
    groups = cb.shape[1]
    y = torch.empty(tokens, heads, head_dim, device=x.device, dtype=x.dtype)
    if fill_long and plan.long_index is not None:
        y[plan.long_index] = 0
    if plan.tiles:
        blocks = plan.block_t // BLOCK_M
        per_program = FWD_HEADS_PER_PROGRAM if heads % FWD_HEADS_PER_PROGRAM == 0 else 1
        grid = (heads // per_program, blocks, plan.tiles)
        common = dict(P=head_dim, BM=BLOCK_M, NB=blocks, BT=plan.block_t, HAS_D=D is not None,
                      DOT_PRECISION=_dot_precision(x.dtype), LOADED_BOUNDS=LOADED_BOUNDS and not _interpreted(),
                      HC=per_program, num_warps=NUM_WARPS)
        wide = (FWD_VARIANT == "wide" and x.stride(1) == head_dim and (heads // groups) % per_program == 0
                and per_program & (per_program - 1) == 0)  # the heads of one program: one group, x rows contiguous
        if wide:
            kernels[6][grid](
                x, cb, dt, cs, D if D is not None else dt, y, plan.seq_start, plan.tile_start, plan.tile_end,
                x.stride(0), y.stride(0), y.stride(1), dt.stride(0), dt.stride(1), heads, heads // groups, groups,
                **common,
            )
        else:
            fwd_kernel = kernels[5] if FWD_VARIANT in ("factored", "wide") else kernels[2]
            fwd_kernel[grid](
                x, cb, dt, cs, D if D is not None else dt, y, plan.seq_start, plan.tile_start, plan.tile_end,
                x.stride(0), x.stride(1), y.stride(0), y.stride(1), dt.stride(0), dt.stride(1), heads,
                heads // groups, groups, **common,
            )
    return y


class ShortSSDFn(torch.autograd.Function):
    """y = SSD(x, dt_raw, A, B, C, D, dt_bias) over the tiles of `plan` (long-sequence tokens: y = 0, no gradient)."""

    @staticmethod
    def forward(ctx, x, dt_raw, A, B, C, D, dt_bias, plan: ShortSSDPlan, dt_limit, fill_long=True):
        _check(x, B)
        A = A.float().contiguous()
        dt, cs = _dt_cumsum(dt_raw, dt_bias, A, plan, dt_limit)
        y = ssd_short_forward(x, dt, cs, _masked_cb(B, C, plan, x.dtype), D, plan, fill_long)
        ctx.save_for_backward(x, dt_raw, A, B, C, D, dt_bias, dt, cs)
        ctx.plan = plan
        ctx.dt_limit = dt_limit
        return y

    @staticmethod
    def backward(ctx, dy):
        x, dt_raw, A, B, C, D, dt_bias, dt, cs = ctx.saved_tensors
        plan: ShortSSDPlan = ctx.plan
        bwd_columns_kernel, bwd_rows_kernel = _kernels()[3:5]
        tokens, heads, head_dim = x.shape
        groups, state = B.shape[1], B.shape[2]
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        precision = _dot_precision(x.dtype)
        dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        if plan.long_index is not None:
            dx[plan.long_index] = 0  # the chunked kernel's gradient is added there by autograd
        ddt_x, colsum, rowsum, ddd = (torch.zeros(tokens, heads, device=x.device, dtype=torch.float32)
                                      for _ in range(4))
        dB = torch.zeros(tokens, groups, state, device=x.device, dtype=torch.float32)
        dC = torch.zeros_like(dB)
        if plan.tiles:
            blocks = plan.block_t // BLOCK_M
            cb = _masked_cb(B, C, plan, x.dtype)
            bwd_columns_kernel[(heads, blocks, plan.tiles)](
                x, cb, dt, cs, D if D is not None else dt, dy, dx, ddt_x, colsum, ddd,
                plan.seq_end, plan.tile_start, plan.tile_end,
                x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1),
                dt.stride(0), dt.stride(1), heads, heads // groups, groups,
                P=head_dim, BM=BLOCK_M, NB=blocks, BT=plan.block_t, HAS_D=D is not None, DOT_PRECISION=precision,
                num_warps=NUM_WARPS,
            )
            per_program = _heads_per_program(heads // groups, ROWS_HEADS_LIMIT)
            bwd_rows_kernel[(plan.tiles, blocks, heads // per_program)](
                x, B, C, cb, dt, cs, dy, rowsum, dB, dC, plan.seq_start, plan.tile_start, plan.tile_end,
                x.stride(0), x.stride(1), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
                dy.stride(0), dy.stride(1), dB.stride(0), dB.stride(1), dt.stride(0), dt.stride(1),
                heads, heads // groups, groups,
                HPP=per_program, P=head_dim, N=state, BM=BLOCK_M, NB=blocks, BT=plan.block_t,
                DOT_PRECISION=precision, num_warps=ROWS_WARPS,
            )
        # d cs_t = sum_s dlogL[t, s] - sum_t' dlogL[t', t]; a_r enters every cs_t of its sequence with t >= r, so
        # da_r = sum_{r <= t < seq_end_r} dcs_t = E[seq_end_r] - E[r], E the exclusive prefix sum over the row
        # (float64: the terms of one sequence nearly cancel). The scan runs along the contiguous dimension of an
        # (H, T) copy: torch scans dim 0 of a (T, H) tensor with one sequential thread per column, 2.5 ms a layer
        # at 13k tokens on an H200 (37 % of a training step, bin/profile-training-step).
        dcs = (rowsum - colsum).t().double().contiguous()  # (H, T)
        prefix = dcs.new_zeros(heads, tokens + 1)
        prefix[:, 1:] = torch.cumsum(dcs, 1)
        da = (prefix[:, plan.seq_end] - prefix[:, :-1]).t()  # (T, H) float64, restarted at each sequence end
        ddt = ddt_x + da.float() * A
        dA = (da * dt.double()).sum(0)  # float64: the terms of one sequence nearly cancel
        v = dt_raw.float() + (dt_bias.float() if dt_bias is not None else 0.0)
        soft = F.softplus(v)
        inside = (soft >= ctx.dt_limit[0]) & (soft <= ctx.dt_limit[1])
        ddt_raw = torch.where(inside, ddt, 0.0) * torch.where(v <= SOFTPLUS_THRESHOLD, torch.sigmoid(v), 1.0)
        if plan.long_tokens:  # long-sequence tokens are not ours: the chunked kernel gives their gradients
            ddt_raw[plan.long_index] = 0.0
        ddt_bias = ddt_raw.double().sum(0).to(dt_bias.dtype) if dt_bias is not None else None
        dD = ddd.double().sum(0).to(D.dtype) if D is not None else None
        return (dx, ddt_raw.to(dt_raw.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype), dD, ddt_bias,
                None, None, None)


def ssd_short(x, dt_raw, A, B, C, D, dt_bias, plan: ShortSSDPlan,
              dt_limit: tuple[float, float] = (0.0, float("inf")), fill_long: bool = True) -> torch.Tensor:
    """The SSD (T, H, P) of the short sequences of a packed row (zeros at the tokens of `plan.long_index`).

    x (T, H, P), dt_raw (T, H) before softplus, A (H,) negative, B and C (T, G, N), D (H,) or None, dt_bias (H,) or
    None; any strides with a unit last one (views of the in_proj/conv outputs need no copy). Differentiable.
    `fill_long=False` leaves the long-sequence rows unwritten (the caller overwrites them in place)."""
    return ShortSSDFn.apply(x, dt_raw, A, B, C, D, dt_bias, plan, tuple(float(v) for v in dt_limit), fill_long)
