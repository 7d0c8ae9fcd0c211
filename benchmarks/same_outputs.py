"""Behaviour check for refactors: run the same short pipelines with two versions of the code, compare outputs.

    python benchmarks/same_outputs.py 93341db            # that commit against the working tree
    python benchmarks/same_outputs.py A B --epochs 2     # two commits

Each version runs, in a fresh workspace, `xdrec demo` on 800 synthetic users and `xdrec run` on
../shared/data/food_kitchen (when present; 2 epochs per model, sampled and full evaluation), with one CPU
thread so floating point is reproducible. Then every output file is compared: safetensors by tensors and
metadata (not bytes: metadata key order is not stable), Parquet by frame, reports by JSON, metrics.jsonl
without its timing fields. Exit 0 when everything matches; otherwise the differing files are listed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import torch
from polars.testing import assert_frame_equal
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]
FOOD_KITCHEN = Path(os.environ.get("XDREC_FOOD_KITCHEN", REPO.parent / "shared" / "data" / "food_kitchen"))
TIMINGS = {"seconds", "sequences_per_s"}


def checkout(rev: str, into: Path) -> Path:
    if rev == "WORKTREE":
        return REPO
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), rev], check=True)
    return into


def run_pipelines(code: Path, out: Path, epochs: int) -> None:
    env = os.environ | {"PYTHONPATH": str(code / "src"), "OMP_NUM_THREADS": "1"}
    xdrec = [sys.executable, "-m", "xdrec", "--workspace"]
    common = ["--epochs", str(epochs), "--json", "--quiet"]
    subprocess.run([*xdrec, str(out / "demo"), "demo", "--users", "800", *common], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    if FOOD_KITCHEN.exists():
        args = ["run", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "--source", str(FOOD_KITCHEN),
                "--negatives", "99", "--bootstrap", "100", "--device", "cpu"]  # fmt: skip
        subprocess.run(
            [*xdrec, str(out / "fk"), *args, *common], env=env, check=True, stdout=subprocess.DEVNULL
        )


def outputs(root: Path) -> list[Path]:
    keep = (".safetensors", ".parquet", "report.json", "report-sampled-99.json", "metrics.jsonl")
    return sorted(
        p.relative_to(root)
        for p in root.rglob("*")
        if p.is_file() and p.name.endswith(keep) and "train_state" not in p.parts and "raw" not in p.parts
    )


def same(a: Path, b: Path) -> bool:
    if a.suffix == ".safetensors":
        with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
            if fa.metadata() != fb.metadata() or set(fa.keys()) != set(fb.keys()):
                return False
            return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())  # noqa: SIM118
    if a.suffix == ".parquet":
        try:
            assert_frame_equal(pl.read_parquet(a), pl.read_parquet(b))
            return True
        except AssertionError:
            return False
    if a.name == "metrics.jsonl":
        lines = [
            [{k: v for k, v in json.loads(x).items() if k not in TIMINGS} for x in p.open()] for p in (a, b)
        ]
        return lines[0] == lines[1]
    return json.loads(a.read_text()) == json.loads(b.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="git revision of the reference code")
    parser.add_argument("after", nargs="?", default="WORKTREE", help="git revision (default: working tree)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xdrec-same-") as tmp:
        roots = []
        for label, rev in (("before", args.before), ("after", args.after)):
            code = checkout(rev, Path(tmp) / f"code-{label}")
            run_pipelines(code, Path(tmp) / label, args.epochs)
            roots.append(Path(tmp) / label)
            if code != REPO:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(code)], check=True
                )
        files = [outputs(r) for r in roots]
        if files[0] != files[1]:
            print(f"different files: {sorted(set(files[0]) ^ set(files[1]))}")
            return 1
        differ = [str(f) for f in files[0] if not same(roots[0] / f, roots[1] / f)]
        print(
            f"{len(files[0])} output files compared, {len(differ)} differ" + (f": {differ}" if differ else "")
        )
        return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
