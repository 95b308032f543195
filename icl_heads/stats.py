"""One statistics module: the :class:`Estimate` type and every interval the package reports (95% by default).

An :class:`Estimate` *is* a ``float`` that also holds ``low``, ``high``, ``n`` and ``method``::

    >>> from icl_heads.stats import bootstrap_mean, wilson
    >>> e = wilson(40, 50)
    >>> round(float(e), 2), e.n, e.method
    (0.8, 50, 'wilson')
    >>> e.excludes(0.5)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

#: how each kind of interval was computed, as written in ``Estimate.method``
METHODS = ("bootstrap", "paired bootstrap", "wilson", "samples", "point")
_FIELDS = ("value", "low", "high", "n", "method", "level")


class Estimate(float):
    """A number with its interval: ``value`` (the float itself), ``low``, ``high``, ``n`` and ``method``.

    Arithmetic gives a plain ``float``; two estimates are equal when their values are. The value need not lie
    inside its interval (a percentile bootstrap of a spread or a ratio can exclude it).

    Attributes:
        value: the point estimate.
        low: lower end of the interval (NaN when there is none).
        high: upper end of the interval.
        n: the number of independent units it rests on (prompts, trials, samples).
        method: how the interval was computed, one of :data:`METHODS`.
        level: the interval's coverage (default 0.95).

    Raises:
        ValueError: ``method`` is unknown, ``n`` is not a count, ``level`` is not in (0, 1),
            only one end of the interval is given, ``low > high``, or a ``"point"`` estimate has an interval.
    """

    __slots__ = ("high", "level", "low", "method", "n")
    low: float
    high: float
    n: int
    method: str
    level: float

    def __new__(
        cls,
        value: float,
        low: float = math.nan,
        high: float = math.nan,
        n: int = 0,
        method: str = "point",
        level: float = 0.95,
    ) -> Estimate:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if isinstance(n, bool) or not float(n).is_integer() or n < 0:
            raise ValueError(f"n must be a count of at least 0, got {n!r}")
        _check_level(float(level))
        low, high = float(low), float(high)
        if math.isnan(low) != math.isnan(high):
            raise ValueError(f"an interval needs both ends or neither (NaN), got [{low}, {high}]")
        if low > high:
            raise ValueError(f"the interval's low end {low} is above its high end {high}")
        if method == "point" and not math.isnan(low):
            raise ValueError("a point estimate has no interval; name the method that computed it")
        self = super().__new__(cls, float(value))
        for name, v in zip(_FIELDS[1:], (low, high, int(n), method, float(level)), strict=True):
            object.__setattr__(self, name, v)
        return self

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"an Estimate is immutable; build a new one instead of setting {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Estimate, tuple(self.to_dict().values()))

    @property
    def value(self) -> float:
        """The point estimate as a plain float."""
        return float(self)

    @property
    def ci(self) -> tuple[float, float]:
        """``(low, high)``."""
        return (self.low, self.high)

    def excludes(self, x: float = 0.0) -> bool:
        """True when the interval lies entirely above or entirely below ``x`` (False without an interval)."""
        return bool(self.low > x or self.high < x)

    def to_dict(self) -> dict[str, Any]:
        """The plain values (``value, low, high, n, method, level``)."""
        return {k: getattr(self, k) for k in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        """Inverse of :meth:`to_dict`."""
        defaults = {"low": math.nan, "high": math.nan, "n": 0, "method": "point", "level": 0.95}
        return cls(d["value"], *(d.get(k, v) for k, v in defaults.items()))

    def __repr__(self) -> str:
        if math.isnan(self.low):
            return f"Estimate({float(self):.4g}, n={self.n})"
        level = "" if self.level == 0.95 else f", level={self.level:g}"
        return f"Estimate({float(self):.4g} [{self.low:.4g}, {self.high:.4g}], n={self.n}, {self.method}{level})"

    __str__ = float.__repr__

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython
        p.text(repr(self))


def _check_level(level: float) -> float:
    """The tail probability ``(1 - level) / 2``, or a ValueError if ``level`` is not in (0, 1)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    return (1 - level) / 2


def bootstrap_mean(
    values: Any,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    value: float | None = None,
    paired: bool = False,
) -> Estimate:
    """The mean of ``values`` with its percentile bootstrap interval.

    ``value`` replaces the point estimate when the caller computed the mean already (e.g. in float32);
    ``paired`` marks per-unit differences of a paired design (method ``"paired bootstrap"``).

    Raises:
        ValueError: ``values`` is empty.
    """
    x = np.asarray(values, dtype=float).ravel()
    means = x[resamples(x.size, n_boot=n_boot, seed=seed)].mean(axis=1)
    alpha = _check_level(level)
    point = x.mean() if value is None else value
    low, high = np.quantile(means, alpha), np.quantile(means, 1 - alpha)
    return Estimate(point, low, high, x.size, "paired bootstrap" if paired else "bootstrap", level)


def bootstrap_ci(values: Any, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """The interval of :func:`bootstrap_mean`."""
    return bootstrap_mean(values, n_boot=n_boot, level=level, seed=seed).ci


def t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and its t interval (``n - 1`` degrees of freedom); NaN ends for one value."""
    x = np.asarray(values, dtype=float).ravel()
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def resamples(n: int, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` row indices drawn with replacement; use the same for every quantity of a paired design."""
    if n < 1:
        raise ValueError("cannot bootstrap an empty set of values")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    paired: bool = False,
) -> Estimate:
    """``statistic(index)`` on all ``n`` rows, with the percentile interval of its value on bootstrap resamples.

    ``statistic`` maps an integer array of row indices to a number; resamples where it is not finite are dropped.

    Raises:
        ValueError: ``n`` is not positive, or the statistic is never finite.
    """
    _check_level(level)
    value = float(statistic(np.arange(n)))
    samples = np.array([statistic(idx) for idx in resamples(n, n_boot=n_boot, seed=seed)], dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        raise ValueError("the statistic is not finite on any bootstrap resample")
    return from_samples(value, samples, n=n, level=level, method="paired bootstrap" if paired else "bootstrap")


def from_samples(
    value: float, samples: Any, *, n: int | None = None, level: float = 0.95, method: str = "samples"
) -> Estimate:
    """``value`` with the central ``level`` interval of ``samples`` (e.g. random head sets, resampled statistics).

    ``n`` is the number of independent units (default: the number of samples); ``method`` how they were drawn.

    Raises:
        ValueError: ``samples`` is empty.
    """
    s = np.asarray(samples).ravel()
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(float)  # float32 samples keep their precision, as np.quantile treats them
    if s.size == 0:
        raise ValueError("need at least one sample for an interval")
    alpha = round(_check_level(level), 12)  # the quantile levels 0.025 and 0.975 exactly, not 0.025000000000000022
    lo, hi = float(np.quantile(s, alpha)), float(np.quantile(s, round(1 - alpha, 12)))
    return Estimate(value, lo, hi, s.size if n is None else n, method, level)


def wilson(successes: float, n: int, z: float = 1.96) -> Estimate:
    """The proportion ``successes / n`` (``successes`` may be fractional) with its Wilson interval, clipped to [0, 1].

    Raises:
        ValueError: ``n`` is not positive.
    """
    if n <= 0:
        raise ValueError(f"need at least one trial, got n={n}")
    p = float(successes) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)
    return Estimate(successes / n, float(low), float(high), n, "wilson")


def empirical_p(observed: float, baseline: Sequence[float] | np.ndarray, *, lower_is_extreme: bool = True) -> float:
    """(1 + #baseline at least as extreme as ``observed``) / (1 + #baseline)."""
    b = np.asarray(baseline, dtype=float).ravel()
    extreme = (b <= observed) if lower_is_extreme else (b >= observed)
    return float((1 + extreme.sum()) / (1 + b.size))
