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
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.rerank",
        description="Rerank first-stage candidates with a cross-encoder (Mamba, transformer) into a TREC run. "
        "Resumable: rerunning the same command after a crash continues from <output>.partial. "
        "Under torchrun, queries are sharded over the processes and rank 0 writes one run.",
    )
    source = parser.add_argument_group("candidates (a first stage, BM25 by default; or one of --run, --candidates)")
    source.add_argument("--index", help="Lucene index folder or Pyserini prebuilt index name (BM25, document texts)")
    source.add_argument("--topics", help="topics name (e.g. dl19-passage) or file (TSV, TREC, JSONL; .gz ok); default "
                        "for a prebuilt index: its evaluation topics (msmarco-v1-passage: dl19-passage, msmarco-v1-doc: "
                        "dl19-doc, BEIR: the test split)")
    source.add_argument("--topics-dir", help="folder holding Anserini topics/qrels files, for names offline")
    source.add_argument("--hits", type=int, default=1000, help="BM25 hits per query (default 1000)")
    source.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (default 0.9)")
    source.add_argument("--b", type=float, default=0.4, help="BM25 b (default 0.4)")
    source.add_argument("--threads", type=int, default=max(1, min(16, os.cpu_count() or 1)),
                        help="BM25 search threads")
    source.add_argument("--fields", nargs="+", metavar="FIELD=BOOST",
                        help="BM25 over these fields, e.g. contents=1.0 title=1.0 (default: both of those for an "
                             "index with a title field, as Pyserini's BEIR multifield runs; else contents)")
    source.add_argument("--first-stage", choices=("bm25", "dense", "hybrid"), default="bm25",
                        help="bm25 over --index (default); dense: Pyserini's FaissSearcher over --dense-index; "
                        "hybrid: both fused (--fusion); texts always come from --index")
    source.add_argument("--dense-index", help="dense index folder (python -m pyserini_ssm.dense_index) or Pyserini "
                        "prebuilt dense index name")
    source.add_argument("--encoder", help="dense query encoder, the one the dense index was built with (default "
                        "all-MiniLM-L6-v2)")
    source.add_argument("--fusion", choices=("interpolation", "rrf"), default="interpolation",
                        help="hybrid: min-max normalised interpolation (default) or reciprocal rank fusion")
    source.add_argument("--alpha", type=float, default=0.5, help="hybrid interpolation: weight of BM25 (default 0.5)")
    source.add_argument("--rrf-k", type=int, default=60, help="hybrid rrf: the constant k (default 60)")
    exclusive = source.add_mutually_exclusive_group()
    exclusive.add_argument("--run", help="rerank this TREC run (texts fetched from --index, queries from --topics)")
    exclusive.add_argument("--candidates",
                           help='first-stage results with texts: rank_llm Requests (JSON list or JSONL of {"query": '
                           '{"text", "qid"}, "candidates": [{"docid", "score", "doc": {...}}]}) or Pyserini\'s '
                           '{"query", "hits": [{"docid", "content", "qid", "score"}]}; detected, .gz ok')
    source.add_argument("--skip-missing", action="store_true",
                        help="leave out documents missing from the index or with empty text (warns) instead of "
                        "stopping")

    model = parser.add_argument_group("model")
    model.add_argument("--model", required=True, help="registry name (e.g. mamba2-780m) or checkpoint folder")
    model.add_argument("--rerank-depth", type=int, default=100,
                       help="rerank the top N candidates; the rest keep their first-stage order below (default 100)")
    model.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (default 32)")
    model.add_argument("--group-pairs", type=int, default=4096,
                       help="pairs per scoring call, whole queries (default 4096): length sorting and packing work "
                            "across them; a resumed run skips finished groups")
    model.add_argument("--max-length", type=int, help="tokens per pair (default: the model's)")
    model.add_argument("--dtype", choices=("bf16", "fp16", "fp32", "fp8"),
                       help="default: the model's for the device; fp8: bf16 weights with FP8 Linear layers (CUDA, "
                            "compute capability >= 8.9; scores change, see docs/BENCHMARKS.md)")
    model.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available; under torchrun, "
                       "each rank takes its local GPU)")
    model.add_argument("--backend", default="auto",
                       help="SSM implementation: auto (mamba-ssm kernels on CUDA when installed), or as the models "
                       "module lists")

    documents = parser.add_argument_group("document ranking (MS MARCO document: FirstP, MaxP)")
    documents.add_argument("--doc-mode", choices=("passage", "firstp", "maxp"), default="passage",
                           help="passage: each candidate's text as it is (default); firstp: the start of each "
                           "document, as much as --max-length holds; maxp: each document's best overlapping segment "
                           "(candidates that are segments already, ids like D1#3, are not cut again)")
    documents.add_argument("--segment-unit", choices=("words", "sentences"), default="words",
                           help="maxp: segments of words (default) or sentences")
    documents.add_argument("--segment-window", type=int,
                           help="maxp: units per segment (default 150 words, 10 sentences)")
    documents.add_argument("--segment-stride", type=int,
                           help="maxp: a new segment every N units (default half the window: 75 words, 5 sentences)")

    output = parser.add_argument_group("output")
    output.add_argument("--output", help="run file (default: runs/run.<index>.<topics>.<first stage>.<model>"
                        ".rerank<depth>.txt)")
    output.add_argument("--output-format", choices=("trec", "msmarco", "rank_llm"), default="trec",
                        help="trec (default); msmarco: qid<TAB>docid<TAB>rank; rank_llm: one Request per query "
                        "(JSONL, a JSON list if --output ends in .json) with the reranked candidates, their texts "
                        "and our scores, for a listwise reranker")
    output.add_argument("--tag", help="run tag (default: the model's name)")
    output.add_argument("--qrels", help="qrels name or file: print metrics before and after reranking "
                        "(default: the qrels of a named --topics)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.first_stage.lucene import parse_fields
    from pyserini_ssm.reranking import RerankConfig, format_metrics, run_rerank

    rank = int(os.environ.get("RANK", "0") or 0)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                            stream=sys.stderr)
    config = RerankConfig(
        model=args.model,
        index=args.index,
        topics=args.topics,
        run=args.run,
        candidates=args.candidates,
        output=args.output,
        hits=args.hits,
        rerank_depth=args.rerank_depth,
        batch_size=args.batch_size,
        group_pairs=args.group_pairs,
        max_length=args.max_length,
        dtype=args.dtype,
        device=args.device,
        backend=args.backend,
        qrels=args.qrels,
        topics_dir=args.topics_dir,
        skip_missing=args.skip_missing,
        tag=args.tag,
        bm25_k1=args.k1,
        bm25_b=args.b,
        fields=parse_fields(args.fields),
        threads=args.threads,
        show_progress=not args.no_progress,
        doc_mode=args.doc_mode,
        segment_unit=args.segment_unit,
        segment_window=args.segment_window,
        segment_stride=args.segment_stride,
        first_stage=args.first_stage,
        dense_index=args.dense_index,
        encoder=args.encoder,
        fusion=args.fusion,
        alpha=args.alpha,
        rrf_k=args.rrf_k,
        output_format=args.output_format,
    )
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
