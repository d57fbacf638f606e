"""Input templates (data, not code) and `PairEncoder`, which turns (query, document) into token ids.

A template is a string with the fields `{query}` and `{document}` and the special tokens `{bos}`, `{eos}`, `{cls}`,
`{sep}`; everything else is literal text. Literals and special tokens are tokenized once, when the encoder is built;
each query once per distinct query (cached); documents in one batched call of the fast tokenizer. The document is
truncated so that the whole sequence fits `max_length`: the query is never cut.

`{bos}` is the tokenizer's beginning-of-sequence token only where the tokenizer's own encoding starts with one
(Llama, OPT); it is empty for GPT-NeoX/Mamba, Qwen and WordPiece tokenizers, so the model sees what it was trained on.

Where a literal ends in a space right before a field, the space is moved into the field ("query: " + "foo" is
tokenized as "query:" and " foo"): byte-level BPE tokenizers then produce the same tokens as for the whole string.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from pyserini_ssm.errors import UserError

FIELDS = ("query", "document")
SPECIALS = ("bos", "eos", "cls", "sep")


@dataclass(frozen=True)
class Template:
    """`text` with fields; `added_tokens` must exist in the tokenizer (added when missing); `token_types`:
    "pair" gives segment 0 up to and including the first `{sep}` and 1 after it (BERT's sentence pairs), "single"
    gives no segment ids at all (one segment, as when the pair was tokenized as one string)."""

    text: str
    added_tokens: tuple[str, ...] = ()
    token_types: Literal["pair", "single"] = "single"


TEMPLATES: dict[str, Template] = {
    # "State Space Models are Strong Text Rerankers": document first, query last, ending with EOS (pooled token).
    "ssm": Template("{bos}document: {document} ; query: {query} ; {eos}"),
    "encoder": Template("{cls}{query}{sep}{document}{sep}", token_types="pair"),
    # RoBERTa's own sentence-pair format: <s> A </s></s> B </s>, one segment.
    "roberta": Template("{cls}{query}{sep}{sep}{document}{sep}"),
    # RankMamba (Xu 2024) released checkpoints: their exact input strings.
    "rankmamba-decoder": Template("{bos}Document: {document}\n\nQuery: {query}{eos}"),
    "rankmamba-encoder": Template("{cls}[query]{query}{sep}[passage]{document}{sep}",
                                  added_tokens=("[passage]", "[query]")),
}

_PART = re.compile(r"\{(query|document|bos|eos|cls|sep)\}")


def get_template(name_or_text: str) -> Template:
    """A named template, or a literal template string (anything containing `{query}` and `{document}`)."""
    if name_or_text in TEMPLATES:
        return TEMPLATES[name_or_text]
    if "{query}" in name_or_text and "{document}" in name_or_text:
        return Template(name_or_text, token_types="pair" if "{sep}" in name_or_text else "single")
    raise UserError(
        f"unknown template {name_or_text!r}: use one of {', '.join(TEMPLATES)} or a string with {{query}} and "
        f"{{document}}"
    )


def parse_template(text: str) -> list[tuple[str, str]]:
    """[(kind, value)] with kind "literal", "field" or "special"; each field exactly once."""
    parts: list[tuple[str, str]] = []
    position = 0
    for match in _PART.finditer(text):
        if match.start() > position:
            parts.append(("literal", text[position:match.start()]))
        name = match.group(1)
        parts.append(("field" if name in FIELDS else "special", name))
        position = match.end()
    if position < len(text):
        parts.append(("literal", text[position:]))
    for field_name in FIELDS:
        count = sum(1 for kind, value in parts if kind == "field" and value == field_name)
        if count != 1:
            raise UserError(f"template {text!r} must contain {{{field_name}}} exactly once (found {count})")
    stray = re.findall(r"\{[a-z_]+\}", "".join(value for kind, value in parts if kind == "literal"))
    if stray:
        raise UserError(f"template {text!r} has unknown field(s) {', '.join(stray)}; known: "
                        f"{', '.join('{' + name + '}' for name in FIELDS + SPECIALS)}")
    return parts


@dataclass(frozen=True)
class EncodedPair:
    """Token ids of one (query, document) pair; `token_type_ids` only for templates/models with segments."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def ensure_added_tokens(tokenizer: Any, template: Template) -> int:
    """Add the template's marker tokens to the tokenizer if missing; returns how many were added."""
    missing = [token for token in template.added_tokens if token not in tokenizer.get_vocab()]
    return tokenizer.add_tokens(missing) if missing else 0


def _special_id(tokenizer: Any, name: str) -> int | None:
    if name == "bos":
        if tokenizer.bos_token_id is None:
            return None
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        return tokenizer.bos_token_id if probe and probe[0] == tokenizer.bos_token_id else None
    if name == "eos":
        token_id = tokenizer.eos_token_id
        if token_id is None:  # BERT-style vocabularies end a sequence with [SEP]
            token_id = tokenizer.sep_token_id
    elif name == "cls":
        token_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    else:  # sep
        token_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if token_id is None:
        raise UserError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no {name} token, which the "
                        f"template needs; choose a template without {{{name}}}")
    return int(token_id)


class PairEncoder:
    """Tokenizes (query, document) pairs through a template, truncating only the document."""

    def __init__(self, tokenizer: Any, template: str | Template, max_length: int,
                 use_token_types: bool | None = None, query_cache_size: int = 4096) -> None:
        self.tokenizer = tokenizer
        self.template = template if isinstance(template, Template) else get_template(template)
        self.max_length = int(max_length)
        if self.max_length < 2:
            raise UserError(f"max length must be at least 2 tokens, not {max_length}")
        ensure_added_tokens(tokenizer, self.template)
        if use_token_types is None:
            use_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
        self.use_token_types = bool(use_token_types) and self.template.token_types == "pair"
        self._query_cache: OrderedDict[str, list[int]] = OrderedDict()
        self._query_cache_size = query_cache_size
        self._compile()

    def _compile(self) -> None:
        """Tokenize literals and specials once; remember where the fields go."""
        parts = parse_template(self.template.text)
        # Move a literal's trailing space into the following field (byte-level BPE tokenizes " word" as one token).
        self._prefix_space = {"query": False, "document": False}
        for index, (kind, value) in enumerate(parts):
            if kind == "literal" and value.endswith(" ") and index + 1 < len(parts) and parts[index + 1][0] == "field":
                parts[index] = ("literal", value[:-1])
                self._prefix_space[parts[index + 1][1]] = True
        self._segments: list[tuple[str, Any]] = []  # ("ids", list[int]) or ("field", name)
        for kind, value in parts:
            if kind == "literal":
                if value:
                    ids = self.tokenizer(value, add_special_tokens=False)["input_ids"]
                    self._segments.append(("ids", list(ids)))
            elif kind == "special":
                token_id = _special_id(self.tokenizer, value)
                if token_id is not None:
                    self._segments.append(("ids", [token_id]))
            else:
                self._segments.append(("field", value))
        self.fixed_length = sum(len(value) for kind, value in self._segments if kind == "ids")
        sep_id = _special_id(self.tokenizer, "sep") if "{sep}" in self.template.text else None
        self._sep_id = sep_id
        if self.fixed_length >= self.max_length:
            raise UserError(f"the template alone takes {self.fixed_length} tokens, more than max length "
                            f"{self.max_length}")

    def _field_text(self, name: str, text: str) -> str:
        if not isinstance(text, str):
            raise UserError(f"{name} must be text, got {type(text).__name__}")
        stripped = text.strip()
        if not stripped:
            raise UserError(f"empty {name} text: every {name} needs some text to rerank")
        return " " + stripped if self._prefix_space[name] else stripped

    def query_ids(self, query: str) -> list[int]:
        """Token ids of the query field (cached: the same query is tokenized once for all its documents)."""
        cached = self._query_cache.get(query)
        if cached is not None:
            self._query_cache.move_to_end(query)
            return cached
        ids = list(self.tokenizer(self._field_text("query", query), add_special_tokens=False)["input_ids"])
        budget = self.max_length - self.fixed_length - 1  # at least one document token must fit
        if len(ids) > budget:
            preview = query if len(query) <= 60 else query[:57] + "..."
            raise UserError(f"query {preview!r} is {len(ids)} tokens, which does not fit max length "
                            f"{self.max_length} with the template ({self.fixed_length} tokens) and one document "
                            f"token; raise --max-length")
        self._query_cache[query] = ids
        if len(self._query_cache) > self._query_cache_size:
            self._query_cache.popitem(last=False)
        return ids

    def _assemble(self, query_ids: list[int], document_ids: list[int]) -> EncodedPair:
        budget = self.max_length - self.fixed_length - len(query_ids)
        document_ids = document_ids[:budget]
        input_ids: list[int] = []
        for kind, value in self._segments:
            if kind == "ids":
                input_ids.extend(value)
            else:
                input_ids.extend(query_ids if value == "query" else document_ids)
        token_type_ids = None
        if self.use_token_types:
            first_sep_end = input_ids.index(self._sep_id) + 1 if self._sep_id in input_ids else len(input_ids)
            token_type_ids = [0] * first_sep_end + [1] * (len(input_ids) - first_sep_end)
        return EncodedPair(input_ids, token_type_ids)

    def encode(self, query: str, document: str) -> EncodedPair:
        query_ids = self.query_ids(query)
        document_ids = self.tokenizer(self._field_text("document", document), add_special_tokens=False)["input_ids"]
        return self._assemble(query_ids, list(document_ids))

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens: what `tokenizer(texts, add_special_tokens=False)` gives.

        A fast tokenizer's Rust backend is called directly when its state is what that call would set (no
        truncation, no padding): transformers' per-text conversion of every field to Python lists is skipped.
        That conversion holds the GIL, and `predict` tokenizes in a thread beside the one that queues the GPU's
        kernels (tests/test_templates.py checks the ids are the same)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        encode = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
        split_special = bool(getattr(self.tokenizer, "split_special_tokens", False))
        if (encode is not None and backend.truncation is None and backend.padding is None
                and bool(backend.encode_special_tokens) == split_special):
            return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def encode_many(self, pairs: Sequence[tuple[str, str]]) -> list[EncodedPair]:
        """Encode many pairs: one batched tokenizer call for all documents, each distinct query once."""
        if not pairs:
            return []
        documents = []
        for index, pair in enumerate(pairs):
            try:
                documents.append(self._field_text("document", pair[1]))
            except UserError as error:
                raise UserError(f"pair {index}: {error}") from None
        query_ids = []
        for index, pair in enumerate(pairs):
            try:
                query_ids.append(self.query_ids(pair[0]))
            except UserError as error:
                raise UserError(f"pair {index}: {error}") from None
        # Tokenizing a whole long document only to cut it is wasteful: tokenize its first max_length * 8 characters,
        # and keep that only where the cut lies well past the kept tokens (a margin of tokens after the budget, so
        # the word split by the cut is never kept); otherwise tokenize the whole text.
        character_cap = self.max_length * 8
        cut = [index for index, text in enumerate(documents) if len(text) > character_cap]
        document_ids = self._token_ids([text[:character_cap] for text in documents])
        redo = [index for index in cut
                if len(document_ids[index]) < self.max_length - self.fixed_length - len(query_ids[index]) + 32]
        if redo:
            full = self._token_ids([documents[index] for index in redo])
            for index, ids in zip(redo, full):
                document_ids[index] = ids
        return [self._assemble(q, list(d)) for q, d in zip(query_ids, document_ids)]
