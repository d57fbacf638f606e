"""torchrun helpers: one process group from the environment, deterministic sharding, a barrier.

`torchrun --nproc-per-node N -m pyserini_ssm.rerank ...` starts N copies of the driver with RANK, WORLD_SIZE and
LOCAL_RANK (and MASTER_ADDR/MASTER_PORT) in their environment. Every rank reads the same inputs, computes the same
shards with `shard_by_cost` (no communication needed to agree on them), scores its own shard, and meets the others
at `barrier` before rank 0 merges. Without those variables everything here is a no-op for one process, so the same
code path serves `python -m` and `torchrun`.

NCCL on CUDA, gloo on CPU. torchrun itself supervises the workers (a failing rank stops the others); there is no
home-made process pool here.
"""

from __future__ import annotations

import datetime
import heapq
import logging
import os
from dataclasses import dataclass
from typing import Sequence

from pyserini_ssm.errors import UserError

logger = logging.getLogger(__name__)

# A resumed job can leave one rank with nothing to do while another scores for hours: the barrier that waits for
# the slowest shard must not time out like a training step would (torch's default is 10-30 minutes).
DEFAULT_BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits among the workers of one job. `initialized` is True when this module created the
    process group (and so must destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_from_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def context_from_env() -> DistributedContext:
    """Rank, world size and local rank as torchrun sets them; one process without them. Starts nothing."""
    world_size = _int_from_env("WORLD_SIZE", 1)
    rank = _int_from_env("RANK", 0)
    local_rank = _int_from_env("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)


def init_from_env(device_type: str = "cpu",
                  timeout: datetime.timedelta | None = DEFAULT_BARRIER_TIMEOUT) -> DistributedContext:
    """Join the job's process group when launched by torchrun (WORLD_SIZE > 1): NCCL for CUDA, gloo otherwise.

    A single process (no torchrun, or `--nproc-per-node 1`) gets a context of one and no process group. Every
    torchrun job joins here (`rerank`, and `train` through `training.processes`). `timeout=None` keeps torch's
    default, which `train` wants: there a collective that waits for minutes means a rank is stuck.
    """
    context = context_from_env()
    if not context.is_distributed:
        return context
    import torch.distributed as dist

    if dist.is_initialized():  # someone (a caller embedding us) already joined: use their group as is
        return DistributedContext(dist.get_rank(), dist.get_world_size(), context.local_rank, dist.get_backend())
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        import torch

        torch.cuda.set_device(context.local_rank)
    dist.init_process_group(backend=backend, **({} if timeout is None else {"timeout": timeout}))
    logger.info("rank %d of %d joined the %s process group", context.rank, context.world_size, backend)
    return DistributedContext(context.rank, context.world_size, context.local_rank, backend, initialized=True)


def device_for_rank(device: str | None, context: DistributedContext) -> str | None:
    """The device this rank computes on: in a torchrun job each rank takes the GPU of its local rank (also when
    the user wrote `--device cuda:0` for all of them); a single process keeps what it was given."""
    if not context.is_distributed:
        return device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] == "cuda":
        return f"cuda:{context.local_rank}"
    return device


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if not context.is_distributed:
        return
    import torch.distributed as dist

    if context.backend == "nccl":
        dist.barrier(device_ids=[context.local_rank])
    else:
        dist.barrier()


def sum_over_ranks(context: DistributedContext, value: int) -> int:
    """The sum of `value` over every rank (the value itself in a single process)."""
    if not context.is_distributed:
        return value
    import torch
    import torch.distributed as dist

    device = f"cuda:{context.local_rank}" if context.backend == "nccl" else "cpu"
    total = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return int(total.item())


def shutdown(context: DistributedContext) -> None:
    """Leave the process group if `init_from_env` created it."""
    if context.initialized:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def shard_by_cost(costs: Sequence[int], world_size: int) -> list[list[int]]:
    """Split items (indices into `costs`) into `world_size` shards of about equal total cost.

    Longest-processing-time-first: items in decreasing cost (ties: lower index first) each go to the shard with the
    smallest total so far (ties: lower rank). The result depends only on `costs` and `world_size`, so every rank
    computes the same shards on its own. Within a shard, indices stay in input order. The largest shard total is at
    most 4/3 of the optimum, and within one item's cost of the mean.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shards: list[list[int]] = [[] for _ in range(world_size)]
    loads = [(0, rank) for rank in range(world_size)]  # (total cost, rank): a min-heap
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        shards[rank].append(index)
        heapq.heappush(loads, (load + int(costs[index]), rank))
    return [sorted(shard) for shard in shards]
