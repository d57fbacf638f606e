"""`python -m pyserini_ssm.train`: fine-tune a reranker with LCE over BM25 hard negatives.

One process:       python -m pyserini_ssm.train --model minilm-l6 --train-jsonl train.jsonl --output runs/ft
Several processes: torchrun --nproc-per-node 4 -m pyserini_ssm.train ... (DDP: NCCL on GPUs, gloo on CPU)
See docs/TRAINING.md for data sources, defaults and resume semantics.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from typing import Sequence

from pyserini_ssm.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyserini_ssm.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("training data (one source)")
    data.add_argument("--train-jsonl", help='JSON lines {"query", "positives": [...], "negatives": [...]} (texts; '
                      "docids when --index is given; lines without negatives are mined with --index)")
    data.add_argument("--beir", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); negatives mined "
                      "from --index")
    data.add_argument("--beir-split", default="train", help="qrels split of the BEIR folder (default: train)")
    data.add_argument("--queries", help="MS MARCO style: topics file or name (qid<TAB>query)")
    data.add_argument("--qrels", help="MS MARCO style: qrels file or name; positives are relevance > 0")
    data.add_argument("--index", help="Lucene index: document texts for docids and BM25 negative mining (Java)")
    data.add_argument("--negatives-depth", type=int, default=100, help="BM25 top-k mined per query (default 100)")
    data.add_argument("--bm25-k1", type=float, default=0.9)
    data.add_argument("--bm25-b", type=float, default=0.4)
    data.add_argument("--threads", type=int, default=1, help="BM25 search threads when mining")
    data.add_argument("--write-jsonl", metavar="FILE", help="also write the resolved examples (texts, mined "
                      "negatives) as a training JSONL, reusable without Java")
    data.add_argument("--mine-only", action="store_true", help="stop after --write-jsonl (no model needed)")

    model = parser.add_argument_group("model")
    model.add_argument("--model", help="registry name or model/reranker directory to start from")
    model.add_argument("--output", help="folder for checkpoints, the final model (OUTPUT/model), train_log.jsonl "
                       "and loss_curve.png")
    model.add_argument("--max-length", type=int, help="tokens per pair (default: the model's)")
    model.add_argument("--max-query-length", type=int, help="query tokens kept (default: all)")
    model.add_argument("--max-doc-length", type=int, help="document tokens kept (default: all that fit)")
    model.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of all weights; the "
                       "saved checkpoints have them merged")
    model.add_argument("--lora-rank", type=int, default=16)
    model.add_argument("--lora-alpha", type=int, default=32)
    model.add_argument("--lora-dropout", type=float, default=0.05)
    model.add_argument("--pack", action="store_true", help="pack each micro-batch into one row, no padding: Mamba-2 "
                       "on CUDA (seq_idx), transformers on CUDA in bf16/fp16 (varlen attention)")
    model.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    model.add_argument("--device", help="default: cuda:LOCAL_RANK when available, else cpu")
    model.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                       help="auto: bf16 autocast on CUDA (fp32 master weights), fp32 on CPU; fp16 uses a GradScaler")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--group-size", type=int, default=8, help="1 positive + n-1 negatives per group (default 8)")
    optim.add_argument("--loss", default="lce", choices=["lce", "bce"],
                       help="lce: cross-entropy over each group (default); bce: pointwise")
    optim.add_argument("--batch-size", type=int, default=8, help="groups per micro-batch per process (default 8)")
    optim.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    optim.add_argument("--lr", type=float, default=2e-5)
    optim.add_argument("--weight-decay", type=float, default=0.01)
    warmup = optim.add_mutually_exclusive_group()
    warmup.add_argument("--warmup-ratio", type=float, default=0.1, help="default 0.1 of the steps")
    warmup.add_argument("--warmup-steps", type=int)
    length = optim.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=1)
    length.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    optim.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    optim.add_argument("--seed", type=int, default=42)

    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: only the end)")
    run.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output")
    run.add_argument("--stop-after-steps", type=int, help="stop with a checkpoint after N steps (the schedule still "
                     "spans the whole run; continue with --resume), e.g. to fit a job time limit")
    run.add_argument("--log-every", type=int, default=1, help="steps between train_log.jsonl lines")
    run.add_argument("--disable-dropout", action="store_true", help="dropout probability 0 everywhere")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.errors import UserError
    from pyserini_ssm.first_stage.lucene_documents import LuceneDocuments  # no JVM until the index is read
    from pyserini_ssm.training.data import DataSource, load_examples, write_training_jsonl

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    source = DataSource(**{f.name: getattr(args, f.name) for f in fields(DataSource)})
    source.validate()
    if args.mine_only:
        if not args.write_jsonl:
            raise UserError("--mine-only needs --write-jsonl FILE")
        count = write_training_jsonl(load_examples(source, LuceneDocuments), args.write_jsonl)
        print(f"wrote {count} training queries to {args.write_jsonl}")
        return 0
    if not args.model or not args.output:
        raise UserError("--model and --output are required to train")

    from pyserini_ssm.training.loop import TrainConfig, setup_distributed, train

    values = vars(args) | {"progress": not args.no_progress}
    config = TrainConfig(**{f.name: values[f.name] for f in fields(TrainConfig) if f.name in values})
    config.validate()
    dist_info = setup_distributed(config.device)

    def examples():
        loaded = load_examples(source, LuceneDocuments)
        if args.write_jsonl:
            write_training_jsonl(loaded, args.write_jsonl)
        return loaded

    # Mining needs Java: only rank 0 does it and hands the examples to the others.
    try:
        result = train(config, examples if source.needs_java or dist_info.world_size == 1 else load_examples(source),
                       dist_info)
    finally:
        if dist_info.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if dist_info.is_main:
        where = result.final_directory or result.last_checkpoint
        print(f"trained {result.steps}/{result.total_steps} steps; last loss {result.losses[-1]:.4f}; "
              f"model in {where}" if result.losses else f"nothing to do: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
