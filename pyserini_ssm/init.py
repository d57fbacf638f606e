"""`python -m pyserini_ssm.init`: write a randomly initialised reranker of any registry architecture.

    python -m pyserini_ssm.init --model mamba2-780m --scale full --output models/mamba2-780m-random \
        --tokenizer path/to/gpt-neox-20b-tokenizer
    python -m pyserini_ssm.init --model bert-base --scale tiny --output /tmp/tiny-bert --tokenizer bert-tokenizer/

The folder is in our reranker format (docs/MODELS.md), loads with `Reranker.from_pretrained` and `--model DIR`, and
is how tests and benchmarks get models where no weights can be downloaded. `tiny`: 2 layers, small width, the
vocabulary sized to the tokenizer; `full`: the real architecture (vocabulary grown if the tokenizer is bigger).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyserini_ssm.cli import run_main
# The library functions live in models/ (benchmarks and tests build random models without this CLI); re-exported here
# for the scripts and tests that import them from `pyserini_ssm.init`.
from pyserini_ssm.models.random_init import (SCALES, build_random_backbone, build_random_reranker, init_checkpoint,
                                             sized_architecture)

__all__ = ["SCALES", "build_random_backbone", "build_random_reranker", "init_checkpoint", "main",
           "sized_architecture"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.init",
        description="Write a randomly initialised reranker checkpoint of a registry architecture (no download).",
    )
    parser.add_argument("--model", required=True, help="registry name, e.g. mamba2-780m, bert-base, minilm-l6")
    parser.add_argument("--scale", choices=SCALES, default="tiny",
                        help="tiny: 2 layers, small width (tests); full: the real architecture (benchmarks)")
    parser.add_argument("--output", required=True, help="folder to create (must not exist, or be empty)")
    parser.add_argument("--tokenizer", default=None,
                        help="local tokenizer folder or .gguf file (default: the registry's tokenizer, downloaded)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    directory = init_checkpoint(args.model, args.scale, args.output, tokenizer=args.tokenizer, seed=args.seed)
    print(f"wrote a random {args.scale} {args.model} reranker to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
