"""A training run's --output folder: checked before the data are read and created once the run starts, checkpoints
(a reranker directory plus `trainer_state.pt`: optimizer, schedule, scaler, every rank's RNG state, data position,
step) written to a temporary folder and renamed into place, found again for `--resume`, the final `model/` folder
(the reranker and `training_summary.json`, no optimizer state), the log trimmed on resume, and the loss plot.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

from pyserini_ssm.errors import UserError
from pyserini_ssm.files import atomic_output, check_output_folder, writing
from pyserini_ssm.training.trainable import merged_lora_copy

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
# The final model/ folder is what users ship: no optimizer state (that is in checkpoint-N/), only this summary.
FINAL_SUMMARY = "training_summary.json"
_SUMMARY_KEYS = ("step", "total_steps", "epoch", "world_size", "fingerprint", "num_examples", "config")
LOG_FILE = "train_log.jsonl"
LOSS_PLOT = "loss_curve.png"
FINAL_DIR = "model"
CHECKPOINT_PREFIX = "checkpoint-"


def rng_state() -> dict:
    import numpy as np
    import torch

    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), position, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def trim_log(log_path: Path, step: int) -> None:
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


def prepare_output(output: Path, resume: bool, is_main: bool) -> Path | None:
    """Check that `output` can be made (created later, by `create_output`); with `resume`, the latest checkpoint in
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


def create_output(output: Path) -> bool:
    """Create --output (and its parents) once the run is known to start; True if this call created it."""
    if output.is_dir():
        return False
    with writing(output):
        output.mkdir(parents=True, exist_ok=True)
    return True


def holds_nothing(output: Path) -> bool:
    """True for a folder holding nothing, or only the empty log of a run that failed before its first step."""
    entries = list(output.iterdir())
    return all(path.name == LOG_FILE and path.stat().st_size == 0 for path in entries)
