"""The reranking pipeline: first-stage candidates in, one TREC run out, streaming, resumable and shardable.

Three sources of candidates: BM25 over a Lucene index (`index` + `topics`), an existing TREC run (`run` + `topics`,
texts fetched from `index`), or a candidates JSON file with the texts inside (`candidates`).

How a run is produced (see docs/RERANKING.md):

1. The inputs are read and checked; the model is loaded. Nothing is written before this succeeds.
2. Queries are cut into *groups* of consecutive queries, planned from the candidate counts alone (a group fills about
   one batch; with the default depth 100 >= batch size, a group is one query). A group is the unit of scoring and of
   commit, and its composition never depends on which process scores it or on what was finished before a crash, so
   its scores are bitwise the same in a 1-process run, a torchrun run and a resumed run.
3. Groups are sharded across torchrun ranks by their pair count (`distributed.shard_by_cost`). Each rank streams
   its groups: fetch texts for a window of groups, score a group, append its TREC lines to the rank's partial file
   (flush + fsync, in a background thread, in order: `partial.BackgroundCommits`), repeat. Memory is bounded by
   the fetch window and the batch, not the run.
4. When every rank is done (barrier), rank 0 concatenates the groups in input order into the final run through an
   atomic rename, and removes the partial files. The final run is byte-identical however the work was split.

The parts: `config` (the flags), `sources` (candidates and their texts), `scoring` (document modes, groups, score
merging), `prefetch` (texts read ahead), `partial` (progress files, fingerprints, the final merge) and
`evaluation` (qrels and before/after metrics); this module runs them (`run_rerank`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from pyserini_ssm.distributed import (
    DistributedContext,
    barrier,
    device_for_rank,
    init_from_env,
    shard_by_cost,
    shutdown,
    sum_over_ranks,
)
from pyserini_ssm.errors import UserError
from pyserini_ssm.reranking.config import RerankConfig, _output_path, _validate, model_label, with_default_topics
from pyserini_ssm.reranking.evaluation import _load_qrels_first, evaluate_before_after, qrels_name_for_topics
from pyserini_ssm.reranking.partial import (
    BackgroundCommits,
    PartialRun,
    _device_type,
    _dtype_fingerprint,
    _model_fingerprint,
    merge_partials,
    partial_path,
    rank_llm_request_line,
)
from pyserini_ssm.reranking.prefetch import prefetched
from pyserini_ssm.reranking.scoring import (
    DocumentMode,
    RerankQuery,
    _check_texts,
    _streams,
    detect_segment_ids,
    group_pairs,
    merge_group_scores,
    plan_groups,
    rerank_head_size,
    scores_in_turn,
    split_for_rerank,
)
from pyserini_ssm.reranking.sources import _Group, _load_queries, _open_first_stage, _read_inputs
from pyserini_ssm.runs import format_run_lines

if TYPE_CHECKING:
    from pyserini_ssm.reranking.evaluation import LoadedQrels
    from pyserini_ssm.reranking.sources import _Inputs

logger = logging.getLogger("pyserini_ssm.reranking")  # the pipeline's one logger, as before it was a package


@dataclass
class RerankOutcome:
    """What `run_rerank` did. `metrics` (metric -> (first stage, reranked)) only on rank 0 when qrels are known."""

    output: Path
    queries: int
    pairs_scored: int  # by this process in this invocation (resumed work excluded)
    resumed_groups: int
    skipped_documents: int
    metrics: dict[str, tuple[float, float]] | None = None
    tag: str = ""
    # The scoring phase, from a barrier once every process has its model and queries to a barrier after the last
    # group: the throughput of the job itself, without start-up (Python, model loading) and the final merge.
    scoring_seconds: float = 0.0
    pairs_scored_all_ranks: int = 0

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_scored_all_ranks / self.scoring_seconds if self.scoring_seconds > 0 else 0.0


def _check_precision(config: RerankConfig) -> None:
    """`--dtype fp8` needs a CUDA GPU of compute capability >= 8.9: a flag error, said before the model is looked for."""
    if config.dtype == "fp8":
        from pyserini_ssm.models.reranker import resolve_device, resolve_precision

        resolve_precision(config.dtype, resolve_device(config.device))


def _check_model_available(model: str) -> None:
    """Before loading: `model` names a checkpoint (`models.model_source`, what `load_checkpoint` dispatches on), and
    a registry model's weights can be had (offline: they are cached)."""
    from pyserini_ssm.models.model_source import model_source

    kind, target = model_source(model)
    if kind == "registry":
        from pyserini_ssm.hub import require_registry_model

        require_registry_model(target.checkpoint, target.tokenizer, target.name)


def _check_queries_fit(reranker: Any, queries: Sequence[RerankQuery]) -> None:
    """Fail before any scoring when a query cannot fit --max-length (the encoder raises a UserError naming it)."""
    encoder = getattr(reranker, "encoder", None) or getattr(reranker, "pair_encoder", None)
    query_ids = getattr(encoder, "query_ids", None)
    if query_ids is None:
        return
    for query in queries:
        try:
            query_ids(query.query)
        except UserError as error:
            raise UserError(f"query {query.qid}: {error}") from None


def _say_default_topics(original: RerankConfig, config: RerankConfig) -> None:
    """One line when --topics was filled in (said once the inputs are known good, so an error stays alone)."""
    if original.topics is None and config.topics is not None:
        qrels = config.qrels or qrels_name_for_topics(config.topics)
        logger.info("no --topics: using %s, the standard evaluation topics of %s (qrels %s)", config.topics,
                    config.index, qrels or "none")


def _progress(total: int, initial: int, enabled: bool, context: DistributedContext, unit: str = "pair"):
    from tqdm import tqdm

    description = "reranking" if not context.is_distributed else f"reranking (rank 0 of {context.world_size})"
    return tqdm(total=total, initial=initial, unit=unit, unit_scale=True, desc=description, file=sys.stderr,
                disable=not (enabled and context.is_main), mininterval=1.0, smoothing=0.1, dynamic_ncols=True)


def load_reranker(config: RerankConfig, device: str | None):
    """The model, loaded quietly (no hub retries or "Loading weights" bars; see `console.quiet_loading`)."""
    from pyserini_ssm.console import quiet_loading, silence_truncation_warning
    from pyserini_ssm.models.reranker import Reranker

    silence_truncation_warning()
    with quiet_loading(bars=_will_download(config.model)):
        return Reranker.from_pretrained(config.model, device=device, dtype=config.dtype,
                                        max_length=config.max_length, backend=config.backend)


def _will_download(model: str) -> bool:
    """Whether loading `model` downloads from the hub (a registry name not in the HF cache, the hub reachable)."""
    from pyserini_ssm.models.registry import REGISTRY

    if Path(model).expanduser().is_dir() or model not in REGISTRY:
        return False
    from pyserini_ssm.hub import cached_snapshot, hub_offline

    return cached_snapshot(REGISTRY[model].checkpoint) is None and not hub_offline()


def run_rerank(config: RerankConfig, *, reranker: Any = None,
               context: DistributedContext | None = None) -> RerankOutcome:
    """Rerank per `config` into one TREC run; resumes from a matching partial file; torchrun-aware.

    `reranker`: an already loaded model (tests, notebooks); by default it is loaded from `config.model`.
    Returns on every rank; only rank 0 writes the final run and computes metrics.
    """
    _validate(config)
    original, config = config, with_default_topics(config)
    _output_path(config)
    # Every input is read and checked before anything expensive (torch, the hub, the model, the JVM for a first
    # stage of minutes): qrels, topics, a run or a candidates file; then whether the model can be had at all.
    qrels = _load_qrels_first(config)
    inputs = _read_inputs(config)
    if reranker is None:
        _check_precision(config)
        _check_model_available(config.model)
    own_context = context is None
    if context is None:
        context = init_from_env(_device_type(config.device))
    try:
        return _run(config, reranker, context, qrels, inputs, announce=lambda: _say_default_topics(original, config))
    finally:
        if own_context:
            shutdown(context)


def _run(config: RerankConfig, reranker: Any, context: DistributedContext, qrels: "LoadedQrels | None",
         inputs: "_Inputs", announce: Callable[[], None] = lambda: None) -> RerankOutcome:
    output = _output_path(config)
    depth = config.rerank_depth
    tag = config.tag or model_label(config.model)
    first_stage = _open_first_stage(config, inputs)
    announce()
    if reranker is None:
        reranker = load_reranker(config, device_for_rank(config.device, context))
    queries, texts, input_digest = _load_queries(config, inputs, first_stage)
    if not queries:
        raise UserError("no queries to rerank")
    _check_queries_fit(reranker, queries)

    doc_mode = _document_mode(config, queries)
    # The plan needs no text: heads count the scored hits (segments of a segmented index, documents in maxp over
    # whole documents, whose segment counts would need the texts), so every rank and every resume cuts the same.
    heads = [rerank_head_size(query.hits, depth, doc_mode.segments_are_hits) for query in queries]
    plan = plan_groups(heads, max(config.group_pairs, config.batch_size))
    groups = [_Group(index, [queries[i] for i in members], [heads[i] for i in members])
              for index, members in enumerate(plan)]
    shards = shard_by_cost([group.pairs for group in groups], context.world_size)
    mine = [groups[index] for index in shards[context.rank]]

    fingerprint = {
        "model": _model_fingerprint(config.model),
        "rerank_depth": depth,
        "batch_size": config.batch_size,
        "group_pairs": config.group_pairs,
        "max_length": config.max_length,
        "dtype": _dtype_fingerprint(config.dtype, device_for_rank(config.device, context)),
        "backend": config.backend,
        "device_type": _device_type(device_for_rank(config.device, context)),
        "tag": tag,
        "source": config.source,
        "index": config.index if config.source != "candidates" else None,
        "inputs": input_digest,
        "groups": len(groups),
        "rank": context.rank,
        "world_size": context.world_size,
    }
    if doc_mode.fingerprint() is not None:
        fingerprint["doc_mode"] = doc_mode.fingerprint()
    if config.output_format != "trec":  # absent for trec: partial files of earlier versions stay valid
        fingerprint["output_format"] = config.output_format
    if config.source in ("dense", "hybrid"):
        fingerprint["first_stage"] = {"dense_index": config.dense_index, "encoder": config.encoder,
                                      "fusion": config.fusion if config.source == "hybrid" else None,
                                      "alpha": config.alpha, "rrf_k": config.rrf_k}
    own_partial = partial_path(output, context)
    if context.is_main:
        current = {partial_path(output, DistributedContext(rank, context.world_size)).name
                   for rank in range(context.world_size)}
        stale = sorted(p.name for p in output.parent.glob(f"{glob_escape(output.name)}*.partial")
                       if p.name not in current)
        if stale:
            logger.warning("ignoring progress files of a run with another number of processes: %s (delete them)",
                           ", ".join(stale))
    partial = PartialRun.open(own_partial, fingerprint)
    resumed = sum(1 for group in mine if group.index in partial.done)
    if resumed:
        logger.info("resuming: %d of %d groups already done in %s", resumed, len(mine), partial.path)
    todo = [group for group in mine if group.index not in partial.done]

    skipped = [0]

    def on_skip(qid: str, docid: str, reason: str) -> None:
        if not skipped[0] and reason != "is missing from the index":  # fetch_texts already warned about those
            logger.warning("skipping document %s of query %s: it %s (--skip-missing)", docid, qid, reason)
        skipped[0] += 1

    scored_pairs = 0
    commits = BackgroundCommits(partial)
    barrier(context)
    scoring_started = time.perf_counter()
    total_pairs = sum(group.pairs for group in mine)
    done_pairs = total_pairs - sum(group.pairs for group in todo)
    try:
        unit = "doc" if doc_mode.cuts_documents else "pair"
        # Groups are prepared ahead of scoring, their texts read in a background thread (`prefetched`) and tokenized
        # in another (`scores_in_turn`): `prepared` holds what each scored group needs for merging, in order. A bad
        # input found while preparing a group is queued behind the groups before it, so they are still committed
        # before the error stops the run.
        prepared: collections.deque = collections.deque()

        def pair_lists() -> Iterator[list[tuple[str, str]]]:
            try:
                for group in texts.hydrate(todo):
                    splits = [split_for_rerank(q.hits, depth, doc_mode) for q in group.queries]
                    reranked = [_check_texts(q, head, config.skip_missing, on_skip)
                                for q, (head, _) in zip(group.queries, splits)]
                    inputs, pairs = group_pairs(group.queries, reranked, doc_mode)
                    prepared.append((group, reranked, [tail for _, tail in splits], inputs, len(pairs)))
                    yield pairs
            except UserError as error:
                prepared.append(error)
                yield []

        texts_ahead = prefetched(pair_lists())
        with contextlib.closing(texts_ahead), _progress(total_pairs, done_pairs, config.show_progress, context,
                                                        unit) as bar:
            # The bar moves with the pairs scored, batch by batch (`predict_stream` advances it); in maxp over whole
            # documents it counts documents, one group at a time.
            per_batch = bar if not doc_mode.cuts_documents else None
            for scores in scores_in_turn(reranker, texts_ahead, config.batch_size, progress=per_batch):
                item = prepared.popleft()
                if isinstance(item, UserError):
                    raise item
                group, reranked, tails, inputs, pairs = item
                results = merge_group_scores(group.queries, reranked, tails, inputs, scores, doc_mode)
                text = "".join(line for query, hits in zip(group.queries, results)
                               for line in format_run_lines(query.qid, hits, tag))
                requests = None
                if config.output_format == "rank_llm":
                    requests = "".join(rank_llm_request_line(query, hits, head, len(tail))
                                       for query, hits, head, tail in zip(group.queries, results, reranked, tails))
                commits.commit(group.index, [query.qid for query in group.queries], text, requests)
                scored_pairs += pairs
                bar.update(group.pairs - (pairs if per_batch is not None and _streams(reranker) else 0))
        commits.drain()
    except UserError as error:
        commits.drain(raise_errors=False)  # what was finished is committed before the error is reported
        # Finished groups stay in the partial file: fixing the input and rerunning resumes from them. A file with
        # nothing finished is removed, so a bad input leaves no trace.
        if not partial.done:
            partial.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial.path)
            raise
        finished = sum(len(group.queries) for group in mine if group.index in partial.done)
        raise UserError(f"{error} (the {finished} queries finished so far are kept in {partial.path}: rerun the "
                        f"same command to resume)") from None
    finally:
        commits.drain(raise_errors=False)
        partial.close()
    if skipped[0]:
        logger.warning("skipped %d documents missing from the index or without text (--skip-missing)", skipped[0])

    barrier(context)
    outcome = RerankOutcome(output, len(queries), scored_pairs, resumed, skipped[0], tag=tag,
                            scoring_seconds=time.perf_counter() - scoring_started,
                            pairs_scored_all_ranks=sum_over_ranks(context, scored_pairs))
    if context.is_main:
        partials = [partial_path(output, DistributedContext(rank, context.world_size))
                    for rank in range(context.world_size)]
        reranked_run = merge_partials(output, partials, len(groups), config.output_format,
                                      collect_run=qrels is not None)
        for path in partials:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if qrels is not None:
            outcome.metrics = evaluate_before_after(queries, reranked_run, qrels, config,
                                                    segments_are_hits=doc_mode.segments_are_hits)
    return outcome


def _document_mode(config: RerankConfig, queries: Sequence[RerankQuery]) -> DocumentMode:
    segments = config.segment_config()
    presegmented = config.doc_mode == "maxp" and detect_segment_ids(queries)
    if presegmented:
        logger.info("maxp: the candidates are segments already (ids like %s): scoring them, best per document",
                    next(hit.docid for query in queries for hit in query.hits))
    return DocumentMode(config.doc_mode, segments, presegmented)
