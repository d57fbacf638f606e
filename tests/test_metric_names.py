"""Metric names (ir_measures' and trec_eval's), 2CR conventions and count measures: each name is one computation,
checked against pytrec_eval called directly with trec_eval's options; any other name is a clean error."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import pytrec_eval

from conftest import require_shared
from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError
from pyserini_ssm.evaluate import main as evaluate_main
from pyserini_ssm.evaluation import CONVENTIONS, cut_run, evaluate, parse_metric, resolve_convention
from pyserini_ssm.leaderboard import main as leaderboard_main
from pyserini_ssm.qrels import read_qrels_file
from pyserini_ssm.runs import Hit, read_run, run_as_dict, write_run

DL19_RUN = ("msmarco-passage-dl19-bm25-top100", "run.dl19-passage.bm25.top100.txt.gz")


@pytest.fixture(scope="module")
def dl19():
    run_path = require_shared(*DL19_RUN)
    qrels_path = require_shared("topics-and-qrels", "qrels.dl19-passage.txt")
    return run_path, qrels_path, run_as_dict(read_run(run_path)), read_qrels_file(qrels_path)


def pytrec(run, qrels, measure, level=1, depth=None):
    """Mean of one pytrec_eval measure as `trec_eval -c -l level [-M depth]` computes it (every run query judged)."""
    ranked = run if depth is None else cut_run(run, depth)
    results = pytrec_eval.RelevanceEvaluator(qrels, {measure}, relevance_level=level).evaluate(ranked)
    values = [results.get(qid, {}).get(measure.replace(".", "_"), 0.0) for qid in qrels]
    return math.fsum(values) / len(values), [results[qid][measure.replace(".", "_")] for qid in sorted(results)]


def cli_json(capsys, argv):
    assert run_main(evaluate_main, argv + ["--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_p_at_10_is_trec_evals_p_10_at_the_dl_level(dl19, capsys):
    run_path, qrels_path, run, qrels = dl19
    expected, _ = pytrec(run, qrels, "P_10", level=2)
    assert round(expected, 4) == 0.4116  # the figure, computed here
    values, err = cli_json(capsys, ["--run", str(run_path), "--qrels", str(qrels_path), "--metrics", "P@10"])
    assert values == {"P@10": expected}
    assert cli_json(capsys, ["--run", str(run_path), "--qrels", str(qrels_path), "--metrics", "P_10"])[0] == {
        "P_10": expected}
    assert "trec-dl-passage convention, relevance level 2" in err and "P@10 = P(rel=2)@10" in err


@pytest.mark.parametrize("name", ["nDCG@10", "ndcg@10", "NDCG@10", "ndcg_cut_10", "ndcg_cut.10"])
def test_every_spelling_of_ndcg_at_10_is_ndcg_cut_10(dl19, name):
    _, _, run, qrels = dl19
    expected, _ = pytrec(run, qrels, "ndcg_cut_10")
    assert round(expected, 4) == 0.5058  # README / SOURCE.md
    result = evaluate(run, qrels, [name], collection_hint="dl19-passage")
    assert list(result.values()) == [expected]
    # not trec_eval's -M 10 -m ndcg (ideal ranking over every relevant document), which the old parser gave
    assert expected != pytest.approx(pytrec(run, qrels, "ndcg", depth=10)[0], abs=1e-3)


# name -> (pytrec_eval measure, relevance level under the DL convention, trec_eval -M depth)
DL_EQUIVALENTS = {
    "P@10": ("P_10", 2, None),
    "P_10": ("P_10", 2, None),
    "R@100": ("recall_100", 2, None),
    "recall_100": ("recall_100", 2, None),
    "recall@100": ("recall_100", 2, None),
    "RR@10": ("recip_rank", 2, 10),
    "recip_rank@10": ("recip_rank", 2, 10),
    "recip_rank": ("recip_rank", 2, None),
    "MRR@10": ("recip_rank", 2, 10),
    "AP": ("map", 2, None),
    "map": ("map", 2, None),
    "AP(rel=2)": ("map", 2, None),
    "AP(rel=1)": ("map", 1, None),
    "AP@100": ("map_cut_100", 2, None),
    "map_cut_100": ("map_cut_100", 2, None),
    "nDCG": ("ndcg", 1, None),
    "Rprec": ("Rprec", 2, None),
    "bpref": ("bpref", 2, None),
    "success_10": ("success_10", 2, None),
    "Success@10": ("success_10", 2, None),
}


@pytest.mark.parametrize("name", DL_EQUIVALENTS)
def test_names_map_to_one_pytrec_eval_computation_per_query(dl19, name):
    _, _, run, qrels = dl19
    measure, level, depth = DL_EQUIVALENTS[name]
    mean, _ = pytrec(run, qrels, measure, level=level, depth=depth)
    ranked = run if depth is None else cut_run(run, depth)
    direct = pytrec_eval.RelevanceEvaluator(qrels, {measure}, relevance_level=level).evaluate(ranked)
    result = evaluate(run, qrels, [name], convention="dl", per_query=True)
    (key,) = result
    assert result[key] == pytest.approx(mean, abs=1e-12)
    assert {qid: values[key] for qid, values in result.per_query.items()} == pytest.approx(
        {qid: direct[qid][measure] for qid in direct}, abs=1e-12)


def test_judged_at_10_is_the_judged_share_of_the_top_10_in_trec_evals_order(dl19):
    _, _, run, qrels = dl19
    top10 = cut_run(run, 10)
    expected = math.fsum(sum(d in qrels[q] for d in docs) / len(docs) for q, docs in top10.items()) / len(qrels)
    assert evaluate(run, qrels, ["judged@10"])["Judged@10"] == pytest.approx(expected)
    # ties at the cut: trec_eval keeps the larger docid, so "b" (judged) stays in the top 1 and "a" (unjudged) not
    assert evaluate({"q": {"a": 1.0, "b": 1.0}}, {"q": {"b": 0}}, ["Judged@1"])["Judged@1"] == 1.0


def test_count_measures_are_summed_like_trec_eval(dl19, capsys):
    run_path, qrels_path, run, qrels = dl19
    _, per_query_rel = pytrec(run, qrels, "num_rel", level=2)
    _, per_query_ret = pytrec(run, qrels, "num_ret", level=2)
    _, per_query_rel_ret = pytrec(run, qrels, "num_rel_ret", level=2)
    result = evaluate(run, qrels, ["num_rel", "num_ret", "num_rel_ret", "num_q", "NumRel(rel=1)"],
                      collection_hint="dl19-passage")
    assert result["num_rel"] == sum(per_query_rel) == 2501
    assert result["num_ret"] == sum(per_query_ret) == 4300
    assert result["num_rel_ret"] == sum(per_query_rel_ret)
    assert result["num_q"] == 43
    assert result["NumRel(rel=1)"] == sum(grade >= 1 for judged in qrels.values() for grade in judged.values())
    assert run_main(evaluate_main, ["--run", str(run_path), "--qrels", str(qrels_path), "--metrics", "num_rel",
                                    "num_ret"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["num_rel             \tall\t2501", "num_ret             \tall\t4300"]


def test_count_measures_under_c_keep_the_relevant_documents_of_missing_queries():
    qrels = {"1": {"a": 1, "b": 1}, "2": {"c": 1, "d": 0}}
    run = {"1": {"a": 1.0}}  # query 2 judged but not retrieved: counts its relevant document, retrieves none
    result = evaluate(run, qrels, ["num_rel", "num_ret", "num_q", "map"])
    assert (result["num_rel"], result["num_ret"], result["num_q"]) == (3, 1, 2)
    assert result["map"] == pytest.approx(0.25)  # (1/2 + 0) / 2


def test_nist_file_name_and_explicit_convention_give_map_at_level_two(dl19, tmp_path, capsys):
    run_path, qrels_path, run, qrels = dl19
    at_two, _ = pytrec(run, qrels, "map", level=2)
    at_one, _ = pytrec(run, qrels, "map", level=1)
    assert (round(at_two, 4), round(at_one, 4)) == (0.2476, 0.2993)
    nist = tmp_path / "2019qrels-pass.txt"
    plain = tmp_path / "judgments.txt"
    shutil.copy(qrels_path, nist)
    shutil.copy(qrels_path, plain)
    base = ["--run", str(run_path), "--metrics", "map"]
    assert cli_json(capsys, base + ["--qrels", str(nist), "--convention", "dl"])[0] == {"map": at_two}
    values, err = cli_json(capsys, base + ["--qrels", str(nist)])  # NIST's name is recognised as DL19
    assert values == {"map": at_two} and "trec-dl-passage" in err and "guessed" in err
    values, err = cli_json(capsys, base + ["--qrels", str(plain)])  # a name that says nothing: level 1
    assert values == {"map": at_one} and err.startswith("# default convention, relevance level 1")
    values, err = cli_json(capsys, base + ["--qrels", str(plain), "--convention", "dl"])
    assert values == {"map": at_two} and "guessed" not in err
    assert cli_json(capsys, base + ["--qrels", str(nist), "--convention", "none"])[0] == {"map": at_one}


@pytest.mark.parametrize("hint, name", [("2019qrels-pass.txt", "trec-dl-passage"),
                                        ("2020qrels-pass.txt", "trec-dl-passage"),
                                        ("2021.qrels.pass.final.txt", "trec-dl-passage-v2"),
                                        ("2019qrels-docs.txt", "trec-dl-doc"),
                                        ("qrels.dev.small.tsv", "msmarco-dev"),
                                        ("qrels.dev.tsv", "msmarco-dev")])
def test_official_file_names_are_recognised(hint, name):
    assert resolve_convention(None, hint).name == name == resolve_convention("auto", hint).name


def test_msmarco_dev_convention_cuts_mrr_at_10():
    qrels = {"1": {"rel": 1}}
    run = {"1": {**{f"d{i:02d}": 100.0 - i for i in range(10)}, "rel": 50.0}}  # relevant document at rank 11
    assert evaluate(run, qrels, collection_hint="qrels.dev.small.tsv")["recip_rank"] == 0.0
    assert evaluate(run, qrels, ["RR"], convention="msmarco-dev")["RR"] == 0.0  # the convention's depth: MRR@10
    assert evaluate(run, qrels, ["RR@11"], convention="msmarco-dev")["RR@11"] == pytest.approx(1 / 11)
    assert evaluate(run, qrels, ["RR"], convention="none")["RR"] == pytest.approx(1 / 11)


def test_two_names_of_one_computation_and_bad_conventions_are_errors():
    qrels, run = {"1": {"a": 1}}, {"1": {"a": 1.0}}
    with pytest.raises(UserError, match="asked for twice: 'nDCG@10' and 'ndcg_cut_10'"):
        evaluate(run, qrels, ["nDCG@10", "ndcg_cut_10"])
    with pytest.raises(UserError, match="asked for twice"):
        evaluate(run, qrels, ["recip_rank", "RR"], convention="msmarco-dev")
    with pytest.raises(UserError, match="unknown convention 'dll'; choose one of auto, dl, "):
        evaluate(run, qrels, convention="dll")


BAD_NAMES = {
    "P": "names 9 measures",
    "recall": "names 9 measures",
    "ndcg_cut": "names 9 measures",
    "official": "unknown metric",
    "R": "needs a cutoff",
    "bogus": "unknown metric",
    "P_10abc": "unknown metric",
    "P_10@5": "has a cutoff already",
    "P@0": "positive integer",
    "P@10.5": "unknown metric",
    "AP(rel=0)": "positive integer",
    "ERR@20": "pytrec_eval does not compute",
    "nDCG(dcg='exp-log2')@10": "pytrec_eval does not compute",
    "ndcg_at_ten": "unknown metric",
    "": "unknown metric",
    "__import__('os')": "unknown metric",
}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_other_names_are_rejected_with_the_valid_forms(name):
    with pytest.raises(UserError, match=BAD_NAMES[name]) as error:
        parse_metric(name, CONVENTIONS["default"])
    if "unknown metric" in str(error.value):
        assert "valid: ir_measures names (nDCG@10, P@10" in str(error.value) and "trec_eval names" in str(error.value)


def test_cli_rejects_a_bad_name_before_reading_the_run(tmp_path, capsys):
    argv = ["--run", str(tmp_path / "missing.txt"), "--qrels", str(tmp_path / "missing-qrels.txt"), "--metrics", "P"]
    assert run_main(evaluate_main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: metric 'P' names 9 measures") and err.count("\n") == 1
    assert run_main(leaderboard_main, [str(tmp_path / "missing.txt"), "--qrels", "x.txt", "--metrics", "P@1O"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown metric 'P@1O'")


def test_leaderboard_p_at_10_and_counts(dl19, tmp_path):
    run_path, qrels_path, run, qrels = dl19
    hits = read_run(run_path)
    # ranks 11-20 moved to the top: a different P@10 on most queries
    swapped = {qid: [Hit(h.docid, float(100 - i)) for i, h in enumerate(ranked[10:20] + ranked[:10] + ranked[20:])]
               for qid, ranked in hits.items()}
    other = tmp_path / "run.other.txt"
    write_run(swapped, other, "other")
    plain = tmp_path / "judgments.txt"
    shutil.copy(qrels_path, plain)
    output = tmp_path / "table.md"
    assert leaderboard_main([f"bm25={run_path}", f"other={other}", "--qrels", str(plain), "--convention", "dl",
                             "--metrics", "P@10", "num_rel", "--output", str(output)]) == 0
    lines = output.read_text().splitlines()
    p10, base = pytrec(run, qrels, "P_10", level=2)
    other_p10, changed = pytrec(run_as_dict(read_run(other)), qrels, "P_10", level=2)
    wins = sum(o > b for o, b in zip(changed, base))
    losses = sum(o < b for o, b in zip(changed, base))
    assert 0 < losses and wins + losses < 43
    assert lines[0] == "| run | P@10 | num_rel | W/T/L (P@10) |"
    assert lines[2] == f"| bm25 | {p10:.4f} | 2501 | baseline |" == "| bm25 | 0.4116 | 2501 | baseline |"
    assert lines[3].startswith(f"| other | {other_p10:.4f}") and lines[3].endswith(
        f"| 2501 | {wins}/{43 - wins - losses}/{losses} |")
    assert lines[-1] == ("Metrics on judgments: trec-dl-passage convention, relevance level 2, 43 judged queries; "
                         "P@10 = P(rel=2)@10, num_rel = NumRel(rel=2).")
