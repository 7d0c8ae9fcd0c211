"""Rich renderings of the data stages' results (the evaluation table lives in report.py), and the one
table style every command uses."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.table import Table


def plain_table(title: str, caption: str | None = None, **options: object) -> Table:
    """xdrec's table style: a rule under the header and no other borders, so the data fit 80 columns."""
    return Table(
        title=title,
        caption=caption,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        **options,  # type: ignore[arg-type]
    )


def fetch_table(results: Sequence) -> Table:
    """Counts per domain; where the files came from and went to in the caption (full paths: `--json`)."""
    origins = sorted({r.origin.rstrip("/").rsplit("/", 1)[0] + "/" for r in results})
    folders = sorted({f"{r.path.parent}/" for r in results})
    caption = f"from {', '.join(origins)}\nwritten to {', '.join(folders)}"
    table = plain_table("raw data", caption=caption)
    table.add_column("domain", no_wrap=True)
    for column in ("rows", "users", "items", "skipped"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r.domain, f"{r.rows:,}", f"{r.users:,}", f"{r.items:,}", f"{r.skipped:,}")
    return table


def prepare_table(manifest: dict) -> Table:
    params = manifest["parameters"]
    title = (
        f"{manifest['source']} -> {manifest['target']}: {params['min_user']}/{params['min_item']}-core, "
        f"split {params['split']}, cold-start {params['cold_start']:.0%} (seed {params['seed']})"
    )
    table = plain_table(title)
    table.add_column("domain", no_wrap=True)
    for column in ("users", "items", "interactions", "train", "valid", "test"):
        table.add_column(column, justify="right")
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


def dataset_warnings(counts: dict) -> list[str]:
    """What a prepared dataset (its manifest, or its overlap report) cannot support, in words."""
    if counts["overlap_users"] == 0:
        return [
            "no user is active in both domains: a transfer has nothing to learn from and the cold-start "
            "segment is empty (other domains, or a lower --min-user?)"
        ]
    return []


def overlap_table(report: dict) -> Table:
    table = plain_table(f"user overlap: {report['dataset']}")
    table.add_column("domain", no_wrap=True)
    for column in ("users", "items", "interactions", "share in both", "history p10/p50/p90"):
        table.add_column(column, justify="right")
    for domain, counts in report["domains"].items():
        h = report["overlap_history"].get(domain) or {}
        history = f"{h['p10']:.0f}/{h['p50']:.0f}/{h['p90']:.0f}" if h else "-"
        table.add_row(
            domain,
            *(f"{counts[k]:,}" for k in ("users", "items", "interactions")),
            f"{report['overlap_share'][domain]:.1%}",
            history,
        )
    table.caption = (
        f"{report['overlap_users']:,} users active in both domains (Jaccard {report['jaccard']:.3f}); "
        f"{report['cold_users']:,} of them held out as cold-start; history: their number of interactions "
        "in the domain"
    )
    return table


def recommend_table(rec) -> Table:
    """`xdrec recommend`'s items, best first (`rec` is a pipeline.Recommendation)."""
    segment = "one domain" if rec.segment.endswith("-only") else rec.segment
    held_out = "; held out as cold-start in evaluation" if rec.held_out else ""
    title = f"{rec.user} ({segment}{held_out}) — top {len(rec.items)} by {rec.model}"
    table = plain_table(title, min_width=len(title))
    table.add_column("rank", justify="right")
    table.add_column("item", no_wrap=True)
    table.add_column(rec.score, justify="right")
    for item in rec.items:
        table.add_row(str(item["rank"]), item["item"], f"{item['score']:.4f}")
    return table


def absent_lines(absent: Sequence[dict[str, str]], heading: str) -> list[str]:
    """One line per model left out of a report or a recommendation: why, and the command that makes it."""
    return [f"{heading}: {a['model']}, {a['reason']} (`{a['fix']}`)" for a in absent]


# Short column names for the searched settings, so a trial fits one 80-column line (legend in the caption).
_PARAM_HEADERS = {
    "hidden": "dim",
    "blocks": "blk",
    "heads": "hd",
    "dropout": "drop",
    "max_len": "len",
    "lr": "lr",
    "weight_decay": "wd",
    "batch_size": "bs",
    "mapping_loss": "loss",
}


def _param(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".removeprefix("0") if 0.01 <= value < 1 else f"{value:.0e}".replace("e-0", "e-")
    return str(value)


def tune_table(result) -> Table:
    """`xdrec tune`'s trials, in order, the stored best one starred (`result` is a tuning.TuneResult)."""
    best = result.best.trial if result.best else None
    params = list(dict.fromkeys(p for t in result.trials for p in t.params))
    legend = ", ".join(f"{_PARAM_HEADERS[p]} = {p}" for p in params if _PARAM_HEADERS.get(p, p) != p)
    caption = (
        f"validation NDCG@10 (test never read); ★ = best, stored in {result.settings} and used by "
        f"pretrain / transfer / run unless an option overrides it; {legend}"
    )
    table = plain_table(
        f"tune {result.model} on {result.dataset}: {len(result.trials)} trials", caption=caption
    )
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("NDCG@10", justify="right", no_wrap=True)
    table.add_column("ep", justify="right", no_wrap=True)
    table.add_column("sec", justify="right", no_wrap=True)
    for p in params:
        table.add_column(_PARAM_HEADERS.get(p, p), justify="right", no_wrap=True)
    for t in result.trials:
        star = t.number == best
        table.add_row(
            f"★{t.number}" if star else str(t.number),
            t.state,
            "-" if t.value is None else f"{t.value:.4f}".removeprefix("0"),
            "-" if t.epochs is None else str(t.epochs),
            "-" if t.seconds is None else f"{t.seconds:.0f}",
            *(_param(t.params[p]) if p in t.params else "-" for p in params),
            style="bold green" if star else None,
        )
    return table
