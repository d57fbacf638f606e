"""distributed: the torchrun environment, deterministic balanced sharding, and a real 2-process gloo group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyserini_ssm.distributed import (
    DistributedContext,
    context_from_env,
    device_for_rank,
    init_from_env,
    shard_by_cost,
)
from pyserini_ssm.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def single_process_env(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_shard_by_cost_balances_known_example():
    # LPT: 9 -> r0, 8 -> r1, 4 -> r1 (8 < 9), 3 -> r0 (9 < 12), 3 -> r0 (12 = 12, lower rank), 1 -> r1
    assert shard_by_cost([3, 9, 4, 8, 3, 1], 2) == [[0, 1, 4], [2, 3, 5]]


@settings(max_examples=200, deadline=None)
@given(costs=st.lists(st.integers(min_value=0, max_value=1000), max_size=60), world_size=st.integers(1, 9))
def test_shard_by_cost_is_a_deterministic_balanced_partition(costs, world_size):
    shards = shard_by_cost(costs, world_size)
    assert len(shards) == world_size
    assert sorted(i for shard in shards for i in shard) == list(range(len(costs)))
    assert all(shard == sorted(shard) for shard in shards)
    assert shard_by_cost(list(costs), world_size) == shards
    loads = [sum(costs[i] for i in shard) for shard in shards]
    # Greedy list scheduling: the heaviest shard exceeds the lightest by at most one item's cost.
    assert max(loads) - min(loads) <= max(costs, default=0)


def test_shard_by_cost_rejects_empty_world():
    with pytest.raises(ValueError):
        shard_by_cost([1, 2], 0)


def test_context_from_env_single_process(single_process_env):
    assert context_from_env() == DistributedContext(0, 1, 0)
    context = init_from_env("cpu")
    assert not context.is_distributed and context.is_main and not context.initialized


def test_context_from_env_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert context_from_env() == DistributedContext(rank=3, world_size=4, local_rank=1)


@pytest.mark.parametrize("rank, world", [("4", "4"), ("x", "2"), ("0", "0")])
def test_inconsistent_torchrun_environment_is_a_user_error(monkeypatch, rank, world):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", world)
    with pytest.raises(UserError):
        context_from_env()


def test_device_for_rank_gives_each_rank_its_local_gpu():
    context = DistributedContext(rank=5, world_size=8, local_rank=1)
    assert device_for_rank("cuda", context) == "cuda:1"
    assert device_for_rank("cuda:0", context) == "cuda:1"
    assert device_for_rank("cpu", context) == "cpu"
    assert device_for_rank("cuda:3", DistributedContext()) == "cuda:3"
    assert device_for_rank(None, DistributedContext()) is None


SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from pyserini_ssm.distributed import barrier, init_from_env, shard_by_cost, shutdown

    context = init_from_env("cpu")
    assert context.initialized and dist.get_backend() == "gloo"
    shard = shard_by_cost([5, 1, 4, 2, 3], context.world_size)[context.rank]
    # Each rank learns the others' shards only through the group, so this checks they agree on the plan.
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, shard)
    barrier(context)
    with open(os.path.join(sys.argv[1], f"rank{context.rank}.json"), "w") as handle:
        json.dump({"rank": context.rank, "world": context.world_size, "gathered": gathered}, handle)
    shutdown(context)
    """
)


def test_two_gloo_processes_under_torchrun_agree_on_the_shards(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    for name in TORCHRUN_VARIABLES:
        env.pop(name, None)
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    expected = shard_by_cost([5, 1, 4, 2, 3], 2)
    for rank, report in enumerate(reports):
        assert report["rank"] == rank and report["world"] == 2
        assert report["gathered"] == expected
