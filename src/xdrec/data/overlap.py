"""`xdrec overlap`: how many users the two domains share, and how much history they bring."""

from __future__ import annotations

import polars as pl

from xdrec.data.dataset import Dataset

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def overlap_report(dataset: Dataset) -> dict:
    """A JSON-ready summary of the prepared dataset's domains and the users active in both.

    {"dataset", "domains": {D: {"users", "items", "interactions"}}, "overlap_users",
     "overlap_share": {D: share of D's users active in both}, "jaccard", "cold_users",
     "overlap_history": {D: {"mean", "min", "p10", ..., "p90", "max"}}}
    """
    events = dataset.interactions()
    per_user = events.group_by("user_id", "domain").len().collect()
    both_users = per_user.group_by("user_id").len().filter(pl.col("len") == 2).select("user_id")
    n_both = both_users.height
    domains, share, history = {}, {}, {}
    for domain in dataset.domains:
        counts = dataset.manifest["domains"][domain]
        domains[domain] = {k: counts[k] for k in ("users", "items", "interactions")}
        share[domain] = n_both / counts["users"] if counts["users"] else 0.0
        lengths = per_user.filter(pl.col("domain") == domain).join(both_users, on="user_id")["len"]
        history[domain] = _distribution(lengths)
    n_union = per_user["user_id"].n_unique()
    return {
        "dataset": dataset.name,
        "source": dataset.source,
        "target": dataset.target,
        "domains": domains,
        "overlap_users": n_both,
        "overlap_share": share,
        "jaccard": n_both / n_union if n_union else 0.0,
        "cold_users": dataset.manifest["cold_users"],
        "overlap_history": history,
    }


def _distribution(lengths: pl.Series) -> dict[str, float]:
    if lengths.len() == 0:
        return {}
    out = {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max())}
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = float(lengths.quantile(q, interpolation="nearest"))
    return out
