"""Correct majority-label and recency bias and measure the effect on held-out prompts.

:func:`correct_majority_bias` and :func:`correct_recency_bias` (1) pick the heads (the
in-context heads by default, found on the tuning prompts), (2) choose the correction's
hyperparameter with :func:`tune_correction` on prompts drawn with ``tune_seed``, never
on the test prompts, and (3) measure the bias and the accuracy on balanced prompts
before and after the correction on prompts drawn with ``seed``. The result reports the
bias with 95% bootstrap intervals, the relative reduction (with a paired bootstrap
interval) and the balanced accuracy before and after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from icl_heads.accuracy import icl_accuracy
from icl_heads.bias import (
    MajorityBias,
    RecencyBias,
    _check_task,
    resolve_heads,
)
from icl_heads.configs import BiasCorrectionConfig
from icl_heads.corrections import count_normalisation, ov_compensation, positional_prior, unrotated_attention
from icl_heads.engine import RunOptions, run_options, takes_run_options
from icl_heads.models import Hooks, ModelAccess
from icl_heads.prompts import ICLTask
from icl_heads.reading import MIN_READ_SHARE
from icl_heads.records import Provenance
from icl_heads.results import Result, provenance
from icl_heads.stats import Estimate, bootstrap_ci, bootstrap_mean
from icl_heads.tuning import _measure, _reduction, headline_bias, tune_correction
from icl_heads.tuning_checks import no_change_reason, read_at_for

MAJORITY_METHODS = {
    "count": ("strength", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)),
    "ov": ("a_c", (0.0, 0.03, 0.1, 0.3, 1.0, 2.0, 3.0, 5.0)),
}
RECENCY_METHODS = {
    "prior": ("strength", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)),
    "unrotated": ("mix", (0.0, 0.25, 0.5, 0.75, 1.0)),
}

logger = logging.getLogger("icl_heads")


@dataclass(frozen=True, repr=False)
class BiasCorrection(Result):
    """A bias correction evaluated on held-out prompts.

    Attributes:
        df: one row per metric (the headline ``bias`` first, then secondary bias
            measures, the accuracy where the bias acts (``imbalanced_accuracy`` or
            ``accuracy_over_orders``) and ``balanced_accuracy``): ``metric, before,
            before_ci_low, before_ci_high, after, after_ci_low, after_ci_high, change``.
        tuning: the hyperparameter search on the tuning prompts: ``value, bias,
            balanced_accuracy, accuracy_drop, allowed, chosen``.
        kind: ``"majority"`` or ``"recency"``.
        method: the correction (``"count"``, ``"ov"``, ``"prior"``, ``"unrotated"``).
        parameter: the tuned hyperparameter's name; ``value``: its chosen value.
        heads: the corrected heads.
        reduction: how much of the headline bias's size is removed, in percent:
            ``100 * (1 - |after| / |before|)`` (a correction that overshoots to the
            opposite bias counts the overshoot as remaining bias); an
            :class:`~icl_heads.stats.Estimate` with its 95% paired bootstrap interval over
            test prompts (``reduction_ci`` is ``(reduction.low, reduction.high)``).
        accuracy_change: balanced accuracy after minus before (same prompts), with its
            paired 95% interval (``accuracy_change_ci``).
        config, provenance: arguments and origin; ``config["read_at"]`` is where the
            correction acted (label tokens, the tokens after them, or whole slots).
        warnings: why the result may not mean what it seems: the heads do not read the
            corrected positions, or the tuning chose "no change" (and why).
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
    _legacy_methods: ClassVar[dict[str, str]] = {"reduction": "paired bootstrap", "accuracy_change": "paired bootstrap"}

    @property
    def reduction_ci(self) -> tuple[float, float]:
        """``(reduction.low, reduction.high)``: the 95% paired bootstrap interval of :attr:`reduction`."""
        return self.reduction.ci

    @property
    def accuracy_change_ci(self) -> tuple[float, float]:
        """``(accuracy_change.low, accuracy_change.high)``."""
        return self.accuracy_change.ci

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
            "reduction 95% CI": tuple(self.reduction_ci),
            "balanced accuracy before": float(a.before),
            "balanced accuracy after": float(a.after),
            "accuracy change 95% CI": tuple(self.accuracy_change_ci),
        }

    def plot(self) -> go.Figure:
        """Bias and balanced accuracy before and after, with 95% intervals."""
        from icl_heads.plots.bias import plot_correction

        return plot_correction(self)


def _evaluate(
    kind: str, method: str, parameter: str, model: Any, task: ICLTask, build: Callable[[float], Hooks], grid, heads,
    *, shots: int, n: int, seed: int, tune_n: int, tune_seed: int, max_accuracy_drop: float, n_boot: int,
    options: RunOptions, measure: dict, reading: tuple = ("label", {}, ()),
) -> BiasCorrection:  # fmt: skip
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
    acc_b, acc_a = (
        icl_accuracy(model, balanced, options=quiet),
        icl_accuracy(model, balanced, hooks=hooks, options=quiet),
    )
    metrics: list[tuple[str, float, tuple, float, tuple]] = []
    if isinstance(before, MajorityBias) and isinstance(after, MajorityBias):
        headline = "excess majority-label predictions"
        metrics.append(("bias", before.bias, before.bias_ci, after.bias, after.bias_ci))
        metrics.append(("probability_bias", before.prob_bias, before.prob_bias_ci, after.prob_bias, after.prob_bias_ci))
        stat_b, stat_a, stat = before.per_prompt.numpy(), after.per_prompt.numpy(), lambda x: x.mean(-1)
    else:
        assert isinstance(before, RecencyBias) and isinstance(after, RecencyBias)
        headline = "block gap: accuracy when the query's class block is last minus first"
        metrics.append(("bias", before.block_gap, before.block_gap_ci, after.block_gap, after.block_gap_ci))
        metrics.append(("order_spread", before.bias, before.bias_ci, after.bias, after.bias_ci))
        for m in ("order_std", "sensitivity", "last_label_excess", "last_label_pull"):
            metrics.append(
                (m, getattr(before, m), getattr(before, f"{m}_ci"), getattr(after, m), getattr(after, f"{m}_ci"))
            )
        assert before.block_gaps is not None and after.block_gaps is not None
        stat_b, stat_a = before.block_gaps.numpy(), after.block_gaps.numpy()

        def stat(x: np.ndarray) -> Any:
            return x.mean(-1)

    # accuracy where the bias acts: imbalanced conditions (majority) or all orders (recency)
    cond = slice(1, None) if kind == "majority" else slice(None)
    acc_biased = [(r.label_logits[cond].argmax(-1) == r.golds[None]).float().mean(0).numpy() for r in (before, after)]
    ci = [bootstrap_ci(a, n_boot=n_boot, seed=seed) for a in acc_biased]
    name = "imbalanced_accuracy" if kind == "majority" else "accuracy_over_orders"
    metrics.append((name, float(acc_biased[0].mean()), ci[0], float(acc_biased[1].mean()), ci[1]))
    metrics.append(("balanced_accuracy", acc_b.accuracy, acc_b.ci, acc_a.accuracy, acc_a.ci))
    df = pd.DataFrame(
        [
            {"metric": m, "before": b, "before_ci_low": bci[0], "before_ci_high": bci[1], "after": a,
             "after_ci_low": aci[0], "after_ci_high": aci[1], "change": a - b}
            for m, b, bci, a, aci in metrics
        ]
    )  # fmt: skip
    diff = (acc_a.label_logits.argmax(-1) == acc_a.golds).float() - (
        acc_b.label_logits.argmax(-1) == acc_b.golds
    ).float()
    config = BiasCorrectionConfig(
        headline=headline, shots=shots, n=n, seed=seed, tune_n=tune_n, tune_seed=tune_seed,
        max_accuracy_drop=max_accuracy_drop, grid=[float(g) for g in grid], **measure, **reading[1],
    )  # fmt: skip
    warnings = (*reading[2], *no_change_reason(tuning, value, parameter, max_accuracy_drop, reading[2]))
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
        reduction=_reduction(stat_b, stat_a, stat, n_boot, seed),
        accuracy_change=bootstrap_mean(diff.numpy(), n_boot=n_boot, seed=seed, value=float(diff.mean()), paired=True),
        config=config,
        provenance=provenance(
            ModelAccess(model, check=False).name, balanced, heads=[list(h) for h in heads], method=method
        ),
        warnings=warnings,
    )


def _check_common(task: Any, seed: int, tune_seed: int, method: str, methods: dict) -> ICLTask:
    task = _check_task(task)
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(methods)}")
    if seed == tune_seed:
        raise ValueError(
            f"seed and tune_seed are both {seed}; hyperparameters must be chosen on prompts other than the test prompts"
        )
    return task


@takes_run_options
def correct_majority_bias(
    model: Any,
    task: ICLTask,
    *,
    method: str = "count",
    heads: Any = "found",
    shots: int = 4,
    n: int = 300,
    seed: int = 0,
    tune_n: int = 200,
    tune_seed: int = 1,
    grid: Sequence[float] | None = None,
    skews: Sequence[tuple[int, int]] = ((3, 1), (5, 1)),
    max_accuracy_drop: float = 0.01,
    read_at: str = "auto",
    min_read_share: float = MIN_READ_SHARE,
    n_boot: int = 1000,
    options: RunOptions | None = None,
) -> BiasCorrection:
    """Tune a majority-bias correction on held-out prompts and measure it on test prompts.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task.
        method: ``"count"`` (attention count-normalisation at label positions,
            hyperparameter ``strength``) or ``"ov"`` (the paper's OV compensation,
            hyperparameter ``a_c``).
        heads: heads to correct: ``"found"`` (default: run
            :func:`~icl_heads.heads.find_in_context_heads` on the tuning prompts and use
            its heads), ``(layer, head)`` pairs, or an ``InContextHeads`` result (its
            ``heads``). ``None`` is refused: elsewhere it means every head.
        shots: demonstrations of the balanced prompts.
        n: test prompts (drawn with ``seed``).
        seed: seed of the test prompts.
        tune_n: tuning prompts (drawn with ``tune_seed``).
        tune_seed: seed of the tuning prompts; must differ from ``seed``.
        grid: hyperparameter values to try (default per method).
        skews: skewed counts measured besides minus-one (see :func:`~icl_heads.bias.majority_bias`).
        max_accuracy_drop: largest balanced-accuracy drop allowed while tuning.
        read_at: the positions of each demonstration the correction acts on:
            ``"label"``, ``"after_label"``, ``"slot"`` or ``"auto"`` (where the heads put
            their attention on the tuning prompts; see :func:`~icl_heads.reading.resolve_read_at`).
        min_read_share: below this share of the heads' attention (outside the first
            token) on those positions, the result carries a warning.
        n_boot: bootstrap resamples.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.engine.RunOptions`).

    Returns:
        A :class:`BiasCorrection`.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: an unknown method, ``seed == tune_seed``, bad heads, or no bias to reduce.

    >>> import icl_heads as ih
    >>> from icl_heads.organism import HELDOUT_TEMPLATES
    >>> hard = ih.organism_task(template=HELDOUT_TEMPLATES[1], max_words=6, noise_rate=0.3)
    >>> res = correct_majority_bias(ih.load_model("organism"), hard, n=100, tune_n=60, grid=(0, 4, 12))
    >>> res.value in (0, 4, 12), res.reduction <= 100
    (True, True)
    """
    task = _check_common(task, seed, tune_seed, method, MAJORITY_METHODS)
    parameter, default_grid = MAJORITY_METHODS[method]
    tune_prompts = task.prompts(tune_n, shots, seed=tune_seed)
    heads = resolve_heads(model, heads, tune_prompts, options=run_options(options, progress=False))
    reading = read_at_for(model, tune_prompts, heads, read_at, min_read_share)
    make = count_normalisation if method == "count" else ov_compensation

    def build(value: float) -> Hooks:
        return make(model, heads, value, read_at=reading[0])

    return _evaluate(
        "majority", method, parameter, model, task, build, grid or default_grid, heads, shots=shots, n=n, seed=seed,
        tune_n=tune_n, tune_seed=tune_seed, max_accuracy_drop=max_accuracy_drop, n_boot=n_boot,
        options=options, measure={"skews": [tuple(s) for s in skews]}, reading=reading,
    )  # fmt: skip


@takes_run_options
def correct_recency_bias(
    model: Any,
    task: ICLTask,
    *,
    method: str = "prior",
    heads: Any = "found",
    shots: int = 8,
    n: int = 300,
    seed: int = 0,
    tune_n: int = 200,
    tune_seed: int = 1,
    grid: Sequence[float] | None = None,
    n_random_orders: int = 4,
    max_accuracy_drop: float = 0.01,
    read_at: str = "auto",
    min_read_share: float = MIN_READ_SHARE,
    n_boot: int = 1000,
    options: RunOptions | None = None,
) -> BiasCorrection:
    """Tune a recency-bias correction on held-out prompts and measure it on test prompts.

    The headline recency bias is the block gap (accuracy when the query's class forms
    the last block of demonstrations minus when it forms the first; it does not cancel
    over query classes, see :mod:`icl_heads.recency`); the spread of accuracy over
    orders beyond chance (:func:`~icl_heads.bias.order_spread`), the raw
    spread, the per-prompt order sensitivity, the excess rate of predicting the last
    demonstration's label and the probability pull of the last label are reported too.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task.
        method: ``"prior"`` (divide each slot's attention by its positional prior from
            content-shuffled tuning prompts; any model; hyperparameter ``strength``) or
            ``"unrotated"`` (scores at label keys from un-rotated q and k; rotary models
            only; hyperparameter ``mix``).
        heads: heads to correct: ``"found"`` (default: run
            :func:`~icl_heads.heads.find_in_context_heads` on the tuning prompts and use
            its heads), ``(layer, head)`` pairs, or an ``InContextHeads`` result (its
            ``heads``). ``None`` is refused: elsewhere it means every head.
        shots: demonstrations per prompt.
        n: test prompts (drawn with ``seed``).
        seed: seed of the test prompts.
        tune_n: tuning prompts (drawn with ``tune_seed``; the prior is fitted on
            prompts drawn with ``tune_seed + 1``).
        tune_seed: seed of the tuning prompts; must differ from ``seed``.
        grid: hyperparameter values to try (default per method).
        n_random_orders: random orders besides original, reversed and the label blocks.
        max_accuracy_drop: largest balanced-accuracy drop allowed while tuning.
        read_at: the positions of each demonstration the correction acts on:
            ``"label"``, ``"after_label"``, ``"slot"`` or ``"auto"`` (where the heads put
            their attention on the tuning prompts; see :func:`~icl_heads.reading.resolve_read_at`).
        min_read_share: below this share of the heads' attention (outside the first
            token) on those positions, the result carries a warning.
        n_boot: bootstrap resamples.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.engine.RunOptions`).

    Returns:
        A :class:`BiasCorrection`.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: an unknown method, ``"unrotated"`` on a model without rotary
            embeddings, ``seed == tune_seed``, bad heads, or no bias to reduce.
    """
    task = _check_common(task, seed, tune_seed, method, RECENCY_METHODS)
    if seed == tune_seed + 1:
        raise ValueError(f"seed={seed} is the positional prior's reference seed (tune_seed + 1); choose another seed")
    parameter, default_grid = RECENCY_METHODS[method]
    tune_prompts = task.prompts(tune_n, shots, seed=tune_seed)
    heads = resolve_heads(model, heads, tune_prompts, options=run_options(options, progress=False))
    reading = read_at_for(model, tune_prompts, heads, read_at, min_read_share)
    if method == "unrotated":
        base = unrotated_attention(model, heads, read_at=reading[0])

        def build(value: float) -> Hooks:
            return replace(base, mix=value)
    else:
        reference = task.prompts(tune_n, shots, seed=tune_seed + 1)
        fitted = positional_prior(
            model, heads, reference, read_at=reading[0], options=run_options(options, progress=False)
        )

        def build(value: float) -> Hooks:
            return replace(fitted, strength=value)

    return _evaluate(
        "recency", method, parameter, model, task, build, grid or default_grid, heads, shots=shots, n=n, seed=seed,
        tune_n=tune_n, tune_seed=tune_seed, max_accuracy_drop=max_accuracy_drop, n_boot=n_boot,
        options=options, measure={"n_random_orders": n_random_orders, "heads": list(heads)},
        reading=reading,
    )  # fmt: skip
