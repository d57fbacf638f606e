"""The training loop: groups -> scores (G, n) -> LCE/BCE -> AdamW, one process or many (torchrun + DDP).

Plain PyTorch, top to bottom: `train(config, examples)` sets up the process group (when launched by torchrun), the
model, optimizer and schedule, restores a checkpoint with `resume`, then runs optimizer steps. Each step consumes one
global batch of `batch_size x world_size x grad_accum` groups (`data.GroupSchedule`), so the data position is the
step itself and a resumed run sees exactly the groups the unbroken one would have seen.

Checkpoints are reranker directories (`Reranker.save_pretrained`) plus `trainer_state.pt` (optimizer, schedule,
scaler, RNG states of every rank, data position, step), written to a temporary folder and renamed into place. The
final `model/` folder holds the reranker and `training_summary.json` (step, data fingerprint, config): no optimizer
state, which belongs to checkpoints, not to the model users ship.

The loop's parts live in modules of their own (their names stay importable from here): `processes` (torchrun),
`trainable` (the model: fp32 weights, LoRA, gradient checkpointing), `optimization` (AdamW, the schedule, the compute
dtype), `inputs` (groups -> padded or packed model inputs) and `run_folder` (the output folder and its checkpoints).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pyserini_ssm import stopping
from pyserini_ssm.errors import UserError
from pyserini_ssm.training.config import DTYPES, TrainConfig  # noqa: F401  (also imported from here)
from pyserini_ssm.training.data import GroupSchedule, TrainingExample, fingerprint
from pyserini_ssm.training.inputs import PairBatcher, check_packing
from pyserini_ssm.training.losses import get_loss
from pyserini_ssm.training.optimization import (
    autocast_for, build_optimizer, fused_adamw_applies, linear_schedule, resolve_dtype,
)
from pyserini_ssm.training.processes import (
    Distributed, broadcast_from_main, setup_distributed, stop_requested_on_any_rank,
)
from pyserini_ssm.training.run_folder import (
    CHECKPOINT_PREFIX, FINAL_DIR, FINAL_SUMMARY, LOG_FILE, LOSS_PLOT, TRAINER_STATE, create_output,
    find_latest_checkpoint, holds_nothing, load_trainer_state, plot_loss_curve, prepare_output,
    remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state, trim_log,
)
from pyserini_ssm.training.trainable import (
    apply_lora, check_trainable, disable_dropout, enable_gradient_checkpointing, load_reranker, merged_lora_copy,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int  # optimizer steps done so far (over all sessions)
    total_steps: int  # steps of the whole schedule
    losses: list[float] = field(default_factory=list)  # this session's per-step global mean losses
    final_directory: Path | None = None  # the final reranker directory (None when stopped early)
    last_checkpoint: Path | None = None


# ----------------------------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig, examples: Sequence[TrainingExample] | Callable[[], Sequence[TrainingExample]],
          dist_info: Distributed | None = None) -> TrainResult:
    """Fine-tune `config.model` on `examples` (or on what the callable returns, run on rank 0 and broadcast)."""
    import torch
    import torch.distributed as dist

    config.validate()
    dist_info = dist_info or setup_distributed(config.device)
    device = dist_info.device
    output = Path(config.output)
    # Rank 0 alone looks at the folder: another rank looking later would find rank 0's fresh log and stop. The
    # folder is checked before the data are read (mining takes minutes), and created only once the run starts.
    resume_from = broadcast_from_main(dist_info, lambda: prepare_output(output, config.resume, True))
    if callable(examples):
        examples = broadcast_from_main(dist_info, examples)
    examples = list(examples)
    if not examples:
        raise UserError("no training examples")

    state: dict | None = None
    if resume_from is not None:
        state = load_trainer_state(resume_from)
        if state["fingerprint"] != fingerprint(examples):
            raise UserError(f"the training data differs from the data of the checkpoint {resume_from}; "
                            "resume with the same data (and --seed), or train into a new --output")
        if state["world_size"] != dist_info.world_size or state["config"]["grad_accum"] != config.grad_accum \
                or state["config"]["batch_size"] != config.batch_size:
            raise UserError(f"{resume_from} was trained with {state['world_size']} process(es), batch size "
                            f"{state['config']['batch_size']} and --grad-accum {state['config']['grad_accum']}; "
                            "resume with the same values so that the data order is the same")
        if "optimizer" not in state:  # the final model/: a finished run
            total = config.max_steps or state["total_steps"]
            if state["step"] >= total:
                return TrainResult(steps=state["step"], total_steps=state["total_steps"], final_directory=resume_from,
                                   last_checkpoint=resume_from)
            raise UserError(f"{resume_from} is the end of a finished run of {state['step']} steps and keeps no "
                            f"optimizer state (only {CHECKPOINT_PREFIX}N folders do): train further from it with "
                            f"--model {resume_from} into a new --output")

    # Until the first step the folder holds nothing of ours: a failed start (bad model, bad data) removes it.
    created = create_output(output) if dist_info.is_main else False
    try:
        return _train(config, examples, dist_info, output, resume_from, state)
    except BaseException:
        if created and output.is_dir() and holds_nothing(output):
            shutil.rmtree(output, ignore_errors=True)
        raise


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)



def _train(config: TrainConfig, examples: Sequence[TrainingExample], dist_info: Distributed, output: Path,
           resume_from: Path | None, state: dict | None) -> TrainResult:
    import torch
    import torch.distributed as dist

    device = dist_info.device
    _seed_everything(config.seed)  # the same on every rank: a fresh head starts identical everywhere
    lora = config.lora
    if state is not None and not lora:
        reranker = load_reranker(str(resume_from), config, device)
    else:
        reranker = load_reranker(config.model, config, device)
    scoring_model = reranker.model
    if config.disable_dropout:
        disable_dropout(scoring_model)
    if lora:
        apply_lora(scoring_model, config)
        if state is not None:
            missing = scoring_model.load_state_dict(state["trainable_state"], strict=False)
            if missing.unexpected_keys:
                raise UserError(f"{resume_from}: LoRA state does not fit this model ({missing.unexpected_keys[:3]})")
    if config.grad_checkpointing:
        enable_gradient_checkpointing(scoring_model)
    scoring_model.to(device)
    scoring_model.train()
    trainable = [p for p in scoring_model.parameters() if p.requires_grad]
    if not trainable:
        raise UserError(f"model {config.model!r} has no trainable parameters")

    schedule = GroupSchedule(examples, group_size=config.group_size, batch_size=config.batch_size, seed=config.seed,
                             world_size=dist_info.world_size, rank=dist_info.rank, accumulation=config.grad_accum)
    total_steps = config.max_steps or config.epochs * schedule.steps_per_epoch
    warmup_steps = config.warmup_steps if config.warmup_steps is not None else int(config.warmup_ratio * total_steps)
    optimizer = build_optimizer(scoring_model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(total_steps, warmup_steps))
    dtype = resolve_dtype(config.dtype, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    loss_fn = get_loss(config.loss)

    start_step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        set_rng_state(state["rng"][dist_info.rank])
        if dist_info.is_main:
            trim_log(output / LOG_FILE, start_step)
            logger.info("resumed from %s at step %d of %d", resume_from, start_step, total_steps)
    else:
        _seed_everything(config.seed + dist_info.rank)  # dropout differs between ranks, as between micro-batches

    model = scoring_model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(scoring_model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)
    batcher = PairBatcher(reranker, config, device)
    stop_step = total_steps if config.stop_after_steps is None else min(total_steps, config.stop_after_steps)

    def trainer_state(step: int) -> dict:
        rng_states = [rng_state()]
        if dist_info.enabled:
            gathered: list[Any] = [None] * dist_info.world_size
            dist.all_gather_object(gathered, rng_states[0])
            rng_states = gathered
        position = schedule.position(step)
        saved = {"step": step, "total_steps": total_steps, "epoch": position.epoch, "data_offset": position.offset,
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_states, "world_size": dist_info.world_size,
                 "fingerprint": fingerprint(examples), "num_examples": len(examples), "config": asdict(config)}
        if lora:  # the merged checkpoint cannot resume LoRA: keep adapters and head apart
            saved["trainable_state"] = {name: tensor for name, tensor in scoring_model.state_dict().items()
                                        if "lora_" in name or name.startswith("head.")}
        return saved

    def checkpoint(step: int, directory: Path) -> None:
        with stopping.deferred():  # a SIGTERM while writing waits for the checkpoint to be complete
            saved = trainer_state(step)  # every rank takes part in gathering RNG states
            if dist_info.is_main:
                save_checkpoint(directory, reranker, saved, lora=lora, final=directory.name == FINAL_DIR)
            if dist_info.enabled:
                dist.barrier()

    progress = None
    if dist_info.is_main and config.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    log_handle = open(output / LOG_FILE, "a", encoding="utf-8") if dist_info.is_main else None
    result = TrainResult(steps=start_step, total_steps=total_steps)
    pairs_per_step = schedule.global_batch * config.group_size
    session_start = time.perf_counter()
    try:
        for step in range(start_step, stop_step):
            with stopping.deferred():  # a SIGTERM waits for the end of the step (see stopping.py)
                step_start = time.perf_counter()
                micro_batches = schedule.micro_batches(step)
                step_loss = torch.zeros((), device=device)
                for micro, groups in enumerate(micro_batches):
                    inputs = batcher(groups)
                    last = micro == len(micro_batches) - 1
                    sync = model.no_sync() if dist_info.enabled and not last else contextlib.nullcontext()
                    with sync:
                        with autocast_for(device, dtype):
                            scores = model(inputs).view(len(groups), config.group_size)  # (G, n)
                        loss = loss_fn(scores) / len(micro_batches)
                        scaler.scale(loss).backward()
                    step_loss += loss.detach()
                if config.max_grad_norm > 0:
                    scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
                else:
                    grad_norm = float("nan")
                scaler.step(optimizer)
                scaler.update()
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if dist_info.enabled:
                    dist.all_reduce(step_loss, op=dist.ReduceOp.SUM)
                    step_loss /= dist_info.world_size
                loss_value = float(step_loss)
                if not math.isfinite(loss_value):
                    raise RuntimeError(f"training loss became {loss_value} at step {step + 1}; lower --lr or use "
                                       "bf16")
                result.losses.append(loss_value)
                done = step + 1
                result.steps = done
                elapsed = time.perf_counter() - step_start
                if dist_info.is_main:
                    pairs_per_s = pairs_per_step / elapsed if elapsed > 0 else float("inf")
                    if done % config.log_every == 0 or done == stop_step:
                        record = {"step": done, "epoch": schedule.position(step).epoch, "loss": round(loss_value, 6),
                                  "lr": lr, "grad_norm": round(grad_norm, 6), "pairs_per_s": round(pairs_per_s, 2),
                                  "elapsed_s": round(time.perf_counter() - session_start, 3)}
                        log_handle.write(json.dumps(record) + "\n")
                        log_handle.flush()
                    if progress is not None:
                        progress.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", pairs_s=f"{pairs_per_s:.1f}")
                        progress.update(1)
                if config.save_every and done % config.save_every == 0 and done < total_steps:
                    result.last_checkpoint = output / f"{CHECKPOINT_PREFIX}{done}"
                    checkpoint(done, result.last_checkpoint)
            if done < stop_step and stop_requested_on_any_rank(dist_info):  # a safe point: keep the step done, and stop
                if result.last_checkpoint is None or result.last_checkpoint.name != f"{CHECKPOINT_PREFIX}{done}":
                    result.last_checkpoint = output / f"{CHECKPOINT_PREFIX}{done}"
                    checkpoint(done, result.last_checkpoint)
                logger.warning("SIGTERM: stopped after step %d with checkpoint %s (continue with --resume)", done,
                               result.last_checkpoint)
                raise stopping.Terminated()
        if result.steps == total_steps:
            result.final_directory = output / FINAL_DIR
            checkpoint(total_steps, result.final_directory)
            result.last_checkpoint = result.final_directory
            if dist_info.is_main:
                log_handle.flush()
                plot_loss_curve(output / LOG_FILE, output / LOSS_PLOT)
        elif result.last_checkpoint is None or result.last_checkpoint.name != f"{CHECKPOINT_PREFIX}{result.steps}":
            result.last_checkpoint = output / f"{CHECKPOINT_PREFIX}{result.steps}"
            checkpoint(result.steps, result.last_checkpoint)  # stopped early: keep where we are
    finally:
        if progress is not None:
            progress.close()
        if log_handle is not None:
            log_handle.close()
    return result


# The names of the loop's parts, importable from here as before they had modules of their own.
__all__ = [
    "TrainConfig", "TrainResult", "train", "DTYPES",
    "Distributed", "setup_distributed", "broadcast_from_main",
    "load_reranker", "check_trainable", "enable_gradient_checkpointing", "apply_lora", "merged_lora_copy",
    "build_optimizer", "fused_adamw_applies", "linear_schedule", "resolve_dtype",
    "check_packing", "PairBatcher",
    "TRAINER_STATE", "FINAL_SUMMARY", "LOG_FILE", "LOSS_PLOT", "FINAL_DIR", "CHECKPOINT_PREFIX",
    "find_latest_checkpoint", "load_trainer_state", "remove_stale_temporaries", "save_checkpoint", "plot_loss_curve",
    "prepare_output",
]
