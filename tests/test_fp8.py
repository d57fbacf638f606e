"""FP8 Linear layers (`ops.fp8`, `models.fp8`, `--dtype fp8`): the quantiser's error bounds, `Fp8Linear` against its
pure-PyTorch reference (torch 2.13 runs `torch._scaled_mm` on CPU too), conversion counts and skips on tiny BERT,
Llama and Mamba-2 models with scores close to bf16, and the one-line error for fp8 where there is no FP8 GPU. The
Triton quantiser and the mamba-ssm kernel path are `gpu` tests."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError
from pyserini_ssm.models.fp8 import Fp8Conversion, convert_to_fp8
from pyserini_ssm.ops.fp8 import (
    FP8_DTYPE, FP8_MAX, Fp8Linear, Fp8WeightError, convert_linears_to_fp8, dequantize_rowwise, fp8_linear_reference,
    fp8_linears, quantize_rowwise, quantize_rowwise_reference,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*no trained score head:UserWarning")

E4M3_HALF_ULP = 2.0**-4  # 3 mantissa bits: rounding to nearest moves a normal value by at most 1/16 of it
E4M3_HALF_SUBNORMAL = 2.0**-10  # subnormals are multiples of 2^-9


def sample_rows() -> torch.Tensor:
    """(6, 96) fp32 rows: normal, wide dynamic range, one outlier, tiny, all zeros, negative."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 96, generator=generator)
    rows[1] *= torch.logspace(-4, 3, 96)
    rows[2, 17] = 1e4
    rows[3] *= 1e-8
    rows[4] = 0.0
    rows[5] = -rows[5].abs() * 7
    return rows


def test_quantise_round_trip_stays_within_half_an_e4m3_step():
    rows = sample_rows()
    q, scale = quantize_rowwise_reference(rows)
    assert q.dtype == FP8_DTYPE and q.shape == rows.shape and scale.shape == (6, 1) and scale.dtype == torch.float32
    assert torch.isfinite(scale).all() and (scale > 0).all()
    back = dequantize_rowwise(q, scale)
    bound = rows.abs() * E4M3_HALF_ULP + scale * E4M3_HALF_SUBNORMAL
    assert ((back - rows).abs() <= bound * (1 + 1e-6)).all()
    # Each row's largest magnitude maps to +-448 and comes back as itself.
    amax_index = rows.abs().argmax(dim=1)
    codes = q.float().gather(1, amax_index[:, None]).squeeze(1)
    assert torch.equal(codes[[0, 1, 2, 3, 5]].abs(), torch.full((5,), FP8_MAX))
    assert torch.allclose(back.abs().amax(dim=1)[[0, 1, 2, 3, 5]], rows.abs().amax(dim=1)[[0, 1, 2, 3, 5]],
                          rtol=1e-6)
    assert torch.equal(back[4], torch.zeros(96))  # an all-zero row stays zero (no NaN from a zero scale)
    # bf16 input quantises exactly as its fp32 value does.
    q16, scale16 = quantize_rowwise_reference(rows.to(torch.bfloat16))
    q32, scale32 = quantize_rowwise_reference(rows.to(torch.bfloat16).float())
    assert torch.equal(q16.view(torch.uint8), q32.view(torch.uint8)) and torch.equal(scale16, scale32)


def test_quantize_rowwise_on_cpu_is_the_reference():
    rows = sample_rows()
    q, scale = quantize_rowwise(rows)
    q_ref, scale_ref = quantize_rowwise_reference(rows)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(scale, scale_ref)


@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_matches_its_reference_on_cpu(bias):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias).to(torch.bfloat16)
    layer = Fp8Linear.from_linear(linear)
    x = (torch.randn(3, 7, 64) * 5).to(torch.bfloat16)  # (B, L, K)
    out = layer(x)
    assert out.shape == (3, 7, 48) and out.dtype == torch.bfloat16
    reference = fp8_linear_reference(x, layer.weight_fp8, layer.weight_scale, layer.bias)
    scale = reference.float().abs().max()
    # The same FP8 operands: only the accumulation order and the bf16 rounding of the output may differ.
    assert (out.float() - reference.float()).abs().max() <= scale * 2**-8
    # And FP8 stays close to the bf16 layer it replaced (but is not it).
    exact = linear.float()(x.float())
    error = (out.float() - exact).norm() / exact.norm()
    assert 0 < error < 0.06
    assert layer(x[:, :0]).shape == (3, 0, 48)  # no rows, no kernel call


def test_fp8_linear_has_no_bf16_weight_and_refuses_casts():
    layer = Fp8Linear.from_linear(nn.Linear(32, 16))
    assert not hasattr(layer, "weight")
    with pytest.raises(Fp8WeightError, match="must keep that layer in bf16"):
        layer.weight
    with pytest.raises(RuntimeError, match="cannot be cast to another dtype"):
        layer.to(torch.float32)
    assert layer.weight_fp8.dtype == FP8_DTYPE and not layer.weight_fp8.requires_grad
    assert sum(parameter.numel() for parameter in layer.parameters()) == 32 * 16 + 16
    with pytest.raises(ValueError, match="multiple of 16"):
        Fp8Linear.from_linear(nn.Linear(32, 36))


def test_convert_linears_skips_unsupported_shapes_embeddings_and_what_the_predicate_keeps():
    model = nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 64), nn.Linear(64, 36), nn.Linear(64, 64),
                          nn.Sequential(nn.Linear(64, 16)))
    converted = convert_linears_to_fp8(model, lambda name, _: name != "3")
    assert converted == ["1", "4.0"]
    assert fp8_linears(model) == ["1", "4.0"]
    assert type(model[0]) is nn.Embedding and type(model[2]) is nn.Linear and type(model[3]) is nn.Linear


def _pairs() -> list[tuple[str, str]]:
    return ([("what is a cat", "A cat is a small domesticated carnivorous mammal. " * (i % 5 + 1)) for i in range(12)]
            + [("how long do fleas live", "A flea can live up to a year, depending on the host. " * (i % 3 + 1))
               for i in range(12)])


# (tiny registry model, Linear layers converted, the names kept in bf16 with why)
TINY_MODELS = [
    ("bert-base", 13, {}),  # 2 layers x (query, key, value, attention out, intermediate, output) + the pooler
    ("llama-3.2-1b", 14, {}),  # 2 layers x (q, k, v, o, gate, up, down)
    ("mamba2", 2, {"model.layers.0.mixer.in_proj": "296 features", "model.layers.1.mixer.in_proj": "296 features"}),
]


@pytest.mark.parametrize("name, count, kept", TINY_MODELS, ids=[entry[0] for entry in TINY_MODELS])
def test_conversion_counts_and_scores_close_to_bf16(tiny_reranker, name, count, kept):
    from pyserini_ssm.benchmarking import Workload, measure_inference
    from pyserini_ssm.models.reranker import Reranker, describe

    from pyserini_ssm.ops.batching import pad_batch

    reranker = Reranker.from_pretrained(str(tiny_reranker(name)), device="cpu", dtype="bf16", backend="torch")
    pairs = _pairs()
    batch = pad_batch(reranker.encoder.encode_many(pairs), reranker.pad_id, device="cpu")
    bf16 = reranker.predict(pairs)
    with torch.inference_mode():
        pooled_bf16 = reranker.model.encode(batch).float()  # (B, D)
    conversion = convert_to_fp8(reranker.model)
    reranker.fp8 = conversion
    assert len(conversion.converted) == count and fp8_linears(reranker.model.backbone) == conversion.converted
    assert {key: why for key, why in conversion.kept.items()}.keys() == kept.keys()
    assert all(fragment in conversion.kept[key] for key, fragment in kept.items())
    assert type(reranker.model.head) is nn.Linear and reranker.model.head.weight.dtype == torch.float32
    assert conversion.quantizer == "torch"
    fp8 = reranker.predict(pairs)
    with torch.inference_mode():
        pooled_fp8 = reranker.model.encode(batch).float()
    # Close: the pooled states within 10 % (2-layer width-64 models, where FP8 errors barely average out; measured
    # 0.7 % BERT, 3 % Llama, 5 % Mamba-2), so the scores within 10 % of the largest score the head can give them.
    relative = (pooled_fp8 - pooled_bf16).norm(dim=-1) / pooled_bf16.norm(dim=-1)
    assert 0 < relative.max() < 0.1
    largest = float(reranker.model.head.weight.detach().norm() * pooled_bf16.norm(dim=-1).max())
    assert 0 < np.abs(fp8 - bf16).max() <= 0.1 * largest
    assert reranker.dtype_name == "fp8" and "fp8 on cpu" in describe(reranker)
    # The bench records that fp8 ran and how many layers it converted.
    workload = Workload("msmarco", reranker.encoder.encode_many(pairs), None)
    record = measure_inference(reranker, workload, methods=("sorted",), batch_size=8, repeats=1, warmup=0)[0]
    assert (record.dtype, record.fp8_linears, record.fp8_quantizer) == ("fp8", count, "torch")
    with pytest.raises(UserError, match="FP8"):
        reranker.save_pretrained(str(tiny_reranker(name)) + "-fp8")


def test_conversion_refuses_a_model_with_nothing_to_convert():
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(8, 8))
            self.head = nn.Linear(8, 1)

    with pytest.raises(UserError, match="no Linear layer of this model can run in FP8"):
        convert_to_fp8(Tiny())
    assert isinstance(Fp8Conversion(["a"]).summary(), str)


def test_fp8_on_cpu_is_a_one_line_error_before_the_model_loads(tmp_path, capsys):
    from pyserini_ssm.models.reranker import resolve_precision
    from pyserini_ssm.rerank import main

    candidates = tmp_path / "candidates.json.gz"
    with gzip.open(candidates, "wt", encoding="utf-8") as handle:
        json.dump([{"query": "what is a cat", "hits": [{"docid": "d1", "qid": "q1", "content": "a cat", "score": 1.0}]}],
                  handle)
    output = tmp_path / "run.txt"
    # A registry name whose weights are not here: loading it would fail differently (a download error).
    status = run_main(main, ["--candidates", str(candidates), "--model", "mamba2-780m", "--dtype", "fp8",
                             "--device", "cpu", "--output", str(output), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: --dtype fp8 needs a CUDA GPU with compute capability")
    assert not output.exists()
    with pytest.raises(UserError, match="compute capability >= 8.9"):
        resolve_precision("fp8", torch.device("cpu"))
    assert resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    with pytest.raises(UserError, match="fp8"):
        resolve_precision("fp4", torch.device("cpu"))


def test_bench_refuses_fp8_training_and_fp8_on_cpu():
    from pyserini_ssm.benchmarking import BenchConfig, build_bench_reranker, validate

    with pytest.raises(UserError, match="inference only"):
        validate(BenchConfig(models=["mamba2-130m"], dtype="fp8", training=True))
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        build_bench_reranker("mamba2-130m", scale="tiny", device="cpu", dtype="fp8")


# --------------------------------------------------------------------------------------------------------------------
# GPU: the Triton quantiser, the CUDA kernels, the mamba-ssm path


def _fp8_gpu() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 16), (300, 1536), (33, 3072), (5, 20000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_triton_quantiser_matches_the_reference(shape, dtype):
    from pyserini_ssm.ops.fp8 import quantizer_name

    if not _fp8_gpu():
        pytest.skip("needs compute capability >= 8.9")
    assert quantizer_name("cuda") == "triton"
    torch.manual_seed(0)
    x = (torch.randn(*shape, device="cuda") * torch.logspace(-3, 2, shape[1], device="cuda")).to(dtype)
    x[0] = 0.0
    q, scale = quantize_rowwise(x)
    q_ref, scale_ref = quantize_rowwise_reference(x)
    assert torch.allclose(scale, scale_ref, rtol=1e-6, atol=0)
    same = (q.view(torch.uint8) == q_ref.view(torch.uint8)).float().mean().item()
    assert same >= 0.999
    back, back_ref = dequantize_rowwise(q, scale), dequantize_rowwise(q_ref, scale_ref)
    assert ((back - back_ref).abs() <= back_ref.abs() * 2 * E4M3_HALF_ULP + scale * 2 * E4M3_HALF_SUBNORMAL).all()


@pytest.mark.gpu
def test_fp8_linear_on_cuda_matches_its_reference():
    if not _fp8_gpu():
        pytest.skip("needs compute capability >= 8.9")
    torch.manual_seed(0)
    linear = nn.Linear(1536, 3072, device="cuda", dtype=torch.bfloat16)
    layer = Fp8Linear.from_linear(linear)
    x = torch.randn(2, 1000, 1536, device="cuda", dtype=torch.bfloat16)
    out = layer(x)
    reference = fp8_linear_reference(x, layer.weight_fp8, layer.weight_scale, layer.bias)
    assert out.shape == (2, 1000, 3072)
    assert (out.float() - reference.float()).norm() / reference.float().norm() < 1e-2
    exact = linear(x).float()
    assert (out.float() - exact).norm() / exact.norm() < 0.06


@pytest.mark.gpu
def test_reranker_fp8_on_cuda(tiny_reranker):
    from pyserini_ssm.models.reranker import Reranker

    if not _fp8_gpu():
        pytest.skip("needs compute capability >= 8.9")
    folder = str(tiny_reranker("llama-3.2-1b"))
    pairs = _pairs()
    bf16 = Reranker.from_pretrained(folder, device="cuda", dtype="bf16").predict(pairs)
    reranker = Reranker.from_pretrained(folder, device="cuda", dtype="fp8")
    assert reranker.dtype_name == "fp8" and len(reranker.fp8.converted) == 14 and reranker.fp8.quantizer == "triton"
    fp8 = reranker.predict(pairs)
    largest = float(reranker.model.head.weight.detach().norm())  # the pooled states are RMS-normed: norm about sqrt(D)
    assert 0 < np.abs(fp8 - bf16).max() <= 0.1 * largest * 64**0.5 * 2


def _tiny_kernel_mamba2():
    """A ScoringModel over a tiny Mamba-2 on the mamba-ssm kernels whose in_proj (560 features) suits _scaled_mm."""
    from pyserini_ssm.models.mamba import build_mamba_backbone, tiny_hf_config
    from pyserini_ssm.models.scoring import ScoringModel

    torch.manual_seed(0)
    config = tiny_hf_config("mamba2", hidden_size=128, head_dim=16, num_heads=16, n_groups=1, state_size=16)
    backbone = build_mamba_backbone(config, backend="cuda", device="cuda")
    model = ScoringModel(backbone, "mamba2", "last", 128).to(device="cuda", dtype=torch.bfloat16).eval()
    model.head.float()
    return model


@pytest.mark.gpu
def test_mamba2_kernel_path_converts_in_proj_and_keeps_the_fused_out_proj():
    from pyserini_ssm.models.mamba import mamba_ssm_available
    from pyserini_ssm.ops.batching import pack_batch
    from pyserini_ssm.models.templates import EncodedPair

    if not _fp8_gpu() or not mamba_ssm_available():
        pytest.skip("needs compute capability >= 8.9 and mamba-ssm")
    model = _tiny_kernel_mamba2()
    generator = np.random.default_rng(0)
    items = [EncodedPair(generator.integers(1, 100, size=length).tolist(), None) for length in (5, 40, 17, 64, 1)]
    batch = pack_batch(items, device="cuda")
    with torch.inference_mode():
        bf16 = model(batch)
    conversion = convert_to_fp8(model)
    assert conversion.converted == ["model.layers.0.mixer.in_proj", "model.layers.1.mixer.in_proj"]
    assert set(conversion.kept) == {"model.layers.0.mixer.out_proj", "model.layers.1.mixer.out_proj"}
    assert all("out_proj.weight" in why for why in conversion.kept.values())
    with torch.inference_mode():
        fp8 = model(batch)
    largest = float(model.head.weight.detach().norm()) * 128**0.5 * 2  # RMS-normed pooled states: norm about sqrt(D)
    assert 0 < (fp8 - bf16).abs().max() <= 0.1 * largest
    # A forward that calls out_proj as a module says so; the stock fused path then meets an Fp8Linear and says why.
    flagged = _tiny_kernel_mamba2()
    flagged.backbone.model.calls_out_proj_as_module = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(convert_to_fp8(flagged).converted) == 4
    with pytest.raises(Fp8WeightError), torch.inference_mode():
        flagged(batch)
