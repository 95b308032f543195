"""The registry of methods that :func:`~icl_heads.compare_corrections.compare_corrections` compares.

A method is a :class:`ComparedMethod` whose ``fit(setup)`` returns a :class:`Fitted`:
either an :class:`~icl_heads.engine.Intervention` (or one per number of demonstrations),
re-run on every test prompt, or a calibrator that maps one condition's test prompts and
their label logits to calibrated scores. Registered here: the output calibrations of
:mod:`icl_heads.calibration`, the attention corrections of
:mod:`icl_heads.correction_methods` (each tuned on its own bias with
:func:`~icl_heads.tuning.tune_correction`), Calib+, component reweighting, UniBias and
anchor re-weighting. Add one with :func:`register_compared_method`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from icl_heads.accuracy import predict
from icl_heads.anchors import fit_anchor_reweighting
from icl_heads.calibration import CONTENT_FREE, batch_calibration, contextual_calibration, domain_context_calibration
from icl_heads.components.decompose import decompose
from icl_heads.components.estimators import CalibPlus, ComponentReweighting
from icl_heads.correction_methods import CORRECTION_METHODS, CorrectionSetup, correction_method
from icl_heads.engine import Intervention
from icl_heads.options import RunOptions
from icl_heads.prompts import ICLPrompts, ICLTask
from icl_heads.tuning import tune_correction
from icl_heads.unibias import fit_unibias

#: what a method's fitted form is, for the table
FAMILIES = ("output calibration", "attention correction", "learned calibration", "intervention")
#: a calibrator: ``(model, prompts of one condition, their label logits, options) -> [prompt, label] scores``
Calibrator = Callable[[Any, ICLPrompts, Tensor, RunOptions], Tensor]


@dataclass(frozen=True)
class ComparisonSetup:
    """What a method's ``fit`` receives: the model, the task, the tuning prompts' settings and the heads."""

    model: Any
    task: ICLTask
    heads: tuple
    read_at: str
    shots: int
    recency_shots: int
    skews: tuple
    tune_n: int
    tune_seed: int
    options: RunOptions
    #: the numbers of demonstrations of the test prompts (an intervention may be built for each)
    demo_counts: tuple[int, ...] = ()

    def tuning_prompts(self, shots: int | None = None) -> ICLPrompts:
        """The balanced tuning prompts (``tune_n`` drawn with ``tune_seed``), labelled."""
        return self.task.prompts(self.tune_n, self.shots if shots is None else shots, seed=self.tune_seed)


@dataclass(frozen=True)
class Fitted:
    """A fitted method: an intervention (or one per number of demonstrations) or a calibrator, the labelled
    queries its fit used, its chosen setting."""

    correction: Intervention | dict[int, Intervention] | Calibrator
    labelled: int
    setting: str = "-"


@dataclass(frozen=True)
class ComparedMethod:
    """One method of the comparison.

    Args:
        name: its name (``methods=`` of :func:`compare_corrections`).
        family: one of :data:`FAMILIES`.
        fit: ``fit(setup) -> Fitted`` (see :class:`ComparisonSetup`).
        description: one line for the table and errors.
        needs_heads: whether ``fit`` reads ``setup.heads`` (the in-context heads are then found).
        own_pass: whether its scores come from a pass of its own that replaces the plain one
            (interventions, reweighting) rather than from the plain scores (calibrations).

    Raises:
        ValueError: an empty name or an unknown family.
    """

    name: str
    family: str
    fit: Callable[[ComparisonSetup], Fitted]
    description: str = ""
    needs_heads: bool = False
    own_pass: bool = False

    def __post_init__(self) -> None:
        if not self.name or self.family not in FAMILIES:
            raise ValueError(
                f"a compared method needs a name and a family in {FAMILIES}, got {self.name!r}, {self.family!r}"
            )


COMPARED_METHODS: dict[str, ComparedMethod] = {}


def register_compared_method(method: ComparedMethod, *, overwrite: bool = False) -> ComparedMethod:
    """Add ``method`` to the methods :func:`compare_corrections` runs.

    Raises:
        ValueError: a method of that name is registered already (pass ``overwrite=True``).
    """
    if method.name in COMPARED_METHODS and not overwrite:
        raise ValueError(f"a compared method named {method.name!r} is registered already; pass overwrite=True")
    COMPARED_METHODS[method.name] = method
    return method


def _contextual(s: ComparisonSetup) -> Fitted:
    return Fitted(
        lambda m, p, lg, o: contextual_calibration(m, p, label_logits=lg, options=o),
        0,
        f"{len(CONTENT_FREE)} content-free queries",
    )


def _domain(s: ComparisonSetup) -> Fitted:
    return Fitted(
        lambda m, p, lg, o: domain_context_calibration(m, p, label_logits=lg, seed=s.tune_seed, options=o),
        0,
        "20 texts",
    )


def _attention(bias: str, name: str) -> Callable[[ComparisonSetup], Fitted]:
    def fit(s: ComparisonSetup) -> Fitted:
        spec = correction_method(bias, name)
        shots = s.shots if bias == "majority" else s.recency_shots
        setup = CorrectionSetup(s.model, s.task, list(s.heads), s.read_at, shots, s.tune_n, s.tune_seed, s.options)
        build = spec.prepare(setup)  # tuned on its own bias's prompts, then built for every test prompt length
        measure = {"skews": list(s.skews)} if bias == "majority" else {"n_random_orders": 0}
        value, _ = tune_correction(
            s.model, s.task, build, spec.grid, kind=bias, shots=shots, n=s.tune_n, seed=s.tune_seed,
            options=s.options, noop=0.0, **measure,
        )  # fmt: skip
        built = {k: (build if k == shots else spec.prepare(replace(setup, shots=k)))(value) for k in s.demo_counts}
        return Fitted(built, s.tune_n, f"{spec.parameter}={value:g}")

    return fit


def _calib_plus(s: ComparisonSetup) -> Fitted:
    tune = s.tuning_prompts()
    cal = CalibPlus().fit(predict(s.model, tune, options=s.options).label_logits, tune.golds)
    return Fitted(lambda m, p, logits, o: torch.as_tensor(cal.decision_function(logits)), s.tune_n)


def _reweighting(s: ComparisonSetup) -> Fitted:
    rw = ComponentReweighting(random_state=s.tune_seed).fit(decompose(s.model, s.tuning_prompts(), options=s.options))
    return Fitted(
        lambda m, p, logits, o: torch.as_tensor(rw.decision_function(decompose(m, p, options=o))),
        s.tune_n, f"{len(rw.kept_components_)} components kept",
    )  # fmt: skip


for _m in (
    ComparedMethod("contextual", "output calibration", _contextual,
                   "contextual calibration (Zhao et al. 2021): content-free queries N/A, '', [MASK]"),
    ComparedMethod("domain_context", "output calibration", _domain,
                   "domain-context calibration (Fei et al. 2023): 20 queries of random in-domain words"),
    ComparedMethod("batch", "output calibration", lambda s: Fitted(lambda m, p, lg, o: batch_calibration(lg), 0, "one condition per batch"),
                   "Batch Calibration (Zhou et al. 2023): divided by the batch's mean label probabilities"),
    *(ComparedMethod(f"{bias}:{name}", "attention correction", _attention(bias, name), spec.description,
                     needs_heads=True, own_pass=True)
      for bias, specs in CORRECTION_METHODS.items() for name, spec in specs.items()),
    ComparedMethod("calib_plus", "learned calibration", _calib_plus,
                   "Calib+: per-class weights and biases on the label probabilities, fitted on labelled tuning prompts"),
    ComparedMethod("reweighting", "learned calibration", _reweighting,
                   "component reweighting (Chang et al. 2024), fitted on labelled tuning prompts", own_pass=True),
):  # fmt: skip
    register_compared_method(_m)
register_compared_method(ComparedMethod("unibias", "intervention", lambda s: Fitted(fit_unibias(s.model, s.task, prompts=s.tuning_prompts(), options=s.options).intervention, s.tune_n), "UniBias (Zhou et al. 2024): biased heads and FFN neurons found on labelled tuning prompts, masked"))  # fmt: skip
register_compared_method(ComparedMethod("anchors", "intervention", lambda s: Fitted(fit_anchor_reweighting(s.model, s.task, prompts=s.tuning_prompts(max(s.demo_counts)), options=s.options).intervention, s.tune_n), "anchor re-weighting (Wang et al. 2023): a learned scale per head and demonstration slot"))  # fmt: skip
