"""How far can a user's source history carry them in the target? Reference cold-start models, side by side.

    PYTHONPATH=src python benchmarks/cold_start.py --workspace fk            # after `xdrec run ...` there
    PYTHONPATH=src python benchmarks/cold_start.py --workspace fk --json

The bar set for cold start is the best transfer strategy at 2x popularity's NDCG@10 on the `cold` segment.
This script asks whether the data allows that at all: it fits classic cross-domain cold-start models,
which share nothing with xdrec's SASRec strategies, on the same prepared dataset and ranks the same cold
users with the project's own evaluation (full ranking, `per_user_metrics`, bootstrap CIs). If models of
unrelated families all stop at the same height, that height is the data's, not one model's.

What every model sees, exactly as xdrec's strategies do:
- inputs: the source-domain training sequences (what `xdrec embed` reads);
- training pairs: users with both source and target training rows. A seeded tenth of them (the split
  `mapping` makes) is held out as pseudo-cold users (their target training items are the relevant set,
  ranked from source only); each model's hyper-parameter is chosen there, never on the test users;
- test: the cold-start users of `prepare --cold-start`, relevant = their whole held-out target history.
  No model ever sees a cold user's target rows, nor any valid/test row.
Scores get a tie-breaker of 1e-6 x normalised popularity, so a user whose source items share nothing
with the training users falls back to popularity rather than to a block of ties (which rank last).

Models (binary user x item matrices A: source, B: target, over the training users):
- popularity     target training counts of all users (the report's baseline, recomputed here; the
                 other models fit on the training users minus the pseudo-cold tenth, as `mapping` does)
- itemknn        cross-domain item co-occurrence: score = x_source @ (A^T B), rows scaled by source
                 popularity^-alpha; alpha chosen from {0, 0.5}
- userknn        cosine similarity of source-item sets, the k nearest training users' target items
                 summed by similarity; k from {50, 200, 1000}
- ridge          linear regression from source items to target items (EASE-like, across domains):
                 W = (A^T A + lambda I)^-1 A^T B; lambda from {1e3, 3e3, 1e4, 3e4, 1e5}
- softmax-bag    a learned bag-of-source-items encoder (L2-normalised, dropout 0.3, 64 dims) and a
                 softmax over target items (bias starts at log popularity), AdamW lr 1e-3 wd 1.0,
                 epochs early-stopped on the pseudo-cold users
The table also lists the `cold` rows of the workspace's last full-ranking report (xdrec's strategies), if any.

Dense matrices keep the code short: this is meant for catalogues like food_kitchen's (thousands of items),
and it refuses inputs whose dense matrices would pass --max-cells.
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
from torch import Tensor, nn

from xdrec.data.dataset import Dataset
from xdrec.errors import XdrecError
from xdrec.evaluation import COLD_SEGMENT, per_user_metrics, summarize
from xdrec.pipeline import report_dir
from xdrec.strategies.mapping import pseudo_cold_cases, split_pseudo_cold
from xdrec.workspace import Workspace

METRICS = ("NDCG@10", "HR@10", "MRR")
HEADLINE = "NDCG@10"
Model = Callable[[Tensor], Tensor]  # source rows (B, n_source + 1) -> target scores (B, n_target + 1)


class ColdScorer:
    """A Scorer that ranks from source history alone (cold users have no target history to read)."""

    def __init__(self, name: str, score_users: Model) -> None:
        self.name, self.score_users = name, score_users

    @torch.no_grad()
    def scores(self, user_ids: Tensor, history: Tensor) -> Tensor:
        return self.score_users(user_ids.cpu())


def binary_matrix(sequences: pl.DataFrame, n_users: int, n_items: int) -> Tensor:
    """(n_users, n_items + 1) float 0/1: which items each user has (column 0 is padding, always 0)."""
    pairs = sequences.explode("items").drop_nulls()
    out = torch.zeros(n_users, n_items + 1)
    out[pairs["user_id"].to_numpy().astype(np.int64), pairs["items"].to_numpy().astype(np.int64)] = 1.0
    return out


def itemknn(a: Tensor, b: Tensor, alpha: float) -> Model:
    co = a.T @ b  # (source items, target items): training users who have both
    co = co / a.sum(0).clamp(min=1)[:, None] ** alpha
    return lambda x: x @ co


def userknn(a: Tensor, b: Tensor, k: int) -> Model:
    unit = F.normalize(a, dim=1)

    def score(x: Tensor) -> Tensor:
        sim = F.normalize(x, dim=1) @ unit.T  # (B, training users)
        top = sim.topk(min(k, sim.shape[1]), dim=1)
        return torch.zeros_like(sim).scatter_(1, top.indices, top.values) @ b

    return score


def ridge(a: Tensor, b: Tensor, lam: float) -> Model:
    gram = (a.T @ a).double() + lam * torch.eye(a.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, (a.T @ b).double()).float()
    return lambda x: x @ weights


class SoftmaxBag(nn.Module):
    def __init__(self, n_source: int, popularity: Tensor, dim: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        self.encode = nn.Linear(n_source, dim, bias=False)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, len(popularity))
        with torch.no_grad():
            self.out.bias.copy_(torch.log1p(popularity))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.out(self.encode(F.normalize(self.drop(x), dim=1)))
        logits[:, 0] = float("-inf")  # padding
        return logits


def train_softmax_bag(
    a: Tensor, b: Tensor, popularity: Tensor, validate: Callable[[Model], float], seed: int
) -> tuple[Model, str, float]:
    torch.manual_seed(seed)
    model = SoftmaxBag(a.shape[1], popularity)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0)
    best, best_epoch, best_state, patience = -1.0, 0, None, 0
    for epoch in range(1, 101):
        model.train()
        for batch in torch.randperm(len(a)).split(256):
            target = b[batch]
            log_p = F.log_softmax(model(a[batch]), dim=1).clamp(min=-1e9)
            loss = -((log_p * target).sum(1) / target.sum(1)).mean()  # multinomial likelihood per user
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        value = validate(model)
        if value > best:
            best, best_epoch, patience = value, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            patience += 1
            if patience == 5:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, f"epochs={best_epoch}", best


def report_rows(workspace: Workspace, data: Dataset) -> list[dict]:
    """The `cold` rows of xdrec's last full-ranking report in this workspace (empty if there is none)."""
    path = report_dir(workspace, data, data.target) / "report.json"
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    return [r for r in report["results"] if r["segment"] == COLD_SEGMENT and r["model"] != "popularity"]


def run(workspace: Workspace, seed: int, max_cells: int, log: Callable[[str], None]) -> dict:
    data = Dataset.from_workspace(workspace)
    source, target = data.source, data.target
    n_users, n_source, n_target = data.users.height, data.n_items(source), data.n_items(target)
    if n_users * max(n_source, n_target) > max_cells:
        raise XdrecError(f"{n_users} users x {max(n_source, n_target)} items is past --max-cells {max_cells}")
    xs = binary_matrix(data.train_sequences(source), n_users, n_source)
    xt = binary_matrix(data.train_sequences(target), n_users, n_target)
    # The same split of the users with source and target training rows as `mapping` makes.
    has_source = pl.Series("user_id", torch.nonzero(xs.sum(1) > 0).flatten().numpy())
    sequences = data.train_sequences(target).filter(pl.col("user_id").is_in(has_source.implode()))
    fit, held_out = split_pseudo_cold(sequences, seed)
    fit_users = torch.from_numpy(fit["user_id"].to_numpy().astype("int64"))
    a, b = xs[fit_users], xt[fit_users]
    popularity = b.sum(0)
    # The report's baseline: counts over every training row, so the ratios below are the report's ratios.
    counts = torch.as_tensor(data.item_counts(target), dtype=torch.float32)
    tie_break = 1e-6 * counts / counts.max()

    pseudo_cold = pseudo_cold_cases(held_out)
    cold = data.eval_cases(target, "test").filter(pl.col("segment") == COLD_SEGMENT)
    if cold.height == 0:
        raise XdrecError("the dataset has no cold-start users: prepare it with --cold-start > 0")

    def scorer(name: str, model: Model) -> ColdScorer:
        return ColdScorer(name, lambda users: model(xs[users]) + tie_break)

    def mean(name: str, model: Model, cases: pl.DataFrame) -> float:
        return float(per_user_metrics(scorer(name, model), cases, n_target, ks=(10,))[HEADLINE].mean())

    def pick(name: str, build: Callable[[float], Model], grid: list[float], label: str):
        scored = [(mean(name, build(v), pseudo_cold), v) for v in grid]
        best_value, best = max(scored)
        log(f"{name}: " + ", ".join(f"{label}={v:g} -> {s:.4f}" for s, v in scored))
        return build(best), f"{label}={best:g}", best_value

    start = time.perf_counter()
    models: list[tuple[str, Model, str, float]] = []
    models.append(("popularity", lambda x: torch.zeros(len(x), n_target + 1), "", float("nan")))  # tie_break
    models.append(("itemknn", *pick("itemknn", lambda v: itemknn(a, b, v), [0.0, 0.5], "alpha")))
    models.append(("userknn", *pick("userknn", lambda v: userknn(a, b, int(v)), [50, 200, 1000], "k")))
    models.append(("ridge", *pick("ridge", lambda v: ridge(a, b, v), [1e3, 3e3, 1e4, 3e4, 1e5], "lambda")))
    bag = train_softmax_bag(a, b, popularity, lambda m: mean("softmax-bag", m, pseudo_cold), seed)
    models.append(("softmax-bag", *bag))
    log(f"fitted in {time.perf_counter() - start:.0f} s")

    rows = []
    for name, model, chosen, valid in models:
        per_user = per_user_metrics(scorer(name, model), cold, n_target, ks=(10,))
        summary = summarize(per_user, bootstrap=1000, seed=seed).filter(pl.col("segment") == COLD_SEGMENT)
        row = {"model": name, "family": "reference", "chosen": chosen, "pseudo_cold_valid": valid}
        for metric in METRICS:
            row[metric] = summary[metric][0]
            row[f"{metric}_ci"] = [summary[f"{metric}_lo"][0], summary[f"{metric}_hi"][0]]
        rows.append(row)
    for r in report_rows(workspace, data):
        rows.append(
            {"model": r["model"], "family": "xdrec (last report)", "chosen": "", "pseudo_cold_valid": None}
            | {m: r[m] for m in METRICS}
            | {f"{m}_ci": r["ci"][m] for m in METRICS}
        )
    base = rows[0][HEADLINE]
    for row in rows:
        row["x_popularity"] = row[HEADLINE] / base
    return {
        "dataset": data.name,
        "target": target,
        "cold_users": cold.height,
        "training_users": len(fit_users),
        "pseudo_cold_users": held_out.height,
        "items": {source: n_source, target: n_target},
        "rows": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['dataset']}: {result['cold_users']} cold users, full ranking over "
        f"{result['items'][result['target']]} {result['target']} items",
        "",
        "| model | family | chosen on pseudo-cold | NDCG@10 [95% CI] | HR@10 | MRR | x popularity |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lo, hi = r[f"{HEADLINE}_ci"]
        lines.append(
            f"| {r['model']} | {r['family']} | {r['chosen']} | {r[HEADLINE]:.4f} [{lo:.4f}, {hi:.4f}] | "
            f"{r['HR@10']:.4f} | {r['MRR']:.4f} | {r['x_popularity']:.2f} |"
        )
    return "\n".join(lines)


def print_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with a prepared dataset")
    parser.add_argument("--seed", type=int, default=42, help="pseudo-cold split and training seed")
    parser.add_argument("--max-cells", type=int, default=200_000_000, help="largest dense users x items")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        result = run(Workspace(args.workspace), args.seed, args.max_cells, log=print_stderr)
    except XdrecError as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result, indent=2) if args.json else markdown(result))


if __name__ == "__main__":
    main()
