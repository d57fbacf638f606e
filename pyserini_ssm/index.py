"""Build a Lucene index for BM25 (positions, docvectors and raw documents stored).

    python -m pyserini_ssm.index --input ../shared/data/beir-scifact/corpus.jsonl.gz --index indexes/scifact

Accepts a BEIR corpus (`corpus.jsonl[.gz]`: `_id`, `title`, `text`; indexed "flat", title and text together, as
Pyserini's BEIR flat indexes are), Pyserini JsonCollection files (`id`, `contents`), a folder of either, or any
Anserini collection class by name with --collection (then --input is passed to Anserini as is).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Sequence

from pyserini_ssm.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="corpus file (.jsonl/.jsonl.gz) or folder of them")
    parser.add_argument("--index", required=True, help="folder to create (must not exist or be empty)")
    parser.add_argument(
        "--collection",
        default=None,
        help="Anserini collection class (default: detected from the first record: BeirFlatCollection or JsonCollection)",
    )
    parser.add_argument("--multifield", action="store_true",
                        help="BEIR corpus: title and text in fields of their own, as Pyserini's beir-v1.0.0-<name>."
                             "multifield indexes (search them with --fields contents=1.0 title=1.0, the default "
                             "for such an index)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="indexing threads (default: all cores)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.first_stage.lucene import build_index

    start = time.perf_counter()
    stats = build_index(args.input, args.index, collection=args.collection, threads=args.threads,
                        multifield=args.multifield)
    elapsed = time.perf_counter() - start
    print(
        f"indexed {stats.indexed} documents as {stats.collection} into {stats.index_dir} in {elapsed:.1f} s "
        f"(empty {stats.empty}, skipped {stats.skipped}, errors {stats.errors})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
