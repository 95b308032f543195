"""How prompts are run: :class:`RunOptions` (batch size, padding side, progress bar), passed as ``options=``.

Every public analysis takes one keyword ``options`` and never changes its result with
it (tested). :func:`takes_run_options` lets an analysis still accept the keywords it
replaced (``batch_size``, ``padding_side``, ``progress``), with a ``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class RunOptions:
    """How prompts are run: batch size, padding side and a progress bar.

    Results do not depend on these (tested): they trade memory for speed.

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
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if not isinstance(self.progress, bool):
            raise ValueError(f"progress must be True or False, got {self.progress!r}")


def run_options(options: RunOptions | None = None, **overrides: Any) -> RunOptions:
    """``options`` (default :class:`RunOptions`) with the given fields replaced (``None`` values ignored)."""
    options = options or RunOptions()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(options, **changes) if changes else options


#: The keywords :class:`RunOptions` replaced; public analyses still accept them (deprecated).
LEGACY_RUN_KEYWORDS = ("batch_size", "padding_side", "progress")
_LEGACY_NOTE = (
    "Note:",
    "    The legacy keywords ``batch_size``, ``padding_side`` and ``progress`` are still",
    "    accepted (with a ``DeprecationWarning``) and folded into ``options``; pass",
    "    ``options=RunOptions(...)`` instead.",
)
F = TypeVar("F", bound=Callable[..., Any])


def _fold_legacy(name: str, options: Any, legacy: dict[str, Any]) -> RunOptions:
    """``options`` with the legacy keywords folded in (warning when there are any)."""
    if options is not None and not isinstance(options, RunOptions):
        raise TypeError(
            f"{name}: options must be a RunOptions, got {type(options).__name__}; "
            "build one with ih.RunOptions(batch_size=..., padding_side=..., progress=...)"
        )
    if not legacy:
        return options or RunOptions()
    given = ", ".join(f"{k}={v!r}" for k, v in legacy.items())
    if options is not None:
        clash = {k: v for k, v in legacy.items() if v is not None and getattr(options, k) != v}
        if clash:
            raise TypeError(
                f"{name} got both options={options!r} and {', '.join(f'{k}={v!r}' for k, v in clash.items())}, "
                f"which disagree; pass only options (e.g. options=dataclasses.replace(options, {given}))"
            )
    warnings.warn(
        f"{name}({given}) is deprecated; pass options=RunOptions({given}) instead (ih.RunOptions)",
        DeprecationWarning,
        stacklevel=3,
    )
    return run_options(options, **legacy)


def _with_legacy_note(doc: str | None) -> str | None:
    if not doc:
        return doc
    lines = doc.rstrip().splitlines()
    indents = [len(x) - len(x.lstrip()) for x in lines[1:] if x.strip()]
    pad = " " * min(indents, default=0)
    return "\n".join([*lines, "", *(pad + x for x in _LEGACY_NOTE), pad])


def takes_run_options(fn: F) -> F:
    """Let ``fn`` (which takes a keyword-only ``options: RunOptions | None``) accept the legacy keywords.

    The wrapped function always receives a :class:`RunOptions` (the default when none
    is given). Calls with ``batch_size``, ``padding_side`` or ``progress`` still work:
    they are folded into ``options`` with a ``DeprecationWarning`` naming the
    replacement, and a ``TypeError`` is raised when they disagree with an ``options``
    given too. ``inspect.signature`` and ``help`` show ``options`` only; the docstring
    gets a note that the legacy keywords are accepted.
    """
    param = inspect.signature(fn).parameters.get("options")
    if param is None or param.kind is not inspect.Parameter.KEYWORD_ONLY:
        raise TypeError(f"{fn.__qualname__} must take a keyword-only options parameter to use takes_run_options")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        legacy = {k: kwargs.pop(k) for k in LEGACY_RUN_KEYWORDS if k in kwargs}
        kwargs["options"] = _fold_legacy(fn.__name__, kwargs.get("options"), legacy)
        return fn(*args, **kwargs)

    wrapper.__doc__ = _with_legacy_note(fn.__doc__)
    return wrapper  # type: ignore[return-value]
