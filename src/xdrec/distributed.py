"""Data-parallel training under `torchrun`: which process this is, and the few collectives xdrec needs.

`torchrun --nproc-per-node N -m xdrec pretrain ...` starts N copies of the command with RANK, WORLD_SIZE
and LOCAL_RANK in their environment. The trainer joins them into one `torch.distributed` process group
(NCCL on CUDA, one GPU per process; gloo on CPU), wraps the model in `DistributedDataParallel`, and gives
each rank its share of every batch; rank 0 alone prints and writes files. Without those variables (or with
WORLD_SIZE=1) everything here is a no-op and the code runs as one process.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from xdrec.errors import XdrecError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's index on its machine: its GPU

    @property
    def main(self) -> bool:
        """The one process that prints and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched() -> Ranks:
    """This process's place in a torchrun launch, from its environment (one process when not launched)."""
    try:
        return Ranks(
            rank=int(os.environ.get("RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError:
        raise XdrecError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None


def is_main() -> bool:
    return launched().main


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group of a torchrun launch (once per process) and pick this rank's device.

    On CUDA each rank takes the GPU of its LOCAL_RANK; on CPU every rank uses the CPU. Returns the ranks
    and the device to train on; for a single process, (Ranks(), device) unchanged.
    """
    ranks = launched()
    if not ranks.distributed:
        return ranks, device
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise XdrecError(
                f"rank {ranks.rank} wants GPU {ranks.local_rank} but only {torch.cuda.device_count()} "
                "are visible: start at most that many processes per node"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(shutdown, wait=False)  # a fallback, see shutdown()
    return ranks, device


def shutdown(wait: bool = True) -> None:
    """Leave the process group: call it before the process exits. Left to interpreter shutdown, or done by
    one rank while another still uses the group, a gloo group's threads can abort the process
    ("terminate called without an active exception"); `wait` (after a clean run, when every rank gets
    here) first waits for all the ranks. After an error, leave without waiting: the others may never come."""
    if dist.is_initialized():
        if wait and active():
            dist.barrier()
        dist.destroy_process_group()


def exit_process(code: int, clean: bool) -> None:
    """Leave the process group, then end a distributed process at once with `code`.

    Skipping interpreter finalization is deliberate: gloo's worker threads can still hold work objects
    whose destruction during finalization aborts the process ("terminate called without an active
    exception", SIGABRT) even after destroy_process_group, now and then on a loaded machine, which
    torchrun then reports as a failed run. Everything xdrec writes is on disk (atomically) and its
    locks are released by then. A process that never joined a group returns normally.
    """
    joined = dist.is_available() and dist.is_initialized()
    shutdown(wait=clean)
    if joined:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over the ranks (float64); the values themselves when not distributed."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if active():
        dist.barrier()


def share(n: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of n items (rank r of N: r*n//N to (r+1)*n//N), so the
    shares in rank order are the items in order; (0, n) when not distributed."""
    if not active():
        return 0, n
    rank, world = dist.get_rank(), dist.get_world_size()
    return rank * n // world, (rank + 1) * n // world


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank; [obj] when not distributed."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
