"""Crash test, in the spirit of SQLite's: SIGKILL every stage at random instants, then check the workspace.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/crash.py                 # 6 kills per stage
    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/crash.py --kills 20 --seed 1

A small synthetic workspace is built once (fetch from a local file, prepare, pretrain source and target,
embed, transfer fusion, evaluate): the "old" results. Then, for each stage, a copy of it runs the stage
again with other options (so the "new" result differs) as `python -m xdrec ...`, killed with SIGKILL after
a random delay drawn from [start-up, the stage's uninterrupted duration), start-up being the time Python
takes to import polars and xdrec's CLI, which every stage does before writing anything (a kill before
that tests nothing). After every kill:

1. every file a reader can open is whole (parquet, safetensors and JSON structure: `damaged_files`);
2. what the stage writes is, file for file, the old result or the new one, never a mix (compared by
   content: parquet by rows, JSON without timings, safetensors by bytes, metrics.jsonl by its epochs
   beside its own config.json);
3. a reader reads it (the dataset loads and its row count matches its manifest; every model's weights
   match the fingerprint in its config.json);
4. rerunning the stage (no kill) succeeds, leaves no temp files behind, and gives the new result.

A report folder is one unit: report.json and report.png (compared by bytes) must both be old or both new.

Then readers race `prepare` (`--races`, default 6): while a `prepare` with other options replaces the
dataset, this process opens it again and again (`Dataset.from_workspace`), reads its manifest, waits a
random instant, then reads users and interactions: every read must match the manifest it started with
(the old dataset whole or the new one whole), and the manifest hash a model would record must be the
one of the files read.

Prints one line per trial and a summary; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from xdrec.checkpoint import CONFIG, METRICS, WEIGHTS, fingerprint
from xdrec.data.dataset import Dataset
from xdrec.data.synthetic import SyntheticConfig, write_raw
from xdrec.workspace import Workspace

SYNTHETIC = SyntheticConfig(n_users=400)
SOURCE, TARGET = SYNTHETIC.source_domain, SYNTHETIC.target_domain
TRAIN = ("--device", "cpu", "--epochs", "2", "-q")
VOLATILE = {"seconds", "sequences_per_s", "xdrec_version"}  # timings differ between identical runs


@dataclass(frozen=True)
class Stage:
    name: str
    setup: tuple[str, ...]  # how the old result was made (run once, in the base workspace)
    again: tuple[str, ...]  # the killed run: other options, so the new result differs
    writes: tuple[str, ...]  # the workspace folders (or files) it writes


def stages(raw_b: Path) -> list[Stage]:
    return [
        Stage("fetch", (), ("fetch", SOURCE, "--source", str(raw_b), "-q"), ("raw",)),
        Stage(
            "prepare",
            (),
            ("prepare", SOURCE, TARGET, "--min-item", "3", "-q"),
            ("datasets", "workspace.json"),
        ),
        Stage("pretrain", (), ("pretrain", *TRAIN, "--lr", "0.004"), ("models",)),
        Stage("embed", (), ("embed", "--device", "cpu", "--model", "target-only"), ("embeddings",)),
        Stage("transfer", (), ("transfer", "--strategy", "fusion", *TRAIN, "--lr", "0.004"), ("models",)),
        Stage("evaluate", (), ("evaluate", "--device", "cpu", "--k", "5", "--bootstrap", "50"), ("reports",)),
    ]


def xdrec(ws: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "xdrec", "--workspace", str(ws), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_ok(ws: Path, *args: str) -> float:
    start = time.perf_counter()
    process = xdrec(ws, *args)
    _, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"`xdrec {' '.join(args)}` failed ({process.returncode}): {err.strip()}")
    return time.perf_counter() - start


def build_base(root: Path) -> tuple[Path, Path]:
    """The old results, and a second raw file for fetch's new one."""
    ws = root / "base"
    files = write_raw(root / "raw-a", SYNTHETIC)
    other = SyntheticConfig(n_users=300, seed=SYNTHETIC.seed + 1)
    raw_b = write_raw(root / "raw-b", other)[other.source_domain]
    for domain, path in files.items():
        run_ok(ws, "fetch", domain, "--source", str(path), "-q")
    for args in (
        ("prepare", SOURCE, TARGET, "-q"),
        ("pretrain", *TRAIN),
        ("pretrain", "--domain", TARGET, *TRAIN),
        ("embed", "--device", "cpu"),
        ("transfer", "--strategy", "fusion", *TRAIN),
        ("evaluate", "--device", "cpu", "--bootstrap", "50"),
    ):
        run_ok(ws, *args)
    return ws, raw_b


def identity(path: Path) -> object:
    """What a file holds, ignoring what legitimately differs between two identical runs (timings)."""
    if path.suffix == ".parquet":
        frame = pl.read_parquet(path)
        return ("parquet", frame.height, int(frame.hash_rows(seed=0).sum()))
    if path.suffix == ".json":
        return ("json", json.dumps(_drop_volatile(json.loads(path.read_text())), sort_keys=True))
    if path.name == METRICS:
        return ("metrics", [line["epoch"] for line in map(json.loads, path.read_text().splitlines())])
    if path.suffix == ".png":  # the plot drawn from the JSON beside it: the same report, the same bytes
        return ("png", hashlib.sha256(path.read_bytes()).hexdigest())
    if path.suffix == ".safetensors":  # embed's row order is not fixed: compare the rows by user id
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = f.metadata()
        if "user_id" in tensors:
            order = tensors["user_id"].argsort()
            tensors = {k: v[order] for k, v in tensors.items()}
        digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
        for key in sorted(tensors):
            digest.update(key.encode() + tensors[key].numpy().tobytes())
        return ("safetensors", digest.hexdigest())
    return ("bytes", hashlib.sha256(path.read_bytes()).hexdigest())


def _drop_volatile(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _drop_volatile(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_drop_volatile(v) for v in obj]
    return obj


def snapshot(ws: Path, writes: tuple[str, ...]) -> dict[str, object]:
    """Identity of every visible file the stage writes (temp files are hidden: `.name.*`)."""
    found: dict[str, object] = {}
    for name in writes:
        top = ws / name
        files = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        for path in files:
            rel = path.relative_to(ws)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                found[str(rel)] = identity(path)
    return found


def mixed_files(now: dict, old: dict, new: dict) -> list[str]:
    """Units (a file, or a model/dataset folder) that are neither wholly old nor wholly new."""
    units: dict[str, list[str]] = {}
    for rel in set(now) | set(old) | set(new):
        parts = rel.split("/")
        if parts[0] in ("models", "datasets", "reports"):
            unit = "/".join(parts[:2])
        elif parts[0] == "embeddings":  # the vectors and their raw-user-id index
            unit = parts[1].split(".")[0]
        else:
            unit = rel
        units.setdefault(unit, []).append(rel)
    bad = []
    for unit, rels in sorted(units.items()):
        state = {rel: now.get(rel) for rel in rels}
        if state != {rel: old.get(rel) for rel in rels} and state != {rel: new.get(rel) for rel in rels}:
            bad.append(unit)
    return bad


def reader_problems(ws: Path) -> list[str]:
    workspace = Workspace(ws)
    problems = [f"damaged: {p.relative_to(ws)}" for p, _ in workspace.damaged_files()]
    try:
        data = Dataset.from_workspace(workspace)
        rows = data.interactions().select(pl.len()).collect().item()
        expected = sum(d["interactions"] for d in data.manifest["domains"].values())
        if rows != expected:
            problems.append(f"dataset has {rows} rows, its manifest says {expected}")
    except Exception as e:  # a reader failing is what this test looks for
        problems.append(f"dataset unreadable: {e}")
    for config in sorted((ws / "models").glob(f"*/{CONFIG}")):
        meta = json.loads(config.read_text())
        if fingerprint(config.parent / WEIGHTS) != meta.get("fingerprint"):
            problems.append(f"{config.parent.name}: weights do not match config.json")
        metrics = config.parent / METRICS
        if metrics.exists() and len(metrics.read_text().splitlines()) != meta.get("epochs_run"):
            problems.append(f"{config.parent.name}: metrics.jsonl is another run's")
    return problems


def leftovers(ws: Path) -> list[str]:
    return [
        str(p.relative_to(ws))
        for area in ("raw", "datasets", "models", "runs", "embeddings", "reports")
        for p in (ws / area).rglob(".xdrec-*")
    ]


def race_prepare(ws: Path, rng: random.Random) -> tuple[int, list[str]]:
    """Read the dataset over and over while a `prepare` with other options replaces it: (reads, problems)."""
    workspace = Workspace(ws)
    process = xdrec(ws, "prepare", SOURCE, TARGET, "--min-item", "3", "-q")
    reads, problems = 0, []
    while True:
        done = process.poll() is not None
        try:
            data = Dataset.from_workspace(workspace)
            manifest, digest = data.manifest, data.manifest_hash
            time.sleep(rng.uniform(0.0, 0.15))  # the writer may swap the folder now
            users = data.users.height
            rows = data.interactions().select(pl.len()).collect().item()
            expected = sum(d["interactions"] for d in manifest["domains"].values())
            if (users, rows) != (manifest["users"], expected):
                problems.append(
                    f"read {users} users, {rows} rows; its manifest says {manifest['users']}, {expected}"
                )
            if (
                hashlib.sha256(json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n").hexdigest()[
                    :16
                ]
                != digest
            ):
                problems.append("the manifest hash is not the one of the manifest read")
            reads += 1
        except Exception as e:  # a reader failing is what this test looks for
            problems.append(f"read failed: {type(e).__name__}: {e}")
        if done:
            break
    if process.returncode != 0:
        problems.append(f"prepare failed: {process.stderr.read().strip() if process.stderr else ''}")
    return reads, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6, help="kills per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", action="append", help="only these stages (repeatable)")
    parser.add_argument("--races", type=int, default=6, help="readers racing prepare (trials)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xdrec-crash-") as tmp:
        root = Path(tmp)
        base, raw_b = build_base(root)
        started_python = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import polars, xdrec.cli"], check=True)
        startup = time.perf_counter() - started_python
        failures, killed, finished = 0, 0, 0
        for stage in stages(raw_b):
            if args.stage and stage.name not in args.stage:
                continue
            old = snapshot(base, stage.writes)
            reference = root / f"{stage.name}-new"
            shutil.copytree(base, reference)
            duration = run_ok(reference, *stage.again)
            new = snapshot(reference, stage.writes)
            assert new != old, f"{stage.name}: the new options give the old result"
            for trial in range(args.kills):
                ws = root / f"{stage.name}-{trial}"
                shutil.copytree(base, ws)
                delay = rng.uniform(min(startup, duration / 2), duration)
                process = xdrec(ws, *stage.again)
                try:
                    process.wait(timeout=delay)
                    outcome = "finished first"
                    finished += 1
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    outcome = "killed"
                    killed += 1
                now = snapshot(ws, stage.writes)
                problems = [f"mix of old and new: {u}" for u in mixed_files(now, old, new)]
                problems += reader_problems(ws)
                rerun = xdrec(ws, *stage.again)
                _, err = rerun.communicate()
                if rerun.returncode != 0:
                    problems.append(f"rerun failed: {err.strip()}")
                elif mixed_files(snapshot(ws, stage.writes), new, new):
                    problems.append("rerun did not give the new result")
                problems += [f"left behind: {p}" for p in leftovers(ws)]
                failures += bool(problems)
                status = "ok" if not problems else "FAIL " + "; ".join(problems)
                print(
                    f"{stage.name:9} kill at {delay:5.2f}s of {duration:5.2f}s ({outcome}): {status}",
                    flush=True,
                )
                shutil.rmtree(ws)
            shutil.rmtree(reference)
        raced = 0
        for trial in range(args.races):
            ws = root / f"race-{trial}"
            shutil.copytree(base, ws)
            reads, problems = race_prepare(ws, rng)
            raced += reads
            failures += bool(problems)
            status = "ok" if not problems else f"FAIL ({len(problems)}) " + problems[0]
            print(f"race     {reads:3} reads during prepare: {status}", flush=True)
            shutil.rmtree(ws)
    print(f"readers racing prepare: {args.races} trials, {raced} reads")
    trials = killed + finished
    print(f"start-up {startup:.2f}s")
    print(
        f"\n{trials} trials ({killed} killed mid-stage, {finished} finished before the kill), "
        f"{failures} failed, in {time.perf_counter() - started:.0f}s"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
