"""Dtype resolution (`models.dtypes`): one rule for inference, loading and training."""

from __future__ import annotations

import pytest
import torch

from pyserini_ssm.errors import UserError
from pyserini_ssm.models.dtypes import (
    DTYPE_NAMES, DTYPES, default_dtype, dtype_name, resolve_dtype, resolve_precision, torch_dtype,
)

CPU = torch.device("cpu")


def test_names_and_torch_dtypes_round_trip():
    assert DTYPES == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    for name, dtype in DTYPES.items():
        assert torch_dtype(name) is dtype and torch_dtype(dtype) is dtype and dtype_name(dtype) == name
        assert DTYPE_NAMES[dtype] == name
    assert torch_dtype(None) is None  # the checkpoint's own dtypes
    with pytest.raises(UserError, match="unknown dtype 'fp64'"):
        torch_dtype("fp64")


def test_the_default_is_fp32_off_cuda_and_bf16_only_where_the_gpu_has_it():
    assert resolve_dtype(None, CPU) is torch.float32
    assert resolve_dtype("auto", CPU) is torch.float32
    assert default_dtype("cpu") is torch.float32
    if torch.cuda.is_available():
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        assert default_dtype(torch.device("cuda")) is expected


def test_explicit_dtypes_are_kept_and_bad_ones_refused():
    assert resolve_dtype("fp16", CPU) is torch.float16
    assert resolve_dtype(torch.bfloat16, CPU) is torch.bfloat16
    with pytest.raises(UserError, match="unsupported dtype torch.float64"):
        resolve_dtype(torch.float64, CPU)
    with pytest.raises(UserError, match="unknown dtype 'half'"):
        resolve_dtype("half", CPU)
    assert resolve_precision("fp32", CPU) == (torch.float32, False)
    with pytest.raises(UserError, match="bf16, fp16, fp32 or fp8"):
        resolve_precision("int8", CPU)


def test_the_reranker_module_resolves_with_the_same_functions():
    from pyserini_ssm.models import reranker

    assert reranker.resolve_dtype is resolve_dtype and reranker.resolve_precision is resolve_precision
    assert reranker.DTYPE_NAMES is DTYPE_NAMES
