"""Several processes (``torchrun`` / ``accelerate launch``) sharing one extraction.

The launcher sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; each process then handles shards
``rank, rank + world_size, ...``, writes them into the shared shard folder, and the statistics
are combined exactly by an all-reduce of float64 sums (never by gathering vectors). Without
those variables everything runs in one process and no process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import RepdispError


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; ``world_size == 1`` means a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: np.ndarray, device: Any) -> np.ndarray:
        """Element-wise float64 sum of ``values`` over all processes (identity when alone)."""
        values = np.asarray(values, dtype=np.float64)
        if self.world_size == 1:
            return values
        import torch
        import torch.distributed as tdist

        t = torch.from_numpy(values.copy()).to(device)
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.cpu().numpy()

    def broadcast(self, obj: Any, device: Any) -> Any:
        """Rank 0's ``obj`` on every process (any picklable object made by our own code)."""
        if self.world_size == 1:
            return obj
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=device)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as tdist

            tdist.barrier()


def from_env() -> Dist:
    """Rank, world size and local rank as set by torchrun / accelerate launch (or 0, 1, 0)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise RepdispError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment ({e})") from None
    if not 0 <= rank < world:
        raise RepdispError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return Dist(rank, world, local)


def setup(device: Any) -> tuple[Dist, bool]:
    """Join the process group when launched with several processes: NCCL when ``device`` is a
    CUDA device, gloo on CPU. Returns the group info and whether this call created the group
    (the caller then tears it down with :func:`teardown`)."""
    dist = from_env()
    if dist.world_size == 1:
        return dist, False
    import torch
    import torch.distributed as tdist

    if tdist.is_initialized():
        return dist, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist, True


def teardown() -> None:
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()
