from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserini_ssm.errors import UserError
from pyserini_ssm.topics import TOPICS_DIR_ENV, load_topics, read_topics_file

from conftest import require_shared


def test_tsv_topics_in_file_order(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("3\tthird query \n1\tfirst\textra ignored like Anserini\n\n")
    assert list(load_topics(path).items()) == [("3", "third query"), ("1", "first")]


def test_gzip_and_jsonl_and_trec_formats(tmp_path):
    gz = tmp_path / "t.tsv.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write("q1\tgzipped\n")
    assert load_topics(gz) == {"q1": "gzipped"}
    jsonl = tmp_path / "queries.jsonl"
    jsonl.write_text('{"_id": "5", "text": "beir query", "metadata": {}}\n{"qid": 6, "query": "other"}\n')
    assert load_topics(jsonl) == {"5": "beir query", "6": "other"}
    trec = tmp_path / "topics.robust.txt"
    trec.write_text(
        "<top>\n<num> Number: 301\n<title> international organized crime\n\n<desc> Description:\nx\n<narr> Narrative:\ny\n</top>\n"
        "<top>\n<num>302</num>\n<title>\npoliomyelitis\n<desc> d\n<narr> n\n</top>\n"
    )
    assert load_topics(trec) == {"301": "international organized crime", "302": "poliomyelitis"}


@pytest.mark.parametrize(
    "text, message, line",
    [
        ("1\tok\n2 no tab here\n", "no tab", 2),
        ("1\tok\n1\tagain\n", "twice", 2),
        ("1\tok\n2\t  \n", "empty text", 2),
        ('{"_id": "1", "text": "a"}\n{"_id": "2"}\n', "'_id' and 'text'", 2),
        ('{"_id": "1", "text": "a"}\n{broken\n', "not a JSON object", 2),
    ],
)
def test_malformed_topics_name_the_line(tmp_path, text, message, line):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        load_topics(path)
    assert f"{path}:{line}:" in str(error.value)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n \n")
    with pytest.raises(UserError, match="empty"):
        read_topics_file(empty)
    with pytest.raises(UserError, match="not found"):
        load_topics(tmp_path / "missing.tsv")


def test_unknown_name_suggests_close_pyserini_names(tmp_path):
    with pytest.raises(UserError, match="dl19-passage"):
        load_topics("dl19-pasage", topics_dir=tmp_path)


def test_topics_dir_must_exist(tmp_path):
    with pytest.raises(UserError, match="topics folder not found"):
        load_topics("dl19-passage", topics_dir=tmp_path / "nope")


@pytest.mark.parametrize(
    "name, count, first",
    [
        ("dl19-passage", 43, "156493"),
        ("dl20", 200, "1030303"),
        ("dl20-passage", 200, "1030303"),
        ("msmarco-passage-dev-subset", 6980, "1048585"),
        ("msmarco-v1-passage.dev", 6980, "1048585"),
        ("beir-v1.0.0-scifact-test", 300, "1"),
        ("beir-v1.0.0-trec-covid", 50, "1"),
    ],
)
def test_pyserini_names_from_topics_dir(name, count, first):
    folder = require_shared("topics-and-qrels")
    topics = load_topics(name, topics_dir=folder)
    assert len(topics) == count
    assert next(iter(topics)) == first


def test_topics_dir_from_environment(monkeypatch):
    folder = require_shared("topics-and-qrels")
    monkeypatch.setenv(TOPICS_DIR_ENV, str(folder))
    assert load_topics("dl19-passage")["1112341"] == "what is the daily life of thai people"


def test_beir_queries_jsonl_matches_anserini_topics():
    folder = require_shared("topics-and-qrels")
    queries = load_topics(require_shared("beir-scifact", "queries.jsonl.gz"))
    test_topics = load_topics("beir-v1.0.0-scifact-test", topics_dir=folder)
    assert all(queries[qid] == text for qid, text in test_topics.items())


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8")))
def test_fuzz_topics_parse_or_user_error(tmp_path, data):
    path = tmp_path / "fuzz.tsv"
    path.write_bytes(data)
    try:
        topics = read_topics_file(path)
    except UserError:
        return
    assert topics and all(qid and text.strip() for qid, text in topics.items())
