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


def status_tables(status) -> list[Table | str]:
    """`xdrec status`: one table per part of the workspace (`status` is a status.Status), or a line saying
    the part is empty and the command that fills it."""
    out: list[Table | str] = []
    if status.datasets:
        table = plain_table("datasets (* current)")
        for column in ("dataset", "split", "core", "cold-start", "seed", "users", "in both"):
            table.add_column(column, justify="left" if column in ("dataset", "split") else "right")
        for d in status.datasets:
            o = d["options"]
            table.add_row(
                ("* " if d["current"] else "  ") + d["name"],
                str(o.get("split", "?")),
                f"{o.get('min_user', '?')}/{o.get('min_item', '?')}",
                f"{o['cold_start']:.0%}" if isinstance(o.get("cold_start"), float) else "?",
                str(o.get("seed", "?")),
                f"{d['users']:,}" if isinstance(d["users"], int) else "?",
                f"{d['overlap_users']:,}" if isinstance(d["overlap_users"], int) else "?",
            )
        out.append(table)
    else:
        out.append("datasets: none prepared (`xdrec prepare SOURCE TARGET`)")
    if status.models:
        table = plain_table(f"models of {status.dataset}")
        for column in ("model", "scores", "state", "why", "rebuild with"):
            table.add_column(column, no_wrap=column in ("model", "rebuild with"))
        for m in status.models:
            table.add_row(m.model, " ".join(m.domains), m.state, m.reason or "", m.fix)
        out.append(table)
    elif status.dataset is None:
        out.append("models: none (prepare a dataset first)")
    if status.embeddings:
        table = plain_table("user vectors (embeddings/)")
        for column in ("of model", "state", "why", "rebuild with"):
            table.add_column(column, no_wrap=column in ("of model", "rebuild with"))
        for e in status.embeddings:
            table.add_row(e["name"], e["state"], e["reason"], e["fix"])
        out.append(table)
    if status.reports:
        table = plain_table("reports (reports/)")
        for column in ("dataset", "domain", "protocol", "models", "written"):
            table.add_column(column, justify="right" if column == "models" else "left")
        for r in status.reports:
            table.add_row(r["dataset"], r["domain"], str(r["protocol"]), str(len(r["models"])), r["written"])
        out.append(table)
    else:
        out.append("reports: none (`xdrec evaluate`)")
    if status.tuning:
        table = plain_table("tuning studies (tuning/)")
        for column in ("dataset", "model", "trials", "best trial", "validation"):
            table.add_column(column, justify="left" if column in ("dataset", "model") else "right")
        for t in status.tuning:
            value = f"{t['metric']} {t['value']:.4f}" if t["value"] is not None else "no finished trial"
            best = str(t["best_trial"]) if t["best_trial"] is not None else "-"
            table.add_row(t["dataset"], t["model"], str(t["trials"]), best, value)
        out.append(table)
    else:
        out.append("tuning studies: none (`xdrec tune MODEL`)")
    return out


def status_summary(status) -> str:
    """The answer first: how many models of the dataset are fresh, stale and missing, and what to run."""
    if status.dataset is None:
        return "no prepared dataset: run `xdrec prepare SOURCE TARGET` (or `xdrec demo`)"
    states = [m.state for m in status.models]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("fresh", "stale", "missing") if s in states)
    todo = " (`xdrec run` rebuilds what is stale or missing; each row says its own command)"
    return f"models of {status.dataset}: {counts or 'none'}" + (todo if set(states) - {"fresh"} else "")


def users_table(frame, segment: str | None) -> Table:
    """`xdrec users`: raw ids with their segment and history sizes (`frame` from status.users)."""
    table = plain_table(f"users{f' ({segment})' if segment else ''}: {frame.height:,} shown")
    table.add_column("user", no_wrap=True)
    table.add_column("segment")
    table.add_column("held out", justify="center")
    table.add_column("source", justify="right")
    table.add_column("target", justify="right")
    for row in frame.iter_rows(named=True):
        table.add_row(
            row["user"],
            row["segment"],
            "yes" if row["held_out"] else "",
            str(row["source"]),
            str(row["target"]),
        )
    table.caption = (
        "held out: a cold-start user of the evaluation (their target history is all in the test split)"
    )
    return table
