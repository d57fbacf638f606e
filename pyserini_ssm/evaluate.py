"""Score a TREC run with pytrec_eval, following Pyserini's 2CR conventions.

    python -m pyserini_ssm.evaluate --run runs/scifact.bm25.txt --qrels beir-v1.0.0-scifact-test \\
        --topics-dir ../shared/data/topics-and-qrels

Conventions (picked from the qrels name or file name): nDCG@10 as is; MAP and R@1000 at relevance level 2 for
TREC DL passage; MRR@10 (recip_rank on the top 10) for MS MARCO dev; nDCG@10, R@100, R@1000 for BEIR. Only judged
queries count: run queries without judgments are dropped, judged queries missing from the run score 0
(trec_eval -c). Output: trec_eval-style lines, or one JSON object keyed by pytrec_eval measure names (--json).
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
        help="pytrec_eval measures, e.g. ndcg_cut_10 map recall_1000 recip_rank@10 (default: the collection's 2CR set)",
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
    from pyserini_ssm.evaluation import evaluate
    from pyserini_ssm.qrels import load_qrels
    from pyserini_ssm.runs import read_run, run_as_dict

    run = run_as_dict(read_run(args.run))
    qrels = load_qrels(args.qrels, args.topics_dir)
    result = evaluate(
        run,
        qrels,
        args.metrics,
        collection_hint=args.qrels,
        per_query=args.per_query,
        relevance_level=args.relevance_level,
    )
    print(
        f"# {result.convention} convention, relevance level {result.relevance_level}, {result.num_queries} judged queries",
        file=sys.stderr,
    )
    if args.json:
        payload: dict = dict(result)
        if args.per_query:
            payload["per_query"] = result.per_query
        print(json.dumps(payload))
        return 0
    if args.per_query:
        for qid, values in result.per_query.items():
            for key, value in values.items():
                print(f"{key:<20}\t{qid}\t{value:.4f}")
    print(f"{'num_q':<20}\tall\t{result.num_queries}")
    for key, value in result.items():
        print(f"{key:<20}\tall\t{value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
