"""Checks of user input shared by the public functions; each error names the argument, the value and the fix."""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np


def is_missing(value: Any) -> bool:
    """True for None, NaN (float or numpy) and pandas' NA/NaT."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def _scalar(value: Any) -> Any:
    """A 0-d numpy array or torch tensor as its Python value."""
    return value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") else value


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an ``int``; integral numbers only (no floats, no bools), at least ``minimum``."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {int(value)}")
    return int(value)


def check_real(
    name: str, value: Any, *, limits: tuple[float, float] = (-math.inf, math.inf), must: str = "it must"
) -> float:
    """``value`` as a float: a real number (not a bool), finite and within ``limits`` (inclusive)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and limits[0] <= value <= limits[1]):
        raise ValueError(f"{name} is {float(value)}; {must} be a finite number in [{limits[0]:g}, {limits[1]:g}]")
    return float(value)


def check_grid(name: str, values: Any, *, limits: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, ...]:
    """``values`` as a non-empty tuple of floats, each checked by :func:`check_real` (its position named)."""
    values = check_sequence(name, values)
    if not values:
        raise ValueError(f"{name} is empty; give the values to try")
    return tuple(check_real(f"{name}[{i}]", v, limits=limits, must="every value must") for i, v in enumerate(values))


def check_sequence(name: str, value: Any) -> list:
    """``value`` as a list; refuses strings (which would split into letters) and unordered collections."""
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be a sequence, got the string {value!r} (it would split into letters); "
            f"wrap it in a list: [{value!r}]"
        )
    if isinstance(value, (set, frozenset, dict)):
        raise TypeError(f"{name} must be an ordered sequence (list or tuple), got a {type(value).__name__}")
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence (list or tuple), got {type(value).__name__}")
    return list(value)


def listed(items: Sequence[Any], limit: int = 5) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are."""
    return ", ".join(map(str, items[:limit])) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _refuse(name: str, indices: list[int], problem: str) -> None:
    """Raise a ValueError naming the indices of the items that are ``problem``."""
    if indices:
        raise ValueError(f"{name} at indices {listed(indices)} are {problem}; drop those examples or fill them in")


def check_texts(texts: Any, name: str = "texts") -> tuple[str, ...]:
    """Texts as a tuple of non-empty strings (whitespace is text: a test may use it)."""
    items = check_sequence(name, texts)
    _refuse(name, [i for i, t in enumerate(items) if is_missing(t)], "missing (None or NaN)")
    wrong = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if wrong:
        i = wrong[0]
        raise TypeError(
            f"{name}[{i}] is {items[i]!r} ({type(items[i]).__name__}), not a string; "
            f"{len(wrong)} texts are not strings: convert them with str() if that is meant"
        )
    _refuse(name, [i for i, t in enumerate(items) if not t], "empty")
    return tuple(items)


def kind_of(value: Any) -> str:
    """``"bool"``, ``"number"``, ``"string"`` or the type's name."""
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    return (
        "number" if isinstance(value, numbers.Number) else "string" if isinstance(value, str) else type(value).__name__
    )


def check_labels(labels: Any, name: str = "labels") -> list:
    """Labels as a list of hashable values of one kind (all numbers, or all strings, ...)."""
    items = check_sequence(name, labels)
    _refuse(name, [i for i, y in enumerate(items) if is_missing(y)], "missing (None or NaN)")
    i = next((i for i, y in enumerate(items) if not isinstance(y, Hashable)), None)
    if i is not None:
        raise TypeError(f"{name}[{i}] is {items[i]!r} ({type(items[i]).__name__}); labels must be hashable values")
    first: dict[str, int] = {}
    for i, y in enumerate(items):
        first.setdefault(kind_of(y), i)
    if len(first) > 1:
        examples = ", ".join(f"{items[i]!r} ({kind}, index {i})" for kind, i in first.items())
        raise ValueError(
            f"{name} mix kinds: {examples}; a label such as 1 and '1' would be two classes. "
            "Convert them to one kind (all numbers or all strings)"
        )
    return items


def natural_order(labels: Sequence[Any]) -> tuple[Any, ...]:
    """The distinct labels in their natural order: numeric order for numbers, first appearance otherwise.

    >>> natural_order([10, 2, 10]), natural_order(["sport", "food", "sport"])
    ((2, 10), ('sport', 'food'))
    """
    distinct = tuple(dict.fromkeys(labels))
    return tuple(sorted(distinct)) if distinct and all(kind_of(y) == "number" for y in distinct) else distinct
