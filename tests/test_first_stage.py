from __future__ import annotations

import gzip
import json

import pytest

from pyserini_ssm.errors import UserError
from pyserini_ssm.first_stage.lucene import (
    MULTIFIELD_FIELDS,
    parse_fields,
    BEIR_FLAT,
    JSON_COLLECTION,
    bm25_search,
    build_index,
    detect_collection,
    document_text,
    fetch_texts,
    open_searcher,
)
from pyserini_ssm.qrels import load_qrels
from pyserini_ssm.runs import read_run
from pyserini_ssm.topics import load_topics

from conftest import require_shared
from scifact_index import scifact_index_dir


def test_detect_collection_by_first_record(tmp_path):
    beir = tmp_path / "docs.jsonl.gz"  # the name says nothing; the record decides
    with gzip.open(beir, "wt") as handle:
        handle.write(json.dumps({"_id": "1", "title": "t", "text": "x"}) + "\n")
    assert detect_collection(beir) == (BEIR_FLAT, [beir])
    folder = tmp_path / "json"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([{"id": "d", "contents": "c"}]))
    (folder / "b.jsonl").write_text(json.dumps({"id": "e", "contents": "c"}) + "\n")
    assert detect_collection(folder) == (JSON_COLLECTION, [folder / "a.json", folder / "b.jsonl"])


def test_detect_collection_errors(tmp_path):
    with pytest.raises(UserError, match="input not found"):
        detect_collection(tmp_path / "nope")
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"doc": "x"}) + "\n")
    with pytest.raises(UserError, match="cannot tell the corpus format"):
        detect_collection(odd)
    untitled = tmp_path / "c.jsonl"
    untitled.write_text(json.dumps({"_id": "1", "text": "x"}) + "\n")
    with pytest.raises(UserError, match="'title'"):
        detect_collection(untitled)


def test_document_text_for_beir_and_json():
    assert document_text(json.dumps({"_id": "1", "title": "T", "text": "body"}, indent=2)) == "T body"
    assert document_text(json.dumps({"_id": "1", "title": "", "text": "body"})) == "body"
    assert document_text(json.dumps({"id": "1", "contents": "c"})) == "c"
    assert document_text("plain raw") == "plain raw"


def test_open_searcher_errors_before_java(tmp_path):
    with pytest.raises(UserError, match="index folder not found"):
        open_searcher(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="not a Lucene index"):
        open_searcher(str(tmp_path))


@pytest.mark.java
def test_scifact_bm25_reproduces_anserini_flat():
    searcher = open_searcher(str(scifact_index_dir()))
    assert searcher.num_docs == 5183
    folder = require_shared("topics-and-qrels")
    # 40 of the 300 queries keep this test short; the CLI acceptance test scores all 300.
    topics = dict(list(load_topics("beir-v1.0.0-scifact-test", topics_dir=folder).items())[:40])
    results = bm25_search(searcher, topics, hits=1000, k1=0.9, b=0.4, threads=2, batch_size=16, remove_query=True)
    assert list(results) == list(topics)
    # Same documents, ranks and scores as Anserini 0.21.0's own run.
    anserini = read_run(require_shared("beir-scifact", "run.beir-v1.0.0-scifact.test.bm25-flat.anserini-0.21.0.txt.gz"))
    for qid in topics:
        hits = anserini[qid]
        assert [h.docid for h in results[qid]] == [h.docid for h in hits]
        assert [round(h.score, 6) for h in results[qid]] == [h.score for h in hits]

    texts = fetch_texts(searcher, [results["1"][0].docid, "4983"])
    assert texts["4983"].startswith("Microstructural development of human newborn cerebral white matter")
    with pytest.raises(UserError, match="not found in the index.*'no-such-doc'"):
        fetch_texts(searcher, ["4983", "no-such-doc"])
    assert fetch_texts(searcher, ["4983", "no-such-doc"], skip_missing=True).keys() == {"4983"}


@pytest.mark.java
def test_json_collection_index_and_remove_query(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [{"id": "q1", "contents": "apples and pears"}, {"id": "d2", "contents": "apples only"}, {"id": "d3", "contents": "pears"}]
    (corpus / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    stats = build_index(corpus, tmp_path / "index", threads=1)
    assert (stats.collection, stats.indexed) == (JSON_COLLECTION, 3)
    searcher = open_searcher(str(tmp_path / "index"))
    kept = bm25_search(searcher, {"q1": "apples"}, hits=10)
    assert {h.docid for h in kept["q1"]} == {"q1", "d2"}
    removed = bm25_search(searcher, {"q1": "apples"}, hits=10, remove_query=True)
    assert [h.docid for h in removed["q1"]] == ["d2"]
    assert fetch_texts(searcher, ["d3"]) == {"d3": "pears"}
    with pytest.raises(UserError, match="already exists"):
        build_index(corpus, tmp_path / "index")


@pytest.mark.java
def test_unknown_and_offline_prebuilt_indexes():
    with pytest.raises(UserError, match="neither a folder nor a Pyserini prebuilt index name"):
        open_searcher("no-such-prebuilt-index")
    try:
        open_searcher("beir-v1.0.0-scifact.flat")
    except UserError as error:  # offline (CI, this machine): at once, naming Pyserini's cache and the download
        assert "is not in Pyserini's cache" in str(error) and "download_prebuilt_index('beir-v1.0.0-scifact.flat')" \
            in str(error)


@pytest.mark.java
def test_offline_topics_and_qrels_name_without_topics_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("PYSERINI_SSM_TOPICS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # keep Pyserini's download cache out of the real home
    try:
        load_topics("dl19-passage")
    except UserError as error:
        assert "dl19-passage" in str(error) and "--topics-dir" in str(error) and "internet" in str(error)
    try:
        load_qrels("dl19-passage")
    except UserError as error:
        assert "dl19-passage" in str(error) and "internet" in str(error)


def test_parse_fields():
    assert parse_fields(["contents=1.0", "title=0.5"]) == {"contents": 1.0, "title": 0.5}
    assert parse_fields(["title"]) == {"title": 1.0}
    assert parse_fields(None) is None and parse_fields([]) is None
    for bad in ("title=x", "=1.0", "title=-1", "title=0", "title=nan", "title=inf"):
        with pytest.raises(UserError, match="FIELD=BOOST"):
            parse_fields([bad])


@pytest.mark.java
def test_multifield_index_searches_title_and_text_as_pyserini(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = [{"_id": "d1", "title": "Zebrafish", "text": "regeneration of fins"},
            {"_id": "d2", "title": "", "text": "zebrafish zebrafish heart"},
            {"_id": "d3", "title": "Mice", "text": "fins of fish"}]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    stats = build_index(corpus, tmp_path / "multifield", threads=1, multifield=True)
    assert (stats.collection, stats.indexed) == ("BeirMultifieldCollection", 3)
    searcher = open_searcher(str(tmp_path / "multifield"))
    assert {"contents", "title"} <= searcher.indexed_fields()
    assert searcher.default_fields() == MULTIFIELD_FIELDS
    # "zebrafish" is only in d1's title: the contents field alone misses d1, both fields find it.
    contents_only = bm25_search(searcher, {"q": "zebrafish"}, hits=10)
    both = bm25_search(searcher, {"q": "zebrafish"}, hits=10, fields=MULTIFIELD_FIELDS)
    assert [h.docid for h in contents_only["q"]] == ["d2"]
    assert {h.docid for h in both["q"]} == {"d1", "d2"}
    # Texts for reranking are title + text, as from a flat index.
    assert fetch_texts(searcher, ["d1"]) == {"d1": "Zebrafish regeneration of fins"}
    flat = build_index(corpus, tmp_path / "flat", threads=1)
    assert flat.collection == "BeirFlatCollection"
    assert open_searcher(str(tmp_path / "flat")).default_fields() is None
    with pytest.raises(UserError, match="--multifield needs a BEIR corpus"):
        jsonl = tmp_path / "json.jsonl"
        jsonl.write_text(json.dumps({"id": "a", "contents": "x"}) + "\n")
        build_index(jsonl, tmp_path / "bad", multifield=True)


@pytest.mark.java
def test_scifact_multifield_reproduces_the_anserini_regression(tmp_path):
    """Anserini's regression page for beir-v1.0.0-scifact.multifield: nDCG@10 0.6647, R@100 0.9076, R@1000 0.9800."""
    from pyserini_ssm.evaluation import evaluate
    from pyserini_ssm.runs import run_as_dict

    build_index(require_shared("beir-scifact", "corpus.jsonl.gz"), tmp_path / "index", threads=2, multifield=True)
    searcher = open_searcher(str(tmp_path / "index"))
    folder = require_shared("topics-and-qrels")
    topics = load_topics("beir-v1.0.0-scifact-test", topics_dir=folder)
    results = bm25_search(searcher, topics, hits=1000, threads=2, batch_size=1000, remove_query=True,
                          fields=searcher.default_fields())
    metrics = evaluate(run_as_dict(results), load_qrels("beir-v1.0.0-scifact-test", topics_dir=folder),
                       collection_hint="beir-v1.0.0-scifact-test")
    assert {name: round(value, 4) for name, value in metrics.items()} == {
        "ndcg_cut_10": 0.6647, "recall_100": 0.9076, "recall_1000": 0.9800}
