"""The rules of the verdicts on the papers' claims: each claim a test of one 95% interval against a stated margin.

The states and the rule are in :func:`judge` and docs/methods.md; the ``*_verdict`` functions read plain
quantities (counts, per-run accuracies, interval ends), so tests feed them simulated data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from icl_heads._format import fmt, fmt_ci
from icl_heads.stats import resamples, t_interval, wilson

HOLDS = "holds"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_APPLICABLE = "not applicable"
STATES = (HOLDS, CONTRADICTED, INCONCLUSIVE, NOT_APPLICABLE)

#: each claim in a few words, by key
CLAIMS = {
    "faithfulness": "the linear identities hold",
    "icl": "the model learns the task in context",
    "heads": "a few heads carry ICL",
    "ov": "OV reads labels",
    "qk": "QK compares query and demonstrations",
    "majority": "majority bias exists",
    "majority_correction": "majority correction reduces the bias",
    "recency": "recency bias exists",
    "recency_correction": "recency correction reduces the bias",
    "decomposition": "components beat the whole",
    "reweighting": "reweighting beats the baselines",
}

_BIAS_REDUCTION = (10.0, "relative reduction of the bias, in %")
#: per claim, the smallest effect that counts as the claim and what it is measured in (the legend prints both)
_MARGINS: dict[str, tuple[float, str]] = {
    "icl": (0.10, "accuracy above chance"),
    "heads": (0.10, "accuracy drop beyond the mean of random head sets of the same size"),
    "ov": (0.10, "share of demonstrations promoting their label, above the control positions and above chance"),
    "qk": (0.05, "within-prompt AUC above 0.5"),
    "majority": (0.05, "excess majority-label predictions"),
    "recency": (0.10, "accuracy gap, query's class block last minus first"),
    "majority_correction": _BIAS_REDUCTION,
    "recency_correction": _BIAS_REDUCTION,
    "decomposition": (0.10, "accuracy of a component above the full model's (Bonferroni over components)"),
    "reweighting": (0.05, "accuracy above each baseline above chance (t interval over runs)"),
}
MARGINS: dict[str, float] = {k: m for k, (m, _) in _MARGINS.items()}

#: the claims about how ICL works: not applicable when the model does not learn the task in context
ICL_CLAIMS = ("heads", "ov", "qk")
#: a baseline whose mean is within this of chance, or whose interval reaches chance, is "at chance"
CHANCE_MARGIN = 0.05
LEVEL = 0.95


def judge(low: Any, high: Any, margin: float) -> Any:
    """The state of a claim from the interval ``[low, high]`` of its effect (paper's direction positive).

    ``holds`` when the interval excludes no effect (low end above 0), ``contradicted`` when it excludes the
    margin (high end below it), else ``inconclusive``. Vectorised: arrays of interval ends give an array of states.

    Raises:
        ValueError: a margin that is not positive.
    """
    if not margin > 0:
        raise ValueError(f"a claim's margin must be positive, got {margin}")
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    out = np.where(low > 0, HOLDS, np.where(high < margin, CONTRADICTED, INCONCLUSIVE))
    return str(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class Verdict:
    """One claim (``claim`` in a few words, ``key`` in :data:`MARGINS`), its state, the numbers (``detail``) and the
    interval ``[low, high]`` of its ``effect`` (NaN when none was measured) judged against ``margin``."""

    claim: str
    state: str
    detail: str
    key: str = ""
    effect: float = math.nan
    low: float = math.nan
    high: float = math.nan
    margin: float = math.nan

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {self.state!r}")

    def line(self) -> str:
        """``claim: state (detail)``."""
        return f"{self.claim}: {self.state} ({self.detail})"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _judged(key: str, claim: str, effect: float, ci: Sequence[float], detail: str) -> Verdict:
    lo, hi = float(ci[0]), float(ci[1])
    return Verdict(claim, judge(lo, hi, MARGINS[key]), detail, key, float(effect), lo, hi, MARGINS[key])


def not_applicable(key: str, claim: str, why: str) -> Verdict:
    return Verdict(claim, NOT_APPLICABLE, why, key)


def difference_interval(a: float, a_ci: Sequence[float], b: float, b_ci: Sequence[float]) -> tuple[float, float]:
    """Interval of ``a - b`` from the intervals of two independent estimates (Newcombe's square-and-add)."""
    return (a - b) - math.hypot(a - a_ci[0], b_ci[1] - b), (a - b) + math.hypot(a_ci[1] - a, b - b_ci[0])


def faithfulness_verdict(worst_relative_error: float, tolerance: float, worst_identity: str) -> Verdict:
    """The linear identities every analysis rests on (:func:`icl_heads.check_faithfulness`): exact, no interval."""
    detail = f"worst relative error {worst_relative_error:.1e} in '{worst_identity}', tolerance {tolerance:.0e}"
    state = HOLDS if worst_relative_error <= tolerance else CONTRADICTED
    return Verdict("the linear identities hold", state, detail, "faithfulness")


def icl_verdict(correct: int, n: int, chance: float, shots: int | None = None) -> Verdict:
    """The model learns the task in context: accuracy's Wilson interval (``correct`` of ``n``) above ``chance``."""
    acc = wilson(correct, n)
    setting = f"{shots}-shot " if shots is not None else ""
    detail = f"{setting}accuracy {fmt(acc.value)}, 95% {fmt_ci(acc.ci)} over {n} prompts; chance {fmt(chance)}"
    return _judged("icl", CLAIMS["icl"], acc.value - chance, (acc.low - chance, acc.high - chance), detail)


def heads_verdict(
    heads: Sequence[str], accuracy: float, ablated_correct: int, n: int, random_accuracies: Any
) -> Verdict:
    """A few heads carry ICL: random head sets' mean accuracy (t interval) minus the found heads' ablated accuracy
    (Wilson, ``n`` prompts), combined by square-and-add."""
    ablated = wilson(ablated_correct, n)
    r_mean, r_lo, r_hi = t_interval(random_accuracies)
    if math.isnan(r_lo):
        r_lo = r_hi = r_mean
    r_lo, r_hi = max(r_lo, 0.0), min(r_hi, 1.0)  # a mean accuracy lies in [0, 1]
    lo, hi = difference_interval(r_mean, (r_lo, r_hi), ablated.value, ablated.ci)
    effect = r_mean - ablated.value
    detail = (
        f"ablating {', '.join(heads)}: accuracy {fmt(accuracy)} → {fmt(ablated.value)} {fmt_ci(ablated.ci)}; "
        f"mean of {len(random_accuracies)} random sets {fmt(r_mean)} {fmt_ci((r_lo, r_hi))}; drop beyond random "
        f"{fmt(effect)}, 95% {fmt_ci((lo, hi))} over {n} prompts"
    )
    return _judged("heads", CLAIMS["heads"], effect, (lo, hi), detail)


def ov_verdict(
    label_share: float, n_label: int, control_share: float, n_control: int, n_labels: int, heads: Sequence[str] = ()
) -> Verdict:
    """OV reads labels: the share of ``n_label`` demonstrations whose label slot promotes their label beats both the
    control positions' share and chance ``1 / n_labels`` (an intersection-union test of two square-and-add
    differences of Wilson intervals)."""
    chance = 1 / n_labels
    lab, ctl = wilson(label_share * n_label, n_label), wilson(control_share * n_control, n_control)
    vs_control = difference_interval(lab.value, lab.ci, ctl.value, ctl.ci)
    vs_chance = (lab.low - chance, lab.high - chance)
    effect = min(lab.value - ctl.value, lab.value - chance)
    ci = (min(vs_control[0], vs_chance[0]), min(vs_control[1], vs_chance[1]))
    who = f" ({', '.join(heads)})" if heads else ""
    detail = (
        f"label slots promote their label in {fmt(lab.value)} of {n_label} demonstrations {fmt_ci(lab.ci)}, "
        f"control positions {fmt(ctl.value)} {fmt_ci(ctl.ci)}{who}; label minus control "
        f"{fmt(lab.value - ctl.value)} {fmt_ci(vs_control)}; chance {fmt(chance)}"
    )
    return _judged("ov", CLAIMS["ov"], effect, ci, detail)


def qk_verdict(wins: Any, pairs: Any, heads: Sequence[str], seed: int = 0) -> Verdict:
    """QK compares query and demonstrations: per prompt, the same- vs other-class pairs of label positions the
    same-class score wins (``wins``, ties half) of all ``pairs``, as an AUC with a percentile bootstrap over prompts."""
    w, p = np.asarray(wins, dtype=float), np.asarray(pairs, dtype=float)
    if w.size == 0 or p.sum() == 0:
        raise ValueError("no prompt has demonstrations of both the query's class and another class")
    idx = resamples(w.size, seed=seed)
    lo, hi = (float(q) for q in np.quantile(w[idx].sum(1) / p[idx].sum(1), [(1 - LEVEL) / 2, (1 + LEVEL) / 2]))
    auc = float(w.sum() / p.sum())
    detail = (
        f"score AUC same vs other class within prompts {fmt(auc)}, 95% {fmt_ci((lo, hi))} over "
        f"{len(w)} prompts ({', '.join(heads)}; 0.5 = chance)"
    )
    return _judged("qk", CLAIMS["qk"], auc - 0.5, (lo - 0.5, hi - 0.5), detail)


def bias_verdict(kind: str, bias: float, ci: Sequence[float], measure: str, extra: str = "") -> Verdict:
    """A bias exists: its measure's 95% interval (a bootstrap over prompts) is above zero."""
    return _judged(kind, f"{kind} bias exists", bias, ci, f"{measure} {fmt(bias)}, 95% {fmt_ci(ci)}{extra}")


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
    grid_size: int = 0,
    extra: str = "",
) -> Verdict:
    """A correction reduces the bias: the relative reduction's 95% interval is above zero; not applicable when it
    did not run (``skipped`` says why) or the bias is not established (``bias_state`` not :data:`HOLDS`)."""
    key = f"{kind}_correction"
    claim = f"{kind} correction{f' ({method})' if method else ''} reduces the bias"
    if skipped is not None or reduction is None or ci is None:
        return not_applicable(key, claim, f"not run: {skipped or 'no result'}")
    detail = (
        f"reduction {fmt(reduction, 0)}%, 95% [{fmt(ci[0], 0)}%, {fmt(ci[1], 0)}%]; "
        f"bias {fmt(before)} → {fmt(after)} on its test prompts"
    )
    if grid_size:
        detail += f"; strength chosen from {grid_size} values on separate tuning prompts"
    if at_grid_edge:
        detail += "; the tuned strength is the largest searched"
    detail += extra
    if bias_state != HOLDS:
        return not_applicable(key, claim, f"no established {kind} bias to reduce; {detail}")
    return _judged(key, claim, reduction, ci, detail)


def components_verdict(
    names: Sequence[str], component_correct: Any, full_correct: Any, level: float = LEVEL
) -> Verdict:
    """Components beat the whole: some component (``[prompt, component]`` 0/1 correct) beats the full model
    (``[prompt]`` 0/1), paired t intervals over prompts at the Bonferroni level ``1 - (1 - level) / n_components``;
    the claim's interval is the largest low and high end over the components."""
    c = np.asarray(component_correct, dtype=float)
    f = np.asarray(full_correct, dtype=float)
    n, k = c.shape
    d = c - f[:, None]
    mean = d.mean(0)
    sd = d.std(0, ddof=1) if n > 1 else np.zeros(k)
    corrected = 1 - (1 - level) / k
    half = sps.t.ppf(0.5 + corrected / 2, max(n - 1, 1)) * sd / math.sqrt(n)
    # a difference that never varies is bounded by the discordance rate, whose Wilson upper end replaces zero width
    for j in np.flatnonzero(sd == 0):
        half[j] = wilson(int((d[:, j] != 0).sum()), n, z=float(sps.norm.ppf(0.5 + corrected / 2))).high
    lows, highs = mean - half, mean + half
    best = int(np.argmax(mean))
    detail = (
        f"{int((lows > 0).sum())} of {k} components more accurate than the full model's {fmt(f.mean())} "
        f"(Bonferroni, {fmt(corrected * 100, 2)}% intervals, paired over {n} prompts); best {names[best]} "
        f"{fmt(c[:, best].mean())}, difference {fmt(mean[best])} {fmt_ci((lows[best], highs[best]))}"
    )
    ci = (float(lows.max()), float(highs.max()))
    return _judged("decomposition", CLAIMS["decomposition"], float(mean.max()), ci, detail)


def at_chance(accuracies: Any, chance: float) -> bool:
    """A baseline at chance: its t interval over runs reaches chance, or its mean is within :data:`CHANCE_MARGIN`."""
    m, lo, _ = t_interval(accuracies)
    return m - chance < CHANCE_MARGIN or (lo == lo and lo <= chance)


def reweighting_verdict(accuracies: Mapping[str, Any], chance: float, method: str = "reweighting") -> Verdict:
    """Reweighting beats the baselines: per method its accuracy in each run (``accuracies``, runs paired), ``method``
    minus every baseline not at chance (those are named and left out), t intervals over runs, smallest ends."""
    claim = CLAIMS["reweighting"]
    baselines = {b: np.asarray(a, dtype=float) for b, a in accuracies.items() if b != method}
    flagged = [b for b, a in baselines.items() if at_chance(a, chance)]
    fair = {b: a for b, a in baselines.items() if b not in flagged}
    note = f"; {', '.join(flagged)} at chance ({fmt(chance)}), left out" if flagged else ""
    if method not in accuracies or not fair:
        return not_applicable("reweighting", claim, f"no baseline above chance to compare with{note}")
    mine = np.asarray(accuracies[method], dtype=float)
    runs = mine.size
    if runs < 2:
        return Verdict(claim, INCONCLUSIVE, f"one run: no interval over runs{note}", "reweighting")
    diffs = {b: t_interval(mine - a) for b, a in fair.items()}
    parts = [f"{b} {'+' if d[0] >= 0 else ''}{fmt(d[0])} {fmt_ci(d[1:])}" for b, d in diffs.items()]
    ci = (min(d[1] for d in diffs.values()), min(d[2] for d in diffs.values()))
    detail = (
        f"{method} {fmt(mine.mean())}; minus each baseline, 95% t interval over {runs} runs "
        f"({runs - 1} df): {'; '.join(parts)}{note}"
    )
    return _judged("reweighting", claim, min(d[0] for d in diffs.values()), ci, detail)


def legend() -> list[str]:
    """The meaning of each state and each claim's margin, as written in the report."""
    return [
        "holds: the 95% interval of the effect excludes no effect, in the paper's direction.",
        "contradicted: the interval excludes the smallest effect that would count as the claim (its margin), "
        "or lies in the opposite direction.",
        "inconclusive: anything else; the data cannot tell (no effect found is not no effect).",
        "not applicable: the analysis did not run, or what it is about is absent (the claims about how ICL works "
        "need the model to learn the task in context; a correction needs an established bias).",
    ] + [f"margin of '{CLAIMS[k]}': {fmt(m, 2 if m < 1 else 0)} ({unit})" for k, (m, unit) in _MARGINS.items()]
