"""Correct majority-label and recency bias: tune a registered method on tuning prompts, measure it on test prompts.

:func:`correct_bias` is the one engine; :func:`correct_majority_bias` and :func:`correct_recency_bias` fix its ``bias``.
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

    Picks the heads (found on the tuning prompts by default) and where they read, chooses the
    hyperparameter with :func:`~icl_heads.tuning.tune_correction` on prompts drawn with
    ``tune_seed``, then measures bias and accuracy before and after on prompts drawn with ``seed``.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task.
        bias: ``"majority"`` or ``"recency"``.
        method: a method of that bias in :mod:`icl_heads.correction_methods` (default:
            ``"count"`` for majority, ``"prior"`` for recency).
        heads: heads to correct: ``"found"`` (default: found on the tuning prompts), ``(layer, head)``
            pairs, or an ``InContextHeads``; ``None`` (every head elsewhere) is refused.
        shots: demonstrations per prompt (default 4 for majority, 8 for recency).
        n: test prompts (drawn with ``seed``).
        seed: seed of the test prompts.
        tune_n: tuning prompts (drawn with ``tune_seed``).
        tune_seed: seed of the tuning prompts; must differ from ``seed``.
        grid: hyperparameter values to try (default: the method's grid).
        skews: majority only: skewed counts (default ``((3, 1), (5, 1))``; see :func:`~icl_heads.bias.majority_bias`).
        n_random_orders: recency only: random orders besides original, reversed and the blocks (default 4).
        max_accuracy_drop: largest balanced-accuracy drop allowed while tuning.
        read_at: where in each demonstration the correction acts: ``"label"``, ``"after_label"``, ``"slot"``
            or ``"auto"`` (where the heads attend on the tuning prompts; :func:`~icl_heads.reading.resolve_read_at`).
        min_read_share: below this share of the heads' attention on those positions, a warning.
        n_boot: bootstrap resamples.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`BiasCorrection`.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: an unknown bias or method, a measurement option of the other bias, ``seed == tune_seed``
            (or, for the prior, ``tune_seed + 1``), bad heads, a method the model cannot take (``"unrotated"``
            without rotary embeddings), a grid value not finite or outside the method's ``limits``, or no bias.
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
    if bias == "majority":
        measure: dict[str, Any] = {"skews": [tuple(s) for s in (((3, 1), (5, 1)) if skews is None else skews)]}
    else:
        measure = {"n_random_orders": 4 if n_random_orders is None else n_random_orders, "heads": list(heads)}
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
        method: ``"count"`` (count-normalised attention at label positions, ``strength``), ``"ov"``
            (the paper's OV compensation, ``a_c``) or a registered method.
        heads: heads to correct: ``"found"`` (default), pairs or a result, as for :func:`correct_bias`.
        skews: skewed counts measured besides minus-one (see :func:`~icl_heads.bias.majority_bias`).
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

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

    :func:`correct_bias` with ``bias="recency"``; the arguments not listed here are documented
    there. The headline is the block gap (:mod:`icl_heads.order_bias`); the other order
    statistics of :func:`~icl_heads.order_bias.recency_bias` are reported too.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task.
        method: ``"prior"`` (each slot's attention divided by its positional prior from content-shuffled
            prompts drawn with ``tune_seed + 1``, ``strength``), ``"unrotated"`` (label keys' scores from
            un-rotated q and k, rotary models only, ``mix``) or a registered method.
        heads: heads to correct: ``"found"`` (default), pairs or a result, as for :func:`correct_bias`.
        n_random_orders: random orders besides original, reversed and the label blocks.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`BiasCorrection`.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: an unknown method, ``"unrotated"`` without rotary embeddings, ``seed == tune_seed``
            or ``tune_seed + 1``, bad heads, or no bias to reduce.
    """
    return correct_bias(
        model, task, bias="recency", method=method, heads=heads, shots=shots, n=n, seed=seed, tune_n=tune_n,
        tune_seed=tune_seed, grid=grid, n_random_orders=n_random_orders, max_accuracy_drop=max_accuracy_drop,
        read_at=read_at, min_read_share=min_read_share, n_boot=n_boot, options=options,
    )  # fmt: skip
