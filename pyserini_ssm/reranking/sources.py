"""Where the candidates come from: BM25 (or dense, hybrid) over an index with topics, an existing TREC run, or a
candidates JSON file with the texts inside. The inputs are read and checked before anything expensive; the texts of
the scored hits are brought back a few groups at a time (`_IndexTexts`, `_CandidateTexts`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

from pyserini_ssm.errors import UserError
from pyserini_ssm.reranking.partial import _InputDigest
from pyserini_ssm.reranking.scoring import RerankQuery, rerank_head_size
from pyserini_ssm.runs import Hit

if TYPE_CHECKING:
    from pyserini_ssm.reranking.config import RerankConfig


@dataclass
class _Inputs:
    """What the input files hold, read before anything expensive: topics (qid -> text) for a first stage or a run,
    the run's hits, or the candidates (ids and scores only; the texts are read again per group)."""

    topics: dict[str, str] | None = None
    run: dict[str, list[Hit]] | None = None
    candidates: list[RerankQuery] | None = None
    digest: str | None = None


def _read_inputs(config: RerankConfig) -> _Inputs:
    """Parse the topics, run or candidates file (all of it) so that a malformed one fails before the model loads."""
    if config.source == "candidates":
        from pyserini_ssm.candidates import iter_candidates

        maxp = config.doc_mode == "maxp"
        digest = _InputDigest()
        queries = []
        for candidate in iter_candidates(config.candidates):
            query = RerankQuery(str(candidate.qid), candidate.query, list(candidate.hits))
            # The digest covers the texts of every hit that may be scored. In maxp the hits may be segments,
            # whose head runs past `depth` (up to `depth` distinct documents).
            digest.add(query, rerank_head_size(query.hits, config.rerank_depth, segments_are_hits=maxp),
                       with_texts=True)
            queries.append(RerankQuery(query.qid, query.query, [Hit(h.docid, h.score) for h in query.hits]))
        if not queries:
            raise UserError(f"{config.candidates}: the candidates file holds no queries")
        return _Inputs(candidates=queries, digest=digest.hexdigest())

    from pyserini_ssm.topics import load_topics

    run = None
    if config.source == "run":
        from pyserini_ssm.runs import read_run

        run = read_run(config.run)  # the file first: it is the user's, the topics may need the JVM
    topics = load_topics(config.topics, topics_dir=config.topics_dir)
    if run is not None:
        unknown = [qid for qid in run if qid not in topics]
        if unknown:
            raise UserError(f"query {unknown[0]!r} of run {config.run} is not in topics {config.topics} "
                            f"({len(unknown)} such queries): give the topics the run was made from")
    return _Inputs(topics=topics, run=run)


@dataclass
class _FirstStage:
    """The opened first stage (Lucene searcher for texts and BM25, dense searcher and encoder) before it runs."""

    searcher: Any = None
    dense: Any = None  # first_stages.DenseStage


def _open_first_stage(config: RerankConfig, inputs: _Inputs) -> _FirstStage:
    """Open the Lucene index (texts; BM25) and the dense index: a prebuilt index missing offline fails here."""
    if config.source == "candidates":
        return _FirstStage()
    from pyserini_ssm.first_stage.lucene import open_searcher

    searcher = open_searcher(config.index)
    dense = None
    if config.source in ("dense", "hybrid"):
        from pyserini_ssm.first_stages import open_dense_stage

        dense = open_dense_stage(config.dense_index, config.encoder, threads=config.threads)
    return _FirstStage(searcher, dense)


def _load_queries(config: RerankConfig, inputs: _Inputs,
                  first_stage: _FirstStage) -> tuple[list[RerankQuery], "_TextSource", str]:
    """(queries with their first-stage hits but no texts, where the texts come from, digest of the inputs).

    Texts are left out so that memory holds ids and scores only; `_TextSource.hydrate` brings them back for a few
    groups at a time (from the index, or by reading the candidates file again).
    """
    if config.source == "candidates":
        return inputs.candidates, _CandidateTexts(config.candidates), inputs.digest

    from pyserini_ssm.first_stages import RunFileStage, run_first_stage

    topics, searcher = inputs.topics, first_stage.searcher
    if config.source == "run":
        queries = [RerankQuery(qid, topics[qid], hits) for qid, hits in RunFileStage(inputs.run).search(topics).items()]
    else:
        results = run_first_stage(config, searcher, first_stage.dense, topics)
        queries = [RerankQuery(qid, topics[qid], results.get(qid, [])) for qid in topics]
    digest = _InputDigest()
    for query in queries:
        digest.add(query, config.rerank_depth, with_texts=False)
    return queries, _IndexTexts(searcher, config.fetch_batch_size, config.skip_missing), digest.hexdigest()


@dataclass
class _Group:
    index: int
    queries: list[RerankQuery]
    heads: list[int]  # per query, how many leading hits are scored (and need their text)

    @property
    def pairs(self) -> int:
        """The planning and sharding cost: scored hits (documents in maxp over whole documents)."""
        return sum(self.heads)


class _TextSource(Protocol):
    def hydrate(self, groups: Iterable[_Group]) -> Iterator[_Group]: ...


def _with_texts(query: RerankQuery, head: int, texts: Any) -> RerankQuery:
    top = [Hit(hit.docid, hit.score, texts.get(hit.docid)) for hit in query.hits[:head]]
    return RerankQuery(query.qid, query.query, top + list(query.hits[head:]))


class _IndexTexts:
    """Fills in the texts of the scored hits from the index, one batched fetch per window of groups."""

    def __init__(self, searcher: Any, window: int, skip_missing: bool):
        self.searcher = searcher
        self.window = window
        self.skip_missing = skip_missing

    def hydrate(self, groups: Iterable[_Group]) -> Iterator[_Group]:
        pending: list[_Group] = []
        docs = 0
        for group in groups:
            pending.append(group)
            docs += group.pairs
            if docs >= self.window:
                yield from self._fetch(pending)
                pending, docs = [], 0
        if pending:
            yield from self._fetch(pending)

    def _fetch(self, groups: list[_Group]) -> Iterator[_Group]:
        from pyserini_ssm.first_stage.lucene import fetch_texts

        docids = list(dict.fromkeys(hit.docid for g in groups for q, head in zip(g.queries, g.heads)
                                    for hit in q.hits[:head]))
        try:
            texts = fetch_texts(self.searcher, docids, skip_missing=self.skip_missing)
        except UserError as error:
            raise UserError(f"{error} (pass --skip-missing to leave such documents out)") from None
        for group in groups:
            yield _Group(group.index, [_with_texts(q, head, texts) for q, head in zip(group.queries, group.heads)],
                         group.heads)


class _CandidateTexts:
    """Reads the candidates file again, keeping the texts of the wanted groups' queries only (one group at a time)."""

    def __init__(self, path: str):
        self.path = path

    def hydrate(self, groups: Iterable[_Group]) -> Iterator[_Group]:
        from pyserini_ssm.candidates import iter_candidates

        wanted = iter(groups)
        group = next(wanted, None)
        collected: list[RerankQuery] = []
        position = -1
        for candidate in iter_candidates(self.path):
            if group is None:
                return
            position += 1
            first = group.queries[0]
            if not collected and candidate.qid != first.qid:
                continue
            expected = group.queries[len(collected)]
            if candidate.qid != expected.qid or len(candidate.hits) != len(expected.hits):
                raise UserError(f"{self.path} changed while reranking (query {expected.qid} expected at #{position}, "
                                f"found {candidate.qid}): rerun to start over from the new file")
            head = group.heads[len(collected)]
            texts = {hit.docid: hit.text for hit in candidate.hits[:head]}
            collected.append(_with_texts(expected, head, texts))
            if len(collected) == len(group.queries):
                yield _Group(group.index, collected, group.heads)
                group, collected = next(wanted, None), []
        if group is not None:
            raise UserError(f"{self.path} changed while reranking (query {group.queries[0].qid} is gone): rerun to "
                            f"start over from the new file")
