"""`python -m pyserini_ssm.fuse`: fuse TREC runs (e.g. an SSM and a transformer reranker) into one TREC run.

    python -m pyserini_ssm.fuse --runs mamba.txt bert.txt --method rrf --output fused.txt
    python -m pyserini_ssm.fuse --runs bm25.txt dense.txt --method interpolation --alpha 0.3 --output hybrid.txt

Flags and defaults follow `python -m pyserini.fusion` (rrf_k 60, depth 1000, k 1000), with one difference:
`interpolation` min-max normalises each run per query first (scores of BM25, a dense model and a reranker live on
different scales); `--no-normalize` gives Pyserini's raw interpolation.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyserini_ssm.cli import run_main

METHODS = ("rrf", "interpolation", "normalize", "average")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.fuse", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("--runs", nargs="+", required=True, metavar="RUN", help="TREC run files (gzip allowed)")
    parser.add_argument("--output", required=True, help="fused TREC run file")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="rrf",
        help="rrf: sum of 1/(rrf_k + rank); interpolation: alpha * first + (1 - alpha) * second (two runs); "
        "normalize: sum of min-max normalised scores; average: mean of raw scores (default: rrf)",
    )
    parser.add_argument("--rrf-k", "--rrf.k", dest="rrf_k", type=int, default=60, help="RRF constant (default: 60)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the first run in interpolation (0.5)")
    parser.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="interpolate raw scores, as pyserini.fusion does (default: min-max normalise per query first)",
    )
    parser.add_argument("--depth", type=int, default=1000, help="entries taken from each run per query (1000)")
    parser.add_argument("--k", type=int, default=1000, help="entries written per query (1000)")
    parser.add_argument("--runtag", default="pyserini_ssm.fusion", help="tag in the last column of the output")
    return parser


def fuse_files(
    run_paths: Sequence[str],
    output: str,
    *,
    method: str = "rrf",
    rrf_k: int = 60,
    alpha: float = 0.5,
    normalize: bool = True,
    depth: int | None = 1000,
    k: int | None = 1000,
    tag: str = "pyserini_ssm.fusion",
) -> dict:
    """Read the runs, fuse them, write `output` atomically; returns the fused `dict[qid, list[Hit]]`."""
    from pyserini_ssm import fusion
    from pyserini_ssm.errors import UserError
    from pyserini_ssm.files import check_output_path
    from pyserini_ssm.runs import read_run, write_run

    check_output_path(output)
    if method not in METHODS:
        raise UserError(f"unknown fusion method {method!r}; choose one of {', '.join(METHODS)}")
    runs = [read_run(path) for path in run_paths]
    if method == "rrf":
        fused = fusion.reciprocal_rank_fusion(runs, rrf_k=rrf_k, depth=depth, k=k)
    elif method == "interpolation":
        if len(runs) != 2:
            raise UserError(f"interpolation fuses exactly two runs, got {len(runs)} (use rrf or normalize for more)")
        fused = fusion.interpolate(runs[0], runs[1], alpha, normalize=normalize, depth=depth, k=k)
    elif method == "normalize":
        fused = fusion.score_interpolation(runs, [1.0] * len(runs), normalize=True, depth=depth, k=k)
    else:
        fused = fusion.score_interpolation(runs, [1.0 / len(runs)] * len(runs), normalize=False, depth=depth, k=k)
    write_run(fused, output, tag)
    return fused


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fused = fuse_files(
        args.runs,
        args.output,
        method=args.method,
        rrf_k=args.rrf_k,
        alpha=args.alpha,
        normalize=args.normalize,
        depth=args.depth,
        k=args.k,
        tag=args.runtag,
    )
    print(f"fused {len(args.runs)} runs ({args.method}) over {len(fused)} queries -> {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
