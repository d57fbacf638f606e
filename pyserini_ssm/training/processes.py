"""The processes of a training run: one, or the torchrun process group (through `pyserini_ssm.distributed`, the one
set-up of every torchrun job), the device each rank trains on, rank 0's results handed to every rank, and a SIGTERM
seen by any rank stopping them all after the same step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pyserini_ssm import distributed, stopping
from pyserini_ssm.errors import UserError


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
    """One process, or the torchrun process group (NCCL on GPUs, gloo on CPU) from WORLD_SIZE/RANK/LOCAL_RANK.

    The group is joined by `distributed.init_from_env` (what `rerank` does too), with torch's default timeout: a
    training collective that waits minutes means a rank is stuck, unlike `rerank`'s final barrier. `--device cuda`
    (or none) trains on the GPU of the local rank, and on the CPU where there is no GPU."""
    import torch

    context = distributed.context_from_env()
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if device is None or device == "cuda":
        torch_device = torch.device(f"cuda:{context.local_rank}" if use_cuda else "cpu")
    else:
        torch_device = torch.device(device)
    context = distributed.init_from_env(torch_device.type, timeout=None)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    return Distributed(context.world_size, context.rank, context.local_rank, torch_device)


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


def stop_requested_on_any_rank(dist_info: Distributed) -> bool:
    """Whether any rank got a SIGTERM (all ranks stop after the same step, so their checkpoint agrees)."""
    stop = stopping.requested()
    if dist_info.enabled:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop else 0.0], device=dist_info.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    return stop
