"""Declared options: what a strategy or a backbone can be set to, declared once, in its own file.

A unit's options are a frozen dataclass whose fields are made with `option(...)`: the default, a help
line, the allowed range or choices, and the search space `xdrec tune` samples (`tune=`; none: not tuned).
Everything else is generated from that one declaration: the command line's options, `run`'s config,
`tune`'s spaces, and the range checks (`check`, called from the dataclass's `__post_init__`). Kept free of
torch and polars, like the configs that use it.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, field, fields
from typing import Any

from xdrec.errors import OptionError

Param = int | float | str | bool
SPEC = "xdrec.option"  # the key of a field's metadata that holds its `Spec`


@dataclass(frozen=True)
class Choice:
    """One dimension of a search: `values` to choose from, or a (low, high) range (`log`: log-uniform)."""

    values: tuple[Param, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def suggest(self, trial: Any, name: str) -> Param:
        """The value an Optuna trial proposes for `name`."""
        if self.values:
            return trial.suggest_categorical(name, self.values)  # type: ignore[no-any-return]
        return trial.suggest_float(name, self.low, self.high, log=self.log)  # type: ignore[no-any-return]

    def holds(self, value: Param) -> bool:
        if self.values:  # of the same type too: 64.0 is no hidden size, True no batch size
            return any(value == v and type(value) is type(v) for v in self.values)
        return type(value) in (int, float) and self.low <= value <= self.high  # nan is outside

    def __str__(self) -> str:
        return (
            f"one of {', '.join(map(str, self.values))}" if self.values else f"{self.low:g} to {self.high:g}"
        )


@dataclass(frozen=True)
class Spec:
    """What an option is besides its type and default (both the dataclass field's)."""

    help: str
    low: float | None = None  # allowed range: low <= value (< or <=) high
    high: float | None = None
    high_open: bool = False  # True: value < high
    choices: tuple[str, ...] = ()
    tune: Choice | None = None  # the search space of `xdrec tune`; None: not tuned

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed (None: it is)."""
        if self.choices and value not in self.choices:
            return f"must be {' or '.join(self.choices)}, got {value!r}"
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not math.isfinite(value):  # nan passes every comparison below
            return f"must be a finite number, got {value}"
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if (self.low is not None and value < self.low) or too_high:
            if self.high is None:
                return f"must be at least {self.low:g}, got {value}"
            low = "-inf" if self.low is None else f"{self.low:g}"
            return f"must be in [{low}, {self.high:g}{')' if self.high_open else ']'}, got {value}"
        return None


def option(
    default: Param,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    high_open: bool = False,
    choices: tuple[str, ...] = (),
    tune: Choice | None = None,
) -> Any:
    """A dataclass field that is a declared option (see the module doc)."""
    spec = Spec(help, low, high, high_open, choices, tune)
    return field(default=default, metadata={SPEC: spec})


def declared(options: Any) -> list[tuple[Field[Any], Spec]]:
    """The declared options of an options dataclass (class or instance), in declaration order."""
    return [(f, f.metadata[SPEC]) for f in fields(options) if SPEC in f.metadata]


def check(options: Any, owner: str) -> None:
    """Raise a one-line OptionError (a usage error: exit 2) for the first value outside its declared
    range or choices."""
    for f, spec in declared(options):
        problem = spec.problem(getattr(options, f.name))
        if problem is not None:
            raise OptionError(f"{owner}: {f.name} {problem}")


def space(options: Any, prefix: str = "") -> dict[str, Choice]:
    """The tuned options of an options dataclass, by `<prefix><field>`."""
    return {f"{prefix}{f.name}": spec.tune for f, spec in declared(options) if spec.tune is not None}
