"""`python -m pyserini_ssm.rerank`: rerank BM25 candidates (or a run, or a candidates file) into a TREC run.

    python -m pyserini_ssm.rerank --index msmarco-v1-passage --model mamba2-780m     (topics: dl19-passage)
    python -m pyserini_ssm.rerank --index msmarco-v1-passage --topics dl19-passage --model mamba2-780m
    python -m pyserini_ssm.rerank --index INDEX --topics TOPICS --first-stage dense --dense-index DENSE --model DIR
    python -m pyserini_ssm.rerank --candidates requests.jsonl --model DIR --output-format rank_llm   (rank_llm in/out)
    python -m pyserini_ssm.rerank --index INDEX --topics TOPICS --run bm25.txt --model DIR
    python -m pyserini_ssm.rerank --candidates retrieve_results_dl19.json.gz --model DIR --qrels dl19-passage
    torchrun --nproc-per-node 8 -m pyserini_ssm.rerank ...   (queries sharded over the GPUs, one merged run)
    python -m pyserini_ssm.rerank --index msmarco-v1-doc --topics msmarco-doc-dev --model DIR --doc-mode maxp

Argument parsing only; the pipeline is `pyserini_ssm.reranking.run_rerank`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from pyserini_ssm.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    """The flags of `RerankConfig`'s fields (their defaults and help live there, `cli_config` builds the flags)."""
    from pyserini_ssm.cli_config import add_options
    from pyserini_ssm.reranking.config import RerankConfig

    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.rerank",
        description="Rerank first-stage candidates with a cross-encoder (Mamba, transformer) into a TREC run. "
        "Resumable: rerunning the same command after a crash continues from <output>.partial. "
        "Under torchrun, queries are sharded over the processes and rank 0 writes one run.",
    )
    source = parser.add_argument_group("candidates (a first stage, BM25 by default; or one of --run, --candidates)")
    add_options(source, RerankConfig, ["index", "topics", "topics_dir", "hits", "bm25_k1", "bm25_b", "threads",
                                       "fields", "first_stage", "dense_index", "encoder", "fusion", "alpha", "rrf_k"])
    add_options(source.add_mutually_exclusive_group(), RerankConfig, ["run", "candidates"])
    add_options(source, RerankConfig, ["skip_missing"])

    model = parser.add_argument_group("model")
    add_options(model, RerankConfig, ["model", "rerank_depth", "batch_size", "group_pairs", "max_length", "dtype",
                                      "device", "backend"])

    documents = parser.add_argument_group("document ranking (MS MARCO document: FirstP, MaxP)")
    add_options(documents, RerankConfig, ["doc_mode", "segment_unit", "segment_window", "segment_stride"])

    output = parser.add_argument_group("output")
    add_options(output, RerankConfig, ["output", "output_format", "tag", "qrels", "show_progress"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.cli_config import config_values
    from pyserini_ssm.reranking import RerankConfig, format_metrics, run_rerank

    rank = int(os.environ.get("RANK", "0") or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                            stream=sys.stderr)
    config = RerankConfig(**config_values(args, RerankConfig))
    outcome = run_rerank(config)
    if rank == 0:
        print(f"wrote {outcome.output} ({outcome.queries} queries, tag {outcome.tag})", file=sys.stderr)
        if outcome.pairs_scored_all_ranks:
            print(f"scored {outcome.pairs_scored_all_ranks:,} pairs in {outcome.scoring_seconds:.1f} s "
                  f"({outcome.pairs_per_second:,.0f} pairs/s over {os.environ.get('WORLD_SIZE', '1')} process(es); start-up and "
                  f"the final merge excluded)", file=sys.stderr)
        if outcome.metrics:
            print(format_metrics(outcome.metrics))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
