"""Depthwise causal conv1d + SiLU over a packed channel-last row (T, C), restarted at each sequence start: a
forward-only Triton kernel (`packed_causal_conv1d`) and its pure-PyTorch reference (`packed_causal_conv1d_reference`).

What causal_conv1d's `causal_conv1d_fn(x, weight, bias, seq_idx, activation="silu")` computes for Mamba-2's mixer,
with the sequence boundaries given as each token's sequence start (`ShortSSDPlan.seq_start`):

    y[t, c] = silu(bias[c] + sum_{k < W} weight[c, k] * x[t - (W - 1) + k, c]),  terms before seq_start[t] are zero

One program per (token block, channel block); channels are contiguous in memory and in each program's tile, so
every load and store is coalesced (the W shifted loads of one program overlap in L1/L2). The kernel and its tile
function are in `ops.conv_kernels`; the short SSD's forward reads x through the same tile function. Inference only:
training keeps causal_conv1d (it has the backward).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

# Tile of one program: tokens x channels ("16x256", the fastest of seven on the H200 on 2026-12-02: 0.177 ms at 32k
# tokens x 3328 channels, 32x128 0.186, causal_conv1d 0.225). Read at import, as the SSD's settings;
# bin/profile-short-ssd sets the module attributes to time others.
_block = os.environ.get("PYSERINI_SSM_CONV_BLOCK", "16x256").lower().split("x")
BLOCK_TOKENS, BLOCK_CHANNELS = int(_block[0]), int(_block[1])
NUM_WARPS = int(os.environ.get("PYSERINI_SSM_CONV_WARPS", "4"))
MAX_WIDTH = 4


def packed_causal_conv1d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                   seq_start: torch.Tensor, silu: bool = True) -> torch.Tensor:
    """y (T, C) in x's dtype (computed in fp32, or float64 for float64 inputs): x (T, C), weight (C, W), bias (C,)
    or None, seq_start (T,) the first token of each token's sequence."""
    tokens, _ = x.shape
    width = weight.shape[1]
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    rows = torch.arange(tokens, device=x.device)
    y = torch.zeros(x.shape, device=x.device, dtype=compute)
    for k in range(width):
        shift = width - 1 - k
        source = rows - shift
        valid = source >= seq_start.to(rows.dtype)  # also keeps source >= 0
        shifted = x[source.clamp(min=0)].to(compute) * valid[:, None]
        y += shifted * weight[:, k].to(compute)[None, :]
    if bias is not None:
        y += bias.to(compute)[None, :]
    return (F.silu(y) if silu else y).to(x.dtype)


@functools.cache
def _kernel():
    from pyserini_ssm.ops.conv_kernels import conv_kernel

    return conv_kernel


def packed_causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seq_start: torch.Tensor,
                         silu: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """y (T, C) contiguous, x's dtype: the Triton version of `packed_causal_conv1d_reference` (no autograd).

    x (T, C) with unit channel stride (a view of the in_proj output needs no copy), weight (C, W) with W <= 4 (the
    conv module's weight squeezed), bias (C,) or None, seq_start (T,) int32 or int64."""
    import triton

    tokens, channels = x.shape
    width = weight.shape[-1]
    if x.stride(1) != 1:
        raise ValueError("packed_causal_conv1d needs unit stride over channels")
    if weight.shape[0] != channels or not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"packed_causal_conv1d needs weight (C={channels}, W<={MAX_WIDTH}), got {tuple(weight.shape)}")
    if seq_start.shape[0] != tokens:
        raise ValueError(f"seq_start has {seq_start.shape[0]} tokens, x {tokens}")
    y = out if out is not None else torch.empty(tokens, channels, device=x.device, dtype=x.dtype)
    if tokens == 0:
        return y
    grid = (triton.cdiv(channels, BLOCK_CHANNELS), triton.cdiv(tokens, BLOCK_TOKENS))
    _kernel()[grid](
        x, weight, bias if bias is not None else weight, y, seq_start, tokens, channels,
        x.stride(0), y.stride(0), weight.stride(0), weight.stride(1),
        W=width, BT=BLOCK_TOKENS, BC=BLOCK_CHANNELS, HAS_BIAS=bias is not None, SILU=silu, num_warps=NUM_WARPS,
    )
    return y
