"""The registry of bias-correction methods that :func:`icl_heads.debias.correct_bias` tunes and measures.

Register your own with :func:`register_correction_method`::

    from icl_heads.correction_methods import CorrectionMethod, register_correction_method
    from icl_heads.corrections import count_normalisation

    register_correction_method(CorrectionMethod(
        bias="majority", name="count_sqrt", parameter="strength", grid=(0.0, 1.0, 4.0),
        prepare=lambda s: lambda v: count_normalisation(s.model, s.heads, v ** 0.5, read_at=s.read_at),
    ))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from icl_heads._checks import check_grid
from icl_heads.access import Head
from icl_heads.corrections import count_normalisation, ov_compensation, positional_prior, unrotated_attention
from icl_heads.engine import Hooks
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLTask

#: demonstrations per prompt of a recency measurement and its correction, by default (one default for both)
RECENCY_SHOTS = 8
#: the biases a correction can target, with the shots their measurement uses by default
BIASES = {"majority": 4, "recency": RECENCY_SHOTS}
#: the method :func:`~icl_heads.debias.correct_bias` uses for each bias when none is named
DEFAULT_METHODS = {"majority": "count", "recency": "prior"}


@dataclass(frozen=True)
class CorrectionSetup:
    """What a method's ``prepare`` receives: the model, the task, the chosen heads and where they read."""

    model: Any
    task: ICLTask
    heads: list[Head]
    read_at: str
    shots: int
    tune_n: int
    tune_seed: int
    options: RunOptions


@dataclass(frozen=True)
class CorrectionMethod:
    """One way to correct one bias.

    Args:
        bias: the bias it corrects, one of :data:`BIASES`.
        name: its name within that bias (``method=`` of :func:`~icl_heads.debias.correct_bias`).
        parameter: the name of its one hyperparameter.
        grid: the hyperparameter values tuned over by default; ``0.0`` must mean no change.
        prepare: given a :class:`CorrectionSetup`, returns ``build(value) -> hooks``; fitting happens here, once.
        description: one line for listings and errors.
        reference_seed_offset: it fits on prompts drawn with ``tune_seed`` plus this offset (the positional
            prior uses 1), so the test ``seed`` must differ from it; ``None`` when it fits on nothing else.
        limits: the range (inclusive) every grid value, the default and a caller's, must be finite and within.

    Raises:
        ValueError: an unknown bias, an empty name or grid, a grid value not finite or outside ``limits``, or
            a grid without the no-op value 0.
    """

    bias: str
    name: str
    parameter: str
    grid: tuple[float, ...]
    prepare: Callable[[CorrectionSetup], Callable[[float], Hooks]]
    description: str = ""
    reference_seed_offset: int | None = None
    limits: tuple[float, float] = (0.0, 100.0)

    def __post_init__(self) -> None:
        if self.bias not in BIASES:
            raise ValueError(f"bias must be one of {sorted(BIASES)}, got {self.bias!r}")
        if not self.name or not self.parameter:
            raise ValueError("a correction method needs a name and a parameter name")
        check_grid(f"the grid of {self.name!r}", self.grid, limits=self.limits)
        if 0.0 not in self.grid:
            raise ValueError(
                f"the grid of {self.name!r} must hold 0.0, the value that changes nothing; got {self.grid}"
            )


CORRECTION_METHODS: dict[str, dict[str, CorrectionMethod]] = {bias: {} for bias in BIASES}


def register_correction_method(method: CorrectionMethod, *, overwrite: bool = False) -> CorrectionMethod:
    """Make ``method`` available to :func:`~icl_heads.debias.correct_bias` under ``(method.bias, method.name)``.

    Raises:
        ValueError: a method of that name is registered for that bias already (pass ``overwrite=True``).
    """
    if method.name in CORRECTION_METHODS[method.bias] and not overwrite:
        raise ValueError(
            f"a {method.bias} correction named {method.name!r} is registered already; pass overwrite=True to replace it"
        )
    CORRECTION_METHODS[method.bias][method.name] = method
    return method


def unregister_correction_method(bias: str, name: str) -> CorrectionMethod:
    """Remove a registered method and return it.

    Raises:
        ValueError: an unknown bias or method (the valid choices are listed).
    """
    method = correction_method(bias, name)
    del CORRECTION_METHODS[bias][name]
    return method


def correction_method(bias: str, name: str) -> CorrectionMethod:
    """The registered method ``name`` for ``bias``.

    Raises:
        ValueError: an unknown bias or method (the valid choices are listed).
    """
    if bias not in CORRECTION_METHODS:
        raise ValueError(f"bias must be one of {sorted(BIASES)}, got {bias!r}")
    methods = CORRECTION_METHODS[bias]
    if name not in methods:
        raise ValueError(f"unknown method {name!r} for the {bias} bias; choose from {sorted(methods)}")
    return methods[name]


def _direct(build: Callable[..., Hooks]) -> Callable[[CorrectionSetup], Callable[[float], Hooks]]:
    """A ``prepare`` that builds the correction afresh for each value."""
    return lambda s: lambda value: build(s.model, s.heads, value, read_at=s.read_at)


def _prior(s: CorrectionSetup) -> Callable[[float], Hooks]:
    reference = s.task.prompts(s.tune_n, s.shots, seed=s.tune_seed + 1)
    quiet = run_options(s.options, progress=False)
    fitted = positional_prior(s.model, s.heads, reference, read_at=s.read_at, options=quiet)
    return lambda value: replace(fitted, strength=value)


def _unrotated(s: CorrectionSetup) -> Callable[[float], Hooks]:
    base = unrotated_attention(s.model, s.heads, read_at=s.read_at)
    return lambda value: replace(base, mix=value)


for _method in (
    CorrectionMethod("majority", "count", "strength", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0),
                     _direct(count_normalisation), "attention count normalisation at label positions"),
    CorrectionMethod("majority", "ov", "a_c", (0.0, 0.03, 0.1, 0.3, 1.0, 2.0, 3.0, 5.0), _direct(ov_compensation),
                     "the paper's OV compensation"),
    CorrectionMethod("recency", "prior", "strength", (0.0, 0.5, 1.0, 2.0, 3.0, 4.0), _prior,
                     "divide each slot's attention by its positional prior (fitted on prompts drawn with tune_seed + 1)",
                     reference_seed_offset=1),
    CorrectionMethod("recency", "unrotated", "mix", (0.0, 0.25, 0.5, 0.75, 1.0), _unrotated,
                     "scores at label keys from un-rotated q and k (rotary models only)", limits=(0.0, 1.0)),
):  # fmt: skip
    register_correction_method(_method)
