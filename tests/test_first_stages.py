"""The first-stage interface (`first_stages`) without Java: a candidates file behind `search` and `texts`, and the
cheap checks of the first-stage flags."""

from __future__ import annotations

import json

import pytest

from pyserini_ssm.errors import UserError
from pyserini_ssm.first_stages import CandidatesFileStage, check_first_stage_flags, open_first_stage
from pyserini_ssm.reranking import RerankConfig


def write_candidates(path, queries):
    path.write_text("".join(json.dumps({"query": {"qid": qid, "text": text}, "candidates": [
        {"docid": docid, "score": score, "doc": {"contents": body}} for docid, score, body in hits]}) + "\n"
        for qid, text, hits in queries))
    return path


QUERIES = [("q1", "first query", [("d1", 3.0, "one"), ("d2", 2.0, "two"), ("d3", 1.0, "three")]),
           ("q2", "second query", [("d2", 5.0, "two"), ("d4", 4.0, "four")])]


def test_a_candidates_file_behind_the_interface(tmp_path):
    path = write_candidates(tmp_path / "c.jsonl", QUERIES)
    stage = open_first_stage("candidates", RerankConfig(model="m", candidates=str(path)))
    assert isinstance(stage, CandidatesFileStage) and stage.name == "candidates"
    topics = stage.topics()
    assert topics == {"q1": "first query", "q2": "second query"}
    results = stage.search(topics)
    assert {qid: [(h.docid, h.score, h.text) for h in hits] for qid, hits in results.items()} == {
        "q1": [("d1", 3.0, None), ("d2", 2.0, None), ("d3", 1.0, None)], "q2": [("d2", 5.0, None), ("d4", 4.0, None)]}
    assert list(stage.texts(iter([("q1", ["d1", "d2"]), ("q2", ["d4"])]))) == [{"d1": "one", "d2": "two"},
                                                                              {"d4": "four"}]
    assert list(stage.texts([("q2", [])])) == [{}]


def test_a_candidates_file_that_changed_while_reranking_is_one_user_error(tmp_path):
    path = write_candidates(tmp_path / "c.jsonl", QUERIES)
    stage = CandidatesFileStage(str(path))
    stage.search(stage.topics())
    write_candidates(path, [QUERIES[0]])  # q2 is gone
    with pytest.raises(UserError, match="changed while reranking .query q2 is gone"):
        list(stage.texts([("q1", ["d1"]), ("q2", ["d2"])]))
    write_candidates(path, [("q1", "first query", [("d9", 1.0, "nine")])])
    with pytest.raises(UserError, match="changed while reranking .query q1"):
        list(stage.texts([("q1", ["d1"])]))


@pytest.mark.parametrize("flags, message", [
    (("sparse", None, "interpolation", 0.5, 60), "unknown --first-stage 'sparse'"),
    (("dense", None, "interpolation", 0.5, 60), "--first-stage dense needs --dense-index"),
    (("bm25", "dense-index", "interpolation", 0.5, 60), "--dense-index is for --first-stage dense or hybrid"),
    (("hybrid", "x", "max", 0.5, 60), "unknown --fusion 'max'"),
    (("hybrid", "x", "interpolation", 1.5, 60), r"--alpha must be in \[0, 1\]"),
    (("hybrid", "x", "rrf", 0.5, 0), "--rrf-k must be a positive integer"),
])
def test_first_stage_flags_are_checked_before_anything_opens(flags, message):
    with pytest.raises(UserError, match=message):
        check_first_stage_flags(*flags)


def test_a_dense_index_path_is_checked_before_anything_opens(tmp_path):
    with pytest.raises(UserError, match="--dense-index folder not found"):
        check_first_stage_flags("dense", str(tmp_path / "nothing"), "interpolation", 0.5, 60)
    with pytest.raises(UserError, match="is not a dense index folder"):
        check_first_stage_flags("dense", str(tmp_path), "interpolation", 0.5, 60)
    (tmp_path / "index").write_bytes(b"")
    (tmp_path / "docid").write_text("d1\n")
    check_first_stage_flags("hybrid", str(tmp_path), "rrf", 0.5, 60)  # a folder with both files passes
    check_first_stage_flags("dense", "msmarco-v1-passage.tct_colbert-v2-hnp", "interpolation", 0.5, 60)  # a name


def test_an_unknown_stage_name_is_a_user_error():
    with pytest.raises(UserError, match="unknown first stage 'bm26'"):
        open_first_stage("bm26", RerankConfig(model="m"))
