"""Where each stage's files live, and atomic writes.

Every stage reads what the previous one wrote by convention, so commands chain with no paths typed:

    raw/<Domain>.parquet                 fetch
    datasets/<Source>+<Target>/          prepare   (the most recent one is recorded in workspace.json)
    models/<name>/                       pretrain, transfer (written whole when training ends)
    runs/<name>/                         pretrain, transfer: train_state/ and metrics.jsonl while training
    embeddings/<name>.safetensors        embed
    reports/                             evaluate
    tuning/<dataset>/<model>.{journal,json}  tune (the search, and the settings it chose)

One writer at a time per area: a command that writes raw/, datasets/, models/, embeddings/, reports/ or
tuning/ holds an advisory lock on it (`Workspace.writing`), so a second writer stops with a clear message
while readers are never blocked: they see the previous or the next result, as every write is a rename.
Temp files of an interrupted writer are swept by the next writer of the area.

xdrec touches only what it made: every temp name starts with `.xdrec-` (the sweep removes nothing else),
no symbolic link is followed (lock files are opened with O_NOFOLLOW, an area that links out of the
workspace is refused), and names typed by the user (domains, datasets, models) are checked to be one
plain path component before they become paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import getpass
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xdrec.errors import XdrecError

DEFAULT_WORKSPACE = "xdrec-workspace"
WORKSPACE_ENV = "XDREC_WORKSPACE"
# Every temporary name xdrec creates starts with this (and nothing else it sweeps): see `sweep`.
TEMP_PREFIX = ".xdrec-"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_name(name: str, what: str = "domain") -> None:
    """Raise unless `name` is safe as one file name component (it becomes raw/<name>.parquet, part of a
    dataset folder's name, ...): no `/`, no `..`, no glob or markup characters."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise XdrecError(
            f"{name!r} cannot be a {what} name: use up to 64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )


def temp_name(name: str) -> str:
    """The prefix of the temporary names that stand in for `name` while it is written."""
    return f"{TEMP_PREFIX}tmp-{name}."


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, on failure remove it.

    Works for files and directories: an interrupted stage leaves the previous result intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_name(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _replace_folder(new: Path, path: Path) -> None:
    """Put folder `new` in the place of folder `path`: one atomic exchange where the kernel offers it
    (Linux renameat2), so a reader sees the old folder or the new one, never none; else two renames, and
    a kill between them leaves `.<name>.old`, which `sweep` puts back."""
    if _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # now the old folder
        return
    old = _old_path(path)
    shutil.rmtree(old, ignore_errors=True)
    path.rename(old)
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) == 0


_OLD = f"{TEMP_PREFIX}old-"


def _old_path(path: Path) -> Path:
    return path.with_name(f"{_OLD}{path.name}")


def sweep(folder: Path, depth: int = 2) -> list[Path]:
    """Remove what interrupted writers left in `folder` and its subfolders down to `depth` levels (the
    `.xdrec-*` temp files and folders, and nothing else); put back a folder that was moved aside to
    `.xdrec-old-<name>` and never replaced. Returns what was removed.

    Symbolic links are never followed (a linked folder is not descended into, a link is only unlinked).
    Only call it while holding the folder's write lock: a live writer's temp files look the same.
    """
    if folder.is_symlink() or not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith(TEMP_PREFIX):
            if depth > 0 and entry.is_dir() and not entry.is_symlink():
                removed += sweep(entry, depth - 1)
            continue
        if entry.name.startswith(_OLD):
            original = entry.with_name(entry.name.removeprefix(_OLD))
            if not original.exists() and not original.is_symlink():
                entry.rename(original)
                continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)  # rmtree itself never follows a link inside
        else:
            entry.unlink()
        removed.append(entry)
    return removed


def check_writable(folder: Path) -> None:
    """Raise unless files can be created in `folder` (or, when it does not exist yet, its nearest parent).

    Called before a stage's long work, so that an hour of training is not lost to a read-only folder.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise XdrecError(f"{existing} is a file, not a folder: pass a folder to --workspace")
    bad = [p for p in (existing, *_folders_below(existing, folder)) if not os.access(p, os.W_OK | os.X_OK)]
    if bad:
        raise XdrecError(
            f"cannot write in {bad[0]} (permission denied): make it writable "
            f"(chmod u+w {shlex.quote(str(bad[0]))}) or pass another --workspace"
        )


def _folders_below(existing: Path, folder: Path) -> list[Path]:
    """The existing folders inside `folder` (it included): each is written into by the stage."""
    if existing != folder or not folder.is_dir():
        return []
    return [p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()]


def write_json(path: Path, obj: object) -> None:
    """Write `obj` as pretty, key-sorted JSON atomically (the same object gives the same bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, data: bytes | None = None) -> dict:
    """The JSON object in `path` (or in `data`, bytes already read from it); one line naming it if not."""
    try:
        obj = json.loads(path.read_bytes() if data is None else data)
    except FileNotFoundError:
        raise XdrecError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise XdrecError(
            f"{path} is not valid JSON ({e}): rerun the stage that writes it"  # str(e) says where
        ) from None
    if not isinstance(obj, dict):
        raise XdrecError(
            f"{path} holds a JSON {type(obj).__name__}, not an object: rerun the stage that writes it"
        )
    return obj


def literal_path(path: Path | str) -> str:
    """`path` for a Polars reader that has no `glob=False` (scan_ndjson): its glob characters escaped, so
    `D[1].jsonl` reads that file and never `D1.jsonl`."""
    return "".join(f"[{c}]" if c in "[*?" else c for c in str(path))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _looks_whole(path: Path) -> bool:
    """A cheap structural check of parquet (magic at both ends), safetensors (header and data sizes) and
    JSON files; other files are taken as whole."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if path.suffix == ".parquet":
                head = f.read(4)
                f.seek(max(size - 4, 0))
                return size >= 12 and head == b"PAR1" and f.read(4) == b"PAR1"
            if path.suffix == ".safetensors":
                n = int.from_bytes(f.read(8), "little")
                if n <= 0 or 8 + n > size:
                    return False
                header = json.loads(f.read(n))
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
                return 8 + n + max(ends, default=0) == size
            if path.suffix == ".json":
                json.loads(f.read())
        return True
    except (ValueError, KeyError, TypeError, IndexError, OSError):
        return False


def _rewrite_hint(workspace: Workspace, path: Path) -> str:
    area, *rest = path.relative_to(workspace.root).parts
    quoted = shlex.quote(str(workspace.root))
    if area == "raw":
        return f"delete it and rerun `xdrec --workspace {quoted} fetch {path.stem}`"
    if area == "datasets":
        return f"rerun `xdrec --workspace {quoted} prepare SOURCE TARGET` with the options it was made with"
    if area == "models":
        model = rest[0]
        strategy = model.removesuffix("-reverse")
        command = (
            "pretrain"
            if model in ("source-only", "target-only")
            else f"transfer --strategy {strategy}" + (" --domain SOURCE" if strategy != model else "")
        )
        return f"retrain it: `xdrec --workspace {quoted} {command}`"
    if area == "embeddings":
        return f"rerun `xdrec --workspace {quoted} embed`"
    if area == "tuning":  # the settings file; the search itself (.journal) restores it
        return f"delete it and rerun `xdrec --workspace {quoted} tune {path.stem}` with the search's options"
    return f"rerun `xdrec --workspace {quoted} evaluate`"


# The parts of a workspace a writing command locks (cli._WRITES says which); readers lock nothing.
Area = Literal["raw", "datasets", "models", "embeddings", "reports", "tuning"]
AREAS: tuple[Area, ...] = ("raw", "datasets", "models", "embeddings", "reports", "tuning")


@contextlib.contextmanager
def _lock(path: Path, area: str, command: str) -> Iterator[None]:
    """An advisory lock (flock: released by the kernel when the holder dies, even by SIGKILL).

    The lock file is opened without following a link: a `.locks/<area>.lock` planted as a link to
    another file must not get that file truncated."""
    if path.parent.is_symlink():
        raise XdrecError(
            f"{path.parent} is a symbolic link: xdrec keeps its locks in a folder of its own; remove it"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if path.is_symlink() or not path.is_file():
            raise XdrecError(
                f"{path} is not a plain file (a symbolic link or a folder): xdrec opens its lock files "
                "without following links; remove it"
            ) from None
        raise e
    with os.fdopen(fd, "r+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another xdrec command"
            raise XdrecError(
                f"{holder} is writing {area}/ in {path.parent.parent} right now: wait for it to finish "
                "(two writers would mix their results)"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"`xdrec {command}` (pid {os.getpid()})")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> Workspace:
        if root is not None and not str(root).strip():
            raise XdrecError("--workspace is empty: pass a folder")
        return cls(Path(root or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE))

    @classmethod
    def demo(cls) -> Workspace:
        """`demo`'s one folder in the system temp dir (reused, not piled up). Its name is predictable, so
        anyone could have made it first: it is used only when it is a real folder owned by this user that
        no one else can write in (made here with mode 0700)."""
        root = Path(tempfile.gettempdir()) / f"xdrec-demo-{getpass.getuser()}"
        with contextlib.suppress(FileExistsError):
            os.mkdir(root, 0o700)
        info = os.lstat(root)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise XdrecError(
                f"{root} was not made by you (it is a link, someone else's, or writable by others): "
                "remove it, or pass --workspace DIR"
            )
        return cls(root)

    def check_folder(self) -> None:
        if not str(self.root).strip():
            raise XdrecError("--workspace is empty: pass a folder")
        if self.root.exists() and not self.root.is_dir():
            raise XdrecError(f"--workspace {self.root} is a file, not a folder: pass a folder")

    def check_inside(self, folder: Path) -> None:
        """Refuse a folder of the workspace that is a symbolic link out of it: a writer would write (and
        sweep) wherever it points, in folders xdrec did not make."""
        if not folder.is_symlink():
            return
        real, root = folder.resolve(), self.root.resolve()
        if real != root and root not in real.parents:
            raise XdrecError(
                f"{folder} is a symbolic link to {real}, outside the workspace: xdrec writes only inside "
                f"{self.root}; replace the link with a folder (or make the whole workspace live there)"
            )

    # --- one writer per area ---
    @contextlib.contextmanager
    def writing(self, areas: Sequence[Area], command: str) -> Iterator[None]:
        """Hold the write lock of each area for the block, after checking the areas are writable and
        sweeping what an interrupted writer left there. A second writer of an area stops with an error
        naming the first (waiting could mean hours behind a training run); readers take no lock."""
        self.check_folder()
        for area in areas:
            for folder in self.area_dirs(area):
                self.check_inside(folder)
                check_writable(folder)
        with contextlib.ExitStack() as stack:
            if not self.root.exists():  # a command that fails before writing anything leaves no workspace
                stack.callback(self._remove_if_only_locks)
            for area in sorted(set(areas)):  # one order for everyone
                stack.enter_context(_lock(self.root / ".locks" / f"{area}.lock", area, command))
                for folder in self.area_dirs(area):
                    sweep(folder)
                if area == "datasets":  # workspace.json is written by prepare
                    for tmp in self.root.iterdir():
                        if tmp.name.startswith(temp_name("workspace.json")) and not tmp.is_dir():
                            tmp.unlink()
            yield

    def _remove_if_only_locks(self) -> None:
        if self.root.is_dir() and [p.name for p in self.root.iterdir()] == [".locks"]:
            shutil.rmtree(self.root, ignore_errors=True)

    def area_dirs(self, area: Area) -> list[Path]:
        """The folders an area's writer writes: models/ and the training runs behind them."""
        return [self.root / area, *([self.runs_dir] if area == "models" else [])]

    def damaged_files(self) -> list[tuple[Path, str]]:
        """Files of the workspace that cannot be what their suffix says (truncated by a crash or a full
        disk, or another format saved under that name), each with the command that rewrites it."""
        damaged = []
        for area in AREAS:
            folder = self.root / area
            files = sorted(folder.rglob("*")) if folder.is_dir() else []
            for path in files:
                hidden = any(part.startswith(".") for part in path.relative_to(self.root).parts)
                if not hidden and path.is_file() and not _looks_whole(path):
                    damaged.append((path, _rewrite_hint(self, path)))
        return damaged

    # --- fetch ---
    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    def raw(self, domain: str) -> Path:
        check_name(domain)
        return self.raw_dir / f"{domain}.parquet"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    # --- prepare ---
    def dataset_dir(self, name: str) -> Path:
        parts = name.split("+")
        if len(parts) != 2:
            raise XdrecError(f"{name!r} is not a dataset name: datasets are named SOURCE+TARGET")
        for part in parts:
            check_name(part)
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
        check_name(name, "model")
        return self.root / "models" / name

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, name: str) -> Path:
        """Where the training of models/<name>/ keeps its resumable state and live metrics until it ends."""
        check_name(name, "model")
        return self.runs_dir / name

    def embeddings(self, name: str) -> Path:
        check_name(name, "model")
        return self.root / "embeddings" / f"{name}.safetensors"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    # --- tune ---
    def tuning_dir(self, dataset: str) -> Path:
        return self.root / "tuning" / dataset

    def _state(self) -> dict:
        path = self.root / "workspace.json"
        return read_json(path) if path.exists() else {}
