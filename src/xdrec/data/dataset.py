"""Read access to a prepared dataset (`datasets/<Source>+<Target>/`), as the models need it.

Files written by `prepare`:
    manifest.json         parameters, counts, input hashes, xdrec version
    users.parquet         user_id (i32, 0..n-1, one vocabulary across domains), user (raw id), cold (bool)
    items.parquet         domain, item_id (i32, 1..n per domain; 0 is padding), item (raw parent_asin)
    interactions.parquet  user_id, domain, item_id, timestamp (ms), rating, split (train|valid|test),
                          sorted by domain, user_id, timestamp, item_id

Segments of a user, seen from the domain being evaluated ("this" domain; the other one is "other"):
    warm           history in this domain at prediction time, and history in the other domain
    cold           no history in this domain at prediction time, history in the other domain
                   (the `prepare --cold-start` hold-out, and under `timestamp` users new after the cut)
    <role>-only    no history in the other domain (`target-only` when evaluating the target)

Under `prepare --split mixed` each user's test (and validation) interaction is in one domain only, the
domain of their last (second-last) interaction on the merged timeline, so `eval_cases(domain, stage)`
holds exactly the users tested in `domain`, with their whole history in `domain` before it. A user whose
only interaction in the domain is the test one is `cold` there (no such user in the papers' data, which
keeps >= 5 interactions per domain).

One version: a `prepare` may replace the folder while a command reads it. A `Dataset` opens all its files
from one version of the folder the first time it reads any (`_pinned`) and reads only through those open
files, so a reader sees the old dataset or the new one whole, never the old manifest beside new splits,
and a model records the manifest it was really trained on.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from xdrec.errors import XdrecError
from xdrec.workspace import Workspace, read_json

Stage = Literal["valid", "test"]
SPLITS = ("train", "valid", "test")
FILES = ("manifest.json", "users.parquet", "items.parquet", "interactions.parquet")
_FD_PATHS = Path("/proc/self/fd")  # Linux: a path that reads an open file, even once it is unlinked


def _pin(folder: Path) -> tuple[dict[str, str], list[int]]:
    """Open every file of the dataset from one version of `folder`: (a readable path per file, the fds).

    The files are opened relative to one open handle of the folder, so all come from the same version
    even when `prepare` swaps a new one in meanwhile; if it swapped and removed the old one between the
    opens, start again. Where open files have no path (no /proc), the plain paths (no pin)."""
    if not _FD_PATHS.is_dir():
        return {name: str(folder / name) for name in FILES}, []
    for _ in range(10):
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fds: dict[str, int] = {}
        try:
            for name in FILES:
                fds[name] = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
            return {name: str(_FD_PATHS / str(fd)) for name, fd in fds.items()}, list(fds.values())
        except FileNotFoundError as e:
            for fd in fds.values():
                os.close(fd)
            if os.stat(folder).st_ino == os.fstat(dir_fd).st_ino:  # not replaced: the file is missing
                raise FileNotFoundError(e.errno, e.strerror, str(folder / str(e.filename))) from None
        finally:
            os.close(dir_fd)
    raise XdrecError(
        f"{folder} kept being replaced while it was read (`prepare` running?): rerun the command"
    )


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


@dataclass(frozen=True)
class Dataset:
    path: Path

    @classmethod
    def load(cls, path: Path) -> Dataset:
        if not (path / "manifest.json").exists():
            raise XdrecError(
                f"{path} is not a prepared dataset (no manifest.json): run `xdrec prepare` first"
            )
        return cls(path)

    @classmethod
    def from_workspace(cls, workspace: Workspace, name: str | None = None) -> Dataset:
        return cls.load(workspace.dataset_dir(workspace.current_dataset(name)))

    # --- one version of the files ---
    @cached_property
    def _files(self) -> dict[str, str]:
        paths, fds = _pin(self.path)
        weakref.finalize(self, _close, fds)  # the files stay open while this Dataset lives
        return paths

    def _file(self, name: str) -> str:
        return self._files[name]

    @cached_property
    def _manifest_bytes(self) -> bytes:
        return Path(self._file("manifest.json")).read_bytes()

    # --- identity ---
    @cached_property
    def manifest(self) -> dict:
        return read_json(self.path / "manifest.json", self._manifest_bytes)

    @cached_property
    def manifest_hash(self) -> str:
        """What checkpoints record, so a model refuses a dataset it was not trained on."""
        return hashlib.sha256(self._manifest_bytes).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def source(self) -> str:
        return self.manifest["source"]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def split(self) -> str:
        """How `prepare` labelled train / valid / test (xdrec.data.splits.SplitKind)."""
        return self.manifest.get("parameters", {}).get("split", "loo")

    @property
    def domains(self) -> tuple[str, str]:
        return (self.source, self.target)

    def other(self, domain: str) -> str:
        self.check_domain(domain)
        return self.target if domain == self.source else self.source

    def role(self, domain: str) -> str:
        self.check_domain(domain)
        return "source" if domain == self.source else "target"

    def check_domain(self, domain: str) -> None:
        if domain not in self.domains:
            raise XdrecError(
                f"domain {domain!r} is not in dataset {self.name} (its domains: {', '.join(self.domains)})"
            )

    def n_items(self, domain: str) -> int:
        """Largest item id of the domain (ids are 1..n_items, 0 is padding)."""
        self.check_domain(domain)
        return int(self.manifest["domains"][domain]["items"])

    # --- tables ---
    def interactions(self) -> pl.LazyFrame:
        self._checked_ids  # noqa: B018 (once, on the first read)
        return pl.scan_parquet(self._file("interactions.parquet"), glob=False)

    @cached_property
    def users(self) -> pl.DataFrame:
        self._checked_ids  # noqa: B018
        return pl.read_parquet(self._file("users.parquet"), glob=False)

    def items(self, domain: str) -> pl.DataFrame:
        self.check_domain(domain)
        self._checked_ids  # noqa: B018
        return (
            pl.read_parquet(self._file("items.parquet"), glob=False)
            .filter(pl.col("domain") == domain)
            .drop("domain")
        )

    # --- what the models read ---
    def train_sequences(self, domain: str) -> pl.DataFrame:
        """user_id, items (list[i32], time-ordered): each user's training interactions in `domain`."""
        return self._sequences(domain, ("train",))

    def history_sequences(self, domain: str, stage: Stage) -> pl.DataFrame:
        """user_id, items: what a model may see when predicting `stage` (train, plus valid for test)."""
        return self._sequences(domain, ("train",) if stage == "valid" else ("train", "valid"))

    def context_splits(self) -> tuple[str, ...]:
        """The splits of one domain that models of the *other* domain read as context (source history).

        The training split; under the mixed split the validation item too. There each user has a single
        validation interaction, in one domain, right before their test item on the merged timeline: a user
        evaluated in the other domain at validation has none in this one, and at test it precedes the test
        item, so it leaks nothing. The cross-domain papers' models (ABXI, C2DSR) read it: for a third of
        the Kitchen test users of ABXI's data it is the most recent thing they did. Under `loo` and
        `timestamp` a domain's validation item can come after the other domain's test item, so it is not read.
        """
        return ("train", "valid") if self.split == "mixed" else ("train",)

    def context_sequences(self, domain: str) -> pl.DataFrame:
        """user_id, items: each user's `domain` interactions that models of the other domain may read."""
        return self._sequences(domain, self.context_splits())

    def eval_cases(self, domain: str, stage: Stage) -> pl.DataFrame:
        """One row per user with something to predict at `stage` in `domain`.

        Columns: user_id, history (list[i32]: the input the model sees, time-ordered, maybe empty),
        targets (list[i32]: the relevant items), segment (warm | cold | <role>-only).
        """
        self.check_domain(domain)
        rows = self.interactions().filter(pl.col("domain") == domain)
        targets = (
            rows.filter(pl.col("split") == stage).group_by("user_id").agg(targets=pl.col("item_id").unique())
        )
        history = self.history_sequences(domain, stage).lazy().rename({"items": "history"})
        other_users = (
            self.interactions()
            .filter(pl.col("domain") == self.other(domain))
            .select("user_id")
            .unique()
            .with_columns(has_other=pl.lit(True))
        )
        cases = (
            targets.join(history, on="user_id", how="left")
            .join(other_users, on="user_id", how="left")
            .with_columns(
                history=pl.col("history").fill_null(pl.lit([], dtype=pl.List(pl.Int32))),
                targets=pl.col("targets").list.sort(),
            )
            .with_columns(
                segment=pl.when(pl.col("has_other").is_null())
                .then(pl.lit(f"{self.role(domain)}-only"))
                .when(pl.col("history").list.len() == 0)
                .then(pl.lit("cold"))
                .otherwise(pl.lit("warm"))
            )
            .select("user_id", "history", "targets", "segment")
            .sort("user_id")
        )
        return cases.collect()

    def item_counts(self, domain: str) -> np.ndarray:
        """Training-set interaction count per item id (index 0, padding, is 0): the popularity baseline."""
        counts = (
            self.interactions()
            .filter((pl.col("domain") == domain) & (pl.col("split") == "train"))
            .group_by("item_id")
            .len()
            .collect()
        )
        out = np.zeros(self.n_items(domain) + 1, dtype=np.int64)
        out[counts["item_id"].to_numpy()] = counts["len"].to_numpy()
        return out

    def user_id(self, raw_user: str) -> int:
        hit = self.users.filter(pl.col("user") == raw_user)
        if hit.height == 0:
            raise XdrecError(f"unknown user {raw_user!r}: not in dataset {self.name}")
        return int(hit["user_id"][0])

    def item_raw_ids(self, domain: str) -> np.ndarray:
        """Raw item id (parent_asin) by item id; index 0 (padding) is an empty string."""
        items = self.items(domain).sort("item_id")
        return np.array(["", *items["item"].to_list()], dtype=object)

    @cached_property
    def _checked_ids(self) -> bool:
        """Refuse a table whose ids are not the ones the manifest describes (a file edited by hand, or
        copied from another dataset): models index their tables by these ids, so a stray one would end
        in an IndexError deep in torch, or quietly score another item."""

        def refuse(name: str, what: str) -> XdrecError:
            return XdrecError(
                f"{self.path / name} {what}: it was edited or comes from another dataset: run "
                f"`xdrec prepare {self.source} {self.target}` to rewrite it"
            )

        n_users, n_items = self.manifest.get("users"), {d: self.n_items(d) for d in self.domains}
        name = "interactions.parquet"
        stats = (
            pl.scan_parquet(self._file(name), glob=False)
            .group_by("domain")
            .agg(
                lo=pl.col("item_id").min(),
                hi=pl.col("item_id").max(),
                user_hi=pl.col("user_id").max(),
                user_lo=pl.col("user_id").min(),
                nulls=pl.col("user_id").null_count() + pl.col("item_id").null_count(),
                splits=pl.col("split").is_in(SPLITS).all(),
            )
            .collect()
        )
        for row in stats.iter_rows(named=True):
            domain = row["domain"]
            if domain not in n_items:
                raise refuse(name, f"holds domain {domain!r}, not one of {', '.join(self.domains)}")
            if row["nulls"]:
                raise refuse(name, f"holds {domain} rows without a user or item id")
            if not 1 <= row["lo"] <= row["hi"] <= n_items[domain]:
                item = row["lo"] if row["lo"] < 1 else row["hi"]
                raise refuse(name, f"holds {domain} item id {item}, outside 1..{n_items[domain]}")
            if n_users is not None and not 0 <= row["user_lo"] <= row["user_hi"] < n_users:
                user = row["user_lo"] if row["user_lo"] < 0 else row["user_hi"]
                raise refuse(name, f"holds user id {user}, outside 0..{n_users - 1}")
            if not row["splits"]:
                raise refuse(name, f"holds a split other than {', '.join(SPLITS)}")
        items = pl.scan_parquet(self._file("items.parquet"), glob=False)
        per_domain = items.group_by("domain").agg(
            n=pl.len(),
            unique=pl.col("item_id").n_unique(),
            lo=pl.col("item_id").min(),
            hi=pl.col("item_id").max(),
        )
        for row in per_domain.collect().iter_rows(named=True):
            n = n_items.get(row["domain"])
            if n is None or not row["n"] == row["unique"] == row["hi"] == n or row["lo"] != 1:
                raise refuse("items.parquet", f"does not number {row['domain']}'s items 1..{n or '?'}")
        users = pl.scan_parquet(self._file("users.parquet"), glob=False).select(
            n=pl.len(),
            unique=pl.col("user_id").n_unique(),
            lo=pl.col("user_id").min(),
            hi=pl.col("user_id").max(),
        )
        row = users.collect().row(0, named=True)
        if n_users and (
            not row["n"] == row["unique"] == n_users or (row["lo"], row["hi"]) != (0, n_users - 1)
        ):
            raise refuse("users.parquet", f"does not number the users 0..{n_users - 1}")
        return True

    def _sequences(self, domain: str, splits: tuple[str, ...]) -> pl.DataFrame:
        self.check_domain(domain)
        return (
            self.interactions()
            .filter((pl.col("domain") == domain) & pl.col("split").is_in(list(splits)))
            .group_by("user_id", maintain_order=True)
            .agg(items=pl.col("item_id"))
            .sort("user_id")
            .collect()
        )
