"""reranking: score merging, group planning, the resumable partial file, and whole runs with a tiny real model."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import require_shared
from pyserini_ssm.documents import SegmentConfig
from pyserini_ssm.errors import UserError
from pyserini_ssm.reranking import (
    PartialRun,
    RerankConfig,
    RerankQuery,
    default_output,
    merge_partials,
    merge_reranked,
    model_label,
    plan_groups,
    prefetched,
    qrels_name_for_topics,
    rerank_candidates,
    round_score,
    run_rerank,
)
from pyserini_ssm.runs import Hit, read_run

DL19_CANDIDATES = ("msmarco-passage-dl19-bm25-top100", "retrieve_results_dl19.bm25.top100.json.gz")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread: several processes share 2 cores in CI, where OpenMP spinning makes 2 threads 30x slower;
    and subprocesses (OMP_NUM_THREADS=1) then compute bit-identical scores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def decoder_dir(tiny_reranker) -> Path:
    return tiny_reranker("decoder")


@pytest.fixture(scope="module")
def decoder(decoder_dir):
    from pyserini_ssm.models.reranker import Reranker

    with pytest.warns(UserWarning, match="untrained"):
        return Reranker.from_pretrained(str(decoder_dir), device="cpu")


# ------------------------------------------------------------------------------------------------ scores and groups


def test_round_score_matches_the_six_decimals_written():
    for value in (0.1234565, -3.0000004, 1e-9, 12345.6789012):
        assert f"{round_score(value):.6f}" == f"{value:.6f}"


def test_merge_reranked_orders_by_rounded_score_then_docid_and_puts_the_tail_below():
    reranked = [Hit("d3", 9.0), Hit("d1", 8.0), Hit("d2", 7.0)]
    # d1 and d2 differ only below the 6th decimal: equal in the file, so docid breaks the tie.
    scores = [0.5, 0.10000001, 0.1000000]
    tail = [Hit("z9", 6.0), Hit("a0", 5.0)]
    merged = merge_reranked(reranked, scores, tail)
    assert [hit.docid for hit in merged] == ["d3", "d1", "d2", "z9", "a0"]
    assert [hit.score for hit in merged] == [0.5, 0.1, 0.1, -0.9, -1.9]
    assert all(hit.text is None for hit in merged)


def test_merge_reranked_without_reranked_hits_keeps_first_stage_order():
    # Equal first-stage scores: the order must survive a sort by (-score, docid) all the same.
    assert merge_reranked([], [], [Hit("b", 2.5), Hit("a", 2.5)]) == [Hit("b", -1.0), Hit("a", -2.0)]


def test_merge_reranked_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        merge_reranked([Hit("a", 1.0)], [], [])


@pytest.mark.parametrize(
    "counts, batch, expected",
    [
        ([100, 100, 100], 32, [[0], [1], [2]]),
        ([10, 10, 10, 10, 5], 32, [[0, 1, 2], [3, 4]]),
        ([40, 10, 30, 0, 2], 32, [[0], [1], [2, 3, 4]]),
        ([], 32, []),
    ],
)
def test_plan_groups_packs_consecutive_queries_up_to_a_batch(counts, batch, expected):
    assert [list(group) for group in plan_groups(counts, batch)] == expected


def test_qrels_are_inferred_from_pyserini_topic_names():
    assert qrels_name_for_topics("dl19-passage") == "dl19-passage"
    assert qrels_name_for_topics("dl20") == "dl20-passage"
    assert qrels_name_for_topics("msmarco-passage-dev-subset") == "msmarco-passage-dev-subset"
    assert qrels_name_for_topics("beir-v1.0.0-scifact-test") == "beir-v1.0.0-scifact-test"
    assert qrels_name_for_topics("topics.tsv") is None


def test_default_output_and_tag_name_the_source_and_model():
    config = RerankConfig(model="/ckpt/my model", candidates="data/retrieve_results_dl19.json.gz", rerank_depth=50)
    assert model_label("mamba2-780m") == "mamba2-780m"
    assert default_output(config) == Path("runs/run.retrieve_results_dl19.my_model.rerank50.txt")
    config = RerankConfig(model="mamba2-780m", index="msmarco-v1-passage", topics="dl19-passage")
    assert default_output(config) == Path(
        "runs/run.msmarco-v1-passage.dl19-passage.bm25-top1000.mamba2-780m.rerank100.txt")  # index, topics, model, depth
    assert default_output(replace(config, output_format="rank_llm")).suffix == ".jsonl"
    assert default_output(replace(config, first_stage="dense", hits=100)).name.startswith(
        "run.msmarco-v1-passage.dl19-passage.dense-top100.")


# --------------------------------------------------------------------------------------------------- partial file


def test_partial_file_resumes_ignores_a_torn_last_line_and_truncates_it(tmp_path):
    path = tmp_path / "run.txt.partial"
    partial = PartialRun.open(path, {"model": "m", "depth": 3})
    partial.commit(0, ["q1"], "q1 Q0 d 1 1.000000 t\n")
    partial.commit(2, ["q3"], "q3 Q0 d 1 1.000000 t\n")
    partial.close()
    intact = path.read_bytes()
    with open(path, "ab") as handle:  # what kill -9 in the middle of a write leaves
        handle.write(b'{"group": 1, "qids": ["q2"], "text": "q2 Q0')
    resumed = PartialRun.open(path, {"model": "m", "depth": 3})
    assert sorted(resumed.done) == [0, 2]
    assert path.read_bytes() == intact  # the torn bytes are cut before anything is appended
    resumed.commit(1, ["q2"], "q2 Q0 d 1 1.000000 t\n")
    resumed.close()
    merge_partials(tmp_path / "run.txt", [path], group_count=3)
    assert (tmp_path / "run.txt").read_text() == (
        "q1 Q0 d 1 1.000000 t\nq2 Q0 d 1 1.000000 t\nq3 Q0 d 1 1.000000 t\n"
    )


def test_partial_file_line_with_a_wrong_checksum_at_the_end_counts_as_torn(tmp_path):
    path = tmp_path / "p.partial"
    PartialRun.open(path, {"k": 1}).close()
    record = {"group": 0, "qids": ["q"], "text": "q Q0 d 1 2.000000 t\n", "crc": 1}
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    assert PartialRun.open(path, {"k": 1}).done == {}


def test_partial_file_damaged_in_the_middle_is_a_user_error(tmp_path):
    path = tmp_path / "p.partial"
    partial = PartialRun.open(path, {"k": 1})
    partial.commit(0, ["a"], "a Q0 d 1 1.000000 t\n")
    partial.commit(1, ["b"], "b Q0 d 1 1.000000 t\n")
    partial.close()
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"1.000000", b"9.000000")  # crc no longer matches
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=r"p.partial:2: damaged"):
        PartialRun.open(path, {"k": 1})


def test_partial_file_with_other_settings_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "p.partial"
    PartialRun.open(path, {"model": "a", "rerank_depth": 100}).close()
    with pytest.raises(UserError, match=r"different rerank_depth.*delete it.*--output"):
        PartialRun.open(path, {"model": "a", "rerank_depth": 50})


def test_partial_file_cannot_be_written_by_two_processes_at_once(tmp_path):
    path = tmp_path / "p.partial"
    first = PartialRun.open(path, {"k": 1})
    try:
        with pytest.raises(UserError, match="in use"):
            PartialRun.open(path, {"k": 1})
    finally:
        first.close()


# ---------------------------------------------------------------------------------------------- with a tiny model


def dl19_subset(path: Path, queries: int, hits: int) -> Path:
    source = require_shared(*DL19_CANDIDATES)
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    subset = [{"query": q["query"], "hits": q["hits"][:hits]} for q in data[:queries]]
    path.write_text(json.dumps(subset))
    return path


def test_dl19_candidates_rerank_into_a_valid_run_of_43_queries_by_100(tmp_path, decoder, decoder_dir):
    candidates = require_shared(*DL19_CANDIDATES)
    output = tmp_path / "dl19.txt"
    config = RerankConfig(model=str(decoder_dir), candidates=str(candidates), output=str(output),
                          batch_size=64, show_progress=False, qrels="dl19-passage",
                          topics_dir=str(require_shared("topics-and-qrels")))
    outcome = run_rerank(config, reranker=decoder)
    assert outcome.output == output and outcome.queries == 43 and outcome.pairs_scored == 4300
    assert not output.with_name("dl19.txt.partial").exists()
    run = read_run(output)
    assert len(run) == 43 and all(len(hits) == 100 for hits in run.values())
    lines = output.read_text().splitlines()
    for qid_lines in (lines[i:i + 100] for i in range(0, 4300, 100)):
        fields = [line.split() for line in qid_lines]
        assert [int(f[3]) for f in fields] == list(range(1, 101))
        scores = [float(f[4]) for f in fields]
        assert scores == sorted(scores, reverse=True)
        assert all(f[5] == model_label(str(decoder_dir)) for f in fields)
    # BM25 nDCG@10 from ../shared/data SOURCE.md; a random head reorders, so "after" differs from "before".
    assert outcome.metrics["ndcg_cut_10"][0] == pytest.approx(0.5058, abs=5e-5)
    assert outcome.metrics["ndcg_cut_10"][1] != outcome.metrics["ndcg_cut_10"][0]
    # The recall of the full list cannot change: reranking only reorders the same 100 documents.
    assert outcome.metrics["recall_1000"][1] == pytest.approx(outcome.metrics["recall_1000"][0])


def test_depth_below_the_list_keeps_first_stage_order_underneath(tmp_path, decoder, decoder_dir):
    candidates = dl19_subset(tmp_path / "c.json", queries=3, hits=30)
    output = tmp_path / "run.txt"
    run_rerank(RerankConfig(model=str(decoder_dir), candidates=str(candidates), output=str(output), rerank_depth=10,
                            show_progress=False), reranker=decoder)
    first_stage = {str(q["hits"][0]["qid"]): q["hits"] for q in json.loads(candidates.read_text())}
    reranked = read_run(output)
    for qid, hits in reranked.items():
        original = [hit["docid"] for hit in first_stage[qid]]
        assert sorted(h.docid for h in hits[:10]) == sorted(original[:10])
        assert [h.docid for h in hits[10:]] == original[10:]
        assert max(h.score for h in hits[10:]) < min(h.score for h in hits[:10])


def test_python_api_matches_the_pipeline(tmp_path, decoder, decoder_dir):
    candidates = dl19_subset(tmp_path / "c.json", queries=2, hits=12)
    from pyserini_ssm.candidates import read_candidates

    streamed = dict(rerank_candidates(decoder, iter(read_candidates(candidates)), depth=8, batch_size=32))
    output = tmp_path / "run.txt"
    run_rerank(RerankConfig(model=str(decoder_dir), candidates=str(candidates), output=str(output), rerank_depth=8,
                            batch_size=32, show_progress=False), reranker=decoder)
    written = read_run(output)
    assert list(streamed) == list(written)
    for qid in written:
        assert [(h.docid, h.score) for h in streamed[qid]] == [(h.docid, h.score) for h in written[qid]]


def test_resuming_skips_finished_queries_and_gives_the_same_bytes(tmp_path, decoder, decoder_dir):
    candidates = dl19_subset(tmp_path / "c.json", queries=4, hits=10)
    base = dict(model=str(decoder_dir), candidates=str(candidates), rerank_depth=10, batch_size=16,
                group_pairs=16, show_progress=False)  # one query per group, so there is something to resume
    uninterrupted = tmp_path / "full.txt"
    run_rerank(RerankConfig(**base, output=str(uninterrupted)), reranker=decoder)

    class Crash(Exception):
        pass

    class CrashAfter:
        """The real model, which 'dies' on the third group, as a killed process would."""

        def __init__(self, calls: int):
            self.calls = calls

        def predict(self, pairs, batch_size=32, show_progress=False):
            self.calls -= 1
            if self.calls < 0:
                raise Crash
            return decoder.predict(pairs, batch_size=batch_size)

    output = tmp_path / "resumed.txt"
    with pytest.raises(Crash):
        run_rerank(RerankConfig(**base, output=str(output)), reranker=CrashAfter(2))
    assert not output.exists()
    partial = output.with_name("resumed.txt.partial")
    assert len(partial.read_text().splitlines()) == 1 + 2  # header + 2 groups of one query
    outcome = run_rerank(RerankConfig(**base, output=str(output)), reranker=decoder)
    assert outcome.resumed_groups == 2 and outcome.pairs_scored == 20
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert not partial.exists()


def test_resuming_with_another_depth_is_refused(tmp_path, decoder, decoder_dir):
    candidates = dl19_subset(tmp_path / "c.json", queries=1, hits=5)
    output = tmp_path / "run.txt"
    partial = output.with_name("run.txt.partial")
    PartialRun.open(partial, {"stale": True}).close()
    with pytest.raises(UserError, match="other settings"):
        run_rerank(RerankConfig(model=str(decoder_dir), candidates=str(candidates), output=str(output),
                                show_progress=False), reranker=decoder)
    assert partial.exists() and not output.exists()  # the user's progress is theirs to delete


# ------------------------------------------------------------------------------------------ --run with a real index


@pytest.fixture(scope="session")
def small_index(tmp_path_factory) -> tuple[Path, Path]:
    """A Lucene index of 6 passages and topics for 2 queries, built with Anserini (session-scoped: JVM start)."""
    pytest.importorskip("pyserini")
    from pyserini_ssm.first_stage.lucene import build_index

    root = tmp_path_factory.mktemp("small_index")
    corpus = root / "corpus"
    corpus.mkdir()
    documents = {
        "d1": "The giant panda eats bamboo for most of the day in the mountains of China.",
        "d2": "Bamboo is a fast growing grass used for building and for furniture.",
        "d3": "Red pandas are small mammals that also eat bamboo leaves.",
        "d4": "Mamba is a state space model architecture for long sequences.",
        "d5": "State space models scan sequences in linear time with a recurrent state.",
        "d6": "A reranker scores each query and document pair with a cross-encoder.",
    }
    with open(corpus / "docs.jsonl", "w") as handle:
        for docid, text in documents.items():
            handle.write(json.dumps({"id": docid, "contents": text}) + "\n")
    index = root / "index"
    build_index(corpus, index)
    topics = root / "topics.tsv"
    topics.write_text("q1\twhat do pandas eat\nq2\tstate space model mamba\n")
    return index, topics


def run_mode_config(tmp_path, small_index, decoder_dir, first_stage_lines: str, output: str,
                    **settings) -> RerankConfig:
    """Rerank `first_stage_lines` (a TREC run, written to a file) with the texts of `small_index`."""
    index, topics = small_index
    first_stage = tmp_path / "bm25.txt"
    first_stage.write_text(first_stage_lines)
    return RerankConfig(model=str(decoder_dir), index=str(index), topics=str(topics), run=str(first_stage),
                        output=str(tmp_path / output), show_progress=False, **settings)


@pytest.mark.java
def test_run_mode_fetches_texts_from_the_index(tmp_path, small_index, decoder, decoder_dir):
    lines = "".join(f"{qid} Q0 {docid} {rank} {10 - rank}.0 bm25\n"
                    for qid, docids in (("q1", ["d1", "d3", "d2", "d6"]), ("q2", ["d4", "d5", "d6"]))
                    for rank, docid in enumerate(docids, start=1))
    config = run_mode_config(tmp_path, small_index, decoder_dir, lines, "reranked.txt", rerank_depth=3)
    output = Path(config.output)
    outcome = run_rerank(config, reranker=decoder)
    assert outcome.pairs_scored == 6
    run = read_run(output)
    assert sorted(h.docid for h in run["q1"][:3]) == ["d1", "d2", "d3"] and run["q1"][3].docid == "d6"
    # The scores are the model's on the index texts: score one pair directly and compare.
    direct = decoder.predict([("what do pandas eat", "Red pandas are small mammals that also eat bamboo leaves.")])
    assert {h.docid: h.score for h in run["q1"]}["d3"] == round_score(float(direct[0]))


@pytest.mark.java
def test_run_mode_docid_missing_from_the_index_is_named_or_skipped(tmp_path, small_index, decoder, decoder_dir):
    config = run_mode_config(tmp_path, small_index, decoder_dir,
                             "q1 Q0 d1 1 3.0 bm25\nq1 Q0 nosuchdoc 2 2.0 bm25\nq1 Q0 d2 3 1.0 bm25\n", "reranked.txt")
    output = Path(config.output)
    with pytest.raises(UserError, match=r"nosuchdoc.*--skip-missing"):
        run_rerank(config, reranker=decoder)
    assert not output.exists() and not output.with_name("reranked.txt.partial").exists()
    outcome = run_rerank(dataclasses.replace(config, skip_missing=True), reranker=decoder)
    assert outcome.skipped_documents == 1
    assert [h.docid for h in read_run(output)["q1"]] != [] and "nosuchdoc" not in {
        h.docid for h in read_run(output)["q1"]}


@pytest.mark.java
def test_index_mode_searches_bm25_then_reranks(tmp_path, small_index, decoder, decoder_dir):
    index, topics = small_index
    output = tmp_path / "run.txt"
    outcome = run_rerank(RerankConfig(model=str(decoder_dir), index=str(index), topics=str(topics), hits=4,
                                      rerank_depth=2, output=str(output), show_progress=False), reranker=decoder)
    from pyserini_ssm.first_stage.lucene import bm25_search, open_searcher

    bm25 = bm25_search(open_searcher(index), {"q1": "what do pandas eat", "q2": "state space model mamba"}, hits=4)
    run = read_run(output)
    assert list(run) == ["q1", "q2"] and outcome.pairs_scored == sum(min(2, len(h)) for h in bm25.values())
    for qid, hits in bm25.items():
        assert sorted(h.docid for h in run[qid][:2]) == sorted(h.docid for h in hits[:2])
        assert [h.docid for h in run[qid][2:]] == [h.docid for h in hits[2:]]


def test_empty_text_is_named_or_skipped(decoder):
    query = RerankQuery("q7", "what is a panda", [Hit("d1", 2.0, "A panda is a bear."), Hit("d2", 1.0, "  ")])
    with pytest.raises(UserError, match=r"'d2' \(query q7\) has empty text.*--skip-missing"):
        list(rerank_candidates(decoder, [query], depth=2))
    [(qid, hits)] = rerank_candidates(decoder, [query], depth=2, skip_missing=True)
    assert qid == "q7" and [h.docid for h in hits] == ["d1"]


@pytest.mark.java
def test_bad_input_in_a_later_group_keeps_the_groups_scored_before_it(tmp_path, small_index, decoder, decoder_dir):
    # Groups are prepared ahead of scoring: q2's docid missing from the index is found while q1 is still being
    # scored, and q1 must still be committed before the error stops the run.
    config = run_mode_config(tmp_path, small_index, decoder_dir,
                             "q1 Q0 d1 1 3.0 bm25\nq1 Q0 d2 2 2.0 bm25\nq2 Q0 nosuchdoc 1 1.0 bm25\n", "run.txt",
                             group_pairs=1, batch_size=1, fetch_batch_size=1)
    output = Path(config.output)
    with pytest.raises(UserError, match=r"nosuchdoc.*the 1 queries finished so far are kept"):
        run_rerank(config, reranker=decoder)
    assert not output.exists()
    assert b"q1 Q0 d1" in output.with_name("run.txt.partial").read_bytes()


# ------------------------------------------------------------------------------------- document ranking: FirstP, MaxP


class OverlapScorer:
    """A deterministic stand-in for a reranker: the score of a pair is the number of distinct query words in the
    text. Records every `predict` call, so tests can see which texts were scored together."""

    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []

    @staticmethod
    def score(query: str, text: str) -> float:
        return float(len(set(query.lower().split()) & set(text.lower().split())))

    def predict(self, pairs, batch_size=32, show_progress=False):
        self.calls.append(list(pairs))
        return np.array([self.score(query, text) for query, text in pairs], dtype=np.float32)


ANSWER_QUERY = "why are flamingo feathers pink"
ANSWER_PASSAGE = "flamingo feathers turn pink because the birds eat shrimp"  # 3 of the query's 5 words


def filler(document: int, count: int) -> list[str]:
    """Words that no query uses, distinct per document."""
    return [f"d{document}w{position}" for position in range(count)]


def long_documents() -> dict[str, str]:
    """Three 600-word documents; only d2 holds the answer, 400 words in (beyond FirstP's and the first segments'
    reach). d1 mentions one query word early, so a FirstP-like reading would prefer it."""
    words = {name: filler(number, 600) for number, name in enumerate(("d1", "d2", "d3"))}
    words["d1"][10] = "flamingo"
    words["d2"][400:400 + len(ANSWER_PASSAGE.split())] = ANSWER_PASSAGE.split()
    return {name: " ".join(text) for name, text in words.items()}


def write_candidates(path: Path, queries: list[tuple[str, list[tuple[str, str]]]]) -> Path:
    """[(query text, [(docid, content), ...])] -> a candidates JSON file, first-stage scores descending."""
    data = [{"query": text, "hits": [{"docid": docid, "content": content, "qid": number, "score": 100.0 - rank}
                                     for rank, (docid, content) in enumerate(hits)]}
            for number, (text, hits) in enumerate(queries, start=1)]
    path.write_text(json.dumps(data))
    return path


def test_maxp_ranks_the_document_holding_the_answer_first_at_its_best_segment_score(tmp_path):
    from pyserini_ssm.documents import maxp_segments

    documents = long_documents()
    hits = [("d1", documents["d1"]), ("d3", documents["d3"]), ("d2", documents["d2"]), ("d9", "not reranked")]
    candidates = write_candidates(tmp_path / "c.json", [(ANSWER_QUERY, hits)])
    output = tmp_path / "run.txt"
    scorer = OverlapScorer()
    outcome = run_rerank(RerankConfig(model="overlap", candidates=str(candidates), output=str(output),
                                      rerank_depth=3, doc_mode="maxp", show_progress=False), reranker=scorer)
    segments = {name: maxp_segments(None, documents[name]) for name in ("d1", "d2", "d3")}
    assert [len(s) for s in segments.values()] == [7, 7, 7]  # 150-word windows every 75 words over 600 words
    assert len(scorer.calls) == 1  # every segment of the group in one predict call
    assert scorer.calls[0] == [(ANSWER_QUERY, text) for name in ("d1", "d3", "d2") for text in segments[name]]
    assert outcome.pairs_scored == 21
    run = read_run(output)["1"]
    assert [h.docid for h in run] == ["d2", "d1", "d3", "d9"]  # documents, not segments; d9 stays below
    best_d2 = max(OverlapScorer.score(ANSWER_QUERY, text) for text in segments["d2"])
    assert best_d2 == 3.0 and run[0].score == best_d2
    assert run[1].score == 1.0 and run[2].score == 0.0 and run[3].score == -1.0
    # Passage mode reads each document whole: d2 still wins here, but through all 600 words, in 3 pairs.
    passage = OverlapScorer()
    run_rerank(RerankConfig(model="overlap", candidates=str(candidates), output=str(tmp_path / "p.txt"),
                            rerank_depth=3, show_progress=False), reranker=passage)
    assert [len(call) for call in passage.calls] == [3]


def test_maxp_segment_settings_reach_the_segmentation(tmp_path):
    documents = long_documents()
    candidates = write_candidates(tmp_path / "c.json", [(ANSWER_QUERY, [("d2", documents["d2"])])])
    scorer = OverlapScorer()
    run_rerank(RerankConfig(model="overlap", candidates=str(candidates), output=str(tmp_path / "run.txt"),
                            doc_mode="maxp", segment_window=300, segment_stride=300, show_progress=False),
               reranker=scorer)
    assert [len(text.split()) for _, text in scorer.calls[0]] == [300, 300]


def test_firstp_hands_the_start_of_the_document_whitespace_normalised(tmp_path):
    candidates = write_candidates(tmp_path / "c.json", [("pink birds", [
        ("d1", "  Flamingo\n\nfacts:\tpink   birds \n" + " ".join(filler(1, 50)))])])
    scorer = OverlapScorer()
    run_rerank(RerankConfig(model="overlap", candidates=str(candidates), output=str(tmp_path / "run.txt"),
                            doc_mode="firstp", show_progress=False), reranker=scorer)
    assert scorer.calls == [[("pink birds", "Flamingo facts: pink birds " + " ".join(filler(1, 50)))]]


def test_firstp_with_a_real_model_reads_only_the_first_window(tmp_path, decoder, decoder_dir):
    # Two documents that share their first max_length words (more tokens than the model reads) and differ after.
    words = filler(0, decoder.max_length)
    first, second = " ".join(words + ["pink"] * 50), " ".join(words + filler(5, 80))
    candidates = write_candidates(tmp_path / "c.json", [("pink birds", [("a", first), ("b", second)])])
    output = tmp_path / "run.txt"
    run_rerank(RerankConfig(model=str(decoder_dir), candidates=str(candidates), output=str(output),
                            doc_mode="firstp", show_progress=False), reranker=decoder)
    scores = {h.docid: h.score for h in read_run(output)["1"]}
    window = float(decoder.predict([("pink birds", " ".join(words))])[0])
    assert scores == {"a": round_score(window), "b": round_score(window)}


def test_resuming_maxp_gives_the_same_bytes_and_another_doc_mode_is_refused(tmp_path):
    documents = long_documents()
    candidates = write_candidates(tmp_path / "c.json", [
        (ANSWER_QUERY, [(name, documents[name]) for name in ("d1", "d2", "d3")]),
        ("flamingo shrimp", [(name, documents[name]) for name in ("d3", "d2", "d1")]),
        ("pink", [(name, documents[name]) for name in ("d2", "d1")]),
    ])
    # group_pairs counts documents in maxp: 3 per group, one query each, whatever the segment counts.
    base = dict(model="overlap", candidates=str(candidates), rerank_depth=3, group_pairs=3, batch_size=1,
                show_progress=False, doc_mode="maxp")
    uninterrupted = tmp_path / "full.txt"
    scorer = OverlapScorer()
    run_rerank(RerankConfig(**base, output=str(uninterrupted)), reranker=scorer)
    assert [len(call) for call in scorer.calls] == [21, 21, 14]

    class Crash(Exception):
        pass

    class CrashAfterOne(OverlapScorer):
        def predict(self, pairs, batch_size=32, show_progress=False):
            if self.calls:
                raise Crash
            return super().predict(pairs, batch_size, show_progress)

    output = tmp_path / "run.txt"
    partial = output.with_name("run.txt.partial")
    with pytest.raises(Crash):
        run_rerank(RerankConfig(**base, output=str(output)), reranker=CrashAfterOne())
    assert len(partial.read_text().splitlines()) == 1 + 1
    for other in (dict(doc_mode="passage"), dict(doc_mode="firstp"), dict(segment_window=100)):
        with pytest.raises(UserError, match=r"other settings \(different doc_mode\)"):
            run_rerank(RerankConfig(**{**base, **other}, output=str(output)), reranker=OverlapScorer())
    assert partial.exists() and not output.exists()
    outcome = run_rerank(RerankConfig(**base, output=str(output)), reranker=OverlapScorer())
    assert outcome.resumed_groups == 1 and outcome.pairs_scored == 21 + 14
    assert output.read_bytes() == uninterrupted.read_bytes()


SEGMENT_TEXTS = {
    "D1#0": "pink birds", "D2#0": "pink flamingo feathers", "D1#1": "why are flamingo feathers pink",
    "D3#0": "flamingo", "D2#1": "why", "D4#0": "nothing", "D3#1": "feathers",
}


def test_presegmented_candidates_aggregate_to_documents(tmp_path):
    # Segments best first as BM25 on msmarco-v1-doc-segmented returns them; depth 2 documents: D1#0, D2#0, D1#1.
    candidates = write_candidates(tmp_path / "c.json", [(ANSWER_QUERY, list(SEGMENT_TEXTS.items()))])
    output = tmp_path / "run.txt"
    scorer = OverlapScorer()
    outcome = run_rerank(RerankConfig(model="overlap", candidates=str(candidates), output=str(output),
                                      rerank_depth=2, doc_mode="maxp", segment_window=3, show_progress=False),
                         reranker=scorer)
    assert [text for _, text in scorer.calls[0]] == [SEGMENT_TEXTS[s] for s in ("D1#0", "D2#0", "D1#1")]
    assert outcome.pairs_scored == 3  # not cut again, whatever --segment-window says
    run = read_run(output)["1"]
    # D1 at its best segment (5 words) above D2 (3); below, the remaining documents at their best remaining
    # segment in first-stage order (D3, then D4), D2#1 left out since D2 was reranked.
    assert [(h.docid, h.score) for h in run] == [("D1", 5.0), ("D2", 3.0), ("D3", 2.0), ("D4", 1.0)]
    from pyserini_ssm.candidates import read_candidates
    from pyserini_ssm.reranking import DocumentMode

    streamed = dict(rerank_candidates(OverlapScorer(), read_candidates(candidates), depth=2,
                                      doc_mode=DocumentMode("maxp", presegmented=True)))
    assert [(h.docid, h.score) for h in streamed["1"]] == [(h.docid, h.score) for h in run]


def test_presegmented_first_stage_is_evaluated_as_documents(tmp_path):
    candidates = write_candidates(tmp_path / "c.json", [(ANSWER_QUERY, list(SEGMENT_TEXTS.items()))])
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("1 0 D3 1\n1 0 D1 0\n")
    outcome = run_rerank(RerankConfig(model="overlap", candidates=str(candidates), output=str(tmp_path / "r.txt"),
                                      rerank_depth=2, doc_mode="maxp", qrels=str(qrels), metrics=("recip_rank",),
                                      show_progress=False), reranker=OverlapScorer())
    # First stage as documents (best segment each): D1, D2, D3, D4 -> D3 at rank 3; reranked it stays third.
    assert outcome.metrics["recip_rank"] == (pytest.approx(1 / 3), pytest.approx(1 / 3))


def test_maxp_refuses_candidates_mixing_segments_and_documents(tmp_path):
    candidates = write_candidates(tmp_path / "c.json", [("q", [("D1#0", "a"), ("D2", "b")])])
    with pytest.raises(UserError, match=r"mix segment ids like 'D1#0'.*'D2'"):
        run_rerank(RerankConfig(model="overlap", candidates=str(candidates), output=str(tmp_path / "r.txt"),
                                doc_mode="maxp", show_progress=False), reranker=OverlapScorer())
    assert not (tmp_path / "r.txt.partial").exists()


@pytest.mark.parametrize("settings, pattern", [
    (dict(doc_mode="maxpp"), r"unknown --doc-mode 'maxpp'"),
    (dict(doc_mode="maxp", segment_unit="pages"), r"unknown segment unit 'pages'"),
    (dict(doc_mode="maxp", segment_window=50, segment_stride=80), r"stride 80 > window 50"),
    (dict(doc_mode="maxp", segment_window=0), r"--segment-window must be a positive integer"),
])
def test_bad_document_settings_are_user_errors(tmp_path, settings, pattern):
    candidates = write_candidates(tmp_path / "c.json", [("q", [("d", "text")])])
    with pytest.raises(UserError, match=pattern):
        run_rerank(RerankConfig(model="overlap", candidates=str(candidates), output=str(tmp_path / "r.txt"),
                                **settings), reranker=OverlapScorer())


def test_segment_defaults_follow_the_unit():
    assert RerankConfig(model="m").segment_config() == SegmentConfig("words", 150, 75)
    assert RerankConfig(model="m", segment_unit="sentences").segment_config() == SegmentConfig("sentences", 10, 5)
    assert RerankConfig(model="m", segment_unit="sentences", segment_stride=3).segment_config() == SegmentConfig(
        "sentences", 10, 3)
    assert RerankConfig(model="m", segment_window=51).segment_config() == SegmentConfig("words", 51, 25)


# --------------------------------------------------------------------------------- reading texts ahead of scoring


def test_prefetched_keeps_order_and_runs_a_bounded_way_ahead():
    import threading

    taken = []
    moved = threading.Condition()

    def source():
        for number in range(10):
            with moved:
                taken.append(number)
                moved.notify_all()
            yield number

    items = prefetched(source(), ahead=1)
    assert next(items) == 0
    with moved:  # item 1 waits in the buffer, item 2 in the producer's hand: no further
        assert moved.wait_for(lambda: len(taken) == 3, timeout=5)
        assert not moved.wait_for(lambda: len(taken) > 3, timeout=0.3)
    assert list(items) == list(range(1, 10))


def test_prefetched_overlaps_producing_with_consuming():
    import threading

    # Overlap shown by order, not by a clock: item n + 1 is read while the consumer still holds item n. Read in the
    # consumer's thread, item n + 1 would wait for the consumer's next() and its event would never be set here (the
    # timeout only bounds a failing run).
    reading = [threading.Event() for _ in range(5)]

    def source():
        for number in range(5):
            reading[number].set()  # reading texts: blocking, like a JNI call or file read
            yield number

    consumed = []
    for number in prefetched(source()):
        if number + 1 < len(reading):  # scoring item `number`: the device busy, the host waiting
            assert reading[number + 1].wait(timeout=30), f"item {number + 1} was not read while {number} was scored"
        consumed.append(number)
    assert consumed == list(range(5))


def test_prefetched_raises_a_producer_error_at_its_item():
    def failing():
        yield 1
        yield 2
        raise UserError("bad topics line 3")

    items = prefetched(failing())
    assert [next(items), next(items)] == [1, 2]
    with pytest.raises(UserError, match="bad topics line 3"):
        next(items)


def test_prefetched_closes_its_source_in_the_producer_thread_when_the_consumer_stops():
    import threading

    closed_in = []

    def source():
        try:
            yield from range(100)
        finally:
            closed_in.append(threading.current_thread().name)

    items = prefetched(source())
    assert next(items) == 0
    items.close()
    assert closed_in == ["prefetch-texts"]


def test_background_commits_are_written_in_order_and_an_error_stops_the_later_ones(tmp_path, monkeypatch):
    """`BackgroundCommits` writes each group as `PartialRun.commit` would, in order; after a failed commit (a full
    disk) the later groups are dropped rather than written behind a torn line, and the error reaches the caller."""
    from pyserini_ssm.reranking.partial import BackgroundCommits, PartialRun

    path = tmp_path / "run.txt.partial"
    partial = PartialRun.open(path, {"model": "m"})
    commits = BackgroundCommits(partial)
    for group in range(5):
        commits.commit(group, [f"q{group}"], f"q{group} Q0 d 1 1.000000 t\n")
    commits.drain()
    assert list(partial.done) == [0, 1, 2, 3, 4]
    partial.close()
    reopened = PartialRun.open(path, {"model": "m"})
    assert sorted(reopened.done) == [0, 1, 2, 3, 4]

    original = PartialRun.commit

    def failing(self, group, *args):
        if group == 6:
            raise UserError("cannot write run.txt.partial: no space left on the device")
        return original(self, group, *args)

    monkeypatch.setattr(PartialRun, "commit", failing)
    commits = BackgroundCommits(reopened)
    for group in range(5, 9):
        commits.commit(group, ["q"], "q Q0 d 1 1.000000 t\n")
    with pytest.raises(UserError, match="no space left"):
        commits.drain()
    assert sorted(reopened.done) == [0, 1, 2, 3, 4, 5]  # 7 and 8 were not written after the failed 6
    reopened.close()
