"""Every bias correction and calibration side by side: one registry of methods and one table.

:func:`compare_corrections` fits each registered method on tuning prompts (drawn with
``tune_seed``) and measures it on test prompts (drawn with ``seed``; the two sets are
checked disjoint): the majority-label bias as :func:`~icl_heads.bias.majority_bias`
measures it (excess majority-label predictions over paired balanced and imbalanced
prompts), the recency bias as :func:`~icl_heads.order_bias.recency_bias`'s headline (the
block gap: accuracy when the query's class block comes last minus first), and accuracy on
balanced and on imbalanced prompts, each before and after with a paired bootstrap interval
over prompts; the labelled queries it needs and its cost in forward passes, both measured
by the cost ledger (each method computes afresh, nothing read back from another).

The methods come from the registry of :mod:`icl_heads.compared_methods`: output
calibrations, the attention corrections, Calib+, component reweighting, UniBias and anchor
re-weighting; register more with :func:`~icl_heads.compared_methods.register_compared_method`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl_heads.accuracy import predict
from icl_heads.bias import check_heads_choice, check_task, majority_prompts, resolve_heads
from icl_heads.compared_methods import COMPARED_METHODS, ComparedMethod, ComparisonSetup
from icl_heads.correction_methods import RECENCY_SHOTS
from icl_heads.engine import Intervention, cost_section, count_cost, no_reuse
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.order_bias import block_gaps, recency_prompts
from icl_heads.prompts import ICLPrompts, ICLTask
from icl_heads.reading import MIN_READ_SHARE
from icl_heads.records import UNSET, Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.stats import Estimate, bootstrap, bootstrap_mean
from icl_heads.tuning_checks import read_at_for

#: the two blocked orders of the recency measurement, whose gap is its headline
BLOCKED = ("blocked", "blocked_reversed")


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
        df: one row per method: ``method, family, setting, labelled`` (labelled queries its
            fit used, beside the demonstrations), ``fit_passes, fit_prompt_passes`` (forward
            passes and prompt passes of its fit or tuning), ``test_prompt_passes`` (prompt
            passes it made on the test prompts, given their plain scores),
            ``extra_passes_per_prompt`` (passes per test prompt beyond the plain one); for
            ``majority`` and ``recency`` (the bias) and ``balanced_accuracy``,
            ``imbalanced_accuracy``: ``{m}_after`` with ``_low``/``_high``, ``{m}_change``
            (after minus before, paired over prompts) with its interval; for the two biases
            ``{m}_reduction`` in percent (``100 (1 - |after| / |before|)``, paired bootstrap),
            missing where the bias before has an interval that includes 0 (nothing to
            reduce: ``note`` says so); ``note``: why a number is missing or a method did not run.
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
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

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
    heads_ = ()
    read = "label"
    if any(COMPARED_METHODS[m].needs_heads for m in names):
        heads_ = resolve_heads(access, heads, tune, options=quiet)
        read = read_at_for(access, tune, heads_, read_at, MIN_READ_SHARE)[0]
    counts = tuple(sorted({len(p.prompts[0].demos) for p in tests.values()}))
    setup = ComparisonSetup(access, task, heads_, read, shots, recency_shots, skews, tune_n, tune_seed, quiet, counts)
    measure = _Measure(major, orders, n_boot, seed)
    before = measure(clean)
    rows = [_row(COMPARED_METHODS[m], setup, tests, clean, before, measure) for m in names]
    baseline = pd.DataFrame(
        [{"metric": k, "value": float(e), "ci_low": e.low, "ci_high": e.high} for k, e in before.estimates().items()]
    )
    config = CorrectionComparisonConfig(
        methods=names, shots=shots, recency_shots=recency_shots, skews=[list(s) for s in skews], n=n, seed=seed,
        tune_n=tune_n, tune_seed=tune_seed, heads=[list(h) for h in heads_], read_at=read, n_boot=n_boot,
    )  # fmt: skip
    return CorrectionComparison(
        df=pd.DataFrame(rows).reindex(columns=COLUMNS), baseline=baseline, config=config,
        provenance=provenance(access.name, tune, **config),
    )  # fmt: skip


@dataclass
class _Outcome:
    """Per-prompt outcomes of one set of scores: the two biases and the two accuracies."""

    majority: np.ndarray
    recency: np.ndarray
    balanced_accuracy: np.ndarray
    imbalanced_accuracy: np.ndarray
    n_boot: int
    seed: int

    def estimates(self) -> dict[str, Estimate]:
        return {k: bootstrap_mean(getattr(self, k), n_boot=self.n_boot, seed=self.seed) for k in _METRICS}


_METRICS = ("majority", "recency", "balanced_accuracy", "imbalanced_accuracy")
#: the columns of :attr:`CorrectionComparison.df`, in order
COLUMNS = [
    "method", "family", "setting", "labelled", "fit_passes", "fit_prompt_passes", "test_prompt_passes",
    "extra_passes_per_prompt",
    *(f"{m}_{part}{end}" for m in _METRICS for part in ("after", "change") for end in ("", "_low", "_high")),
    *(f"{m}_reduction{end}" for m in _METRICS[:2] for end in ("", "_low", "_high")),
    "note", "description",
]  # fmt: skip


@dataclass
class _Measure:
    """Turns the scores of every test condition into per-prompt outcomes (the bias measurements' own statistics)."""

    major: dict
    orders: dict
    n_boot: int
    seed: int

    def __call__(self, scores: dict[str, Tensor]) -> _Outcome:
        base = next(iter(self.major.values()))
        m = torch.stack([scores[f"majority {k}"] for k in self.major])  # [condition, prompt, label]
        counts = torch.tensor([p.config["counts"] for p in self.major.values()])
        major = counts == counts.max(-1, keepdim=True).values  # [condition, label]: its majority labels
        pred = m.argmax(-1)
        # majority_bias's excess: a majority label of the condition predicted, minus on the balanced prompts
        in_major = major.gather(1, pred).float() - major.gather(1, pred[:1].expand_as(pred)).float()
        excess = in_major[~major.all(-1)].mean(0).numpy()
        correct = (pred == base.golds[None]).float().numpy()
        r = torch.stack([scores[f"recency {k}"] for k in BLOCKED])
        orig = self.orders["original"]
        gaps, _ = block_gaps(r, orig.golds, [[y for _, y in p.demos] for p in orig.prompts], list(BLOCKED))
        return _Outcome(excess, gaps, correct[0], correct[1:].mean(0), self.n_boot, self.seed)


def _reduction(before: np.ndarray, after: np.ndarray, n_boot: int, seed: int) -> Estimate:
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
    method: ComparedMethod, s: ComparisonSetup, tests: dict, clean: dict, before: _Outcome, measure: _Measure
) -> dict[str, Any]:
    row: dict[str, Any] = {"method": method.name, "family": method.family, "description": method.description}
    rows_plain = sum(len(p) for p in tests.values())
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
        extra_passes_per_prompt=test_cost.total.rows / rows_plain - own,
    )  # fmt: skip
    after, notes = measure(scores), []
    for k, est in after.estimates().items():
        b, a = getattr(before, k), getattr(after, k)
        change = bootstrap_mean(a - b, n_boot=before.n_boot, seed=before.seed, paired=True)
        row.update({f"{k}_after": float(est), f"{k}_after_low": est.low, f"{k}_after_high": est.high,
                    f"{k}_change": float(change), f"{k}_change_low": change.low, f"{k}_change_high": change.high})  # fmt: skip
        if k in ("majority", "recency"):
            b_est = bootstrap_mean(b, n_boot=before.n_boot, seed=before.seed)
            if b_est.low <= 0 <= b_est.high:
                notes.append(f"no {k} bias to reduce (its interval before includes 0)")
                continue
            red = _reduction(b, a, before.n_boot, before.seed)
            row.update({f"{k}_reduction": float(red), f"{k}_reduction_low": red.low, f"{k}_reduction_high": red.high})
    row["note"] = "; ".join(notes) or "-"
    return row
