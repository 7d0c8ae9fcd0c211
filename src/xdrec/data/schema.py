"""The raw table every importer produces and `prepare` consumes (one domain per file)."""

from __future__ import annotations

import polars as pl

from xdrec.errors import XdrecError

# user: reviewer id, item: parent_asin, rating: 1-5 or null (implicit feedback), timestamp: Unix ms.
RAW_SCHEMA: dict[str, pl.DataType] = {
    "user": pl.String(),
    "item": pl.String(),
    "rating": pl.Float32(),
    "timestamp": pl.Int64(),
    "domain": pl.String(),
}

# The columns of the Amazon Reviews 2023 files, and the raw column each one becomes.
AMAZON_COLUMNS = {"user_id": "user", "parent_asin": "item", "rating": "rating", "timestamp": "timestamp"}


def check_raw_schema(schema: pl.Schema | dict, where: str) -> None:
    """Raise a one-line error naming `where` if a frame does not have the raw columns and types."""
    missing = [c for c in RAW_SCHEMA if c not in schema]
    if missing:
        raise XdrecError(f"{where}: missing column(s) {', '.join(missing)}; expected {', '.join(RAW_SCHEMA)}")
    wrong = [f"{c} is {schema[c]}, expected {t}" for c, t in RAW_SCHEMA.items() if schema[c] != t]
    if wrong:
        raise XdrecError(f"{where}: wrong column type(s): {'; '.join(wrong)}")
