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
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="index the valid lines of a corpus with bad ones (bad JSON, no id, not UTF-8, a truncated "
                             "gzip), counting what was dropped (default: stop at the first, naming its line)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.first_stage.lucene import build_index

    start = time.perf_counter()
    stats = build_index(args.input, args.index, collection=args.collection, threads=args.threads,
                        multifield=args.multifield, skip_bad_lines=args.skip_bad_lines)
    elapsed = time.perf_counter() - start
    dropped = f", duplicate docids dropped {stats.duplicates}" if stats.duplicates else ""
    if args.skip_bad_lines:
        dropped += f", bad lines dropped {stats.bad_lines}"
        if stats.truncated_files:
            dropped += f", truncated gzip files {len(stats.truncated_files)}"
    print(
        f"indexed {stats.indexed} documents as {stats.collection} into {stats.index_dir} in {elapsed:.1f} s "
        f"(empty {stats.empty}, skipped {stats.skipped}, errors {stats.errors}{dropped})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
