"""ScoringModel: pooling and padding. A pair's score alone equals its score inside a padded batch, in every family."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pyserini_ssm.models.reranker import Reranker
from pyserini_ssm.models.scoring import ScoringModel
from pyserini_ssm.ops.batching import pack_batch, pad_batch

# One architecture per backbone implementation: Mamba-1, Mamba-2, GPT-NeoX, OPT (with its 350m projection), Llama,
# Qwen2, BERT, RoBERTa, ELECTRA, DeBERTa-v2.
PARITY_MODELS = ["mamba1-130m", "mamba2-130m", "pythia-160m", "opt-350m", "llama-3.2-1b", "qwen2.5-0.5b",
                 "bert-base", "roberta-base", "electra-base", "deberta-v3-base"]

PAIRS = [
    ("what is a cat", "A cat is a small domesticated carnivorous mammal."),
    ("rust ownership", "Ownership is Rust's most unique feature. " * 12),
    ("what is a cat", "Dogs."),
    ("capital of france", "Paris is the capital and most populous city of France, on the Seine."),
]


def load(path, **kwargs) -> Reranker:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reranker.from_pretrained(str(path), device="cpu", dtype="fp32", **kwargs)


@pytest.mark.parametrize("name", PARITY_MODELS)
def test_score_alone_equals_score_in_a_padded_batch(tiny_reranker, name):
    reranker = load(tiny_reranker(name))
    encoded = reranker.encoder.encode_many(PAIRS)
    with torch.inference_mode():
        batched = reranker.model(pad_batch(encoded, reranker.pad_id)).numpy()  # padded to the longest pair
        alone = np.array([reranker.model(pad_batch([item], reranker.pad_id)).item() for item in encoded])
        # The pad id must not matter either: pad with another token.
        other_pad = reranker.model(pad_batch(encoded, reranker.pad_id + 1)).numpy()
    assert len({len(item) for item in encoded}) == len(encoded)  # really different lengths, really padded
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(other_pad, alone, rtol=0, atol=1e-5)
    assert np.ptp(alone) > 0  # the scores depend on the input


def test_packed_mamba2_row_equals_padded_batch(tiny_reranker):
    reranker = load(tiny_reranker("mamba2"), backend="torch")
    encoded = reranker.encoder.encode_many(PAIRS)
    with torch.inference_mode():
        padded = reranker.model(pad_batch(encoded, reranker.pad_id)).numpy()
        packed = reranker.model(pack_batch(encoded)).numpy()
    np.testing.assert_allclose(packed, padded, rtol=0, atol=1e-5)


def test_cls_pooling_reads_position_zero_and_last_pooling_the_last_real_token(tiny_reranker):
    reranker = load(tiny_reranker("decoder"))
    encoded = reranker.encoder.encode_many(PAIRS[:2])
    batch = pad_batch(encoded, reranker.pad_id)
    with torch.inference_mode():
        hidden = reranker.model.backbone(input_ids=batch["input_ids"],
                                         attention_mask=batch["attention_mask"]).last_hidden_state
        pooled = reranker.model.encode(batch)
    for row, item in enumerate(encoded):
        torch.testing.assert_close(pooled[row], hidden[row, len(item) - 1])
    encoder = load(tiny_reranker("encoder"))
    batch = pad_batch(encoder.encoder.encode_many(PAIRS[:2]), encoder.pad_id)
    with torch.inference_mode():
        hidden = encoder.model.backbone(**{k: v for k, v in batch.items() if k != "last_index"}).last_hidden_state
        torch.testing.assert_close(encoder.model.encode(batch), hidden[:, 0])


def test_scores_are_float32_of_shape_batch_and_dropout_only_in_training(tiny_reranker):
    reranker = load(tiny_reranker("encoder"))
    batch = pad_batch(reranker.encoder.encode_many(PAIRS), reranker.pad_id)
    with torch.inference_mode():
        scores = reranker.model(batch)
        again = reranker.model(batch)
    assert scores.shape == (len(PAIRS),) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, again)
    assert isinstance(reranker.model.dropout, torch.nn.Dropout) and reranker.model.dropout.p == 0.1


def test_bad_pooling_is_rejected():
    from pyserini_ssm.errors import UserError

    with pytest.raises(UserError, match="pooling"):
        ScoringModel(torch.nn.Identity(), "encoder", "mean", 8)
    with pytest.raises(UserError, match="last-token"):
        ScoringModel(torch.nn.Identity(), "mamba2", "cls", 8)
