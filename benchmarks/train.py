"""Benchmark SASRec training (sequences/s) and full-ranking evaluation (users/s) on CPU or CUDA.

    PYTHONPATH=src python benchmarks/train.py                                # 1K and 100K items
    PYTHONPATH=src python benchmarks/train.py --threads 1 2 --items 1000 --repeats 5
    PYTHONPATH=src python benchmarks/train.py --device cuda --users 50000 --steps 200 --json

What is timed is the project's own code path, nothing re-implemented:
- training: `xdrec.training.train` with `TrainConfig(max_steps=--steps, threads=...)` on the windows that
  `xdrec.sequence_training.training_examples` builds (every window max_len wide, as `xdrec pretrain`
  trains), with the loss `auto` picks for the catalogue (full softmax `ce`, or `sampled` once the logits
  would pass `CE_MEMORY_BUDGET`; the table says which). bf16 autocast on CUDA and the thread count are the
  trainer's own. Throughput = sequences seen / the epochs' own seconds from `TrainResult.history` (the
  trainer's clock; it ends each epoch with a device sync, so CUDA timings are complete); optimizer creation
  and other per-call setup are outside it. One untimed warm-up call (`--warmup` steps) precedes the repeats.
- evaluation: `xdrec.evaluation.per_user_metrics` with a `SequenceScorer` over the full catalogue (NDCG@10,
  history masked, batch 512 as `xdrec pretrain`'s validation and `xdrec evaluate` use), after a one-batch
  warm-up; throughput = users / wall seconds of the call.
- "valid % of epoch": the share of one `xdrec pretrain` epoch that its validation would take on this data
  (every user with a held-out item ranked once, at the evaluation rate, beside one pass over the training
  windows at the training rate): an estimate from the two measured rates, not a third timing.

Input: `xdrec.data.synthetic.generate` with `--users` users and a `--items` source catalogue (generation is
not timed). The model's catalogue is exactly `--items`: item ids are the generator's own numbers 1..n,
not re-encoded after a k-core filter, which would drop the rarely drawn items of a large catalogue. Each
user's last item is the test target, the second last the validation target (leave-one-out, as `xdrec
prepare`'s default split), so training sees all but the last two.

Each configuration is measured `--repeats` times and the median is reported. On a shared machine,
state the load average printed at the start and the end beside the numbers: with more runnable threads
than cores, torch's multi-threaded kernels slow down several times, so compare `--threads 1` with more.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from xdrec.data.synthetic import SyntheticConfig, generate
from xdrec.devices import available_cores, resolve_device
from xdrec.errors import XdrecError
from xdrec.evaluation import per_user_metrics
from xdrec.models.sasrec import SASRec, SASRecConfig
from xdrec.sequence_scorer import SequenceScorer
from xdrec.sequence_training import training_examples
from xdrec.training import Examples, TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
EVAL_BATCH = 512  # per_user_metrics' default, and what pretrain's validation and `xdrec evaluate` use


def code_fingerprint() -> dict[str, Any]:
    """The commit and a hash of the timed modules: several people edit the working tree at once."""
    src = REPO / "src" / "xdrec"
    modules = (
        "training.py",
        "distributed.py",
        "evaluation.py",
        "validation.py",
        "sequence_training.py",  # the training windows
        "sequence_scorer.py",  # the scorer
        "devices.py",
        "models/sasrec.py",
        "models/losses.py",
    )
    digest = hashlib.sha256(b"".join((src / m).read_bytes() for m in modules)).hexdigest()[:12]
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"commit": commit, "timed_modules_sha256": digest, "modules": list(modules)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------------
# Input (never timed)
# --------------------------------------------------------------------------------------------------
def make_data(users: int, items: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    """Synthetic source domain -> (train sequences, test eval cases, training item counts).

    train sequences: user_id, items (list[i32]) as `Dataset.train_sequences`; eval cases: user_id, history,
    targets, segment as `Dataset.eval_cases` (users with at least 3 items: one to train on, then the
    validation and test items).
    """
    # The target domain is generated too (the generator makes both); keep it minimal.
    cfg = SyntheticConfig(
        n_users=users, source_items=items, target_items=24, target_mean_length=1.0, seed=seed
    )
    raw = generate(cfg)[cfg.source_domain]  # rows by user, then time
    ids = len(cfg.user_prefix), len(cfg.source_item_prefix)
    seqs = (
        raw.lazy()
        .select(
            user_id=pl.col("user").str.slice(ids[0]).cast(pl.Int64) - 1,
            item_id=pl.col("item").str.slice(ids[1]).cast(pl.Int32),  # the generator's 1..n numbering
        )
        .group_by("user_id", maintain_order=True)
        .agg(items=pl.col("item_id"))
        .filter(pl.col("items").list.len() >= 3)
        .collect()
    )
    train_seqs = seqs.select("user_id", items=pl.col("items").list.head(pl.col("items").list.len() - 2))
    cases = seqs.select(
        "user_id",
        history=pl.col("items").list.head(pl.col("items").list.len() - 1),
        targets=pl.col("items").list.tail(1),
        segment=pl.lit("warm"),
    )
    counts = np.bincount(train_seqs["items"].explode().to_numpy(), minlength=items + 1).astype(np.int64)
    return train_seqs, cases, counts


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------
def time_training(
    model: SASRec, examples: Examples, config: TrainConfig, counts: np.ndarray, steps: int
) -> dict[str, Any]:
    config = replace(config, max_steps=steps, epochs=-(-steps * config.batch_size // len(examples)) + 1)
    load = os.getloadavg()[0]
    wall = time.perf_counter()
    result = train(model, examples, config, item_counts=counts, progress=False)
    wall = time.perf_counter() - wall
    seconds = sum(line["seconds"] for line in result.history)
    # The trainer's own count, per epoch seen / seconds (to 0.1%): no assumption about how it batches.
    seen = round(sum(line["sequences_per_s"] * line["seconds"] for line in result.history))
    return {
        "loss": result.loss,
        "loss_reason": result.loss_reason,
        "steps": result.steps,
        "sequences": seen,
        "seconds": round(seconds, 4),
        "call_seconds": round(wall, 4),  # including optimizer creation and the loss's setup
        "sequences_per_s": seen / seconds,
        "load_1min": round((load + os.getloadavg()[0]) / 2, 2),
    }


def time_evaluation(model: SASRec, cases: pl.DataFrame, n_items: int, device: torch.device) -> dict[str, Any]:
    scorer = SequenceScorer(model)
    load = os.getloadavg()[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    metrics = per_user_metrics(scorer, cases, n_items, ks=(10,), batch_size=EVAL_BATCH)
    seconds = time.perf_counter() - t  # per_user_metrics copies each batch's positions to the CPU: synced
    return {
        "users": cases.height,
        "seconds": round(seconds, 4),
        "users_per_s": cases.height / seconds,
        "ndcg10": float(metrics["NDCG@10"].mean()),
        "load_1min": round((load + os.getloadavg()[0]) / 2, 2),
    }


def bench_one(
    args: argparse.Namespace, device: torch.device, items: int, threads: int, data: tuple
) -> dict[str, Any]:
    train_seqs, cases, counts = data
    mcfg = SASRecConfig(n_items=items, hidden=args.hidden, blocks=args.blocks, heads=args.heads)
    examples = training_examples(train_seqs, mcfg.max_len)
    eval_cases = cases.head(args.eval_users)
    torch.manual_seed(args.seed)
    model = SASRec(mcfg)
    tcfg = TrainConfig(
        batch_size=args.batch_size, loss=args.loss, seed=args.seed, device=str(device), threads=threads
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # evaluation has no thread setting of its own: the caller's count
    try:
        time_training(model, examples, tcfg, counts, args.warmup)  # warm-up: allocator, kernels, caches
        trains = [time_training(model, examples, tcfg, counts, args.steps) for _ in range(args.repeats)]
        model.to(device).eval()
        per_user_metrics(SequenceScorer(model), eval_cases.head(EVAL_BATCH), items, ks=(10,))  # warm-up
        evals = [time_evaluation(model, eval_cases, items, device) for _ in range(args.repeats)]
    finally:
        torch.set_num_threads(previous)
    labelled = int((examples.labels != 0).sum())
    train_sps = statistics.median(r["sequences_per_s"] for r in trains)
    eval_ups = statistics.median(r["users_per_s"] for r in evals)
    # What `xdrec pretrain` spends per epoch on this data: one pass over the examples, then full-ranking
    # NDCG@10 over every validation user (here: every user with a test case, the same population).
    epoch_train, epoch_valid = len(examples) / train_sps, cases.height / eval_ups
    return {
        "device": device.type,
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": threads,
        "items": items,
        "loss": trains[0]["loss"],
        "loss_reason": trains[0]["loss_reason"],
        "train_sequences_per_s": train_sps,
        "eval_users_per_s": eval_ups,
        "epoch_estimate": {
            "train_s": round(epoch_train, 2),
            "validation_s": round(epoch_valid, 2),
            "validation_share": round(epoch_valid / (epoch_train + epoch_valid), 3),
        },
        "train_runs": trains,
        "eval_runs": evals,
        "examples": {
            "sequences": len(examples),
            "max_len": mcfg.max_len,
            "labelled_positions": labelled,
            "padding_share": round(1 - labelled / examples.labels.numel(), 4),
            "eval_users": eval_cases.height,
        },
    }


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "device / card",
        "threads",
        "items",
        "loss",
        "train seq/s",
        "eval users/s",
        "valid % of epoch",
        "load (1 min)",
    )
    body = [
        (
            f"{r['device']}: {r['card']}",
            str(r["threads"]),
            f"{r['items']:,}",
            r["loss"],
            f"{r['train_sequences_per_s']:,.0f}",
            f"{r['eval_users_per_s']:,.0f}",
            f"{100 * r['epoch_estimate']['validation_share']:.0f}%",
            " ".join(f"{x['load_1min']:.1f}" for x in r["train_runs"]),
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = [head, tuple("-" * w for w in widths), *body]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch CPU threads, one run each (default: every core)",
    )
    parser.add_argument(
        "--items", type=int, nargs="+", default=[1_000, 100_000], help="catalogue sizes, one run each"
    )
    parser.add_argument("--users", type=int, default=5_000, help="synthetic users (default 5000)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the repeats")
    parser.add_argument("--eval-users", type=int, default=1_000, help="users ranked per evaluation repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median reported)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--loss", default="auto", help="auto | ce | bce | sampled (default auto)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.steps, args.warmup, args.repeats, args.eval_users, args.users) < 1:
        parser.error("--steps, --warmup, --repeats, --eval-users and --users must be at least 1")

    try:
        device = resolve_device(args.device)
    except XdrecError as e:
        parser.exit(1, f"error: {e}\n")
    threads = args.threads or [available_cores()]
    started, load_start = time.perf_counter(), load_average()
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    log(f"load average at start: {load_start} ({available_cores()} cores available)")
    log(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    rows = []
    for items in args.items:
        t = time.perf_counter()
        data = make_data(args.users, items, args.seed)
        seconds = time.perf_counter() - t
        log(f"{items:,} items: generated {data[0].height:,} users' sequences in {seconds:.1f}s (not timed)")
        for n in threads:
            log(f"  measuring {items:,} items, {n} thread(s) ...")
            rows.append(bench_one(args, device, items, n, data))
    load_end = load_average()
    report = {
        "config": {k: v for k, v in vars(args).items() if k != "json"} | {"threads": threads},
        "machine": {
            "cpu": cpu_model(),
            "cores_available": available_cores(),
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "code": code_fingerprint(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "polars": pl.__version__,
            "numpy": np.__version__,
        },
        # libgomp's spin-waiting threads matter on a shared machine (see BENCHMARKS.md): record the settings.
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
        "load_average": {"start": load_start, "end": load_end},
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(_table(rows))
    for r in rows:
        print(f"{r['items']:,} items, {r['threads']} thread(s): loss {r['loss_reason']}")
    code = report["code"]
    print(f"code: commit {code['commit']}, timed modules sha256 {code['timed_modules_sha256']}")
    print(f"load average: start {load_start}, end {load_end}; total {report['seconds']}s")


if __name__ == "__main__":
    main()
