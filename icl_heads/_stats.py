"""Small statistics helpers: bootstrap intervals and empirical ranks."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    Raises:
        ValueError: ``values`` is empty.
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("cannot bootstrap an empty set of values")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def empirical_p(observed: float, baseline, *, lower_is_extreme: bool = True) -> float:
    """(1 + #baseline at least as extreme as ``observed``) / (1 + #baseline)."""
    b = np.asarray(baseline, dtype=float).ravel()
    extreme = (b <= observed) if lower_is_extreme else (b >= observed)
    return float((1 + extreme.sum()) / (1 + b.size))
