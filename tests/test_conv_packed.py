"""The packed causal conv1d + SiLU (ops.conv_packed): its reference against F.conv1d run on each sequence alone, and
the Triton kernel against the reference (on CPU through Triton's interpreter, in its own process: TRITON_INTERPRET
is read when the kernel is decorated; on a GPU against causal_conv1d with seq_idx)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pyserini_ssm.ops.conv_packed import packed_causal_conv1d_reference

TESTS = Path(__file__).resolve().parent


def random_row(lengths, channels=24, width=4, dtype=torch.float64, seed=0, device="cpu", strided=False):
    """x (T, C) (a strided view of a wider buffer when `strided`, as the mixer's split of in_proj gives it),
    weight (C, W), bias (C,), seq_start (T,) int32."""
    generator = torch.Generator().manual_seed(seed)
    tokens = int(sum(lengths))
    wide = torch.randn(tokens, channels + (16 if strided else 0), generator=generator, dtype=torch.float64)
    # strided: an offset and a row stride that are multiples of 8, as the in_proj split gives (causal_conv1d's
    # channel-last layout requires them)
    x = wide.to(device, dtype)[:, 8:8 + channels] if strided else wide.to(device, dtype)
    weight = (torch.randn(channels, width, generator=generator, dtype=torch.float64) * 0.5).to(device, dtype)
    bias = (torch.randn(channels, generator=generator, dtype=torch.float64) * 0.5).to(device, dtype)
    starts = torch.cumsum(torch.tensor([0] + list(lengths[:-1])), 0)
    seq_start = torch.repeat_interleave(starts, torch.tensor(lengths)).to(device, torch.int32)
    return x, weight, bias, seq_start


def per_sequence_conv(x, weight, bias, lengths):
    """F.conv1d (depthwise, left padding W-1) on each sequence alone, then SiLU: the definition."""
    outputs = []
    width = weight.shape[1]
    for piece in torch.split(x, list(lengths)):
        out = F.conv1d(piece.t()[None], weight[:, None, :], bias, padding=width - 1, groups=x.shape[1])
        outputs.append(F.silu(out[0, :, :piece.shape[0]].t()))
    return torch.cat(outputs)


@pytest.mark.parametrize("width", [4, 3, 1])
def test_reference_matches_conv1d_per_sequence(width):
    lengths = [1, 5, 2, 9, 3, 1]
    x, weight, bias, seq_start = random_row(lengths, width=width)
    expected = per_sequence_conv(x, weight, bias, lengths)
    got = packed_causal_conv1d_reference(x, weight, bias, seq_start)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_reference_restarts_at_each_sequence():
    """The first token of a sequence sees only itself: changing the previous sequence leaves it unchanged."""
    lengths = [4, 3]
    x, weight, bias, seq_start = random_row(lengths)
    other = x.clone()
    other[:4] += 10.0
    first = packed_causal_conv1d_reference(x, weight, bias, seq_start)
    second = packed_causal_conv1d_reference(other, weight, bias, seq_start)
    assert torch.equal(first[4:], second[4:])
    assert not torch.allclose(first[:4], second[:4])


def compare_kernel(lengths, channels, width, has_bias, strided, seed=0, device="cpu") -> dict:
    """Max |kernel - reference| and |kernel - per-sequence F.conv1d| (fp32 inputs)."""
    from pyserini_ssm.ops.conv_packed import packed_causal_conv1d

    x, weight, bias, seq_start = random_row(lengths, channels, width, torch.float32, seed, device, strided)
    bias = bias if has_bias else None
    y = packed_causal_conv1d(x, weight, bias, seq_start)
    reference = packed_causal_conv1d_reference(x.double(), weight.double(), None if bias is None else bias.double(),
                                               seq_start)
    conv = per_sequence_conv(x.double(), weight.double(), None if bias is None else bias.double(), lengths)
    return {"vs_reference": float((y.double() - reference).abs().max()),
            "vs_conv1d": float((y.double() - conv).abs().max()),
            "contiguous": bool(y.is_contiguous()), "dtype": str(y.dtype)}


def _interpreted(lengths, channels, width, has_bias, strided, block="16x16") -> dict:
    pytest.importorskip("triton")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import test_conv_packed as t; "
            f"print(json.dumps(t.compare_kernel({list(lengths)}, {channels}, {width}, {has_bias}, {strided})))")
    env = dict(os.environ, TRITON_INTERPRET="1", PYSERINI_SSM_CONV_BLOCK=block)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code, str(TESTS)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_interpreted_kernel_matches_reference_and_conv1d():
    """Length-1 sequences, sequences across token blocks (16), channels not a multiple of the block, a strided view
    of a wider buffer (as the mixer's split of in_proj), bias."""
    errors = _interpreted([1, 20, 3, 1, 17, 2], channels=40, width=4, has_bias=True, strided=True)
    assert errors["contiguous"] and errors["dtype"] == "torch.float32"
    assert errors["vs_reference"] < 1e-5, errors
    assert errors["vs_conv1d"] < 1e-5, errors


def test_interpreted_kernel_narrower_width_without_bias():
    errors = _interpreted([5, 1, 12], channels=16, width=2, has_bias=False, strided=False, block="8x16")
    assert errors["vs_reference"] < 1e-5, errors
    assert errors["vs_conv1d"] < 1e-5, errors


def test_bad_width_is_refused():
    pytest.importorskip("triton")
    from pyserini_ssm.ops.conv_packed import packed_causal_conv1d

    x, weight, bias, seq_start = random_row([3], width=4, dtype=torch.float32)
    with pytest.raises(ValueError, match="W<=4"):
        packed_causal_conv1d(x, torch.zeros(x.shape[1], 5), bias, seq_start)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_kernel_matches_causal_conv1d(dtype):
    """Against causal_conv1d_fn with seq_idx (what the mixer runs by default) at mamba2-780m's channel count."""
    from causal_conv1d import causal_conv1d_fn

    from pyserini_ssm.ops.conv_packed import packed_causal_conv1d

    lengths = [1, 256, 5, 101, 99, 1, 300, 64, 3]
    x, weight, bias, seq_start = random_row(lengths, 3328, 4, dtype, device="cuda", strided=True)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths)).cuda()
    stock = causal_conv1d_fn(x.t()[None], weight, bias, seq_idx=seq_idx[None], activation="silu")[0].t()
    ours = packed_causal_conv1d(x, weight, bias, seq_start)
    error = float((ours.float() - stock.float()).abs().max() / stock.float().abs().max())
    assert error < (1e-5 if dtype == torch.float32 else 1e-2), error


@pytest.mark.gpu
def test_gpu_model_scores_with_the_triton_conv(monkeypatch):
    """A tiny Mamba-2 scorer (fp32) through the short SSD: the mixer's Triton conv (PYSERINI_SSM_CONV=triton, set
    here as the module attribute) gives the scores of causal_conv1d, in inference; with grad it keeps causal_conv1d."""
    import numpy as np

    import pyserini_ssm.models.mamba2_mixer as mixer_module
    from pyserini_ssm.models.mamba import build_mamba_backbone, tiny_hf_config

    config = tiny_hf_config("mamba2", head_dim=16, num_heads=8, n_groups=1, state_size=16, chunk_size=256)
    torch.manual_seed(0)
    backbone = build_mamba_backbone(config, backend="cuda", device="cuda")
    backbone.model.ssd_backend = "short"
    lengths = [1, 256, 257, 30, 80, 3, 120]
    input_ids = torch.randint(1, config.vocab_size, (1, sum(lengths)), device="cuda")
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                      torch.tensor(lengths)).cuda()[None]
    last = torch.tensor(np.cumsum(lengths) - 1, device="cuda")
    outputs, kernels = {}, {}
    for name, fold in (("causal_conv1d", False), ("triton", False), ("triton folded", True)):
        monkeypatch.setattr(mixer_module, "CONV_BACKEND", name.split()[0])
        monkeypatch.setattr(mixer_module, "CONV_FOLD", fold)
        with torch.no_grad():
            outputs[name] = backbone(input_ids, seq_idx=seq_idx)[0, last]
        kernels[name] = backbone.model.last_ssd_kernels
    for name in ("triton", "triton folded"):
        error = float((outputs[name] - outputs["causal_conv1d"]).abs().max() / outputs["causal_conv1d"].abs().max())
        assert error <= 1e-5, (name, error)
    assert "folded" in kernels["triton folded"] and "folded" not in kernels["triton"], kernels
    monkeypatch.setattr(mixer_module, "CONV_BACKEND", "triton")
    with_grad = backbone(input_ids, seq_idx=seq_idx)[0, last]  # training path: causal_conv1d, differentiable
    with_grad.sum().backward()
    assert backbone.model.layers[0].mixer.conv1d.weight.grad is not None
