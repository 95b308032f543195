"""The one formatter: the rounding rule of the report, the summary, the results' reprs and the figures' titles."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, SupportsFloat


def fmt(x: SupportsFloat | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; tiny non-zero values in scientific notation; ``"nan"`` if missing.

    >>> fmt(0.87766), fmt(2e-07), fmt(12.0)
    ('0.878', '2.0e-07', '12.000')
    """
    if x is None or math.isnan(float(x)):
        return "nan"
    return f"{x:.1e}" if x != 0 and abs(x) < 0.5 * 10.0**-digits else f"{x:.{digits}f}"


def fmt_ci(ci: Sequence[float], digits: int = 3) -> str:
    """``[lo, hi]`` with :func:`fmt`."""
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def show(v: Any, digits: int = 3) -> str:
    """Any value as the report and the results' reprs show it: an ``Estimate`` with its interval, numbers with
    :func:`fmt`, lists of numbers in brackets, dicts with text keys as JSON, anything else as ``str``.

    >>> from icl_heads.stats import wilson
    >>> show(wilson(40, 50)), show(0.5), show((0.25, 0.75)), show({"a": 1}), show("x")
    ('0.800 [0.670, 0.888]', '0.500', '[0.250, 0.750]', '{"a": 1}', 'x')
    """
    if isinstance(v, float):  # an Estimate with an interval (not NaN) shows it
        low = getattr(v, "low", math.nan)
        return f"{fmt(v, digits)} {fmt_ci((low, v.high), digits)}" if low == low else fmt(v, digits)
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(fmt(x, digits) for x in v) + "]"
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return json.dumps(v, default=str)
    return str(v)
