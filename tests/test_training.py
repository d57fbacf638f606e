"""Training: losses, data sources, group order, the loop (one step, resume, gloo 2 processes), checkpoints."""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyserini_ssm.errors import UserError
from pyserini_ssm.training.data import (
    DataSource,
    GroupSchedule,
    TrainingExample,
    load_beir_training,
    load_examples,
    read_training_jsonl,
    write_training_jsonl,
)

torch = pytest.importorskip("torch")

REPO_ROOT = Path(__file__).resolve().parents[1]

QUERIES = ["what is a cat", "how do plants grow", "why is the sky blue", "who wrote hamlet", "where is paris",
           "when did rome fall", "what do bees make", "how hot is the sun"]
POSITIVES = ["cats are small furry animals kept as pets", "plants grow using light water and soil nutrients",
             "rayleigh scattering makes the sky look blue", "william shakespeare wrote the play hamlet",
             "paris is the capital city of france", "the western roman empire fell in 476",
             "bees make honey from flower nectar", "the sun surface is about 5500 degrees"]
NEGATIVE_POOL = ["the stock market closed higher today", "a recipe for tomato soup with basil",
                 "football teams play eleven players a side", "the train leaves the station at noon",
                 "mountains are formed by tectonic plates", "the library opens on sunday mornings",
                 "a guide to tuning an old guitar", "rain fell all night over the city"]


def toy_examples(negatives_per_query: int = 7) -> list[TrainingExample]:
    return [TrainingExample(query, [positive],
                            [NEGATIVE_POOL[(i + k) % len(NEGATIVE_POOL)] for k in range(negatives_per_query)],
                            qid=str(i))
            for i, (query, positive) in enumerate(zip(QUERIES, POSITIVES))]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


# ---------------------------------------------------------------------------------------------------------------
# Losses


def test_lce_is_cross_entropy_with_the_positive_first():
    from pyserini_ssm.training.losses import localized_contrastive_loss

    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])  # (G=2, n=3)
    expected = sum(-math.log(math.exp(row[0]) / sum(math.exp(v) for v in row)) for row in scores.tolist()) / 2
    assert localized_contrastive_loss(scores).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        localized_contrastive_loss(torch.zeros(4))


def test_bce_labels_only_column_zero_positive():
    from pyserini_ssm.training.losses import get_loss, pointwise_bce_loss

    scores = torch.tensor([[3.0, -1.0]])
    expected = (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(-1.0))) / 2
    assert pointwise_bce_loss(scores).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(UserError, match="unknown loss"):
        get_loss("hinge")


# ---------------------------------------------------------------------------------------------------------------
# Data sources


def test_jsonl_texts_and_tevatron_objects(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"query": "q1", "positives": ["p1"], "negatives": ["n1", "n2"]},
        {"query_id": "7", "query": "q2", "positive_passages": [{"docid": "d1", "title": "T", "text": "body"}],
         "negative_passages": [{"docid": "d2", "text": "neg"}]},
    ])
    first, second = read_training_jsonl(path)
    assert (first.query, first.positives, first.negatives) == ("q1", ["p1"], ["n1", "n2"])
    assert (second.qid, second.positives, second.negatives) == ("7", ["T body"], ["neg"])


@pytest.mark.parametrize("content, message", [
    ("", "training file is empty"),
    ('{"query": "q", "positives": [], "negatives": ["n"]}\n', "has no positive"),
    ('{"query": "q", "positives": ["p"]}\nnot json\n', r"train.jsonl:2: not valid JSON"),
    ('{"positives": ["p"]}\n', r"train.jsonl:1: missing or empty \"query\""),
    ('{"query": "q", "positives": [""]}\n', "empty document text"),
    ('{"query": "q", "positives": [{"docid": "d9"}]}\n', "give --index"),
])
def test_jsonl_bad_input(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_training_jsonl(path)


def test_written_jsonl_reads_back(tmp_path):
    examples = toy_examples(3)
    assert write_training_jsonl(examples, tmp_path / "out.jsonl") == len(examples)
    assert read_training_jsonl(tmp_path / "out.jsonl") == examples


def distractor(query: str) -> str:
    """A document sharing the query's words without answering it: a BM25 hard negative."""
    return f"people often ask {query} in quizzes"


def write_beir(folder: Path) -> Path:
    folder.mkdir()
    (folder / "qrels").mkdir()
    corpus = [{"_id": f"d{i}", "title": f"title {i}", "text": text}
              for i, text in enumerate(POSITIVES + NEGATIVE_POOL)]
    corpus += [{"_id": f"x{i}", "title": "", "text": distractor(query)} for i, query in enumerate(QUERIES)]
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in corpus)
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": q} for i, q in enumerate(QUERIES)])
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(6)))
    return folder


def test_beir_folder_without_index_reads_positives(tmp_path):
    folder = write_beir(tmp_path / "beir")
    examples = load_beir_training(folder, index=None)
    assert [e.qid for e in examples] == [f"q{i}" for i in range(6)]
    assert examples[2].positives == [f"title 2 {POSITIVES[2]}"] and examples[2].negatives == []
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tmissing\t1\n")
    with pytest.raises(UserError, match="docid missing"):
        load_beir_training(folder, index=None)
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t0\n")
    with pytest.raises(UserError, match="no positive judgment"):
        load_beir_training(folder, index=None)


def test_data_source_needs_exactly_one_source():
    with pytest.raises(UserError, match="exactly one"):
        DataSource().validate()
    with pytest.raises(UserError, match="exactly one"):
        DataSource(train_jsonl="a", beir="b").validate()
    with pytest.raises(UserError, match="--queries, --qrels and --index"):
        DataSource(queries="q", qrels="r").validate()


# ---------------------------------------------------------------------------------------------------------------
# Group order


def test_groups_are_deterministic_and_positive_first():
    examples = toy_examples(7)
    one = GroupSchedule(examples, group_size=4, batch_size=2, seed=3)
    two = GroupSchedule(examples, group_size=4, batch_size=2, seed=3)
    assert one.steps_per_epoch == 4
    assert [one.micro_batches(s) for s in range(8)] == [two.micro_batches(s) for s in range(8)]
    other_seed = GroupSchedule(examples, group_size=4, batch_size=2, seed=4)
    assert [one.micro_batches(s) for s in range(4)] != [other_seed.micro_batches(s) for s in range(4)]
    by_query = {e.query: e for e in examples}
    epoch = [group for step in range(4) for batch in one.micro_batches(step) for group in batch]
    assert sorted(group.query for group in epoch) == sorted(QUERIES)  # every query once per epoch
    for group in epoch:
        example = by_query[group.query]
        assert group.documents[0] in example.positives
        assert len(set(group.documents[1:])) == 3 and set(group.documents[1:]) <= set(example.negatives)


def test_ranks_split_a_step_like_accumulation_does():
    examples = toy_examples(7)
    accumulated = GroupSchedule(examples, group_size=3, batch_size=1, seed=0, accumulation=2)
    ranks = [GroupSchedule(examples, group_size=3, batch_size=1, seed=0, world_size=2, rank=r) for r in (0, 1)]
    for step in range(accumulated.steps_per_epoch * 2):
        micro = accumulated.micro_batches(step)
        assert micro == [ranks[0].micro_batches(step)[0], ranks[1].micro_batches(step)[0]]


def test_few_negatives_are_filled_from_other_queries():
    examples = toy_examples(1)
    schedule = GroupSchedule(examples, group_size=8, batch_size=4, seed=0)
    for group in schedule.micro_batches(0)[0]:
        example = next(e for e in examples if e.query == group.query)
        assert len(group.documents) == 8 and group.documents[1] == example.negatives[0]


def test_schedule_rejects_too_little_data():
    with pytest.raises(UserError, match="fewer than one global batch"):
        GroupSchedule(toy_examples(), group_size=2, batch_size=4, seed=0, world_size=3)


# ---------------------------------------------------------------------------------------------------------------
# BM25 negative mining through our first stage (real Lucene index, Java)


@pytest.fixture(scope="module")
def beir_with_index(tmp_path_factory):
    pytest.importorskip("pyserini")
    from pyserini_ssm.first_stage.lucene import build_index
    from pyserini_ssm.first_stage.lucene_documents import LuceneDocuments

    root = tmp_path_factory.mktemp("mining")
    folder = write_beir(root / "beir")
    build_index(folder, root / "index")
    return folder, LuceneDocuments(root / "index")  # training opens no Lucene itself: the index is passed in


def test_an_index_path_is_refused_with_the_opener_to_use(tmp_path):
    # Training never opens Lucene itself (no first stage, no Java on the GPU machines): a path must come opened.
    folder = write_beir(tmp_path / "beir")
    with pytest.raises(TypeError, match="LuceneDocuments"):
        load_beir_training(folder, index=str(tmp_path / "index"))
    with pytest.raises(TypeError, match="open_index"):
        load_examples(DataSource(beir=str(folder), index=str(tmp_path / "index")))
    opened = []
    with pytest.raises(TypeError, match="LuceneDocuments"):  # what the opener returns is used (a path again here)
        load_examples(DataSource(beir=str(folder), index=str(tmp_path / "index")), lambda path: opened.append(path)
                      or path)
    assert opened == [str(tmp_path / "index")]


@pytest.mark.java
def test_beir_folder_mines_bm25_negatives(beir_with_index):
    folder, index = beir_with_index
    examples = load_beir_training(folder, index=index, negatives_depth=5)
    corpus_texts = {f"title {i} {text}" for i, text in enumerate(POSITIVES + NEGATIVE_POOL)}
    corpus_texts |= {distractor(query) for query in QUERIES}
    assert len(examples) == 6
    for example in examples:
        assert distractor(example.query) in example.negatives and len(example.negatives) <= 5
        assert example.positives[0] not in example.negatives  # a positive is never mined as a negative
        assert set(example.negatives) <= corpus_texts
    # The same mining through the CLI data source, written out and read back without an index.
    same = load_examples(DataSource(beir=str(folder), index=index, negatives_depth=5))
    assert same == examples


@pytest.mark.java
def test_jsonl_docids_are_fetched_and_missing_ones_named(beir_with_index, tmp_path):
    folder, index = beir_with_index
    path = write_jsonl(tmp_path / "ids.jsonl", [{"query": QUERIES[0], "positives": ["d0"], "negatives": ["d9"]},
                                                {"query": QUERIES[1], "positives": ["d1"]}])
    first, second = read_training_jsonl(path, index=index, negatives_depth=4)
    assert first.positives == [f"title 0 {POSITIVES[0]}"] and first.negatives == [f"title 9 {NEGATIVE_POOL[1]}"]
    assert second.negatives and f"title 1 {POSITIVES[1]}" not in second.negatives  # mined, positive removed
    write_jsonl(path, [{"query": QUERIES[0], "positives": ["no-such-doc"], "negatives": ["d9"]}])
    with pytest.raises(UserError, match="no-such-doc"):
        read_training_jsonl(path, index=index)


# ---------------------------------------------------------------------------------------------------------------
# The loop on a tiny random BERT reranker (CPU)


@pytest.fixture(scope="module")
def tiny_bert(tiny_reranker):
    return tiny_reranker("encoder")


def small_config(model, output, **overrides):
    from pyserini_ssm.training.loop import TrainConfig

    values = dict(model=str(model), output=str(output), group_size=4, batch_size=2, lr=1e-3, max_steps=4,
                  max_length=64, progress=False)
    return TrainConfig(**(values | overrides))


def read_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    return {name: tensor for file in sorted(directory.glob("*.safetensors")) for name, tensor in
            {f"{file.name}:{k}": v for k, v in load_file(file).items()}.items()}


def test_one_step_lowers_the_loss_on_a_fixed_batch(tiny_bert):
    from pyserini_ssm.training.losses import localized_contrastive_loss
    from pyserini_ssm.training.loop import PairBatcher, build_optimizer, load_reranker

    config = small_config(tiny_bert, "unused")
    reranker = load_reranker(str(tiny_bert), config, torch.device("cpu"))
    model = reranker.model.eval()  # no dropout: the same batch gives the same loss before and after
    groups = GroupSchedule(toy_examples(), group_size=4, batch_size=4, seed=0).micro_batches(0)[0]
    inputs = PairBatcher(reranker, config, torch.device("cpu"))(groups)
    optimizer = build_optimizer(model, config)
    before = localized_contrastive_loss(model(inputs).view(4, 4))  # (G=4, n=4)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = localized_contrastive_loss(model(inputs).view(4, 4))
    assert after.item() < before.item() - 1e-3


def test_packed_training_steps_have_the_padded_losses(tiny_bert, tmp_path):
    """`--pack` on a transformer: each micro-batch one packed row through varlen attention (on the CPU its
    per-sequence reference), the same losses as padded batches."""
    from pyserini_ssm.training.loop import train

    examples = toy_examples()
    runs = {pack: train(small_config(tiny_bert, tmp_path / f"pack-{pack}", max_steps=2, pack=pack,
                                     disable_dropout=True), examples) for pack in (False, True)}
    assert runs[True].losses == pytest.approx(runs[False].losses, abs=1e-5)


def test_resume_equals_an_unbroken_run(tiny_bert, tmp_path):
    from pyserini_ssm.training.loop import train

    examples = toy_examples()
    unbroken = train(small_config(tiny_bert, tmp_path / "unbroken", max_steps=6, save_every=4), examples)
    first = train(small_config(tiny_bert, tmp_path / "broken", max_steps=6, stop_after_steps=3), examples)
    assert first.steps == 3 and first.final_directory is None
    assert (tmp_path / "broken" / "checkpoint-3" / "trainer_state.pt").is_file()
    second = train(small_config(tiny_bert, tmp_path / "broken", max_steps=6, resume=True), examples)
    assert second.steps == 6 and len(second.losses) == 3
    assert first.losses + second.losses == pytest.approx(unbroken.losses, rel=1e-6, abs=1e-7)
    assert [r["loss"] for r in read_log(tmp_path / "broken")] == [r["loss"] for r in read_log(tmp_path / "unbroken")]
    resumed, straight = weights(tmp_path / "broken" / "model"), weights(tmp_path / "unbroken" / "model")
    assert resumed.keys() == straight.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-6, atol=1e-7)
    assert (tmp_path / "unbroken" / "checkpoint-4").is_dir() and (tmp_path / "unbroken" / "loss_curve.png").is_file()
    assert unbroken.losses[-1] < unbroken.losses[0]


def test_trained_checkpoint_loads_and_reranks(tiny_bert, tmp_path):
    from pyserini_ssm.models.reranker import Reranker
    from pyserini_ssm.runs import Hit
    from pyserini_ssm.training.loop import train

    train(small_config(tiny_bert, tmp_path / "run", max_steps=8, lr=2e-3), toy_examples())
    reranker = Reranker.from_pretrained(str(tmp_path / "run" / "model"), device="cpu")
    assert reranker.head_trained
    hits = [Hit(f"d{i}", 0.0, text) for i, text in enumerate(NEGATIVE_POOL[:3] + POSITIVES[:1])]
    reranked = reranker.rerank(QUERIES[0], hits)
    assert sorted(hit.docid for hit in reranked) == [f"d{i}" for i in range(4)]
    assert len({hit.score for hit in reranked}) == 4


def test_output_in_use_and_missing_checkpoint_are_user_errors(tiny_bert, tmp_path):
    from pyserini_ssm.training.loop import train

    with pytest.raises(UserError, match="no checkpoint"):
        train(small_config(tiny_bert, tmp_path / "empty", resume=True), toy_examples())
    train(small_config(tiny_bert, tmp_path / "used", max_steps=1), toy_examples())
    with pytest.raises(UserError, match="already holds a training run"):
        train(small_config(tiny_bert, tmp_path / "used", max_steps=1), toy_examples())
    with pytest.raises(UserError, match="differs from the data"):
        train(small_config(tiny_bert, tmp_path / "used", max_steps=2, resume=True), toy_examples(3))


def test_a_model_without_a_head_cannot_be_trained():
    from types import SimpleNamespace

    from pyserini_ssm.training.loop import check_trainable

    with pytest.raises(UserError, match="no trainable score head"):
        check_trainable(SimpleNamespace(model=torch.nn.Module()), "headless")


def test_cli_trains_from_jsonl_and_rejects_bad_input(tiny_bert, tmp_path):
    from pyserini_ssm.train import main

    data = tmp_path / "train.jsonl"
    write_training_jsonl(toy_examples(), data)
    common = ["--model", str(tiny_bert), "--group-size", "4", "--batch-size", "2", "--max-length", "64",
              "--no-progress"]
    assert main(["--train-jsonl", str(data), "--output", str(tmp_path / "out"), "--max-steps", "2", "--lr", "1e-3",
                 "--max-query-length", "3", "--max-doc-length", "8", *common]) == 0
    assert [record["step"] for record in read_log(tmp_path / "out")] == [1, 2]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="empty"):
        main(["--train-jsonl", str(empty), "--output", str(tmp_path / "never"), *common])
    assert not (tmp_path / "never").exists()  # nothing half-written
    with pytest.raises(UserError, match="--mine-only needs --write-jsonl"):
        main(["--train-jsonl", str(data), "--mine-only"])
    with pytest.raises(UserError, match="group-size"):
        main(["--train-jsonl", str(data), "--output", str(tmp_path / "x"), *common, "--group-size", "1"])


def test_query_and_document_limits_cut_on_token_boundaries(tiny_bert):
    from pyserini_ssm.training.loop import PairBatcher, load_reranker

    config = small_config(tiny_bert, "unused", max_query_length=2, max_doc_length=3)
    reranker = load_reranker(str(tiny_bert), config, torch.device("cpu"))
    batcher = PairBatcher(reranker, config, torch.device("cpu"))
    assert batcher._cut("why is the sky blue", 2) == "why is"
    inputs = batcher([TrainingGroup_of("why is the sky blue", "rayleigh scattering makes the sky look blue")])
    assert inputs["attention_mask"].sum().item() == 1 + 2 + 1 + 3 + 1  # [CLS] q [SEP] d [SEP]


def TrainingGroup_of(query: str, document: str):
    from pyserini_ssm.training.data import TrainingGroup

    return TrainingGroup(query, (document,))


@pytest.mark.slow
def test_two_gloo_processes_equal_one_with_accumulation_two(tiny_bert, tmp_path):
    data = tmp_path / "train.jsonl"
    write_training_jsonl(toy_examples(), data)
    common = ["-m", "pyserini_ssm.train", "--train-jsonl", str(data), "--model", str(tiny_bert), "--group-size",
              "4", "--batch-size", "2", "--max-steps", "4", "--lr", "1e-3", "--max-length", "64",
              "--disable-dropout", "--no-progress"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    # --standalone: torchrun's own rendezvous on a free port (a fixed --master-port fails when anything holds it)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *common, "--output", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, *common, "--grad-accum", "2", "--output", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two_log, one_log = read_log(tmp_path / "two"), read_log(tmp_path / "one")
    assert [r["step"] for r in two_log] == [r["step"] for r in one_log] == [1, 2, 3, 4]
    assert [r["loss"] for r in two_log] == pytest.approx([r["loss"] for r in one_log], rel=1e-4, abs=1e-5)
    two_weights, one_weights = weights(tmp_path / "two" / "model"), weights(tmp_path / "one" / "model")
    for name in one_weights:
        torch.testing.assert_close(two_weights[name], one_weights[name], rtol=1e-4, atol=1e-5)


def test_lora_with_gradient_checkpointing_and_bf16_saves_a_merged_reranker(tiny_bert, tmp_path):
    pytest.importorskip("peft")
    from pyserini_ssm.models.reranker import Reranker
    from pyserini_ssm.training.loop import train

    result = train(small_config(tiny_bert, tmp_path / "lora", max_steps=2, lora=True, lora_rank=4,
                                grad_checkpointing=True, dtype="bf16", lr=1e-2), toy_examples())
    assert result.steps == 2 and all(math.isfinite(loss) for loss in result.losses)
    trained, base = weights(tmp_path / "lora" / "model"), weights(Path(tiny_bert))
    names = [name for name in base if name.startswith("model.safetensors:") and name.endswith("query.weight")]
    assert names and not any("lora" in name for name in trained)  # adapters merged away
    assert any(not torch.equal(trained[name], base[name]) for name in names)  # and they changed the backbone
    reranker = Reranker.from_pretrained(str(tmp_path / "lora" / "model"), device="cpu")
    assert reranker.predict([(QUERIES[0], POSITIVES[0])]).shape == (1,)
    assert not (tmp_path / "lora" / "model" / "trainer_state.pt").exists()  # optimizer state: checkpoints only
