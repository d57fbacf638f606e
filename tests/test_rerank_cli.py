"""`python -m pyserini_ssm.rerank`: flags, metrics output, bad inputs (one line, exit 2, no run left), torchrun with
2 gloo processes, and a run killed with SIGKILL then rerun."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_help import help_and_heavy_imports
from conftest import require_shared
from pyserini_ssm.cli import run_main
from pyserini_ssm.rerank import main
from pyserini_ssm.runs import read_run

pytestmark = pytest.mark.filterwarnings("ignore:.*no trained score head:UserWarning")

REPO_ROOT = Path(__file__).resolve().parents[1]
DL19_CANDIDATES = ("msmarco-passage-dl19-bm25-top100", "retrieve_results_dl19.bm25.top100.json.gz")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Subprocesses run with OMP_NUM_THREADS=1; the in-process runs use one thread too, for bit-identical scores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tiny_reranker) -> Path:
    return tiny_reranker("decoder")


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    for name in TORCHRUN_VARIABLES:
        env.pop(name, None)
    return env


def write_subset(path: Path, queries: int, hits: int) -> Path:
    with gzip.open(require_shared(*DL19_CANDIDATES), "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    path.write_text(json.dumps([{"query": q["query"], "hits": q["hits"][:hits]} for q in data[:queries]]))
    return path


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    status = run_main(main, argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def leftovers(folder: Path, name: str) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(name) or f".{name}" in path.name)


def test_help_is_fast_and_lists_the_flags():
    text, heavy = help_and_heavy_imports("pyserini_ssm.rerank")
    for flag in ("--index", "--topics", "--model", "--hits", "--rerank-depth", "--batch-size", "--max-length",
                 "--dtype", "--device", "--output", "--qrels", "--run", "--candidates", "--skip-missing",
                 "--backend", "--topics-dir"):
        assert flag in text
    assert heavy == [], f"--help loaded {heavy}: import them inside the functions that need them"


def test_candidates_with_qrels_print_metrics_before_and_after(tmp_path, model_dir, capsys):
    candidates = write_subset(tmp_path / "c.json", queries=5, hits=20)
    output = tmp_path / "run.txt"
    status, out, err = call(["--candidates", str(candidates), "--model", str(model_dir), "--output", str(output),
                             "--rerank-depth", "10", "--qrels", "dl19-passage",
                             "--topics-dir", str(require_shared("topics-and-qrels"))], capsys)
    assert status == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split() == ["metric", "first", "stage", "reranked"]
    assert [row.split()[0] for row in rows] == ["ndcg_cut_10", "map", "recall_1000"]
    assert "pair/s" in err  # the progress bar
    run = read_run(output)
    assert len(run) == 5 and all(len(hits) == 20 for hits in run.values())
    assert {line.split()[5] for line in output.read_text().splitlines()} == {model_dir.name}


# ----------------------------------------------------------------------------------------------------- bad inputs


def assert_user_error(status: int, err: str, pattern: str) -> None:
    import re

    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2, err
    assert len(lines) == 1 and re.search(pattern, lines[0]), err
    assert "Traceback" not in err


def test_unknown_model_name(tmp_path, capsys):
    candidates = write_subset(tmp_path / "c.json", queries=1, hits=3)
    status, _, err = call(["--candidates", str(candidates), "--model", "mamba2-78m", "--output",
                           str(tmp_path / "run.txt")], capsys)
    assert_user_error(status, err, r"unknown model 'mamba2-78m'.*mamba2-780m")
    assert leftovers(tmp_path, "run.txt") == []


def test_checkpoint_folder_missing_files(tmp_path, model_dir, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    for weights in list(broken.glob("*.safetensors")) + list(broken.glob("*.bin")):
        if weights.name.startswith("model"):
            weights.unlink()
    candidates = write_subset(tmp_path / "c.json", queries=1, hits=3)
    status, _, err = call(["--candidates", str(candidates), "--model", str(broken), "--output",
                           str(tmp_path / "run.txt")], capsys)
    assert_user_error(status, err, r"broken")
    assert leftovers(tmp_path, "run.txt") == []


@pytest.mark.parametrize(
    "content, pattern",
    [
        ('[{"query": "q", "hits": [{"docid": "d", "content": "t", "qid": 1, "score": 1.0}]', r"invalid JSON in query #0"),
        ('[{"query": "q", "hits": [{"docid": "d", "qid": 1, "score": 1.0}]}]', r"missing key 'content'"),
        ('{"query": "q"}', r"missing key 'candidates' \(rank_llm\) or 'hits'"),
        ('{"query": {"text": "q", "qid": 1}, "candidates": [{"docid": "d", "score": 1, "doc": {}}]}',
         r"candidate #0: document 'd' has no text"),
    ],
)
def test_malformed_candidates(tmp_path, model_dir, capsys, content, pattern):
    candidates = tmp_path / "bad.json"
    candidates.write_text(content)
    status, _, err = call(["--candidates", str(candidates), "--model", str(model_dir), "--output",
                           str(tmp_path / "run.txt")], capsys)
    assert_user_error(status, err, pattern)
    assert leftovers(tmp_path, "run.txt") == []


def test_empty_document_text(tmp_path, model_dir, capsys):
    candidates = tmp_path / "c.json"
    candidates.write_text(json.dumps([{"query": "what is a panda", "hits": [
        {"docid": "d1", "content": "A panda is a bear.", "qid": 7, "score": 2.0},
        {"docid": "d2", "content": "   ", "qid": 7, "score": 1.0}]}]))
    status, _, err = call(["--candidates", str(candidates), "--model", str(model_dir), "--output",
                           str(tmp_path / "run.txt")], capsys)
    assert_user_error(status, err, r"'d2' has empty text")
    assert leftovers(tmp_path, "run.txt") == []


def test_query_longer_than_max_length(tmp_path, model_dir, capsys):
    candidates = tmp_path / "c.json"
    long_query = " ".join(["panda"] * 80)
    candidates.write_text(json.dumps([
        {"query": "short one", "hits": [{"docid": "d1", "content": "A panda.", "qid": 1, "score": 2.0}]},
        {"query": long_query, "hits": [{"docid": "d2", "content": "A bear.", "qid": 2, "score": 1.0}]}]))
    status, _, err = call(["--candidates", str(candidates), "--model", str(model_dir), "--max-length", "32",
                           "--output", str(tmp_path / "run.txt")], capsys)
    assert_user_error(status, err, r"query 2: .*does not fit max length 32.*--max-length")
    assert leftovers(tmp_path, "run.txt") == []  # checked before any scoring: not even a partial file


def test_run_and_candidates_together_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--run", "a", "--candidates", "b", "--model", "m"])
    assert exit_info.value.code == 2


def test_nonpositive_depth_is_a_user_error(tmp_path, capsys):
    status, _, err = call(["--candidates", "c.json", "--model", "m", "--rerank-depth", "0"], capsys)
    assert_user_error(status, err, r"--rerank-depth must be a positive integer")


# --------------------------------------------------------------------------------------- torchrun, SIGKILL, resume


@pytest.mark.slow  # 29 s on 2 busy cores; sharding under torchrun: test_distributed.py (9 s)
def test_torchrun_two_gloo_processes_equal_one_process(tmp_path, model_dir, capsys):
    candidates = write_subset(tmp_path / "c.json", queries=7, hits=25)
    common = ["--candidates", str(candidates), "--model", str(model_dir), "--rerank-depth", "20",
              "--batch-size", "16", "--group-pairs", "20", "--no-progress"]  # 7 groups to shard
    single = tmp_path / "single.txt"
    status, _, err = call(common + ["--output", str(single)], capsys)
    assert status == 0, err
    merged = tmp_path / "merged.txt"
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "pyserini_ssm.rerank", *common, "--output", str(merged)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert merged.read_bytes() == single.read_bytes()
    # The scoring-phase throughput counts every process's pairs once: 7 queries x 20.
    assert re.search(r"scored 140 pairs in [0-9.]+ s \([0-9,]+ pairs/s over 1 process", err), err
    assert re.search(r"scored 140 pairs in [0-9.]+ s \([0-9,]+ pairs/s over 2 process", completed.stderr), \
        completed.stderr[-2000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c.json", "merged.txt", "single.txt"]


@pytest.mark.slow  # 36 s on 2 busy cores; torn partial files and resuming: test_reranking.py (in-process)
def test_sigkill_midway_then_rerun_is_byte_identical(tmp_path, model_dir, capsys, caplog):
    candidates = require_shared(*DL19_CANDIDATES)
    # One query per group (30 pairs), so that progress is committed query by query.
    common = ["--candidates", str(candidates), "--model", str(model_dir), "--rerank-depth", "30",
              "--group-pairs", "30", "--no-progress"]
    killed = tmp_path / "killed.txt"
    partial = tmp_path / "killed.txt.partial"
    process = subprocess.Popen([sys.executable, "-m", "pyserini_ssm.rerank", *common, "--output", str(killed)],
                               env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if partial.exists() and partial.read_bytes().count(b"\n") >= 1 + 5:  # header + 5 queries
                break
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not killed.exists()
    committed = partial.read_bytes().count(b"\n") - 1
    assert 5 <= committed < 43

    caplog.set_level(logging.INFO, logger="pyserini_ssm.reranking")
    status, _, err = call(common + ["--output", str(killed)], capsys)
    assert status == 0, err
    assert f"resuming: {committed} of 43 groups already done" in caplog.text
    assert not partial.exists()

    uninterrupted = tmp_path / "uninterrupted.txt"
    status, _, err = call(common + ["--output", str(uninterrupted)], capsys)
    assert status == 0, err
    assert killed.read_bytes() == uninterrupted.read_bytes()
    assert len(read_run(killed)) == 43


# ----------------------------------------------------------------------------------- document ranking flags


def test_document_flags_reach_the_config(monkeypatch, capsys):
    import pyserini_ssm.reranking as reranking

    seen = []

    def capture(config):
        seen.append(config)
        return reranking.RerankOutcome(Path("run.txt"), 1, 0, 0, 0, tag="t")

    monkeypatch.setattr(reranking, "run_rerank", capture)
    assert main(["--candidates", "c.json", "--model", "m", "--doc-mode", "maxp", "--segment-unit", "sentences",
                 "--segment-window", "8", "--segment-stride", "4", "--no-progress"]) == 0
    assert main(["--candidates", "c.json", "--model", "m", "--doc-mode", "firstp"]) == 0
    assert main(["--candidates", "c.json", "--model", "m"]) == 0
    maxp, firstp, default = seen
    assert (maxp.doc_mode, maxp.segment_unit, maxp.segment_window, maxp.segment_stride) == ("maxp", "sentences", 8, 4)
    assert (firstp.doc_mode, firstp.segment_window, firstp.segment_stride) == ("firstp", None, None)
    assert default.doc_mode == "passage" and default.segment_config().window == 150
    with pytest.raises(SystemExit) as exit_info:
        main(["--candidates", "c.json", "--model", "m", "--doc-mode", "lastp"])
    assert exit_info.value.code == 2
    assert "--doc-mode" in build_parser_help()


def build_parser_help() -> str:
    from pyserini_ssm.rerank import build_parser

    return build_parser().format_help()


def test_maxp_run_from_the_cli_lists_documents(tmp_path, model_dir, capsys):
    text = " ".join(f"w{i}" for i in range(40))
    candidates = tmp_path / "c.json"
    candidates.write_text(json.dumps([{"query": "w3 w30", "hits": [
        {"docid": "D1", "content": text, "qid": 1, "score": 2.0},
        {"docid": "D2", "content": "short document", "qid": 1, "score": 1.0}]}]))
    output = tmp_path / "run.txt"
    status, _, err = call(["--candidates", str(candidates), "--model", str(model_dir), "--output", str(output),
                           "--doc-mode", "maxp", "--segment-window", "10", "--no-progress"], capsys)
    assert status == 0, err
    assert sorted(h.docid for h in read_run(output)["1"]) == ["D1", "D2"]


def test_bad_segment_stride_is_a_user_error(tmp_path, capsys):
    candidates = write_subset(tmp_path / "c.json", queries=1, hits=3)
    status, _, err = call(["--candidates", str(candidates), "--model", "m", "--doc-mode", "maxp",
                           "--segment-window", "20", "--segment-stride", "30"], capsys)
    assert_user_error(status, err, r"stride 30 > window 20")
