"""Shared fixtures: small random raw logs in a temporary workspace, and the real food_kitchen data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from xdrec.data.schema import RAW_SCHEMA
from xdrec.workspace import Workspace

# As the CLI does: idle OpenMP workers must not spin. Conftest loads before any test module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ../shared/data/food_kitchen beside the checkout; XDREC_FOOD_KITCHEN points elsewhere (e.g. from a worktree).
_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "food_kitchen"
FOOD_KITCHEN = Path(os.environ.get("XDREC_FOOD_KITCHEN", _BESIDE))
FOOD, KITCHEN = "Grocery_and_Gourmet_Food", "Home_and_Kitchen"


def random_raw(
    domain: str, n_users: int, n_items: int, n_rows: int, seed: int, user_prefix: str = "U"
) -> pl.DataFrame:
    """A raw-schema log with skewed users/items, duplicates and timestamp ties."""
    rng = np.random.default_rng(seed)
    users = rng.zipf(1.6, n_rows) % n_users
    items = rng.zipf(1.4, n_rows) % n_items
    return pl.DataFrame(
        {
            "user": [f"{user_prefix}{u:05d}" for u in users],
            "item": [f"{domain[:2].upper()}{i:05d}" for i in items],
            "rating": rng.integers(1, 6, n_rows).astype(np.float32),
            "timestamp": rng.integers(1_500_000_000_000, 1_700_000_000_000, n_rows)
            // 86_400_000
            * 86_400_000,
            "domain": [domain] * n_rows,
        },
        schema=RAW_SCHEMA,
    )


@pytest.fixture
def small_workspace(tmp_path: Path) -> Workspace:
    """A workspace whose raw/ holds two random overlapping domains, Src and Tgt."""
    ws = Workspace(tmp_path / "ws")
    ws.raw_dir.mkdir(parents=True)
    random_raw("Src", 300, 120, 6000, seed=1).write_parquet(ws.raw("Src"))
    random_raw("Tgt", 300, 150, 5000, seed=2).write_parquet(ws.raw("Tgt"))
    return ws


@pytest.fixture
def food_kitchen_workspace(tmp_path: Path) -> Workspace:
    """A workspace with the real Grocery -> Home_and_Kitchen logs as raw files (skips when absent)."""
    if not FOOD_KITCHEN.exists():
        pytest.skip(f"{FOOD_KITCHEN} not present")
    ws = Workspace(tmp_path / "ws")
    ws.raw_dir.mkdir(parents=True)
    schema = {"user_id": pl.String, "parent_asin": pl.String, "rating": pl.Float32, "timestamp": pl.Int64}
    for domain in (FOOD, KITCHEN):
        (
            pl.read_ndjson(FOOD_KITCHEN / f"{domain}.jsonl.gz", schema=schema)
            .rename({"user_id": "user", "parent_asin": "item"})
            .with_columns(domain=pl.lit(domain))
            .write_parquet(ws.raw(domain))
        )
    return ws
