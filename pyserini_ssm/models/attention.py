"""Packed (variable-length) attention for transformers backbones: several sequences in one row, no padding.

A packed row (`ops.batching.pack_batch`) holds N sequences back to back: `input_ids` (1, T), `position_ids` (1, T)
restarting at 0 per sequence, `cu_seqlens` (N + 1,) int32. Attention must stay inside each sequence, which a
variable-length kernel does from `cu_seqlens` alone, without a (T, T) mask.

`install_varlen_attention(backbone)` points a transformers backbone at `VARLEN_ATTENTION`, an attention function
registered with transformers' `AttentionInterface` that dispatches on its inputs:
- packed (the layer got `cu_seq_lens_q`): the varlen kernel `select_varlen_kernel` picks —
  flash-attn-4 (`flash_attn.cute`), flash-attn 2.x (`flash_attn_varlen_func`), else PyTorch's
  `torch.nn.attention.varlen.varlen_attn`, on CUDA in bf16/fp16; SDPA per sequence on CPU (the exact reference the
  tests compare with). A CUDA tensor that no fast kernel can take raises: there is no silent slow path on a GPU.
- padded: transformers' own SDPA function, unchanged.
Dispatching on the layer's inputs (not on a mode switched around the forward) keeps gradient checkpointing right:
the recomputation in backward sees the same `cu_seq_lens_q` as the forward did.

Under autocast, q/k/v reach the kernel in the autocast dtype: transformers' rotary embedding multiplies bf16 q/k by
fp32 cos/sin and hands over fp32 q/k, which would otherwise miss the bf16/fp16 kernels.

Every call is recorded (`kernel_record`): the bench writes which kernel ran into each measurement.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import warnings
from collections import Counter
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from pyserini_ssm.models.families import ROBERTA_MODEL_TYPES, position_offset

logger = logging.getLogger(__name__)

VARLEN_ATTENTION = "pyserini_ssm_varlen"
FLASH_ATTN_4 = "flash-attn-4"
FLASH_ATTN_2 = "flash-attn-2"
TORCH_VARLEN = "torch-varlen"
SDPA_LOOP = "sdpa-per-sequence"  # the CPU reference
SDPA = "sdpa"  # padded batches: transformers' SDPA attention
FAST_DTYPES = (torch.bfloat16, torch.float16)
# The implementations whose padded path our dispatcher reproduces exactly (by calling transformers' own function).
DISPATCHABLE = ("sdpa",)
# RoBERTa-style position ids start after the pad id: `families.position_offset` (one rule for every caller).
ROBERTA_POSITIONS = ROBERTA_MODEL_TYPES

_calls: Counter = Counter()
_last: dict[str, Any] = {}
_packing = threading.local()
_warned: set[str] = set()


# ---------------------------------------------------------------------------------------------------------------
# Which kernel ran


def record_kernel(name: str, dtype: torch.dtype | None = None, given: tuple | None = None) -> None:
    """Count one attention call of kernel `name` that ran in `dtype` (`given`: the q/k/v dtypes it was handed)."""
    _calls[name] += 1
    _last.update(kernel=name, dtype=dtype, given=given)


def kernel_record() -> dict[str, int]:
    """Attention calls per kernel since the last `reset_kernel_record()` (one call per layer per forward)."""
    return dict(_calls)


def last_kernel_call() -> dict[str, Any]:
    """The most recent attention call through `VARLEN_ATTENTION`: {"kernel", "dtype" (what the kernel got),
    "given" (the q/k/v dtypes the layer handed over, before the autocast cast)}."""
    return dict(_last)


def reset_kernel_record() -> None:
    _calls.clear()
    _last.clear()


def kernels_used() -> str:
    """The kernels recorded since the last reset, e.g. "torch-varlen" or "sdpa+torch-varlen" (empty: none)."""
    return "+".join(sorted(_calls))


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        logger.warning(message)


# ---------------------------------------------------------------------------------------------------------------
# Kernels


@functools.cache
def available_varlen_kernels() -> dict[str, Callable]:
    """The fast varlen kernels importable here, best first: flash-attn-4, flash-attn 2.x, PyTorch's varlen_attn."""
    kernels: dict[str, Callable] = {}
    try:
        from flash_attn.cute import flash_attn_varlen_func as flash4  # flash-attn-4 (CuTe DSL)

        kernels[FLASH_ATTN_4] = flash4
    except Exception:  # absent, or present without its CUDA runtime: not usable
        pass
    try:
        import flash_attn

        if str(getattr(flash_attn, "__version__", "")).startswith("2."):
            kernels[FLASH_ATTN_2] = flash_attn.flash_attn_varlen_func
    except Exception:
        pass
    try:
        from torch.nn.attention.varlen import varlen_attn

        kernels[TORCH_VARLEN] = varlen_attn
    except ImportError:  # PyTorch < 2.9
        pass
    return kernels


def fast_varlen_kernel() -> str | None:
    """The name of the varlen kernel CUDA tensors get, or None when this install has none."""
    return next(iter(available_varlen_kernels()), None)


def kernel_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.dtype:
    """The dtype q/k/v must share at the kernel: the autocast dtype of their device when autocast is on, else the
    value's dtype (it comes straight from a linear layer: the model's compute dtype)."""
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return value.dtype


def select_varlen_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                         ) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kernel name, q, k, v cast to `kernel_dtype`) for one packed attention call.

    CPU: `SDPA_LOOP`, the per-sequence reference. CUDA: the best fast kernel; a RuntimeError when there is none or
    the dtype is not bf16/fp16 (never a silent fall back to the reference loop)."""
    dtype = kernel_dtype(query, key, value)
    query, key, value = (tensor if tensor.dtype == dtype else tensor.to(dtype) for tensor in (query, key, value))
    if not query.is_cuda:
        return SDPA_LOOP, query, key, value
    name = fast_varlen_kernel()
    if name is None:
        raise RuntimeError("packed attention on CUDA needs a varlen kernel: PyTorch >= 2.9 "
                           "(torch.nn.attention.varlen) or flash-attn; pad the batch instead of packing")
    if dtype not in FAST_DTYPES:
        raise RuntimeError(f"packed attention on CUDA runs in bf16 or fp16, not {dtype}: use a bf16/fp16 model or "
                           f"autocast, or pad the batch instead of packing")
    return name, query, key, value


def _run_kernel(name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_length: int, *, causal: bool, scale: float | None, dropout: float) -> torch.Tensor:
    """q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D) with the named fast kernel."""
    import inspect

    kernel = available_varlen_kernels()[name]
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    if dropout > 0 and name != FLASH_ATTN_2:
        _warn_once(f"dropout-{name}", f"{name} has no attention dropout: packed attention runs without the "
                                      f"model's attention-probability dropout p={dropout:g} (padded batches apply it)")
    if name == FLASH_ATTN_2:
        return kernel(q, k, v, cu, cu, max_length, max_length, dropout_p=dropout, softmax_scale=scale, causal=causal)
    if name == FLASH_ATTN_4:
        output = kernel(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_length, max_seqlen_k=max_length,
                        softmax_scale=scale, causal=causal)
        return output[0] if isinstance(output, tuple) else output
    parameters = inspect.signature(kernel).parameters
    options: dict[str, Any] = {"scale": scale}
    if "window_size" in parameters:
        options["window_size"] = (-1, 0) if causal else (-1, -1)
    else:
        options["is_causal"] = causal
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    return kernel(q, k, v, cu, cu, max_length, max_length, **options)


def _sdpa_per_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, *,
                       causal: bool, scale: float | None, dropout: float) -> torch.Tensor:
    """The reference: SDPA on each sequence of the row alone. q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D)."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    bounds = cu_seqlens.tolist()
    outputs = [F.scaled_dot_product_attention(q[start:end].transpose(0, 1), k[start:end].transpose(0, 1),
                                              v[start:end].transpose(0, 1), is_causal=causal, scale=scale,
                                              dropout_p=dropout).transpose(0, 1)  # (L, Hq, D)
               for start, end in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outputs)


def varlen_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, *,
                     causal: bool, scale: float | None = None, dropout: float = 0.0,
                     max_length: int | None = None) -> torch.Tensor:
    """Attention within each sequence of one packed row: query (T, Hq, D), key/value (T, Hkv, D) -> (T, Hq, D)."""
    name, q, k, v = select_varlen_kernel(query, key, value)
    record_kernel(name, q.dtype, (query.dtype, key.dtype, value.dtype))
    if name == SDPA_LOOP:
        return _sdpa_per_sequence(q, k, v, cu_seqlens, causal=causal, scale=scale, dropout=dropout)
    if max_length is None:
        max_length = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return _run_kernel(name, q, k, v, cu_seqlens, max_length, causal=causal, scale=scale, dropout=dropout)


# ---------------------------------------------------------------------------------------------------------------
# transformers integration


def varlen_attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function. Packed (kwargs hold `cu_seq_lens_q`): query (1, Hq, T, D), key/value
    (1, Hkv, T, D) of ONE row -> (1, T, Hq, D) through `varlen_attention`. Padded: transformers' SDPA function."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None:
        from transformers import AttentionInterface

        record_kernel(SDPA, query.dtype)
        return AttentionInterface._global_mapping["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                                          scaling=scaling, is_causal=is_causal, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"{VARLEN_ATTENTION} attention takes one packed row, got a batch of {query.shape[0]}")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    output = varlen_attention(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1),
                              cu_seqlens, causal=causal, scale=scaling, dropout=dropout,
                              max_length=kwargs.get("max_length_q"))  # (T, Hq, D)
    return output.unsqueeze(0), None


def _varlen_mask(*args: Any, **kwargs: Any) -> Any:
    """The mask function of `VARLEN_ATTENTION`: none for a packed row (the kernel reads cu_seqlens), SDPA's else."""
    if getattr(_packing, "active", False):
        return None
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["sdpa"](*args, **kwargs)


@functools.cache
def register_varlen_attention() -> str:
    """Register `VARLEN_ATTENTION` (attention and mask functions) with transformers, once; returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN_ATTENTION, _varlen_mask)
    return VARLEN_ATTENTION


def supports_varlen(backbone: Any) -> tuple[bool, str]:
    """Whether this transformers backbone can run packed rows through `VARLEN_ATTENTION`, and why not."""
    if not getattr(backbone, "_supports_attention_backend", False):
        return False, (f"{type(backbone).__name__} does not route attention through transformers' "
                       f"AttentionInterface (e.g. DeBERTa's relative attention)")
    implementation = getattr(backbone.config, "_attn_implementation", None)
    if implementation not in DISPATCHABLE + (VARLEN_ATTENTION,):
        return False, f"{type(backbone).__name__} runs {implementation!r} attention, not SDPA"
    return True, ""


def install_varlen_attention(backbone: Any) -> bool:
    """Point a supporting backbone at `VARLEN_ATTENTION` for good (padded batches still run SDPA); False when it
    cannot take packed rows (`supports_varlen`)."""
    ok, _ = supports_varlen(backbone)
    if not ok:
        return False
    name = register_varlen_attention()
    if backbone.config._attn_implementation != name:
        backbone.config._attn_implementation = name  # every layer reads the shared config at each call
    return True


@contextlib.contextmanager
def packed_masks() -> Iterator[None]:
    """Inside: the backbone builds no attention mask (one packed row). Only the forward builds masks, so the
    gradient-checkpointing recomputation needs no such switch."""
    previous = getattr(_packing, "active", False)
    _packing.active = True
    try:
        yield
    finally:
        _packing.active = previous


def packed_hidden_states(backbone: Any, batch: dict[str, torch.Tensor], *, decoder: bool) -> torch.Tensor:
    """Last hidden states (1, T, D) of one packed row through an installed backbone: positions restart per
    sequence, attention stays within each sequence."""
    cu_seqlens = batch["cu_seqlens"]  # (N + 1,) int32
    if backbone.config._attn_implementation != VARLEN_ATTENTION:
        raise RuntimeError("packed rows need install_varlen_attention(backbone) first")
    max_length = batch.get("max_length")
    if max_length is None:
        max_length = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    position_ids = batch["position_ids"]  # (1, T)
    config = backbone.config
    offset = position_offset(config)
    if offset:
        position_ids = position_ids + offset
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "position_ids": position_ids,
                              "cu_seq_lens_q": cu_seqlens, "cu_seq_lens_k": cu_seqlens,
                              "max_length_q": int(max_length), "max_length_k": int(max_length)}
    if "token_type_ids" in batch:
        kwargs["token_type_ids"] = batch["token_type_ids"]
    if decoder:
        kwargs["use_cache"] = False
    with packed_masks():
        return backbone(**kwargs).last_hidden_state  # (1, T, D)


__all__ = ["VARLEN_ATTENTION", "FLASH_ATTN_4", "FLASH_ATTN_2", "TORCH_VARLEN", "SDPA_LOOP", "SDPA",
           "available_varlen_kernels", "fast_varlen_kernel", "kernel_dtype", "select_varlen_kernel",
           "varlen_attention", "varlen_attention_forward", "register_varlen_attention", "supports_varlen",
           "install_varlen_attention", "packed_masks", "packed_hidden_states", "kernel_record", "kernels_used",
           "last_kernel_call", "reset_kernel_record", "record_kernel"]
