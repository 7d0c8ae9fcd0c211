"""Where each stage's files live, and atomic writes.

Every stage reads what the previous one wrote by convention, so commands chain with no paths typed:

    raw/<Domain>.parquet                 fetch
    datasets/<Source>+<Target>/          prepare   (the most recent one is recorded in workspace.json)
    models/<name>/                       pretrain, transfer
    embeddings/<name>.safetensors        embed
    reports/                             evaluate
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xdrec.errors import XdrecError

DEFAULT_WORKSPACE = "xdrec-workspace"
WORKSPACE_ENV = "XDREC_WORKSPACE"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, on failure remove it.

    Works for files and directories: an interrupted stage leaves the previous result intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            # Directories cannot be replaced by one rename: move the old one aside first.
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj: object) -> None:
    """Write `obj` as pretty, key-sorted JSON atomically (the same object gives the same bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise XdrecError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise XdrecError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> Workspace:
        return cls(Path(root or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE))

    # --- fetch ---
    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    def raw(self, domain: str) -> Path:
        return self.raw_dir / f"{domain}.parquet"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    # --- prepare ---
    def dataset_dir(self, name: str) -> Path:
        return self.root / "datasets" / name

    def set_current_dataset(self, name: str) -> None:
        state = self._state()
        state["dataset"] = name
        write_json(self.root / "workspace.json", state)

    def current_dataset(self, name: str | None = None) -> str:
        """The dataset a stage works on: `name` if given, else the one `prepare` wrote last."""
        if name:
            if not (self.dataset_dir(name) / "manifest.json").exists():
                raise XdrecError(f"no prepared dataset {name!r} in {self.root}: run `xdrec prepare` first")
            return name
        current = self._state().get("dataset")
        if not current or not (self.dataset_dir(current) / "manifest.json").exists():
            raise XdrecError(
                f"no prepared dataset in {self.root}: run `xdrec prepare SOURCE TARGET` first "
                "(or `xdrec demo` for the synthetic default)"
            )
        return current

    # --- pretrain / transfer / embed / evaluate ---
    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def embeddings(self, name: str) -> Path:
        return self.root / "embeddings" / f"{name}.safetensors"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def _state(self) -> dict:
        path = self.root / "workspace.json"
        return read_json(path) if path.exists() else {}
