"""Which device a command runs on, and the per-device settings of training (threads, autocast)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from xdrec.errors import XdrecError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` (CUDA if torch sees a GPU, else CPU), `cpu`, `cuda` or `cuda:N` -> a torch.device."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = (
                "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            )
            raise XdrecError(
                f"--device {name}: torch sees no CUDA GPU (torch {torch.__version__}, {build}); "
                "use --device cpu, or auto to take a GPU when there is one"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise XdrecError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return device
    raise XdrecError(f"unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def cpu_threads(threads: int | None = None) -> Iterator[int]:
    """Run torch's intra-op pool on `threads` threads (default: every core this process may use, unless
    OMP_NUM_THREADS says otherwise), restoring the previous count afterwards. Yields the count.

    On a shared, oversubscribed machine fewer threads can be much faster: idle-spinning workers steal
    the cores that the busy ones need.
    """
    previous = torch.get_num_threads()
    if threads is None:
        threads = (
            int(os.environ["OMP_NUM_THREADS"]) if os.environ.get("OMP_NUM_THREADS") else available_cores()
        )
    torch.set_num_threads(max(1, threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
