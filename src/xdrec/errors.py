"""The one exception family, and how the CLI's error boundary words every expected failure.

Only the CLI entry point turns these into `error: ...` and exit code 1.
"""

from __future__ import annotations

import errno
import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xdrec.workspace import Workspace


class XdrecError(Exception):
    """A problem the user can fix: the message says what went wrong and what to do next."""


class OptionError(XdrecError):
    """An option's value outside what it can be (a usage error: the CLI exits 2, as for a bad option)."""


# Libraries whose exceptions mean bad input data (a damaged or foreign file), not a bug in xdrec.
_DATA_LIBRARIES = ("polars", "safetensors", "pyarrow", "huggingface_hub")


def explain(error: BaseException, workspace: Workspace) -> str | None:
    """One line naming the file and the fix for an expected failure; None for a bug (keep the traceback)."""
    if isinstance(error, XdrecError):
        return str(error)
    if isinstance(error, OSError) and not type(error).__module__.startswith(_DATA_LIBRARIES):
        return _os_error(error, workspace)
    text = str(error)
    if "No space left on device" in text or "os error 28" in text:  # a library's wording of ENOSPC
        return (
            f"no space left on the device holding {workspace.root} ({first_line(error)}): free some space "
            "or pass another --workspace"
        )
    if type(error).__module__.split(".")[0] in _DATA_LIBRARIES or isinstance(error, UnicodeDecodeError):
        damaged = workspace.damaged_files()
        if damaged:
            path, fix = damaged[0]
            more = (
                f" ({len(damaged) - 1} more damaged file(s) in {workspace.root})" if len(damaged) > 1 else ""
            )
            return f"{path} is damaged (truncated or not the format its name says): {fix}{more}"
        return f"could not read the data ({first_line(error)}); a stage may have been interrupted: rerun it"
    return None


def _os_error(error: OSError, workspace: Workspace) -> str:
    where = error.filename if error.filename is not None else workspace.root
    quoted = shlex.quote(str(where))
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"cannot write or read {where} ({error.strerror.lower() if error.strerror else 'denied'}): "
            f"make it writable (chmod -R u+rwX {quoted}) or pass another --workspace"
        )
    if error.errno == errno.ENOSPC:
        return f"no space left on the device holding {where}: free some space or pass another --workspace"
    if error.errno == errno.ENOTDIR:
        return f"{where}: a path inside it is a file, not a folder: pass a folder to --workspace"
    if error.errno == errno.ENOENT:
        return f"{where} does not exist"
    return f"{where}: {error.strerror or first_line(error)}"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (library messages can run to pages)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
