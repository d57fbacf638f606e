from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserini_ssm import candidates as candidates_module
from pyserini_ssm.candidates import iter_candidates, read_candidates
from pyserini_ssm.errors import UserError
from pyserini_ssm.runs import Hit

from conftest import require_shared


def _hit(docid="d1", qid=1, score=2.0, content="text"):
    return {"docid": docid, "qid": qid, "score": score, "content": content, "rank": 1}


def _write(tmp_path, payload, name="c.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_reads_queries_and_orders_hits(tmp_path):
    path = _write(tmp_path, [{"query": "q one", "hits": [_hit("a", score=1.0), _hit("b", score=3.0)]}])
    [query] = read_candidates(path)
    assert (query.qid, query.query) == ("1", "q one")
    assert query.hits == [Hit("b", 3.0, "text"), Hit("a", 1.0, "text")]


def test_gzip_detected_by_content(tmp_path):
    path = tmp_path / "c.json"  # gzip bytes without a .gz name
    path.write_bytes(gzip.compress(json.dumps([{"query": "x", "hits": [_hit()]}]).encode()))
    assert read_candidates(path)[0].hits[0].text == "text"


@pytest.mark.parametrize(
    "payload, message",
    [
        ([{"hits": [_hit()]}], "query #0: missing key 'query'"),
        ([{"query": "x", "hits": [{"docid": "d", "qid": 1, "score": 1}]}], "query #0 hit #0: missing key 'content'"),
        ([{"query": "x", "hits": [_hit(content="  ")]}], "hit #0: document 'd1' has empty text"),
        ([{"query": "x", "hits": [_hit(score="high")]}], "hit #0: score 'high' is not a number"),
        ([{"query": "x", "hits": [_hit(score=True)]}], "not a number"),
        ([{"query": "x", "hits": [_hit(), _hit("d2", qid=2)]}], "differs"),
        ([{"query": "x", "hits": [_hit()]}, {"query": "y", "hits": [_hit()]}], "query #1: query id '1' appears twice"),
        ([{"query": "x", "hits": []}], "no query id"),
        ({"query": "x"}, "missing key 'candidates' \\(rank_llm\\) or 'hits' \\(Pyserini\\)"),  # one JSON line
        ("hello", "expected a JSON list of queries"),
        ('[{"query": "x", "hits": [', "invalid JSON|ends early"),
        ('[{"query": "x", "qid": 3, "hits": []}] trailing', "after the JSON list"),
        ("[]", "no queries"),
    ],
)
def test_bad_candidates_are_user_errors(tmp_path, payload, message):
    with pytest.raises(UserError, match=message):
        read_candidates(_write(tmp_path, payload))


def test_streaming_with_tiny_chunks_equals_whole_read(tmp_path, monkeypatch):
    records = [{"query": f"q{i}", "qid": i, "hits": [_hit(f"d{j}", qid=i, score=j * 1.5) for j in range(5)]} for i in range(7)]
    path = _write(tmp_path, json.dumps(records, indent=2))
    whole = read_candidates(path)
    monkeypatch.setattr(candidates_module, "_CHUNK", 3)
    assert list(iter_candidates(path)) == whole
    assert [c.qid for c in whole] == [str(i) for i in range(7)]


def test_shared_dl19_candidates():
    path = require_shared("msmarco-passage-dl19-bm25-top100", "retrieve_results_dl19.bm25.top100.json.gz")
    queries = read_candidates(path)
    assert len(queries) == 43
    assert all(len(q.hits) == 100 and all(h.text for h in q.hits) for q in queries)
    assert queries[0].qid == "264014" and queries[0].query == "how long is life cycle of flea"


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(max_size=200) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["query", "hits", "docid", "qid", "score", "content"]), children, max_size=6),
    max_leaves=20,
).map(lambda value: json.dumps(value).encode()))
def test_fuzz_candidates_parse_or_user_error(tmp_path, data):
    path = tmp_path / "fuzz.json"
    path.write_bytes(data)
    try:
        queries = read_candidates(path)
    except UserError:
        return
    for query in queries:
        assert query.query.strip() and all(h.text.strip() and h.score == h.score for h in query.hits)
