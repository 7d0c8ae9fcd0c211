"""Under the mixed split, what does reading the other domain's validation item add?

    PYTHONPATH=src python benchmarks/mixed_context.py --workspace afk --model joint --model bag
    PYTHONPATH=src python benchmarks/mixed_context.py --workspace afk --model joint --json

Under `prepare --split mixed` a user's validation item is the second-last of their merged timeline, in
either domain. Cross-domain models read it as context (`Dataset.context_splits`); before, they read the
other domain's training split only, and for a third of the Kitchen test users of ABXI's data the item right
before the one to predict was invisible to them. This scores each named model on its domain's test users
twice, on the same weights: with the context as `xdrec evaluate` builds it, and with the other domain's
training split only (the old reading), under full ranking and against 999 sampled negatives (ABXI's
protocol; the negatives `xdrec evaluate` draws). The paired difference of NDCG@10 gets a bootstrap 95% CI,
over all test users and over those whose validation item is in the other domain (the only ones whose
input changes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from unittest import mock

import polars as pl

from transfer_gain import paired_ci  # benchmarks/ is on the path when a script of it runs
from xdrec.data.dataset import Dataset
from xdrec.evaluation import per_user_metrics
from xdrec.store import load_scorer, model_domains
from xdrec.workspace import Workspace

METRIC = "NDCG@10"
PROTOCOLS = {"full": None, "sampled-999": 999}
NEGATIVE_SEED = 42  # `xdrec evaluate`'s default, so the "with" column is its number


def ndcg(
    workspace: Workspace, data: Dataset, name: str, domain: str, cases: pl.DataFrame, training_only: bool
) -> dict:
    """Per-user NDCG@10 (sorted by user) of `name`, a model of `domain`, per protocol; context as asked."""
    old_reading = mock.patch.object(Dataset, "context_splits", lambda self: ("train",))
    with old_reading if training_only else contextlib.nullcontext():
        scorer = load_scorer(workspace, name, data, "cpu")  # the context is read when it loads
    return {
        protocol: per_user_metrics(
            scorer, cases, data.n_items(domain), negatives=negatives, seed=NEGATIVE_SEED
        )
        .sort("user_id")[METRIC]
        .to_numpy()
        for protocol, negatives in PROTOCOLS.items()
    }


def run(workspace: Workspace, models: list[str], resamples: int, seed: int) -> dict:
    data = Dataset.from_workspace(workspace)
    if data.split != "mixed":
        raise SystemExit(
            f"{data.name} was not prepared with --split mixed: nothing changes under {data.split}"
        )
    rows = []
    for name in models:
        domain = (model_domains(workspace, name) or (data.target,))[0]
        cases = data.eval_cases(domain, "test").sort("user_id")
        moved = (
            data.interactions()
            .filter((pl.col("domain") == data.other(domain)) & (pl.col("split") == "valid"))
            .select("user_id")
            .collect()
        )
        other_valid = cases["user_id"].is_in(moved["user_id"].implode()).to_numpy()
        before = ndcg(workspace, data, name, domain, cases, training_only=True)
        after = ndcg(workspace, data, name, domain, cases, training_only=False)
        for protocol in PROTOCOLS:
            for users, mask in (("all", slice(None)), ("valid item in the other domain", other_valid)):
                diff = after[protocol][mask] - before[protocol][mask]
                lo, hi = paired_ci(diff, resamples, seed)
                rows.append(
                    {
                        "model": name,
                        "domain": domain,
                        "protocol": protocol,
                        "users": users,
                        "n": len(diff),
                        "before": float(before[protocol][mask].mean()),
                        "after": float(after[protocol][mask].mean()),
                        "delta": float(diff.mean()),
                        "ci": [lo, hi],
                    }
                )
    return {"dataset": data.name, "resamples": resamples, "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"| model | protocol | users | n | {METRIC} train only | with valid item | delta [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lo, hi = r["ci"]
        lines.append(
            f"| {r['model']} | {r['protocol']} | {r['users']} | {r['n']:,} | {r['before']:.4f} | "
            f"{r['after']:.4f} | {r['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("xdrec-workspace"))
    parser.add_argument("--model", action="append", required=True, help="a cross-domain model; repeatable")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(Workspace(args.workspace), args.model, args.resamples, args.seed)
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
