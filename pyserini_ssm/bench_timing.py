"""The bench's clock and scales: the machine it runs on, the median time and peak memory of a call, and what to do
after a CUDA out-of-memory (`benchmarking` builds its measurements on these).

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

import datetime
import gc
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable


def machine_info(device: Any = None) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for module in ("transformers", "sentence_transformers", "mamba_ssm", "causal_conv1d"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # absent or broken: say so rather than fail the bench
            info[module] = None
    if device is not None and torch.device(device).type == "cuda":
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)
    return info


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux; it cannot be reset, so on CPU it is the process's peak so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _memory_kind(device: Any) -> str:
    import torch

    return ("cuda max_memory_allocated" if torch.device(device).type == "cuda"
            else "process peak RSS so far (not resettable)")


@dataclass
class Timing:
    seconds: float  # median
    all_seconds: list[float]
    peak_memory_mb: float
    result: Any


def time_call(function: Callable[[], Any], device: Any, repeats: int = 3, warmup: int = 1) -> Timing:
    """Median wall time of `function()` over `repeats` runs after `warmup` runs, CUDA-synchronised; the peak GPU
    memory (reset before each run; the largest) or the process's peak RSS on CPU."""
    import torch

    from pyserini_ssm.models.attention import reset_kernel_record

    cuda = torch.device(device).type == "cuda"
    result = None
    reset_kernel_record()  # the record then names the kernels of this call alone (`attention_label`)
    for _ in range(warmup):
        result = function()
        _sync(device)
    times: list[float] = []
    peak = 0.0
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        result = function()
        _sync(device)
        times.append(time.perf_counter() - start)
        peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mb())
    return Timing(statistics.median(times), times, peak, result)


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _free_memory(device: Any) -> None:
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
