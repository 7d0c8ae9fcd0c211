"""How much can source history add for warm users? The same blend with and without the source, side by side.

    PYTHONPATH=src python benchmarks/warm_ceiling.py --workspace fk          # after `xdrec run ...` there
    PYTHONPATH=src python benchmarks/warm_ceiling.py --workspace fk --json

The warm bar asks the best transfer model to beat target-only SASRec with a paired 95% CI above zero.
This asks how large a gain the data allows, with models that share nothing with xdrec's strategies: it
adds EASE (Steck, WWW 2019: a closed-form item-item model, strong on small catalogues) to the workspace's
target-only SASRec twice,
- fitted on **target items only**: what any second model adds, with no transfer at all;
- fitted on **source and target items**: the same model given the user's source history too;
and compares both with target-only on the test split's warm users (paired bootstrap over the same users).
The paired difference between the two blends is what the source history adds on top of ensembling.

EASE over the items of X (users x items, binary training bags; `source+target`: the source and target
columns side by side): P = (X^T X + lambda I)^-1, B = I - P / diag(P) (zero diagonal); a user's target
scores are their bag times B's target columns. The blend is
    log_softmax(target-only SASRec) + w * z(EASE scores)
with z a per-user standardisation over the target items. lambda and w are chosen together on the valid
split's warm users (the history the SASRec reads there, plus the user's source training bag), never on
test. X is every user's training split: no valid or test row, and no cold user's target row (they have
none in training). At test time a warm user's target bag is their test history (training + valid items),
as the SASRec reads it.

The table also lists the workspace's `bag` model (xdrec's transfer model for warm users) if it is trained.
Dense matrices: meant for catalogues like food_kitchen's (thousands of items per domain).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from xdrec.data.dataset import Dataset
from xdrec.evaluation import per_user_metrics
from xdrec.scoring import Precomputed, pad_left
from xdrec.store import load_scorer, trained_models
from xdrec.workspace import Workspace

sys.path.insert(0, str(Path(__file__).parent))
from cold_start import binary_matrix
from transfer_gain import paired_ci

METRIC = "NDCG@10"
LAMBDAS = (10.0, 30.0, 100.0, 300.0, 1000.0)
WEIGHTS = (0.03, 0.06, 0.125, 0.25, 0.5, 1.0)


def ease(x: Tensor, lam: float) -> Tensor:
    """EASE's item-item weights (items x items, zero diagonal) from binary bags x (users x items)."""
    gram = (x.T @ x).double()
    gram.diagonal().add_(lam)
    p = torch.linalg.inv(gram)
    b = -p / p.diagonal()[None, :]
    b.diagonal().zero_()
    return b.float()


def standardised(scores: Tensor) -> Tensor:
    """Per-user z-scores over the target items (column 0, padding, stays -inf)."""
    real = scores[:, 1:]
    z = (real - real.mean(1, keepdim=True)) / real.std(1, keepdim=True).clamp(min=1e-9)
    return torch.cat([torch.full_like(scores[:, :1], -torch.inf), z], dim=1)


class Split:
    """One split's warm users: their cases, the SASRec's log-probabilities and their input bags."""

    def __init__(self, workspace: Workspace, data: Dataset, split: str, source_bags: Tensor) -> None:
        target = data.target
        self.cases = data.eval_cases(target, split).filter(pl.col("segment") == "warm").sort("user_id")
        self.users = torch.from_numpy(self.cases["user_id"].to_numpy().astype(np.int64))
        history = pad_left(self.cases["history"].to_list())
        with torch.no_grad():
            sasrec = load_scorer(workspace, "target-only", data, "cpu")
            self.own = F.log_softmax(sasrec.scores(self.users, history).float(), 1)
        n_target = data.n_items(target)
        self.target_bags = torch.zeros(len(self.users), n_target + 1)
        rows = torch.arange(len(self.users))[:, None].expand_as(history)
        self.target_bags[rows[history != 0], history[history != 0]] = 1.0
        self.source_bags = source_bags[self.users]
        self.n_items = n_target
        self.workspace, self.data = workspace, data

    def ndcg(self, scores: Tensor) -> np.ndarray:
        metrics = per_user_metrics(Precomputed(self.users, scores), self.cases, self.n_items, ks=(10,))
        return metrics.sort("user_id")[METRIC].to_numpy()


def run(workspace: Workspace, resamples: int, seed: int, log: Callable[[str], None]) -> dict:
    torch.manual_seed(seed)
    data = Dataset.from_workspace(workspace)
    source, target = data.source, data.target
    n_users, n_source, n_target = data.users.height, data.n_items(source), data.n_items(target)
    source_bags = binary_matrix(data.train_sequences(source), n_users, n_source)
    target_bags = binary_matrix(data.train_sequences(target), n_users, n_target)
    valid = Split(workspace, data, "valid", source_bags)
    test = Split(workspace, data, "test", source_bags)
    log(f"{valid.users.numel():,} warm valid users, {test.users.numel():,} warm test users")

    inputs: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        # the item columns EASE is fitted on, from (source bags, target bags); padding columns dropped
        "target": lambda s, t: t[:, 1:],
        "source+target": lambda s, t: torch.cat([s[:, 1:], t[:, 1:]], dim=1),
    }
    rows, per_user = [], {"target-only": test.ndcg(test.own)}
    rows.append({"model": "target-only SASRec", "chosen": "", "valid": float(valid.ndcg(valid.own).mean())})
    for name, columns in inputs.items():
        started = time.perf_counter()
        x = columns(source_bags, target_bags)
        best: tuple[float, float, float] | None = None  # (valid NDCG@10, lambda, w)
        chosen = torch.empty(0)
        for lam in LAMBDAS:
            b = ease(x, lam)[:, -n_target:]  # every item's weights onto the target items
            ease_valid = standardised(F.pad(columns(valid.source_bags, valid.target_bags) @ b, (1, 0)))
            for w in WEIGHTS:
                score = float(valid.ndcg(valid.own + w * ease_valid).mean())
                log(f"  EASE({name}) lambda={lam:g} w={w:g}: valid {METRIC} {score:.4f}")
                if best is None or score > best[0]:
                    best, chosen = (score, lam, w), b
        assert best is not None
        score, lam, w = best
        ease_test = standardised(F.pad(columns(test.source_bags, test.target_bags) @ chosen, (1, 0)))
        label = f"target-only + EASE({name} items)"
        per_user[label] = test.ndcg(test.own + w * ease_test)
        rows.append({"model": label, "chosen": f"lambda={lam:g}, w={w:g}", "valid": score})
        log(f"EASE({name}): {time.perf_counter() - started:.0f} s")
    if "bag" in trained_models(workspace, data, target):
        bag = load_scorer(workspace, "bag", data, "cpu")
        blend = {"valid": None, "test": None}
        for split_name, split in (("valid", valid), ("test", test)):
            history = pad_left(split.cases["history"].to_list())
            with torch.no_grad():
                blend[split_name] = bag.scores(split.users, history)
        per_user["bag (xdrec)"] = test.ndcg(blend["test"])
        rows.append(
            {"model": "bag (xdrec)", "chosen": "its own", "valid": float(valid.ndcg(blend["valid"]).mean())}
        )

    base = per_user["target-only"]
    for row, values in zip(rows, per_user.values(), strict=True):
        lo, hi = paired_ci(values - base, resamples, seed)
        row.update(test=float(values.mean()), delta=float((values - base).mean()), ci=[lo, hi])
    with_source, without = (
        per_user["target-only + EASE(source+target items)"],
        per_user["target-only + EASE(target items)"],
    )
    lo, hi = paired_ci(with_source - without, resamples, seed)
    source_adds = {"delta": float((with_source - without).mean()), "ci": [lo, hi]}
    return {
        "dataset": data.name,
        "target": target,
        "warm_users": int(test.users.numel()),
        "resamples": resamples,
        "rows": rows,
        "source_adds": source_adds,
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['dataset']}, warm users of the test split ({result['warm_users']:,}), full ranking; "
        f"paired bootstrap ({result['resamples']} resamples) against target-only SASRec",
        "",
        f"| model | chosen on valid | valid {METRIC} | test {METRIC} | delta [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lo, hi = r["ci"]
        lines.append(
            f"| {r['model']} | {r['chosen']} | {r['valid']:.4f} | {r['test']:.4f} | "
            f"{r['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}] |"
        )
    adds = result["source_adds"]
    lines += [
        "",
        f"What the source history adds (EASE with source and target items minus EASE with target items, "
        f"paired): {adds['delta']:+.4f} [{adds['ci'][0]:+.4f}, {adds['ci'][1]:+.4f}]",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace after `xdrec run`")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run(Workspace(args.workspace), args.bootstrap, args.seed, lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    print(f"{time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
