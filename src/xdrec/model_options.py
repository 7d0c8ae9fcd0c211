"""The architecture settings a user gives (`--hidden`, `--blocks`, ...), over a backbone's defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from xdrec.errors import OptionError, XdrecError
from xdrec.models import BackboneConfig


@dataclass(frozen=True)
class ModelOptions:
    """Architecture settings given by the user; None keeps the base's value.

    The base is the backbone's defaults for `pretrain` and the source model's architecture for the
    strategies, which build on it (`finetune` copies its blocks, so it refuses another shape).
    """

    hidden: int | None = None
    blocks: int | None = None
    heads: int | None = None
    dropout: float | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        for name in ("hidden", "blocks", "heads", "max_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise OptionError(f"--dropout must be in [0, 1), got {self.dropout}")

    def given(self) -> dict[str, int | float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def apply(self, base: BackboneConfig) -> BackboneConfig:
        try:
            return replace(base, **self.given())  # type: ignore[type-var]
        except ValueError as e:  # the config's own check, e.g. hidden not divisible by heads
            raise XdrecError(f"invalid model settings: {e}") from None
