"""`TrainConfig`: everything that shapes a training run, each setting's one default and help text (the fields are
`python -m pyserini_ssm.train`'s flags, built by `cli_config`), and its cheap checks.

Stdlib only (its `validate` imports the losses' names lazily): `train --help` imports it and must stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyserini_ssm.cli_config import option
from pyserini_ssm.errors import UserError

DTYPES = ("auto", "bf16", "fp16", "fp32")
LOSSES = ("lce", "bce")


@dataclass
class TrainConfig:
    """Everything that shapes a training run (the CLI's flags map one to one onto these fields)."""

    model: str = field(metadata=option("registry name or model/reranker directory to start from"))
    output: str = field(metadata=option("folder for checkpoints, the final model (OUTPUT/model), train_log.jsonl and "
                                        "loss_curve.png"))
    group_size: int = field(default=8, metadata=option("1 positive + (n - 1) negatives per group"))
    loss: str = field(default="lce", metadata=option("lce: cross-entropy over each group; bce: pointwise",
                                                     choices=LOSSES))
    batch_size: int = field(default=8, metadata=option("groups per micro-batch per process"))
    grad_accum: int = field(default=1, metadata=option("micro-batches per optimizer step"))
    lr: float = field(default=2e-5, metadata=option("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.01, metadata=option(
        "AdamW weight decay, not applied to biases and norm weights (1-d parameters)"))
    warmup_ratio: float = field(default=0.1, metadata=option(
        "fraction of the steps spent warming up linearly from 0"))
    warmup_steps: int | None = field(default=None, metadata=option("warm-up steps (overrides --warmup-ratio)"))
    epochs: int = field(default=1, metadata=option("passes over the training groups"))
    max_steps: int | None = field(default=None, metadata=option("optimizer steps (overrides --epochs)"))
    save_every: int = field(default=0, metadata=option("checkpoint every N optimizer steps (0: only at the end)"))
    resume: bool = field(default=False, metadata=option("continue from the latest checkpoint in --output"))
    dtype: str = field(default="auto", metadata=option(
        "auto: bf16 autocast on CUDA (fp32 master weights), fp32 on CPU; fp16 uses a GradScaler", choices=DTYPES))
    grad_checkpointing: bool = field(default=False, metadata=option("recompute activations in backward"))
    lora: bool = field(default=False, metadata=option(
        "train LoRA adapters (peft) instead of all weights; the saved checkpoints have them merged"))
    lora_rank: int = field(default=16, metadata=option("LoRA rank"))
    lora_alpha: int = field(default=32, metadata=option("LoRA alpha"))
    lora_dropout: float = field(default=0.05, metadata=option("LoRA dropout"))
    max_length: int | None = field(default=None, metadata=option("total tokens per pair (default: the model's)"))
    max_query_length: int | None = field(default=None, metadata=option("query tokens kept (default: all)"))
    max_doc_length: int | None = field(default=None, metadata=option(
        "document tokens kept before the --max-length cut (default: all that fit)"))
    max_grad_norm: float = field(default=1.0, metadata=option("gradient clipping (0: off)"))
    seed: int = field(default=42, metadata=option("random seed"))
    log_every: int = field(default=1, metadata=option("optimizer steps between train_log.jsonl lines"))
    stop_after_steps: int | None = field(default=None, metadata=option(
        "stop with a checkpoint after N steps (the schedule still spans the whole run; continue with --resume), "
        "e.g. to fit a job time limit"))
    device: str | None = field(default=None, metadata=option("default: cuda:LOCAL_RANK when available, else cpu"))
    disable_dropout: bool = field(default=False, metadata=option(
        "dropout probability 0 everywhere (deterministic comparisons)"))
    progress: bool = field(default=True, metadata=option("no progress bar", flag="--no-progress"))  # tqdm, rank 0
    pack: bool = field(default=False, metadata=option(
        "pack each micro-batch into one row, no padding: Mamba-2 on CUDA (seq_idx), transformers on CUDA in "
        "bf16/fp16 (varlen attention)"))

    def validate(self) -> None:
        from pyserini_ssm.training.losses import get_loss

        if self.group_size < 1 or (self.loss == "lce" and self.group_size < 2):
            raise UserError(f"--group-size must be at least 2 for LCE (got {self.group_size})")
        get_loss(self.loss)
        if self.dtype not in DTYPES:
            raise UserError(f"unknown --dtype {self.dtype!r}; choose one of: {', '.join(DTYPES)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max-steps must be at least 1, got {self.max_steps}")
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.save_every < 0:
            raise UserError(f"--save-every must be 0 or more, got {self.save_every}")
