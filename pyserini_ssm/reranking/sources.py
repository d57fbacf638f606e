"""Where the candidates come from: a first stage of `first_stages` (BM25, dense or hybrid over indexes with topics,
an existing TREC run, or a candidates JSON file with the texts inside), by name. The inputs are read and checked
before anything expensive; the texts of the scored hits are brought back a few groups at a time (`_StageTexts`)."""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from pyserini_ssm.errors import UserError
from pyserini_ssm.reranking.partial import _InputDigest
from pyserini_ssm.reranking.scoring import RerankQuery, rerank_head_size
from pyserini_ssm.runs import Hit

if TYPE_CHECKING:
    from pyserini_ssm.first_stages import FirstStage
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


def _open_first_stage(config: RerankConfig, inputs: _Inputs) -> "FirstStage":
    """Open the first stage (`first_stages.open_first_stage`: the Lucene index for texts and BM25, the dense index
    and its encoder): a prebuilt index missing offline fails here, before the model loads."""
    from pyserini_ssm.first_stages import CandidatesFileStage, open_first_stage

    if config.stage_name == "candidates":  # read already, with the digest of its texts
        return CandidatesFileStage(config.candidates, queries=inputs.candidates)
    return open_first_stage(config.stage_name, config, run=inputs.run)


def _load_queries(config: RerankConfig, inputs: _Inputs,
                  first_stage: "FirstStage") -> tuple[list[RerankQuery], "_StageTexts", str]:
    """(queries with their first-stage hits but no texts, where the texts come from, digest of the inputs).

    Texts are left out so that memory holds ids and scores only; `_StageTexts.hydrate` brings them back for a few
    groups at a time (`FirstStage.texts`: from the index, or by reading the candidates file again).
    """
    topics = inputs.topics if inputs.topics is not None else first_stage.topics()
    queries = [RerankQuery(qid, topics[qid], hits) for qid, hits in first_stage.search(topics).items()]
    digest = inputs.digest
    if digest is None:
        input_digest = _InputDigest()
        for query in queries:
            input_digest.add(query, config.rerank_depth, with_texts=False)
        digest = input_digest.hexdigest()
    return queries, _StageTexts(first_stage), digest


@dataclass
class _Group:
    index: int
    queries: list[RerankQuery]
    heads: list[int]  # per query, how many leading hits are scored (and need their text)

    @property
    def pairs(self) -> int:
        """The planning and sharding cost: scored hits (documents in maxp over whole documents)."""
        return sum(self.heads)


def _with_texts(query: RerankQuery, head: int, texts: Any) -> RerankQuery:
    top = [Hit(hit.docid, hit.score, texts.get(hit.docid)) for hit in query.hits[:head]]
    return RerankQuery(query.qid, query.query, top + list(query.hits[head:]))


class _StageTexts:
    """Fills in the texts of the scored hits of each group, from the first stage's `texts` (which reads them a window
    at a time: one batched index fetch per window, or one pass over the candidates file)."""

    def __init__(self, stage: "FirstStage"):
        self.stage = stage

    def hydrate(self, groups: Iterable[_Group]) -> Iterator[_Group]:
        pulled: collections.deque[_Group] = collections.deque()

        def requests() -> Iterator[tuple[str, list[str]]]:
            for group in groups:
                pulled.append(group)
                for query, head in zip(group.queries, group.heads):
                    yield query.qid, [hit.docid for hit in query.hits[:head]]

        filled: list[RerankQuery] = []
        for texts in self.stage.texts(requests()):
            group = pulled[0]
            position = len(filled)
            filled.append(_with_texts(group.queries[position], group.heads[position], texts))
            if len(filled) == len(group.queries):
                pulled.popleft()
                yield _Group(group.index, filled, group.heads)
                filled = []
