"""BM25 retrieval with Pyserini's LuceneSearcher (batch search with threads); writes a TREC run.

    python -m pyserini_ssm.search --index indexes/scifact --topics beir-v1.0.0-scifact-test \\
        --topics-dir ../shared/data/topics-and-qrels --output runs/scifact.bm25.txt

--index takes a local index folder or a Pyserini prebuilt name (msmarco-v1-passage, beir-v1.0.0-scifact.flat, ...;
downloaded by Pyserini, online only). --topics takes a Pyserini topics name or a file (`qid<TAB>query`, .gz too).
For BEIR topics a hit whose docid equals the query id is dropped (--remove-query), as Pyserini's BEIR runs do.
The run tag records the BM25 parameters.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from pyserini_ssm.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", required=True, help="index folder or Pyserini prebuilt index name")
    parser.add_argument("--topics", required=True, help="Pyserini topics name or topics file")
    parser.add_argument("--output", required=True, help="TREC run file to write")
    parser.add_argument("--hits", type=int, default=1000, help="hits per query (default 1000)")
    parser.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (default 0.9)")
    parser.add_argument("--b", type=float, default=0.4, help="BM25 b (default 0.4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="search threads (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=128, help="queries per batch search (default 128)")
    parser.add_argument("--fields", nargs="+", metavar="FIELD=BOOST",
                        help="search these fields together, e.g. contents=1.0 title=1.0 (default: both of those for "
                             "an index with a title field, as Pyserini's BEIR multifield runs; else contents)")
    parser.add_argument(
        "--remove-query",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop a hit whose docid equals the query id (default: on for BEIR topics, off otherwise)",
    )
    parser.add_argument("--topics-dir", default=None, help="folder of Anserini topics files (default $PYSERINI_SSM_TOPICS_DIR)")
    parser.add_argument("--tag", default=None, help="run tag (default: bm25_k1=<k1>_b=<b>)")
    return parser


def bm25_tag(k1: float, b: float) -> str:
    return f"bm25_k1={k1:g}_b={b:g}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.errors import UserError
    from pyserini_ssm.files import atomic_output, check_output_path
    from pyserini_ssm.runs import format_run_lines, is_token
    from pyserini_ssm.topics import is_beir_topics, load_topics

    from pyserini_ssm.first_stage.lucene import check_bm25_parameters

    check_output_path(args.output)
    check_bm25_parameters(args.k1, args.b)
    for flag, value in (("--hits", args.hits), ("--threads", args.threads), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    remove_query = is_beir_topics(args.topics) if args.remove_query is None else args.remove_query
    tag = args.tag or bm25_tag(args.k1, args.b)
    if not is_token(tag):
        raise UserError(f"--tag {tag!r} must be one word (no spaces)")
    topics = load_topics(args.topics, args.topics_dir)

    from pyserini_ssm.first_stage.lucene import iter_bm25_batches, open_searcher, parse_fields

    fields = parse_fields(args.fields)
    start = time.perf_counter()
    searcher = open_searcher(args.index)
    if fields is None:
        fields = searcher.default_fields()
    print(
        f"BM25 k1={args.k1:g} b={args.b:g}: {len(topics)} queries, {args.hits} hits, "
        f"remove_query={'on' if remove_query else 'off'}, threads={args.threads}, tag={tag}"
        + (f", fields={' '.join(f'{name}={boost:g}' for name, boost in fields.items())}" if fields else ""),
        flush=True,
    )
    written = 0
    with atomic_output(args.output) as handle:
        for batch in iter_bm25_batches(
            searcher,
            topics,
            hits=args.hits,
            k1=args.k1,
            b=args.b,
            threads=args.threads,
            batch_size=args.batch_size,
            remove_query=remove_query,
            fields=fields,
        ):
            for qid, hits in batch:
                handle.writelines(format_run_lines(qid, hits, tag))
                written += len(hits)
    elapsed = time.perf_counter() - start
    print(f"wrote {written} hits for {len(topics)} queries to {args.output} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
