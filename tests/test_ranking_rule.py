"""One ranking rule everywhere (runs.ranking_key): the Python API, the rerank CLI and the run writer agree on ties."""

from __future__ import annotations

import json

import pytest
import torch

from pyserini_ssm.runs import Hit, format_run_lines, ranking_key, read_run, sorted_hits, written_score


def test_ranking_key_orders_by_the_written_score_then_docid():
    # b and a differ below the 6th decimal: equal in the file, so docid decides, as it will for any reader.
    hits = [Hit("c", 0.1), Hit("b", 0.50000004), Hit("a", 0.5000001), Hit("z", 0.7)]
    assert [hit.docid for hit in sorted_hits(hits)] == ["z", "a", "b", "c"]
    assert written_score(0.50000004) == written_score(0.5000001) == 0.5
    assert ranking_key(Hit("a", 2.0)) < ranking_key(Hit("b", 2.0)) < ranking_key(Hit("a", 1.0))
    lines = format_run_lines("q", hits, "t")
    assert [line.split()[2] for line in lines] == ["z", "a", "b", "c"]


def test_writer_refuses_non_finite_scores():
    from pyserini_ssm.errors import UserError

    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(UserError, match="not finite"):
            format_run_lines("q", [Hit("a", 1.0), Hit("b", bad)], "t")


@pytest.fixture(scope="module")
def constant_model_dir(tiny_reranker, tmp_path_factory):
    """The tiny decoder with its head set to 0 * features + 0.5: a real model that scores every pair exactly 0.5."""
    from pyserini_ssm.models.reranker import Reranker

    with pytest.warns(UserWarning, match="untrained"):
        model = Reranker.from_pretrained(str(tiny_reranker("decoder")), device="cpu")
    with torch.no_grad():
        model.model.head.weight.zero_()
        model.model.head.bias.fill_(0.5)
    directory = tmp_path_factory.mktemp("constant") / "model"
    model.save_pretrained(str(directory), head_trained=True)
    return directory


def test_api_and_cli_agree_on_tied_scores(constant_model_dir, tmp_path):
    from pyserini_ssm.models.reranker import Reranker
    from pyserini_ssm.rerank import main

    # First stage ranks d2 above d1; the model ties them at [0.5, 0.5]: both must put d1 (docid order) first.
    hits = [{"docid": "d2", "content": "red pandas eat bamboo", "qid": "q1", "score": 9.0},
            {"docid": "d1", "content": "giant pandas eat bamboo too", "qid": "q1", "score": 8.0}]
    model = Reranker.from_pretrained(str(constant_model_dir), device="cpu")
    assert model.predict([("what do pandas eat", hit["content"]) for hit in hits]).tolist() == [0.5, 0.5]
    api = model.rerank("what do pandas eat", hits)
    assert [(hit.docid, hit.score) for hit in api] == [("d1", 0.5), ("d2", 0.5)]

    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps([{"query": "what do pandas eat", "hits": hits}]))
    output = tmp_path / "run.txt"
    assert main(["--model", str(constant_model_dir), "--candidates", str(candidates), "--output", str(output),
                 "--device", "cpu", "--no-progress"]) == 0
    cli = read_run(output)["q1"]
    assert [(hit.docid, hit.score) for hit in cli] == [(hit.docid, hit.score) for hit in api]
    assert [line.split()[2] for line in output.read_text().splitlines()] == ["d1", "d2"]
