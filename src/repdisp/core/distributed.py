"""Several processes (``torchrun`` / ``accelerate launch``) sharing one extraction.

The launcher sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; each process then handles shards
``rank, rank + world_size, ...``. Two ways to combine them:

* ``measure``: each process writes its shards into the shared shard folder, the statistics are
  combined exactly by an all-reduce of float64 sums, and rank 0 reads every shard back for the
  medians and CIs.
* ``layers`` and ``reproduce`` (``Dist.gather_shards``): shards are computed in rounds of
  ``world_size`` (round j: shard ``j * world_size + rank`` on each process) and each round is
  gathered to rank 0, which puts every shard's rows at their place, so rank 0 holds the whole
  extraction in segment order (bit-equal to one process with the same batches) and the others
  hold nothing; only rank 0 computes statistics and writes files. Rank 0 holds one round of
  shards in transit on top of the result.

Without those variables everything runs in one process and no process group is created. The
group waits ``TIMEOUT`` for a collective (other ranks wait while rank 0 computes statistics).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from .errors import RepdispError
from .precision import resolve_device

TIMEOUT = timedelta(hours=6)


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

    def gather(self, obj: Any, device: Any) -> list[Any] | None:
        """Every process's ``obj`` as a list in rank order on rank 0; None on the others."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as tdist

        box = [None] * self.world_size if self.is_main else None
        tdist.gather_object(obj, box, dst=0)
        return box

    def gather_shards(
        self,
        compute: Callable[[int], dict[str, np.ndarray]],
        rows: list[tuple[int, int]],
        device: Any,
    ) -> dict[str, np.ndarray]:
        """Shard ``i`` (``compute(i)``: arrays of the rows ``rows[i]``) computed by process
        ``i % world_size``, in rounds, all put together on rank 0 in row order: ``{key: array
        of every row}`` there, ``{}`` on the other processes."""
        n = max((b for _, b in rows), default=0)
        out: dict[str, np.ndarray] = {}
        for first in range(0, len(rows), self.world_size):
            i = first + self.rank
            got = self.gather(compute(i) if i < len(rows) else None, device)
            for r, arrays in enumerate(got or []):
                if arrays is None:
                    continue
                a, b = rows[first + r]
                if not out:
                    out = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in arrays.items()}
                for k, v in arrays.items():
                    out[k][a:b] = v
        return out

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
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend=backend, timeout=TIMEOUT)
    return dist, True


def setup_for(device: str) -> tuple[Dist, bool]:
    """:func:`setup` from a ``--device`` name (resolved, with ``LOCAL_RANK``, only when several
    processes were launched)."""
    if from_env().world_size == 1:
        return Dist(), False
    return setup(resolve_device(device))


def teardown() -> None:
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()
