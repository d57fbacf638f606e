"""ops.batching: sorting, padding, packing and scattering are exact bookkeeping; check it on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyserini_ssm.models.templates import EncodedPair
from pyserini_ssm.ops.batching import length_sorted_batches, pack_batch, pack_sequences, pad_batch, scatter_scores

lengths_strategy = st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_strategy, batch_size=st.integers(1, 40), max_tokens=st.one_of(st.none(), st.integers(1, 3000)))
def test_length_sorted_batches_cover_each_index_once_within_limits(lengths, batch_size, max_tokens):
    batches = length_sorted_batches(lengths, batch_size, max_tokens)
    flat = [index for batch in batches for index in batch]
    assert sorted(flat) == list(range(len(lengths)))
    widths = [max(lengths[index] for index in batch) for batch in batches]
    assert widths == sorted(widths, reverse=True)  # longest batch first
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        if max_tokens is not None and len(batch) > 1:
            assert len(batch) * max(lengths[index] for index in batch) <= max_tokens


def test_length_sorted_batches_example():
    assert length_sorted_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    with pytest.raises(ValueError):
        length_sorted_batches([1], 0)


def _pairs(lengths, with_types=False):
    rng = np.random.default_rng(0)
    pairs = []
    for length in lengths:
        ids = rng.integers(5, 1000, size=length).tolist()
        types = ([0] * (length // 2) + [1] * (length - length // 2)) if with_types else None
        pairs.append(EncodedPair(ids, types))
    return pairs


def test_pad_batch_right_pads_and_points_at_the_last_real_token():
    pairs = _pairs([4, 1, 6], with_types=True)
    batch = pad_batch(pairs, pad_id=0)
    assert batch["input_ids"].shape == (3, 6) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1] * 6]
    assert batch["last_index"].tolist() == [3, 0, 5]
    for row, pair in enumerate(pairs):
        assert batch["input_ids"][row, : len(pair)].tolist() == pair.input_ids
        assert batch["input_ids"][row, len(pair):].eq(0).all()
        assert batch["token_type_ids"][row, : len(pair)].tolist() == pair.token_type_ids
    assert "token_type_ids" not in pad_batch(_pairs([2, 3]), pad_id=1)


@settings(max_examples=40, deadline=None)
@given(lengths=lengths_strategy, budget=st.integers(1, 1000))
def test_pack_sequences_cover_each_index_once_within_budget(lengths, budget):
    rows = pack_sequences(lengths, budget)
    assert sorted(index for row in rows for index in row) == list(range(len(lengths)))
    for row in rows:
        assert len(row) == 1 or sum(lengths[index] for index in row) <= budget


def test_pack_batch_fields():
    pairs = _pairs([3, 1, 2])
    batch = pack_batch(pairs, token_budget=6)
    assert batch["input_ids"].shape == (1, 6)
    assert batch["input_ids"][0].tolist() == pairs[0].input_ids + pairs[1].input_ids + pairs[2].input_ids
    assert batch["seq_idx"].dtype == torch.int32 and batch["seq_idx"].tolist() == [[0, 0, 0, 1, 2, 2]]
    assert batch["cu_seqlens"].tolist() == [0, 3, 4, 6] and batch["cu_seqlens"].dtype == torch.int32
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1]]
    assert batch["last_index"].tolist() == [2, 3, 5]
    assert batch["sequence_lengths"] == (3, 1, 2)  # host ints: the short SSD tiles the row without a device read
    with pytest.raises(ValueError, match="token budget"):
        pack_batch(pairs, token_budget=5)


def test_scatter_scores_restores_input_order():
    lengths = [5, 2, 9, 1, 7, 3]
    batches = length_sorted_batches(lengths, 2)
    values = {index: float(index) * 1.5 for index in range(len(lengths))}
    batch_scores = [torch.tensor([values[index] for index in batch]) for batch in batches]
    scores = scatter_scores(batches, batch_scores, len(lengths))
    assert scores.dtype == np.float32
    assert scores.tolist() == [values[index] for index in range(len(lengths))]


def test_scatter_scores_rejects_gaps_duplicates_and_size_mismatches():
    with pytest.raises(ValueError, match="got no score"):
        scatter_scores([[0]], [[1.0]], 2)
    with pytest.raises(ValueError, match="more than one batch"):
        scatter_scores([[0], [0]], [[1.0], [2.0]], 1)
    with pytest.raises(ValueError, match="got 1 scores"):
        scatter_scores([[0, 1]], [[1.0]], 2)


def test_row_packer_keeps_the_part_full_row_for_the_next_piece_until_flushed():
    from pyserini_ssm.ops.batching import RowPacker

    packer = RowPacker(100)
    packer.add(["a", "b", "c"], [60, 30, 50])
    assert packer.rows() == [["a"]]  # longest first: a | c, b (80 tokens, part-full: it waits)
    assert packer.waiting == 2
    packer.add(["d", "e"], [20, 45])
    assert packer.rows() == [["c", "e"]]  # c, e (95) | b, d (50) waits
    assert packer.rows(flush=True) == [["b", "d"]] and packer.waiting == 0
    assert packer.rows(flush=True) == []
    packer.add(["x"], [7])
    assert packer.rows() == [] and packer.rows(flush=True) == [["x"]]
    with pytest.raises(ValueError, match="2 keys for 1 lengths"):
        packer.add(["y", "z"], [3])


@given(st.lists(st.lists(st.integers(1, 120), max_size=12), max_size=6), st.integers(50, 300))
def test_row_packer_rows_cover_every_key_once_within_budget(pieces, budget):
    from pyserini_ssm.ops.batching import RowPacker

    packer = RowPacker(budget)
    rows, lengths = [], {}
    for number, piece in enumerate(pieces):
        keys = [(number, index) for index in range(len(piece))]
        lengths.update(zip(keys, piece))
        packer.add(keys, piece)
        rows += packer.rows(flush=number % 2 == 1)
    rows += packer.rows(flush=True)
    flat = [key for row in rows for key in row]
    assert sorted(flat) == sorted(lengths) and len(flat) == len(set(flat))
    assert all(len(row) == 1 or sum(lengths[key] for key in row) <= budget for row in rows)
