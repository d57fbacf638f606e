"""Score a TREC run with pytrec_eval, following Pyserini's 2CR conventions.

    python -m pyserini_ssm.evaluate --run runs/scifact.bm25.txt --qrels beir-v1.0.0-scifact-test \\
        --topics-dir ../shared/data/topics-and-qrels

Conventions (--convention; by default guessed from the qrels name or file name): nDCG@10 as is; MAP and R@1000 at
relevance level 2 for TREC DL passage (dl); MRR@10 (recip_rank on the top 10) for MS MARCO dev (msmarco-dev);
nDCG@10, R@100, R@1000 for BEIR (beir); none: level 1, no depth. Only judged queries count: run queries without
judgments are dropped, judged queries missing from the run score 0 (trec_eval -c).

Metrics: ir_measures names (nDCG@10, P@10, R@100, RR@10, AP, AP(rel=2), Judged@10) or trec_eval names (ndcg_cut_10,
P_10, recall_100, recip_rank, map); any other name is an error listing the valid forms. Count measures (num_rel,
num_ret, num_rel_ret, num_q) are summed, as trec_eval prints them. Output: trec_eval-style lines, or one JSON object
keyed by the metric names (--json); the convention used is printed on the first (stderr) line.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from pyserini_ssm.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="TREC run file (.gz too)")
    parser.add_argument("--qrels", required=True, help="Pyserini qrels name (dl19-passage, ...) or qrels file")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="e.g. nDCG@10 P@10 AP(rel=2) RR@10, or trec_eval's ndcg_cut_10 map recall_1000 (default: the "
        "convention's 2CR set)",
    )
    parser.add_argument(
        "--convention",
        default="auto",
        metavar="{auto,dl,msmarco-dev,beir,none,...}",
        help="2CR convention: dl (MAP, recall at relevance level 2), dl-v2, dl-doc, msmarco-dev (MRR@10), "
        "msmarco-dev-depth100, beir, none (level 1, no depth) (default auto: guessed from the qrels name)",
    )
    parser.add_argument(
        "--relevance-level", type=int, default=None, help="trec_eval -l for binary measures (default: the convention's)"
    )
    parser.add_argument("--per-query", action="store_true", help="also print each query's values")
    parser.add_argument("--json", action="store_true", help="print one JSON object keyed by measure name")
    parser.add_argument("--topics-dir", default=None, help="folder of Anserini qrels files (default $PYSERINI_SSM_TOPICS_DIR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.evaluation import evaluate, resolve_convention, resolve_metrics
    from pyserini_ssm.qrels import load_qrels
    from pyserini_ssm.runs import read_run, run_as_dict

    # Names and convention first: a mistyped metric should not wait for a large run to be read.
    resolve_metrics(args.metrics, resolve_convention(args.convention, args.qrels), args.relevance_level)
    run = run_as_dict(read_run(args.run))
    qrels = load_qrels(args.qrels, args.topics_dir)
    result = evaluate(
        run,
        qrels,
        args.metrics,
        collection_hint=args.qrels,
        per_query=args.per_query,
        relevance_level=args.relevance_level,
        convention=args.convention,
    )
    guessed = " (guessed from the qrels name; choose with --convention)" if args.convention == "auto" else ""
    print(f"# {result.describe()}{guessed}", file=sys.stderr)
    if args.json:
        payload: dict = dict(result)
        if args.per_query:
            payload["per_query"] = result.per_query
        print(json.dumps(payload))
        return 0
    counts = {key for key, metric in result.metrics.items() if metric.is_count}

    def shown(key: str, value: float) -> str:  # counts as trec_eval prints them: integers
        return f"{value:.0f}" if key in counts else f"{value:.4f}"

    if args.per_query:
        for qid, values in result.per_query.items():
            for key, value in values.items():
                print(f"{key:<20}\t{qid}\t{shown(key, value)}")
    print(f"{'num_q':<20}\tall\t{result.num_queries}")
    for key, value in result.items():
        if key != "num_q":  # printed above
            print(f"{key:<20}\tall\t{shown(key, value)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
