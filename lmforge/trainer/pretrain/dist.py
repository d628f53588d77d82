"""Process-group set-up for the stage: torchrun's environment, or a world of one without it.

Under torchrun every process has RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; started plainly (one local
process, tests) we provide a world of one on a free loopback port, because DeepSpeed always wants a
process group. gloo on the CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_main(self) -> bool:
        """Rank 0 alone reports progress and publishes artifacts."""
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        """Local rank 0 moves this node's checkpoint files to and from the store."""
        return self.local_rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def process_group(use_gpu: bool) -> Iterator[World]:
    """Initialise the default process group for the duration of the stage, then destroy it (without
    destroy, an occasional gloo run aborts at interpreter exit). DeepSpeed's own destroy also drops
    the groups it cached, so a second stage run in the same process starts clean."""
    import deepspeed
    import deepspeed.comm
    import torch.distributed as dist

    added: list[str] = []
    if "RANK" not in os.environ:
        defaults = {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(_free_port()),
        }
        for key, value in defaults.items():
            if key not in os.environ:
                os.environ[key] = value
                added.append(key)
    world = World(
        int(os.environ["RANK"]),
        int(os.environ["WORLD_SIZE"]),
        int(os.environ["LOCAL_RANK"]),
        int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
    )
    try:
        if not dist.is_initialized():
            deepspeed.init_distributed(
                dist_backend="nccl" if use_gpu else "gloo", auto_mpi_discovery=False, verbose=False
            )
        yield world
    finally:
        if dist.is_initialized():
            deepspeed.comm.destroy_process_group()
        for key in added:
            os.environ.pop(key, None)


def barrier(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T, world: World) -> T:
    """Rank 0's `value` on every rank."""
    if world.size == 1:
        return value
    import torch.distributed as dist

    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    result: T = box[0]
    return result


def gather(value: T, world: World) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if world.size == 1:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, value)
    return out


def any_true(flag: bool, world: World) -> bool:
    """Whether `flag` holds on any rank (one tiny all-reduce)."""
    if world.size == 1:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_sum(values: list[float], world: World) -> list[float]:
    """Element-wise sum of `values` over ranks."""
    if world.size == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.tolist()]
