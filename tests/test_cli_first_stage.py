from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyserini_ssm import evaluate as evaluate_cli
from pyserini_ssm import index as index_cli
from pyserini_ssm import search as search_cli
from pyserini_ssm.cli import run_main

from conftest import REPO_ROOT, require_shared
from scifact_index import scifact_index_dir


def _error_line(capsys, main, argv) -> str:
    assert run_main(main, argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_cli_modules_import_no_java_or_torch():
    code = (
        "import sys, pyserini_ssm.index, pyserini_ssm.search, pyserini_ssm.evaluate;"
        "heavy = [m for m in ('pyserini', 'jnius', 'torch', 'transformers', 'pytrec_eval') if m in sys.modules];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.java
def test_scifact_index_search_evaluate_acceptance(tmp_path, capsys):
    index_dir = scifact_index_dir()
    run = tmp_path / "scifact.bm25.txt"
    folder = str(require_shared("topics-and-qrels"))
    argv = ["--index", str(index_dir), "--topics", "beir-v1.0.0-scifact-test", "--topics-dir", folder, "--output", str(run)]
    assert search_cli.main(argv + ["--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "k1=0.9 b=0.4" in out and "remove_query=on" in out
    first = run.read_text().splitlines()[0].split()
    assert first[:4] == ["1", "Q0", "10608397", "1"] and first[5] == "bm25_k1=0.9_b=0.4"
    assert evaluate_cli.main(["--run", str(run), "--qrels", "beir-v1.0.0-scifact-test", "--topics-dir", folder, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert round(scores["ndcg_cut_10"], 4) == 0.6789 and round(scores["recall_100"], 4) == 0.9253


def test_evaluate_cli_dl19_text_and_per_query(capsys):
    run = str(require_shared("msmarco-passage-dl19-bm25-top100", "run.dl19-passage.bm25.top100.txt.gz"))
    folder = str(require_shared("topics-and-qrels"))
    assert evaluate_cli.main(["--run", run, "--qrels", "dl19-passage", "--topics-dir", folder, "--per-query"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "ndcg_cut_10         \tall\t0.5058" in lines
    assert sum(1 for line in lines if line.startswith("ndcg_cut_10") and "\tall\t" not in line) == 43
    assert evaluate_cli.main(["--run", run, "--qrels", "dl19-passage", "--topics-dir", folder, "--json",
                              "--metrics", "map", "recall_100", "--relevance-level", "1"]) == 0
    assert {k: round(v, 4) for k, v in json.loads(capsys.readouterr().out).items()} == {"map": 0.2993, "recall_100": 0.4531}


@pytest.fixture()
def tiny(tmp_path):
    topics = tmp_path / "topics.tsv"
    topics.write_text("1\tapples\n")
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("1 0 d1 1\n")
    run = tmp_path / "run.txt"
    run.write_text("1 Q0 d1 1 2.0 t\n")
    return tmp_path, topics, qrels, run


def test_bad_inputs_exit_2_with_one_line(tiny, capsys):
    folder, topics, qrels, run = tiny
    out = folder / "out.txt"
    search = lambda *extra: ["--topics", str(topics), "--output", str(out), *extra]  # noqa: E731
    assert "index folder not found" in _error_line(capsys, search_cli.main, search("--index", str(folder / "none")))
    assert "output folder does not exist" in _error_line(
        capsys, search_cli.main, ["--index", str(folder), "--topics", str(topics), "--output", str(folder / "no" / "r.txt")]
    )
    assert "unknown topics name" in _error_line(
        capsys, search_cli.main, ["--index", str(folder), "--topics", "dl19-pasage", "--topics-dir", str(folder), "--output", str(out)]
    )
    bad_topics = folder / "bad_topics.tsv"
    bad_topics.write_text("1\tok\n2 missing tab\n")
    assert f"{bad_topics}:2" in _error_line(capsys, search_cli.main, ["--index", str(folder), "--topics", str(bad_topics), "--output", str(out)])
    bad_run = folder / "bad.run"
    bad_run.write_text("1 Q0 d1 1 2.0 t\n1 Q0 d2 x 1.0 t\n")
    assert f"{bad_run}:2" in _error_line(capsys, evaluate_cli.main, ["--run", str(bad_run), "--qrels", str(qrels)])
    bad_qrels = folder / "bad.qrels"
    bad_qrels.write_text("1 0 d1\n")
    assert f"{bad_qrels}:1" in _error_line(capsys, evaluate_cli.main, ["--run", str(run), "--qrels", str(bad_qrels)])
    other = folder / "other.qrels"
    other.write_text("7 0 d1 1\n")
    assert "no query in common" in _error_line(capsys, evaluate_cli.main, ["--run", str(run), "--qrels", str(other)])
    assert "input not found" in _error_line(capsys, index_cli.main, ["--input", str(folder / "none"), "--index", str(folder / "idx")])
    assert "expected FIELD=BOOST" in _error_line(capsys, search_cli.main, search("--index", str(folder), "--fields",
                                                                                "contents=1.0", "title=heavy"))
    assert not out.exists()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["topics.tsv", "qrels.txt", "run.txt", "bad_topics.tsv", "bad.run", "bad.qrels", "other.qrels"]
    )


@pytest.mark.java
def test_offline_prebuilt_index_exit_2(tiny, capsys):
    folder, topics, _, _ = tiny
    out = folder / "out.txt"
    argv = ["--index", "no-such-prebuilt", "--topics", str(topics), "--output", str(out)]
    assert "prebuilt index name" in _error_line(capsys, search_cli.main, argv)
    assert not out.exists()


def test_cli_subprocess_exit_status_and_single_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pyserini_ssm.evaluate", "--run", str(tmp_path / "missing.run"), "--qrels", "x"],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not found" in result.stderr and "Traceback" not in result.stderr
