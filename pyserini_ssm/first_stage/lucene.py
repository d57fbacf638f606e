"""Lucene through Pyserini: BM25 batch search, stored document texts, Pyserini's topics and qrels; indexing is in
`first_stage.indexing` (its names are importable from here too).

Every function here may start the JVM (once per process); `ensure_java()` runs first so that the right Java is used
(`first_stage.anserini`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from pyserini_ssm.bm25 import B, K1, check_bm25_parameters, parse_fields  # noqa: F401  (also imported from here)
from pyserini_ssm.collection import raw_document_text
from pyserini_ssm.errors import UserError, first_line
from pyserini_ssm.first_stage.anserini import anserini_classes
from pyserini_ssm.first_stage.indexing import (  # noqa: F401  (indexing's names, importable from here as before)
    BEIR_FLAT, BEIR_MULTIFIELD, JSON_COLLECTION, IndexStats, build_index, collection_of_record, detect_collection,
    java_storage_error,
)
from pyserini_ssm.runs import Hit, warn_duplicates

log = logging.getLogger(__name__)

# What Pyserini's BEIR multifield regressions search: both fields, equally weighted (`--fields contents=1.0 title=1.0`).
MULTIFIELD_FIELDS = {"contents": 1.0, "title": 1.0}


# The old name of `first_stage.anserini.anserini_classes` (a test starts the JVM through it).
_java_classes = anserini_classes


# ---------------------------------------------------------------------------------------------- topics and qrels


def pyserini_topics(name: str) -> dict[str, str]:
    """Topics by Pyserini name through Pyserini itself (downloads them: needs internet). qid -> title text."""
    anserini_classes()
    from pyserini.search import get_topics

    topics = get_topics(name)
    result: dict[str, str] = {}
    for qid, fields in topics.items():
        query = fields.get("title") or fields.get("query") or ""
        result[str(qid)] = str(query)
    return result


def pyserini_qrels_file(name: str) -> str:
    """Path of a qrels file by Pyserini name (downloaded by Pyserini into its cache: needs internet)."""
    anserini_classes()
    from pyserini.search import get_qrels_file

    path = get_qrels_file(name)
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise UserError(f"qrels {name!r}: Pyserini returned an empty or missing file {path} (download failed?)")
    return path


# ------------------------------------------------------------------------------------------------------ search


def _is_lucene_index(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.startswith("segments_") for p in folder.iterdir())


@dataclass
class LuceneSearcher:
    """A Lucene index opened for BM25 search and document fetch: Anserini's SimpleSearcher, used directly.

    Pyserini's own `pyserini.search.lucene.LuceneSearcher` wraps the same Java class, but importing that module
    pulls in torch, transformers and scikit-learn (about 9 s of CPU on 2 cores); this one needs only the JVM.
    `java` is the `io.anserini.search.SimpleSearcher` (methods `batch_search`, `doc_raw`, `doc_contents`, ...).
    """

    java: object
    index_dir: str
    prebuilt_name: str | None = None

    @property
    def num_docs(self) -> int:
        return int(self.java.get_total_num_docs())

    def set_bm25(self, k1: float, b: float) -> None:
        self.java.set_bm25(float(k1), float(b))

    def batch_search(self, queries: list[str], qids: list[str], k: int, threads: int,
                     fields: Mapping[str, float] | None = None) -> dict[str, list[Hit]]:
        """qid -> hits (Anserini's order and scores: score descending, ties by docid) for a batch of queries.

        `fields` (field -> boost) searches those fields together, as Pyserini's `--fields contents=1.0 title=1.0`
        does on a multifield index; without it only `contents` is searched."""
        autoclass = anserini_classes()
        array_list = autoclass("java.util.ArrayList")
        java_queries, java_qids = array_list(), array_list()
        for query, qid in zip(queries, qids):
            java_queries.add(query)
            java_qids.add(qid)
        if fields:
            java_fields = autoclass("java.util.HashMap")()
            java_float = autoclass("java.lang.Float")
            for field, boost in fields.items():
                java_fields.put(field, java_float(float(boost)))
            results = self.java.batch_search_fields(java_queries, java_qids, int(k), int(threads), java_fields)
        else:
            results = self.java.batch_search(java_queries, java_qids, int(k), int(threads))
        return {qid: [Hit(scored.docid, scored.score) for scored in results.get(qid) or ()] for qid in qids}

    def indexed_fields(self) -> set[str]:
        """Names of the fields with postings (e.g. {"contents", "title"} in a multifield BEIR index)."""
        autoclass = anserini_classes()
        from jnius import JavaException

        directory = autoclass("org.apache.lucene.store.FSDirectory").open(
            autoclass("java.io.File")(self.index_dir).toPath())
        try:
            reader = autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
        except JavaException as error:
            directory.close()
            raise UserError(f"cannot read the fields of the Lucene index {self.index_dir}: {first_line(error)}") from None
        try:
            infos = autoclass("org.apache.lucene.index.FieldInfos").getMergedFieldInfos(reader)
            none = autoclass("org.apache.lucene.index.IndexOptions").NONE
            return {info.name for info in infos.iterator() if not info.getIndexOptions().equals(none)}
        finally:
            reader.close()
            directory.close()

    def check_fields(self, fields: Mapping[str, float]) -> None:
        """A field the index does not have matches nothing (Lucene returns no hits, silently): a UserError naming
        the index's fields instead."""
        available = self.indexed_fields()
        unknown = sorted(set(fields) - available)
        if unknown:
            raise UserError(f"--fields: the index {self.index_dir} has no field {', '.join(map(repr, unknown))}; its "
                            f"searchable fields are {', '.join(sorted(available))}")

    def default_fields(self) -> dict[str, float] | None:
        """The fields to search when none are given: Pyserini's multifield setting (contents and title, boost 1.0
        each) for an index with a `title` field, as its BEIR multifield regressions do; else None (contents only)."""
        return dict(MULTIFIELD_FIELDS) if "title" in self.indexed_fields() else None

    def close(self) -> None:
        self.java.close()


def _simple_searcher(index_dir: str, prebuilt_name: str | None = None) -> LuceneSearcher:
    autoclass = anserini_classes()
    from jnius import JavaException

    try:
        java = autoclass("io.anserini.search.SimpleSearcher")(index_dir)
    except JavaException as error:
        raise UserError(f"cannot open the Lucene index {index_dir}: {str(error).splitlines()[0]}") from None
    return LuceneSearcher(java=java, index_dir=index_dir, prebuilt_name=prebuilt_name)


def open_searcher(index: str | os.PathLike) -> LuceneSearcher:
    """A searcher for a local index folder or a Pyserini prebuilt index name (downloaded by Pyserini when online)."""
    path = Path(index)
    if path.exists():
        if not _is_lucene_index(path):
            raise UserError(f"{path} is not a Lucene index (no segments_* file); build one with pyserini_ssm.index")
        return _simple_searcher(str(path))
    name = str(index)
    if "/" in name or os.sep in name:
        raise UserError(f"index folder not found: {path}")
    anserini_classes()
    from pyserini.prebuilt_index_info import IMPACT_INDEX_INFO, TF_INDEX_INFO
    from pyserini.util import download_prebuilt_index

    if name not in TF_INDEX_INFO and name not in IMPACT_INDEX_INFO:
        raise UserError(
            f"index not found: {name!r} is neither a folder nor a Pyserini prebuilt index name "
            "(e.g. msmarco-v1-passage, beir-v1.0.0-scifact.flat)"
        )
    cached = prebuilt_index_cache_path(name)
    if _is_lucene_index(cached):  # in Pyserini's cache: open it as is, no download attempt
        return _simple_searcher(str(cached), prebuilt_name=name)
    info = TF_INDEX_INFO.get(name) or IMPACT_INDEX_INFO[name]
    from pyserini_ssm.hub import host_reachable

    if not any(host_reachable(url) for url in info["urls"][:1]):  # offline: fail now, without Pyserini's retries
        raise UserError(
            f"prebuilt index {name!r} is not in Pyserini's cache ({cached}) and {info['urls'][0].split('/')[2]} "
            f"cannot be reached: on a machine with internet, download it with "
            f"`python -c \"from pyserini.util import download_prebuilt_index; download_prebuilt_index('{name}')\"` "
            f"into the same PYSERINI_CACHE, or pass a local index folder to --index"
        )
    try:
        index_dir = download_prebuilt_index(name, verbose=False)
    except Exception as error:  # noqa: BLE001  (ValueError when every URL fails; OSError, tarfile errors, ...)
        index_dir = None
        log.debug("download_prebuilt_index(%s) failed: %r", name, error)
    if not index_dir or not _is_lucene_index(Path(index_dir)):
        raise UserError(
            f"prebuilt index {name!r} could not be had: Pyserini could not download it (this needs internet); "
            "build a local index with pyserini_ssm.index and pass its folder to --index"
        )
    return _simple_searcher(str(index_dir), prebuilt_name=name)


def prebuilt_index_cache_path(name: str) -> Path:
    """Where Pyserini keeps a downloaded prebuilt Lucene index: `$PYSERINI_CACHE/indexes/<tarball name>.<md5>`
    (PYSERINI_CACHE defaults to ~/.cache/pyserini), as `pyserini.util.download_prebuilt_index` unpacks it."""
    anserini_classes()
    import re

    from pyserini.prebuilt_index_info import IMPACT_INDEX_INFO, TF_INDEX_INFO
    from pyserini.util import get_cache_home

    info = TF_INDEX_INFO.get(name) or IMPACT_INDEX_INFO.get(name)
    if info is None:
        raise UserError(f"{name!r} is not a Pyserini prebuilt Lucene index name")
    tarball = info.get("filename") or info["urls"][0].split("/")[-1]
    return Path(get_cache_home()) / "indexes" / f"{re.sub(r'.tar.gz.*$', '', tarball)}.{info['md5']}"


def iter_bm25_batches(
    searcher: LuceneSearcher,
    topics: Mapping[str, str],
    *,
    hits: int = 1000,
    k1: float = K1,
    b: float = B,
    threads: int | None = None,
    batch_size: int = 128,
    remove_query: bool = False,
    fields: Mapping[str, float] | None = None,
) -> Iterator[list[tuple[str, list[Hit]]]]:
    """`bm25_search` one batch of queries at a time ([(qid, hits), ...] in topics order), to write as it goes."""
    if hits < 1:
        raise UserError(f"--hits must be >= 1, got {hits}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    check_bm25_parameters(k1, b)
    if fields:
        searcher.check_fields(fields)
    threads = threads or os.cpu_count() or 1
    duplicates: list[tuple[str, str]] = []  # an index built with a docid twice returns it twice: keep the first
    searcher.set_bm25(float(k1), float(b))
    qids = [str(qid) for qid in topics]
    queries = list(topics.values())
    for start in range(0, len(qids), batch_size):
        batch_qids = qids[start : start + batch_size]
        batch = searcher.batch_search(queries[start : start + batch_size], batch_qids, hits, threads, fields)
        ranked_batch = []
        for qid in batch_qids:
            ranked = _first_of_each_docid(batch[qid], duplicates, qid)
            if remove_query:
                ranked = [hit for hit in ranked if hit.docid != qid]
            ranked_batch.append((qid, ranked))
        yield ranked_batch
    warn_duplicates(f"BM25 search of {searcher.index_dir}", len(duplicates), duplicates[0] if duplicates else None)


def _first_of_each_docid(hits: list[Hit], dropped: list[tuple[str, str]], qid: str = "") -> list[Hit]:
    """`hits` (best first) without the later entries of a repeated docid (appended to `dropped`)."""
    seen: set[str] = set()
    kept = []
    for hit in hits:
        if hit.docid in seen:
            dropped.append((qid, hit.docid))
            continue
        seen.add(hit.docid)
        kept.append(hit)
    return kept


def bm25_search(
    searcher: LuceneSearcher,
    topics: Mapping[str, str],
    *,
    hits: int = 1000,
    k1: float = K1,
    b: float = B,
    threads: int | None = None,
    batch_size: int = 128,
    remove_query: bool = False,
    fields: Mapping[str, float] | None = None,
) -> dict[str, list[Hit]]:
    """BM25 top-`hits` per query (qid -> hits, best first, queries in topics order) with Lucene batch search.

    `threads` defaults to the number of CPU cores. `remove_query` drops a hit whose docid equals the query id, as
    Pyserini/Anserini do for BEIR (such a query then keeps `hits - 1` documents, as theirs does). `fields` (field ->
    boost) searches several fields of a multifield index (see `LuceneSearcher.batch_search`).
    """
    results: dict[str, list[Hit]] = {}
    for batch in iter_bm25_batches(
        searcher, topics, hits=hits, k1=k1, b=b, threads=threads, batch_size=batch_size, remove_query=remove_query,
        fields=fields,
    ):
        results.update(batch)
    return results


# ----------------------------------------------------------------------------------------------- document texts


# A stored raw document's reranking text: `collection.raw_document_text`, the one rule (this name stays for callers).
document_text = raw_document_text


def fetch_texts(
    searcher: LuceneSearcher,
    docids: Iterable[str],
    *,
    skip_missing: bool = False,
) -> dict[str, str]:
    """docid -> reranking text, from the raw documents stored in the index (`collection.raw_document_text`).

    One JNI call per document (`doc_raw`), measured faster than Pyserini's `doc()` wrapper and than
    `batch_get_docs` (see docs/FIRST_STAGE.md). A docid missing from the index is a UserError, or a warning
    and no entry with `skip_missing`.
    """
    java_searcher = searcher.java
    texts: dict[str, str] = {}
    missing: list[str] = []
    for docid in dict.fromkeys(str(d) for d in docids):
        raw = java_searcher.doc_raw(docid)
        if raw is None:  # not in the index, or indexed without -storeRaw
            contents = java_searcher.doc_contents(docid)
            if contents is None:
                missing.append(docid)
            else:
                texts[docid] = contents
            continue
        texts[docid] = raw_document_text(raw)
    if missing:
        sample = ", ".join(repr(d) for d in missing[:5])
        if not skip_missing:
            raise UserError(
                f"{len(missing)} document(s) not found in the index, e.g. {sample}: is the run from this index?"
            )
        log.warning("%d document(s) not found in the index and skipped, e.g. %s", len(missing), sample)
    return texts
