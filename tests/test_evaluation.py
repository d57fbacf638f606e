from __future__ import annotations

import pytest

from pyserini_ssm.errors import UserError
from pyserini_ssm.evaluation import convention_for, cut_run, evaluate
from pyserini_ssm.qrels import load_qrels
from pyserini_ssm.runs import read_run, run_as_dict

from conftest import require_shared


def _dl19():
    run = run_as_dict(read_run(require_shared("msmarco-passage-dl19-bm25-top100", "run.dl19-passage.bm25.top100.txt.gz")))
    return run, load_qrels("dl19-passage", topics_dir=require_shared("topics-and-qrels"))


def test_dl19_bm25_matches_pyserini_and_source_md():
    run, qrels = _dl19()
    result = evaluate(run, qrels, collection_hint="dl19-passage")
    assert result.convention == "trec-dl-passage" and result.relevance_level == 2 and result.num_queries == 43
    assert round(result["ndcg_cut_10"], 4) == 0.5058
    assert list(result) == ["ndcg_cut_10", "map", "recall_1000"]
    # SOURCE.md's MAP@100 and R@100 are plain pytrec_eval values (relevance level 1).
    plain = evaluate(run, qrels, ["map", "recall_100"], relevance_level=1)
    assert round(plain["map"], 4) == 0.2993 and round(plain["recall_100"], 4) == 0.4531
    # At Pyserini's DL level 2 the same run scores lower on binary measures.
    assert result["map"] < plain["map"]


def test_anserini_scifact_run_gives_published_flat_numbers():
    run = run_as_dict(read_run(require_shared("beir-scifact", "run.beir-v1.0.0-scifact.test.bm25-flat.anserini-0.21.0.txt.gz")))
    qrels = load_qrels("beir-v1.0.0-scifact-test", topics_dir=require_shared("topics-and-qrels"))
    result = evaluate(run, qrels, collection_hint="beir-v1.0.0-scifact-test", per_query=True)
    assert {k: round(v, 4) for k, v in result.items()} == {"ndcg_cut_10": 0.6789, "recall_100": 0.9253, "recall_1000": 0.9767}
    assert len(result.per_query) == 300
    assert round(evaluate(run, qrels, ["map"])["map"], 4) == 0.6401


def test_judged_queries_only_and_missing_ones_count_zero():
    qrels = {"1": {"a": 1}, "2": {"b": 1}}
    run = {"1": {"a": 2.0, "x": 1.0}, "99": {"a": 1.0}}  # 99 unjudged: dropped; 2 missing: scores 0
    result = evaluate(run, qrels, ["recip_rank", "map"], per_query=True)
    assert result.num_queries == 2
    assert result["recip_rank"] == pytest.approx(0.5)
    assert result.per_query["2"] == {"recip_rank": 0.0, "map": 0.0}


def test_msmarco_dev_mrr_is_cut_at_10():
    qrels = {"1": {"rel": 1}}
    run = {"1": {**{f"d{i:02d}": 100.0 - i for i in range(10)}, "rel": 50.0}}  # relevant doc at rank 11
    assert evaluate(run, qrels, collection_hint="msmarco-passage-dev-subset")["recip_rank"] == 0.0
    assert evaluate(run, qrels, ["recip_rank"])["recip_rank"] == pytest.approx(1 / 11)
    assert evaluate(run, qrels, ["recip_rank@11"])["recip_rank@11"] == pytest.approx(1 / 11)


def test_cut_run_breaks_ties_like_trec_eval():
    # trec_eval orders equal scores by docid descending, so the cut keeps "b" over "a".
    assert cut_run({"1": {"a": 1.0, "b": 1.0, "c": 2.0}}, 2) == {"1": {"c": 2.0, "b": 1.0}}


def test_relevance_level_two_for_dl():
    qrels = {"1": {"a": 1, "b": 2}}
    run = {"1": {"a": 2.0, "b": 1.0}}
    assert evaluate(run, qrels, ["map"], collection_hint="qrels.dl20-passage.txt")["map"] == pytest.approx(0.5)
    assert evaluate(run, qrels, ["map"])["map"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "hint, name",
    [
        ("dl19-passage", "trec-dl-passage"),
        ("dl20", "trec-dl-passage"),
        ("../x/qrels.dl20-passage.txt", "trec-dl-passage"),
        ("dl19-doc", "trec-dl-doc"),
        ("msmarco-passage-dev-subset", "msmarco-dev"),
        ("qrels.msmarco-passage.dev-subset.txt", "msmarco-dev"),
        ("beir-v1.0.0-scifact-test", "beir"),
        ("my-qrels.txt", "default"),
        (None, "default"),
    ],
)
def test_convention_for(hint, name):
    assert convention_for(hint).name == name


def test_no_common_query_and_bad_metric():
    with pytest.raises(UserError, match="no query in common"):
        evaluate({"1": {"a": 1.0}}, {"2": {"a": 1}})
    with pytest.raises(UserError, match="unknown metric"):
        evaluate({"1": {"a": 1.0}}, {"1": {"a": 1}}, ["ndcg_at_ten"])
