"""Benchmark `xdrec prepare` against the seed notebook's pandas pipeline on the same generated input.

    python benchmarks/prepare.py --rows 6000000 --object-strings --kcore   # every tool, twice each
    python benchmarks/prepare.py --rows 50000000 --no-reference --json
    python benchmarks/prepare.py --rows 6000000 --repeated 0.02 --no-reference --workdir /tmp/xb-6m-rep

The script needs no install: it puts this checkout's src/ (or --src) on the xdrec child's PYTHONPATH.

Input: a seeded numpy generator writes Amazon-like raw rows (28-character reviewer ids, 'B0...' parent_asins,
heavy-tailed user activity and item popularity, ms timestamps, 1-5 ratings), half in each of two domains,
as the raw Parquet files xdrec reads (<workdir>/ws/raw/<Domain>.parquet) and, for the reference, as one
combined CSV with a domain column. The generated (user, item) pairs are unique within a domain, so
xdrec's de-duplication removes nothing and both sides must keep exactly the same users and rows: the
script checks that. `--repeated F` adds F x rows re-reviews of drawn (user, item) pairs, at other times
and with other ratings, shuffled in, as real 2023 raw files have them; the notebook's steps do not
de-duplicate, so that input is for timing xdrec alone. Generation is not timed and is reused when
<workdir> already holds the same input.

Each measured side runs in its own subprocess, as a user would run it:
- xdrec: `python -m xdrec --workspace <ws> prepare Books Movies_and_TV --one-pass` (the notebook's
  one-pass filter; `--kcore` also times the default fixed-point k-core). Its time includes interpreter
  start, imports, the CLI, writing Parquet and manifest.json.
- reference: this file's `reference()` (pandas read_csv, one-pass count filter, sklearn LabelEncoder,
  per-user time-sorted Python lists, leave-one-out dicts), including interpreter start and imports.
Peak memory is the child's ru_maxrss from os.wait4. On Linux a child's ru_maxrss starts at the
launcher's own peak RSS (vfork/exec carries it over), so the launcher never imports numpy, polars or
pandas: data generation runs in a subprocess too, and the launcher's peak is reported as the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE, TARGET = "Books", "Movies_and_TV"
MIN_USER = MIN_ITEM = 5
PANDAS, PANDAS_OBJECT = "pandas reference", "pandas reference (object strings)"
XDREC, XDREC_KCORE = "xdrec prepare --one-pass", "xdrec prepare (default k-core)"
GENERATOR_VERSION = 1  # bump when the generated data changes, so cached inputs are regenerated

# Shape of the generated logs, chosen to look like the Amazon 2023 categories: most users review once or
# twice, a few review thousands of items; about half the rows survive a one-pass 5-core.
USERS_PER_ROW = 0.25  # size of the user pool relative to the total row count
ITEMS_PER_ROW = 1 / 6  # items per domain relative to that domain's rows
USER_EXPONENT, ITEM_EXPONENT = 0.7, 0.9  # power-law exponents of user activity and item popularity
DOMAIN_USERS = 0.6  # each domain draws from 60% of the pool; they overlap on 20% of it
TIME_RANGE_MS = (946_684_800_000, 1_694_476_800_000)  # 2000-01-01 .. 2023-09-12


# --------------------------------------------------------------------------------------------------
# Input generation (runs in a child process; never timed)
# --------------------------------------------------------------------------------------------------
def _power_law(rng, size: int, n: int, exponent: float):
    """`size` draws from 0..n-1 with P(k) roughly proportional to (k + 1) ** -exponent (inverse CDF)."""
    import numpy as np

    x = ((n + 1) ** (1 - exponent) - 1) * rng.random(size) + 1
    return np.minimum(np.floor(x ** (1 / (1 - exponent))) - 1, n - 1).astype(np.int64)


def _random_ids(rng, n: int, prefix: str, length: int):
    """`n` random upper-case alphanumeric ids like Amazon's, as a Polars String series (no Python loop)."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)
    body = alphabet[rng.integers(0, len(alphabet), size=(n, length - len(prefix)), dtype=np.uint8)]
    chars = np.concatenate(
        [np.broadcast_to(np.frombuffer(prefix.encode(), np.uint8), (n, len(prefix))), body], 1
    )
    offsets = np.arange(0, n * length + 1, length, dtype=np.int64)
    array = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))
    return pl.Series(pl.from_arrow(array)).cast(pl.String)


def generate(rows: int, workdir: Path, seed: int, csv: bool, repeated: float = 0.0) -> dict:
    """Write <workdir>/ws/raw/{SOURCE,TARGET}.parquet (and <workdir>/combined.csv if `csv`), with
    `repeated` x rows extra reviews of pairs already drawn."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    raw_dir = workdir / "ws" / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    n_pool = max(int(rows * USERS_PER_ROW), 100)
    n_domain_users = int(n_pool * DOMAIN_USERS)
    users = _random_ids(rng, n_pool, "A", 28)  # e.g. AE22236AFRRSMQIKGG7TPTB75QEA
    frames = []
    for code, domain in enumerate((SOURCE, TARGET)):
        n = rows // 2 + (rows % 2 if code == 0 else 0)
        n_items = max(int(n * ITEMS_PER_ROW), 10)
        items = _random_ids(rng, n_items, "B0", 10)  # e.g. B00004S1C5
        # The target's most active users are not the source's: a shifted, shuffled slice of the pool.
        pool = (
            np.arange(n_domain_users)
            if code == 0
            else rng.permutation(n_domain_users) + n_pool - n_domain_users
        )
        pairs = pl.DataFrame(schema={"u": pl.Int64, "i": pl.Int64})
        while pairs.height < n:  # draw extra, drop repeated (user, item) pairs, keep the first n
            draw = int((n - pairs.height) * 1.1) + 1000
            more = pl.DataFrame(
                {
                    "u": pool[_power_law(rng, draw, n_domain_users, USER_EXPONENT)],
                    "i": _power_law(rng, draw, n_items, ITEM_EXPONENT),
                }
            )
            pairs = pl.concat([pairs, more]).unique(maintain_order=True)
        pairs = pairs.head(n)
        frame = pl.DataFrame(
            {
                "user": users.gather(pairs["u"]),
                "item": items.gather(pairs["i"]),
                "rating": rng.choice(
                    np.array([1, 2, 3, 4, 5], np.float32), n, p=[0.06, 0.05, 0.08, 0.17, 0.64]
                ),
                "timestamp": rng.integers(*TIME_RANGE_MS, n, dtype=np.int64),
                "domain": pl.repeat(domain, n, dtype=pl.String, eager=True),
            }
        )
        del pairs
        if repeated:
            m = int(n * repeated)
            again = frame[rng.integers(0, n, m)].with_columns(
                rating=pl.Series(rng.integers(1, 6, m)).cast(pl.Float32),
                timestamp=pl.Series(rng.integers(*TIME_RANGE_MS, m, dtype=np.int64)),
            )
            frame = pl.concat([frame, again])[rng.permutation(n + m)]
        frame.write_parquet(raw_dir / f"{domain}.parquet")
        if csv:
            frames.append(frame)
        else:
            del frame
    if csv:
        (
            pl.concat(frames)
            .rename({"user": "user_id", "item": "parent_asin"})
            .write_csv(workdir / "combined.csv")
        )
    return {
        "rows": rows,
        "seed": seed,
        "repeated": repeated,
        "users_in_pool": n_pool,
        "version": GENERATOR_VERSION,
        "csv": csv,
    }


# --------------------------------------------------------------------------------------------------
# The reference: the seed notebook's pandas steps (runs in a child process)
# --------------------------------------------------------------------------------------------------
def reference(csv_path: Path, object_strings: bool = False) -> dict:
    """The seed notebook's preprocessing, kept to its steps but written with pandas idioms, not loops.

    Sequences are built with one sort and `groupby().apply(list)` rather than the slower per-group
    `sort_values` lambda, so the reference is not a straw man. pandas 3 stores strings in Arrow
    (`str` dtype); `object_strings` restores the pandas 2 object columns the notebook was written for.
    """
    import warnings

    import pandas as pd
    from sklearn.preprocessing import LabelEncoder

    if object_strings:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the option is deprecated in pandas 3, still honoured
            pd.set_option("future.infer_string", False)
    df = pd.read_csv(csv_path)
    # One-pass filter: both counts come from the same unfiltered table.
    user_count = df.groupby("user_id")["user_id"].transform("size")
    item_count = df.groupby(["domain", "parent_asin"])["parent_asin"].transform("size")
    df = df[(user_count >= MIN_USER) & (item_count >= MIN_ITEM)].copy()
    # One user vocabulary over both domains, one item vocabulary per domain (0 = padding).
    df["user"] = LabelEncoder().fit_transform(df["user_id"])
    stats = {"users": int(df["user"].nunique()), "domains": {}}
    datasets = {}
    for domain, part in df.groupby("domain"):
        part = part.copy()
        part["item"] = LabelEncoder().fit_transform(part["parent_asin"]) + 1
        part = part.sort_values(["user", "timestamp"], kind="stable")
        sequences = part.groupby("user")["item"].apply(list).to_dict()
        train, valid, test = {}, {}, {}
        for user, items in sequences.items():  # leave-one-out; fewer than 3 items: all training
            if len(items) < 3:
                train[user] = items
            else:
                train[user], valid[user], test[user] = items[:-2], items[-2], items[-1]
        datasets[domain] = (train, valid, test)
        stats["domains"][domain] = {
            "users": len(sequences),
            "items": int(part["item"].max()),
            "interactions": len(part),
        }
    return stats


# --------------------------------------------------------------------------------------------------
# The launcher (stays small: no numpy / polars / pandas imports here)
# --------------------------------------------------------------------------------------------------
def _measure(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `cmd` to completion; its wall time, CPU time, peak RSS (MiB) and stdout (stderr goes to .err)."""
    err_log = log.with_suffix(".err")
    with log.open("w") as out, err_log.open("w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, unlike RUSAGE_CHILDREN
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode != 0:
        detail = (text + err_log.read_text())[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{detail}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "stdout": text,
    }


def _env(src: Path = REPO / "src") -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    return env


def _ensure_input(rows: int, workdir: Path, seed: int, csv: bool, repeated: float, quiet: bool) -> dict:
    marker = workdir / "input.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        wanted = (rows, seed, GENERATOR_VERSION, repeated)
        same = (meta["rows"], meta["seed"], meta["version"], meta.get("repeated", 0.0)) == wanted
        if same and (meta["csv"] or not csv):
            return meta
    shutil.rmtree(workdir / "ws", ignore_errors=True)
    (workdir / "combined.csv").unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    if not quiet:
        print(f"generating {rows:,} rows in {workdir} (not timed) ...", file=sys.stderr)
    cmd = [sys.executable, __file__, "--child", "generate", "--rows", str(rows), "--seed", str(seed)]
    cmd += ["--workdir", str(workdir), "--repeated", str(repeated)] + (["--csv"] if csv else [])
    result = _measure(cmd, _env(), workdir / "generate.log")
    meta = json.loads(result["stdout"].strip().splitlines()[-1])
    meta["generate_s"] = result["wall_s"]
    marker.write_text(json.dumps(meta))
    return meta


def _run_xdrec(workdir: Path, extra: list[str], src: Path) -> dict:
    ws = workdir / "ws"
    shutil.rmtree(ws / "datasets", ignore_errors=True)  # every run writes from scratch
    (ws / "workspace.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "xdrec", "--workspace", str(ws), "prepare", SOURCE, TARGET, "--json", *extra]
    result = _measure(cmd, _env(src), workdir / "xdrec.log")
    manifest = json.loads(result.pop("stdout"))
    result["counts"] = {
        "users": manifest["users"],
        "domains": {
            d: {
                "users": c["users"],
                "items": c["items"],
                "interactions": c["interactions"],
            }
            for d, c in manifest["domains"].items()
        },
    }
    return result


def _run_reference(workdir: Path, object_strings: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "reference", "--workdir", str(workdir)]
    cmd += ["--object-strings"] if object_strings else []
    result = _measure(cmd, _env(), workdir / "reference.log")
    result["counts"] = json.loads(result.pop("stdout").strip().splitlines()[-1])
    return result


def _summarise(runs: list[dict]) -> dict:
    """Best (minimum) wall and CPU time; peak RSS as the median over the repeats (it barely varies)."""
    return {
        "wall_s": min(r["wall_s"] for r in runs),
        "cpu_s": min(r["cpu_s"] for r in runs),
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
        "runs": [{k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mib")} for r in runs],
        "counts": runs[0]["counts"],
    }


def _machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    versions = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.metadata as m; print(' '.join(f'{p}={m.version(p)}' for p in "
            "('polars','pandas','numpy','scikit-learn','pyarrow')))",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "packages": versions,
        "load_avg_at_start": os.getloadavg(),
    }


def _table(rows: int, tools: dict[str, dict]) -> str:
    lines = [f"{'rows':>11}  {'tool':<40} {'wall s':>7} {'CPU s':>7} {'peak RSS MiB':>12}  runs (wall s)"]
    for name, t in tools.items():
        runs = ", ".join(f"{r['wall_s']:.1f}" for r in t["runs"])
        figures = f"{t['wall_s']:>7.2f} {t['cpu_s']:>7.2f} {t['peak_rss_mib']:>12,.0f}"
        lines.append(f"{rows:>11,}  {name:<40} {figures}  {runs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6_000_000, help="total rows, half per domain")
    parser.add_argument(
        "--reference", action=argparse.BooleanOptionalAction, default=True, help="also time pandas"
    )
    parser.add_argument(
        "--object-strings",
        action="store_true",
        help="also time the reference with pandas 2 style object string columns",
    )
    parser.add_argument("--kcore", action="store_true", help="also time xdrec's default fixed-point k-core")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch directory (default: a new /tmp dir)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool (best wall time is reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated input")
    parser.add_argument(
        "--repeated",
        type=float,
        default=0.0,
        help="add this fraction of rows as repeated reviews (needs --no-reference; default 0)",
    )
    parser.add_argument(
        "--src", type=Path, default=REPO / "src", help="xdrec sources to time (default: this checkout's src/)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--child", choices=["generate", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--csv", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeated and args.reference and not args.child:
        parser.error("--repeated needs --no-reference: the notebook's steps do not de-duplicate")

    if args.child == "generate":
        print(json.dumps(generate(args.rows, args.workdir, args.seed, args.csv, args.repeated)))
        return
    if args.child == "reference":
        print(json.dumps(reference(args.workdir / "combined.csv", args.object_strings)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="xdrec-bench-prepare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    quiet = args.json
    machine = _machine()
    meta = _ensure_input(args.rows, workdir, args.seed, args.reference, args.repeated, quiet)

    jobs = {}
    if args.reference:
        jobs[PANDAS] = lambda: _run_reference(workdir, object_strings=False)
        if args.object_strings:
            jobs[PANDAS_OBJECT] = lambda: _run_reference(workdir, object_strings=True)
    jobs[XDREC] = lambda: _run_xdrec(workdir, ["--one-pass"], args.src)
    if args.kcore:
        jobs[XDREC_KCORE] = lambda: _run_xdrec(workdir, [], args.src)
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    for i in range(args.repeat):  # interleaved, so a burst of load on the shared machine hits every tool
        for name, job in jobs.items():
            if not quiet:
                print(f"run {i + 1}/{args.repeat}: {name} ...", file=sys.stderr)
            runs[name].append(job())
    tools = {name: _summarise(r) for name, r in runs.items()}

    report = {
        "rows": args.rows,
        "workdir": str(workdir),
        "input": meta,
        "machine": machine,
        "load_avg_at_end": os.getloadavg(),
        "launcher_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "tools": tools,
        "comparisons": {},
    }
    xd = tools[XDREC]
    for name in (PANDAS, PANDAS_OBJECT):
        if name in tools:
            ref = tools[name]
            speedup, memory = ref["wall_s"] / xd["wall_s"], xd["peak_rss_mib"] / ref["peak_rss_mib"]
            report["comparisons"][name] = {
                "speedup": round(speedup, 2),
                "cpu_ratio": round(ref["cpu_s"] / xd["cpu_s"], 2),
                "memory_ratio": round(memory, 3),
                "targets_met": speedup >= 10 and memory <= 0.25,
                "same_result": ref["counts"] == xd["counts"],
            }

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(_table(args.rows, tools))
    print(f"input and logs in {workdir} (reused by --workdir {workdir})")
    print(f"launcher peak RSS (the floor of every child's figure): {report['launcher_peak_rss_mib']:.0f} MiB")
    for name, c in report["comparisons"].items():
        print(
            f"{XDREC} vs {name}: {c['speedup']:.2f}x faster (target >= 10x; CPU time {c['cpu_ratio']:.2f}x), "
            f"{c['memory_ratio']:.2f}x the peak RSS (target <= 0.25x); "
            f"same users/items/rows: {c['same_result']}"
        )
        if not c["same_result"]:
            print(f"  {name}: {tools[name]['counts']}\n  {XDREC}: {xd['counts']}")


if __name__ == "__main__":
    main()
