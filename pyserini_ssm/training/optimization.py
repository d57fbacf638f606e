"""How an optimizer step updates the weights: AdamW (weight decay on matrices only, fused on CUDA), the linear
warm-up and decay of the learning rate, and the compute dtype (bf16/fp16 autocast over fp32 master weights).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable

from pyserini_ssm.errors import UserError

if TYPE_CHECKING:
    from pyserini_ssm.training.config import TrainConfig


def build_optimizer(scoring_model, config: TrainConfig):
    """AdamW; weight decay on matrices only (biases and norm weights are 1-d and are not decayed)."""
    import torch

    decay, no_decay = [], []
    for parameter in scoring_model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused_adamw_applies(
        decay + no_decay))


def fused_adamw_applies(parameters) -> bool:
    """Whether torch's fused AdamW (one kernel for every tensor) can update these: all CUDA floating point."""
    parameters = list(parameters)
    return bool(parameters) and all(p.is_cuda and p.is_floating_point() for p in parameters)


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """lr factor: 0 -> 1 linearly over `warmup_steps`, then 1 -> 0 linearly at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def autocast_for(device, dtype: str):
    import torch

    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if dtype == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def resolve_dtype(dtype: str, device) -> str:
    """The training's compute dtype name: `models.dtypes.resolve_dtype` (auto: bf16 on a CUDA GPU that supports it,
    else fp32), refusing fp16 off CUDA (its GradScaler needs CUDA)."""
    from pyserini_ssm.models import dtypes

    if dtype == "fp16" and device.type != "cuda":
        raise UserError("--dtype fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return dtypes.dtype_name(dtypes.resolve_dtype(dtype, device))
