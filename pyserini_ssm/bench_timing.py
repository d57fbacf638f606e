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


class ForwardTimeline:
    """Stamps of one stretch of scoring, for finding where the device waits on the host: every forward of `model`
    (host clock when queued; CUDA events when run, on a CUDA model), named host spans of wrapped functions
    (`wrap`), and the cyclic garbage collector's passes. Use as a context manager; `lines()` reports.

    The same hooks serve `predict` (bin/profile-predict) and the whole `rerank` command (bin/profile-rerank), so
    their figures compare."""

    def __init__(self, model: Any, cuda: bool):
        self.model, self.cuda = model, cuda
        self.forwards: list[dict[str, Any]] = []
        self.spans: list[tuple[str, float, float, str]] = []  # (name, began, ended, thread)
        self.collections: list[tuple[int, float]] = []  # (generation, seconds) of each GC pass inside
        self._undo: list[Callable[[], None]] = []
        self._gc_started = 0.0
        self._origin_event: Any = None  # the CUDA event at the start (CUDA models)
        self.origin = self.total = 0.0

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        """Stamp every call of `owner.name` (an attribute, restored on exit) as a span `label`."""
        import threading

        original = getattr(owner, name)
        spans = self.spans

        def stamped(*args, **kwargs):
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spans.append((label or name, began, time.perf_counter(), threading.current_thread().name))

        setattr(owner, name, stamped)
        self._undo.append(lambda: setattr(owner, name, original))

    def __enter__(self) -> "ForwardTimeline":
        import torch

        def event():
            if not self.cuda:
                return None
            recorded = torch.cuda.Event(enable_timing=True)
            recorded.record()
            return recorded

        def before(module, args):
            batch = args[0] if args else {}
            tokens = int(batch["input_ids"].numel()) if isinstance(batch, dict) and "input_ids" in batch else 0
            self.forwards.append({"host_start": time.perf_counter(), "start": event(), "tokens": tokens})

        def after(module, args, output):
            self.forwards[-1].update(host_end=time.perf_counter(), end=event())

        def on_gc(phase, info):
            if phase == "start":
                self._gc_started = time.perf_counter()
            else:
                self.collections.append((info["generation"], time.perf_counter() - self._gc_started))

        gc.callbacks.append(on_gc)
        self._undo.append(lambda: gc.callbacks.remove(on_gc))
        for hook in (self.model.register_forward_pre_hook(before), self.model.register_forward_hook(after)):
            self._undo.append(hook.remove)
        if self.cuda:
            torch.cuda.synchronize()
        self._origin_event = event()
        self.origin = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        self.total = time.perf_counter() - self.origin
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def gpu_ms(self, row: dict[str, Any]) -> tuple[float, float]:
        """When the device ran one forward of `forwards`: (start, end) in ms since the timeline began."""
        return self._origin_event.elapsed_time(row["start"]), self._origin_event.elapsed_time(row["end"])

    def gpu_idle_ms(self) -> tuple[float, float]:
        """(device idle before and between the forwards, after the last) in ms; (0, 0) without CUDA events."""
        if not self.cuda:
            return 0.0, 0.0
        idle = previous_end = 0.0
        for row in self.forwards:
            start, end = self.gpu_ms(row)
            idle += max(start - previous_end, 0.0)
            previous_end = end
        return idle, self.total * 1e3 - previous_end

    def lines(self, forwards: bool = True) -> list[str]:
        """The report: spans, then forwards (with the device's idle time before each), then the totals."""
        def ms(moment: float) -> float:
            return 1e3 * (moment - self.origin)

        out = [f"{name} [{thread}]: {ms(began):9.1f} .. {ms(ended):9.1f} ms ({1e3 * (ended - began):.1f} ms)"
               for name, began, ended, thread in sorted(self.spans, key=lambda span: span[1])]
        previous_end = 0.0
        for index, row in enumerate(self.forwards if forwards else []):
            text = (f"forward {index:3d} ({row['tokens']:5d} tokens): host {ms(row['host_start']):9.1f} .. "
                    f"{ms(row['host_end']):9.1f} ms")
            if self.cuda:
                start, end = self.gpu_ms(row)
                text += f", GPU {start:9.1f} .. {end:9.1f} ms (idle {start - previous_end:6.1f} ms before)"
                previous_end = end
            out.append(text)
        idle, after_last = self.gpu_idle_ms()
        out.append(f"{len(self.forwards)} forwards, {sum(row['tokens'] for row in self.forwards)} tokens in "
                   f"{self.total * 1e3:.1f} ms; GPU idle before or between forwards {idle:.1f} ms, after the last "
                   f"{after_last:.1f} ms; cyclic GC passes inside: {len(self.collections)} "
                   f"({sum(seconds for _, seconds in self.collections) * 1e3:.1f} ms)")
        return out
