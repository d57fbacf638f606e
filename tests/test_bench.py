"""The bench on tiny random models (CPU): it runs end to end and writes valid JSON lines and a PNG; the optimized
inference paths (length sorting, packing, Reranker.predict) give the plain padded path's scores (fp32, 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_help import help_and_heavy_imports
from pyserini_ssm import bench
from pyserini_ssm.benchmarking import (
    SAME_SIZE_LLAMA, BenchConfig, bench_spec, build_bench_reranker, count_parameters, efficiency_table,
    inference_groups, lognormal_lengths, max_tokens_per_call, measure_inference, measure_training,
    measurement_from_json, msmarco_workload, read_jsonl, score_groups, synthetic_tokenizer, validate, widest_activation,
)
from pyserini_ssm.errors import UserError

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic_tokenizer(words=500)


def tiny(name: str, tokenizer) -> object:
    reranker = build_bench_reranker(name, scale="tiny", tokenizer=tokenizer, device="cpu", dtype="fp32", seed=0)
    reranker.model.dropout.p = 0.0
    return reranker


def test_bench_end_to_end_writes_json_lines_and_png(tmp_path, capsys):
    output = tmp_path / "out"
    status = bench.main(["--models", f"{SAME_SIZE_LLAMA},minilm-l6", "--scale", "tiny", "--device", "cpu",
                         "--inference", "--training", "--lengths", "msmarco,64", "--pairs", "40",
                         "--fixed-tokens", "640", "--batch-size", "8", "--token-budget", "512", "--repeats", "1",
                         "--train-groups", "2", "--group-size", "4", "--train-steps", "1", "--output", str(output)])
    assert status == 0
    records = read_jsonl(output / "bench.jsonl")
    seen = {(record["model"], record["benchmark"], record["method"]) for record in records}
    for model in (SAME_SIZE_LLAMA, "minilm-l6"):
        for benchmark, method in (("inference", "padded-random"), ("inference", "sorted"), ("inference", "packed"),
                                  ("inference", "predict"), ("fixed-length", "padded"),
                                  ("training", "train-padded"), ("training", "train-packed"),
                                  ("fixed-length-training", "train-padded")):
            assert (model, benchmark, method) in seen
    assert ("minilm-l6", "crossencoder", "crossencoder") in seen
    for record in records:
        assert record["machine"]["torch"] == torch.__version__
        assert record["device"] == "cpu"
        if not record["skipped"]:
            assert record["pairs_per_s"] > 0 and record["tokens_per_s"] > 0 and record["seconds"] > 0
        if record["max_rel_error"] is not None:
            assert record["max_rel_error"] < TOLERANCE, record
    inference = [r for r in records if r["benchmark"] == "inference" and r["model"] == SAME_SIZE_LLAMA]
    assert {r["lengths"] for r in inference} == {"msmarco-lognormal"}
    padded = next(r for r in inference if r["method"] == "padded-random")
    packed = next(r for r in inference if r["method"] == "packed")
    assert packed["padded_tokens"] == packed["tokens"] < padded["padded_tokens"]
    for name in ("throughput.png", "efficiency_throughput.png", "efficiency_memory.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every record of a transformer names the attention kernel that ran: SDPA padded, the reference loop packed.
    attention = {(r["benchmark"], r["method"]): r["attention"] for r in records if r["model"] == SAME_SIZE_LLAMA}
    assert attention[("inference", "sorted")] == "sdpa"
    assert attention[("inference", "packed")] == attention[("training", "train-packed")] == "sdpa-per-sequence"
    table = efficiency_table([measurement_from_json(record) for record in records]).splitlines()
    assert table[0].startswith("| length | llama-780m inference | llama-780m training | minilm-l6 inference")
    assert table[2].startswith("| 64 | ") and "padded" in table[2] and "GiB" in table[2]
    table = capsys.readouterr().out
    assert "padded-random" in table and "crossencoder" in table


@pytest.mark.parametrize("name", [pytest.param("mamba1-130m", marks=pytest.mark.slow), "mamba2-130m", SAME_SIZE_LLAMA, "opt-350m", "minilm-l6",
                                  "roberta-base"])
def test_sorted_and_packed_scores_equal_the_padded_baseline(name, tokenizer):
    reranker = tiny(name, tokenizer)
    workload = msmarco_workload(reranker.encoder, 24, candidates=None, seed=1)
    lengths = workload.lengths
    assert len(set(lengths)) > 5  # varied lengths: padding really differs between the paths
    baseline = score_groups(reranker, workload.encoded, inference_groups("padded-random", lengths, 7, 0, seed=3),
                            "padded")
    alone = score_groups(reranker, workload.encoded, [[index] for index in range(len(lengths))], "padded")
    np.testing.assert_allclose(baseline, alone, rtol=0, atol=TOLERANCE)
    sorted_scores = score_groups(reranker, workload.encoded, inference_groups("sorted", lengths, 7, 0), "padded")
    np.testing.assert_allclose(sorted_scores, baseline, rtol=0, atol=TOLERANCE)
    predicted = reranker.predict(workload.texts, batch_size=5)
    np.testing.assert_allclose(predicted, baseline, rtol=0, atol=TOLERANCE)
    family = reranker.spec.family
    if family == "mamba1":
        return  # no variable-length kernel
    groups = inference_groups("packed", lengths, 7, token_budget=300)
    assert len(groups) > 1 and max(len(group) for group in groups) > 1
    packed = score_groups(reranker, workload.encoded, groups, "packed")
    np.testing.assert_allclose(packed, baseline, rtol=0, atol=TOLERANCE)
    if family != "mamba2":
        # predict packs transformers on CUDA; on the CPU (reference kernel) only when asked to, as here.
        reranker.pack = True
        predicted_packed = reranker.predict(workload.texts, batch_size=5, max_tokens=300)
        np.testing.assert_allclose(predicted_packed, baseline, rtol=0, atol=TOLERANCE)
        assert reranker.model.backbone.config._attn_implementation == "pyserini_ssm_varlen"


def test_measure_inference_compares_every_method_with_the_baseline(tokenizer):
    reranker = tiny(SAME_SIZE_LLAMA, tokenizer)
    workload = msmarco_workload(reranker.encoder, 32, candidates=None, seed=2)
    records = measure_inference(reranker, workload, batch_size=8, token_budget=400, repeats=1, warmup=0)
    assert [r.method for r in records] == ["padded-random", "sorted", "packed", "predict"]
    assert records[0].max_abs_diff is None
    assert all(r.max_abs_diff is not None and r.max_abs_diff < TOLERANCE for r in records[1:])
    assert records[1].padded_tokens < records[0].padded_tokens  # sorting removes padding
    assert records[2].padded_tokens == workload.tokens


@pytest.mark.parametrize("name", [SAME_SIZE_LLAMA, "minilm-l6", "opt-350m", "roberta-base"])
def test_packed_training_step_has_the_padded_loss(name, tokenizer):
    losses = {}
    for packed in (False, True):
        reranker = tiny(name, tokenizer)
        workload = msmarco_workload(reranker.encoder, 48, candidates=None, seed=4)
        record = measure_training(reranker, workload, packed=packed, groups_per_step=3, group_size=4, steps=2,
                                  warmup=1, lr=1e-3, dropout=False)
        assert not record.skipped and record.pairs == 12 and record.pairs_per_s > 0
        losses[packed] = (record.first_loss, record.last_loss)
    assert losses[True][0] == pytest.approx(losses[False][0], abs=TOLERANCE)
    assert losses[True][1] == pytest.approx(losses[False][1], abs=1e-4)


def test_same_size_llama_is_the_size_of_mamba2_780m():
    from pyserini_ssm.init import build_random_backbone

    spec = bench_spec(SAME_SIZE_LLAMA)
    with torch.device("meta"):
        backbone = build_random_backbone(spec, dict(spec.architecture), device="meta")
    llama = count_parameters(backbone)
    assert spec.family == "decoder" and spec.architecture["model_type"] == "llama"
    assert abs(llama - 780.2e6) / 780.2e6 < 0.01, llama


def test_int32_cap_uses_mamba2_780m_widest_activation():
    """Issue 17: mamba-ssm's Triton kernels index with int32, so tokens per call x d_in_proj must stay < 2^31."""
    import types

    from pyserini_ssm.init import build_random_backbone

    spec = bench_spec("mamba2-780m")
    with torch.device("meta"):
        backbone = build_random_backbone(spec, dict(spec.architecture), device="meta")
    model = types.SimpleNamespace(backbone=backbone, hidden_size=1536)
    assert widest_activation(model) == 6448
    assert max_tokens_per_call(model) == (2**31 - 1) // 6448 == 333_046


def test_lognormal_lengths_have_the_msmarco_mean():
    lengths = lognormal_lengths(20000, low=8, high=512, seed=0)
    assert abs(np.mean(lengths) - 89) < 1.5
    assert min(lengths) >= 8 and max(lengths) <= 512


def test_bad_input_is_a_user_error(tmp_path, capsys):
    from pyserini_ssm.cli import run_main

    assert run_main(bench.main, ["--models", "mamba2-78m", "--inference"]) == 2
    assert "mamba2-780m" in capsys.readouterr().err
    assert run_main(bench.main, ["--models", "mamba2-780m"]) == 2  # neither --inference nor --training
    with pytest.raises(UserError, match="length"):
        validate(BenchConfig(models=["mamba2-780m"], lengths=["msmarco", "long"]))
    with pytest.raises(UserError, match="candidates"):
        validate(BenchConfig(models=["mamba2-780m"], candidates=str(tmp_path / "missing.json.gz")))
    with pytest.raises(UserError, match="batch-size"):
        validate(BenchConfig(models=["mamba2-780m"], batch_size=0))


def test_help_is_quick():
    text, heavy = help_and_heavy_imports("pyserini_ssm.bench")
    assert "--token-budget" in text
    assert heavy == [], f"--help loaded {heavy}: import them inside the functions that need them"


def test_crossencoder_baseline_is_fp32_next_to_a_bf16_reranker(tokenizer):
    from pyserini_ssm.benchmarking import _crossencoder_records

    reranker = build_bench_reranker("minilm-l6", scale="tiny", tokenizer=tokenizer, device="cpu", dtype="bf16", seed=0)
    workload = msmarco_workload(reranker.encoder, 8, candidates=None, seed=1)
    config = BenchConfig(models=["minilm-l6"], device="cpu", repeats=1, warmup=0)
    records = _crossencoder_records(reranker, workload, config)
    assert [(record.method, record.dtype) for record in records] == [("crossencoder", "fp32"),
                                                                    ("crossencoder-bf16", "bf16")]


def test_forward_timeline_stamps_forwards_and_spans_then_removes_its_hooks():
    """`bench_timing.ForwardTimeline` (bin/profile-predict, bin/profile-rerank) on the CPU: one stamp per forward
    with its token count, one span per call of a wrapped function, and on exit the hooks and the wrapper gone."""
    import types

    from pyserini_ssm.bench_timing import ForwardTimeline

    class Model(torch.nn.Module):
        def forward(self, batch):
            return batch["input_ids"].float().sum()

    model = Model()
    owner = types.SimpleNamespace(tokenize=lambda texts: [len(text) for text in texts])
    original = owner.tokenize
    with ForwardTimeline(model, cuda=False) as stamps:
        stamps.wrap(owner, "tokenize", "tokenize")
        assert owner.tokenize(["ab", "c"]) == [2, 1]
        for tokens in (3, 5):
            model({"input_ids": torch.ones(1, tokens, dtype=torch.long)})
    assert [row["tokens"] for row in stamps.forwards] == [3, 5]
    assert all(row["host_end"] >= row["host_start"] for row in stamps.forwards)
    assert [span[0] for span in stamps.spans] == ["tokenize"]
    assert owner.tokenize is original and not model._forward_hooks and not model._forward_pre_hooks
    lines = stamps.lines()
    assert lines[0].startswith("tokenize [MainThread]") and lines[-1].startswith("2 forwards, 8 tokens")
    model({"input_ids": torch.ones(1, 2, dtype=torch.long)})  # after the exit: not stamped
    assert len(stamps.forwards) == 2
