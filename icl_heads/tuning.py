"""Choosing a correction's hyperparameter on tuning prompts, never the test prompts (see :mod:`icl_heads.debias`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from icl_heads.accuracy import icl_accuracy
from icl_heads.bias import (
    MajorityBias,
    RecencyBias,
    majority_bias,
    recency_bias,
    recency_block_gap,
)
from icl_heads.engine import RunOptions, run_options, takes_run_options
from icl_heads.models import Hooks
from icl_heads.prompts import ICLTask
from icl_heads.stats import Estimate, from_samples, resamples

logger = logging.getLogger("icl_heads")


def headline_bias(result: Any) -> float:
    """The bias a correction is tuned and judged on: ``bias`` (majority) or ``block_gap`` (recency)."""
    return float(result.block_gap) if isinstance(result, RecencyBias) else float(result.bias)


def _measure(kind: str, model: Any, task: ICLTask, hooks: Hooks, **kw: Any) -> MajorityBias | RecencyBias:
    if kind == "majority":
        kw.pop("heads", None)
        return majority_bias(model, task, hooks=hooks, **kw)
    return recency_bias(model, task, hooks=hooks, **kw)


@takes_run_options
def tune_correction(
    model: Any,
    task: ICLTask,
    build: Callable[[float], Hooks],
    grid: Sequence[float],
    *,
    kind: str,
    shots: int,
    n: int = 200,
    seed: int = 1,
    max_accuracy_drop: float = 0.01,
    options: RunOptions | None = None,
    noop: float | None = None,
    **measure: Any,
) -> tuple[float, pd.DataFrame]:
    """Choose a correction's hyperparameter on tuning prompts (never the test prompts).

    For each value, measures the headline bias (majority: excess majority predictions;
    recency: the block gap, accuracy when the query's class block is last minus first) and the accuracy on balanced prompts, both on
    prompts drawn with ``seed``; picks the value with the smallest absolute bias among
    those whose balanced accuracy drops by at most ``max_accuracy_drop``.

    Args:
        model: the model.
        task: the task to sample tuning prompts from.
        build: maps a hyperparameter value to hooks (a correction).
        grid: values to try (include the no-op value so "no correction" can win).
        kind: ``"majority"`` or ``"recency"``.
        shots: demonstrations per prompt.
        n: tuning prompts.
        seed: seed of the tuning prompts (use one you do not test on).
        max_accuracy_drop: largest allowed drop of balanced accuracy (0.01 = 1 point).
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.engine.RunOptions`).
        noop: the value at which ``build`` changes nothing (every built-in correction: 0);
            that value is measured on the uncorrected model.
        **measure: more arguments for :func:`~icl_heads.bias.majority_bias` /
            :func:`~icl_heads.bias.recency_bias`.

    Returns:
        The chosen value and the table of the search.

    Raises:
        ValueError: an unknown ``kind`` or an empty grid.
    """
    if kind not in ("majority", "recency"):
        raise ValueError(f"kind must be 'majority' or 'recency', got {kind!r}")
    if not len(grid):
        raise ValueError("grid is empty; give hyperparameter values to try")
    balanced = task.prompts(n, shots, seed=seed)
    quiet = run_options(options, progress=False)
    base_acc = icl_accuracy(model, balanced, options=quiet).accuracy
    all_balanced = all(len(set(Counter(y for _, y in p.demos).values())) == 1 for p in balanced.prompts)
    rows = []
    for value in tqdm(list(grid), desc=f"tuning {kind} correction", disable=not options.progress):
        # the no-op value is the uncorrected model itself: its measurements are the clean ones
        hooks = () if noop is not None and float(value) == noop else build(float(value))
        if kind == "recency":  # the block gap alone: its two orders, not every order recency_bias reports
            keep = ("n_random_orders",)
            bias = recency_block_gap(
                model, task, hooks=hooks, shots=shots, n=n, seed=seed, options=quiet,
                **{k: measure[k] for k in keep if k in measure},
            )  # fmt: skip
        else:
            bias = headline_bias(
                _measure(kind, model, task, hooks, shots=shots, n=n, seed=seed, options=quiet, **measure)
            )
        if not hooks or (getattr(hooks, "balanced_noop", False) and all_balanced):
            acc = base_acc  # the correction changes nothing on these prompts (exactly: see balanced_noop)
        else:
            acc = icl_accuracy(model, balanced, hooks=hooks, options=quiet).accuracy
        rows.append(
            {
                "value": float(value),
                "bias": bias,
                "balanced_accuracy": acc,
                "accuracy_drop": base_acc - acc,
            }
        )
    table = pd.DataFrame(rows)
    table["allowed"] = table.accuracy_drop <= max_accuracy_drop + 1e-9
    pool = table[table.allowed] if table.allowed.any() else table.nsmallest(1, "accuracy_drop")
    best = float(pool.loc[pool.bias.abs().idxmin(), "value"])
    table["chosen"] = table.value == best
    if (table.bias == 0).all():
        logger.warning(
            "the %s bias is 0 on the %d tuning prompts at every value tried, so there is nothing to tune and %g "
            "was chosen; use more tuning prompts (tune_n) or a setting where the bias shows",
            kind, n, best,
        )  # fmt: skip
    return best, table


def _reduction(
    before: np.ndarray, after: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], n_boot: int, seed: int
) -> Estimate:
    """``100 * (1 - |stat(after)| / |stat(before)|)`` with its paired bootstrap interval (prompts on the last axis).

    Raises:
        ValueError: the bias before is zero in every resample.
    """
    n = before.shape[-1]
    idx = resamples(n, n_boot=n_boot, seed=seed)
    b, a = stat(before[..., idx]), stat(after[..., idx])
    red = 100 * (1 - np.abs(a) / np.where(b == 0, np.nan, np.abs(b)))
    red = red[np.isfinite(red)]
    if red.size == 0:
        raise ValueError("the bias before correction is zero in every resample; there is nothing to reduce")
    value = 100 * (1 - abs(float(stat(after))) / abs(float(stat(before))))
    return from_samples(value, red, n=n, method="paired bootstrap")
