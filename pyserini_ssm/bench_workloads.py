"""What the bench scores: a `Workload` of token id sequences (and texts, when the end-to-end paths can run on them),
of MS MARCO lengths or of one fixed length, and the synthetic word-level tokenizer that makes texts of exact lengths.

MS MARCO lengths are the DL19 candidates tokenized through the model's template when a real tokenizer and the
candidates file are given, else a log-normal with mean 89 tokens. Each synthetic word "wN" is one token, so synthetic
texts have exactly the token lengths asked for and `Reranker.predict` and `CrossEncoder.predict` can be timed on the
same pairs as the pre-tokenized ones.

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pyserini_ssm.errors import UserError

MSMARCO_MEAN_TOKENS = 89  # mean template length of the DL19 top-100 pairs, GPT-NeoX tokenizer (docs/BENCHMARKS.md)
LOGNORMAL_SIGMA = 0.45


@dataclass
class Workload:
    """Pairs to score: token ids (always) and texts (when the end-to-end paths can run on them)."""

    name: str  # msmarco | msmarco-lognormal | "512"
    encoded: list[Any]  # templates.EncodedPair
    texts: list[tuple[str, str]] | None = None
    note: str = ""

    @property
    def lengths(self) -> list[int]:
        return [len(item.input_ids) for item in self.encoded]

    @property
    def tokens(self) -> int:
        return int(sum(self.lengths))


def synthetic_tokenizer(words: int = 4000) -> Any:
    """A word-level fast tokenizer: specials [PAD] [UNK] [CLS] [SEP] [MASK] </s>, then "w0".."w{words-1}", one token
    each (split on whitespace). Pairs get BERT's "[CLS] A [SEP] B [SEP]" with segment ids, so sentence-transformers'
    CrossEncoder can tokenize (query, document) itself. No beginning-of-sequence token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>"]
    vocab = {token: index for index, token in enumerate(specials)}
    for index in range(words):
        vocab[f"w{index}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", eos_token="</s>",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def is_synthetic(tokenizer: Any) -> bool:
    vocab = tokenizer.get_vocab()
    return "w0" in vocab and "</s>" in vocab and len(vocab) < 100_000 and "[CLS]" in vocab and "the" not in vocab


def lognormal_lengths(count: int, mean: float = MSMARCO_MEAN_TOKENS, sigma: float = LOGNORMAL_SIGMA, *,
                      low: int = 8, high: int = 512, seed: int = 0) -> list[int]:
    """Pair lengths (tokens) from a log-normal with the given mean, clipped to [low, high]."""
    rng = np.random.default_rng(seed)
    mu = math.log(mean) - sigma**2 / 2
    lengths = np.clip(np.rint(rng.lognormal(mu, sigma, size=count)), low, high).astype(int)
    return lengths.tolist()


def synthetic_texts(lengths: Sequence[int], encoder: Any, *, query_words: int = 6, queries: int | None = None,
                    seed: int = 0) -> list[tuple[str, str]]:
    """(query, document) texts of synthetic words whose templated length is exactly each length (the synthetic
    tokenizer gives one token per word). Queries repeat every 100 pairs, as when reranking a top-100."""
    rng = np.random.default_rng(seed)
    words = len([token for token in encoder.tokenizer.get_vocab() if token.startswith("w")])
    fixed = encoder.fixed_length
    pairs: list[tuple[str, str]] = []
    query = ""
    for index, length in enumerate(lengths):
        if index % 100 == 0 or queries == 0:
            query = " ".join(f"w{word}" for word in rng.integers(0, words, size=query_words))
        document_words = max(1, int(length) - fixed - query_words)
        document = " ".join(f"w{word}" for word in rng.integers(0, words, size=document_words))
        pairs.append((query, document))
    return pairs


def read_candidate_pairs(path: str | os.PathLike, count: int) -> list[tuple[str, str]]:
    """The first `count` (query, passage) pairs of a candidates file, cycling when it holds fewer."""
    from pyserini_ssm.candidates import read_candidates

    pairs = [(query.query, hit.text) for query in read_candidates(path) for hit in query.hits if hit.text]
    if not pairs:
        raise UserError(f"candidates file {path} holds no passages with text")
    return [pairs[index % len(pairs)] for index in range(count)]


def msmarco_workload(encoder: Any, count: int, *, candidates: str | None, seed: int = 0) -> Workload:
    """MS MARCO-length pairs: the candidates file tokenized through `encoder` (real lengths) when given and the
    tokenizer is a real one; else log-normal lengths with mean 89 tokens (synthetic texts of exactly those lengths)."""
    if candidates and not is_synthetic(encoder.tokenizer):
        texts = read_candidate_pairs(candidates, count)
        encoded = encoder.encode_many(texts)
        return Workload("msmarco", encoded, texts, f"real lengths: {Path(candidates).name} tokenized through the "
                                                    f"template ({getattr(encoder.tokenizer, 'name_or_path', '')})")
    lengths = lognormal_lengths(count, low=max(encoder.fixed_length + 8, 8), high=encoder.max_length, seed=seed)
    why = "no --candidates" if not candidates else "no real --tokenizer"
    note = f"fallback ({why}): log-normal lengths, mean {MSMARCO_MEAN_TOKENS} tokens, sigma {LOGNORMAL_SIGMA}"
    if is_synthetic(encoder.tokenizer):
        texts = synthetic_texts(lengths, encoder, seed=seed)
        return Workload("msmarco-lognormal", encoder.encode_many(texts), texts, note + ", synthetic words")
    return Workload("msmarco-lognormal", random_pairs(encoder, lengths, seed=seed), None,
                    note + ", random token ids (no texts: Reranker.predict and CrossEncoder are not timed)")


def random_pairs(encoder: Any, lengths: Sequence[int], *, seed: int = 0) -> list[Any]:
    """Encoded pairs of random token ids with the given lengths (segment ids half and half when the model has them)."""
    from pyserini_ssm.models.templates import EncodedPair

    rng = np.random.default_rng(seed)
    vocab = len(encoder.tokenizer)
    low = 1000 if vocab > 2000 else 10
    pairs = []
    for length in lengths:
        ids = rng.integers(low, vocab, size=int(length)).tolist()
        types = [0] * (length // 2) + [1] * (length - length // 2) if encoder.use_token_types else None
        pairs.append(EncodedPair(ids, types))
    return pairs


def fixed_workload(encoder: Any, length: int, count: int, *, seed: int = 0) -> Workload:
    """`count` pairs of exactly `length` tokens: random ids (a real tokenizer) or synthetic texts."""
    if is_synthetic(encoder.tokenizer):
        texts = synthetic_texts([length] * count, encoder, seed=seed)
        return Workload(str(length), encoder.encode_many(texts), texts)
    return Workload(str(length), random_pairs(encoder, [length] * count, seed=seed), None, "random token ids")
