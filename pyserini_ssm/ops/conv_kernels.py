"""The Triton side of `ops.conv_packed` (which launches it and holds its reference): the depthwise causal conv1d +
SiLU of a tile of packed rows (`conv_silu_tile`, inlined by every kernel that reads conv outputs: the packed conv
kernel here, and the short SSD's forward, which reads x through it instead of a stored conv output) and the packed
conv kernel. Imports triton: load it lazily."""

import triton
import triton.language as tl


@triton.jit
def conv_silu_tile(x_ptr, rows, row_ok, seq_start, ch, ch_ok, s_x_t, w_ptr, s_w_c, s_w_k, b_ptr,
                   W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """silu(bias + sum_k w[ch, k] x[rows - (W - 1) + k, ch]) (fp32) of the tile rows x ch of a channel-last row,
    the terms before each row's `seq_start` zero; x_ptr points at channel 0 of token 0."""
    acc = tl.zeros((rows.shape[0], ch.shape[0]), dtype=tl.float32)
    for k in tl.static_range(W):
        source = rows - (W - 1 - k)
        # The taps load whatever precedes them in the row and are zeroed afterwards where they reach back into
        # another sequence: their loads wait on no other load (masked by seq_start, each waited for its load).
        xv = tl.load(x_ptr + source[:, None] * s_x_t + ch[None, :],
                     mask=(row_ok & (source >= 0))[:, None] & ch_ok[None, :], other=0.0)
        wk = tl.load(w_ptr + ch * s_w_c + k * s_w_k, mask=ch_ok, other=0.0)
        acc += tl.where((source >= seq_start)[:, None], xv.to(tl.float32), 0.0) * wk.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    return acc


# `tokens` varies from row to row: not specialised (Triton compiles another variant for an int divisible by 16; a
# 32,768-token row then stopped a rerank run for a compilation, H200, 2026-12-02)
@triton.jit(do_not_specialize=["tokens"])
def conv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, seq_start_ptr, tokens, channels, s_x_t, s_y_t, s_w_c, s_w_k,
                W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    # Channel blocks vary fastest: programs running together read neighbouring channels of the same tokens.
    ch = tl.program_id(0) * BC + tl.arange(0, BC)
    rows = tl.program_id(1) * BT + tl.arange(0, BT)
    row_ok = rows < tokens
    ch_ok = ch < channels
    start = tl.load(seq_start_ptr + rows, mask=row_ok, other=0)
    acc = conv_silu_tile(x_ptr, rows, row_ok, start, ch, ch_ok, s_x_t, w_ptr, s_w_c, s_w_k, b_ptr, W, HAS_BIAS, SILU)
    tl.store(y_ptr + rows[:, None] * s_y_t + ch[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & ch_ok[None, :])
