"""Where `xdrec prepare`'s time and memory go, stage by stage (a diagnosis, not a benchmark).

    PYTHONPATH=src python benchmarks/prepare_stages.py --workspace /tmp/xb-6m/ws --one-pass

Runs `xdrec.data.prepare.prepare` in this process on a workspace that holds raw/<Domain>.parquet (such as
the one `benchmarks/prepare.py` generates), with each of its stage functions wrapped so that a background
thread can tell which stage is running. The thread reads the process's resident memory every 2 ms.
For each stage the table gives its wall time, the resident memory when it started and the most seen
while it ran. "Resident" includes memory that the allocator (jemalloc, inside Polars) has freed but not
yet returned to the system, which it does after about half a second; run with
`_RJEM_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0` in the environment to see the live memory only
(several times slower). The "after" rows are the code between two stages; "after _counts" is the
labelling and writing of the output. It writes the workspace's dataset as `xdrec prepare` does.
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from pathlib import Path

import polars as pl

import xdrec.data.prepare as prepare_module
from xdrec.workspace import Workspace

STAGES = (
    "_scan_keys",
    "_dedup",
    "kcore",
    "_vocabularies",
    "_fetch",
    "_in_runs",
    "choose_cold_users",
    "assign_splits",
    "_counts",
)


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class StageMonitor:
    """Wall time, starting and highest resident memory per stage, from a sampling thread."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        if self.rows:
            self.rows[-1]["wall_s"] = now - self.rows[-1]["start_s"]
        resident = _resident_mib()
        self.rows.append({"stage": stage, "start_s": now, "start_mib": resident, "max_mib": resident})

    def _sample(self) -> None:
        while not self._stop.is_set():
            if self.rows:
                row = self.rows[-1]
                row["max_mib"] = max(row["max_mib"], _resident_mib())
            time.sleep(0.002)

    def __enter__(self) -> StageMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.enter("end")
        self._stop.set()
        self._thread.join()
        self.rows.pop()


def _wrap(monitor: StageMonitor, name: str) -> None:
    function = getattr(prepare_module, name)

    def staged(*args: object, **kwargs: object) -> object:
        monitor.enter(name)
        result = function(*args, **kwargs)
        # assign_splits returns a LazyFrame: its work happens where it is collected, just after
        monitor.enter(f"{name} (collect)" if isinstance(result, pl.LazyFrame) else f"  after {name}")
        return result

    setattr(prepare_module, name, staged)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with raw/<Domain>.parquet")
    parser.add_argument("--source", default="Books")
    parser.add_argument("--target", default="Movies_and_TV")
    parser.add_argument("--one-pass", action="store_true", help="the notebook's one-pass filter")
    args = parser.parse_args()

    with StageMonitor() as monitor:
        for name in STAGES:
            _wrap(monitor, name)
        monitor.enter("start")
        config = prepare_module.PrepareConfig(one_pass=args.one_pass)
        prepare_module.prepare(Workspace(args.workspace), args.source, args.target, config)
    print(f"{'stage':28s} {'wall s':>7s} {'RSS at start':>13s} {'RSS max':>8s}  (MiB)")
    for row in monitor.rows:
        print(f"{row['stage']:28s} {row['wall_s']:7.2f} {row['start_mib']:13.0f} {row['max_mib']:8.0f}")
    total = sum(row["wall_s"] for row in monitor.rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"total {total:.2f} s in prepare(); process peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
