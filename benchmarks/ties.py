"""Does the rank's tie rule matter? xdrec counts ties against the model, ABXI only strictly higher scores.

    PYTHONPATH=src python benchmarks/ties.py --workspace afk [--negatives 999]

For every model of every evaluated domain (`xdrec evaluate`'s: both under the mixed split), each test
user's relevant item is ranked twice on the same scores and candidates as `xdrec evaluate` ranks it (full:
every item of the domain but the user's history; sampled: the same seeded negatives): once with ties
against the model (rank = 1 + candidates scoring >= it, xdrec's rule) and once with ties for it
(1 + candidates scoring > it, ABXI's). Prints, per domain, model and protocol, how many users have any
candidate tied with their item and NDCG@10 / HR@10 / MRR under both rules, as JSON lines. The pessimistic
numbers are checked against `per_user_metrics`, so the script measures the evaluation as it is.
Leave-one-out only (one relevant item per user), as under the mixed split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from xdrec.data.dataset import Dataset
from xdrec.evaluation import per_user_metrics, sample_negatives
from xdrec.pipeline import evaluation_domains
from xdrec.popularity import PopularityScorer
from xdrec.scoring import Scorer, pad_left
from xdrec.store import POPULARITY, load_scorer, trained_models
from xdrec.workspace import Workspace


def counts(
    scorer: Scorer, cases: pl.DataFrame, n_items: int, negatives: int | None, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Per user: candidates scoring >= the relevant item, and candidates scoring > it."""
    drawn = sample_negatives(cases, n_items, negatives, seed=0) if negatives else None
    ge, gt = [], []
    with torch.no_grad():
        for start in range(0, cases.height, batch):
            part = cases.slice(start, batch)
            history = pad_left(part["history"].to_list())
            scores = scorer.scores(torch.from_numpy(part["user_id"].to_numpy().astype(np.int64)), history)
            scores = scores.float().cpu().nan_to_num(nan=-torch.inf)
            target = torch.tensor([t[0] for t in part["targets"].to_list()])
            mine = scores.gather(1, target[:, None])  # (B, 1)
            if drawn is None:
                candidate = torch.ones_like(scores, dtype=torch.bool)
                candidate[:, 0] = False
                candidate.scatter_(1, history, False)
            else:
                candidate = torch.zeros_like(scores, dtype=torch.bool)
                candidate.scatter_(1, drawn[start : start + part.height], True)
                candidate[:, 0] = False  # 0 marks "no negative left"
            candidate.scatter_(1, target[:, None], False)
            ge.append(((scores >= mine) & candidate).sum(1).numpy())
            gt.append(((scores > mine) & candidate).sum(1).numpy())
    return np.concatenate(ge), np.concatenate(gt)


def metrics(above: np.ndarray) -> dict[str, float]:
    rank = 1 + above
    hit = rank <= 10
    ndcg = float(np.where(hit, 1 / np.log2(rank + 1), 0).mean())
    return {"NDCG@10": ndcg, "HR@10": float(hit.mean()), "MRR": float((1 / rank).mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace after `xdrec run`")
    parser.add_argument("--negatives", type=int, default=999, help="the sampled protocol's negatives")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    ws = Workspace(args.workspace)
    data = Dataset.from_workspace(ws)
    for domain in evaluation_domains(data):
        cases = data.eval_cases(domain, "test")
        if cases.height and cases["targets"].list.len().max() != 1:
            raise SystemExit("benchmarks/ties.py handles one relevant item per user (leave-one-out) only")
        n_items = data.n_items(domain)
        scorers: list[Scorer] = [PopularityScorer.from_dataset(data, domain)]
        scorers += [
            load_scorer(ws, m, data, "cpu") for m in trained_models(ws, data, domain) if m != POPULARITY
        ]
        for scorer in scorers:
            for negatives in (None, args.negatives):
                ge, gt = counts(scorer, cases, n_items, negatives)
                reference = per_user_metrics(scorer, cases, n_items, ks=(10,), negatives=negatives, seed=0)
                assert np.allclose(metrics(ge)["NDCG@10"], reference["NDCG@10"].mean()), (
                    "not evaluate's ranks"
                )
                row = {
                    "domain": domain,
                    "model": scorer.name,
                    "protocol": "full" if negatives is None else f"sampled-{negatives}",
                    "users": cases.height,
                    "users_with_a_tie": int((ge > gt).sum()),
                    "ties_against": metrics(ge),
                    "ties_for": metrics(gt),
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
