"""Training data for rerankers: three sources -> `TrainingExample`s -> deterministic groups per step.

Sources (issue 4):
1. a JSONL of `{"query", "positives": [...], "negatives": [...]}` (texts; or docids resolved through an index;
   Tevatron's `positive_passages`/`negative_passages` of `{"docid", "title", "text"}` objects work too);
2. a BEIR-layout folder (`corpus.jsonl[.gz]`, `queries.jsonl[.gz]`, `qrels/<split>.tsv`), negatives mined by BM25;
3. MS MARCO style: a topics file, qrels and a Lucene index (texts fetched from it), negatives mined by BM25.

Mining takes the top `depth` of the query's own BM25 run minus its positives, best first. The first stage (Pyserini,
Java) is imported only inside the mining and fetching functions, so a ready JSONL trains without Java.

A group is one positive followed by `group_size - 1` negatives. Which group sits at position `i` of epoch `e` is a
pure function of (seed, e, i), so a resumed run only needs the step to continue on exactly the same data, and ranks
of a multi-process run take disjoint slices of the same global order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from pyserini_ssm.bm25 import B, K1, SEARCH_THREADS, SEARCH_THREADS_HELP, check_bm25_parameters
from pyserini_ssm.cli_config import option
from pyserini_ssm.collection import iter_corpus
from pyserini_ssm.errors import UserError
from pyserini_ssm.files import atomic_output
from pyserini_ssm.runs import read_numbered_lines

logger = logging.getLogger(__name__)


class DocumentIndex(Protocol):
    """What training data needs from an index of the collection: BM25 top-k docids per query, and texts by docid.

    Training code runs where there is no Java and never imports the first stage: `python -m pyserini_ssm.train`
    passes `pyserini_ssm.first_stage.lucene_documents.LuceneDocuments`, the Lucene implementation.
    """

    def bm25_docids(self, queries: Mapping[str, str], *, hits: int, k1: float, b: float, threads: int,
                    remove_query: bool = False) -> dict[str, list[str]]:
        """qid -> BM25 top-`hits` docids, best first."""

    def texts(self, docids: Sequence[str]) -> dict[str, str]:
        """docid -> text; a docid missing from the index is a UserError naming it."""


def _document_index(index) -> DocumentIndex | None:
    """`index` as a DocumentIndex: a path here is a caller's mistake (training cannot open Lucene itself)."""
    if isinstance(index, (str, os.PathLike)):
        raise TypeError(f"index={str(index)!r} is a path: pass an opened index instead, e.g. "
                        "pyserini_ssm.first_stage.lucene_documents.LuceneDocuments(path)")
    return index


@dataclass
class TrainingExample:
    """One training query with its relevant and non-relevant document texts (negatives hardest first)."""

    query: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)
    qid: str | None = None


@dataclass(frozen=True)
class TrainingGroup:
    """One LCE group: `documents[0]` is the positive, the rest are negatives."""

    query: str
    documents: tuple[str, ...]


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: `offset` groups of epoch `epoch` (0-based) have been consumed, over all ranks."""

    epoch: int
    offset: int


# ----------------------------------------------------------------------------------------------------------------
# Source 1: JSONL


def _entry_text(entry, where: str) -> tuple[str | None, str | None]:
    """(docid, text) of one positive/negative entry: a string, or an object with docid/title/text."""
    if isinstance(entry, str):
        return None, entry
    if isinstance(entry, Mapping):
        docid = entry.get("docid", entry.get("_id", entry.get("id")))
        text = entry.get("text", entry.get("contents"))
        title = entry.get("title")
        if text is not None and title:
            text = f"{title} {text}"
        return (None if docid is None else str(docid)), text
    raise UserError(f"{where}: a positive/negative must be a string or an object with docid/text, got {entry!r}")


def read_training_jsonl(path: str | os.PathLike, *, index: DocumentIndex | None = None, negatives_depth: int = 100,
                        bm25_k1: float = K1, bm25_b: float = B, threads: int = SEARCH_THREADS) -> list[TrainingExample]:
    """Read `{"query", "positives", "negatives"}` lines (gzip allowed) into examples.

    Without `index`, string entries are texts. With `index` (a `DocumentIndex`), string entries are docids whose
    texts are fetched from the index (a docid missing from it is a UserError), and a line without negatives gets
    BM25-mined ones.
    Tevatron's `positive_passages`/`negative_passages` objects (`docid`, `title`, `text`) are read as texts.
    """
    path = Path(path)
    index = _document_index(index)
    rows: list[tuple[int, str, str | None, list, list]] = []
    for number, line in read_numbered_lines(path):  # bad UTF-8 or gzip: file:line, no traceback
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: not valid JSON ({error.msg}); each line must be one JSON object") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: each line must be a JSON object with query/positives/negatives")
        query = record.get("query")
        if not isinstance(query, str) or not query.strip():
            raise UserError(f"{where}: missing or empty \"query\" (a non-empty string is required)")
        positives = record.get("positives", record.get("positive_passages", record.get("pos")))
        negatives = record.get("negatives", record.get("negative_passages", record.get("neg"))) or []
        if isinstance(positives, (str, dict)):
            positives = [positives]
        if isinstance(negatives, (str, dict)):
            negatives = [negatives]
        if not positives:
            raise UserError(f"{where}: query {query!r} has no positive; every training query needs at least one "
                            "relevant document in \"positives\" (remove the line or add one)")
        qid = record.get("query_id", record.get("qid"))
        rows.append((number, query, None if qid is None else str(qid), list(positives), list(negatives)))
    if not rows:
        raise UserError(f"training file is empty: {path} (expected JSON lines with query/positives/negatives)")

    if index is None:
        examples = []
        for number, query, qid, positives, negatives in rows:
            where = f"{path}:{number}"
            texts_pos = [_require_text(entry, where) for entry in positives]
            texts_neg = [_require_text(entry, where) for entry in negatives]
            examples.append(TrainingExample(query, texts_pos, texts_neg, qid))
        return examples
    return _resolve_jsonl_docids(path, rows, index, negatives_depth=negatives_depth, bm25_k1=bm25_k1, bm25_b=bm25_b,
                                 threads=threads)


def _require_text(entry, where: str) -> str:
    docid, text = _entry_text(entry, where)
    if text is None:
        raise UserError(f"{where}: entry {docid!r} has no text; give --index to fetch texts of docids")
    if not text.strip():
        raise UserError(f"{where}: empty document text in positives/negatives")
    return text


def _resolve_jsonl_docids(path: Path, rows, index: DocumentIndex, *, negatives_depth: int, bm25_k1: float,
                          bm25_b: float, threads: int) -> list[TrainingExample]:
    """JSONL entries as docids: fetch their texts from `index`, mine negatives for lines that have none.

    A plain string is a docid; an object with a text keeps its text (its docid, if any, still counts as a positive
    that mining must skip).
    """
    parsed = []  # (qid, query, [(docid, text|None)] positives, same for negatives)
    for number, query, qid, positives, negatives in rows:
        where = f"{path}:{number}"
        entries = []
        for group in (positives, negatives):
            resolved = []
            for entry in group:
                docid, text = _entry_text(entry, where)
                if isinstance(entry, str):
                    docid, text = entry, None
                if docid is None and text is None:
                    raise UserError(f"{where}: an entry has neither docid nor text")
                resolved.append((docid, text))
            entries.append(resolved)
        parsed.append((qid or f"line{number}", query, entries[0], entries[1]))
    to_mine = {qid: query for qid, query, pos, neg in parsed if not neg}
    positive_ids = {qid: {docid for docid, _ in pos if docid is not None} for qid, query, pos, neg in parsed}
    mined = mine_bm25_negatives(index, to_mine, positive_ids, depth=negatives_depth, k1=bm25_k1, b=bm25_b,
                                threads=threads) if to_mine else {}
    wanted = {docid for _, _, pos, neg in parsed for docid, text in pos + neg if text is None}
    wanted.update(docid for docids in mined.values() for docid in docids)
    texts = fetch_document_texts(index, sorted(wanted)) if wanted else {}
    examples = []
    for qid, query, pos, neg in parsed:
        positives = [text if text is not None else texts[docid] for docid, text in pos]
        if neg:
            negatives = [text if text is not None else texts[docid] for docid, text in neg]
        else:
            negatives = [texts[docid] for docid in mined.get(qid, [])]
        examples.append(TrainingExample(query, positives, negatives, qid))
    return examples


# ----------------------------------------------------------------------------------------------------------------
# Sources 2 and 3: qrels + queries + (corpus | index), negatives mined by BM25


def mine_bm25_negatives(index: DocumentIndex, queries: Mapping[str, str], positives: Mapping[str, set[str]], *,
                        depth: int, k1: float = K1, b: float = B, threads: int = SEARCH_THREADS,
                        remove_query: bool = False) -> dict[str, list[str]]:
    """Hard negatives: each query's BM25 top-`depth` docids minus its positives, best first (Lucene: needs Java)."""
    if depth < 1:
        raise UserError(f"--negatives-depth must be at least 1, got {depth}")
    logger.info("mining BM25 negatives for %d queries (top %d)", len(queries), depth)
    found = _document_index(index).bm25_docids(dict(queries), hits=depth, k1=k1, b=b, threads=threads,
                                               remove_query=remove_query)
    return {qid: [docid for docid in found.get(qid, []) if docid not in positives.get(qid, set())]
            for qid in queries}


def fetch_document_texts(index: DocumentIndex, docids: Sequence[str]) -> dict[str, str]:
    """Texts of `docids` from the index; a docid missing from it is a UserError naming it (Lucene: needs Java)."""
    return _document_index(index).texts(list(docids))


def examples_from_judgments(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]],
                            texts: Mapping[str, str], negatives: Mapping[str, Sequence[str]], *,
                            source: str) -> list[TrainingExample]:
    """Examples for every judged query (in qrels order): positives are docids with relevance > 0."""
    examples = []
    for qid, judged in qrels.items():
        if qid not in queries:
            raise UserError(f"query {qid} is in the qrels but not in the queries of {source}")
        positive_ids = [docid for docid, rel in judged.items() if rel > 0]
        if not positive_ids:
            raise UserError(f"query {qid} has no positive judgment (relevance > 0) in the qrels of {source}; "
                            "remove it from the qrels to train")
        for docid in list(positive_ids) + list(negatives.get(qid, [])):
            if docid not in texts:
                raise UserError(f"docid {docid} (query {qid}) is not in the collection of {source}")
        examples.append(TrainingExample(queries[qid], [texts[d] for d in positive_ids],
                                        [texts[d] for d in negatives.get(qid, [])], qid))
    if not examples:
        raise UserError(f"no judged queries to train on in {source}")
    return examples


def _find(folder: Path, *names: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"BEIR folder {folder} has none of: {', '.join(names)}")


def read_beir_corpus(path: Path) -> dict[str, str]:
    """BEIR corpus.jsonl -> docid -> "title text" (the flat form BEIR's Lucene indexes hold: `collection.beir_text`,
    so a positive read here has the text of the same document fetched from the index)."""
    return dict(iter_corpus(path))


def read_beir_queries(path: Path) -> dict[str, str]:
    queries = {}
    for number, line in read_numbered_lines(path):  # bad UTF-8 or gzip: file:line, no traceback
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            queries[str(record["_id"])] = record["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: expected a JSON object with \"_id\" and \"text\"") from None
    return queries


def read_beir_qrels(path: Path) -> dict[str, dict[str, int]]:
    """BEIR qrels TSV (`query-id corpus-id score`, header line optional) -> qid -> docid -> relevance."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in read_numbered_lines(path):  # bad UTF-8 or gzip: file:line, no traceback
        fields = line.rstrip("\n").split("\t")
        if not line.strip() or (number == 1 and fields[0] == "query-id"):
            continue
        try:
            qid, docid, rel = fields[0], fields[1], int(fields[2])
        except (IndexError, ValueError):
            raise UserError(f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score'") from None
        qrels.setdefault(qid, {})[docid] = rel
    if not qrels:
        raise UserError(f"qrels file is empty: {path}")
    return qrels


def load_beir_training(folder: str | os.PathLike, *, index: DocumentIndex | None, split: str = "train",
                       negatives_depth: int = 100, bm25_k1: float = K1, bm25_b: float = B,
                       threads: int = SEARCH_THREADS) -> list[TrainingExample]:
    """Examples from a BEIR folder's `split` qrels, texts from its corpus, negatives mined from `index`.

    `index` must index the same corpus (e.g. `LuceneDocuments` of an index by `python -m pyserini_ssm.index`); None
    trains with positives only and negatives borrowed from other queries (rarely what you want; a warning says so).
    """
    folder = Path(folder)
    index = _document_index(index)
    if not folder.is_dir():
        raise UserError(f"BEIR folder not found: {folder}")
    corpus = read_beir_corpus(_find(folder, "corpus.jsonl", "corpus.jsonl.gz"))
    queries = read_beir_queries(_find(folder, "queries.jsonl", "queries.jsonl.gz"))
    qrels = read_beir_qrels(_find(folder / "qrels", f"{split}.tsv", f"{split}.tsv.gz"))
    negatives: dict[str, list[str]] = {}
    if index is not None:
        positives = {qid: {d for d, rel in judged.items() if rel > 0} for qid, judged in qrels.items()}
        # BEIR queries can be documents too (ArguAna); as Anserini's -removeQuery, a query never mines itself.
        negatives = mine_bm25_negatives(index, {qid: queries[qid] for qid in qrels if qid in queries}, positives,
                                        depth=negatives_depth, k1=bm25_k1, b=bm25_b, threads=threads,
                                        remove_query=True)
        for qid, docids in negatives.items():
            missing = [d for d in docids if d not in corpus]
            if missing:
                raise UserError(f"docid {missing[0]} from index {index} is not in {folder}'s corpus; "
                                "was the index built from another collection?")
    else:
        logger.warning("no --index for %s: no BM25 negatives, groups use other queries' positives", folder)
    return examples_from_judgments(queries, qrels, corpus, negatives, source=str(folder))


def load_msmarco_training(queries_path: str, qrels_path: str, index: DocumentIndex, *, negatives_depth: int = 100,
                          bm25_k1: float = K1, bm25_b: float = B, threads: int = SEARCH_THREADS) -> list[TrainingExample]:
    """MS MARCO style: topics file + qrels (names or files), texts and BM25 negatives from `index` (needs Java)."""
    from pyserini_ssm.qrels import load_qrels
    from pyserini_ssm.topics import load_topics

    index = _document_index(index)
    queries = load_topics(queries_path)
    qrels = {qid: dict(judged) for qid, judged in load_qrels(qrels_path).items()}
    if not qrels:
        raise UserError(f"qrels are empty: {qrels_path}")
    positives = {qid: {d for d, rel in judged.items() if rel > 0} for qid, judged in qrels.items()}
    judged_queries = {qid: queries[qid] for qid in qrels if qid in queries}
    negatives = mine_bm25_negatives(index, judged_queries, positives, depth=negatives_depth, k1=bm25_k1, b=bm25_b,
                                    threads=threads)
    wanted = sorted({d for ids in positives.values() for d in ids} | {d for ids in negatives.values() for d in ids})
    texts = fetch_document_texts(index, wanted)
    return examples_from_judgments(queries, qrels, texts, negatives, source=f"{qrels_path} / {index}")


def write_training_jsonl(examples: Iterable[TrainingExample], path: str | os.PathLike) -> int:
    """Write examples as `{"query_id", "query", "positives", "negatives"}` text lines, atomically (gzipped when the
    name ends in .gz); returns how many."""
    import gzip

    count = 0
    with atomic_output(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if str(path).endswith(".gz") else contextlib.nullcontext(
                raw) as handle:
            for example in examples:
                record = {"query_id": example.qid, "query": example.query, "positives": example.positives,
                          "negatives": example.negatives}
                handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
                count += 1
    return count


def fingerprint(examples: Sequence[TrainingExample]) -> str:
    """A short hash of the training data, stored in checkpoints so that resuming on other data is caught."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.query.encode())
        digest.update(b"\0")
        for text in example.positives + [f"\1{t}" for t in example.negatives]:
            digest.update(hashlib.sha1(text.encode()).digest())
        digest.update(b"\2")
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Groups and their order


class GroupSchedule:
    """Which groups each rank trains on at each optimizer step: a pure function of (seed, step).

    Every optimizer step consumes `global_batch = batch_size * world_size * accumulation` groups of one global,
    per-epoch shuffled order; micro-batch `m` of rank `r` takes slice `m * world_size + r` of the step's groups, so
    one process with accumulation k and k processes with accumulation 1 see the same groups in the same step.
    The incomplete tail of an epoch (fewer than `global_batch` groups) is skipped.
    """

    def __init__(self, examples: Sequence[TrainingExample], *, group_size: int, batch_size: int, seed: int,
                 world_size: int = 1, rank: int = 0, accumulation: int = 1):
        if group_size < 1:
            raise UserError(f"--group-size must be at least 1, got {group_size}")
        if batch_size < 1 or accumulation < 1:
            raise UserError("--batch-size and --grad-accum must be at least 1")
        if not examples:
            raise UserError("no training examples")
        self.examples = list(examples)
        self.group_size = group_size
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.accumulation = accumulation
        self.global_batch = batch_size * world_size * accumulation
        self.steps_per_epoch = len(self.examples) // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(f"{len(self.examples)} training queries are fewer than one global batch of "
                            f"{self.global_batch} groups (batch size x processes x accumulation); lower them")
        # Negatives pool for queries with fewer than group_size - 1 own negatives: (example index, negative index).
        self._pool = [(i, j) for i, example in enumerate(self.examples) for j in range(len(example.negatives))]
        if group_size > 1 and not self._pool and len(self.examples) < 2:
            raise UserError("no negatives at all: give negatives in the data, or an --index to mine them")

    def position(self, step: int) -> DataPosition:
        """The data position before optimizer step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        return DataPosition(epoch, within * self.global_batch)

    def _order(self, epoch: int):
        import numpy as np

        if getattr(self, "_order_epoch", None) != epoch:
            self._order_cache = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
            self._order_epoch = epoch
        return self._order_cache

    def group(self, epoch: int, index: int) -> TrainingGroup:
        """Group at position `index` of epoch `epoch`: one positive, then group_size - 1 negatives."""
        import numpy as np

        example_index = int(self._order(epoch)[index])
        example = self.examples[example_index]
        rng = np.random.default_rng([self.seed, epoch, index, 7919])
        positive = example.positives[int(rng.integers(len(example.positives)))]
        wanted = self.group_size - 1
        own = example.negatives
        if len(own) >= wanted:
            chosen = [own[int(k)] for k in rng.choice(len(own), size=wanted, replace=False)]
        else:
            chosen = list(own)
            chosen += self._borrowed_negatives(example_index, wanted - len(own), rng)
        return TrainingGroup(example.query, (positive, *chosen))

    def _borrowed_negatives(self, example_index: int, count: int, rng) -> list[str]:
        """`count` random documents of other queries (their negatives, else their positives): easy negatives."""
        borrowed = []
        for _ in range(count):
            for _attempt in range(64):
                if self._pool:
                    i, j = self._pool[int(rng.integers(len(self._pool)))]
                    text = self.examples[i].negatives[j]
                else:
                    i = int(rng.integers(len(self.examples)))
                    positives = self.examples[i].positives
                    text = positives[int(rng.integers(len(positives)))]
                if i != example_index:
                    break
            borrowed.append(text)
        return borrowed

    def micro_batches(self, step: int) -> list[list[TrainingGroup]]:
        """This rank's `accumulation` micro-batches (each `batch_size` groups) for optimizer step `step`."""
        position = self.position(step)
        batches = []
        for micro in range(self.accumulation):
            start = position.offset + (micro * self.world_size + self.rank) * self.batch_size
            batches.append([self.group(position.epoch, start + k) for k in range(self.batch_size)])
        return batches


# ----------------------------------------------------------------------------------------------------------------
# One entry point for the CLI


@dataclass
class DataSource:
    """Where training examples come from: exactly one of `train_jsonl`, `beir`, or `queries` + `qrels` + `index`."""

    train_jsonl: str | None = field(default=None, metadata=option(
        'JSON lines {"query", "positives": [...], "negatives": [...]} (texts; docids when --index is given; lines '
        "without negatives are mined with --index)"))
    beir: str | None = field(default=None, metadata=option(
        "BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); negatives mined from --index"))
    beir_split: str = field(default="train", metadata=option("qrels split of the BEIR folder"))
    queries: str | None = field(default=None, metadata=option("MS MARCO style: topics file or name (qid<TAB>query)"))
    qrels: str | None = field(default=None, metadata=option(
        "MS MARCO style: qrels file or name; positives are relevance > 0"))
    # Texts of docids and BM25 negative mining: the CLI's --index path (opened by `load_examples`'s `open_index`), or
    # an opened DocumentIndex.
    index: str | DocumentIndex | None = field(default=None, metadata=option(
        "Lucene index: document texts for docids and BM25 negative mining (Java)"))
    negatives_depth: int = field(default=100, metadata=option(
        "BM25 top-k mined per query (its positives are removed)"))
    bm25_k1: float = field(default=K1, metadata=option("BM25 k1 of the mining", flag="--k1",
                                                       hidden_aliases=("--bm25-k1",)))
    bm25_b: float = field(default=B, metadata=option("BM25 b of the mining", flag="--b", hidden_aliases=("--bm25-b",)))
    threads: int = field(default=SEARCH_THREADS, metadata=option("BM25 search threads when mining",
                                                                 default_help=SEARCH_THREADS_HELP))

    def validate(self) -> None:
        chosen = [name for name, value in (("--train-jsonl", self.train_jsonl), ("--beir", self.beir),
                                           ("--queries/--qrels", self.queries or self.qrels)) if value]
        if len(chosen) != 1:
            raise UserError("give exactly one training data source: --train-jsonl FILE, --beir DIR, or "
                            f"--queries + --qrels + --index (got {', '.join(chosen) or 'none'})")
        if (self.queries or self.qrels) and not (self.queries and self.qrels and self.index):
            raise UserError("MS MARCO-style training needs --queries, --qrels and --index together")
        if self.negatives_depth < 1:
            raise UserError(f"--negatives-depth must be at least 1, got {self.negatives_depth}")
        if self.index is not None:
            check_bm25_parameters(self.bm25_k1, self.bm25_b, prefix="--bm25-")

    @property
    def needs_java(self) -> bool:
        return self.index is not None


def load_examples(source: DataSource, open_index: Callable[[str], DocumentIndex] | None = None
                  ) -> list[TrainingExample]:
    """Read (and mine, where an index is given) the training examples of `source`.

    `open_index` opens `source.index` when it is a path (`train` passes
    `pyserini_ssm.first_stage.lucene_documents.LuceneDocuments`).
    """
    source.validate()
    index = source.index
    if isinstance(index, (str, os.PathLike)):
        if open_index is None:
            raise TypeError(f"source.index={str(index)!r} is a path: pass open_index (e.g. "
                            "pyserini_ssm.first_stage.lucene_documents.LuceneDocuments) to open it")
        index = open_index(str(index))
    mining = dict(negatives_depth=source.negatives_depth, bm25_k1=source.bm25_k1, bm25_b=source.bm25_b,
                  threads=source.threads)
    if source.train_jsonl:
        return read_training_jsonl(source.train_jsonl, index=index, **mining)
    if source.beir:
        return load_beir_training(source.beir, index=index, split=source.beir_split, **mining)
    return load_msmarco_training(source.queries, source.qrels, index, **mining)
