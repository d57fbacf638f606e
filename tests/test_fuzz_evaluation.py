"""Fuzz (hypothesis): metric names over random runs and qrels, and the run/qrels/topics/candidates readers over
generated files. Every input ends in a clean UserError or in a result equal to an independent reference: pytrec_eval
called directly with trec_eval's options for metrics, a plain reading of the format for the readers."""

from __future__ import annotations

import json
import math

import pytest
import pytrec_eval
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserini_ssm.candidates import read_candidates
from pyserini_ssm.errors import UserError
from pyserini_ssm.evaluation import evaluate
from pyserini_ssm.leaderboard import DatasetRuns, leaderboard_table
from pyserini_ssm.qrels import read_qrels_file
from pyserini_ssm.runs import read_run, run_as_dict
from pyserini_ssm.topics import read_topics_file

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------------------------------------- metric names

# (ir_measures name, trec_eval name, pytrec_eval measure for cutoff k (None: no cutoff form), without a cutoff,
#  whether the cutoff is applied by cutting the run (trec_eval -M), whether it is graded (ignores -l))
FAMILIES = [
    ("P", "P", "P_{k}", None, False, False),
    ("R", "recall", "recall_{k}", None, False, False),
    ("nDCG", "ndcg_cut", "ndcg_cut_{k}", "ndcg", False, True),
    ("AP", "map_cut", "map_cut_{k}", "map", False, False),
    ("RR", None, "recip_rank", "recip_rank", True, False),
    ("Success", "success", "success_{k}", None, False, False),
    ("Rprec", "Rprec", None, "Rprec", False, False),
    ("Bpref", "bpref", None, "bpref", False, False),
]
CUTOFFS = [1, 2, 3, 5, 10, 100]


def random_case(draw, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(name, flips))


@st.composite
def metric_names(draw):
    """(name, oracle or None): the oracle is (pytrec_eval measure, relevance level or None for the run's, depth);
    None when the name must be refused."""
    ir_name, trec_base, with_cutoff, without_cutoff, cut_by_run, graded = draw(st.sampled_from(FAMILIES))
    cutoff = draw(st.none() | st.sampled_from(CUTOFFS) | st.integers(-2, 0))
    rel = draw(st.none() | st.integers(0, 3))
    syntax = draw(st.sampled_from(["ir", "trec"]))
    if syntax == "trec":
        if cutoff is None:
            if without_cutoff is None:
                return trec_base, None  # a family (P, recall, success): refused
            return without_cutoff, (without_cutoff, None, None)
        if cutoff < 1:
            return f"{trec_base or without_cutoff}_{cutoff}", None
        if cut_by_run:
            return f"{without_cutoff}@{cutoff}", (without_cutoff, None, cutoff)
        if with_cutoff is None:
            return f"{without_cutoff}_{cutoff}", None  # Rprec_5: no such measure
        return with_cutoff.format(k=cutoff), (with_cutoff.format(k=cutoff), None, None)
    name = random_case(draw, ir_name)
    text = name + (f"(rel={rel})" if rel is not None else "") + (f"@{cutoff}" if cutoff is not None else "")
    if (rel is not None and (rel < 1 or graded)) or (cutoff is not None and cutoff < 1):
        return text, None  # rel=0, nDCG(rel=...), P@0: refused
    if cutoff is not None and with_cutoff is None and not cut_by_run:
        return text, None  # Rprec@10: no such measure
    if cutoff is None and without_cutoff is None:
        return text, None  # P, R, Success without a cutoff
    if cut_by_run:
        return text, (without_cutoff, rel, cutoff)
    measure = with_cutoff.format(k=cutoff) if cutoff is not None else without_cutoff
    return text, (measure, None if graded else rel, None)


token = st.text("abcdef0123", min_size=1, max_size=3)


@st.composite
def run_and_qrels(draw):
    """Qrels, and a run over some of their queries (and maybe an unjudged one) retrieving judged and other
    documents, with tied scores often."""
    qrels = draw(st.dictionaries(token, st.dictionaries(token, st.integers(0, 3), min_size=1, max_size=5),
                                 min_size=1, max_size=4))
    qids = draw(st.lists(st.sampled_from(sorted(qrels)) | token, min_size=1, max_size=4, unique=True))
    judged_docs = sorted({docid for judged in qrels.values() for docid in judged})
    score = st.sampled_from([0.0, 0.5, 1.0, 2.5, -1.0]) | st.floats(-10, 10)
    run = {qid: draw(st.dictionaries(st.sampled_from(judged_docs) | token, score, min_size=1, max_size=6))
           for qid in qids}
    return run, qrels


def trec_order_cut(run, depth):
    """The top `depth` of each query in trec_eval's order (score descending, docid descending), written out here."""
    return {qid: dict(sorted(scores.items(), key=lambda item: (-item[1], tuple(-ord(c) for c in item[0])))[:depth])
            for qid, scores in run.items()}


def oracle_values(run, qrels, measure, level, depth):
    ranked = {qid: scores for qid, scores in run.items() if qid in qrels}
    if depth is not None:
        ranked = trec_order_cut(ranked, depth)
    results = pytrec_eval.RelevanceEvaluator(qrels, {measure}, relevance_level=level).evaluate(ranked)
    return {qid: results.get(qid, {}).get(measure, 0.0) for qid in qrels}


@FUZZ
@given(metric_names(), run_and_qrels(), st.sampled_from(["none", "dl", "beir"]))
def test_fuzz_metric_names_error_or_pytrec_eval(named, data, convention):
    name, oracle = named
    run, qrels = data
    try:
        result = evaluate(run, qrels, [name], per_query=True, convention=convention)
    except UserError as error:
        if "no query in common" in str(error):
            return
        assert oracle is None, f"{name!r} refused: {error}"
        return
    assert oracle is not None, f"{name!r} accepted as {dict(result)}"
    measure, rel, depth = oracle
    level = rel if rel is not None else (2 if convention == "dl" else 1)
    expected = oracle_values(run, qrels, measure, level, depth)
    (key,) = result
    assert {qid: values[key] for qid, values in result.per_query.items()} == pytest.approx(expected, abs=1e-12)
    assert result[key] == pytest.approx(math.fsum(expected.values()) / len(expected), abs=1e-12)


@FUZZ
@given(st.text(max_size=20))
def test_fuzz_any_text_as_a_metric_is_an_error_or_a_finite_value(name):
    qrels = {"1": {"a": 1, "b": 0}, "2": {"c": 2}}
    run = {"1": {"a": 1.0, "b": 2.0}, "2": {"c": 1.0, "x": 1.0}}
    try:
        result = evaluate(run, qrels, [name])
    except UserError as error:
        assert str(error)
        return
    assert all(math.isfinite(value) for value in result.values())


@FUZZ
@given(metric_names(), run_and_qrels())
def test_fuzz_leaderboard_metric_names(named, data):
    name, oracle = named
    run, qrels = data
    dataset = DatasetRuns("toy", qrels, {"base": run, "same": run})
    try:
        board = leaderboard_table([dataset], metrics=[name], convention="none")
    except UserError as error:
        assert oracle is None or "no query in common" in str(error), f"{name!r} refused: {error}"
        return
    assert oracle is not None
    measure, rel, depth = oracle
    expected = oracle_values(run, qrels, measure, rel or 1, depth)
    (metric,) = board.metrics["toy"]
    assert board.cell("toy", "base", metric).value == pytest.approx(math.fsum(expected.values()) / len(expected))
    assert board.cell("toy", "same", metric).ties == len(qrels)


# ---------------------------------------------------------------------------------------------- readers

id_text = st.text("ab1_-.", min_size=1, max_size=3)
score_text = st.sampled_from(["1", "2.5", "-0.5", ".5", "3.", "1e2", "1E-2", "+4", "inf", "-inf", "nan", "NaN",
                              "1_0", "\u0661", "0x1", "1e", "", "abc", "1,5"])


@st.composite
def run_lines(draw):
    lines = draw(st.lists(st.tuples(id_text, st.sampled_from(["Q0", "q0", "0"]), id_text, st.integers(-1, 5),
                                    score_text, st.sampled_from(["t", "tag"]),
                                    st.sampled_from([" ", "\t", "  "])), max_size=8))
    return [sep.join([qid, q0, docid, str(rank), score, tag]) for qid, q0, docid, rank, score, tag, sep in lines]


def reference_run(lines):
    """The plain reading, strict: six columns, an ASCII decimal finite score on every line; a (qid, docid) seen again
    keeps its first line (the project's one duplicate policy, `runs.warn_duplicates`)."""
    run: dict[str, dict[str, float]] = {}
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            return None
        qid, _, docid, _, score, _ = fields
        if not score or any(c not in "0123456789.eE+-" for c in score) or "_" in score:
            return None
        try:
            value = float(score)
        except ValueError:
            return None
        if not math.isfinite(value):
            return None
        run.setdefault(qid, {}).setdefault(docid, value)
    return run or None


@FUZZ
@given(run_lines())
def test_fuzz_run_reader_error_or_the_plain_reading(tmp_path, lines):
    path = tmp_path / "run.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = reference_run(lines)
    try:
        got = run_as_dict(read_run(path))
    except UserError as error:
        assert expected is None, f"refused {lines}: {error}"
        assert str(error).startswith(str(path))
        return
    assert got == expected
    # and evaluating it is evaluating the plain reading with pytrec_eval
    qrels = {qid: {docid: 1 for docid in list(scores)[:1]} for qid, scores in expected.items()}
    result = evaluate(got, qrels, ["map"], convention="none")
    direct = oracle_values(expected, qrels, "map", 1, None)
    assert result["map"] == pytest.approx(math.fsum(direct.values()) / len(direct))


grade_text = st.sampled_from(["0", "1", "2", "-1", "+1", "1.0", "1_0", "\u0662", "x", ""])


@FUZZ
@given(st.lists(st.tuples(id_text, st.sampled_from(["0", "Q0"]), id_text, grade_text), max_size=8))
def test_fuzz_qrels_reader_error_or_the_plain_reading(tmp_path, rows):
    path = tmp_path / "qrels.txt"
    path.write_text("".join(f"{q} {i} {d} {g}\n" for q, i, d, g in rows), encoding="utf-8")
    expected: dict[str, dict[str, int]] | None = {}
    for qid, _, docid, grade in rows:
        if not grade or not (grade.lstrip("+-").isascii() and grade.lstrip("+-").isdigit()) or \
                docid in expected.get(qid, {}):
            expected = None
            break
        expected.setdefault(qid, {})[docid] = int(grade)
    try:
        got = read_qrels_file(path)
    except UserError as error:
        assert expected is None or not expected, f"refused {rows}: {error}"
        return
    assert got == expected


@FUZZ
@given(st.lists(st.tuples(st.text("ab1 ", min_size=0, max_size=3), st.text("xy z\u00a0", max_size=6)), max_size=5))
def test_fuzz_topics_reader_error_or_the_plain_reading(tmp_path, rows):
    path = tmp_path / "topics.tsv"
    path.write_text("".join(f"{qid}\t{query}\n" for qid, query in rows), encoding="utf-8")
    try:
        topics = read_topics_file(path)
    except UserError as error:
        assert str(error).startswith(str(path))
        return
    # every topic read is a line of the file, its id a single token and its text non-empty
    assert topics and all(qid and not any(c.isspace() for c in qid) and text for qid, text in topics.items())
    assert set(topics) <= {qid.strip() for qid, _ in rows}


hit_score = st.sampled_from([1, 2.5, -3, 0, 1e308, True, None, "1", [1]]) | st.sampled_from(
    ["Infinity", "-Infinity", "NaN", "1e999"]).map(lambda text: json.loads(text))


@FUZZ
@given(st.lists(st.lists(st.tuples(st.sampled_from(["d1", "d2", "d3"]), hit_score), max_size=3), min_size=1,
                max_size=3))
def test_fuzz_candidates_reader_error_or_the_plain_reading(tmp_path, queries):
    records = [{"query": "a query", "hits": [{"docid": docid, "content": "text", "qid": f"q{index}", "score": score}
                                             for docid, score in hits]} for index, hits in enumerate(queries)]
    path = tmp_path / "candidates.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    try:
        parsed = read_candidates(path)
    except UserError:
        return
    for record, query in zip(records, parsed):
        scores: dict = {}
        for hit in record["hits"]:  # a docid seen again keeps its first hit (runs.warn_duplicates)
            scores.setdefault(hit["docid"], hit["score"])
        assert all(isinstance(hit["score"], (int, float)) and not isinstance(hit["score"], bool)
                   and math.isfinite(hit["score"]) for hit in record["hits"])  # every hit's score was checked
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in scores.values())
        assert {hit.docid: hit.score for hit in query.hits} == scores
