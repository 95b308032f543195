"""The one rounding rule of the report, the summary and the figures' titles."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; tiny non-zero values in scientific notation; ``"nan"`` if missing.

    >>> fmt(0.87766), fmt(2e-07), fmt(12.0)
    ('0.878', '2.0e-07', '12.000')
    """
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if x != 0 and abs(x) < 0.5 * 10.0**-digits:
        return f"{x:.1e}"
    return f"{x:.{digits}f}"


def fmt_ci(ci: Sequence[float], digits: int = 3) -> str:
    """``[lo, hi]`` with :func:`fmt`."""
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"
