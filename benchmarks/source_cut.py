"""Does source history from after the target prediction time inflate the warm numbers?

    PYTHONPATH=src python benchmarks/source_cut.py --workspace fk      # after `xdrec run ...` there

xdrec's strategies read each user's whole source *training* split (`xdrec embed` and `joint`'s merged
timeline). With per-domain leave-one-out, some of those source items can be later than the target item
being predicted. This script re-scores the warm users' test items with `fusion` and `joint` as trained,
once as `xdrec evaluate` does and once with each user's source history cut at their first held-out
target item (valid or test), which is before every target item predicted. Same models, same cases, same
full-ranking evaluation; only the source input changes. (`mapping` serves warm users with target-only,
which reads no source history.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl
import torch

from xdrec.data.dataset import Dataset
from xdrec.embedding import UserVectors
from xdrec.evaluation import per_user_metrics
from xdrec.scoring import pad_left
from xdrec.sequence_scorer import load_backbone
from xdrec.store import load_scorer
from xdrec.workspace import Workspace


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace after `xdrec run`")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    ws = Workspace(args.workspace)
    data = Dataset.from_workspace(ws)
    source, target = data.source, data.target
    rows = data.interactions().collect()
    cold = data.users.filter("cold")["user_id"].implode()
    held_out = pl.col("split").is_in(["valid", "test"])
    cut = (
        rows.filter((pl.col("domain") == target) & held_out & ~pl.col("user_id").is_in(cold))
        .group_by("user_id")
        .agg(cut=pl.col("timestamp").min())
    )
    history = rows.filter((pl.col("domain") == source) & (pl.col("split") == "train")).join(
        cut, on="user_id", how="left"
    )
    causal = history.filter(pl.col("cut").is_null() | (pl.col("timestamp") < pl.col("cut")))
    cases = data.eval_cases(target, "test").filter(pl.col("segment") == "warm")
    n_items = data.n_items(target)

    def ndcg(scorer: object) -> float:
        return float(per_user_metrics(scorer, cases, n_items, ks=(10,))["NDCG@10"].mean())  # type: ignore[arg-type]

    result = {
        "warm_users": cases.height,
        "source_rows": history.height,
        "rows_after_cut": history.height - causal.height,
    }

    fusion = load_scorer(ws, "fusion", data, "cpu")
    result["fusion"] = {"as evaluated": ndcg(fusion)}
    encoder = load_backbone(ws, "source-only", data, "cpu")
    sequences = (
        causal.sort("user_id", "timestamp", "item_id")
        .group_by("user_id", maintain_order=True)
        .agg(items=pl.col("item_id"))
    )
    users = torch.from_numpy(sequences["user_id"].to_numpy().astype("int64"))
    vectors, known = torch.zeros_like(fusion.vectors.vectors), torch.zeros_like(fusion.vectors.known)
    with torch.no_grad():
        inputs = pad_left(sequences["items"].to_list(), encoder.model.cfg.max_len)
        vectors[users], known[users] = encoder.model.user_vector(inputs).float(), True
    fusion.vectors = UserVectors(vectors, known)
    result["fusion"]["source cut"] = ndcg(fusion)

    joint = load_scorer(ws, "joint", data, "cpu")
    result["joint"] = {"as evaluated": ndcg(joint)}
    n_target = joint.model.n_target
    target_rows = rows.filter((pl.col("domain") == target) & pl.col("split").is_in(["train", "valid"]))
    timelines = (
        pl.concat(
            [
                causal.select("user_id", "timestamp", token=pl.col("item_id") + n_target),
                target_rows.select("user_id", "timestamp", token=pl.col("item_id")),
            ]
        )
        .sort("user_id", "timestamp", "token")
        .group_by("user_id", maintain_order=True)
        .agg(pl.col("token").tail(joint.tokens.shape[1]))
    )
    tokens = torch.zeros_like(joint.tokens)
    tokens[torch.from_numpy(timelines["user_id"].to_numpy().astype("int64"))] = pad_left(
        timelines["token"].to_list(), tokens.shape[1]
    )
    joint.tokens = tokens
    result["joint"]["source cut"] = ndcg(joint)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
