import random

import pytest

from pyserini_ssm.errors import UserError
from pyserini_ssm.fuse import main as fuse_main
from pyserini_ssm.fusion import interpolate, min_max_normalize, reciprocal_rank_fusion, score_interpolation
from pyserini_ssm.runs import Hit, read_run

RUN_A = {"q1": [Hit("d1", 3.0), Hit("d2", 2.0), Hit("d3", 1.0)]}
RUN_B = {"q1": {"d3": 10.0, "d4": 5.0, "d1": 0.0}}  # a score dict: ordered by score here


def ranking(fused, qid="q1"):
    return [(hit.docid, hit.score) for hit in fused[qid]]


def test_rrf_known_answer_and_docid_tie_break():
    fused = reciprocal_rank_fusion([RUN_A, RUN_B])
    # d1 = 1/61 + 1/63 = d3 (tie, docid ascending); d2 = 1/62 = d4
    assert ranking(fused) == [
        ("d1", pytest.approx(1 / 61 + 1 / 63)),
        ("d3", pytest.approx(1 / 61 + 1 / 63)),
        ("d2", pytest.approx(1 / 62)),
        ("d4", pytest.approx(1 / 62)),
    ]


def test_rrf_depth_and_k():
    fused = reciprocal_rank_fusion([RUN_A, RUN_B], rrf_k=0, depth=2, k=3)
    assert ranking(fused) == [("d1", 1.0), ("d3", 1.0), ("d2", 0.5)]


def test_normalised_interpolation_known_answer():
    # min-max: A -> d1 1, d2 .5, d3 0; B -> d3 1, d4 .5, d1 0; then 0.7 A + 0.3 B, missing = 0
    fused = interpolate(RUN_A, RUN_B, alpha=0.7)
    assert ranking(fused) == [
        ("d1", pytest.approx(0.7)),
        ("d2", pytest.approx(0.35)),
        ("d3", pytest.approx(0.3)),
        ("d4", pytest.approx(0.15)),
    ]


def test_raw_interpolation_is_pyserinis():
    fused = interpolate(RUN_A, RUN_B, alpha=0.5, normalize=False)
    assert [docid for docid, _ in ranking(fused)] == ["d3", "d4", "d1", "d2"]
    assert ranking(fused)[0][1] == pytest.approx(0.5 * 1.0 + 0.5 * 10.0)


def test_min_max_all_equal_is_one():
    assert min_max_normalize([2.0, 2.0]) == [1.0, 1.0]
    assert min_max_normalize([1.0, 3.0, 2.0]) == [0.0, 1.0, 0.5]


def test_bad_arguments():
    with pytest.raises(UserError, match="at least 2"):
        reciprocal_rank_fusion([RUN_A])
    with pytest.raises(UserError, match="alpha"):
        interpolate(RUN_A, RUN_B, alpha=1.5)
    with pytest.raises(UserError, match="weights"):
        score_interpolation([RUN_A, RUN_B], [1.0])
    with pytest.raises(UserError, match="depth"):
        reciprocal_rank_fusion([RUN_A, RUN_B], depth=0)


def _random_run_file(path, seed, queries=4, docs=30, pool=45):
    generator = random.Random(seed)
    with open(path, "w") as handle:
        for qid in range(1, queries + 1):
            docids = generator.sample([f"D{n}" for n in range(pool)], docs)
            # Coarse scores make ties, which must be broken the same way as Pyserini.
            scores = sorted((round(generator.uniform(0, 5), 1) for _ in docids), reverse=True)
            for rank, (docid, score) in enumerate(zip(docids, scores), start=1):
                handle.write(f"{qid} Q0 {docid} {rank} {score} run{seed}\n")


@pytest.mark.parametrize("method", ["rrf", "interpolation", "normalize", "average"])
def test_matches_pyserini_fusion(tmp_path, method):
    pyserini_fusion = pytest.importorskip("pyserini.fusion")
    from pyserini.trectools import TrecRun

    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for seed, path in enumerate(paths):
        _random_run_file(path, seed)
    theirs_runs = [TrecRun(str(path)) for path in paths]
    ours_runs = [read_run(path) for path in paths]
    depth, k = 20, 25
    if method == "rrf":
        theirs = pyserini_fusion.reciprocal_rank_fusion(theirs_runs, rrf_k=60, depth=depth, k=k)
        ours = reciprocal_rank_fusion(ours_runs, rrf_k=60, depth=depth, k=k)
    elif method == "interpolation":
        theirs = pyserini_fusion.interpolation(theirs_runs, alpha=0.3, depth=depth, k=k)
        ours = interpolate(ours_runs[0], ours_runs[1], 0.3, normalize=False, depth=depth, k=k)
    elif method == "normalize":
        theirs = pyserini_fusion.normalize(theirs_runs, depth=depth, k=k)
        ours = score_interpolation(ours_runs, [1.0, 1.0], normalize=True, depth=depth, k=k)
    else:
        theirs = pyserini_fusion.average(theirs_runs, depth=depth, k=k)
        ours = score_interpolation(ours_runs, [0.5, 0.5], normalize=False, depth=depth, k=k)
    data = theirs.run_data
    for qid, hits in ours.items():
        rows = data[data["topic"].astype(str) == qid]
        assert [hit.docid for hit in hits] == list(rows["docid"])
        assert [hit.score for hit in hits] == pytest.approx(list(rows["score"]), rel=1e-12)


def test_cli_writes_a_trec_run(tmp_path):
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    for seed, path in enumerate(paths):
        _random_run_file(path, seed)
    output = tmp_path / "fused.txt"
    assert fuse_main(["--runs", *map(str, paths), "--output", str(output), "--k", "10", "--runtag", "mix"]) == 0
    fused = read_run(output)
    assert sorted(fused) == ["1", "2", "3", "4"]
    assert all(len(hits) == 10 for hits in fused.values())
    expected = reciprocal_rank_fusion([read_run(path) for path in paths], depth=1000, k=10)
    assert [hit.docid for hit in fused["1"]] == [hit.docid for hit in expected["1"]]
    assert output.read_text().split("\n")[0].split()[-1] == "mix"
