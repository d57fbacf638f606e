"""The reranking pipeline: first-stage candidates in, one TREC run out, streaming, resumable and shardable
(`run_rerank`; `rerank_candidates` for a stream of candidates without files). See `pipeline` for how a run is made.

This package re-exports the names of its modules, so that `from pyserini_ssm.reranking import run_rerank` reads the
same as before the pipeline was split into them: `config` (RerankConfig, flag checks, default topics and output),
`scoring` (document modes, groups, score merging), `prefetch`, `partial` (progress files, fingerprints, the final
merge), `sources` (index, run, candidates file), `evaluation` (qrels, before/after metrics) and `pipeline`.
"""

from pyserini_ssm.reranking.config import (
    DEFAULT_OUTPUT_DIR,
    DOC_MODES,
    OUTPUT_FORMATS,
    OUTPUT_SUFFIXES,
    SEGMENT_DEFAULT_WINDOWS,
    RerankConfig,
    default_output,
    default_topics_for_index,
    model_label,
    with_default_topics,
)
from pyserini_ssm.reranking.evaluation import LoadedQrels, evaluate_before_after, format_metrics, qrels_name_for_topics
from pyserini_ssm.reranking.partial import (
    PARTIAL_FORMAT,
    PARTIAL_VERSION,
    PartialRun,
    merge_partials,
    partial_path,
    rank_llm_request_line,
)
from pyserini_ssm.reranking.pipeline import RerankOutcome, load_reranker, run_rerank
from pyserini_ssm.reranking.prefetch import prefetched
from pyserini_ssm.reranking.scoring import (
    PASSAGE_MODE,
    SCORE_DECIMALS,
    DocumentMode,
    QueryCandidates,
    RerankQuery,
    detect_segment_ids,
    group_pairs,
    merge_group_scores,
    merge_reranked,
    model_inputs,
    plan_groups,
    rerank_candidates,
    rerank_head_size,
    round_score,
    score_group,
    scores_in_turn,
    split_for_rerank,
)

__all__ = [
    "DEFAULT_OUTPUT_DIR", "DOC_MODES", "OUTPUT_FORMATS", "OUTPUT_SUFFIXES", "PARTIAL_FORMAT", "PARTIAL_VERSION",
    "PASSAGE_MODE", "SCORE_DECIMALS", "SEGMENT_DEFAULT_WINDOWS",
    "DocumentMode", "LoadedQrels", "PartialRun", "QueryCandidates", "RerankConfig", "RerankOutcome", "RerankQuery",
    "default_output", "default_topics_for_index", "detect_segment_ids", "evaluate_before_after", "format_metrics",
    "group_pairs", "load_reranker", "merge_group_scores", "merge_partials", "merge_reranked", "model_inputs",
    "model_label", "partial_path", "plan_groups", "prefetched", "qrels_name_for_topics", "rank_llm_request_line",
    "rerank_candidates", "rerank_head_size", "round_score", "run_rerank", "score_group", "scores_in_turn",
    "split_for_rerank", "with_default_topics",
]
