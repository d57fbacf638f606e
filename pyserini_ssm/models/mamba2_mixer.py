"""The Mamba-2 mixer of a packed row through this project's short-sequence SSD (`ops.ssd_short`), on mamba_ssm's
`Mamba2` module's own parameters (same weights, same state dict keys).

    in_proj (module) -> depthwise causal conv + SiLU (restarted per sequence; `ops.conv_packed` in inference unless
    PYSERINI_SSM_CONV=causal_conv1d, x's channels folded into the SSD's loads with PYSERINI_SSM_CONV_FOLD=1;
    causal_conv1d with seq_idx in training) -> SSD: ours for sequences of at most `plan.block_t` tokens,
    mamba_ssm's `mamba_chunk_scan_combined` (seq_idx) for the longer ones -> gated RMSNorm, norm(y * silu(z)) per
    group (`ops.rmsnorm.gated_rmsnorm` with one group and `lean_norm`, else the module: mamba_ssm's
    `RMSNormGated`; with PYSERINI_SSM_GATE_FOLD=1 in inference, its row-local part in the SSD's epilogue and its
    row scale after out_proj) -> out_proj (module)

The projections are called as modules so that a replacement Linear (FP8) applies. `output_positions` computes the
gated norm and out_proj only at those tokens (the last layer of a scorer that pools the last token of each pair).
mamba_ssm's memory-efficient path (`mamba_split_conv1d_scan_combined`) is the stock alternative; the backbone
chooses (`MambaKernelBackbone.ssd_backend`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from pyserini_ssm.ops.ssd_short import ShortSSDPlan, ssd_short

# The depthwise conv + SiLU of inference: ops.conv_packed's Triton kernel (default: coalesced over channels, forward
# only; 0.177 ms against causal_conv1d's 0.225 at 32k tokens on the H200, bin/profile-short-ssd, 2026-12-02) or
# causal_conv1d's CUDA kernel. Training (any input or weight needing a gradient) always runs causal_conv1d, which has
# the backward.
CONV_BACKEND = os.environ.get("PYSERINI_SSM_CONV", "triton")
if CONV_BACKEND not in ("causal_conv1d", "triton"):
    raise ValueError(f"PYSERINI_SSM_CONV must be causal_conv1d or triton, got {CONV_BACKEND!r}")
# PYSERINI_SSM_CONV_FOLD=1 (inference, Triton conv): the conv + SiLU of x's channels (3,072 of mamba2-780m's 3,328)
# runs inside the SSD's forward as it loads x (`ssd_short_conv_folded`), so those channels are never written out and
# read back. Off by default: it was slower (H200, 2026-12-02: a 32k-token row 133 ms on the GPU against 111-114
# without it; the forward recomputes the four taps of every x tile it reads, up to four times a tile, in a
# latency-bound loop). Off, the conv is stored first (ops.conv_packed), as training always does.
CONV_FOLD = os.environ.get("PYSERINI_SSM_CONV_FOLD", "0") == "1"
# PYSERINI_SSM_GATE_FOLD=1 (inference, lean norms): the gated RMSNorm's row-local work, y silu(z) times the norm's
# weight and the per-head sums of squares, runs in the SSD forward's epilogue, and the row's rstd is applied after
# out_proj, in the next residual add (ops.rmsnorm.ScaledRows): y is never written out and read back, and the norm
# kernel does not run. Off by default: it did not pay (H200, 2026-12-02, one process, a 32k-token row on the GPU:
# bf16 111.5 ms against 112.9 without it, and 112.4 against 112.3 with z loaded late; FP8 84.1 against 81.5, where
# out_proj's input then goes through the separate rowwise quantiser instead of the norm's fused one). The forward
# kernel with the gate's load is slower by about what the norm kernel cost.
GATE_FOLD = os.environ.get("PYSERINI_SSM_GATE_FOLD", "0") == "1"


def short_ssd_unsupported(mixer: nn.Module) -> str | None:
    """Why this mamba_ssm `Mamba2` mixer cannot run through the short SSD (None when it can)."""
    d_in_proj = mixer.in_proj.out_features
    expected = 2 * mixer.d_ssm + 2 * mixer.ngroups * mixer.d_state + mixer.nheads
    if d_in_proj != expected or mixer.d_ssm != mixer.d_inner:
        return "the mixer has gated-MLP channels (d_ssm < d_inner)"
    if mixer.D_has_hdim:
        return "D has a head dimension"
    if not mixer.rmsnorm or mixer.norm_before_gate:
        return "the mixer has no gated RMSNorm after the gate"
    for name, value in (("headdim", mixer.headdim), ("d_state", mixer.d_state)):
        if value < 16 or value & (value - 1):
            return f"{name}={value} is not a power of two >= 16"
    if mixer.activation not in ("silu", "swish"):
        return f"activation {mixer.activation!r}"
    return None


def mamba2_mixer_forward(
    mixer: nn.Module,
    hidden: torch.Tensor,
    plan: ShortSSDPlan,
    seq_idx: torch.Tensor | None,
    output_positions: torch.Tensor | None = None,
    lean_norm: bool = False,
    fold_conv: bool = False,
    fold_gate: bool = False,
) -> Any:
    """Mixer output (1, T, D) of a packed row `hidden` (1, T, D), or (1, K, D) at `output_positions` (K,).
    `lean_norm`: the gated norm through `ops.rmsnorm` (one group) instead of the mixer's mamba_ssm module.
    `fold_conv`: the conv of x's channels inside the SSD's loads (`conv_folds` says when the backbone may).
    `fold_gate`: the gated norm inside the SSD's forward, its row scale left to the next residual add: the output
    is then an `ops.rmsnorm.ScaledRows` (`gate_folds` says when the backbone may)."""
    heads, head_dim, groups, state = mixer.nheads, mixer.headdim, mixer.ngroups, mixer.d_state
    d_ssm = mixer.d_ssm
    tokens = hidden.shape[1]  # hidden: a tensor, or ops.fp8.QuantizedRows under FP8 (in_proj takes either)
    zxbcdt = mixer.in_proj(hidden)  # (1, T, 2 d_ssm + 2 G N + H)
    z, xbc, dt_raw = torch.split(zxbcdt, [d_ssm, d_ssm + 2 * groups * state, heads], dim=-1)
    # squeeze(0), never [0]: the backward of a select writes its gradient into a zeroed copy of the whole input (a
    # fill and a strided copy of the (T, C) channels, about 0.3 ms each a layer at 13k tokens on an H200), where
    # squeeze's backward is a view
    dt_raw = dt_raw.squeeze(0)  # (T, H)
    A = -torch.exp(mixer.A_log.float())  # (H,)
    dt_limit = tuple(float(v) for v in mixer.dt_limit)
    if fold_conv:
        xbc = xbc.squeeze(0)  # (T, C) the conv's input
        weight, bias = mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias  # (C, W), (C,)
        from pyserini_ssm.ops.conv_packed import packed_causal_conv1d

        bc = packed_causal_conv1d(xbc[:, d_ssm:], weight[d_ssm:], bias[d_ssm:] if bias is not None else None,
                                  plan.seq_start)  # (T, 2 G N): only B and C are stored
        B, C = (part.view(tokens, groups, state) for part in torch.split(bc, [groups * state] * 2, dim=-1))
        x = xbc[:, :d_ssm].view(tokens, heads, head_dim)  # the conv's input: the SSD convolves it as it loads it
        conv = (weight[:d_ssm], bias[:d_ssm] if bias is not None else None)
    else:
        x, B, C = _split_xbc(mixer, _conv_silu(mixer, xbc.squeeze(0), plan, seq_idx), tokens)
        conv = None
    if fold_conv or fold_gate:
        from pyserini_ssm.ops.ssd_short import ssd_short_inference

        gate = (z.squeeze(0), mixer.norm.weight) if fold_gate else None
        y = ssd_short_inference(x, dt_raw, A, B, C, mixer.D, mixer.dt_bias, plan, dt_limit, conv=conv, gate=gate)
        if fold_gate:  # y: g = SSD silu(z) weight; the norm's rstd comes from the per-head sums of squares
            y, sumsq = y
            from pyserini_ssm.ops.rmsnorm import ScaledRows

            y = y.view(1, tokens, d_ssm)
            if output_positions is not None:
                y, sumsq = y[:, output_positions], sumsq[output_positions]
            return ScaledRows(mixer.out_proj(y), sumsq, d_ssm, float(mixer.norm.eps))
    else:
        y = ssd_short(x, dt_raw, A, B, C, mixer.D, mixer.dt_bias, plan, dt_limit, fill_long=False)  # (T, H, P)
        if plan.long_index is not None:  # in place: no copy of the whole row (y is not saved by ShortSSDFn)
            y.index_copy_(0, plan.long_index, _long_ssd(mixer, x, dt_raw, A, B, C, plan, dt_limit))
    y = y.view(1, tokens, d_ssm)
    if output_positions is not None:
        y, z = y[:, output_positions], z[:, output_positions]  # (1, K, d_ssm)
    if lean_norm and mixer.norm.group_size in (None, d_ssm):
        from pyserini_ssm.ops.fp8 import Fp8Linear
        from pyserini_ssm.ops.rmsnorm import gated_rmsnorm

        # under FP8 the norm writes out_proj's e4m3 input itself (inference only)
        quantize = not torch.is_grad_enabled() and isinstance(mixer.out_proj, Fp8Linear)
        return mixer.out_proj(gated_rmsnorm(y, z, mixer.norm.weight, mixer.norm.eps,
                                            quantize=quantize))  # (1, T or K, D)
    return mixer.out_proj(mixer.norm(y, z))  # (1, T or K, D)


def _split_xbc(mixer: nn.Module, xbc: torch.Tensor, tokens: int):
    """x (T, H, P), B and C (T, G, N): views of the conv's output (T, C)."""
    groups, state = mixer.ngroups, mixer.d_state
    x, B, C = torch.split(xbc, [mixer.d_ssm, groups * state, groups * state], dim=-1)
    return x.view(tokens, mixer.nheads, mixer.headdim), B.view(tokens, groups, state), C.view(tokens, groups, state)


def _inference_only(model: nn.Module, plan: ShortSSDPlan) -> bool:
    """Whether no gradient can flow through a forward of `model` (grad mode off, or no parameter requires one, so no
    layer's input does either) and every sequence of the row is in a tile (the chunked scan of a longer one reads
    stored x and y): what the folds of the SSD's forward need."""
    from pyserini_ssm.ops import ssd_short

    if ssd_short.FWD_VARIANT != "factored" or plan.long_index is not None:
        return False
    return not (torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters()))


def conv_folds(model: nn.Module, mixer: nn.Module, plan: ShortSSDPlan) -> bool:
    """Whether a forward of `model` (the backbone holding the mixers, all of `mixer`'s shape) folds the conv of
    x's channels into the SSD (`CONV_FOLD`), decided once for every layer: `_inference_only` and the Triton conv."""
    from pyserini_ssm.ops import conv_packed

    if not CONV_FOLD or CONV_BACKEND != "triton" or mixer.conv1d.weight.shape[-1] > conv_packed.MAX_WIDTH:
        return False
    return _inference_only(model, plan)


def gate_folds(model: nn.Module, mixer: nn.Module, plan: ShortSSDPlan, lean_norms: bool) -> bool:
    """Whether a forward of `model` folds each mixer's gated RMSNorm into its SSD forward (`GATE_FOLD`), decided
    once for every layer: `_inference_only`, the lean norms (the next residual add applies the row scale), one norm
    group over all of the SSD's channels, and a bias-free out_proj (the row scale commutes with it)."""
    if not GATE_FOLD or not lean_norms or mixer.norm.group_size not in (None, mixer.d_ssm):
        return False
    if getattr(mixer.out_proj, "bias", None) is not None:
        return False
    return _inference_only(model, plan)


def _conv_silu(mixer: nn.Module, xbc: torch.Tensor, plan: ShortSSDPlan, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """silu(depthwise causal conv1d) (T, C) of the row's x/B/C channels `xbc` (T, C), restarted at each sequence."""
    weight, bias = mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias  # (C, W), (C,)
    needs_grad = torch.is_grad_enabled() and (xbc.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if CONV_BACKEND == "triton" and not needs_grad:
        from pyserini_ssm.ops import conv_packed

        if weight.shape[-1] <= conv_packed.MAX_WIDTH:
            return conv_packed.packed_causal_conv1d(xbc, weight, bias, plan.seq_start)
    from causal_conv1d import causal_conv1d_fn

    return causal_conv1d_fn(
        xbc.t()[None],  # (1, C, T) channel-last, as causal_conv1d needs with seq_idx
        weight,
        bias=bias,
        seq_idx=seq_idx,
        activation="silu",
    ).squeeze(0).t()  # (T, C)


def _long_ssd(mixer: nn.Module, x, dt_raw, A, B, C, plan: ShortSSDPlan, dt_limit) -> torch.Tensor:
    """mamba_ssm's chunked SSD (T_long, H, P) on the tokens of the sequences longer than the tile."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    index = plan.long_index
    extra: dict[str, Any] = {} if dt_limit == (0.0, float("inf")) else {"dt_limit": dt_limit}
    y = mamba_chunk_scan_combined(
        x.index_select(0, index)[None], dt_raw.index_select(0, index)[None], A,
        B.index_select(0, index)[None], C.index_select(0, index)[None], mixer.chunk_size,
        D=mixer.D, dt_bias=mixer.dt_bias, dt_softplus=True, seq_idx=plan.long_seq_idx, **extra,
    )  # (1, T_long, H, P)
    return y.squeeze(0)
