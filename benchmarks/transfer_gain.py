"""Does the transfer pay off? Paired comparisons of every trained model against its segment's baseline.

    PYTHONPATH=src python benchmarks/transfer_gain.py --workspace fk            # after `xdrec run ...` there
    PYTHONPATH=src python benchmarks/transfer_gain.py --workspace fk --json

For each model in the workspace's models/ that scores the target domain (plus popularity), this ranks the
test split's users with the project's full-ranking evaluation (`per_user_metrics`, history masked) and
compares it with a baseline on the SAME users: target-only on `warm` users, popularity on `cold` users.
The difference of the per-user NDCG@10 gets a paired bootstrap 95% CI (users resampled with replacement,
the same resample for both models); "win" / "loss" when the CI excludes zero. Next to it, what every
choice was made on: for warm users the model's NDCG@10 on the valid split's warm users (computed here the
same way), for cold users the pseudo-cold NDCG@10 its training recorded (`best_valid`, for the models that
early-stop on pseudo-cold users; valid has no cold users).

`--by-history` splits the warm users by how many target items their history holds when they are ranked
(`xdrec evaluate --by-history`'s segments; at test time the valid item counts too): where the transfer
helps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from xdrec.checkpoint import CONFIG
from xdrec.data.dataset import Dataset
from xdrec.errors import XdrecError
from xdrec.evaluation import COLD_SEGMENT, HISTORY_SEGMENTS, history_segments, per_user_metrics
from xdrec.store import POPULARITY, load_scorer, trained_models
from xdrec.workspace import Workspace, read_json

METRIC = "NDCG@10"
BASELINES = {"warm": "target-only", COLD_SEGMENT: POPULARITY}
SEGMENT_ORDER = ["warm", *HISTORY_SEGMENTS.values(), COLD_SEGMENT]


def by_history(cases: pl.DataFrame) -> pl.DataFrame:
    """`cases` with each warm user's segment replaced by their history length's (`history_segments`)."""
    return pl.concat([cases.filter(pl.col("segment") != "warm"), history_segments(cases)])


def baseline_of(segment: str) -> str:
    return BASELINES["warm"] if segment.startswith("warm") else BASELINES[segment]


def paired_ci(diff: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    """95% percentile CI of the mean of per-user differences, users resampled with replacement."""
    rng = np.random.default_rng(seed)
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(resamples)])
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def run(
    workspace: Workspace,
    models: list[str] | None,
    resamples: int,
    seed: int,
    device: str,
    history: bool = False,
) -> dict:
    data = Dataset.from_workspace(workspace)
    target = data.target
    names = models or [POPULARITY, *trained_models(workspace, data, target)]
    for baseline in BASELINES.values():
        if baseline not in names:
            names.append(baseline)
    cases = data.eval_cases(target, "test")
    warm_valid = data.eval_cases(target, "valid").filter(pl.col("segment") == "warm")
    if history:
        cases, warm_valid = by_history(cases), by_history(warm_valid)
    segments = [s for s in SEGMENT_ORDER if s in set(cases["segment"].to_list())]
    per_model, valid = {}, {}
    for name in names:
        scorer = load_scorer(workspace, name, data, device)
        n_items = data.n_items(target)
        per_model[name] = per_user_metrics(scorer, cases, n_items, ks=(10,)).sort("user_id")
        config = workspace.model_dir(name) / CONFIG
        meta = read_json(config) if config.exists() else {}
        pseudo_cold = "pseudo-cold" in str(meta.get("validation", ""))
        # ranked on validation as the choices were: with the weights validation chose, before any refit
        chosen = load_scorer(workspace, name, data, device, for_validation=True)
        warm = per_user_metrics(chosen, warm_valid, n_items, ks=(10,))
        valid[name] = {
            **{s: float(g[METRIC].mean()) for (s,), g in warm.group_by("segment")},
            COLD_SEGMENT: meta.get("best_valid", {}).get(METRIC) if pseudo_cold else None,
        }
    rows = []
    for segment in segments:
        baseline = baseline_of(segment)
        base = per_model[baseline].filter(pl.col("segment") == segment)
        for name, metrics in per_model.items():
            own = metrics.filter(pl.col("segment") == segment)
            if own.height == 0:
                continue
            diff = own[METRIC].to_numpy() - base[METRIC].to_numpy()
            lo, hi = paired_ci(diff, resamples, seed)
            rows.append(
                {
                    "segment": segment,
                    "model": name,
                    "users": own.height,
                    "valid": valid[name].get(segment),
                    METRIC: float(own[METRIC].mean()),
                    "against": baseline,
                    "delta": float(diff.mean()),
                    "ci": [lo, hi],
                    "verdict": "win" if lo > 0 else "loss" if hi < 0 else "",
                }
            )
    return {"dataset": data.name, "target": target, "resamples": resamples, "rows": rows}


def markdown(result: dict) -> str:
    lines = [
        f"{result['dataset']}, test split, full ranking; paired bootstrap ({result['resamples']} resamples)",
        "",
        f"| segment | model | users | valid {METRIC} | test {METRIC} | against | delta [95% CI] | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        valid = "" if r["valid"] is None else f"{r['valid']:.4f}"
        lo, hi = r["ci"]
        lines.append(
            f"| {r['segment']} | {r['model']} | {r['users']:,} | {valid} | {r[METRIC]:.4f} | "
            f"{r['against']} | {r['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}] | {r['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace after `xdrec run`")
    parser.add_argument("--model", action="append", help="models to compare (repeatable; default: all)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    parser.add_argument("--by-history", action="store_true", help="warm users by their history's length")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    try:
        workspace = Workspace(args.workspace)
        result = run(workspace, args.model, args.bootstrap, args.seed, args.device, args.by_history)
    except XdrecError as e:
        sys.exit(f"error: {e}")
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    print(f"{time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
