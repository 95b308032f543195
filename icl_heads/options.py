"""How prompts are run: :class:`RunOptions`, passed as ``options=``; it never changes a result (tested)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    """How prompts are run: batch size, padding side and a progress bar (they trade memory for speed).

    Raises:
        ValueError: ``batch_size`` is not a positive integer, ``padding_side`` is unknown or
            ``progress`` is not a bool.
    """

    batch_size: int = 32
    padding_side: str = "right"
    progress: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ValueError(f"batch_size must be an integer of at least 1, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False, got {self.progress!r}")


def run_options(options: RunOptions | None = None, **overrides: Any) -> RunOptions:
    """``options`` (default :class:`RunOptions`) with the given fields replaced (``None`` values ignored).

    Raises:
        TypeError: ``options`` is neither ``None`` nor a :class:`RunOptions`.
    """
    if options is not None and not isinstance(options, RunOptions):
        raise TypeError(
            f"options must be a RunOptions, got {type(options).__name__}; "
            "build one with ih.RunOptions(batch_size=..., padding_side=..., progress=...)"
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(options or RunOptions(), **changes) if changes else options or RunOptions()
