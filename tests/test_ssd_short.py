"""The short-sequence SSD (ops.ssd_short) against its float64 reference (ops.ssd_reference) and mamba_ssm.

Without a GPU the Triton kernels run through Triton's interpreter (TRITON_INTERPRET=1, read when the kernels are
decorated: each interpreted case runs in its own Python process) on small shapes. On a GPU (`-m gpu`): fp32 and bf16
against the reference and against mamba_ssm's `mamba_chunk_scan_combined` with seq_idx, outputs and every gradient,
and whole-model scores against the stock mamba_ssm path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import interpreted
from pyserini_ssm.ops.ssd_short import tile_sequences

GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "dt_bias")


def test_tiles_are_greedy_whole_sequences_in_row_order():
    first, end, is_long = tile_sequences(np.array([1, 5, 3, 8, 9, 2, 7]), block_t=8)
    # [1, 5] | [3] (6 + 3 > 8) | [8] | 9 is long and ends the tile | [2] | [7] (2 + 7 > 8)
    assert first.tolist() == [0, 2, 3, 5, 6]
    assert end.tolist() == [2, 3, 4, 6, 7]
    assert is_long.tolist() == [False, False, False, False, True, False, False]


def test_tiles_fill_to_exactly_the_block():
    first, end, is_long = tile_sequences(np.array([4, 4, 8, 1, 8]), block_t=8)
    assert list(zip(first.tolist(), end.tolist())) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert not is_long.any()


def test_output_positions_give_the_pooled_rows_of_the_full_output():
    """`output_positions` (what ScoringModel.encode asks for on a packed row) returns exactly those rows."""
    from pyserini_ssm.models.mamba import build_mamba_backbone, tiny_hf_config

    torch.manual_seed(0)
    backbone = build_mamba_backbone(tiny_hf_config("mamba2", num_hidden_layers=1), backend="torch", device="cpu")
    lengths = [3, 1, 5]
    input_ids = torch.randint(1, 100, (1, sum(lengths)))
    seq_idx = torch.repeat_interleave(torch.arange(3, dtype=torch.int32), torch.tensor(lengths))[None]
    last = torch.tensor(np.cumsum(lengths) - 1)
    with torch.no_grad():
        full = backbone(input_ids, seq_idx=seq_idx)
        pooled = backbone(input_ids, seq_idx=seq_idx, output_positions=last)
    assert pooled.shape == (1, 3, full.shape[-1])
    assert torch.equal(pooled[0], full[0, last])


def test_plan_from_host_lengths_is_the_plan_from_seq_idx():
    """`lengths` (what pack_batch hands down) give the same tiling as reading seq_idx back; wrong ones are refused."""
    from pyserini_ssm.ops.ssd_short import plan_short_ssd

    lengths = [1, 32, 5, 33, 20, 12, 2, 1]
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths))[None]
    tokens = sum(lengths)
    from_ids = plan_short_ssd(seq_idx, tokens, torch.device("cpu"), block_t=32)
    from_lengths = plan_short_ssd(seq_idx, tokens, torch.device("cpu"), block_t=32, lengths=tuple(lengths))
    for field in ("tile_start", "tile_end", "seq_start", "seq_end", "long_index", "long_seq_idx"):
        assert torch.equal(getattr(from_ids, field), getattr(from_lengths, field)), field
    assert (from_lengths.tiles, from_lengths.long_sequences) == (from_ids.tiles, from_ids.long_sequences) == (5, 1)
    for bad in ([1, 32, 5], [0, *lengths], [[tokens]]):
        with pytest.raises(ValueError, match="do not split a row"):
            plan_short_ssd(seq_idx, tokens, torch.device("cpu"), block_t=32, lengths=bad)


def test_plan_grows_the_tile_to_the_longest_sequence_up_to_the_cap():
    """A row with one 33-token sequence runs in 64-token tiles (no chunked scan); past the cap it stays long."""
    from pyserini_ssm.ops.ssd_short import grown_block_t, plan_short_ssd

    assert [grown_block_t(n, 32, 128) for n in (1, 32, 33, 64, 65, 128, 129, 1000)] == [32, 32, 64, 64, 128, 128,
                                                                                     128, 128]
    assert grown_block_t(300, 512, 256) == 512  # a cap below the base leaves the base
    lengths = (1, 32, 5, 33, 20, 12, 2, 1)
    grown = plan_short_ssd(None, sum(lengths), torch.device("cpu"), block_t=32, lengths=lengths, max_block_t=64)
    assert (grown.block_t, grown.long_sequences, grown.long_index) == (64, 0, None)
    assert grown.tile_start.tolist() == [0, 38, 91] and grown.tile_end.tolist() == [38, 91, 106]
    capped = plan_short_ssd(None, 140, torch.device("cpu"), block_t=32, lengths=(40, 100), max_block_t=64)
    assert (capped.block_t, capped.long_sequences, capped.long_tokens) == (64, 1, 100)


def test_fused_adamw_only_for_cuda_floating_parameters():
    from pyserini_ssm.training.loop import fused_adamw_applies

    assert not fused_adamw_applies([torch.nn.Parameter(torch.zeros(2))])  # CPU: torch's fused AdamW is CUDA-only
    assert not fused_adamw_applies([])


def random_case(lengths, heads=4, head_dim=16, groups=2, state=16, dtype=torch.float64, device="cpu", seed=0):
    """Inputs of one packed row as the mixer gives them (x, dt_raw, A, B, C, D, dt_bias) and its seq_idx."""
    generator = torch.Generator().manual_seed(seed)
    tokens = int(sum(lengths))

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale + shift).to(device, dtype)

    inputs = [
        rand(tokens, heads, head_dim),
        rand(tokens, heads, shift=-1.0),
        (-torch.rand(heads, generator=generator, dtype=torch.float64) * 4 - 0.5).to(device, torch.float32),
        rand(tokens, groups, state, scale=0.5),
        rand(tokens, groups, state, scale=0.5),
        rand(heads).float(),
        rand(heads, scale=0.5).float(),
    ]
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths)).to(device)
    return inputs, seq_idx


def compare_with_reference(lengths, block_t, dt_limit=(0.0, float("inf")), device="cpu", dtype=torch.float32,
                           seed=0) -> dict:
    """Max errors (relative to the reference's largest magnitude) of the output and of each gradient, on the tokens
    of sequences of at most `block_t` (the others are mamba_ssm's)."""
    from pyserini_ssm.ops.ssd_reference import ssd_reference
    from pyserini_ssm.ops.ssd_short import plan_short_ssd, ssd_short

    inputs, seq_idx = random_case(lengths, dtype=dtype, device=device, seed=seed)
    inputs = [value.detach().requires_grad_() for value in inputs]
    plan = plan_short_ssd(seq_idx[None], seq_idx.shape[0], torch.device(device), block_t=block_t)
    short = torch.ones(seq_idx.shape[0], dtype=torch.bool, device=device)
    if plan.long_index is not None:
        short[plan.long_index] = False
    y = ssd_short(*inputs, plan, dt_limit)
    reference_inputs = [value.detach().double().requires_grad_() for value in inputs]
    y_ref = ssd_reference(*reference_inputs, seq_idx, dt_limit) * short[:, None, None]
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(device)
    dy = dy * short[:, None, None]
    grads = torch.autograd.grad(y, inputs, dy.to(y.dtype))
    grads_ref = torch.autograd.grad(y_ref, reference_inputs, dy)

    def error(value, reference):
        return float((value.double() - reference).abs().max() / reference.abs().max().clamp(min=1e-12))

    errors = {"y": error(y, y_ref), "y_long_zero": bool((y[~short] == 0).all())}
    for name, grad, grad_ref in zip(GRAD_NAMES, grads, grads_ref):
        errors[name] = error(grad, grad_ref)
    return errors


def _interpreted(lengths, block_t, dt_limit=(0.0, float("inf")), seed=0, env_switches=None) -> dict:
    call = f"t.compare_with_reference({list(lengths)}, {block_t}, {tuple(dt_limit)!r}, seed={seed})"
    return interpreted("test_ssd_short", call.replace("(0.0, inf)", "(0.0, float('inf'))"),
                       env={"PYSERINI_SSM_SSD_BLOCK_M": "16", **(env_switches or {})})


# Relative to the largest reference magnitude. dA sums da * dt over every token, and da (a reverse cumulative sum of
# row sums minus column sums) nearly cancels within each sequence: fp32 rounding shows more there.
FP32_TOLERANCE = 2e-5
FP32_TOLERANCE_DA = 1e-4


def fp32_tolerance(name: str) -> float:
    return FP32_TOLERANCE_DA if name == "A" else FP32_TOLERANCE


def test_interpreted_kernel_matches_float64_reference():
    """A single token, exactly the tile (32), tile + 1 (mamba_ssm's on a GPU: zero here), and tiles filled to the
    brim, mixed in one row; 4 heads in 2 groups (the dB/dC kernel loops over a group's heads)."""
    errors = _interpreted([1, 32, 5, 33, 20, 12, 2, 1], 32)
    assert errors["y_long_zero"]
    for name in ("y",) + GRAD_NAMES:
        assert errors[name] < fp32_tolerance(name), (name, errors)


@pytest.mark.slow
@pytest.mark.parametrize("lengths, dt_limit, seed", [
    ([9, 20, 3, 40, 1], (0.05, 0.4), 3),  # dt_limit clamps: no gradient through clamped steps
    ([31, 1, 32, 16, 16, 17], (0.0, float("inf")), 5),
])
def test_interpreted_kernel_more_rows(lengths, dt_limit, seed):
    errors = _interpreted(lengths, 32, dt_limit=dt_limit, seed=seed)
    for name in ("y",) + GRAD_NAMES:
        assert errors[name] < fp32_tolerance(name), (name, errors)


# The forward variants and the (H, T) layout of dt/cs (ops.ssd_short's env switches), on the row of the default's
# test: one token, exactly the tile, tile + 1, full tiles; gradients too (the backward reads dt/cs in their layout).
@pytest.mark.parametrize("switches", [
    {"PYSERINI_SSM_SSD_FWD": "default", "PYSERINI_SSM_SSD_DT_LAYOUT": "th"},  # the kernels before the defaults moved
    {"PYSERINI_SSM_SSD_FWD": "factored", "PYSERINI_SSM_SSD_DT_LAYOUT": "th"},
    {"PYSERINI_SSM_SSD_FWD": "factored", "PYSERINI_SSM_SSD_DT_LAYOUT": "ht", "PYSERINI_SSM_SSD_FWD_HEADS": "2"},
    # dt and its cumulative sum in blocks of 2 heads: two programs a tile
    {"PYSERINI_SSM_SSD_FWD": "factored", "PYSERINI_SSM_SSD_DT_LAYOUT": "ht", "PYSERINI_SSM_SSD_DT_HEADS": "2"},
    {"PYSERINI_SSM_SSD_FWD": "wide", "PYSERINI_SSM_SSD_FWD_HEADS": "2"},  # both heads of a group in one program
])
def test_interpreted_forward_variants_match_float64_reference(switches):
    errors = _interpreted([1, 32, 5, 33, 20, 12, 2, 1], 32, env_switches=switches)
    assert errors["y_long_zero"]
    for name in ("y",) + GRAD_NAMES:
        assert errors[name] < fp32_tolerance(name), (name, switches, errors)


@pytest.mark.parametrize("switches", [
    {"PYSERINI_SSM_SSD_FWD": "factored", "PYSERINI_SSM_SSD_DT_LAYOUT": "ht"},
    {"PYSERINI_SSM_SSD_FWD": "wide", "PYSERINI_SSM_SSD_FWD_HEADS": "2", "PYSERINI_SSM_SSD_DT_LAYOUT": "ht"},
])
def test_interpreted_factored_forward_with_sequences_across_blocks(switches):
    """Sequences that start inside a row block and reach back over several column blocks (where u and v are
    taken across sequence boundaries), steep decay (dt_limit up to 3: cs falls fast), length-1 sequences."""
    errors = _interpreted([3, 45, 1, 14, 64, 1, 60, 2], 64, dt_limit=(0.0, 3.0), seed=7, env_switches=switches)
    for name in ("y",) + GRAD_NAMES:
        assert errors[name] < fp32_tolerance(name), (name, switches, errors)


def compare_conv_folded(lengths, block_t, device="cpu", dtype=torch.float32, seed=0, with_bias=True) -> dict:
    """The depthwise conv + SiLU folded into the forward's x loads (`ssd_short_inference` with `conv`) against the
    conv stored first (`ops.conv_packed`) and the SSD on its output: their max abs difference (0: the same tile
    function and the same rounding) and the output's largest magnitude."""
    from pyserini_ssm.ops.conv_packed import packed_causal_conv1d
    from pyserini_ssm.ops.ssd_short import plan_short_ssd, ssd_short, ssd_short_inference

    (_, dt_raw, A, B, C, D, dt_bias), seq_idx = random_case(lengths, dtype=dtype, device=device, seed=seed)
    tokens, heads, head_dim = seq_idx.shape[0], 4, 16
    channels = heads * head_dim
    generator = torch.Generator().manual_seed(seed + 2)
    # the conv's input as the mixer has it: a view of a wider in_proj output (row stride > H P), heads contiguous
    wide = torch.randn(tokens, channels + 24, generator=generator, dtype=torch.float64).to(device, dtype)
    x_in = wide[:, 8:8 + channels]
    weight = (torch.randn(channels, 4, generator=generator, dtype=torch.float64) * 0.5).to(device, dtype)
    bias = (torch.randn(channels, generator=generator, dtype=torch.float64) * 0.5).to(device, dtype)
    bias = bias if with_bias else None
    plan = plan_short_ssd(seq_idx[None], tokens, torch.device(device), block_t=block_t)
    with torch.no_grad():
        x = packed_causal_conv1d(x_in, weight, bias, plan.seq_start).view(tokens, heads, head_dim)
        stored = ssd_short(x, dt_raw, A, B, C, D, dt_bias, plan)
        folded = ssd_short_inference(x_in.view(tokens, heads, head_dim), dt_raw, A, B, C, D, dt_bias, plan,
                                     conv=(weight, bias))
    return {"max_abs": float((folded.double() - stored.double()).abs().max()), "scale": float(stored.abs().max())}


def compare_gate_folded(lengths, block_t, device="cpu", dtype=torch.float32, seed=0, with_conv=False) -> dict:
    """The gated RMSNorm folded into the forward (`ssd_short_inference` with `gate`, optionally with the conv
    folded too): the rows its ScaledRows stand for against `gated_rmsnorm_reference` on the SSD's output (relative
    error), and the same rows scaled inside `add_rmsnorm` against the reference add + norm of those rows."""
    from pyserini_ssm.ops.conv_packed import packed_causal_conv1d
    from pyserini_ssm.ops.rmsnorm import (ScaledRows, add_rmsnorm, add_rmsnorm_reference, gated_rmsnorm_reference,
                                          scaled_rows_reference)
    from pyserini_ssm.ops.ssd_short import plan_short_ssd, ssd_short, ssd_short_inference

    (x, dt_raw, A, B, C, D, dt_bias), seq_idx = random_case(lengths, dtype=dtype, device=device, seed=seed)
    tokens, heads, head_dim = x.shape
    width = heads * head_dim
    generator = torch.Generator().manual_seed(seed + 3)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(device, dtype)

    # z and the conv's input as the mixer has them: views of one wider in_proj output (row stride > H P)
    projected = rand(tokens, 2 * width + 16)
    z, x_in = projected[:, 8:8 + width], projected[:, 8 + width:8 + 2 * width]
    norm_weight = (1 + 0.2 * torch.randn(width, generator=generator, dtype=torch.float64)).to(device, dtype)
    conv_weight, conv_bias = rand(width, 4, scale=0.5), rand(width, scale=0.5)
    plan = plan_short_ssd(seq_idx[None], tokens, torch.device(device), block_t=block_t)
    with torch.no_grad():
        if with_conv:
            x = packed_causal_conv1d(x_in, conv_weight, conv_bias, plan.seq_start).view(tokens, heads, head_dim)
        y = ssd_short(x, dt_raw, A, B, C, D, dt_bias, plan)
        normed_ref = gated_rmsnorm_reference(y.double().reshape(tokens, width), z.double(), norm_weight.double(),
                                             1e-5)
        g, sumsq = ssd_short_inference(x_in.view(tokens, heads, head_dim) if with_conv else x, dt_raw, A, B, C, D,
                                       dt_bias, plan, conv=(conv_weight, conv_bias) if with_conv else None,
                                       gate=(z, norm_weight))
        rows = ScaledRows(g.view(1, tokens, width), sumsq, width, 1e-5)
        residual = rand(1, tokens, width).float()
        add_weight = (1 + 0.1 * torch.randn(width, generator=generator, dtype=torch.float64)).to(device, dtype)
        out, summed = add_rmsnorm(rows, residual, add_weight, 1e-6)
        out_ref, summed_ref = add_rmsnorm_reference(normed_ref[None], residual.double(), add_weight.double(), 1e-6)
    return {
        "normed": _relative(scaled_rows_reference(rows)[0], normed_ref),
        "sumsq_shape": list(sumsq.shape) == [tokens, heads] and sumsq.dtype == torch.float32,
        "add_out": _relative(out, out_ref), "add_residual": _relative(summed, summed_ref),
        "scale": float(normed_ref.abs().max()),
    }


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.double() - reference.double()).abs().max() / reference.double().abs().max())


@pytest.mark.parametrize("with_conv", [False, True])
def test_interpreted_gate_folded_into_the_forward_is_the_gated_norm(with_conv):
    """Sequences of 1 token, crossing row blocks, exactly the tile: the norm's output that the folded gate's
    ScaledRows stand for, and the residual add + norm that applies their row scale, against float64 references."""
    call = f"t.compare_gate_folded([1, 32, 5, 3, 20, 12, 2, 1, 31], 32, with_conv={with_conv})"
    errors = interpreted("test_ssd_short", call, env={"PYSERINI_SSM_SSD_BLOCK_M": "16"})
    assert errors["scale"] > 0.1 and errors["sumsq_shape"], errors
    for name in ("normed", "add_out", "add_residual"):
        assert errors[name] < FP32_TOLERANCE, (name, errors)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_gate_folded_into_the_forward_is_the_gated_norm(dtype):
    errors = compare_gate_folded([1, 256, 5, 101, 99, 1, 200, 64, 65, 31, 3], 256, device="cuda", dtype=dtype,
                                 with_conv=True)
    print("gate folded", dtype, errors)
    # bf16: the reference norms the SSD output rounded to bf16, the fold the fp32 accumulator
    tolerance = FP32_TOLERANCE if dtype == torch.float32 else 2e-2
    for name in ("normed", "add_out", "add_residual"):
        assert errors[name] < tolerance, (name, errors)


@pytest.mark.parametrize("with_bias", [True, False])
def test_interpreted_conv_folded_into_the_forward_is_the_stored_conv(with_bias):
    """Sequences of 1 token, crossing row blocks (16 rows under the interpreter), exactly the tile: the folded conv
    restarts at each sequence start and before the row, as the stored conv does."""
    call = f"t.compare_conv_folded([1, 32, 5, 3, 20, 12, 2, 1, 31], 32, with_bias={with_bias})"
    errors = interpreted("test_ssd_short", call, env={"PYSERINI_SSM_SSD_BLOCK_M": "16"})
    assert errors["scale"] > 0.1 and errors["max_abs"] == 0.0, errors


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_conv_folded_into_the_forward_is_the_stored_conv(dtype):
    errors = compare_conv_folded([1, 256, 5, 101, 99, 1, 200, 64, 65, 31, 3], 256, device="cuda", dtype=dtype)
    assert errors["scale"] > 0.1 and errors["max_abs"] == 0.0, errors


def compare_dt_chain(lengths, block_t, dt_limit, device="cpu", seed=0) -> dict:
    """Max relative errors of `dt_chain` (bwd_dt_kernel) against `dt_chain_reference` on random backward buffers."""
    from pyserini_ssm.ops.ssd_short import dt_chain, dt_chain_reference, plan_short_ssd

    generator = torch.Generator().manual_seed(seed)
    tokens, heads = sum(lengths), 20  # 20 heads: two head blocks of 16, the second partly masked
    rowsum, colsum, ddt_x, ddd = (torch.randn(tokens, heads, generator=generator).to(device) for _ in range(4))
    dt = torch.rand(heads, tokens, generator=generator).to(device).t()  # the "ht" layout: a transposed view
    dt_raw = torch.randn(tokens, heads + 3, generator=generator).to(device)[:, :heads]  # a strided view, as in_proj's
    A = -torch.rand(heads, generator=generator).to(device) - 0.5
    dt_bias = torch.randn(heads, generator=generator).to(device) * 0.5
    plan = plan_short_ssd(None, tokens, torch.device(device), block_t=block_t, lengths=lengths)
    got = dt_chain(rowsum, colsum, ddt_x, ddd, dt, dt_raw, A, dt_bias, plan, dt_limit)
    # the reference on the tile tokens only, as the kernel (the long-sequence tokens' buffers are not ours)
    short = torch.ones(tokens, dtype=torch.bool, device=device)
    if plan.long_index is not None:
        short[plan.long_index] = False
    masked = [value * short[:, None] for value in (rowsum, colsum, ddt_x, ddd)]
    want = dt_chain_reference(*masked, dt, dt_raw, A, dt_bias, plan.seq_end, dt_limit, plan.long_index)
    return {name: float((g.double() - w.double()).abs().max() / w.double().abs().max())
            for name, g, w in zip(("ddt_raw", "dA", "ddt_bias", "dD"), got, want)}


def test_interpreted_dt_chain_kernel_matches_its_torch_reference():
    """The backward's cumulative-sum chain kernel: sequences of 1 token, exactly the tile, long ones (no gradient
    there), clamped steps (dt_limit), heads in two blocks."""
    errors = interpreted("test_ssd_short", "t.compare_dt_chain([1, 32, 5, 33, 20, 12, 2, 1, 40, 7], 32, (0.2, 1.5))")
    for name, error in errors.items():
        assert error < 1e-6, (name, errors)


@pytest.mark.gpu
@pytest.mark.parametrize("block_t", [256, 512])
def test_gpu_dt_chain_kernel_matches_its_torch_reference(block_t):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    errors = compare_dt_chain([1, 256, 5, 257, 20, 101, 2, 1, 400, 7, 99, 512, 513], block_t, (0.2, 1.5),
                              device="cuda")
    for name, error in errors.items():
        assert error < 1e-6, (name, errors)


# --------------------------------------------------------------------------------------------------------------------
# GPU

# Relative to the largest magnitude, as mamba_ssm's own tests (bf16: products rounded to bf16 before each tl.dot).
GPU_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
GPU_LENGTHS = [1, 256, 257, 5, 101, 99, 120, 1, 600, 64, 65, 200, 31]
# mamba_ssm's kernels multiply fp32 inputs in TF32 (tl.dot's default), ours in IEEE fp32: against mamba_ssm the
# fp32 bound is TF32's (about 1e-3), against the float64 reference ours is 1e-4.
VS_MAMBA_TOLERANCE = {torch.float32: 5e-3, torch.bfloat16: 3e-2}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_t", [256, 512])  # 512: the tile a row with a 257..512-token pair grows to
def test_gpu_kernel_matches_reference(dtype, block_t):
    errors = compare_with_reference(GPU_LENGTHS + [512, 513, 300], block_t, device="cuda", dtype=dtype)
    print("short SSD vs float64", dtype, block_t, errors)
    assert errors["y_long_zero"]
    for name in ("y",) + GRAD_NAMES:
        assert errors[name] < GPU_TOLERANCE[dtype], (name, errors)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant, heads_per_program, layout, loaded", [
    ("factored", 1, "th", True), ("factored", 4, "ht", True), ("wide", 2, "ht", True), ("wide", 4, "ht", False),
])
def test_gpu_forward_variants_match_reference(monkeypatch, dtype, variant, heads_per_program, layout, loaded):
    """The env-switched forward variants (set here as the module attributes the switches set), compiled."""
    import pyserini_ssm.ops.ssd_short as ssd

    for name, value in (("FWD_VARIANT", variant), ("FWD_HEADS_PER_PROGRAM", heads_per_program),
                        ("DT_LAYOUT", layout), ("LOADED_BOUNDS", loaded)):
        monkeypatch.setattr(ssd, name, value)
    errors = compare_with_reference(GPU_LENGTHS, 256, device="cuda", dtype=dtype)
    print("short SSD", variant, heads_per_program, layout, "vs float64", dtype, errors)
    for name in ("y",) + GRAD_NAMES:
        assert errors[name] < GPU_TOLERANCE[dtype], (name, errors)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_short_and_long_match_mamba_chunk_scan(dtype):
    """Our SSD (short tiles + mamba_ssm for the long sequences, as the mixer runs it) vs mamba_chunk_scan_combined
    on the whole row, heads 48, headdim 64, d_state 128, one group (mamba2-780m's shape)."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    from pyserini_ssm.ops.ssd_short import plan_short_ssd, ssd_short

    lengths = GPU_LENGTHS * 3
    inputs, seq_idx = random_case(lengths, heads=48, head_dim=64, groups=1, state=128, dtype=dtype, device="cuda")
    x, dt_raw, A, B, C, D, dt_bias = [value.requires_grad_() for value in inputs]
    plan = plan_short_ssd(seq_idx[None], seq_idx.shape[0], torch.device("cuda"), block_t=256)

    def ours():
        y = ssd_short(x, dt_raw, A, B, C, D, dt_bias, plan)
        long = mamba_chunk_scan_combined(
            x[plan.long_index][None], dt_raw[plan.long_index][None], A, B[plan.long_index][None],
            C[plan.long_index][None], 256, D=D, dt_bias=dt_bias, dt_softplus=True, seq_idx=plan.long_seq_idx)
        return y.index_copy(0, plan.long_index, long[0])

    def stock():
        return mamba_chunk_scan_combined(x[None], dt_raw[None], A, B[None], C[None], 256, D=D, dt_bias=dt_bias,
                                         dt_softplus=True, seq_idx=seq_idx[None])[0]

    dy = torch.randn(x.shape, device="cuda", dtype=dtype)
    results = []
    for function in (ours, stock):
        y = function()
        results.append((y.detach(), torch.autograd.grad(y, [x, dt_raw, A, B, C, D, dt_bias], dy)))
    (y, grads), (y_stock, grads_stock) = results
    errors = {"y": float((y.float() - y_stock.float()).abs().max() / y_stock.float().abs().max())}
    for name, grad, grad_stock in zip(GRAD_NAMES, grads, grads_stock):
        errors[name] = float((grad.float() - grad_stock.float()).abs().max() / grad_stock.float().abs().max())
    print("short SSD vs mamba_chunk_scan_combined", dtype, errors)
    for name, value in errors.items():
        assert value < VS_MAMBA_TOLERANCE[dtype], (name, errors)


@pytest.mark.gpu
def test_gpu_model_scores_match_the_stock_path():
    """A tiny Mamba-2 scorer (fp32): packed scores through the short SSD vs mamba_ssm's stock path, and the
    pooled-only last layer vs the full one."""
    from pyserini_ssm.models.mamba import build_mamba_backbone, tiny_hf_config

    config = tiny_hf_config("mamba2", head_dim=16, num_heads=8, n_groups=1, state_size=16, chunk_size=256)
    torch.manual_seed(0)
    backbone = build_mamba_backbone(config, backend="cuda", device="cuda")
    kernel = backbone.model
    lengths = [1, 256, 257, 30, 80, 3, 300, 120, 600]  # 512-token tiles; the 600-token pair: the chunked scan
    input_ids = torch.randint(1, config.vocab_size, (1, sum(lengths)), device="cuda")
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                      torch.tensor(lengths)).cuda()[None]
    last = torch.tensor(np.cumsum(lengths) - 1, device="cuda")
    outputs = {}
    with torch.no_grad():
        for name in ("mamba_ssm", "short"):
            kernel.ssd_backend = name
            outputs[name] = backbone(input_ids, seq_idx=seq_idx)[0, last]
            outputs[name + "-pooled"] = backbone(input_ids, seq_idx=seq_idx, output_positions=last)[0]
            outputs[name + "-kernels"] = kernel.last_ssd_kernels
    stock, ours = outputs["mamba_ssm"], outputs["short"]
    error = float((ours - stock).abs().max() / stock.abs().max())
    print("tiny model fp32, short vs stock:", error, outputs["short-kernels"])
    assert outputs["short-kernels"].startswith("short-ssd") and "<= 512 tokens" in outputs["short-kernels"]
    assert "mamba_chunk_scan_combined (1 sequences" in outputs["short-kernels"]
    assert outputs["mamba_ssm-kernels"].startswith("mamba_ssm")
    assert error <= 1e-4
    assert torch.allclose(outputs["short-pooled"], ours, rtol=1e-5, atol=1e-5)
    assert torch.allclose(outputs["mamba_ssm-pooled"], stock)


@pytest.mark.gpu
def test_gpu_model_scores_with_the_gate_folded(monkeypatch):
    """A tiny Mamba-2 scorer (fp32) through the short SSD: the gated norm folded into the SSD forward
    (PYSERINI_SSM_GATE_FOLD, set here as the module attribute) gives the scores of the stored norm, pooled or not,
    with the conv folded too or not; with grad the fold is off and the model trains."""
    import pyserini_ssm.models.mamba2_mixer as mixer_module
    from pyserini_ssm.models.mamba import build_mamba_backbone, tiny_hf_config

    config = tiny_hf_config("mamba2", head_dim=16, num_heads=8, n_groups=1, state_size=16, chunk_size=256)
    torch.manual_seed(0)
    backbone = build_mamba_backbone(config, backend="cuda", device="cuda")
    backbone.model.ssd_backend = "short"
    lengths = [1, 256, 257, 30, 80, 3, 120]  # 512-token tiles, no sequence for the chunked scan
    input_ids = torch.randint(1, config.vocab_size, (1, sum(lengths)), device="cuda")
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), dtype=torch.int32),
                                      torch.tensor(lengths)).cuda()[None]
    last = torch.tensor(np.cumsum(lengths) - 1, device="cuda")
    outputs, kernels = {}, {}
    for gate, conv in ((False, False), (True, False), (True, True)):
        monkeypatch.setattr(mixer_module, "GATE_FOLD", gate)
        monkeypatch.setattr(mixer_module, "CONV_FOLD", conv)
        with torch.no_grad():
            outputs[gate, conv] = backbone(input_ids, seq_idx=seq_idx)[0, last]
            outputs[gate, conv, "pooled"] = backbone(input_ids, seq_idx=seq_idx, output_positions=last)[0]
        kernels[gate, conv] = backbone.model.last_ssd_kernels
    stored = outputs[False, False]
    for key, value in outputs.items():
        error = float((value - stored).abs().max() / stored.abs().max())
        assert error <= 1e-5, (key, error)
    assert "gated norm folded" in kernels[True, False] and "gated norm folded" not in kernels[False, False], kernels
    assert "conv + SiLU of x folded" in kernels[True, True], kernels
    monkeypatch.setattr(mixer_module, "GATE_FOLD", True)
    backbone(input_ids, seq_idx=seq_idx)[0, last].sum().backward()  # training: the stored norm, differentiable
    assert "gated norm folded" not in backbone.model.last_ssd_kernels
    assert backbone.model.layers[0].mixer.norm.weight.grad is not None
