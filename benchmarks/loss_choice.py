"""What each training loss costs and what it scores: one domain's SASRec, trained the way `xdrec pretrain`
trains it, once per loss, on a prepared dataset.

    PYTHONPATH=src python benchmarks/loss_choice.py --workspace afk --domain Home_and_Kitchen
    PYTHONPATH=src python benchmarks/loss_choice.py --workspace afk --domain Grocery_and_Gourmet_Food \
        --variant ce --variant sampled:1024:in-batch

A variant is `ce`, or `sampled:N` (N popularity negatives a batch, logQ-corrected) with `:in-batch` for
the batch's labels as more negatives. Per variant: seconds an epoch and sequences/s (the trainer's own
clock, validation excluded), epochs until early stopping, the validation NDCG@10 early stopping chose the
weights by (full ranking: the choice between losses is made on it), then test NDCG@10 in full ranking and
against 999 sampled negatives (ABXI's protocol). Models are trained in a temporary copy of the dataset, so
the workspace's own models are left alone. Set OMP_NUM_THREADS and keep the machine otherwise idle for
timings that compare.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import polars as pl

from xdrec.data.dataset import Dataset
from xdrec.evaluation import paired_deltas, per_user_metrics
from xdrec.pretraining import pretrain
from xdrec.training import TrainConfig
from xdrec.workspace import Workspace

PROTOCOLS = {"test_full": None, "test_s999": 999}  # full ranking; ABXI's 999 sampled negatives
VARIANTS = (
    "ce",
    "sampled:256",
    "sampled:2048",
    "sampled:8192",
    "sampled:256:in-batch",
    "sampled:1024:in-batch",
)


def train_config(variant: str, seed: int) -> TrainConfig:
    loss, *rest = variant.split(":")
    negatives = int(rest[0]) if rest else 1024
    return TrainConfig(loss=loss, negatives=negatives, in_batch="in-batch" in rest, seed=seed, device="cpu")


def measure(
    workspace: Workspace, data: Dataset, domain: str, variant: str, seed: int
) -> tuple[dict, dict[str, pl.DataFrame]]:
    """Train with `variant`: its row, and its per-user test metrics by protocol."""
    name = "loss-" + variant.replace(":", "-")
    config = train_config(variant, seed)
    result = pretrain(
        workspace, dataset=data.name, domain=domain, train_config=config, name=name, progress=False
    )
    training = result.training
    row = {
        "variant": variant,
        "s_per_epoch": training.seconds / training.epochs_run,
        "seq_per_s": result.n_sequences * training.epochs_run / training.seconds,
        "epochs": training.epochs_run,
        "best_epoch": training.best_epoch,
        "valid_full": training.best_metric,
    }
    cases, per_user = data.eval_cases(domain, "test"), {}
    for protocol, negatives in PROTOCOLS.items():
        if negatives is not None and negatives >= data.n_items(domain):
            continue  # a catalogue too small for the sampled protocol
        per_user[protocol] = per_user_metrics(
            result.scorer, cases, data.n_items(domain), negatives=negatives, seed=0
        )
        row[protocol] = float(per_user[protocol]["NDCG@10"].mean())
    return row, per_user


def against_ce(per_user: dict[str, dict[str, pl.DataFrame]], role: str) -> dict[str, dict[str, list]]:
    """variant -> protocol -> [delta, low, high]: its paired test NDCG@10 difference from `ce` (same
    users), with the bootstrap 95% CI `xdrec evaluate` gives."""
    out: dict[str, dict[str, list]] = {}
    for protocol in per_user["ce"]:
        frames = {f"{role}-only": per_user["ce"][protocol]}  # the baseline's name paired_deltas expects
        frames |= {v: f[protocol] for v, f in per_user.items() if v != "ce"}
        deltas = paired_deltas(frames, role, "NDCG@10").filter(pl.col("segment") == "all")
        for d in deltas.filter(pl.col("model") != f"{role}-only").iter_rows(named=True):
            out.setdefault(d["model"], {})[protocol] = [d["delta"], d["delta_lo"], d["delta_hi"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with a prepared dataset")
    parser.add_argument("--dataset", help="the prepared dataset (default: the workspace's current one)")
    parser.add_argument("--domain", required=True)
    parser.add_argument("--variant", action="append", help=f"default: {', '.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    source = Dataset.from_workspace(Workspace.at(args.workspace), args.dataset)
    with tempfile.TemporaryDirectory(prefix="xdrec-loss-") as scratch:
        workspace = Workspace.at(scratch)
        shutil.copytree(source.path, workspace.dataset_dir(source.name))
        data = Dataset.from_workspace(workspace, source.name)
        print("variant  s/epoch  seq/s  epochs  best  valid-full  test-full  test-s999")
        per_user = {}
        for variant in args.variant or VARIANTS:
            row, per_user[variant] = measure(workspace, data, args.domain, variant, args.seed)
            print(
                f"{variant}  {row['s_per_epoch']:.1f}  {row['seq_per_s']:.0f}  {row['epochs']}  "
                f"{row['best_epoch']}  {row['valid_full']:.4f}  {row['test_full']:.4f}  "
                f"{row.get('test_s999', float('nan')):.4f}"
            )
            print(json.dumps(row), flush=True)
        if "ce" in per_user and len(per_user) > 1:
            for variant, deltas in against_ce(per_user, data.role(args.domain)).items():
                cells = "  ".join(f"{p} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]" for p, (d, lo, hi) in deltas.items())
                print(f"{variant} against ce: {cells}")


if __name__ == "__main__":
    main()
