"""Reranker: predict in input order, rerank every kind of hit, honour device/dtype/backend, reject bad input."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest
import torch

from conftest import require_shared
from pyserini_ssm.errors import UserError
from pyserini_ssm.models.reranker import Reranker, hit_fields
from pyserini_ssm.runs import Hit

DOCUMENTS = [
    "A cat is a small domesticated carnivorous mammal.",
    "Ownership is Rust's most unique feature and has deep implications for the rest of the language. " * 3,
    "Paris.",
    "The mitochondrion is the powerhouse of the cell, producing ATP through respiration.",
    "Water boils at 100 degrees Celsius at sea level.",
    "x",
]


def load(path, **kwargs) -> Reranker:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reranker.from_pretrained(str(path), **kwargs)


@pytest.fixture(scope="module")
def mamba2(tiny_reranker):
    return load(tiny_reranker("mamba2"), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def bert(tiny_reranker):
    return load(tiny_reranker("encoder"))


@pytest.mark.parametrize("which", ["mamba2", "bert"])
def test_sorted_batching_returns_scores_in_input_order(which, request):
    reranker = request.getfixturevalue(which)
    pairs = [(f"query {index % 3}", DOCUMENTS[index % len(DOCUMENTS)] + f" {index}") for index in range(13)]
    sorted_scores = reranker.predict(pairs, batch_size=4)
    one_by_one = np.array([reranker.predict([pair], batch_size=1)[0] for pair in pairs])
    assert sorted_scores.dtype == np.float32 and sorted_scores.shape == (13,)
    np.testing.assert_allclose(sorted_scores, one_by_one, rtol=0, atol=1e-5)
    np.testing.assert_allclose(reranker.predict(pairs, batch_size=64, max_tokens=200), one_by_one, rtol=0, atol=1e-5)
    assert reranker.predict([]).shape == (0,)


def test_predict_stream_equals_predict_per_list_and_takes_one_list_ahead(bert):
    lists = [[(f"query {k}", DOCUMENTS[(k + i) % len(DOCUMENTS)]) for i in range(k + 2)] for k in range(4)]
    lists.insert(2, [])
    taken = []

    def producer():
        for pairs in lists:
            taken.append(len(pairs))
            yield pairs

    stream = bert.predict_stream(producer(), batch_size=3)
    first = next(stream)
    assert len(taken) == 2  # list 1 was taken (and is being tokenized) before list 0's scores came out
    results = [first, *stream]
    assert [len(scores) for scores in results] == [len(pairs) for pairs in lists]
    for pairs, scores in zip(lists, results):
        np.testing.assert_allclose(scores, bert.predict(pairs, batch_size=3), rtol=0, atol=1e-6)


@pytest.mark.parametrize("device_busy", [False, True])
def test_packed_stream_cuts_rows_across_lists_and_matches_predict_per_list(bert, monkeypatch, device_busy):
    """The packed path of predict_stream (forced on the CPU: BERT's per-sequence varlen reference). With a busy
    device (the rows' copies never done) part-full rows wait for the next list: fewer forwards than lists."""
    from pyserini_ssm.models import reranker as reranker_module

    lists = [[(f"query {k}", DOCUMENTS[(k + i) % len(DOCUMENTS)]) for i in range(k % 3 + 1)] for k in range(7)]
    lists.insert(3, [])
    expected = [bert.predict(pairs, batch_size=3) for pairs in lists]
    taken, forwards = [], []

    def producer():
        for pairs in lists:
            taken.append(len(pairs))
            yield pairs

    monkeypatch.setattr(bert, "pack", True)
    if device_busy:
        monkeypatch.setattr(reranker_module._QueuedRow, "done", lambda row: False)
    hook = bert.model.register_forward_hook(lambda *args: forwards.append(1))
    try:
        stream = bert.predict_stream(producer(), batch_size=3, max_tokens=200)
        first = next(stream)
        # list 1 taken; list 3 at most: list 0's part-full row waits for list 1's pairs, and its scores for a
        # row queued behind it (list 2's)
        assert 2 <= len(taken) <= 4
        results = [first, *stream]
    finally:
        hook.remove()
    assert [len(scores) for scores in results] == [len(pairs) for pairs in lists]
    for scores, reference in zip(results, expected):
        np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-5)
    if device_busy:
        assert len(forwards) < sum(1 for pairs in lists if pairs)
    else:
        assert len(forwards) >= sum(1 for pairs in lists if pairs)  # an idle device never waits for a fuller row


def test_rerank_accepts_hits_dicts_and_pyserini_results(bert):
    query = "what is a cat"
    hits = [Hit(f"d{index}", 10.0 - index, text) for index, text in enumerate(DOCUMENTS)]
    reranked = bert.rerank(query, hits)
    scores = bert.predict([(query, text) for text in DOCUMENTS])
    assert [hit.docid for hit in reranked] == [f"d{index}" for index in np.argsort(-scores, kind="stable")]
    assert [hit.score for hit in reranked] == pytest.approx(sorted(scores.tolist(), reverse=True), abs=1e-6)
    assert all(isinstance(hit, Hit) and hit.text for hit in reranked)

    dicts = [{"docid": f"d{index}", "content": text, "score": 10.0 - index} for index, text in enumerate(DOCUMENTS)]
    assert [hit.docid for hit in bert.rerank(query, dicts)] == [hit.docid for hit in reranked]
    pyserini_like = [types.SimpleNamespace(docid=f"d{index}", score=10.0 - index,
                                           raw=json.dumps({"id": f"d{index}", "contents": text}))
                     for index, text in enumerate(DOCUMENTS)]
    assert [hit.docid for hit in bert.rerank(query, pyserini_like)] == [hit.docid for hit in reranked]
    lucene_like = types.SimpleNamespace(docid="x", score=1.0, lucene_document={"raw": "plain text"})
    assert hit_fields(lucene_like) == ("x", 1.0, "plain text")


def test_hits_below_depth_keep_first_stage_order_under_the_reranked(bert):
    hits = [Hit(f"d{index}", 10.0 - index, text) for index, text in enumerate(DOCUMENTS)]
    reranked = bert.rerank("what is a cat", hits, depth=3)
    assert {hit.docid for hit in reranked[:3]} == {"d0", "d1", "d2"}
    assert [hit.docid for hit in reranked[3:]] == ["d3", "d4", "d5"]
    scores = [hit.score for hit in reranked]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
    assert [hit.docid for hit in bert.rerank("q", hits, depth=0)] == [hit.docid for hit in hits]


def test_bad_hits_are_user_errors_naming_the_document(bert):
    with pytest.raises(UserError, match="document d1 has empty text"):
        bert.rerank("q", [Hit("d0", 1.0, "text"), Hit("d1", 0.5, "  ")])
    with pytest.raises(UserError, match="document d0 has no text"):
        bert.rerank("q", [Hit("d0", 1.0)])
    with pytest.raises(UserError, match="no docid"):
        bert.rerank("q", [{"content": "text"}])
    with pytest.raises(UserError, match="does not fit max length"):
        bert.rerank("word " * 600, [Hit("d0", 1.0, "text")])
    with pytest.raises(UserError, match="batch size"):
        bert.predict([("q", "d")], batch_size=0)


def test_dtype_device_backend_and_max_length_are_honoured(tiny_reranker):
    path = tiny_reranker("encoder")
    default = load(path)
    assert default.device == torch.device("cpu") and default.dtype == torch.float32  # CPU default: fp32
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        reranker = load(path, dtype=name)
        assert reranker.dtype == dtype
        assert {parameter.dtype for parameter in reranker.model.backbone.parameters()} == {dtype}
        assert reranker.model.head.weight.dtype == torch.float32  # scores keep full precision
        assert reranker.predict([("q", "a document")]).dtype == np.float32
    short = load(path, max_length=16)
    assert short.max_length == 16 and len(short.encoder.encode("q", "word " * 100).input_ids) == 16
    with pytest.raises(UserError, match="unknown dtype"):
        load(path, dtype="int8")
    with pytest.raises(UserError, match="exceeds"):
        load(path, max_length=4096)
    with pytest.raises(UserError, match="mamba-ssm kernels"):
        load(path, backend="cuda")
    with pytest.raises(UserError, match="unknown backend"):
        load(path, backend="jax")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load(path, device="cuda")
        with pytest.raises(UserError, match="mamba-ssm"):
            load(tiny_reranker("mamba2"), backend="cuda")
    torch_backend = load(tiny_reranker("mamba2"), backend="torch")
    assert torch_backend.model.backbone.backend == "torch"


def test_untrained_head_warns_once_per_reranker(tiny_reranker):
    with pytest.warns(UserWarning, match="scores are untrained"):
        reranker = Reranker.from_pretrained(str(tiny_reranker("encoder")))
    assert reranker.head_trained is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reranker.predict([("q", "d")])  # already warned at load


def test_reranks_dl19_candidates_into_a_valid_ranking(mamba2):
    import gzip

    path = require_shared("msmarco-passage-dl19-bm25-top100", "retrieve_results_dl19.bm25.top100.json.gz")
    with gzip.open(path, "rt") as handle:
        candidates = json.load(handle)[:1]
    for entry in candidates:
        hits = entry["hits"]
        reranked = mamba2.rerank(entry["query"], hits, depth=20, batch_size=16)
        assert sorted(hit.docid for hit in reranked) == sorted(str(hit["docid"]) for hit in hits)
        assert [hit.docid for hit in reranked[20:]] == [str(hit["docid"]) for hit in hits[20:]]
        scores = [hit.score for hit in reranked]
        assert scores == sorted(scores, reverse=True)


def test_packed_rows_in_predict_equal_padded_batches(tiny_reranker):
    """The packing path of `predict` (used for Mamba-2 on the kernels) on the torch reference backend."""
    reranker = load(tiny_reranker("mamba2"), device="cpu", dtype="fp32", backend="torch")
    pairs = [(f"query {index % 2}", DOCUMENTS[index % len(DOCUMENTS)]) for index in range(9)]
    padded = reranker.predict(pairs, batch_size=3)
    reranker.pack = True
    try:
        packed = reranker.predict(pairs, batch_size=3, max_tokens=120)  # several rows of <= 120 tokens
    finally:
        reranker.pack = False
    np.testing.assert_allclose(packed, padded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_packed_transformer_rows_in_predict_equal_padded_batches(family, tiny_reranker):
    """`predict` packs transformers on CUDA through varlen attention; on the CPU the same path runs the
    per-sequence reference when asked to, and must give the padded scores."""
    reranker = load(tiny_reranker(family), device="cpu", dtype="fp32")
    assert not reranker.pack  # CPU: padded by default
    pairs = [(f"query {index % 2}", DOCUMENTS[index % len(DOCUMENTS)]) for index in range(9)]
    padded = reranker.predict(pairs, batch_size=3)
    reranker.pack = True
    try:
        packed = reranker.predict(pairs, batch_size=3, max_tokens=120)
    finally:
        reranker.pack = False
    np.testing.assert_allclose(packed, padded, rtol=0, atol=1e-5)


def test_out_of_memory_halves_the_batch_and_keeps_every_score(tiny_reranker):
    reranker = load(tiny_reranker("encoder"))
    pairs = [("q", DOCUMENTS[index % len(DOCUMENTS)]) for index in range(12)]
    expected = reranker.predict(pairs, batch_size=12)
    real_model = reranker.model
    seen = []

    class SmallMemory(torch.nn.Module):  # a device that only fits 2 pairs per batch
        def forward(self, batch):
            seen.append(batch["input_ids"].shape[0])
            if batch["input_ids"].shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_model(batch)

    reranker.model = SmallMemory()
    try:
        scores = reranker.predict(pairs, batch_size=12)
    finally:
        reranker.model = real_model
    assert max(seen) == 12 and sorted(set(seen))[0] <= 2
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------- GPU (run on the device)

GPU_PAIRS = [("what is a state space model", "A state space model maps an input sequence through a hidden state. " * k)
             for k in range(1, 9)] + [("why do cats purr", "Cats purr when content, and sometimes when hurt.")]


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["mamba1", "mamba2"])
def test_kernel_backend_scores_equal_torch_backend_on_the_same_checkpoint(family, tiny_reranker):
    pytest.importorskip("mamba_ssm")
    checkpoint = tiny_reranker(family)
    torch_path = load(checkpoint, device="cuda", dtype="fp32", backend="torch")
    assert torch_path.model.backbone.backend == "torch"
    expected = torch_path.predict(GPU_PAIRS, batch_size=4)
    for dtype, tolerance in (("fp32", 1e-3), ("bf16", 5e-2)):
        kernels = load(checkpoint, device="cuda", dtype=dtype, backend="cuda")
        assert kernels.model.backbone.backend == "cuda"
        got = kernels.predict(GPU_PAIRS, batch_size=4)
        error = np.abs(got - expected).max() / np.abs(expected).max()
        print(f"[reranker parity] {family} kernels {dtype} vs torch fp32: max abs err / max |score| {error:.2e}")
        assert error < tolerance


@pytest.mark.gpu
def test_cpu_device_on_a_gpu_machine_uses_the_torch_backend(tiny_reranker):
    """transformers binds mamba-ssm's kernels whatever the device: a CPU reranker must still run torch code."""
    reranker = load(tiny_reranker("mamba2"), device="cpu", dtype="fp32")
    assert reranker.model.backbone.backend == "torch"
    on_gpu = load(tiny_reranker("mamba2"), device="cuda", dtype="fp32", backend="torch")
    np.testing.assert_allclose(reranker.predict(GPU_PAIRS), on_gpu.predict(GPU_PAIRS), rtol=1e-4, atol=1e-5)


def test_tokenization_chunks_start_small_then_cover_every_pair():
    from pyserini_ssm.models.reranker import FIRST_CHUNK, TOKENIZE_CHUNK, chunk_bounds

    bounds = chunk_bounds(5000)
    assert bounds[0] == (0, FIRST_CHUNK) and bounds[1] == (FIRST_CHUNK, FIRST_CHUNK + TOKENIZE_CHUNK)
    assert [end for _, end in bounds][-1] == 5000
    assert all(previous[1] == current[0] for previous, current in zip(bounds, bounds[1:]))
    assert chunk_bounds(0) == [] and chunk_bounds(100) == [(0, 100)]
