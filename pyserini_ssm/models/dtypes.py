"""Dtype names (bf16, fp16, fp32, fp8) -> torch dtypes, decided once for inference, loading and training.

`resolve_dtype(None or "auto", device)` is bf16 on a CUDA device that supports it and fp32 elsewhere (a pre-Ampere
GPU has no bf16 arithmetic: fp32 there, not a slow emulation); a name or a torch dtype is checked and kept.
`resolve_precision` adds "fp8": bf16 weights with FP8 Linear layers (`models.fp8`).
"""

from __future__ import annotations

import torch

from pyserini_ssm.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {value: key for key, value in DTYPES.items()}
AUTO = "auto"


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype for a name or a torch dtype; None stays None (the checkpoint's own dtypes)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (use bf16, fp16 or fp32)")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    """bf16, fp16 or fp32 (else torch's own name)."""
    return DTYPE_NAMES.get(dtype, str(dtype))


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a CUDA device with bf16 support, fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype to run in: `default_dtype(device)` for None or "auto", else the named (or given) one."""
    if dtype is None or dtype == AUTO:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise UserError(f"unsupported dtype {dtype} (use bf16, fp16 or fp32)")
        return dtype
    return torch_dtype(dtype)


def resolve_precision(dtype: str | torch.dtype | None, device: torch.device) -> tuple[torch.dtype, bool]:
    """(weights' dtype, FP8 Linear layers or not): `resolve_dtype`, plus "fp8" = bf16 weights with FP8 Linear
    layers (`models.fp8`), which needs a CUDA GPU of compute capability >= 8.9 (UserError elsewhere)."""
    from pyserini_ssm.models.fp8 import FP8, check_fp8_device

    if dtype == FP8:
        check_fp8_device(device)
        return torch.bfloat16, True
    if isinstance(dtype, str) and dtype != AUTO and dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r} (use bf16, fp16, fp32 or fp8)")
    return resolve_dtype(dtype, device), False

