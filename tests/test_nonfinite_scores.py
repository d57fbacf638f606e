"""Non-finite scores: every reader rejects them with the line (or query and document), fusion never writes nan."""

from __future__ import annotations

import json
import math

import pytest

from pyserini_ssm.candidates import read_candidates
from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError
from pyserini_ssm.evaluation import evaluate
from pyserini_ssm.fuse import main as fuse_main
from pyserini_ssm.fusion import interpolate, min_max_normalize, score_interpolation
from pyserini_ssm.runs import read_run


@pytest.mark.parametrize("score", ["inf", "-inf", "Infinity", "-INF", "1e999"])
def test_run_reader_rejects_infinite_scores_with_the_line(tmp_path, score):
    path = tmp_path / "run.txt"
    path.write_text(f"q1 Q0 d1 1 3.0 t\nq1 Q0 d2 2 {score} t\n")
    with pytest.raises(UserError, match=rf"run.txt:2: score -?inf is not finite"):
        read_run(path)


@pytest.mark.parametrize("method", ["normalize", "interpolation", "rrf", "average"])
def test_fuse_with_an_infinite_score_is_one_error_line_and_no_output(tmp_path, capsys, method):
    good, bad, output = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "fused.txt"
    good.write_text("q1 Q0 d1 1 3.0 a\nq1 Q0 d2 2 1.0 a\n")
    bad.write_text("q1 Q0 d1 1 inf b\nq1 Q0 d2 2 1.0 b\n")
    assert run_main(fuse_main, ["--runs", str(good), str(bad), "--method", method, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:1: score inf is not finite") and err.count("\n") == 1
    assert not output.exists()


def test_huge_finite_scores_normalise_without_nan(tmp_path):
    assert min_max_normalize([-1e308, 0.0, 1e308]) == [0.0, 0.5, 1.0]
    first = tmp_path / "a.txt"
    first.write_text("q1 Q0 d1 1 1e308 a\nq1 Q0 d2 2 -1e308 a\nq1 Q0 d3 3 -1.7e308 a\n")
    second = tmp_path / "b.txt"
    second.write_text("q1 Q0 d2 1 2.0 b\nq1 Q0 d3 2 1.0 b\n")
    for method in ("normalize", "interpolation"):
        output = tmp_path / f"{method}.txt"
        assert fuse_main(["--runs", str(first), str(second), "--method", method, "--output", str(output)]) == 0
        scores = [float(line.split()[4]) for line in output.read_text().splitlines()]
        assert len(scores) == 3 and all(math.isfinite(score) for score in scores)
        assert "nan" not in output.read_text() and "inf" not in output.read_text()


def test_library_fusion_and_evaluate_reject_non_finite_dict_scores():
    finite = {"q1": {"d1": 1.0, "d2": 0.5}}
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(UserError, match="not finite"):
            score_interpolation([finite, {"q1": {"d1": bad}}], [1.0, 1.0])
        with pytest.raises(UserError, match="not finite"):
            interpolate(finite, {"q1": {"d1": bad}})
        with pytest.raises(UserError, match="score of document 'd1' for query 'q1' is"):
            evaluate({"q1": {"d1": bad}}, {"q1": {"d1": 1}})


@pytest.mark.parametrize("score", ["Infinity", "-Infinity", "1e999", "NaN"])
def test_candidates_reader_rejects_non_finite_scores(tmp_path, score):
    path = tmp_path / "candidates.json"
    hit = '{"docid": "d1", "content": "text", "qid": "q1", "score": %s}' % score
    path.write_text(f'[{{"query": "q", "hits": [{hit}]}}]')
    with pytest.raises(UserError, match="query #0 hit #0: score"):
        read_candidates(path)
    assert json.loads(path.read_text())  # the file itself is JSON that Python accepts
