"""`python -m pyserini_ssm.dense_search`: dense (and hybrid BM25 + dense) first-stage retrieval to a TREC run.

    python -m pyserini_ssm.dense_search --index indexes/scifact.minilm --topics beir-v1.0.0-scifact-test \\
        --output run.scifact.minilm.txt
    # hybrid: fuse with a BM25 run (or --sparse-index INDEX to run BM25 here)
    python -m pyserini_ssm.dense_search --index indexes/scifact.minilm --topics beir-v1.0.0-scifact-test \\
        --sparse-run run.scifact.bm25.txt --fusion interpolation --alpha 0.5 --output run.scifact.hybrid.txt

The encoder flags must match those the index was built with. The reranker does not care where candidates come
from: pass the output to `python -m pyserini_ssm.rerank` as any other run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyserini_ssm.cli import run_main
from pyserini_ssm.dense_index import add_encoder_arguments, encoder_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyserini_ssm.dense_search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="dense index folder, or a Pyserini prebuilt dense index name")
    parser.add_argument("--topics", required=True, help="Pyserini topics name or topics file")
    parser.add_argument("--topics-dir", help="folder of Anserini topics files, for names without a download")
    parser.add_argument("--output", required=True, help="TREC run to write")
    parser.add_argument("--hits", type=int, default=1000, help="results per query (default: 1000)")
    parser.add_argument("--threads", type=int, default=1, help="faiss search threads (default: 1)")
    parser.add_argument("--runtag", default=None, help="run tag (default: dense, or hybrid)")
    hybrid = parser.add_argument_group("hybrid (BM25 + dense)")
    sparse = hybrid.add_mutually_exclusive_group()
    sparse.add_argument("--sparse-run", help="a BM25 TREC run of the same topics to fuse with")
    sparse.add_argument("--sparse-index", help="a Lucene index (folder or prebuilt name) to run BM25 on here")
    hybrid.add_argument("--fusion", choices=("interpolation", "rrf"), default="interpolation",
                        help="interpolation of min-max normalised scores, or RRF (default: interpolation)")
    hybrid.add_argument("--alpha", type=float, default=0.5, help="weight of BM25 in interpolation (default: 0.5)")
    hybrid.add_argument("--rrf-k", type=int, default=60, help="RRF constant (default: 60)")
    add_encoder_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.files import check_output_path
    from pyserini_ssm.first_stage import dense
    from pyserini_ssm.runs import read_run, write_run
    from pyserini_ssm.topics import load_topics

    check_output_path(args.output)
    topics = load_topics(args.topics, topics_dir=args.topics_dir)
    encoder = encoder_from_args(args)
    searcher = dense.open_faiss_searcher(args.index, encoder)
    results = dense.dense_search(searcher, encoder, topics, hits=args.hits, threads=args.threads)
    tag = args.runtag or "dense"
    if args.sparse_run or args.sparse_index:
        if args.sparse_run:
            sparse = read_run(args.sparse_run)
        else:
            from pyserini_ssm.first_stage.lucene import bm25_search, open_searcher

            sparse = bm25_search(open_searcher(args.sparse_index), topics, hits=args.hits)
        results = dense.hybrid_results(
            sparse, results, method=args.fusion, alpha=args.alpha, rrf_k=args.rrf_k, k=args.hits
        )
        tag = args.runtag or "hybrid"
    write_run(results, args.output, tag)
    print(f"wrote {len(results)} queries to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
