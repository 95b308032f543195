"""Checks of user input shared by the public functions: integers, sequences, texts, labels and class order.

Each check raises a ``TypeError`` or ``ValueError`` that names the argument, what was
received and how to fix it, so that bad input fails before any model runs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

_UNORDERED = (set, frozenset, dict)


def is_missing(value: Any) -> bool:
    """True for None, NaN (float or numpy) and pandas' NA/NaT."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """``value`` as an ``int``; integral numbers only (no floats, no bools).

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` is below ``minimum``.
    """
    if hasattr(value, "ndim") and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d numpy array or torch tensor
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_real(name: str, value: Any, *, limits: tuple[float, float] = (-math.inf, math.inf)) -> float:
    """``value`` as a float: a real number (not a bool), finite and within ``limits`` (inclusive).

    Raises:
        TypeError: not a real number.
        ValueError: NaN, infinite or outside ``limits``.
    """
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not (math.isfinite(value) and limits[0] <= value <= limits[1]):
        raise ValueError(f"{name} is {value}; it must be a finite number in [{limits[0]:g}, {limits[1]:g}]")
    return value


def check_grid(name: str, values: Any, *, limits: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, ...]:
    """``values`` as a tuple of floats, each a finite number within ``limits`` (inclusive).

    Raises:
        TypeError: not a sequence of real numbers (a string, a bool, ...).
        ValueError: empty, or a value that is NaN, infinite or outside ``limits`` (its position named).
    """
    values = check_sequence(name, values)
    if not values:
        raise ValueError(f"{name} is empty; give the values to try")
    out = []
    for i, v in enumerate(values):
        if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}[{i}] must be a number, got {v!r} ({type(v).__name__})")
        v = float(v)
        if not (math.isfinite(v) and limits[0] <= v <= limits[1]):
            raise ValueError(
                f"{name}[{i}] is {v}; every value must be a finite number in [{limits[0]:g}, {limits[1]:g}]"
            )
        out.append(v)
    return tuple(out)


def check_sequence(name: str, value: Any) -> list:
    """``value`` as a list; refuses strings (which would split into letters) and unordered collections.

    Raises:
        TypeError: a string, bytes, a set/dict, or something that is not iterable.
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be a sequence, got the string {value!r} (it would split into letters); "
            f"wrap it in a list: [{value!r}]"
        )
    if isinstance(value, _UNORDERED):
        raise TypeError(f"{name} must be an ordered sequence (list or tuple), got a {type(value).__name__}")
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a sequence (list or tuple), got {type(value).__name__}")
    return list(value)


def _positions(indices: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def check_texts(texts: Any, name: str = "texts") -> tuple[str, ...]:
    """Texts as a tuple of non-empty strings (whitespace is text: a test may use it).

    Raises:
        TypeError: not a sequence, or an item that is not a string.
        ValueError: a missing (None/NaN) or empty text, named by its index.
    """
    items = check_sequence(name, texts)
    missing = [i for i, t in enumerate(items) if is_missing(t)]
    if missing:
        raise ValueError(
            f"{name} at indices {_positions(missing)} are missing (None or NaN); drop those examples or fill them in"
        )
    wrong = [i for i, t in enumerate(items) if not isinstance(t, str)]
    if wrong:
        i = wrong[0]
        raise TypeError(
            f"{name}[{i}] is {items[i]!r} ({type(items[i]).__name__}), not a string; "
            f"{len(wrong)} texts are not strings: convert them with str() if that is meant"
        )
    empty = [i for i, t in enumerate(items) if not t]
    if empty:
        raise ValueError(f"{name} at indices {_positions(empty)} are empty; drop those examples or fill them in")
    return tuple(items)


def kind_of(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Number):
        return "number"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def check_labels(labels: Any, name: str = "labels") -> list:
    """Labels as a list of hashable values of one kind (all numbers, or all strings, ...).

    Raises:
        TypeError: not a sequence, or an unhashable label.
        ValueError: a missing (None/NaN) label, or labels of mixed kinds such as ``1`` and ``"1"``.
    """
    items = check_sequence(name, labels)
    missing = [i for i, y in enumerate(items) if is_missing(y)]
    if missing:
        raise ValueError(
            f"{name} at indices {_positions(missing)} are missing (None or NaN); drop those examples or fill them in"
        )
    unhashable = [i for i, y in enumerate(items) if not isinstance(y, Hashable)]
    if unhashable:
        i = unhashable[0]
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
    if distinct and all(kind_of(y) == "number" for y in distinct):
        return tuple(sorted(distinct))
    return distinct
