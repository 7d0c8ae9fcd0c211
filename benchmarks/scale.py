"""Books-scale training and evaluation: one GPU, N GPUs under torchrun, or a small copy on CPU.

    PYTHONPATH=src python benchmarks/scale.py data --workspace W                # Books-size: raw + prepare
    PYTHONPATH=src python benchmarks/scale.py bench --workspace W --device cuda # one GPU
    PYTHONPATH=src torchrun --nproc-per-node N benchmarks/scale.py bench --workspace W --device cuda
    PYTHONPATH=src python benchmarks/scale.py data --workspace W --preset small  # the CPU-sized copy
    PYTHONPATH=src python benchmarks/scale.py bench --workspace W --device cpu --threads 1

`data` writes `xdrec.data.synthetic.books_scale()` (Amazon Books 5-core size: ~776K users, ~495K items,
~9.5M interactions after `prepare`'s 5-core; `--preset small` is the same shape with 1/70 of the users and
items) as raw files into the workspace and runs `xdrec.data.prepare.prepare` with its defaults (5-core,
leave-one-out, 20% cold-start hold-out), printing the counts and both timings.

`bench` trains, for each setup, a fresh SASRec (hidden 64, 2 blocks, max_len 50: `xdrec pretrain`'s
defaults) on the prepared source domain with the project's own `xdrec.training.train` for `--epochs`
epochs, with no validation inside (the epoch time is training alone: the trainer's own clock, which ends
each epoch with a device sync), after an untimed 10-step warm-up on a throwaway model. Then it ranks
`--eval-users` test users against the whole catalogue with `xdrec.validation.validation_metric` (what
`pretrain` validates with: item-chunked full ranking, sharded over ranks under torchrun) and reports
NDCG@10 and users/s. Peak GPU memory is the maximum over ranks of `torch.cuda.max_memory_allocated`.

A setup is GLOBAL_BATCH[:sqrt|linear][:in-batch]: the global batch (split over the ranks under torchrun),
the learning-rate scaling from 128 (`TrainConfig.lr_scaling`), and whether the `sampled` loss also takes
in-batch negatives. The loss is `auto` (sampled softmax once full softmax passes its memory budget, as at
Books scale) unless `--loss` says otherwise. Only rank 0 prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from xdrec import distributed
from xdrec.data.dataset import Dataset
from xdrec.data.prepare import PrepareConfig, prepare
from xdrec.data.synthetic import books_scale, write_raw
from xdrec.devices import resolve_device
from xdrec.models.sasrec import SASRec, SASRecConfig
from xdrec.sequence_scorer import SequenceScorer
from xdrec.sequence_training import training_examples
from xdrec.training import TrainConfig, train
from xdrec.validation import validation_metric
from xdrec.workspace import Workspace

sys.path.insert(0, str(Path(__file__).parent))
from train import code_fingerprint, cpu_model, load_average  # benchmarks/train.py

PRESETS = {"books": books_scale(), "small": books_scale(n_users=20_000, source_items=8_500)}


def data(args: argparse.Namespace) -> None:
    config = PRESETS[args.preset]
    ws = Workspace(Path(args.workspace))
    ws.raw_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    write_raw(ws.raw_dir, config)
    generated = time.perf_counter() - t
    t = time.perf_counter()
    result = prepare(ws, config.source_domain, config.target_domain, PrepareConfig())
    prepared = time.perf_counter() - t
    source = result.manifest["domains"][config.source_domain]
    print(
        json.dumps(
            {
                "preset": args.preset,
                "generated_users": config.n_users,
                "generate_seconds": round(generated, 1),
                "prepare_seconds": round(prepared, 1),
                "source": source,
                "dataset": result.name,
            },
            indent=2,
        )
    )


@dataclass(frozen=True)
class Setup:
    batch: int  # global
    scaling: str = "none"
    in_batch: bool = False

    @classmethod
    def parse(cls, text: str) -> Setup:
        batch, *flags = text.split(":")
        unknown = set(flags) - {"sqrt", "linear", "in-batch"}
        if unknown or not batch.isdigit():
            raise argparse.ArgumentTypeError(f"bad setup {text!r}: GLOBAL_BATCH[:sqrt|linear][:in-batch]")
        scaling = next((f for f in flags if f in ("sqrt", "linear")), "none")
        return cls(int(batch), scaling, "in-batch" in flags)

    def __str__(self) -> str:
        return ":".join(
            [str(self.batch)]
            + ([self.scaling] if self.scaling != "none" else [])
            + (["in-batch"] if self.in_batch else [])
        )


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    peak = distributed.gather(torch.cuda.max_memory_allocated(device))
    return round(max(peak) / 2**30, 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_setup(args: argparse.Namespace, setup: Setup, data: dict[str, Any], device: torch.device) -> dict:
    world = distributed.launched().world_size
    if setup.batch % world:
        raise SystemExit(f"error: global batch {setup.batch} is not a multiple of {world} processes")
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=setup.batch // world,
        lr=args.lr,
        loss=args.loss,
        negatives=args.negatives,
        in_batch=setup.in_batch,
        lr_scaling=setup.scaling,  # type: ignore[arg-type]
        seed=args.seed,
        device=args.device,
        compile=args.compile,
        threads=args.threads,
    )
    model_config = SASRecConfig(data["n_items"])

    def fresh() -> SASRec:
        torch.manual_seed(args.seed)
        return SASRec(model_config)

    warm = replace(config, epochs=1, max_steps=10)
    train(fresh(), data["examples"], warm, item_counts=data["counts"], progress=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = fresh()
    result = train(model, data["examples"], config, item_counts=data["counts"], progress=False)
    train_peak = _peak_gib(device)

    validate = validation_metric(data["cases"], data["n_items"], SequenceScorer, max_users=args.eval_users)
    assert validate is not None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t = time.perf_counter()
    ndcg = validate(model)
    _sync(device)
    eval_seconds = time.perf_counter() - t
    users = min(args.eval_users, data["cases"].height)
    epochs = result.history
    return {
        "setup": str(setup),
        "global_batch": setup.batch,
        "batch_per_rank": config.batch_size,
        "lr": result.lr,
        "loss": result.loss,
        "loss_reason": result.loss_reason,
        "epochs": len(epochs),
        "epoch_seconds": [e["seconds"] for e in epochs],
        "train_sequences_per_s": round(float(np.median([e["sequences_per_s"] for e in epochs])), 1),
        "train_loss": [round(e["loss"], 4) for e in epochs],
        "peak_train_gib": train_peak,
        "eval_users": users,
        "eval_seconds": round(eval_seconds, 2),
        "eval_users_per_s": round(users / eval_seconds, 1),
        "NDCG@10": round(ndcg, 4),
        "peak_eval_gib": _peak_gib(device),
    }


def load(args: argparse.Namespace) -> dict[str, Any]:
    dataset = Dataset.from_workspace(Workspace(Path(args.workspace)))
    domain = dataset.source
    sequences = dataset.train_sequences(domain)
    return {
        "dataset": dataset.name,
        "domain": domain,
        "n_items": dataset.n_items(domain),
        "examples": training_examples(sequences, SASRecConfig(1).max_len),
        "users": int((sequences["items"].list.len() >= 2).sum()),
        "interactions": int(sequences["items"].list.len().sum()),
        "cases": dataset.eval_cases(domain, "test").filter(pl.col("segment") != "cold"),
        "counts": dataset.item_counts(domain),
    }


def bench(args: argparse.Namespace) -> None:
    ranks, device = distributed.setup(resolve_device(args.device))
    t = time.perf_counter()
    loaded = load(args)
    load_seconds = time.perf_counter() - t
    say = print if ranks.main else (lambda *a, **k: None)
    say(
        f"{loaded['dataset']} / {loaded['domain']}: {loaded['users']:,} users, {loaded['n_items']:,} items, "
        f"{loaded['interactions']:,} training interactions, {len(loaded['examples']):,} windows "
        f"(loaded in {load_seconds:.1f}s); {ranks.world_size} process(es) on {device}",
        file=sys.stderr,
    )
    rows = []
    for setup in args.setups:
        rows.append(bench_setup(args, setup, loaded, device))
        say(json.dumps(rows[-1]), file=sys.stderr)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "world_size": ranks.world_size,
        "dataset": {k: loaded[k] for k in ("dataset", "domain", "users", "n_items", "interactions")}
        | {"windows": len(loaded["examples"]), "test_users": loaded["cases"].height},
        "config": {k: v for k, v in vars(args).items() if k not in ("command", "setups", "json")},
        "code": code_fingerprint(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "load_average": load_average(),
        "rows": rows,
    }
    if not ranks.main:
        return
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['device']} x {ranks.world_size}: {report['dataset']}")
    head = (
        "setup",
        "batch/rank",
        "lr",
        "loss",
        "epoch s",
        "train seq/s",
        "eval users/s",
        "NDCG@10",
        "peak GiB",
    )
    print(" | ".join(head))
    for r in rows:
        peak = "-" if r["peak_train_gib"] is None else f"{r['peak_train_gib']} / {r['peak_eval_gib']}"
        print(
            f"{r['setup']} | {r['batch_per_rank']} | {r['lr']:.2g} | {r['loss']} | "
            f"{' '.join(f'{s:.1f}' for s in r['epoch_seconds'])} | {r['train_sequences_per_s']:,.0f} | "
            f"{r['eval_users_per_s']:,.0f} | {r['NDCG@10']:.4f} | {peak}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="generate the synthetic raw files and prepare them")
    d.add_argument("--workspace", required=True)
    d.add_argument("--preset", choices=sorted(PRESETS), default="books")
    b = sub.add_parser("bench", help="time training and evaluation on a prepared workspace")
    b.add_argument("--workspace", required=True)
    b.add_argument("--device", default="auto")
    b.add_argument(
        "--setups",
        type=Setup.parse,
        nargs="+",
        default=[Setup.parse(s) for s in ("128", "1024:sqrt", "1024:sqrt:in-batch")],
    )
    b.add_argument("--epochs", type=int, default=1)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--loss", default="auto")
    b.add_argument("--negatives", type=int, default=256)
    b.add_argument("--eval-users", type=int, default=50_000)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--compile", action="store_true")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    clean = False
    try:
        data(args) if args.command == "data" else bench(args)
        clean = True
    finally:
        distributed.shutdown(wait=clean)  # after an error, leave without waiting for the other ranks


if __name__ == "__main__":
    main()
