"""`python -m pyserini_ssm.train`: fine-tune a reranker with LCE over BM25 hard negatives.

One process:       python -m pyserini_ssm.train --model minilm-l6 --train-jsonl train.jsonl --output runs/ft
Several processes: torchrun --nproc-per-node 4 -m pyserini_ssm.train ... (DDP: NCCL on GPUs, gloo on CPU)
See docs/TRAINING.md for data sources, defaults and resume semantics.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from pyserini_ssm.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    """The flags, defaults and help of `training.data.DataSource` and `training.config.TrainConfig` (cli_config)."""
    from pyserini_ssm.cli_config import add_options
    from pyserini_ssm.training.config import TrainConfig
    from pyserini_ssm.training.data import DataSource

    parser = argparse.ArgumentParser(prog="python -m pyserini_ssm.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("training data (one source)")
    add_options(data, DataSource, ["train_jsonl", "beir", "beir_split", "queries", "qrels", "index",
                                   "negatives_depth", "bm25_k1", "bm25_b", "threads"])
    data.add_argument("--write-jsonl", metavar="FILE", help="also write the resolved examples (texts, mined "
                      "negatives) as a training JSONL, reusable without Java")
    data.add_argument("--mine-only", action="store_true", help="stop after --write-jsonl (no model needed)")

    model = parser.add_argument_group("model")
    # --model and --output are needed to train, not to --mine-only: main checks them.
    add_options(model, TrainConfig, ["model", "output"], required=False)
    add_options(model, TrainConfig, ["max_length", "max_query_length", "max_doc_length", "lora", "lora_rank",
                                     "lora_alpha", "lora_dropout", "pack", "grad_checkpointing", "device", "dtype"])

    optim = parser.add_argument_group("optimisation")
    add_options(optim, TrainConfig, ["group_size", "loss", "batch_size", "grad_accum", "lr", "weight_decay"])
    add_options(optim.add_mutually_exclusive_group(), TrainConfig, ["warmup_ratio", "warmup_steps"])
    add_options(optim.add_mutually_exclusive_group(), TrainConfig, ["epochs", "max_steps"])
    add_options(optim, TrainConfig, ["max_grad_norm", "seed"])

    run = parser.add_argument_group("checkpoints and logging")
    add_options(run, TrainConfig, ["save_every", "resume", "stop_after_steps", "log_every", "disable_dropout",
                                   "progress"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pyserini_ssm.errors import UserError
    from pyserini_ssm.first_stage.lucene_documents import LuceneDocuments  # no JVM until the index is read
    from pyserini_ssm.training.data import DataSource, load_examples, write_training_jsonl

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pyserini_ssm.cli_config import config_values

    source = DataSource(**config_values(args, DataSource))
    source.validate()
    if args.mine_only:
        if not args.write_jsonl:
            raise UserError("--mine-only needs --write-jsonl FILE")
        count = write_training_jsonl(load_examples(source, LuceneDocuments), args.write_jsonl)
        print(f"wrote {count} training queries to {args.write_jsonl}")
        return 0
    if not args.model or not args.output:
        raise UserError("--model and --output are required to train")

    from pyserini_ssm.training.config import TrainConfig
    from pyserini_ssm.training.loop import setup_distributed, train

    config = TrainConfig(**config_values(args, TrainConfig))
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
