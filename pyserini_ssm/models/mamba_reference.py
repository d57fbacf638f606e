"""A step-by-step pure-PyTorch reference of the Mamba-1 and Mamba-2 backbones (like mamba_ssm's *_ref functions), the
definition the kernels and transformers' torch code are tested against; it calls no kernel of either library.
"""

from __future__ import annotations

import torch
from torch import nn

from pyserini_ssm.models.mamba_config import family_of


def mamba_reference_forward(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    seq_idx: torch.Tensor | None = None,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Final-normed hidden states (B, L, D) computed token by token from the definitions, in `compute_dtype`.

    Works on anything with transformers' backbone layout (a `MambaModel`/`Mamba2Model`, a `MambaKernelBackbone`,
    or a `MambaBackbone`). With `seq_idx` (B, L), a position sees only earlier positions of the same id, both in the
    causal convolution and in the recurrence (the state restarts where the id changes) -- the semantics of
    mamba_ssm's `seq_idx`. Slow (a Python loop over L); for tests. It calls no kernel of transformers or mamba_ssm,
    which matters on machines where transformers routes its own "torch" Mamba through mamba_ssm.
    """
    from pyserini_ssm.models.mamba import MambaBackbone  # lazily: mamba imports this module

    if isinstance(backbone, MambaBackbone):
        backbone = backbone.model
    config = backbone.config
    family = family_of(config)
    eps = float(config.layer_norm_epsilon)
    with torch.no_grad():
        hidden = backbone.embeddings.weight[input_ids].to(compute_dtype)  # (B, L, D)
        for layer in backbone.layers:
            normed = _rms_norm(hidden, layer.norm.weight, eps)
            mixer_ref = _mamba1_mixer_reference if family == "mamba1" else _mamba2_mixer_reference
            hidden = hidden + mixer_ref(layer.mixer, normed, seq_idx, config)
        return _rms_norm(hidden, backbone.norm_f.weight, eps)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def _linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return torch.nn.functional.linear(x, layer.weight.to(x.dtype), bias)


def _same_sequence(seq_idx: torch.Tensor | None, shift: int, shape: tuple[int, int], device) -> torch.Tensor | None:
    """(B, L) bool: position t and t - shift belong to the same sequence (and t - shift >= 0)."""
    if seq_idx is None:
        return None
    same = torch.zeros(shape, dtype=torch.bool, device=device)
    same[:, shift:] = seq_idx[:, shift:] == seq_idx[:, : shape[1] - shift]
    return same


def _causal_conv_silu(x: torch.Tensor, conv: nn.Conv1d, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal convolution + SiLU on (B, L, C); taps never reach into another sequence."""
    batch, length, _ = x.shape
    width = conv.weight.shape[-1]
    weight = conv.weight.to(x.dtype)[:, 0, :]  # (C, W)
    out = torch.zeros_like(x) if conv.bias is None else conv.bias.to(x.dtype).expand_as(x).clone()
    for tap in range(width):
        shift = width - 1 - tap  # tap k of a padded Conv1d reads x[t - (W - 1 - k)]
        shifted = torch.nn.functional.pad(x, (0, 0, shift, 0))[:, :length]
        same = _same_sequence(seq_idx, shift, (batch, length), x.device)
        if same is not None and shift > 0:
            shifted = shifted * same[..., None]
        out = out + shifted * weight[:, tap]
    return torch.nn.functional.silu(out)


def _restart(seq_idx: torch.Tensor | None, t: int) -> torch.Tensor | None:
    if seq_idx is None or t == 0:
        return None
    return seq_idx[:, t] != seq_idx[:, t - 1]  # (B,)


def _mamba1_mixer_reference(mixer: nn.Module, u: torch.Tensor, seq_idx, config) -> torch.Tensor:
    d_inner, d_state = mixer.A_log.shape
    dt_rank = mixer.dt_proj.weight.shape[1]
    x, z = _linear(u, mixer.in_proj).split([d_inner, d_inner], dim=-1)  # (B, L, E) each
    x = _causal_conv_silu(x, mixer.conv1d, seq_idx)
    dt_low, b, c = _linear(x, mixer.x_proj).split([dt_rank, d_state, d_state], dim=-1)
    dt = torch.nn.functional.softplus(_linear(dt_low, mixer.dt_proj))  # (B, L, E)
    a = -torch.exp(mixer.A_log.to(u.dtype))  # (E, N)
    d = mixer.D.to(u.dtype)
    state = u.new_zeros(u.shape[0], d_inner, d_state)  # (B, E, N)
    outputs = []
    for t in range(u.shape[1]):
        restart = _restart(seq_idx, t)
        if restart is not None:
            state = state * (~restart).to(u.dtype)[:, None, None]
        state = torch.exp(dt[:, t, :, None] * a) * state + dt[:, t, :, None] * b[:, t, None, :] * x[:, t, :, None]
        outputs.append((state * c[:, t, None, :]).sum(-1) + d * x[:, t])  # (B, E)
    y = torch.stack(outputs, dim=1) * torch.nn.functional.silu(z)
    return _linear(y, mixer.out_proj)


def _mamba2_mixer_reference(mixer: nn.Module, u: torch.Tensor, seq_idx, config) -> torch.Tensor:
    heads, head_dim, groups, d_state = config.num_heads, config.head_dim, config.n_groups, config.state_size
    d_inner = heads * head_dim
    batch, length, _ = u.shape
    z, xbc, dt = _linear(u, mixer.in_proj).split([d_inner, d_inner + 2 * groups * d_state, heads], dim=-1)
    xbc = _causal_conv_silu(xbc, mixer.conv1d, seq_idx)
    x, b, c = xbc.split([d_inner, groups * d_state, groups * d_state], dim=-1)
    x = x.reshape(batch, length, heads, head_dim)
    # Head h reads group h // (heads / groups), as in mamba_ssm and transformers.
    b = b.reshape(batch, length, groups, d_state).repeat_interleave(heads // groups, dim=2)  # (B, L, H, N)
    c = c.reshape(batch, length, groups, d_state).repeat_interleave(heads // groups, dim=2)
    low, high = (float(v) for v in config.time_step_limit)
    dt = torch.nn.functional.softplus(dt + mixer.dt_bias.to(u.dtype)).clamp(min=low, max=high)  # (B, L, H)
    a = -torch.exp(mixer.A_log.to(u.dtype))  # (H,)
    d = mixer.D.to(u.dtype)
    state = u.new_zeros(batch, heads, head_dim, d_state)  # (B, H, P, N)
    outputs = []
    for t in range(length):
        restart = _restart(seq_idx, t)
        if restart is not None:
            state = state * (~restart).to(u.dtype)[:, None, None, None]
        decay = torch.exp(dt[:, t] * a)[:, :, None, None]
        state = decay * state + dt[:, t, :, None, None] * x[:, t, :, :, None] * b[:, t, :, None, :]
        outputs.append((state * c[:, t, :, None, :]).sum(-1) + d[:, None] * x[:, t])  # (B, H, P)
    y = torch.stack(outputs, dim=1).reshape(batch, length, d_inner)
    # Gated RMSNorm, norm_before_gate=False: normalise y * silu(z) within each of the n_groups groups.
    gated = (y * torch.nn.functional.silu(z)).reshape(batch, length, groups, d_inner // groups)
    eps = float(getattr(mixer.norm, "variance_epsilon", getattr(mixer.norm, "eps", config.layer_norm_epsilon)))
    gated = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + eps)
    y = gated.reshape(batch, length, d_inner) * mixer.norm.weight.to(u.dtype)
    return _linear(y, mixer.out_proj)
