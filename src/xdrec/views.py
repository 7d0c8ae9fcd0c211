"""Rich renderings of the data stages' results (the evaluation table lives in report.py)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table


def fetch_table(results: Sequence) -> Table:
    table = Table(title="raw data")
    for column in ("domain", "rows", "users", "items", "skipped", "from", "written to"):
        table.add_column(
            column, justify="right" if column in ("rows", "users", "items", "skipped") else "left"
        )
    for r in results:
        table.add_row(
            r.domain,
            f"{r.rows:,}",
            f"{r.users:,}",
            f"{r.items:,}",
            f"{r.skipped:,}",
            str(r.origin),
            str(r.path),
        )
    return table


def prepare_table(manifest: dict) -> Table:
    params = manifest["parameters"]
    title = (
        f"{manifest['source']} -> {manifest['target']}: {params['min_user']}/{params['min_item']}-core, "
        f"split {params['split']}, cold-start {params['cold_start']:.0%} (seed {params['seed']})"
    )
    table = Table(title=title)
    for column in ("domain", "users", "items", "interactions", "train", "valid", "test"):
        table.add_column(column, justify="left" if column == "domain" else "right")
    for domain, counts in manifest["domains"].items():
        splits = counts["splits"]
        table.add_row(
            domain,
            *(f"{counts[k]:,}" for k in ("users", "items", "interactions")),
            *(f"{splits.get(s, 0):,}" for s in ("train", "valid", "test")),
        )
    table.caption = (
        f"{manifest['users']:,} users, {manifest['overlap_users']:,} in both domains, "
        f"{manifest['cold_users']:,} held out as cold-start"
    )
    return table


def overlap_table(report: dict) -> Table:
    table = Table(title=f"user overlap: {report['dataset']}")
    table.add_column("domain")
    for column in ("users", "items", "interactions", "share in both", "overlap history p10/p50/p90 (mean)"):
        table.add_column(column, justify="right")
    for domain, counts in report["domains"].items():
        h = report["overlap_history"].get(domain) or {}
        history = f"{h['p10']:.0f}/{h['p50']:.0f}/{h['p90']:.0f} ({h['mean']:.1f})" if h else "-"
        table.add_row(
            domain,
            *(f"{counts[k]:,}" for k in ("users", "items", "interactions")),
            f"{report['overlap_share'][domain]:.1%}",
            history,
        )
    table.caption = (
        f"{report['overlap_users']:,} users active in both domains (Jaccard {report['jaccard']:.3f}); "
        f"{report['cold_users']:,} of them held out as cold-start"
    )
    return table
