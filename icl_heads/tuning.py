"""Tuning a correction on tuning prompts (never the test prompts), measuring it on test prompts, and the checks
around it: where its heads read, and why it chose "no change"."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from icl_heads._checks import check_grid
from icl_heads.access import ModelAccess
from icl_heads.accuracy import icl_accuracy
from icl_heads.bias import MajorityBias, majority_bias
from icl_heads.engine import Hooks, Intervention, as_intervention
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.order_bias import RecencyBias, recency_bias, recency_block_gap
from icl_heads.prompts import ICLTask
from icl_heads.reading import ReadingInfo, resolve_read_at
from icl_heads.records import UNSET, Provenance, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.stats import Estimate, bootstrap_ci, bootstrap_mean, from_samples, resamples

logger = logging.getLogger("icl_heads")


def read_at_for(model: Any, prompts: Any, heads, read_at: str, min_read_share: float) -> tuple:
    """``(read_at, info, warnings)`` for the corrected heads on the tuning prompts (see :func:`resolve_read_at`)."""
    access = faithful_access(model, "read_at_for")
    return resolve_read_at(access, access.tokenize(prompts), list(heads), read_at, min_share=min_read_share)


def no_change_reason(
    tuning: pd.DataFrame, value: float, parameter: str, max_drop: float, read_warnings
) -> tuple[str, ...]:
    """Why the tuning chose the no-op value (0), or nothing when it chose a real correction."""
    if value != 0:
        return ()
    base, others = tuning[tuning.value == 0], tuning[tuning.value != 0]
    if base.empty or others.empty:
        return (f"NO CHANGE: {parameter}=0 was chosen because the grid holds no other value to try",)
    b0 = float(base.bias.abs().iloc[0])
    allowed = others[others.allowed]
    if allowed.empty:
        best = others.loc[others.accuracy_drop.idxmin()]
        why = (
            f"every other value lowered balanced accuracy on the tuning prompts by more than {max_drop:g} "
            f"(the smallest drop is {best.accuracy_drop:.3g} at {parameter}={best.value:g})"
        )
    else:
        best = allowed.loc[allowed.bias.abs().idxmin()]
        why = (
            f"no allowed value reduced the bias on the tuning prompts (|bias| {b0:.3g} uncorrected, "
            f"{abs(best.bias):.3g} at best, {parameter}={best.value:g})"
        )
    if read_warnings:
        why += "; the corrected heads do not read the positions it changes (see the other warning)"
    return (f"NO CHANGE: the correction was tuned to {parameter}=0 (no correction) because {why}",)


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class BiasCorrectionConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.correct_majority_bias` / :func:`~icl_heads.correct_recency_bias`."""

    headline: str = UNSET
    shots: int = UNSET
    n: int = UNSET
    seed: int = UNSET
    tune_n: int = UNSET
    tune_seed: int = UNSET
    max_accuracy_drop: float = UNSET
    grid: list[float] = UNSET
    skews: Any = UNSET
    n_random_orders: int = UNSET
    heads: Any = UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "shots", "n", "tune_n")


def _built(build: Callable[[float], Hooks], value: float) -> Intervention:
    """``build(value)`` as an intervention, refused with a clear error when it is not one or a hook list."""
    hooks = build(value)
    try:
        return as_intervention(hooks)
    except TypeError:
        raise TypeError(
            f"the correction built for the value {value:g} is a {type(hooks).__name__}, not an intervention: a "
            "correction method's build must return a correction, a HeadAblation, combine(...) of them, or a list "
            "of (hook name, function) pairs"
        ) from None


def headline_bias(result: Any) -> float:
    """The bias a correction is tuned and judged on: ``bias`` (majority) or ``block_gap`` (recency)."""
    return float(result.block_gap) if isinstance(result, RecencyBias) else float(result.bias)


def _measure(kind: str, model: Any, task: ICLTask, hooks: Hooks, **kw: Any) -> MajorityBias | RecencyBias:
    if kind == "majority":
        kw.pop("heads", None)
        return majority_bias(model, task, hooks=hooks, **kw)
    return recency_bias(model, task, hooks=hooks, **kw)


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

    For each value, measures the headline bias (majority: excess majority predictions; recency:
    the block gap) and the balanced accuracy on prompts drawn with ``seed``; picks the value with
    the smallest absolute bias among those whose balanced accuracy drops by at most ``max_accuracy_drop``.

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
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).
        noop: the value at which ``build`` changes nothing (built-in corrections: 0), measured uncorrected.
        **measure: more arguments for :func:`~icl_heads.bias.majority_bias` / :func:`~icl_heads.recency_bias`.

    Returns:
        The chosen value and the table of the search.

    Raises:
        ValueError: an unknown ``kind``, an empty grid or one with a value that is not finite.
    """
    options = run_options(options)
    if kind not in ("majority", "recency"):
        raise ValueError(f"kind must be 'majority' or 'recency', got {kind!r}")
    grid = check_grid("grid", grid)
    balanced = task.prompts(n, shots, seed=seed)
    quiet = run_options(options, progress=False)
    base_acc = icl_accuracy(model, balanced, options=quiet).accuracy
    all_balanced = all(len(set(Counter(y for _, y in p.demos).values())) == 1 for p in balanced.prompts)
    rows = []
    for value in tqdm(list(grid), desc=f"tuning {kind} correction", disable=not options.progress):
        # the no-op value is the uncorrected model itself: its measurements are the clean ones
        hooks = () if noop is not None and float(value) == noop else _built(build, float(value))
        if kind == "recency":  # the block gap alone: its two orders, not every order recency_bias reports
            extra = {k: v for k, v in measure.items() if k == "n_random_orders"}
            bias = recency_block_gap(model, task, hooks=hooks, shots=shots, n=n, seed=seed, options=quiet, **extra)
        else:
            bias = headline_bias(
                _measure(kind, model, task, hooks, shots=shots, n=n, seed=seed, options=quiet, **measure)
            )
        if not hooks or (isinstance(hooks, Intervention) and hooks.balanced_noop and all_balanced):
            acc = base_acc  # the correction changes nothing on these prompts (exactly: see balanced_noop)
        else:
            acc = icl_accuracy(model, balanced, hooks=hooks, options=quiet).accuracy
        rows.append({"value": float(value), "bias": bias, "balanced_accuracy": acc, "accuracy_drop": base_acc - acc})
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


def _reduction(before: np.ndarray, after: np.ndarray, n_boot: int, seed: int) -> Estimate:
    """``100 * (1 - |mean(after)| / |mean(before)|)`` with its paired bootstrap interval over prompts.

    Raises:
        ValueError: the bias before is zero in every resample.
    """
    n = before.shape[-1]
    idx = resamples(n, n_boot=n_boot, seed=seed)
    b, a = before[..., idx].mean(-1), after[..., idx].mean(-1)
    red = 100 * (1 - np.abs(a) / np.where(b == 0, np.nan, np.abs(b)))
    red = red[np.isfinite(red)]
    if red.size == 0:
        raise ValueError("the bias before correction is zero in every resample; there is nothing to reduce")
    value = 100 * (1 - abs(float(after.mean(-1))) / abs(float(before.mean(-1))))
    return from_samples(value, red, n=n, method="paired bootstrap")


def no_bias_to_reduce(kind: str, low: float, high: float) -> str | None:
    """Why a reduction of the ``kind`` bias means nothing: its 95% interval before correction includes 0 (else None)."""
    return f"no {kind} bias to reduce (its interval before includes 0)" if low <= 0 <= high else None


@dataclass(frozen=True, repr=False)
class BiasCorrection(Result):
    """A bias correction evaluated on held-out prompts.

    Attributes:
        df: one row per metric (the headline ``bias``, secondary bias measures, the accuracy where the
            bias acts (``imbalanced_accuracy`` or ``accuracy_over_orders``), ``balanced_accuracy``):
            ``metric, before, before_ci_low, before_ci_high, after, after_ci_low, after_ci_high, change``.
        tuning: the search on the tuning prompts: ``value, bias, balanced_accuracy, accuracy_drop, allowed, chosen``.
        kind: ``"majority"`` or ``"recency"``.
        method: the correction (``"count"``, ``"ov"``, ``"prior"``, ``"unrotated"``).
        parameter: the tuned hyperparameter's name; ``value``: its chosen value.
        heads: the corrected heads.
        reduction: the headline bias removed, in percent: ``100 * (1 - |after| / |before|)`` (an overshoot
            counts as remaining bias), an :class:`~icl_heads.stats.Estimate` (95% paired bootstrap over prompts).
        accuracy_change: balanced accuracy after minus before (same prompts), with its paired 95% interval.
        config, provenance: arguments and origin; ``config["read_at"]`` is where the correction acted.
        warnings: why the result may not mean what it seems: the heads do not read the corrected
            positions, or the tuning chose "no change" (and why).
    """

    df: pd.DataFrame
    tuning: pd.DataFrame
    kind: str
    method: str
    parameter: str
    value: float
    heads: tuple
    reduction: Estimate
    accuracy_change: Estimate
    config: BiasCorrectionConfig = field(default_factory=BiasCorrectionConfig)
    provenance: Provenance = field(default_factory=Provenance)
    warnings: tuple = ()
    _title: ClassVar[str] = "Bias correction"

    def _row(self, metric: str) -> pd.Series:
        return self.df.set_index("metric").loc[metric]

    def summary(self) -> dict[str, Any]:
        b, a = self._row("bias"), self._row("balanced_accuracy")
        return {
            **self._warning_summary(),
            "bias": f"{self.kind} ({self.config.get('headline', '')})",
            "read at": self.config.get("read_at", "label"),
            "correction": f"{self.method} ({self.parameter}={self.value:g})",
            "heads": ", ".join(f"L{x}H{y}" for x, y in self.heads),
            "bias before": float(b.before),
            "before 95% CI": (float(b.before_ci_low), float(b.before_ci_high)),
            "bias after": float(b.after),
            "after 95% CI": (float(b.after_ci_low), float(b.after_ci_high)),
            "reduction %": self.reduction,
            "reduction 95% CI": self.reduction.ci,
            **self._imbalanced(),
            "balanced accuracy before": float(a.before),
            "balanced accuracy after": float(a.after),
            "accuracy change 95% CI": self.accuracy_change.ci,
        }

    def _imbalanced(self) -> dict[str, Any]:
        """Majority: the accuracy where the bias acts (imbalanced prompts); balanced prompts are neutral to it."""
        if self.kind != "majority":
            return {}
        r = self._row("imbalanced_accuracy")
        return {
            "imbalanced accuracy before": float(r.before),
            "imbalanced accuracy after": float(r.after),
            "imbalanced accuracy change 95% CI": (float(r.change_ci_low), float(r.change_ci_high)),
        }

    def plot(self) -> Figure:
        """Bias and balanced accuracy before and after, with 95% intervals."""
        return self._draw("plot")


def evaluate_correction(
    kind: str, method: str, parameter: str, model: Any, task: ICLTask, build: Callable[[float], Hooks],
    grid: Sequence[float], heads: Sequence[tuple[int, int]],
    *, shots: int, n: int, seed: int, tune_n: int, tune_seed: int, max_accuracy_drop: float, n_boot: int,
    measure: dict, reading: tuple = ("label", {}, ()), options: RunOptions | None = None,
) -> BiasCorrection:  # fmt: skip
    """Tune ``build``'s value over ``grid`` on tuning prompts, then measure bias and accuracy before and after.

    The engine behind :func:`icl_heads.debias.correct_bias`, which checks the arguments first.

    Args:
        kind, method, parameter: ``"majority"`` or ``"recency"``, the method's and its hyperparameter's names.
        model, task: the model and the task.
        build, grid, heads: the correction for a value, the values tried, the heads corrected.
        shots, n, seed: demonstrations per prompt, test prompts and their seed.
        tune_n, tune_seed, max_accuracy_drop: as for :func:`tune_correction`'s ``n``, ``seed`` and limit.
        n_boot: bootstrap resamples.
        measure: keyword arguments of the bias measurement (skews, or random orders and heads).
        reading: ``(read_at, its config entries, its warnings)``.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`BiasCorrection`.

    Raises:
        ValueError: no bias to reduce on the test prompts.
    """
    options = run_options(options)
    value, tuning = tune_correction(
        model, task, build, grid, kind=kind, shots=shots, n=tune_n, seed=tune_seed,
        max_accuracy_drop=max_accuracy_drop, options=options, noop=0.0, **measure,
    )  # fmt: skip
    hooks = build(value)
    quiet = run_options(options, progress=False)
    kw = dict(shots=shots, n=n, seed=seed, options=quiet, n_boot=n_boot, **measure)
    before = _measure(kind, model, task, (), **kw)
    if headline_bias(before) == 0:
        raise ValueError(
            f"no {kind} bias to reduce: its measure is exactly 0 on the {n} test prompts "
            "(use more prompts n, more shots, or harder prompts)"
        )
    after = _measure(kind, model, task, hooks, **kw)
    balanced = task.prompts(n, shots, seed=seed)
    acc_b, acc_a = (icl_accuracy(model, balanced, hooks=h, options=quiet) for h in ((), hooks))
    if kind == "majority":
        headline, per_prompt = "excess majority-label predictions", "per_prompt"
        attrs = {"bias": "bias", "probability_bias": "prob_bias"}
    else:
        headline, per_prompt = "block gap: accuracy when the query's class block is last minus first", "block_gaps"
        attrs = {"bias": "block_gap", "order_spread": "bias"}
        attrs |= {m: m for m in ("order_std", "sensitivity", "last_label_excess", "last_label_pull")}
    metrics = [
        (m, getattr(before, a), getattr(before, a).ci, getattr(after, a), getattr(after, a).ci)
        for m, a in attrs.items()
    ]
    stat_b, stat_a = (getattr(r, per_prompt).numpy() for r in (before, after))
    # accuracy where the bias acts: imbalanced conditions (majority) or all orders (recency)
    cond = slice(1, None) if kind == "majority" else slice(None)
    acc_biased = [(r.label_logits[cond].argmax(-1) == r.golds[None]).float().mean(0).numpy() for r in (before, after)]
    ci = [bootstrap_ci(a, n_boot=n_boot, seed=seed) for a in acc_biased]
    name = "imbalanced_accuracy" if kind == "majority" else "accuracy_over_orders"
    metrics.append((name, float(acc_biased[0].mean()), ci[0], float(acc_biased[1].mean()), ci[1]))
    metrics.append(("balanced_accuracy", acc_b.accuracy, acc_b.ci, acc_a.accuracy, acc_a.ci))
    diff = torch.sub(*((r.label_logits.argmax(-1) == r.golds).float() for r in (acc_a, acc_b)))
    # the change of each accuracy, paired over prompts (the same prompts before and after)
    change_ci = {
        name: bootstrap_ci(acc_biased[1] - acc_biased[0], n_boot=n_boot, seed=seed),
        "balanced_accuracy": bootstrap_ci(diff.numpy(), n_boot=n_boot, seed=seed),
    }
    nan2 = (float("nan"), float("nan"))
    df = pd.DataFrame(
        [
            {"metric": m, "before": b, "before_ci_low": bci[0], "before_ci_high": bci[1], "after": a,
             "after_ci_low": aci[0], "after_ci_high": aci[1], "change": a - b,
             "change_ci_low": change_ci.get(m, nan2)[0], "change_ci_high": change_ci.get(m, nan2)[1]}
            for m, b, bci, a, aci in metrics
        ]
    )  # fmt: skip
    config = BiasCorrectionConfig(
        headline=headline, shots=shots, n=n, seed=seed, tune_n=tune_n, tune_seed=tune_seed,
        max_accuracy_drop=max_accuracy_drop, grid=[float(g) for g in grid], **measure, **reading[1],
    )  # fmt: skip
    no_noop = () if 0.0 in [float(g) for g in grid] else (
        f"the grid {[float(g) for g in grid]} lacks {parameter}=0 (no correction), so the tuning could not choose to "
        "leave the model unchanged; add 0 to the grid",
    )  # fmt: skip
    warnings = (
        *reading[2], *no_noop, *no_change_reason(tuning, value, parameter, max_accuracy_drop, reading[2])
    )  # fmt: skip
    for w in warnings[len(reading[2]) :]:
        logger.warning(w)
    return BiasCorrection(
        df=df,
        tuning=tuning,
        kind=kind,
        method=method,
        parameter=parameter,
        value=value,
        heads=tuple(heads),
        reduction=_reduction(stat_b, stat_a, n_boot, seed),
        accuracy_change=bootstrap_mean(diff.numpy(), n_boot=n_boot, seed=seed, value=float(diff.mean()), paired=True),
        config=config,
        provenance=provenance(ModelAccess(model).name, balanced, heads=[list(h) for h in heads], method=method),
        warnings=warnings,
    )
