"""Rendering an evaluation `Report`: a rich table, JSON, and a PNG bar plot.

The protocol is in every output's title or top-level key: a sampled-N number is never shown without
the word SAMPLED beside it, and `save_report` gives sampled reports their own file names so they can never
overwrite the full-ranking headline.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from rich.table import Table
from rich.text import Text

from xdrec.evaluation import ALL_SEGMENT, COLD_SEGMENT, TIE_RULE, Report
from xdrec.views import plain_table
from xdrec.workspace import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BEST_STYLE = "bold green"
WIN, LOSS = "▲", "▼"  # the paired CI of the headline delta is above / below zero


def segment_label(segment: str) -> str:
    """A segment's name on screen: `<role>-only` (users with no history in the other domain) would read
    as the model of that name, so it shows as `one domain`."""
    return "one domain" if segment.endswith("-only") else segment


def direction(report: Report) -> str:
    """ "Books -> Movies": where the transfer comes from and goes to (the domain alone without a pair)."""
    return f"{report.other} -> {report.domain}" if report.other else report.domain


def protocol_title(report: Report) -> str:
    """One line that says what was ranked and how (the table's and the plot's title)."""
    where = f"{direction(report)}, {report.stage} split"
    if report.sampled:
        return (
            f"SAMPLED: positive(s) + {report.negatives} negatives per user (for comparison with papers; not "
            f"comparable to full ranking) — {where}"
        )
    return f"{direction(report)}: full ranking of {report.n_items:,} items, {report.stage} split"


def empty_note(report: Report) -> str:
    """What an empty report says instead of numbers."""
    return f"no user has a {report.stage} interaction in {report.domain}: nothing to rank there"


def _candidates(block: pl.DataFrame) -> pl.DataFrame:
    """The rows of a segment that compete: with numbers of their own (not `= another`, not n/a)."""
    return block.filter(pl.col("scored") & pl.col("same_as").is_null())


def _best(block: pl.DataFrame, metric: str) -> float | None:
    """The segment's best value of `metric`; None when nothing beats zero (no model earned a highlight)."""
    best = _candidates(block)[metric].max()
    return best if best else None  # type: ignore[return-value]


def _number(value: float) -> str:
    """A metric in [0, 1] in 5 characters (0.0183 -> .0183, 1 -> 1.000), so the table fits 80 columns."""
    return f"{value:.3f}" if value >= 1 else f"{value:.4f}".removeprefix("0")


def _mark(row: dict) -> str:
    """▲ / ▼ when the paired CI of the headline delta against the segment's base model excludes zero."""
    lo, hi = row["delta_lo"], row["delta_hi"]
    if lo is not None and lo > 0:
        return WIN
    return LOSS if hi is not None and hi < 0 else ""


def _bases(report: Report) -> str:
    """The base models, e.g. "target-only (cold users: popularity)"."""
    bases = dict(report.rows.select("segment", "delta_against").unique("segment").iter_rows())
    cold = bases.pop(COLD_SEGMENT, None)
    warm = sorted(set(bases.values()))
    return " / ".join(warm) + (f" (cold: {cold})" if cold and warm else (cold or ""))


def _missing_bases(report: Report) -> list[str]:
    """Base models some segment is compared with but that are not in the report."""
    missing = report.rows.filter(pl.col("delta").is_null() & pl.col("scored"))["delta_against"].drop_nulls()
    return sorted(set(missing.to_list()))


def legend(report: Report, *, plain: bool = False, width: int = 78) -> str:
    """The table's legend: short lines (at most `width` characters where the words allow), only for what
    the table shows."""
    percent = round(report.confidence * 100)
    headline, segments = report.headline, report.segments
    with_ci = report.rows[f"{headline}_lo"].is_not_null().any()
    parts = ["mean over users"]
    if with_ci:
        parts.append(f"CI: {percent}% interval of {headline}")
    parts.append(f"best per segment {'marked *' if plain else 'in bold'}, ★ = best {headline}")
    if with_ci:
        parts.append(f"{WIN} {LOSS}: significantly above / below {_bases(report)}, paired")
    if report.rows["same_as"].is_not_null().any():
        parts.append("= X: gives these users X's scores")
    if not report.rows["scored"].all():
        parts.append(f"—: cannot rank users with no {report.domain} history")
    parts += [f"no {base} in this report: nothing to compare with" for base in _missing_bases(report)]
    words = []
    if ALL_SEGMENT in segments:
        words.append("all = every user but cold")
    if COLD_SEGMENT in segments:
        words.append(
            f"cold = no {report.domain} history" + (f", ranked from {report.other}" if report.other else "")
        )
    if any(s.endswith("-only") for s in segments):
        words.append(f"one domain = no {report.other or 'other-domain'} history")
    if words:
        parts.append("segments: " + ", ".join(words))
    parts.append("ties count against the model")
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += f"; {part}"
        else:
            lines.append(part)
    return "\n".join(lines)


def render_table(report: Report, *, plain: bool = False) -> Table:
    """One line per model, segments grouped (one section each): the means of every metric, the headline
    metric's (NDCG at the first K) bootstrap CI, ▲ / ▼ after it for a significant win / loss against the
    segment's base model (paired bootstrap, `xdrec.evaluation.paired_deltas`), the best value per segment
    and metric in bold green, and the segment's winner on the headline marked with ★. A model that gives
    a segment another's scores shows `= <that model>`; one that cannot rank the segment's users shows —.
    `--json` carries every metric's CI and each delta with its CI.

    plain: for a file or a pipe, where bold means nothing: the best values carry a `*` instead.
    An empty report (no user to rank in the domain) is a one-row table that says so."""
    if report.empty:
        table = plain_table(protocol_title(report), caption=None, title_style="bold")
        table.add_column("no results")
        table.add_row(empty_note(report))
        return table
    with_ci = report.rows[f"{report.headline}_lo"].is_not_null().any()
    table = plain_table(
        protocol_title(report),
        caption=legend(report, plain=plain),
        title_style="bold red" if report.sampled else "bold",
        caption_justify="left",
    )
    table.add_column("segment", style="bold", no_wrap=True)
    table.add_column("model", no_wrap=True)
    table.add_column("users", justify="right", no_wrap=True)
    # The headline first: it is what decides a segment's winner.
    metrics = [report.headline] + [m for m in report.metrics if m != report.headline]
    for metric in metrics:
        table.add_column(metric, justify="right", no_wrap=True)
        if metric == report.headline and with_ci:
            table.add_column("CI", justify="right", style="dim", no_wrap=True)

    width = len(metrics) + int(bool(with_ci))
    for segment in report.segments:
        block = report.rows.filter(pl.col("segment") == segment)
        # Highlighting a lone model would claim a win it did not have to earn.
        contested = _candidates(block).height > 1
        best = {metric: _best(block, metric) if contested else None for metric in report.metrics}
        for i, row in enumerate(block.iter_rows(named=True)):
            head = [segment_label(segment) if i == 0 else "", "", f"{row['users']:,}"]
            if row["same_as"] is not None or not row["scored"]:
                head[1] = row["model"]
                # `= name` across the headline and its CI column (where there is one: the table stays narrow)
                what = ["=", row["same_as"]] if with_ci else [f"= {row['same_as']}"]
                what = what if row["scored"] else ["—"]
                table.add_row(*head, *what, *[""] * (width - len(what)), end_section=i == block.height - 1)
                continue
            wins = row[report.headline] == best[report.headline]
            head[1] = Text(f"★ {row['model']}" if wins else row["model"], style=BEST_STYLE if wins else "")
            cells: list[Text | str] = list(head)
            for metric in metrics:
                top = row[metric] == best[metric]
                mark = "*" if top and plain else " " if plain else ""
                cell = Text(_number(row[metric]) + mark, style=BEST_STYLE if top else "")
                if metric == report.headline:
                    significant = _mark(row)
                    cell.append(significant, style="green" if significant == WIN else "red")
                cells.append(cell)
                if metric == report.headline and with_ci:
                    lo, hi = row[f"{metric}_lo"], row[f"{metric}_hi"]
                    cells.append(f"{_number(lo)}-{_number(hi)}" if lo is not None else "")
            table.add_row(*cells, end_section=i == block.height - 1)
    return table


def verdict(report: Report) -> list[dict]:
    """One entry per segment: the model with the largest paired gain in the headline metric over the
    segment's base model, and whether its interval clears zero. Each entry: {"segment", "against",
    "metric", "model" (null when no model beats the base), "delta", "ci" ([lo, hi] or null),
    "significant", "line" (the sentence `run` and `evaluate` print)}."""
    out = []
    metric = report.headline
    for segment in report.segments:
        block = report.rows.filter(pl.col("segment") == segment)
        against = block["delta_against"][0]
        entry = {"segment": segment, "against": against, "metric": metric, "model": None, "delta": None}
        entry |= {"ci": None, "significant": False}
        label = segment_label(segment)
        rivals = (
            _candidates(block)
            .filter((pl.col("model") != against) & pl.col("delta").is_not_null())
            .sort("delta", descending=True, maintain_order=True)
        )
        if against not in report.models:
            entry["line"] = f"{label}: no {against} in this report, nothing to compare with"
        elif rivals.height == 0:
            entry["line"] = f"{label}: no other model than {against} ranks these users"
        else:
            top = rivals.row(0, named=True)
            ci = None if top["delta_lo"] is None else [top["delta_lo"], top["delta_hi"]]
            gain = f"{top['model']} {top['delta']:+.4f} {metric} over {against}"
            interval = "" if ci is None else f" [{ci[0]:+.4f}, {ci[1]:+.4f}]"
            if top["delta"] <= 0:
                entry["line"] = f"{label}: no model beats {against}"
            elif ci is None:
                entry |= {"model": top["model"], "delta": top["delta"]}
                entry["line"] = f"{label}: {gain} (no interval: --bootstrap 0)"
            elif ci[0] > 0:
                entry |= {"model": top["model"], "delta": top["delta"], "ci": ci, "significant": True}
                entry["line"] = f"{label}: {gain}{interval}, significant"
            else:
                entry |= {"model": top["model"], "delta": top["delta"], "ci": ci}
                entry["line"] = f"{label}: no model significantly beats {against} (closest: {gain}{interval})"
        out.append(entry)
    return out


def verdict_lines(reports: list[Report]) -> list[str]:
    """Every report's verdict sentences; prefixed by the domain when there are several domains."""
    several = len({r.domain for r in reports}) > 1
    return [
        (f"{r.domain} " if several else "") + (f"({r.protocol}) " if r.sampled else "") + e["line"]
        for r in reports
        if not r.empty
        for e in verdict(r)
    ]


def report_to_json(report: Report) -> dict:
    """{"protocol", "domain", "from", "stage", "n_items", "negatives", "ks", "metrics", "confidence",
    "bootstrap", "ties", "verdict": [`verdict` entries], "results": [{"model", "domain", "segment",
    "users", "protocol", "same_as", "scored", <metric>: mean, ..., "ci": {<metric>: [lo, hi]}, "delta":
    {"against": <baseline>, <headline>: d, "ci": [lo, hi]}}]}; "ci" is empty (and the delta's null) when
    the report was made without bootstrap. "same_as" names the model whose scores this one gives the
    segment (its numbers are that model's); a row with "scored": false cannot rank the segment's users and
    has null numbers. When the segment's baseline model is not in the report, the delta's value and CI are
    null and "note" says why. A domain with no user to rank has "results": [] and a "note" that says so."""
    results = []
    for row in report.rows.iter_rows(named=True):
        result = {key: row[key] for key in ("model", "domain", "segment", "users", "protocol", "same_as")}
        result["scored"] = row["scored"]
        result |= {metric: row[metric] for metric in report.metrics}
        result["ci"] = {
            metric: [row[f"{metric}_lo"], row[f"{metric}_hi"]]
            for metric in report.metrics
            if row[f"{metric}_lo"] is not None
        }
        result["delta"] = _delta_json(report, row)
        results.append(result)
    return {
        "protocol": report.protocol,
        "domain": report.domain,
        "from": report.other or None,
        "stage": report.stage,
        "n_items": report.n_items,
        "negatives": report.negatives,
        "ks": list(report.ks),
        "metrics": report.metrics,
        "confidence": report.confidence,
        "bootstrap": report.bootstrap,
        "ties": TIE_RULE,
        "verdict": [] if report.empty else verdict(report),
        "results": results,
        "absent": list(report.absent),  # models left out: [{"model", "reason", "fix"}]
    } | ({"note": empty_note(report)} if report.empty else {})


def reports_to_json(reports: list[Report]) -> dict:
    """{"reports": [one `report_to_json` per domain]}: one shape whatever the number of domains."""
    return {"reports": [report_to_json(report) for report in reports]}


def _delta_json(report: Report, row: dict) -> dict:
    delta = {"against": row["delta_against"], report.headline: row["delta"], "ci": None}
    if row["delta_lo"] is not None:
        delta["ci"] = [row["delta_lo"], row["delta_hi"]]
    if not row["scored"]:
        delta["note"] = "cannot rank these users: no comparison"
    elif row["delta"] is None:
        delta["note"] = f"{row['delta_against']} is not in this report: no paired comparison"
    return delta


def save_report(report: Report, directory: Path) -> dict[str, Path]:
    """Write report.json and report.png (sampled: report-sampled-N.json/.png) into `directory` as one unit.

    The folder is rebuilt beside the old one (its other files linked in) and swapped in whole, so a kill
    or a full disk leaves the old pair or the new pair, never a new JSON beside an old plot.
    Returns {"json": path, "plot": path} (`report_paths`).
    """
    paths = report_paths(report, directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir(parents=True)
        for old in sorted(directory.iterdir()) if directory.is_dir() else []:
            if (
                old.name not in (paths["json"].name, paths["plot"].name)
                and old.is_file()
                and not old.is_symlink()
            ):
                _link_or_copy(old, tmp / old.name)
        (tmp / paths["json"].name).write_text(
            json.dumps(report_to_json(report), indent=2, sort_keys=True) + "\n"
        )
        plot_figure(report).savefig(tmp / paths["plot"].name, format="png", dpi=120)
    return paths


def keeps_intervals(report: Report, directory: Path) -> Path | None:
    """The saved report that `report` would replace when that one has confidence intervals and `report`
    has none (`evaluate --bootstrap 0`, a quick look): it is not replaced silently. None otherwise."""
    path = report_paths(report, directory)["json"]
    if report.bootstrap or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return path if isinstance(saved, dict) and saved.get("bootstrap") else None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def report_paths(report: Report, directory: Path) -> dict[str, Path]:
    """Where `save_report` writes `report` in `directory`: {"json": path, "plot": path}."""
    stem = "report" if not report.sampled else f"report-{report.protocol}"
    return {"json": directory / f"{stem}.json", "plot": directory / f"{stem}.png"}


def plot_figure(report: Report) -> Figure:
    """Grouped bars of the headline metric per segment and model, each labelled with its value (so a zero
    is seen, not missing), with the bootstrap CI as error bars (said on the axis)."""
    # The object-oriented API with an explicit Agg canvas: no pyplot global state, no GUI backend switched
    # under a caller (a notebook, say), and matplotlib's import cost only when a plot is actually written.
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric, segments, models = report.headline, report.segments, report.models
    if report.empty:
        figure = Figure(figsize=(6.0, 2.0), layout="constrained")
        FigureCanvasAgg(figure)
        figure.text(0.5, 0.5, f"{protocol_title(report)}\n{empty_note(report)}", ha="center", va="center")
        return figure
    width = 0.8 / max(len(models), 1)
    figure = Figure(figsize=(max(6.0, 2.0 + 0.6 * len(segments) * len(models)), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    x = np.arange(len(segments))
    for i, model in enumerate(models):
        rows = report.rows.filter(pl.col("model") == model)
        by_segment = {row["segment"]: row for row in rows.iter_rows(named=True)}
        means = np.array(
            [by_segment[s][metric] if s in by_segment else np.nan for s in segments], dtype=float
        )
        lows = np.array([_or_nan(by_segment.get(s, {}).get(f"{metric}_lo")) for s in segments])
        highs = np.array([_or_nan(by_segment.get(s, {}).get(f"{metric}_hi")) for s in segments])
        errors = np.clip(np.nan_to_num(np.stack([means - lows, highs - means])), 0.0, None)
        bars = axes.bar(
            x + (i - (len(models) - 1) / 2) * width, means, width, yerr=errors, capsize=3, label=model
        )
        labels = []
        for s, m in zip(segments, means, strict=True):
            row = by_segment.get(s)
            if row is None:
                labels.append("")
            elif not row["scored"]:  # cannot rank these users: no bar (bar_label skips it), said so
                labels.append("")
                axes.text(bars[len(labels) - 1].get_x() + width / 2, 0.0, "n/a", ha="center", va="bottom",
                          fontsize=7)  # fmt: skip
            elif row["same_as"] is not None:
                labels.append(f"={_number(m)}")
            else:
                labels.append(_number(m) + _mark(row))  # ▲ / ▼: a significant win / loss
        axes.bar_label(bars, labels=labels, fontsize=6, padding=2)
    users = dict(report.rows.select("segment", "users").unique("segment").iter_rows())
    axes.set_xticks(x, [f"{segment_label(segment)}\n({users[segment]:,} users)" for segment in segments])
    with_ci = report.rows[f"{metric}_lo"].is_not_null().any()
    percent = round(report.confidence * 100)
    axes.set_ylabel(
        f"{metric} ({report.protocol})" + (f"\nerror bars: {percent}% bootstrap CI" if with_ci else "")
    )
    marks = f"{WIN} {LOSS}: significantly above / below {_bases(report)}; " if with_ci else ""
    axes.set_title(
        f"{protocol_title(report)}\n{marks}=: same scores as that model; n/a: cannot rank these users",
        fontsize=9,
        color="darkred" if report.sampled else "black",
        wrap=True,
    )
    axes.legend(fontsize=8)
    axes.set_ylim(bottom=0.0)
    return figure


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)
