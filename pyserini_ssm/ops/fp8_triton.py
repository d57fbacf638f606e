"""The Triton rowwise FP8 quantiser behind `ops.fp8.quantize_rowwise` on CUDA (imports triton: load it lazily).

One program per row: it reads the row's bf16 values once for the amax (kept in registers when the row fits one
block, K <= 8192) and writes the e4m3 codes and the row's fp32 scale, the same math as
`ops.fp8.quantize_rowwise_reference`: scale = max(amax, AMAX_FLOOR) / 448, q = clamp(x / scale, +-448) rounded to
nearest e4m3.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pyserini_ssm.ops.fp8 import AMAX_FLOOR, FP8_DTYPE, FP8_MAX

MAX_BLOCK = 8192  # widest row held in registers at once; longer rows loop twice over blocks of this size


@triton.jit
def _quantize_rowwise_kernel(x_ptr, q_ptr, scale_ptr, K, stride_x, stride_q, BLOCK: tl.constexpr,
                             ONE_BLOCK: tl.constexpr, FP8_LIMIT: tl.constexpr, FLOOR: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    q_row = q_ptr + row * stride_q
    columns = tl.arange(0, BLOCK)
    if ONE_BLOCK:
        mask = columns < K
        x = tl.load(x_row + columns, mask=mask, other=0.0).to(tl.float32)  # (BLOCK,)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), FLOOR) / FP8_LIMIT
        q = tl.minimum(tl.maximum(x / scale, -FP8_LIMIT), FP8_LIMIT)
        tl.store(q_row + columns, q.to(tl.float8e4nv), mask=mask)
    else:
        amax = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, K, BLOCK):
            offsets = start + columns
            x = tl.load(x_row + offsets, mask=offsets < K, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(x))
        scale = tl.maximum(tl.max(amax, axis=0), FLOOR) / FP8_LIMIT
        for start in range(0, K, BLOCK):
            offsets = start + columns
            mask = offsets < K
            x = tl.load(x_row + offsets, mask=mask, other=0.0).to(tl.float32)
            q = tl.minimum(tl.maximum(x / scale, -FP8_LIMIT), FP8_LIMIT)
            tl.store(q_row + offsets, q.to(tl.float8e4nv), mask=mask)
    tl.store(scale_ptr + row, scale)


def quantize_rowwise_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q (M, K) float8_e4m3fn, scale (M, 1) fp32) of a CUDA tensor x (M, K) with unit stride along K."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"quantize_rowwise_triton takes a (M, K) tensor with unit stride along K, got shape "
                         f"{tuple(x.shape)} strides {x.stride()}")
    rows, width = x.shape
    q = torch.empty(rows, width, dtype=FP8_DTYPE, device=x.device)  # (M, K)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)  # (M, 1)
    if rows == 0:
        return q, scale
    block = min(triton.next_power_of_2(width), MAX_BLOCK)
    warps = 4 if block <= 2048 else 8
    _quantize_rowwise_kernel[(rows,)](x, q, scale, width, x.stride(0), q.stride(0), BLOCK=block,
                                      ONE_BLOCK=width <= block, FP8_LIMIT=FP8_MAX, FLOOR=AMAX_FLOOR,
                                      num_warps=warps)
    return q, scale
