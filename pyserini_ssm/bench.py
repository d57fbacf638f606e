"""`python -m pyserini_ssm.bench`: inference and training throughput and memory of rerankers (random weights at full
size, nothing downloaded), with the naive padded-random baseline and sentence-transformers' CrossEncoder measured in
the same run. Prints a table; writes `bench.jsonl` (one record per measurement, with machine info, the attention
kernel that ran), `throughput.png` and, with fixed lengths, `efficiency_throughput.png` and `efficiency_memory.png`
into `--output`. See docs/BENCHMARKS.md.

    python -m pyserini_ssm.bench --models mamba2-780m,mamba1-790m,llama-780m --device cuda --dtype bf16 \
        --inference --training --lengths msmarco,128,512,1024,2048 --pairs 4096 \
        --tokenizer tests/data/smollm2-tokenizer \
        --candidates ../shared/data/msmarco-passage-dl19-bm25-top100/retrieve_results_dl19.bm25.top100.json.gz \
        --output bench-out/
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyserini_ssm.cli import run_main


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.bench",
        description="Reranker speed: pairs/s, tokens/s and peak memory of inference (padded-random baseline, "
                    "length-sorted, packed, Reranker.predict; CrossEncoder.predict for encoders) and training.",
    )
    parser.add_argument("--models", required=True,
                        help="comma-separated registry names (e.g. mamba2-780m,mamba1-790m,minilm-l6), the bench's "
                             "llama-780m (a Llama-style decoder the size of mamba2-780m), or checkpoint folders "
                             "(real weights)")
    parser.add_argument("--scale", choices=("tiny", "full"), default="full",
                        help="full: the real architecture (default); tiny: 2 small layers (tests)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32", "fp8"), default=None,
                        help="inference dtype (default bf16 on CUDA, fp32 on CPU); fp8: bf16 weights with FP8 Linear "
                             "layers (CUDA, compute capability >= 8.9; inference only); training is always fp32 "
                             "master weights with bf16 autocast on CUDA")
    parser.add_argument("--inference", action="store_true", help="measure inference")
    parser.add_argument("--training", action="store_true", help="measure LCE training steps (padded and packed)")
    parser.add_argument("--no-crossencoder", action="store_true",
                        help="skip sentence-transformers CrossEncoder.predict for encoder models")
    parser.add_argument("--lengths", default="msmarco,128,512,1024,2048",
                        help="comma-separated: msmarco (real MS MARCO lengths) and/or fixed token lengths "
                             "(default: msmarco,128,512,1024,2048)")
    parser.add_argument("--pairs", type=int, default=4096, help="pairs with MS MARCO lengths (default 4096)")
    parser.add_argument("--fixed-tokens", type=int, default=262144,
                        help="tokens per fixed-length measurement: pairs = this / length, at least 16 "
                             "(default 262144)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="pairs per padded batch (default 256; halved on CUDA out-of-memory at fixed lengths)")
    parser.add_argument("--token-budget", type=int, default=32768, help="tokens per packed row (default 32768)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up; median (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the repeats (default 1)")
    parser.add_argument("--max-length", type=int, default=512,
                        help="max pair length (default 512; fixed lengths above it are skipped)")
    parser.add_argument("--tokenizer", default=None,
                        help="local tokenizer folder for real MS MARCO lengths (e.g. tests/data/smollm2-tokenizer); "
                             "default: a synthetic word-level tokenizer")
    parser.add_argument("--candidates", default=None,
                        help="candidates JSON (e.g. the DL19 BM25 top-100 file) tokenized for real MS MARCO lengths; "
                             "without it (or without --tokenizer) lengths are log-normal with mean 89 tokens")
    parser.add_argument("--crossencoder-batch-size", type=int, default=32,
                        help="CrossEncoder.predict batch size (default 32, its own default)")
    parser.add_argument("--train-groups", type=int, default=16, help="LCE groups per training step (default 16)")
    parser.add_argument("--group-size", type=int, default=8, help="pairs per LCE group (default 8)")
    parser.add_argument("--train-steps", type=int, default=10,
                        help="timed training steps after the warm-up steps (2 at MS MARCO lengths, 1 at fixed ones)")
    parser.add_argument("--train-tokens", type=int, default=65536,
                        help="fixed-length training: at most this many tokens per step (pairs per step = min("
                             "train-groups x group-size, this / length), halved on out-of-memory; default 65536)")
    parser.add_argument("--backend", choices=("auto", "torch", "cuda"), default="auto",
                        help="Mamba backend (default auto: mamba-ssm kernels on CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="folder for bench.jsonl and throughput.png")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.benchmarking import BenchConfig, format_table, run_bench
    from pyserini_ssm.errors import UserError

    if not args.inference and not args.training:
        raise UserError("nothing to measure: give --inference and/or --training")
    config = BenchConfig(
        models=_names(args.models), scale=args.scale, device=args.device, dtype=args.dtype,
        inference=args.inference, training=args.training, crossencoder=not args.no_crossencoder,
        lengths=_names(args.lengths), pairs=args.pairs, batch_size=args.batch_size, token_budget=args.token_budget,
        fixed_tokens=args.fixed_tokens, repeats=args.repeats, warmup=args.warmup, tokenizer=args.tokenizer, candidates=args.candidates,
        max_length=args.max_length, crossencoder_batch_size=args.crossencoder_batch_size,
        train_groups=args.train_groups, group_size=args.group_size, train_steps=args.train_steps,
        train_tokens=args.train_tokens,
        backend=args.backend, seed=args.seed, output=args.output)
    records, _ = run_bench(config)
    print()
    print(format_table(records))
    if args.output:
        print(f"\nwrote {args.output}/bench.jsonl and {args.output}/throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
