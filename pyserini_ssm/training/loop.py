"""The training loop: groups -> scores (G, n) -> LCE/BCE -> AdamW, one process or many (torchrun + DDP).

Plain PyTorch, top to bottom: `train(config, examples)` sets up the process group (when launched by torchrun), the
model, optimizer and schedule, restores a checkpoint with `resume`, then runs optimizer steps. Each step consumes one
global batch of `batch_size x world_size x grad_accum` groups (`data.GroupSchedule`), so the data position is the
step itself and a resumed run sees exactly the groups the unbroken one would have seen.

Checkpoints are reranker directories (`Reranker.save_pretrained`) plus `trainer_state.pt` (optimizer, schedule,
scaler, RNG states of every rank, data position, step), written to a temporary folder and renamed into place. The
final `model/` folder holds the reranker and `training_summary.json` (step, data fingerprint, config): no optimizer
state, which belongs to checkpoints, not to the model users ship.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pyserini_ssm import stopping
from pyserini_ssm.errors import UserError
from pyserini_ssm.files import atomic_output, check_output_folder, writing
from pyserini_ssm.training.config import TrainConfig  # noqa: F401  (also imported from here)
from pyserini_ssm.training.data import GroupSchedule, TrainingExample, TrainingGroup, fingerprint
from pyserini_ssm.training.losses import get_loss

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
# The final model/ folder is what users ship: no optimizer state (that is in checkpoint-N/), only this summary.
FINAL_SUMMARY = "training_summary.json"
_SUMMARY_KEYS = ("step", "total_steps", "epoch", "world_size", "fingerprint", "num_examples", "config")
LOG_FILE = "train_log.jsonl"
LOSS_PLOT = "loss_curve.png"
FINAL_DIR = "model"
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainResult:
    steps: int  # optimizer steps done so far (over all sessions)
    total_steps: int  # steps of the whole schedule
    losses: list[float] = field(default_factory=list)  # this session's per-step global mean losses
    final_directory: Path | None = None  # the final reranker directory (None when stopped early)
    last_checkpoint: Path | None = None


# ----------------------------------------------------------------------------------------------------------------
# Processes


@dataclass
class Distributed:
    world_size: int
    rank: int
    local_rank: int
    device: Any  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: str | None = None) -> Distributed:
    """One process, or the torchrun process group (NCCL on GPUs, gloo on CPU) from WORLD_SIZE/RANK/LOCAL_RANK."""
    import torch
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if device is None or device == "cuda":
        torch_device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    else:
        torch_device = torch.device(device)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch_device.type == "cuda" else "gloo")
    return Distributed(world_size, rank, local_rank, torch_device)


def broadcast_from_main(dist_info: Distributed, make: Callable[[], Any]) -> Any:
    """Run `make` on rank 0 only and hand its result (or its UserError) to every rank."""
    if not dist_info.enabled:
        return make()
    import torch.distributed as dist

    payload: list[Any] = [None]
    if dist_info.is_main:
        try:
            payload = [("ok", make())]
        except UserError as error:
            payload = [("error", str(error))]
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise UserError(value)
    return value


# ----------------------------------------------------------------------------------------------------------------
# Model


def _head_parameters(scoring_model) -> list:
    head = getattr(scoring_model, "head", None)
    return [] if head is None else list(head.parameters())


def load_reranker(model: str, config: TrainConfig, device):
    """The reranker to train, its weights in fp32 (master weights; autocast gives bf16/fp16 compute)."""
    import torch

    from pyserini_ssm.models.reranker import Reranker

    with warnings.catch_warnings():  # "untrained head" is the point of training: no need to warn about it
        warnings.filterwarnings("ignore", message=".*no trained score head.*")
        reranker = Reranker.from_pretrained(model, device=device, dtype=torch.float32, max_length=config.max_length)
    check_trainable(reranker, model)
    return reranker


def check_trainable(reranker, name: str) -> None:
    """A UserError unless the reranker has a score head with parameters (what LCE trains on top of the backbone)."""
    if not _head_parameters(reranker.model):
        raise UserError(f"model {name!r} has no trainable score head (its scoring module has no `head` layer); "
                        "start from a backbone or a reranker directory written by pyserini_ssm")


def _backbone(scoring_model):
    """The backbone module under the head (the transformers/Mamba model)."""
    for name in ("backbone", "encoder", "model", "base_model"):
        module = getattr(scoring_model, name, None)
        if module is not None and hasattr(module, "parameters") and module is not scoring_model:
            return module, name
    raise UserError("cannot find the backbone of this model (expected a `backbone` attribute)")


def enable_gradient_checkpointing(scoring_model) -> bool:
    """Turn on the backbone's gradient checkpointing when it offers it; False (and a warning) when it does not."""
    for module in scoring_model.modules():
        # transformers >= 5 renamed it activation_checkpointing_enable (the old name warns)
        enable = getattr(module, "activation_checkpointing_enable", None) or getattr(
            module, "gradient_checkpointing_enable", None)
        if enable is None:
            continue
        if getattr(module, "supports_gradient_checkpointing", True) is False:
            break
        try:  # non-reentrant: works with DDP and with inputs that need no grad
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        except TypeError:
            enable()
        return True
    logger.warning("gradient checkpointing requested but this backbone does not support it; training without")
    return False


def apply_lora(scoring_model, config: TrainConfig) -> None:
    """LoRA adapters (peft) on every linear layer of the backbone; the head stays fully trainable."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise UserError("--lora needs the peft package: pip install peft") from None
    backbone, _ = _backbone(scoring_model)
    lora_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules="all-linear", bias="none")
    inject_adapter_in_model(lora_config, backbone)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad = "lora_" in name
    for parameter in _head_parameters(scoring_model):
        parameter.requires_grad = True


def merged_lora_copy(reranker):
    """A copy of the reranker with every LoRA delta merged into its base layer and the adapters removed."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(reranker)
    modules = dict(merged.model.named_modules())
    for name, module in list(modules.items()):
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else merged.model, child, module.base_layer)
    return merged


def _disable_dropout(module) -> None:
    import torch

    for child in module.modules():
        if isinstance(child, torch.nn.Dropout):
            child.p = 0.0


def build_optimizer(scoring_model, config: TrainConfig):
    """AdamW; weight decay on matrices only (biases and norm weights are 1-d and are not decayed)."""
    import torch

    decay, no_decay = [], []
    for parameter in scoring_model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused_adamw_applies(
        decay + no_decay))


def fused_adamw_applies(parameters) -> bool:
    """Whether torch's fused AdamW (one kernel for every tensor) can update these: all CUDA floating point."""
    parameters = list(parameters)
    return bool(parameters) and all(p.is_cuda and p.is_floating_point() for p in parameters)


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """lr factor: 0 -> 1 linearly over `warmup_steps`, then 1 -> 0 linearly at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def check_packing(reranker, device, dtype: str) -> str:
    """The packing mode of `--pack` ("seq_idx" or "varlen"), or a UserError saying why this model cannot pack
    here. Transformers pack through varlen attention: on CUDA in bf16/fp16 autocast, on CPU through the
    per-sequence reference (slow; it exists for tests)."""
    import torch

    from pyserini_ssm.models.scoring import packing_support

    device = torch.device(device)
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
        resolve_dtype(dtype, device))
    mode, why = packing_support(reranker.model, device, compute)
    if mode is None:
        raise UserError(f"--pack: {reranker.spec.name} cannot pack on {device}: {why}")
    if why:
        logger.warning("--pack: %s", why)
    return mode


class PairBatcher:
    """Groups -> padded model inputs, with optional per-field token limits (cut on token boundaries)."""

    def __init__(self, reranker, config: TrainConfig, device):
        self.encoder = reranker.encoder
        self.tokenizer = reranker.tokenizer
        self.max_query_length = config.max_query_length
        self.max_doc_length = config.max_doc_length
        self.device = device
        self.pack = config.pack
        if self.pack:
            check_packing(reranker, device, config.dtype)
        self.pad_id = int(reranker.pad_id)
        self._query_cut: dict[str, str] = {}
        self.activation_width = getattr(reranker, "activation_width", None)

    def _cut(self, text: str, limit: int | None) -> str:
        """The prefix of `text` holding its first `limit` tokens (whole text when shorter)."""
        if limit is None:
            return text
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        if len(offsets) <= limit:
            return text
        return text[: offsets[limit - 1][1]]

    def __call__(self, groups: Sequence[TrainingGroup]) -> dict:
        from pyserini_ssm.ops.batching import pack_batch, pad_batch

        pairs = []
        for group in groups:
            query = self._query_cut.get(group.query)
            if query is None:
                query = self._query_cut.setdefault(group.query, self._cut(group.query, self.max_query_length))
            pairs.extend((query, self._cut(document, self.max_doc_length)) for document in group.documents)
        encoded = self.encoder.encode_many(pairs)
        self._check_int32_cap(encoded)
        if self.pack:
            return pack_batch(encoded, device=self.device)  # one row; scores come back in pair order
        return pad_batch(encoded, self.pad_id, device=self.device)

    def _check_int32_cap(self, encoded: Sequence[Any]) -> None:
        """A micro-batch is one forward (its groups share one loss): past 2^31 elements of the widest activation,
        mamba_ssm's int32-indexed kernels would read out of bounds and kill the CUDA context, so refuse it."""
        from pyserini_ssm.ops.batching import int32_token_cap

        if not self.activation_width or not encoded:
            return
        lengths = [len(item.input_ids) for item in encoded]
        tokens = sum(lengths) if self.pack else len(lengths) * max(lengths)
        if tokens > int32_token_cap(self.activation_width):
            raise UserError(f"a micro-batch of {len(lengths)} pairs ({tokens} tokens x {self.activation_width} "
                            "activations) is past 2^31 elements, which mamba_ssm's kernels cannot index: lower "
                            "--batch-size and raise --grad-accum to keep the same global batch (or lower "
                            "--max-length)")


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict:
    import numpy as np
    import torch

    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), position, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_latest_checkpoint(output: Path) -> Path | None:
    """The checkpoint in `output` with the highest step (the final `model` folder included), or None."""
    import torch

    best, best_step = None, -1
    candidates = [path for path in output.glob(f"{CHECKPOINT_PREFIX}*") if path.is_dir()]
    for path in candidates:
        state_file = path / TRAINER_STATE
        if not state_file.is_file():
            continue
        step = torch.load(state_file, map_location="cpu", weights_only=True)["step"]
        if step > best_step:
            best, best_step = path, step
    summary = output / FINAL_DIR / FINAL_SUMMARY
    if summary.is_file() and json.loads(summary.read_text())["step"] > best_step:
        best = output / FINAL_DIR
    return best


def load_trainer_state(checkpoint: Path) -> dict:
    """A checkpoint's trainer_state.pt, or the final model's summary (the same keys, without optimizer state)."""
    import torch

    if (checkpoint / TRAINER_STATE).is_file():
        return torch.load(checkpoint / TRAINER_STATE, map_location="cpu", weights_only=True)
    return json.loads((checkpoint / FINAL_SUMMARY).read_text())


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Delete the half-written `.checkpoint-N.tmp-PID` / `.model.tmp-PID` (and `.old-PID`) folders that a killed
    run left: a resumed or finished run must not leave tens of MB of them behind."""
    stale = [path for path in output.glob(".*") if path.is_dir()
             and (".tmp-" in path.name or ".old-" in path.name)
             and path.name.lstrip(".").startswith((CHECKPOINT_PREFIX, FINAL_DIR + "."))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def _replace_directory(temporary: Path, target: Path) -> None:
    """Move a completed folder into place; an older folder of that name is removed only after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(temporary, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(directory: Path, reranker, trainer_state: dict, *, lora: bool, final: bool = False) -> None:
    """Reranker directory + trainer_state.pt, written beside `directory` and renamed into place.

    `final` (the model/ folder users ship): the reranker and a small training_summary.json, no optimizer state."""
    import torch

    temporary = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        with writing(directory):  # a full disk: one line, and the temporary folder removed
            to_save = merged_lora_copy(reranker) if lora else reranker
            to_save.save_pretrained(str(temporary), head_trained=True)
            if final:
                summary = {key: trainer_state[key] for key in _SUMMARY_KEYS}
                (temporary / FINAL_SUMMARY).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            else:
                torch.save(trainer_state, temporary / TRAINER_STATE)
            _replace_directory(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _trim_log(log_path: Path, step: int) -> None:
    """Keep the log lines up to `step` (a run stopped after its last checkpoint logged steps it will redo)."""
    if not log_path.is_file():
        return
    kept = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_output(log_path) as handle:
        handle.write("".join(line + "\n" for line in kept))


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    """Loss per step (and a running mean) from train_log.jsonl into a PNG (matplotlib, Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no loss plot (pip install matplotlib)")
        return
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not records:
        return
    steps = [record["step"] for record in records]
    losses = [record["loss"] for record in records]
    window = max(1, len(losses) // 20)
    smoothed = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1])
                for i in range(len(losses))]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, losses, alpha=0.35, label="loss")
    axis.plot(steps, smoothed, label=f"running mean ({window})")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_output(png_path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------------------------
# The loop


def _autocast(device, dtype: str):
    import torch

    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if dtype == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def resolve_dtype(dtype: str, device) -> str:
    import torch

    if dtype == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if dtype == "fp16" and device.type != "cuda":
        raise UserError("--dtype fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return dtype


def prepare_output(output: Path, resume: bool, is_main: bool) -> Path | None:
    """Check that `output` can be made (created later, by `_create_output`); with `resume`, the latest checkpoint in
    it (stale temporaries of a killed run removed). A used folder without `resume` is an error."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; give a folder")
    latest = find_latest_checkpoint(output) if output.is_dir() else None
    if resume:
        if latest is None:
            raise UserError(f"--resume: no checkpoint in {output} (expected {CHECKPOINT_PREFIX}N/{TRAINER_STATE})")
        check_output_folder(output)
        remove_stale_temporaries(output)
        return latest
    if latest is not None or (output / LOG_FILE).exists():
        raise UserError(f"--output {output} already holds a training run; add --resume to continue it or choose "
                        "another folder")
    existing = output
    while not existing.exists():  # the nearest folder that exists must take the new one
        existing = existing.parent
    check_output_folder(output if output.is_dir() else existing)
    return None


def _create_output(output: Path) -> bool:
    """Create --output (and its parents) once the run is known to start; True if this call created it."""
    if output.is_dir():
        return False
    with writing(output):
        output.mkdir(parents=True, exist_ok=True)
    return True


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
    created = _create_output(output) if dist_info.is_main else False
    try:
        return _train(config, examples, dist_info, output, resume_from, state)
    except BaseException:
        if created and output.is_dir() and _holds_nothing(output):
            shutil.rmtree(output, ignore_errors=True)
        raise


def _stop_requested(dist_info: Distributed) -> bool:
    """Whether any rank got a SIGTERM (all ranks stop after the same step, so their checkpoint agrees)."""
    stop = stopping.requested()
    if dist_info.enabled:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop else 0.0], device=dist_info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop


def _holds_nothing(output: Path) -> bool:
    """True for a folder holding nothing, or only the empty log of a run that failed before its first step."""
    entries = list(output.iterdir())
    return all(path.name == LOG_FILE and path.stat().st_size == 0 for path in entries)


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
        _disable_dropout(scoring_model)
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
        _set_rng_state(state["rng"][dist_info.rank])
        if dist_info.is_main:
            _trim_log(output / LOG_FILE, start_step)
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
        rng_states = [_rng_state()]
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
                        with _autocast(device, dtype):
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
            if done < stop_step and _stop_requested(dist_info):  # a safe point: keep the step done, and stop
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
