"""The table of `examples/afk_protocol.sh`: per domain, the single-domain SASRec and `joint` at each seed,
NDCG@10 with the paired delta against the SASRec [95% CI], full ranking and 999 sampled negatives, and
ABXI's published numbers beside them (its README, mean of 5 seeds).

    python benchmarks/afk_table.py ./afk          # reads ./afk/afk-results/{full,sampled}-<seed>.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ABXI = {"Grocery_and_Gourmet_Food": 0.1971, "Home_and_Kitchen": 0.1427}  # sampled-999 NDCG@10
MODEL = "joint"


def rows(path: Path) -> dict[str, dict[str, dict]]:
    """domain -> model -> its `all` row of the report."""
    out: dict[str, dict[str, dict]] = {}
    for report in json.loads(path.read_text())["reports"]:
        for row in report["results"]:
            if row["segment"] == "all":
                out.setdefault(report["domain"], {})[row["model"]] = row
    return out


def cell(row: dict) -> str:
    delta = row.get("delta") or {}
    if delta.get("NDCG@10") is None or row["model"] == delta.get("against"):
        return f"{row['NDCG@10']:.4f}"
    lo, hi = delta["ci"]
    mark = "**" if lo > 0 else ""
    return f"{row['NDCG@10']:.4f} ({mark}{delta['NDCG@10']:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("workspace", type=Path)
    results = parser.parse_args().workspace / "afk-results"
    seeds = sorted(int(p.stem.split("-")[1]) for p in results.glob("full-*.json"))
    columns = " | ".join(f"joint, seed {s}" for s in seeds)
    print(f"| domain | protocol | SASRec | {columns} | joint, mean | ABXI |")
    print(f"|---|---|---|{'---|' * len(seeds)}---|---|")
    for protocol in ("full", "sampled"):
        by_seed = {s: rows(results / f"{protocol}-{s}.json") for s in seeds}
        for domain in by_seed[seeds[0]]:
            single = next(m for m in by_seed[seeds[0]][domain] if m.endswith("-only"))
            joint = [by_seed[s][domain][MODEL] for s in seeds if MODEL in by_seed[s][domain]]
            mean = statistics.mean(r["NDCG@10"] for r in joint) if joint else float("nan")
            abxi = f"{ABXI[domain]:.4f}" if protocol == "sampled" and domain in ABXI else ""
            cells = [cell(r) for r in joint]
            name = "sampled 999" if protocol == "sampled" else "full"
            print(
                f"| {domain} | {name} | {by_seed[seeds[0]][domain][single]['NDCG@10']:.4f} | "
                f"{' | '.join(cells)} | {mean:.4f} | {abxi} |"
            )


if __name__ == "__main__":
    main()
