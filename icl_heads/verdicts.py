"""One-line verdicts on the papers' claims, computed from the numbers of the result objects.

Each claim of the two papers gets a :class:`Verdict` in one of four states:

* ``"holds"``: the effect is there and its 95% interval excludes no effect;
* ``"does not hold on this model"``: the measurement shows the opposite, or no effect at all;
* ``"not significant"``: the point estimate goes the paper's way but the interval
  crosses zero (or chance): never headlined as an effect;
* ``"not applicable"``: the analysis did not run, or what it would correct is absent.

The functions named ``*_verdict`` are pure: they take plain numbers (so tests build
them by hand); :func:`collect_verdicts` reads those numbers off the result objects.
Every figure in a verdict is formatted by :func:`icl_heads._format.fmt` (3 decimals),
the one rounding rule of the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from icl_heads._format import fmt, fmt_ci
from icl_heads.stats import wilson

HOLDS = "holds"
FAILS = "does not hold on this model"
NOT_SIGNIFICANT = "not significant"
NOT_APPLICABLE = "not applicable"
STATES = (HOLDS, FAILS, NOT_SIGNIFICANT, NOT_APPLICABLE)

#: a baseline whose accuracy interval reaches chance, or whose mean is within this of chance, is "at chance"
CHANCE_MARGIN = 0.05


@dataclass(frozen=True)
class Verdict:
    """One claim, its state and the figure behind it.

    Attributes:
        claim: the paper's claim in a few words.
        state: one of :data:`STATES`.
        detail: the numbers, with their 95% intervals.
    """

    claim: str
    state: str
    detail: str

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")

    def line(self) -> str:
        """``claim: state (detail)``."""
        return f"{self.claim}: {self.state} ({self.detail})"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def sign_state(ci: Sequence[float], estimate: float) -> str:
    """Holds when the interval is above zero, fails when the estimate is not above zero, else not significant."""
    if ci[0] > 0:
        return HOLDS
    return FAILS if estimate <= 0 else NOT_SIGNIFICANT


def wilson_ci(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (:func:`icl_heads.stats.wilson`).

    Raises:
        ValueError: ``n`` is not positive.
    """
    lo, hi = wilson(successes, n, z).ci
    return float(lo), float(hi)


def faithfulness_verdict(worst_relative_error: float, tolerance: float, worst_identity: str) -> Verdict:
    """The linear identities every analysis rests on (:func:`icl_heads.check_faithfulness`)."""
    detail = f"worst relative error {worst_relative_error:.1e} in '{worst_identity}', tolerance {tolerance:.0e}"
    return Verdict("the linear identities hold", HOLDS if worst_relative_error <= tolerance else FAILS, detail)


def heads_verdict(
    heads: Sequence[str],
    accuracy: float,
    accuracy_ablated: float,
    random_mean: float,
    random_ci: Sequence[float],
    rank_p: float,
    alpha: float = 0.05,
) -> Verdict:
    """A few heads carry ICL: ablating the found heads hurts more than ablating random heads of the same number.

    Holds when fewer than ``alpha`` of the random sets hurt as much (``rank_p``); does not
    hold when the found heads hurt no more than random heads on average.
    """
    detail = (
        f"ablating {', '.join(heads)}: accuracy {fmt(accuracy)} → {fmt(accuracy_ablated)}; random heads "
        f"{fmt(random_mean)}, 95% of sets in {fmt_ci(random_ci)}; rank p {fmt(rank_p)}"
    )
    if rank_p < alpha and accuracy_ablated < random_ci[0]:
        state = HOLDS
    elif accuracy_ablated >= random_mean:
        state = FAILS
    else:
        state = NOT_SIGNIFICANT
    return Verdict("a few heads carry ICL", state, detail)


def ov_verdict(share: float, n: int, n_labels: int) -> Verdict:
    """OV reads labels: the in-context heads' value-output vectors at label positions promote the label there.

    Args:
        share: share of label positions whose vector ranks its own label first among the labels.
        n: number of label positions (pooled over the heads).
        n_labels: number of labels (chance is ``1 / n_labels``).
    """
    chance = 1 / n_labels
    ci = wilson_ci(share * n, n)
    detail = f"{fmt(share)} of {n} label positions promote their own label, 95% {fmt_ci(ci)}; chance {fmt(chance)}"
    return Verdict("OV reads labels", sign_state((ci[0] - chance, ci[1] - chance), share - chance), detail)


def qk_verdict(auc: float, ci: Sequence[float], heads: Sequence[str]) -> Verdict:
    """QK compares query and demonstrations: the pre-softmax score is higher at same-class demonstrations.

    Args:
        auc: within-prompt ROC AUC of the score, same-class vs other-class label positions (0.5 = chance).
        ci: its 95% interval.
        heads: the heads it was measured on.
    """
    detail = (
        f"score AUC same vs other class within prompts {fmt(auc)}, 95% {fmt_ci(ci)} ({', '.join(heads)}; 0.5 = chance)"
    )
    return Verdict("QK compares query and demonstrations", sign_state((ci[0] - 0.5, ci[1] - 0.5), auc - 0.5), detail)


def bias_verdict(kind: str, bias: float, ci: Sequence[float], measure: str) -> Verdict:
    """A bias exists: its measure's 95% interval is above zero."""
    return Verdict(f"{kind} bias exists", sign_state(ci, bias), f"{measure} {fmt(bias)}, 95% {fmt_ci(ci)}")


def correction_verdict(
    kind: str,
    method: str | None,
    bias_state: str,
    reduction: float | None = None,
    ci: Sequence[float] | None = None,
    before: float | None = None,
    after: float | None = None,
    at_grid_edge: bool = False,
    skipped: str | None = None,
) -> Verdict:
    """A correction reduces the bias: the reduction's 95% interval is above zero.

    Not applicable when the correction did not run (``skipped`` says why) or the bias
    itself is not established (``bias_state`` is not :data:`HOLDS`).

    Args:
        kind: ``"majority"`` or ``"recency"``.
        method: the correction's name.
        bias_state: the state of the bias's own verdict (on the correction's test prompts).
        reduction: relative reduction of the bias, in percent.
        ci: its 95% interval, in percent.
        before: bias before, on the correction's test prompts.
        after: bias after.
        at_grid_edge: the tuned strength is the largest value searched.
        skipped: why the correction did not run.
    """
    claim = f"{kind} correction{f' ({method})' if method else ''} reduces the bias"
    if skipped is not None or reduction is None or ci is None:
        return Verdict(claim, NOT_APPLICABLE, f"not run: {skipped or 'no result'}")
    detail = (
        f"reduction {fmt(reduction, 0)}%, 95% [{fmt(ci[0], 0)}%, {fmt(ci[1], 0)}%]; "
        f"bias {fmt(before)} → {fmt(after)} on its test prompts"
    )
    if at_grid_edge:
        detail += "; the tuned strength is the largest searched"
    if bias_state != HOLDS:
        return Verdict(claim, NOT_APPLICABLE, f"no significant {kind} bias to reduce; {detail}")
    return Verdict(claim, sign_state(ci, reduction), detail)


def components_verdict(
    best: str, best_accuracy: float, full_accuracy: float, n_good: int, n_components: int, n_prompts: int
) -> Verdict:
    """Components beat the whole: some single component classifies better than the full model.

    The best component's 95% Wilson interval must clear the full model's accuracy; it is
    the best of ``n_components`` selected on the same prompts, so the test is optimistic.
    """
    ci = wilson_ci(best_accuracy * n_prompts, n_prompts)
    detail = (
        f"{n_good} of {n_components} components beat the full model's {fmt(full_accuracy)}; best {best} "
        f"{fmt(best_accuracy)}, 95% {fmt_ci(ci)} over {n_prompts} prompts (selected on them)"
    )
    if n_good == 0 or best_accuracy <= full_accuracy:
        return Verdict("components beat the whole", FAILS, detail)
    return Verdict("components beat the whole", HOLDS if ci[0] > full_accuracy else NOT_SIGNIFICANT, detail)


@dataclass(frozen=True)
class MethodScore:
    """Test accuracy of one method over ``runs`` runs (seeds x templates)."""

    mean: float
    std: float
    runs: int

    def ci(self) -> tuple[float, float]:
        """Normal 95% interval of the mean over runs."""
        half = 1.96 * self.std / math.sqrt(self.runs) if self.runs > 1 else 0.0
        return self.mean - half, self.mean + half


def at_chance(score: MethodScore, chance: float) -> bool:
    """A baseline at chance: its interval reaches chance, or its mean is within :data:`CHANCE_MARGIN` of it."""
    lo, _ = score.ci()
    return score.mean - chance < CHANCE_MARGIN or lo <= chance


def reweighting_verdict(
    scores: Mapping[str, MethodScore], margins: Mapping[str, MethodScore], chance: float, method: str = "reweighting"
) -> Verdict:
    """Reweighting beats the baselines: compared with the strongest baseline that is above chance.

    Baselines at chance (e.g. ICL with more demonstrations than the model handles) are
    named and left out of the comparison.

    Args:
        scores: accuracy of each method (the reweighting and its baselines).
        margins: ``accuracy(method) - accuracy(baseline)`` per baseline, paired over runs.
        chance: accuracy of guessing (``1 / n_labels``).
        method: the name of the reweighting in ``scores``.
    """
    claim = "reweighting beats the baselines"
    baselines = {b: s for b, s in scores.items() if b != method and b in margins}
    flagged = [b for b, s in baselines.items() if at_chance(s, chance)]
    fair = {b: s for b, s in baselines.items() if b not in flagged}
    note = f"; {', '.join(flagged)} at chance ({fmt(chance)}), left out" if flagged else ""
    if method not in scores or not fair:
        return Verdict(claim, NOT_APPLICABLE, f"no baseline above chance to compare with{note}")
    strongest = max(fair, key=lambda b: fair[b].mean)
    m = margins[strongest]
    ci = m.ci()
    detail = (
        f"{method} {fmt(scores[method].mean)} vs strongest baseline {strongest} {fmt(fair[strongest].mean)}: "
        f"{'+' if m.mean >= 0 else ''}{fmt(m.mean)}, 95% {fmt_ci(ci)} over {m.runs} runs{note}"
    )
    return Verdict(claim, sign_state(ci, m.mean), detail)


def verdict_table(verdicts: Sequence[Verdict]) -> list[dict[str, str]]:
    """JSON-ready rows ``claim, state, detail``."""
    return [v.to_dict() for v in verdicts]


def collect_verdicts(results: Mapping[str, Any]) -> list[Verdict]:
    """The verdicts of every claim, from the result objects of a run.

    Args:
        results: result objects by name, any of ``faithfulness``, ``heads``, ``ov``, ``qk``,
            ``majority``, ``recency``, ``majority_correction``, ``recency_correction``
            (each a correction result or a string saying why it was skipped),
            ``decomposition`` and ``reweighting``. A missing one gives "not applicable".

    Returns:
        One verdict per claim, the faithfulness check first.
    """
    from icl_heads._verdict_inputs import extract

    return extract(results)
