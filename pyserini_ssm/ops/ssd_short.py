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

Forward variants (PYSERINI_SSM_SSD_FWD, read at import; `bin/profile-short-ssd` times them; one backward for all):
"default" pays the (BM, BM) masked exp on every column block; "factored" (used unless the variable says otherwise:
fastest on the H200) pays it only on the diagonal block, since before it the decay is exactly rank one,
exp(cs_t - cs_s) = exp(cs_t - e) exp(e - cs_s) with e = cs of the row before the row block (both factors <= 1);
"wide" runs FWD_HEADS heads of a group per program and puts their off-diagonal tiles side by side as the columns of
one dot with the CB tile. DT_LAYOUT "ht" (used unless PYSERINI_SSM_SSD_DT_LAYOUT=th) stores dt and cs (H, T), so a
head's loads of consecutive tokens coalesce.

Backward: three kernels. One per (tile, column block, head) accumulates dXdt_j = sum_i M_ij^T dY_i (so dX = dt dXdt +
D dY, ddt += x . dXdt, dD) and the column sums of dM o M; one per (tile, row block, heads of one group) forms
dM = dY Xdt^T per head, the row sums of dM o M and S = sum_h dM_h o L_h, and from S (shared by the group's heads)
dC = S B and dB = S^T C. The third, per (tile, block of heads), runs the cumulative-sum chain (d cs = rowsum - colsum,
da = reverse cumsum per sequence in float64, dA, ddt, clamp and softplus, dt_bias, dD); `dt_chain_reference` is the
same in torch (it ran as about 40 small torch ops a layer, launches that set the pace of a training step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pyserini_ssm.ops.batching import to_device

DEFAULT_BLOCK_T = 256  # tile: the longest sequence this kernel takes (longer ones: mamba_ssm's chunked scan)
BLOCK_M = int(os.environ.get("PYSERINI_SSM_SSD_BLOCK_M", "64"))  # rows (and columns) per sub-block of a tile
NUM_WARPS = int(os.environ.get("PYSERINI_SSM_SSD_WARPS", "4"))
ROWS_WARPS = int(os.environ.get("PYSERINI_SSM_SSD_ROWS_WARPS", "8"))  # the dB/dC kernel holds more state
# Forward loop over column blocks with loaded bounds (software-pipelined loads) instead of a static loop with
# runtime skips. The default since the H200 run of 2026-12-02 (bin/profile-short-ssd: forward 0.443 vs 0.487 ms at
# 32k tokens); the interpreter always takes the static loop.
LOADED_BOUNDS = os.environ.get("PYSERINI_SSM_SSD_LOADED_BOUNDS", "1") == "1"
FWD_HEADS_PER_PROGRAM = int(os.environ.get("PYSERINI_SSM_SSD_FWD_HEADS", "1"))  # heads one forward program runs
# Heads one dB/dC program sums its S over (a divisor of heads per group, at most this): fewer heads per program give
# more programs (at 13k tokens and 16 heads, 624 programs: under 5 per SM) for more dB/dC atomics.
ROWS_HEADS_LIMIT = int(os.environ.get("PYSERINI_SSM_SSD_ROWS_HEADS", "16"))
# Where dt and cs (fp32, per token and head) live: "th" (T, H) rows, or "ht" (H, T) so that the forward's per-head
# loads of BM consecutive tokens are contiguous instead of stride-H gathers. "ht" by default since the H200 run of
# 2026-12-02 (with "factored": forward 0.441 ms, forward+backward 3.404 ms, against 0.487 and 3.535).
DT_LAYOUT = os.environ.get("PYSERINI_SSM_SSD_DT_LAYOUT", "ht")
# The forward kernel: "default" (the full masked exp on every column block), "factored" (off-diagonal column blocks
# through the exact factorisation exp(cs_t - cs_s) = exp(cs_t - e) exp(e - cs_s), e = cs of the row before the row
# block: one exp per row and per column instead of one per pair, both factors <= 1), "wide" (factored, with the
# off-diagonal blocks of FWD_HEADS heads in one dot over heads x headdim columns: the CB tile is loaded once).
# "factored" by default (measured fastest; "wide" ran 0.62-1.18 ms, slower: docs/BENCHMARKS.md).
FWD_VARIANT = os.environ.get("PYSERINI_SSM_SSD_FWD", "factored")
FWD_VARIANTS = ("default", "factored", "wide")
if FWD_VARIANT not in FWD_VARIANTS or DT_LAYOUT not in ("th", "ht"):
    raise ValueError(f"PYSERINI_SSM_SSD_FWD must be one of {FWD_VARIANTS} and PYSERINI_SSM_SSD_DT_LAYOUT th or ht, "
                     f"got {FWD_VARIANT!r} and {DT_LAYOUT!r}")
# With the gated norm folded into the forward (ops.ssd_short.ssd_short_inference's `gate`): the gate z loaded with
# the row's other loads (1) or in the epilogue where it is used (0)
GATE_EARLY = os.environ.get("PYSERINI_SSM_SSD_GATE_EARLY", "1") == "1"
# dt and its cumulative sum: one program per (tile, block of this many heads), with this many warps
DT_HEADS_BLOCK = int(os.environ.get("PYSERINI_SSM_SSD_DT_HEADS", "16"))
DT_WARPS = int(os.environ.get("PYSERINI_SSM_SSD_DT_WARPS", "4"))
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


def grown_block_t(longest: int, block_t: int, max_block_t: int) -> int:
    """The smallest power of two >= `block_t` that holds `longest` tokens, capped at `max_block_t` (longer
    sequences stay outside the tiles)."""
    while block_t < longest and block_t * 2 <= max_block_t:
        block_t *= 2
    return block_t


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
                   block_t: int = DEFAULT_BLOCK_T, lengths: Sequence[int] | None = None,
                   max_block_t: int | None = None) -> ShortSSDPlan:
    """The tiling of one row (1, T) from its `seq_idx` (runs of equal ids are sequences; None: one sequence), or
    from `lengths`, the host-side lengths of those runs when the caller has them. Without `lengths`, one
    device-to-host copy, which waits for the device to finish the work queued before (the last row): with
    `lengths` the host queues this row while the device still runs the last one.

    The tile is `block_t` tokens, or with `max_block_t` the smallest power of two from `block_t` up to
    `max_block_t` that holds the row's longest sequence: a row with one 300-token pair then runs in 512-token tiles
    instead of sending that pair through mamba_ssm's chunked scan (gathers, its kernels and a scatter per layer)."""
    if lengths is not None:
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.ndim != 1 or int(lengths.sum()) != tokens or (len(lengths) and lengths.min() < 1):
            raise ValueError(f"sequence lengths {lengths.tolist()[:8]}... do not split a row of {tokens} tokens")
    elif seq_idx is None:
        lengths = np.asarray([tokens], dtype=np.int64)
    else:
        ids = seq_idx.reshape(-1)
        if ids.shape[0] != tokens:
            raise ValueError(f"seq_idx has {ids.shape[0]} tokens, the row {tokens}")
        _, counts = torch.unique_consecutive(ids, return_counts=True)
        lengths = counts.cpu().numpy().astype(np.int64)
    if max_block_t is not None and len(lengths):
        block_t = grown_block_t(int(lengths.max()), block_t, max_block_t)
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
        long_index = to_device(torch.from_numpy(long_tokens), device)
        long_seq_idx = torch.from_numpy(np.repeat(np.arange(len(long_ids), dtype=np.int32), lengths[long_ids]))
        long_seq_idx = to_device(long_seq_idx, device).unsqueeze(0)

    def as_device(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return to_device(torch.from_numpy(np.ascontiguousarray(array)).to(dtype), device)

    return ShortSSDPlan(
        tokens=tokens, block_t=block_t,
        tile_start=as_device(tile_start, torch.int32), tile_end=as_device(tile_end, torch.int32),
        seq_start=as_device(seq_start, torch.int32), seq_end=as_device(seq_end, torch.int64),
        long_index=long_index, long_seq_idx=long_seq_idx,
        sequences=len(lengths), long_sequences=int(is_long.sum()),
    )


# --------------------------------------------------------------------------------------------------------------------
# Launching the Triton kernels (ops/ssd_short_kernels.py, imported on first use: importing this module needs no
# triton)


def _kernels():
    from pyserini_ssm.ops.ssd_short_kernels import triton_kernels

    return triton_kernels()


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
    dt_cumsum_kernel = _kernels().dt_cumsum
    tokens, heads = dt_raw.shape
    # (T, H) views, 0 outside the tiles (the kernel writes every tile token: with no long sequence, every token);
    # stored (H, T) under DT_LAYOUT "ht" (per-head loads contiguous)
    allocate = torch.zeros if plan.long_index is not None else torch.empty
    if DT_LAYOUT == "ht":
        # each head's row padded to a multiple of 16 tokens: the kernels take its stride, and Triton compiles
        # another variant for a stride that is not divisible by 16 (one per row length class: a compilation in the
        # middle of a run)
        padded = -(-tokens // 16) * 16
        dt, cs = allocate(2, heads, padded, device=dt_raw.device, dtype=torch.float32)[:, :, :tokens].transpose(
            1, 2).unbind(0)
    else:
        dt, cs = allocate(2, tokens, heads, device=dt_raw.device, dtype=torch.float32).unbind(0)
    if plan.tiles:
        import triton

        heads_block = min(DT_HEADS_BLOCK, triton.next_power_of_2(heads))
        dt_cumsum_kernel[(plan.tiles, triton.cdiv(heads, heads_block))](
            dt_raw, dt_bias if dt_bias is not None else A, A, dt, cs, plan.tile_start, plan.tile_end,
            dt_raw.stride(0), dt.stride(0), dt.stride(1), heads, float(dt_limit[0]), float(dt_limit[1]),
            BT=plan.block_t, HB=heads_block, HAS_BIAS=dt_bias is not None, num_warps=DT_WARPS,
        )
    return dt, cs


def _masked_cb(B, C, plan: ShortSSDPlan, dtype: torch.dtype) -> torch.Tensor:
    """(K, G, BT, BT) C_i B_j^T of every tile and group, zero outside s <= t in one sequence (blocks a tile's rows
    never read are left unwritten). Stored in the inputs' dtype (fp32 inputs: fp32)."""
    cb_kernel = _kernels().cb
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


def _forward_inputs(x, dt_raw, A, B, C, dt_bias, plan: ShortSSDPlan, dt_limit):
    """What the forward kernel reads besides x and D, checked: (A fp32 contiguous, dt, cs, the masked C B^T)."""
    _check(x, B)
    A = A.float().contiguous()
    dt, cs = _dt_cumsum(dt_raw, dt_bias, A, plan, dt_limit)
    return A, dt, cs, _masked_cb(B, C, plan, x.dtype)


def ssd_short_forward(x, dt, cs, cb, D, plan: ShortSSDPlan, fill_long: bool = True,
                      conv: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                      gate: tuple[torch.Tensor, torch.Tensor] | None = None,
                      ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Y (T, H, P) for the tiled tokens (zeros at long-sequence tokens when `fill_long`, else left unwritten).
    x (T, H, P), dt/cs (T, H) fp32 from `_dt_cumsum`, cb from `_masked_cb`, D (H,) or None.

    `conv` = (weight (H P, W), bias (H P,) or None): x is the depthwise causal conv's input, and the SSD reads
    silu(conv(x)) (restarted per sequence, rounded to x's dtype) as it loads x (the "factored" forward only).
    `gate` = (z (T, H P) with a unit last stride, norm weight (H P,)): (Y silu(z) weight, sumsq (T, H) fp32 the
    per-head sums of (Y silu(z))^2) instead of Y (the "factored" forward only; see `ssd_short_inference`)."""
    kernels = _kernels()
    tokens, heads, head_dim = x.shape
    groups = cb.shape[1]
    if conv is not None and (FWD_VARIANT != "factored" or x.stride(1) != head_dim):
        raise ValueError("the conv is folded into the factored forward only, over heads contiguous in memory")
    if gate is not None and (FWD_VARIANT != "factored" or gate[0].stride(-1) != 1
                             or gate[0].shape != (tokens, heads * head_dim)):
        raise ValueError("the gate is folded into the factored forward only, z (T, H P) with a unit last stride")
    y = torch.empty(tokens, heads, head_dim, device=x.device, dtype=x.dtype)
    # every tile token's sums are written; long-sequence tokens (only with fill_long) get 0
    sumsq = (None if gate is None else
             (torch.zeros if plan.long_index is not None else torch.empty)(tokens, heads, device=x.device,
                                                                           dtype=torch.float32))
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
            kernels.fwd_wide[grid](
                x, cb, dt, cs, D if D is not None else dt, y, plan.seq_start, plan.tile_start, plan.tile_end,
                x.stride(0), y.stride(0), y.stride(1), dt.stride(0), dt.stride(1), heads, heads // groups, groups,
                **common,
            )
        else:
            args = (x, cb, dt, cs, D if D is not None else dt, y, plan.seq_start, plan.tile_start, plan.tile_end,
                    x.stride(0), x.stride(1), y.stride(0), y.stride(1), dt.stride(0), dt.stride(1), heads,
                    heads // groups, groups)
            if FWD_VARIANT in ("factored", "wide"):
                folded = conv is not None
                weight, bias = conv if folded else (x, None)  # unread placeholders when not folded
                z, norm_weight = gate if gate is not None else (x, x)
                kernels.fwd_factored[grid](
                    *args, weight, bias if bias is not None else weight, weight.stride(0) if folded else 0,
                    weight.stride(1) if folded else 0, z, z.stride(0) if gate is not None else 0, norm_weight,
                    sumsq if sumsq is not None else dt, **common, CONV=folded,
                    CONV_W=weight.shape[1] if folded else 1, CONV_BIAS=bias is not None, GATE=gate is not None,
                    GATE_EARLY=GATE_EARLY)
            else:
                kernels.fwd[grid](*args, **common)
    return y if gate is None else (y, sumsq)


class ShortSSDFn(torch.autograd.Function):
    """y = SSD(x, dt_raw, A, B, C, D, dt_bias) over the tiles of `plan` (long-sequence tokens: y = 0, no gradient)."""

    @staticmethod
    def forward(ctx, x, dt_raw, A, B, C, D, dt_bias, plan: ShortSSDPlan, dt_limit, fill_long=True):
        A, dt, cs, cb = _forward_inputs(x, dt_raw, A, B, C, dt_bias, plan, dt_limit)
        y = ssd_short_forward(x, dt, cs, cb, D, plan, fill_long)
        # cb is kept for the backward (BT^2 per tile and group: 1/12 of x's size for mamba2-780m, 48 heads of 64):
        # recomputing it was one more launch per layer
        ctx.save_for_backward(x, dt_raw, A, B, C, D, dt_bias, dt, cs, cb)
        ctx.plan = plan
        ctx.dt_limit = dt_limit
        return y

    @staticmethod
    def backward(ctx, dy):
        x, dt_raw, A, B, C, D, dt_bias, dt, cs, cb = ctx.saved_tensors
        plan: ShortSSDPlan = ctx.plan
        kernels = _kernels()
        tokens, heads, head_dim = x.shape
        groups, state = B.shape[1], B.shape[2]
        dy = dy if dy.stride(-1) == 1 else dy.contiguous()
        precision = _dot_precision(x.dtype)
        dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        if plan.long_index is not None:
            dx[plan.long_index] = 0  # the chunked kernel's gradient is added there by autograd
        # Every (T, H) buffer is read only at tile tokens; rowsum, dB and dC take atomic adds, so they start at 0.
        # The three written buffers share one allocation and dB/dC another: fewer launches (the host sets the pace
        # of a training step at 13k tokens).
        ddt_x, colsum, ddd = torch.empty(3, tokens, heads, device=x.device, dtype=torch.float32).unbind(0)
        rowsum = torch.zeros(tokens, heads, device=x.device, dtype=torch.float32)
        dbc = torch.zeros(2, tokens, groups, state, device=x.device, dtype=torch.float32)
        dB, dC = dbc.unbind(0)
        if plan.tiles:
            blocks = plan.block_t // BLOCK_M
            kernels.bwd_columns[(heads, blocks, plan.tiles)](
                x, cb, dt, cs, D if D is not None else dt, dy, dx, ddt_x, colsum, ddd,
                plan.seq_end, plan.tile_start, plan.tile_end,
                x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1),
                dt.stride(0), dt.stride(1), heads, heads // groups, groups,
                P=head_dim, BM=BLOCK_M, NB=blocks, BT=plan.block_t, HAS_D=D is not None, DOT_PRECISION=precision,
                num_warps=NUM_WARPS,
            )
            per_program = _heads_per_program(heads // groups, ROWS_HEADS_LIMIT)
            kernels.bwd_rows[(plan.tiles, blocks, heads // per_program)](
                x, B, C, cb, dt, cs, dy, rowsum, dB, dC, plan.seq_start, plan.tile_start, plan.tile_end,
                x.stride(0), x.stride(1), B.stride(0), B.stride(1), C.stride(0), C.stride(1),
                dy.stride(0), dy.stride(1), dB.stride(0), dB.stride(1), dt.stride(0), dt.stride(1),
                heads, heads // groups, groups,
                HPP=per_program, P=head_dim, N=state, BM=BLOCK_M, NB=blocks, BT=plan.block_t,
                DOT_PRECISION=precision, num_warps=ROWS_WARPS,
            )
        # the per-head sums straight in the parameters' dtype (one conversion), dB and dC in one conversion too:
        # fewer launches in a step whose pace the host sets
        sums_dtype = A.dtype if all(t is None or t.dtype == A.dtype for t in (D, dt_bias)) else torch.float64
        ddt_raw, dA, ddt_bias, dD = dt_chain(rowsum, colsum, ddt_x, ddd, dt, dt_raw, A, dt_bias, plan, ctx.dt_limit,
                                             sums_dtype=sums_dtype)
        dB, dC = dbc.to(B.dtype).unbind(0) if B.dtype == C.dtype else (dB.to(B.dtype), dC.to(C.dtype))
        return (dx, ddt_raw, dA.to(A.dtype), dB, dC, dD.to(D.dtype) if D is not None else None,
                ddt_bias.to(dt_bias.dtype) if dt_bias is not None else None, None, None, None)


def dt_chain(rowsum, colsum, ddt_x, ddd, dt, dt_raw, A, dt_bias, plan: ShortSSDPlan, dt_limit,
             sums_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`dt_chain_reference` on the tile tokens of `plan` by `bwd_dt_kernel` (ddt_raw 0 at long-sequence tokens):
    (ddt_raw in dt_raw's dtype, dA, ddt_bias, dD: float64 sums of the tiles' float64 sums, in `sums_dtype`).
    rowsum, colsum, ddt_x, ddd: contiguous (T, H) fp32."""
    heads = rowsum.shape[1]
    # the kernel writes every tile token and every (tile, head) sum: zeros only where some are left unwritten
    ddt_raw = (torch.zeros if plan.long_index is not None else torch.empty)(
        dt_raw.shape, device=dt_raw.device, dtype=dt_raw.dtype)
    partials = (torch.empty if plan.tiles else torch.zeros)(
        3, max(plan.tiles, 1), heads, device=dt_raw.device, dtype=torch.float64)
    if plan.tiles:
        import triton

        heads_block = min(16, triton.next_power_of_2(heads))
        _kernels().bwd_dt[(plan.tiles, triton.cdiv(heads, heads_block))](
            rowsum, colsum, ddt_x, ddd, dt, dt_raw, dt_bias if dt_bias is not None else A, A, plan.seq_end,
            plan.tile_start, plan.tile_end, ddt_raw, partials[0], partials[1], partials[2],
            dt_raw.stride(0), dt.stride(0), dt.stride(1), ddt_raw.stride(0), heads,
            float(dt_limit[0]), float(dt_limit[1]),
            BT=plan.block_t, HB=heads_block, HAS_BIAS=dt_bias is not None, num_warps=4,
        )
    dA, ddt_bias, dD = partials.sum(1).to(sums_dtype).unbind(0)  # float64 sums of the tiles' sums
    return ddt_raw, dA, ddt_bias, dD


def dt_chain_reference(rowsum, colsum, ddt_x, ddd, dt, dt_raw, A, dt_bias, seq_end, dt_limit,
                       long_index=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What `bwd_dt_kernel` computes, in torch on (T, H) tensors: (ddt_raw, dA, ddt_bias, dD) float64 sums, from
    the other backward kernels' row sums, column sums, ddt_x = x . dXdt and ddd = x . dY per token and head.

    d cs_t = sum_s dlogL[t, s] - sum_t' dlogL[t', t]; a_r enters every cs_t of its sequence with t >= r, so
    da_r = sum_{r <= t < seq_end_r} d cs_t = E[seq_end_r] - E[r], E the exclusive prefix sum over the row (float64:
    the terms of one sequence nearly cancel)."""
    tokens, heads = rowsum.shape
    dcs = (rowsum - colsum).t().double().contiguous()  # (H, T)
    prefix = dcs.new_zeros(heads, tokens + 1)
    prefix[:, 1:] = torch.cumsum(dcs, 1)
    da = (prefix[:, seq_end] - prefix[:, :-1]).t()  # (T, H)
    ddt = ddt_x + da.float() * A
    dA = (da * dt.double()).sum(0)
    v = dt_raw.float() + (dt_bias.float() if dt_bias is not None else 0.0)
    soft = F.softplus(v)
    inside = (soft >= dt_limit[0]) & (soft <= dt_limit[1])
    ddt_raw = torch.where(inside, ddt, 0.0) * torch.where(v <= SOFTPLUS_THRESHOLD, torch.sigmoid(v), 1.0)
    if long_index is not None:
        ddt_raw[long_index] = 0.0
    return ddt_raw, dA, ddt_raw.double().sum(0), ddd.double().sum(0)


def ssd_short_inference(x, dt_raw, A, B, C, D, dt_bias, plan: ShortSSDPlan,
                        dt_limit: tuple[float, float] = (0.0, float("inf")),
                        conv: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                        gate: tuple[torch.Tensor, torch.Tensor] | None = None,
                        ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`ssd_short` for inference (no gradient), with the work around it folded into the forward kernel:

    - `conv` = (weight (H P, W <= 4), bias (H P,) or None): x (T, H, P) is the depthwise causal conv's input over
      x's channels (a view of the in_proj output, heads contiguous), and the kernel applies conv + SiLU as it loads
      x (B and C are already convolved).
    - `gate` = (z (T, H P), the gated RMSNorm's weight (H P,)): returns (g, sumsq), g = Y silu(z) weight (T, H, P)
      in x's dtype and sumsq (T, H) fp32 the per-head sums of (Y silu(z))^2. The norm's output is g rstd with
      rstd = 1 / sqrt(sum_h sumsq / (H P) + eps) per token, a row scale that commutes with a bias-free out_proj
      (`ops.rmsnorm.ScaledRows` applies it in the next residual add).

    Every sequence must be in a tile: a row with longer ones is refused (their chunked scan reads stored x)."""
    if plan.long_index is not None:
        raise ValueError("the folded conv and gate need every sequence in a tile (no long sequences)")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, dt_raw, B, C, D, dt_bias, *(conv or ()), *(gate or ()))):
        raise ValueError("ssd_short_inference is for inference: no gradient flows through it")
    _, dt, cs, cb = _forward_inputs(x, dt_raw, A, B, C, dt_bias, plan, tuple(float(v) for v in dt_limit))
    return ssd_short_forward(x, dt, cs, cb, D, plan, conv=conv, gate=gate)


def ssd_short(x, dt_raw, A, B, C, D, dt_bias, plan: ShortSSDPlan,
              dt_limit: tuple[float, float] = (0.0, float("inf")), fill_long: bool = True) -> torch.Tensor:
    """The SSD (T, H, P) of the short sequences of a packed row (zeros at the tokens of `plan.long_index`).

    x (T, H, P), dt_raw (T, H) before softplus, A (H,) negative, B and C (T, G, N), D (H,) or None, dt_bias (H,) or
    None; any strides with a unit last one (views of the in_proj/conv outputs need no copy). Differentiable.
    `fill_long=False` leaves the long-sequence rows unwritten (the caller overwrites them in place)."""
    return ShortSSDFn.apply(x, dt_raw, A, B, C, D, dt_bias, plan, tuple(float(v) for v in dt_limit), fill_long)
