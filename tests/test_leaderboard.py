import csv
import gzip
import io
import json
import re

import pytest

from conftest import require_shared
from pyserini_ssm.errors import UserError
from pyserini_ssm.evaluation import evaluate
from pyserini_ssm.leaderboard import DatasetRuns, leaderboard_table, main, parse_run_spec
from pyserini_ssm.runs import Hit, read_run, run_as_dict, write_run
from pyserini_ssm.significance import bonferroni, paired_randomization_test, paired_t_test

# Five queries, one relevant document each ("rel"); a run's reciprocal rank is 1 / (position of "rel").
QRELS = {f"q{n}": {"rel": 1} for n in range(1, 6)}


def run_with_ranks(ranks):
    """A run whose relevant document sits at the given 1-based positions (0: not retrieved)."""
    run = {}
    for qid, rank in zip(QRELS, ranks):
        docs = [f"other{i}" for i in range(5)]
        if rank:
            docs.insert(rank - 1, "rel")
        run[qid] = {docid: float(100 - position) for position, docid in enumerate(docs)}
    return run


BASE_RANKS = [1, 2, 3, 1, 0]  # RR 1, 1/2, 1/3, 1, 0
BETTER_RANKS = [1, 1, 1, 1, 2]  # RR 1, 1, 1, 1, 1/2
WORSE_RANKS = [2, 2, 0, 4, 0]  # RR 1/2, 1/2, 0, 1/4, 0


def constructed_board(test="t"):
    dataset = DatasetRuns(
        "toy",
        QRELS,
        {"base": run_with_ranks(BASE_RANKS), "better": run_with_ranks(BETTER_RANKS), "worse": run_with_ranks(WORSE_RANKS)},
    )
    return leaderboard_table([dataset], metrics=["recip_rank"], test=test, permutation_trials=1000)


def test_constructed_example_known_answers():
    board = constructed_board()
    base_rr = [1, 1 / 2, 1 / 3, 1, 0]
    better_rr = [1, 1, 1, 1, 1 / 2]
    worse_rr = [1 / 2, 1 / 2, 0, 1 / 4, 0]
    base = board.cell("toy", "base", "recip_rank")
    better = board.cell("toy", "better", "recip_rank")
    worse = board.cell("toy", "worse", "recip_rank")
    assert base.value == pytest.approx(sum(base_rr) / 5)
    assert better.value == pytest.approx(4.5 / 5)
    assert base.p_value is None and base.wins is None

    # better - base = 0, 1/2, 2/3, 0, 1/2: mean 1/3, sample variance 7/72, t = (1/3) / sqrt(7/360) = sqrt(360/7)/3
    assert (better.wins, better.ties, better.losses) == (3, 2, 0)
    expected = paired_t_test(better_rr, base_rr)
    assert expected.statistic == pytest.approx((360 / 7) ** 0.5 / 3)
    assert better.p_value == pytest.approx(expected.p_value)
    assert better.p_adjusted == pytest.approx(min(1.0, 2 * expected.p_value))  # two comparisons against base
    # p = 0.0751 (df 4): 0.150 after Bonferroni, not significant at 0.05
    assert better.p_value == pytest.approx(0.07513, abs=1e-5)
    assert not better.significant
    assert (worse.wins, worse.ties, worse.losses) == (0, 2, 3)  # differences -1/2, 0, -1/3, -3/4, 0
    assert worse.p_adjusted == pytest.approx(bonferroni([paired_t_test(worse_rr, base_rr).p_value], 2)[0])

    table = board.to_markdown()
    assert "| run | recip_rank | W/T/L (recip_rank) |" in table
    assert "| better | 0.9000 | 3/2/0 |" in table
    assert "| base | 0.5667 | baseline |" in table


def test_permutation_test_uses_exact_enumeration_for_small_n():
    board = constructed_board(test="permutation")
    better = board.cell("toy", "better", "recip_rank")
    # differences 0, 1/2, 2/3, 0, 1/2 (sum 5/3): of 32 sign flips, those keeping |sum| >= 5/3 are the 4 flips of
    # the two zero differences times the all-same-sign pair: 8 -> p = 1/4
    assert better.p_value == pytest.approx(8 / 32)
    assert better.p_value == pytest.approx(
        paired_randomization_test([1, 1, 1, 1, 0.5], [1, 0.5, 1 / 3, 1, 0]).p_value
    )


def test_significance_mark_appears_when_corrected_p_is_small():
    many = {f"q{n}": {"rel": 1} for n in range(30)}
    base = {qid: {"a": 3.0, "rel": 2.0, "b": 1.0} for qid in many}  # RR 1/2 everywhere
    better = {qid: ({"rel": 3.0, "a": 2.0} if n % 10 else {"a": 3.0, "rel": 2.0}) for n, qid in enumerate(many)}
    board = leaderboard_table([DatasetRuns("toy", many, {"base": base, "better": better})], metrics=["recip_rank"])
    cell = board.cell("toy", "better", "recip_rank")
    assert cell.significant and cell.p_adjusted < 0.05
    assert "| better | 0.9500\u2020 | 27/3/0 |" in board.to_markdown()


def test_errors():
    dataset = DatasetRuns("toy", QRELS, {"base": run_with_ranks(BASE_RANKS)})
    with pytest.raises(UserError, match="baseline 'nope'"):
        leaderboard_table([dataset], metrics=["recip_rank"], baseline="nope")
    with pytest.raises(UserError, match="significance test"):
        leaderboard_table([dataset], test="wilcoxon")
    with pytest.raises(UserError, match="without --qrels"):
        main(["run.txt"])


def test_parse_run_spec(tmp_path):
    assert parse_run_spec("mamba=/x/run.mamba.txt") == ("mamba", "/x/run.mamba.txt")
    assert parse_run_spec("/x/run.bm25.txt.gz") == ("run.bm25", "/x/run.bm25.txt.gz")


# ---- acceptance: shared SciFact (BM25 vs a deterministic rescoring) and the DL19 candidates ----

SCIFACT = "beir-scifact"
TOPICS = "topics-and-qrels"


def _terms(text):
    return {word for word in re.findall(r"[a-z0-9]+", text.lower()) if len(word) > 3}


def title_boost_run(bm25_path, corpus_path, topics_path, output):
    """BM25's top 100 rescored by BM25 + 2 x (query words found in the title): a real, different ranking."""
    titles = {}
    with gzip.open(corpus_path, "rt", encoding="utf-8") as handle:
        for line in handle:
            document = json.loads(line)
            titles[document["_id"]] = _terms(document.get("title", ""))
    queries = {}
    with gzip.open(topics_path, "rt", encoding="utf-8") as handle:
        for line in handle:
            qid, text = line.rstrip("\n").split("\t", 1)
            queries[qid] = _terms(text)
    bm25 = read_run(bm25_path)
    rescored = {
        qid: [Hit(hit.docid, hit.score + 2.0 * len(queries[qid] & titles.get(hit.docid, set()))) for hit in hits[:100]]
        for qid, hits in bm25.items()
    }
    write_run(rescored, output, "title-boost")
    return output


@pytest.fixture(scope="module")
def scifact_runs(tmp_path_factory):
    bm25 = require_shared(SCIFACT, "run.beir-v1.0.0-scifact.test.bm25-flat.anserini-0.21.0.txt.gz")
    corpus = require_shared(SCIFACT, "corpus.jsonl.gz")
    topics = require_shared(TOPICS, "topics.beir-v1.0.0-scifact.test.tsv.gz")
    output = tmp_path_factory.mktemp("scifact") / "run.scifact.title-boost.txt"
    return bm25, title_boost_run(bm25, corpus, topics, output)


def test_scifact_bm25_vs_rescored_table(scifact_runs, tmp_path):
    bm25, rescored = scifact_runs
    topics_dir = require_shared(TOPICS)
    table_path, plot_path, csv_path = tmp_path / "table.md", tmp_path / "deltas.png", tmp_path / "table.csv"
    argv = [f"bm25={bm25}", f"title-boost={rescored}", "--qrels", "beir-v1.0.0-scifact-test"]
    argv += ["--topics-dir", str(topics_dir)]
    assert main(argv + ["--output", str(table_path), "--plot", str(plot_path)]) == 0
    table = table_path.read_text()
    # BEIR convention: nDCG@10, R@100, R@1000; BM25 flat = the published Anserini figures
    assert "| run | ndcg_cut_10 | recall_100 | recall_1000 | W/T/L (ndcg_cut_10) |" in table
    assert table.splitlines()[2].startswith("| bm25 | 0.6789 | 0.9253 | 0.9767 | baseline |")
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(argv + ["--format", "csv", "--output", str(csv_path)]) == 0
    rows = {(row["run"], row["metric"]): row for row in csv.DictReader(io.StringIO(csv_path.read_text()))}
    qrels = {}
    for line in open(topics_dir / "qrels.beir-v1.0.0-scifact.test.txt"):
        qid, _, docid, grade = line.split()
        qrels.setdefault(qid, {})[docid] = int(grade)
    # the significance column is the tested function applied to pytrec_eval's per-query values
    hint = "beir-v1.0.0-scifact-test"
    base = evaluate(run_as_dict(read_run(bm25)), qrels, ["ndcg_cut_10"], collection_hint=hint, per_query=True)
    other = evaluate(run_as_dict(read_run(rescored)), qrels, ["ndcg_cut_10"], collection_hint=hint, per_query=True)
    qids = sorted(base.per_query)
    assert len(qids) == 300
    expected = paired_t_test(
        [other.per_query[q]["ndcg_cut_10"] for q in qids], [base.per_query[q]["ndcg_cut_10"] for q in qids]
    )
    row = rows[("title-boost", "ndcg_cut_10")]
    assert float(row["value"]) == pytest.approx(other["ndcg_cut_10"], abs=1e-6)
    assert float(row["p_value"]) == pytest.approx(expected.p_value, rel=1e-5)
    assert int(row["wins"]) + int(row["ties"]) + int(row["losses"]) == 300
    assert row["significant"] == str(int(expected.p_value < 0.05))


def test_two_datasets_one_table(scifact_runs, tmp_path):
    bm25, rescored = scifact_runs
    topics_dir = require_shared(TOPICS)
    dl19 = require_shared("msmarco-passage-dl19-bm25-top100", "run.dl19-passage.bm25.top100.txt.gz")
    # a second DL19 run: RRF of BM25 with its own reverse top-10 (deterministic, different per query)
    dl19_run = read_run(dl19)
    shuffled = {qid: list(reversed(hits[:10])) + hits[10:] for qid, hits in dl19_run.items()}
    from pyserini_ssm.fusion import reciprocal_rank_fusion

    fused_path = tmp_path / "run.dl19.fused.txt"
    write_run(reciprocal_rank_fusion([dl19_run, shuffled]), fused_path, "fused")
    output = tmp_path / "table.md"
    argv = [
        "--dataset", "beir-v1.0.0-scifact-test", f"bm25={bm25}", f"other={rescored}",
        "--dataset", "dl19-passage", f"bm25={dl19}", f"other={fused_path}",
        "--topics-dir", str(topics_dir), "--output", str(output), "--test", "permutation", "--trials", "2000",
    ]
    assert main(argv) == 0
    header = output.read_text().splitlines()[0]
    assert "beir-v1.0.0-scifact-test ndcg_cut_10" in header and "dl19-passage map" in header
    bm25_row = output.read_text().splitlines()[2]
    # DL19 BM25 top 100 (SOURCE.md): nDCG@10 0.5058; MAP at relevance level 2, over the top 100 only
    assert "| 0.5058 |" in bm25_row
