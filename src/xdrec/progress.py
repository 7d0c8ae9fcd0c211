"""A progress bar for work that counts things (users ranked, users embedded), on stderr.

stdout stays the table or the JSON. In a terminal the bar moves; in a pipe or a log file it ends as one
line (what was done, how many, how long). Under torchrun only the first process shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from xdrec.distributed import launched

Update = Callable[[int, int], None]  # (done, total)


@contextmanager
def counting(description: str, unit: str, *, enabled: bool) -> Iterator[Update]:
    """A bar `description  ━━━━  done/total unit  0:00:12`; yields the `update(done, total)` to call."""
    shown = enabled and launched().main
    bar = Progress(
        TextColumn("{task.description}", markup=False),  # model names are data
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=Console(stderr=True, markup=False),
        disable=not shown,
    )
    with bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)
