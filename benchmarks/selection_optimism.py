"""Why do validation gains shrink on test? How much of a choice made on the validation users is luck.

    PYTHONPATH=src python benchmarks/selection_optimism.py --workspace fk        # after `xdrec run ...` there
    PYTHONPATH=src python benchmarks/selection_optimism.py --workspace fk --json

`bag` chooses its warm blend, log_softmax(target-only) + w * n^-d * log_softmax(bag), as the (w, d) with the
best mean NDCG@10 over the warm users of the valid split, and its gain over target-only has been about half
as large on the test users as on those validation users, round after round. If that is selection luck, it
shows inside the validation users alone, with no test data: split them at random into halves A and B,
choose (w, d) on A, and compare the gain over target-only that the choice shows on A (where it was chosen)
with the gain it has on B (fresh users). The mean of A - B over many splits is the optimism of choosing on
a set of that size; with half the users it is about sqrt(2) times the optimism of choosing on all of them
(the noise of a mean scales with 1 / sqrt(users)).

The script prints, for the workspace's `bag`: the gain the full valid split showed for the chosen blend,
the same blend's gain on the test split's warm users, and the split-half optimism (mean and 95% range
over the splits), rescaled to the full validation size beside it.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import polars as pl
import torch

from xdrec.data.dataset import Dataset
from xdrec.evaluation import per_user_metrics
from xdrec.scoring import Precomputed, pad_left
from xdrec.store import load_scorer
from xdrec.strategies.bag import BLENDS, BagScorer, blend
from xdrec.workspace import Workspace

METRIC = "NDCG@10"


def per_user_gains(scorer: BagScorer, cases: pl.DataFrame, n_items: int) -> np.ndarray:
    """(users, grid) NDCG@10 of each blend minus target-only's, per user."""
    users = torch.from_numpy(cases["user_id"].to_numpy().astype(np.int64))
    history = pad_left(cases["history"].to_list())
    bag, own = scorer.parts(users, history)
    assert own is not None
    columns = []
    for w, d in BLENDS:
        given = Precomputed(users, blend(bag, own, history, w, d), "blend")
        columns.append(per_user_metrics(given, cases, n_items).sort("user_id")[METRIC].to_numpy())
    ndcg = np.stack(columns, axis=1)
    return ndcg - ndcg[:, [BLENDS.index((0.0, 0.0))]]


def run(workspace: Workspace, splits: int, seed: int) -> dict:
    data = Dataset.from_workspace(workspace)
    target = data.target
    scorer = load_scorer(workspace, "bag", data, "cpu")
    assert isinstance(scorer, BagScorer)
    n_items = data.n_items(target)

    def warm(split: str) -> pl.DataFrame:
        return data.eval_cases(target, split).filter(pl.col("segment") == "warm").sort("user_id")

    valid = per_user_gains(scorer, warm("valid"), n_items)
    test = per_user_gains(scorer, warm("test"), n_items)
    chosen = int(valid.mean(0).argmax())
    rng = np.random.default_rng(seed)
    optimism = []
    for _ in range(splits):
        in_a = rng.permutation(len(valid)) < len(valid) // 2
        pick = int(valid[in_a].mean(0).argmax())
        optimism.append(valid[in_a, pick].mean() - valid[~in_a, pick].mean())
    half = np.array(optimism)
    w, d = BLENDS[chosen]
    return {
        "dataset": data.name,
        "target": target,
        "valid_users": len(valid),
        "test_users": len(test),
        "chosen": {"weight": w, "decay": d},
        "valid_gain": float(valid[:, chosen].mean()),
        "test_gain": float(test[:, chosen].mean()),
        "shrink": float(valid[:, chosen].mean() - test[:, chosen].mean()),
        "splits": splits,
        "half_optimism": float(half.mean()),
        "half_optimism_range": [float(np.quantile(half, 0.025)), float(np.quantile(half, 0.975))],
        "full_optimism_estimate": float(half.mean() / math.sqrt(2)),
    }


def main(argv: list[str] | None = None) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--workspace", default="xdrec-workspace")
    parser.add_argument("--splits", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(Workspace.at(args.workspace), args.splits, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    lo, hi = result["half_optimism_range"]
    valid, test, shrink = result["valid_gain"], result["test_gain"], result["shrink"]
    print(
        f"{result['dataset']} -> {result['target']}: bag's blend {result['chosen']}, "
        f"{result['valid_users']:,} warm valid / {result['test_users']:,} warm test users\n"
        f"gain over target-only ({METRIC}): valid {valid:+.4f}, test {test:+.4f} (shrink {shrink:+.4f})\n"
        f"choosing on half the valid users: chosen-half gain - other-half gain "
        f"{result['half_optimism']:+.4f} "
        f"[{lo:+.4f}, {hi:+.4f}] over {result['splits']} splits; on all of them about "
        f"{result['full_optimism_estimate']:+.4f}"
    )


if __name__ == "__main__":
    main()
