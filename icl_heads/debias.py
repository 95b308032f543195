"""Correct majority-label and recency bias and measure the effect on held-out prompts.

:func:`correct_bias` (the one engine; :func:`correct_majority_bias` and
:func:`correct_recency_bias` fix its ``bias``) takes a method from the registry of
:mod:`icl_heads.correction_methods`, (1) picks the heads (the in-context heads by
default, found on the tuning prompts), (2) chooses the correction's
hyperparameter with :func:`~icl_heads.tuning.tune_correction` on prompts drawn with ``tune_seed``, never
on the test prompts, and (3) measures the bias and the accuracy on balanced prompts
before and after the correction on prompts drawn with ``seed``. The result reports the
bias with 95% bootstrap intervals, the relative reduction (with a paired bootstrap
interval) and the balanced accuracy before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from icl_heads._checks import check_grid, check_real
from icl_heads.bias import check_task, resolve_heads
from icl_heads.correction_methods import BIASES, DEFAULT_METHODS, RECENCY_SHOTS, CorrectionSetup, correction_method
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLTask
from icl_heads.reading import MIN_READ_SHARE
from icl_heads.tuning import BiasCorrection, evaluate_correction, read_at_for

_MEASURE_ONLY = {"skews": "majority", "n_random_orders": "recency"}


def correct_bias(
    model: Any,
    task: ICLTask,
    *,
    bias: str,
    method: str | None = None,
    heads: Any = "found",
    shots: int | None = None,
    n: int = 300,
    seed: int = 0,
    tune_n: int = 200,
    tune_seed: int = 1,
    grid: Sequence[float] | None = None,
    skews: Sequence[tuple[int, int]] | None = None,
    n_random_orders: int | None = None,
    max_accuracy_drop: float = 0.01,
    read_at: str = "auto",
    min_read_share: float = MIN_READ_SHARE,
    n_boot: int = 1000,
    options: RunOptions | None = None,
) -> BiasCorrection:
    """Tune a bias correction on held-out prompts and measure it on test prompts: the one engine of every method.

    The method comes from the registry (:mod:`icl_heads.correction_methods`): ``"count"``
    and ``"ov"`` for the majority bias, ``"prior"`` and ``"unrotated"`` for recency, and
    any method registered with :func:`~icl_heads.correction_methods.register_correction_method`.
    :func:`correct_majority_bias` and :func:`correct_recency_bias` are this function with
    ``bias`` fixed.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task.
        bias: ``"majority"`` or ``"recency"``.
        method: a registered method of that bias (default: ``"count"`` for majority,
            ``"prior"`` for recency).
        heads: heads to correct: ``"found"`` (default: run
            :func:`~icl_heads.heads.find_in_context_heads` on the tuning prompts and use
            its heads), ``(layer, head)`` pairs, or an ``InContextHeads`` result (its
            ``heads``). ``None`` is refused: elsewhere it means every head.
        shots: demonstrations per prompt (default 4 for majority, 8 for recency).
        n: test prompts (drawn with ``seed``).
        seed: seed of the test prompts.
        tune_n: tuning prompts (drawn with ``tune_seed``).
        tune_seed: seed of the tuning prompts; must differ from ``seed``.
        grid: hyperparameter values to try (default: the method's grid).
        skews: majority only: skewed counts measured besides minus-one (default
            ``((3, 1), (5, 1))``; see :func:`~icl_heads.bias.majority_bias`).
        n_random_orders: recency only: random orders besides original, reversed and the
            label blocks (default 4).
        max_accuracy_drop: largest balanced-accuracy drop allowed while tuning.
        read_at: the positions of each demonstration the correction acts on:
            ``"label"``, ``"after_label"``, ``"slot"`` or ``"auto"`` (where the heads put
            their attention on the tuning prompts; see :func:`~icl_heads.reading.resolve_read_at`).
        min_read_share: below this share of the heads' attention (outside the first
            token) on those positions, the result carries a warning.
        n_boot: bootstrap resamples.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`BiasCorrection`.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: an unknown bias or method, a measurement option of the other bias,
            ``seed == tune_seed`` (or, for recency, ``seed == tune_seed + 1``, the
            prior's reference prompts), bad heads, a method the model cannot take
            (``"unrotated"`` without rotary embeddings), a grid value that is not finite or
            outside the method's ``limits``, or no bias to reduce.
    """
    options = run_options(options)
    spec = correction_method(bias, method if method is not None else DEFAULT_METHODS.get(bias, ""))
    for name, value in (("skews", skews), ("n_random_orders", n_random_orders)):
        if value is not None and _MEASURE_ONLY[name] != bias:
            raise ValueError(f"{name} applies to the {_MEASURE_ONLY[name]} bias only, not to bias={bias!r}")
    grid = spec.grid if grid is None else check_grid("grid", grid, limits=spec.limits)
    check_real("max_accuracy_drop", max_accuracy_drop, limits=(0.0, 1.0))
    task = check_task(task)
    if seed == tune_seed:
        raise ValueError(
            f"seed and tune_seed are both {seed}; hyperparameters must be chosen on prompts other than the test prompts"
        )
    offset = spec.reference_seed_offset
    if offset is not None and seed == tune_seed + offset:
        raise ValueError(
            f"seed={seed} draws the prompts the {spec.name!r} method fits on (tune_seed + {offset}); choose another seed"
        )
    shots = BIASES[bias] if shots is None else shots
    tune_prompts = task.prompts(tune_n, shots, seed=tune_seed)
    heads = resolve_heads(model, heads, tune_prompts, options=run_options(options, progress=False))
    reading = read_at_for(model, tune_prompts, heads, read_at, min_read_share)
    build = spec.prepare(CorrectionSetup(model, task, list(heads), reading[0], shots, tune_n, tune_seed, options))
    measure: dict[str, Any] = (
        {"skews": [tuple(s) for s in (skews if skews is not None else ((3, 1), (5, 1)))]}
        if bias == "majority"
        else {"n_random_orders": 4 if n_random_orders is None else n_random_orders, "heads": list(heads)}
    )
    return evaluate_correction(
        bias, spec.name, spec.parameter, model, task, build, grid, heads, shots=shots, n=n, seed=seed,
        tune_n=tune_n, tune_seed=tune_seed, max_accuracy_drop=max_accuracy_drop, n_boot=n_boot,
        options=options, measure=measure, reading=reading,
    )  # fmt: skip


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

    :func:`correct_bias` with ``bias="majority"``; the arguments not listed here are
    documented there.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task.
        method: ``"count"`` (attention count-normalisation at label positions,
            hyperparameter ``strength``), ``"ov"`` (the paper's OV compensation,
            hyperparameter ``a_c``) or a registered method.
        heads: heads to correct: ``"found"`` (default: run
            :func:`~icl_heads.heads.find_in_context_heads` on the tuning prompts and use
            its heads), ``(layer, head)`` pairs, or an ``InContextHeads`` result (its
            ``heads``). ``None`` is refused: elsewhere it means every head.
        skews: skewed counts measured besides minus-one (see :func:`~icl_heads.bias.majority_bias`).
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

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
    options = run_options(options)
    return correct_bias(
        model, task, bias="majority", method=method, heads=heads, shots=shots, n=n, seed=seed, tune_n=tune_n,
        tune_seed=tune_seed, grid=grid, skews=skews, max_accuracy_drop=max_accuracy_drop, read_at=read_at,
        min_read_share=min_read_share, n_boot=n_boot, options=options,
    )  # fmt: skip


def correct_recency_bias(
    model: Any,
    task: ICLTask,
    *,
    method: str = "prior",
    heads: Any = "found",
    shots: int = RECENCY_SHOTS,
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

    :func:`correct_bias` with ``bias="recency"``; its arguments are documented there.
    The headline recency bias is the block gap (accuracy when the query's class forms
    the last block of demonstrations minus when it forms the first; it does not cancel
    over query classes, see :mod:`icl_heads.order_bias`); the spread of accuracy over
    orders beyond chance (:func:`~icl_heads.order_bias.order_spread`), the raw spread, the
    per-prompt order sensitivity, the excess rate of predicting the last demonstration's
    label and the probability pull of the last label are reported too. The arguments not
    listed here are documented in :func:`correct_bias`.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task.
        method: ``"prior"`` (divide each slot's attention by its positional prior from
            content-shuffled prompts drawn with ``tune_seed + 1``; any model;
            hyperparameter ``strength``), ``"unrotated"`` (scores at label keys from
            un-rotated q and k; rotary models only; hyperparameter ``mix``) or a
            registered method.
        heads: heads to correct: ``"found"`` (default: run
            :func:`~icl_heads.heads.find_in_context_heads` on the tuning prompts and use
            its heads), ``(layer, head)`` pairs, or an ``InContextHeads`` result (its
            ``heads``). ``None`` is refused: elsewhere it means every head.
        n_random_orders: random orders besides original, reversed and the label blocks.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`BiasCorrection`.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: an unknown method, ``"unrotated"`` on a model without rotary
            embeddings, ``seed == tune_seed`` or ``tune_seed + 1``, bad heads, or no bias to reduce.
    """
    options = run_options(options)
    return correct_bias(
        model, task, bias="recency", method=method, heads=heads, shots=shots, n=n, seed=seed, tune_n=tune_n,
        tune_seed=tune_seed, grid=grid, n_random_orders=n_random_orders, max_accuracy_drop=max_accuracy_drop,
        read_at=read_at, min_read_share=min_read_share, n_boot=n_boot, options=options,
    )  # fmt: skip
