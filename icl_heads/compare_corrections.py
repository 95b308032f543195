"""Every bias correction and calibration side by side: one registry of methods and one table.

Each registered method (:class:`ComparedMethod`, add one with :func:`register_compared_method`) is fitted on
tuning prompts and measured on disjoint test prompts by :func:`compare_corrections`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl_heads.accuracy import predict
from icl_heads.anchors import fit_anchor_reweighting
from icl_heads.bias import check_heads_choice, check_task, majority_excess, majority_prompts, resolve_heads
from icl_heads.calibration import CONTENT_FREE, batch_calibration, contextual_calibration, domain_context_calibration
from icl_heads.components.decompose import decompose
from icl_heads.components.estimators import CalibPlus, ComponentReweighting
from icl_heads.correction_methods import CORRECTION_METHODS, RECENCY_SHOTS, CorrectionSetup, correction_method
from icl_heads.engine import Intervention, cost_section, count_cost, no_reuse
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.order_bias import block_gaps, recency_prompts
from icl_heads.prompts import ICLPrompts, ICLTask
from icl_heads.reading import MIN_READ_SHARE
from icl_heads.records import UNSET, Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.stats import Estimate, bootstrap, bootstrap_mean
from icl_heads.tuning import no_bias_to_reduce, read_at_for, tune_correction
from icl_heads.unibias import fit_unibias

#: the two blocked orders of the recency measurement, whose gap is its headline
BLOCKED = ("blocked", "blocked_reversed")
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
    """A fitted method: an intervention (or one per demonstration count) or a calibrator, labelled queries, setting."""

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
    setting = f"{len(CONTENT_FREE)} content-free queries"
    return Fitted(lambda m, p, lg, o: contextual_calibration(m, p, label_logits=lg, options=o), 0, setting)


def _domain(s: ComparisonSetup) -> Fitted:
    cal = domain_context_calibration
    return Fitted(lambda m, p, lg, o: cal(m, p, label_logits=lg, seed=s.tune_seed, options=o), 0, "20 texts")


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


def _unibias(s: ComparisonSetup) -> Fitted:
    return Fitted(fit_unibias(s.model, s.task, prompts=s.tuning_prompts(), options=s.options).intervention, s.tune_n)


def _anchors(s: ComparisonSetup) -> Fitted:
    prompts = s.tuning_prompts(max(s.demo_counts))
    return Fitted(fit_anchor_reweighting(s.model, s.task, prompts=prompts, options=s.options).intervention, s.tune_n)


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
    ComparedMethod("unibias", "intervention", _unibias,
                   "UniBias (Zhou et al. 2024): biased heads and FFN neurons found on labelled tuning prompts, masked"),
    ComparedMethod("anchors", "intervention", _anchors,
                   "anchor re-weighting (Wang et al. 2023): a learned scale per head and demonstration slot"),
):  # fmt: skip
    register_compared_method(_m)


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class CorrectionComparisonConfig(Record):
    """Arguments of :func:`~icl_heads.compare_corrections`."""

    methods: list[str] = UNSET
    shots: int = UNSET
    recency_shots: int = UNSET
    skews: Any = UNSET
    n: int = UNSET
    seed: int = UNSET
    tune_n: int = UNSET
    tune_seed: int = UNSET
    heads: Any = UNSET
    read_at: str = UNSET
    n_boot: int = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "shots", "recency_shots", "n", "tune_n")


@dataclass(frozen=True, repr=False)
class CorrectionComparison(Result):
    """Every correction and calibration on the same test prompts.

    Attributes:
        df: one row per method: ``method, family, setting, labelled`` (labelled queries of its fit),
            ``fit_passes, fit_prompt_passes`` (of its fit or tuning), ``test_prompt_passes`` (on the
            test prompts, given their plain scores), ``extra_passes_per_prompt`` (beyond the plain
            one); for ``majority``, ``recency`` (the biases), ``balanced_accuracy`` and
            ``imbalanced_accuracy``: ``{m}_after`` and ``{m}_change`` (paired over prompts), each with
            ``_low``/``_high``; for the biases ``{m}_reduction`` in percent (``100 (1 - |after| /
            |before|)``, paired bootstrap), missing where the bias before has an interval that
            includes 0; ``note``: why a number is missing or a method did not run.
        baseline: the uncorrected model: ``metric, value, ci_low, ci_high`` per metric.
        config, provenance: arguments and origin.
    """

    df: pd.DataFrame
    baseline: pd.DataFrame
    config: CorrectionComparisonConfig = field(default_factory=CorrectionComparisonConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Bias corrections and calibrations compared"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"{r.metric} (no correction)": r.value for r in self.baseline.itertuples()}
        for r in self.df.to_dict(orient="records"):
            if r["balanced_accuracy_change"] != r["balanced_accuracy_change"]:
                out[r["method"]] = r["note"]
                continue
            red = {k: f"{r[k]:.0f}%" if r[k] == r[k] else "-" for k in ("majority_reduction", "recency_reduction")}
            out[r["method"]] = (
                f"majority bias reduced {red['majority_reduction']}, recency {red['recency_reduction']}; accuracy "
                f"balanced {r['balanced_accuracy_change']:+.3f}, imbalanced {r['imbalanced_accuracy_change']:+.3f}; "
                f"{r['labelled']:.0f} labelled, {r['extra_passes_per_prompt']:g} extra passes per prompt"
            )
        return out

    def plot(self) -> Figure:
        """Bias reduction and accuracy change per method, with 95% intervals."""
        return self._draw("plot")


def check_disjoint(tuning: ICLPrompts, tests: Sequence[ICLPrompts]) -> None:
    """Refuse tuning prompts that are also test prompts (the same demonstrations and query).

    Raises:
        ValueError: a prompt is in both.
    """
    tuned = set(tuning.prompts)
    shared = {p for t in tests for p in t.prompts if p in tuned}
    if shared:
        raise ValueError(
            f"{len(shared)} tuning prompts are also test prompts; choose another seed or tune_seed so they are disjoint"
        )


def compare_corrections(
    model: Any,
    task: ICLTask,
    *,
    methods: Sequence[str] | None = None,
    heads: Any = "found",
    shots: int = 4,
    recency_shots: int = RECENCY_SHOTS,
    skews: Sequence[tuple[int, int]] = ((3, 1), (5, 1)),
    n: int = 200,
    seed: int = 0,
    tune_n: int = 100,
    tune_seed: int = 1,
    read_at: str = "auto",
    n_boot: int = 1000,
    options: RunOptions | None = None,
) -> CorrectionComparison:
    """Compare every registered bias correction and calibration on the same test prompts.

    Each method is fitted on tuning prompts; on disjoint test prompts, the majority bias (as
    :func:`~icl_heads.bias.majority_bias`), the recency block gap and balanced and imbalanced
    accuracy are measured before and after; labelled queries and passes come from the cost ledger.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task.
        methods: names of registered methods (default: all of :data:`COMPARED_METHODS`).
        heads: the heads the attention corrections act on: ``"found"`` (default: the
            in-context heads found on the tuning prompts), ``(layer, head)`` pairs or an
            ``InContextHeads`` result.
        shots: demonstrations of the balanced majority-bias prompts.
        recency_shots: demonstrations of the recency prompts.
        skews: the skewed counts of the majority measurement.
        n: test prompts (queries) of each measurement, drawn with ``seed``.
        seed: seed of the test prompts.
        tune_n: tuning prompts, drawn with ``tune_seed``: what every method fits or tunes on.
        tune_seed: seed of the tuning prompts (the positional prior also uses ``tune_seed + 1``).
        read_at: where the attention corrections act (see :func:`~icl_heads.debias.correct_bias`).
        n_boot: bootstrap resamples.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`CorrectionComparison`.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: an unknown method (the valid ones are listed), fewer than 10 test or
            tuning prompts, ``seed`` equal to ``tune_seed`` or ``tune_seed + 1``, bad heads or
            shots, or tuning prompts that are also test prompts; all before any model work.
    """
    options = run_options(options)
    task = check_task(task)
    names = list(COMPARED_METHODS) if methods is None else [str(m) for m in methods]
    unknown = [m for m in names if m not in COMPARED_METHODS]
    if unknown or not names:
        what = f"unknown methods {unknown}" if unknown else "no methods to compare (methods is empty)"
        raise ValueError(f"{what}; choose from {sorted(COMPARED_METHODS)}, or methods=None for all")
    if n < 10 or tune_n < 10:
        raise ValueError(
            f"need n >= 10 test and tune_n >= 10 tuning prompts for intervals and fits, got n={n}, tune_n={tune_n}"
        )
    if seed in (tune_seed, tune_seed + 1):
        raise ValueError(
            f"seed={seed} draws tuning prompts (tune_seed={tune_seed} or tune_seed + 1); choose another seed"
        )
    check_heads_choice(heads)
    skews = tuple(tuple(int(v) for v in s) for s in skews)
    major = majority_prompts(task, shots=shots, n=n, seed=seed, skews=skews)
    orders = recency_prompts(task, shots=recency_shots, n=n, seed=seed, n_random_orders=0)
    tests = {**{f"majority {k}": v for k, v in major.items()}, **{f"recency {k}": orders[k] for k in BLOCKED}}
    tune = task.prompts(tune_n, shots, seed=tune_seed)
    check_disjoint(tune, [*tests.values()])
    check_disjoint(task.prompts(tune_n, recency_shots, seed=tune_seed), [*tests.values()])
    access = faithful_access(model, "compare_corrections")
    quiet = run_options(options, progress=False)
    clean = {k: predict(access, p, options=quiet).label_logits for k, p in tests.items()}
    heads_, read = (), "label"
    if any(COMPARED_METHODS[m].needs_heads for m in names):
        heads_ = resolve_heads(access, heads, tune, options=quiet)
        read = read_at_for(access, tune, heads_, read_at, MIN_READ_SHARE)[0]
    counts = tuple(sorted({len(p.prompts[0].demos) for p in tests.values()}))
    setup = ComparisonSetup(access, task, heads_, read, shots, recency_shots, skews, tune_n, tune_seed, quiet, counts)
    boot = partial(bootstrap_mean, n_boot=n_boot, seed=seed)
    measure = partial(_outcomes, major=major, orders=orders)
    before = measure(clean)
    base = {k: boot(v) for k, v in before.items()}
    rows = [_row(COMPARED_METHODS[m], setup, tests, clean, before, base, measure, boot) for m in names]
    baseline = pd.DataFrame(
        [{"metric": k, "value": float(e), "ci_low": e.low, "ci_high": e.high} for k, e in base.items()]
    )
    config = CorrectionComparisonConfig(
        methods=names, shots=shots, recency_shots=recency_shots, skews=[list(s) for s in skews], n=n, seed=seed,
        tune_n=tune_n, tune_seed=tune_seed, heads=[list(h) for h in heads_], read_at=read, n_boot=n_boot,
    )  # fmt: skip
    return CorrectionComparison(
        df=pd.DataFrame(rows).reindex(columns=COLUMNS), baseline=baseline, config=config,
        provenance=provenance(access.name, tune, **config),
    )  # fmt: skip


_METRICS = ("majority", "recency", "balanced_accuracy", "imbalanced_accuracy")
#: the columns of :attr:`CorrectionComparison.df`, in order
COLUMNS = [
    "method", "family", "setting", "labelled", "fit_passes", "fit_prompt_passes", "test_prompt_passes",
    "extra_passes_per_prompt",
    *(f"{m}_{part}{end}" for m in _METRICS for part in ("after", "change") for end in ("", "_low", "_high")),
    *(f"{m}_reduction{end}" for m in _METRICS[:2] for end in ("", "_low", "_high")),
    "note", "description",
]  # fmt: skip


def _outcomes(scores: dict[str, Tensor], major: dict, orders: dict) -> dict[str, np.ndarray]:
    """Per-prompt outcomes of one set of scores: the two biases and the two accuracies."""
    pred = torch.stack([scores[f"majority {k}"] for k in major]).argmax(-1)  # [condition, prompt]
    correct = (pred == next(iter(major.values())).golds[None]).float().numpy()
    excess = majority_excess(pred, torch.tensor([p.config["counts"] for p in major.values()])).mean(0).numpy()
    orig = orders["original"]
    r = torch.stack([scores[f"recency {k}"] for k in BLOCKED])
    gaps, _ = block_gaps(r, orig.golds, [[y for _, y in p.demos] for p in orig.prompts], list(BLOCKED))
    return dict(zip(_METRICS, (excess, gaps, correct[0], correct[1:].mean(0)), strict=True))


def _reduction(before: np.ndarray, after: np.ndarray, *, n_boot: int, seed: int) -> Estimate:
    """``100 (1 - |mean after| / |mean before|)`` with its paired bootstrap interval over prompts."""
    with np.errstate(divide="ignore", invalid="ignore"):  # resamples with no bias before are dropped
        return bootstrap(
            lambda i: 100 * (1 - abs(after[i].mean()) / abs(before[i].mean())), len(before), n_boot=n_boot,
            seed=seed, paired=True,
        )  # fmt: skip


def _apply(c: Any, s: ComparisonSetup, prompts: ICLPrompts, clean: Tensor) -> Tensor:
    """The scores of one test condition under a fitted correction."""
    if isinstance(c, dict):
        c = c[len(prompts.prompts[0].demos)]
    if isinstance(c, Intervention):
        return predict(s.model, prompts, hooks=c, options=s.options).label_logits
    return c(s.model, prompts, clean, s.options)


def _row(
    method: ComparedMethod,
    s: ComparisonSetup,
    tests: dict,
    clean: dict,
    before: dict,
    base: dict,
    measure: Callable[[dict], dict],
    boot: partial[Estimate],
) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method.name, "family": method.family, "description": method.description}
    try:
        with cost_section(f"corrections: {method.name}"), no_reuse():
            with count_cost() as fit_cost:
                fitted = method.fit(s)
            with count_cost() as test_cost:
                scores = {k: _apply(fitted.correction, s, p, clean[k]) for k, p in tests.items()}
    except ValueError as err:  # e.g. the unrotated correction on a model without rotary embeddings
        return {**row, "note": f"not applicable: {err}"}
    own = method.own_pass or isinstance(fitted.correction, (Intervention, dict))
    row.update(
        setting=fitted.setting, labelled=fitted.labelled, fit_passes=fit_cost.total.passes,
        fit_prompt_passes=fit_cost.total.rows, test_prompt_passes=test_cost.total.rows,
        extra_passes_per_prompt=test_cost.total.rows / sum(len(p) for p in tests.values()) - own,
    )  # fmt: skip
    after, notes = measure(scores), []
    for k, a in after.items():
        b = before[k]
        for part, e in (("after", boot(a)), ("change", boot(a - b, paired=True))):
            row.update({f"{k}_{part}": float(e), f"{k}_{part}_low": e.low, f"{k}_{part}_high": e.high})
        if k in ("majority", "recency"):
            if note := no_bias_to_reduce(k, base[k].low, base[k].high):
                notes.append(note)
                continue
            red = _reduction(b, a, **boot.keywords)
            row.update({f"{k}_reduction": float(red), f"{k}_reduction_low": red.low, f"{k}_reduction_high": red.high})
    row["note"] = "; ".join(notes) or "-"
    return row
