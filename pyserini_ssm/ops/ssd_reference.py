"""The Mamba-2 SSD of a packed row from its definition, in plain PyTorch (any dtype, float64 for tests).

What `ops.ssd_short` computes, written as the quadratic (attention-like) form of the SSD, as mamba_ssm keeps
`ssd_minimal` beside its Triton kernels. Per sequence (zero initial state):

    dt_t = clamp(softplus(dt_raw_t + dt_bias), dt_limit)          # (T, H)
    cs_t = sum_{r <= t, same sequence} dt_r * A                   # (T, H)
    L[t, s] = exp(cs_t - cs_s) if s <= t in the same sequence else 0
    Y_h = (L_h o C_g B_g^T) (dt_h * X_h) + D_h X_h                # head h reads group g = h // (H / G)

O(T^2) memory: for rows of a few hundred tokens (tests), not for production.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssd_reference(
    x: torch.Tensor,
    dt_raw: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    seq_idx: torch.Tensor,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> torch.Tensor:
    """Y (T, H, P) of one packed row: x (T, H, P), dt_raw (T, H), A (H,) (negative), B and C (T, G, N), D (H,),
    dt_bias (H,), seq_idx (T,) (equal ids in runs = one sequence). Differentiable in every float input."""
    length, heads, _ = x.shape
    groups = B.shape[1]
    dtype = x.dtype
    dt = dt_raw + dt_bias if dt_bias is not None else dt_raw
    dt = F.softplus(dt).clamp(min=dt_limit[0], max=dt_limit[1])  # (T, H)
    a = dt * A  # (T, H)
    cs = torch.cumsum(a, dim=0)  # (T, H); differences within a sequence are what count
    same = seq_idx[:, None] == seq_idx[None, :]  # (T, T)
    causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
    mask = same & causal
    diff = cs[:, None, :] - cs[None, :, :]  # (T, T, H): cs_t - cs_s
    decay = torch.where(mask[..., None], torch.exp(diff.masked_fill(~mask[..., None], 0.0)), diff.new_zeros(()))
    head_group = torch.arange(heads, device=x.device) // (heads // groups)  # (H,)
    cb = torch.einsum("tgn,sgn->gts", C, B)[head_group]  # (H, T, T)
    m = cb * decay.permute(2, 0, 1)  # (H, T, T)
    y = torch.einsum("hts,shp->thp", m, x * dt[..., None])  # (T, H, P)
    if D is not None:
        y = y + D[None, :, None] * x
    return y.to(dtype)
