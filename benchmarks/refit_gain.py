"""What the refits with the validation items add to `joint` as served: the saved `joint` blended with the
domain's SASRec (both refitted) against both as validation chose them before their refits
(`validation.safetensors`, what `--no-refit` saves), at the recorded blend weight, on the same test users:
NDCG@10 in full ranking and with 999 sampled negatives, and the paired difference [95% CI]. The models
before the refit are trained on the training split only, as the papers train; they are the like-for-like
number beside theirs.

    python benchmarks/refit_gain.py --workspace ./afk        # a workspace `run` trained joint in
"""

from __future__ import annotations

import argparse
import json

import polars as pl

from xdrec.data.dataset import Dataset
from xdrec.evaluation import paired_deltas, per_user_metrics
from xdrec.store import load_scorer
from xdrec.workspace import Workspace

PROTOCOLS = {"full": None, "sampled 999": 999}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=42, help="of the sampled negatives")
    args = parser.parse_args()
    workspace = Workspace.at(args.workspace)
    data = Dataset.from_workspace(workspace)
    for domain in data.domains:
        role = data.role(domain)
        cases, n_items = data.eval_cases(domain, "test"), data.n_items(domain)
        scorers = {
            "before refit": load_scorer(workspace, "joint", data, args.device, domain, for_validation=True),
            "refitted": load_scorer(workspace, "joint", data, args.device, domain),
        }
        for protocol, negatives in PROTOCOLS.items():
            per_user = {
                name: per_user_metrics(scorer, cases, n_items, negatives=negatives, seed=args.seed)
                for name, scorer in scorers.items()
            }
            # paired_deltas pairs every model with the segment's baseline: the model before the refit
            frames = {f"{role}-only": per_user["before refit"], "refitted": per_user["refitted"]}
            delta = paired_deltas(frames, role, "NDCG@10", seed=args.seed).filter(
                (pl.col("segment") == "all") & (pl.col("model") == "refitted")
            )
            d = delta.row(0, named=True)
            row = {
                "domain": domain,
                "protocol": protocol,
                "users": cases.height,
                "before_refit": round(float(per_user["before refit"]["NDCG@10"].mean()), 4),
                "refitted": round(float(per_user["refitted"]["NDCG@10"].mean()), 4),
                "delta": [round(d[k], 4) for k in ("delta", "delta_lo", "delta_hi")],
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
