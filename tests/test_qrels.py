from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserini_ssm.errors import UserError
from pyserini_ssm.qrels import load_qrels, read_qrels_file

from conftest import require_shared


def test_trec_qrels(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("1 0 d1 2\n1 0 d2 0\n2 Q0 d1 -1\n")
    assert load_qrels(path) == {"1": {"d1": 2, "d2": 0}, "2": {"d1": -1}}


def test_beir_tsv_qrels_with_header_and_gzip(tmp_path):
    path = tmp_path / "test.tsv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("query-id\tcorpus-id\tscore\n1\t31715818\t1\n3\t14717500\t1\n")
    assert load_qrels(path) == {"1": {"31715818": 1}, "3": {"14717500": 1}}


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 0 d1 1\n1 0 d2\n", "4 columns"),
        ("1 0 d1 1\n1 0 d2 high\n", "not an integer"),
        ("1 0 d1 1\n1 0 d1 2\n", "twice"),
        ("query-id\tcorpus-id\tscore\n1\td\n", "3 columns"),
    ],
)
def test_malformed_qrels_name_the_line(tmp_path, text, message):
    path = tmp_path / "bad.qrels"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        load_qrels(path)
    assert f"{path}:2:" in str(error.value)


def test_empty_qrels(tmp_path):
    path = tmp_path / "empty.qrels"
    path.write_text("")
    with pytest.raises(UserError, match="no judgments"):
        load_qrels(path)


@pytest.mark.parametrize(
    "name, queries, judgments",
    [
        ("dl19-passage", 43, 9260),
        ("dl20-passage", 54, 11386),
        ("msmarco-passage-dev-subset", 6980, 7437),
        ("beir-v1.0.0-scifact-test", 300, 339),
        ("beir-v1.0.0-nfcorpus", 323, 12334),
    ],
)
def test_pyserini_qrels_names_from_topics_dir(name, queries, judgments):
    qrels = load_qrels(name, topics_dir=require_shared("topics-and-qrels"))
    assert len(qrels) == queries
    assert sum(len(v) for v in qrels.values()) == judgments


def test_beir_qrels_tsv_equals_anserini_qrels():
    beir = load_qrels(require_shared("beir-scifact", "qrels", "test.tsv"))
    anserini = load_qrels("beir-v1.0.0-scifact-test", topics_dir=require_shared("topics-and-qrels"))
    assert beir == anserini


def test_unknown_qrels_name(tmp_path):
    with pytest.raises(UserError, match="unknown qrels name"):
        load_qrels("dl19-passages", topics_dir=tmp_path)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8")))
def test_fuzz_qrels_parse_or_user_error(tmp_path, data):
    path = tmp_path / "fuzz.qrels"
    path.write_bytes(data)
    try:
        qrels = read_qrels_file(path)
    except UserError:
        return
    assert qrels and all(isinstance(g, int) for judged in qrels.values() for g in judged.values())
