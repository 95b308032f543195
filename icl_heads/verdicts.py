"""One-line verdicts on the papers' claims: :func:`collect_verdicts` reads the quantities each rule of
:mod:`icl_heads.verdict_rules` needs off the result objects of a run and judges every claim."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from icl_heads import verdict_rules as rules
from icl_heads._format import fmt, fmt_ci
from icl_heads.stats import wilson
from icl_heads.verdict_rules import CLAIMS, NOT_APPLICABLE, Verdict


def prompt_wins(
    scores: np.ndarray, same: np.ndarray, groups: np.ndarray, prompts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, the same-class vs other-class pairs of positions won by the same-class score, and all pairs.

    A group is one prompt seen by one head; pairs are formed within a group; ties count half; a prompt's wins and
    pairs are summed over its groups.

    Raises:
        ValueError: no group has both a same-class and an other-class position.
    """
    wins: dict = {}
    pairs: dict = {}
    for g in np.unique(groups):
        sel = groups == g
        pos, neg = scores[sel & same], scores[sel & ~same]
        pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
        if pos.size and neg.size:
            diff = pos[:, None] - neg[None, :]
            p = prompts[sel][0]
            wins[p] = wins.get(p, 0.0) + float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            pairs[p] = pairs.get(p, 0) + diff.size
    if not pairs:
        raise ValueError("no prompt has demonstrations of both the query's class and another class")
    return np.asarray(list(wins.values())), np.asarray([pairs[p] for p in wins], dtype=float)


def _missing(name: str, why: str = "section skipped") -> Verdict:
    return rules.not_applicable(name, CLAIMS[name], why)


def _faithfulness(f: Any) -> Verdict:
    w = f.worst()
    where = f" (layer {int(w.layer)})" if w.layer >= 0 else ""
    return rules.faithfulness_verdict(float(w.relative_error), float(w.tolerance), w.identity + where)


def _icl(acc: Any, n_labels: int, shots: int | None) -> Verdict:
    correct = acc.label_logits.argmax(-1) == acc.golds
    return rules.icl_verdict(int(correct.sum()), int(correct.numel()), 1 / n_labels, shots)


def _heads(found: Any) -> Verdict:
    if found.verification is None or found.random_accuracies is None:
        return _missing("heads", "not verified by ablation")
    n = int(found.ablated_accuracy.n)
    if n == 0:
        return _missing("heads", "the number of verification prompts was not recorded")
    return rules.heads_verdict(
        found.names,
        float(found.verification.set_index("condition").loc["none", "accuracy"]),
        round(float(found.ablated_accuracy) * n),
        n,
        np.asarray(found.random_accuracies, dtype=float).ravel(),
    )


def ov_units(ov: Any) -> dict[str, tuple[float, int]]:
    """Per kind (``label``, ``control``): share of demonstrations promoting their label and their number.

    A demonstration is one unit (a slot of two tokens counts once, with the mean of its positions), pooled over the
    heads as head x demonstration units.
    """
    pos = ov.positions
    out = {}
    for kind in ("label", "control"):
        per_demo = pos[pos.kind == kind].groupby(["layer", "head", "prompt", "demo"]).promotes.mean()
        out[kind] = (float(per_demo.mean()) if len(per_demo) else math.nan, len(per_demo))
    return out


def _ov(ov: Any) -> Verdict:
    (label, n_label), (control, n_control) = ov_units(ov).values()
    if n_control == 0:
        return _missing("ov", "no control positions to compare with")
    heads = [f"L{a}H{b}" for a, b in ov.heads]
    return rules.ov_verdict(label, n_label, control, n_control, len(ov.label_words), heads)


def _qk(qk: Any) -> Verdict:
    pos = qk.positions
    prompt = pos.prompt.to_numpy()
    group = prompt * 100_000 + pos.layer.to_numpy() * 1000 + pos["head"].to_numpy()
    wins, pairs = prompt_wins(pos.score.to_numpy(float), pos.same_as_gold.to_numpy(bool), group, prompt)
    return rules.qk_verdict(wins, pairs, list(qk.df.name))


def _correction(kind: str, fix: Any) -> Verdict:
    if fix is None or isinstance(fix, str):
        return rules.correction_verdict(kind, None, NOT_APPLICABLE, skipped=fix or "section skipped")
    s = fix.summary()
    before = s["bias before"]
    grid = fix.config.get("grid") or []
    extra = ""
    if kind == "majority" and "imbalanced accuracy before" in s:
        extra = (
            f"; accuracy on imbalanced prompts {fmt(s['imbalanced accuracy before'])} → "
            f"{fmt(s['imbalanced accuracy after'])}, change 95% {fmt_ci(s['imbalanced accuracy change 95% CI'])}"
        )
    return rules.correction_verdict(
        kind,
        fix.method,
        str(rules.judge(*s["before 95% CI"], rules.MARGINS[kind])) if before == before else NOT_APPLICABLE,
        reduction=fix.reduction.value,
        ci=fix.reduction.ci,
        before=before,
        after=s["bias after"],
        at_grid_edge=bool(grid) and fix.value >= max(grid) and fix.value > 0,
        grid_size=len(grid),
        extra=extra,
    )


def _components(dec: Any) -> Verdict:
    component_correct = (dec.logits.argmax(-1) == dec.golds[:, None]).numpy()
    full_correct = (dec.full_logits.argmax(-1) == dec.golds).numpy()
    return rules.components_verdict(list(dec.names), component_correct, full_correct)


def reweighting_accuracies(comparison: Any) -> dict[str, np.ndarray]:
    """Per method, its test accuracy in each run (seed x template), runs in one order for every method."""
    wide = comparison.df.pivot_table(index=["seed", "template"], columns="method", values="accuracy")
    return {m: wide[m].to_numpy(float) for m in wide.columns if wide[m].notna().all()}


def _bias(kind: str, b: Any) -> Verdict:
    """A bias's headline; recency's block gap (it does not cancel over query classes) beside the classic measures."""
    gap = float(getattr(b, "block_gap", float("nan")))
    if kind != "recency" or gap != gap:
        measure = {"majority": "excess majority predictions", "recency": "accuracy spread over orders beyond chance"}
        return rules.bias_verdict(kind, float(b.bias), b.bias.ci, measure[kind])
    extra = (
        f"; classic measures: excess last-label predictions {fmt(b.last_label_excess)} "
        f"{fmt_ci(b.last_label_excess.ci)}, accuracy spread over orders {fmt(b.bias)} {fmt_ci(b.bias.ci)}"
    )
    shots = getattr(b.config, "shots", None)
    measure = f"{shots}-shot prompts: " * bool(shots) + "accuracy gap, query's class block last minus first"
    return rules.bias_verdict(kind, gap, _not_degenerate(b.block_gap.ci, len(b.golds)), measure, extra)


def _not_degenerate(ci: tuple[float, float], n: int) -> tuple[float, float]:
    """A bootstrap interval of zero width (every prompt's gap the same) widened to what ``n`` prompts allow: a
    per-prompt gap lies in [-1, 1], so the mean gap is bounded by the Wilson upper end of 0 nonzero gaps in ``n``."""
    if ci[1] > ci[0]:
        return ci
    bound = wilson(0, n).high
    return (max(ci[0] - bound, -1.0), min(ci[1] + bound, 1.0))


def collect_verdicts(results: Mapping[str, Any]) -> list[Verdict]:
    """The verdicts of every claim, from the result objects of a run.

    Args:
        results: result objects by name, any of ``faithfulness``, ``accuracy``, ``heads``, ``ov``, ``qk``,
            ``majority``, ``recency``, ``majority_correction``, ``recency_correction`` (each a correction result or
            a string saying why it was skipped), ``decomposition`` and ``reweighting``, and ``n_labels`` and
            ``shots``. A missing one gives "not applicable".

    Returns:
        One verdict per claim, the faithfulness check and in-context learning first.
    """
    out: dict[str, Verdict] = {}
    n_labels = int(results.get("n_labels", 2))

    def add(name: str, make: Any, source: str | None = None) -> None:
        value = results.get(source or name)
        out[name] = _missing(name) if value is None else make(value)

    add("faithfulness", _faithfulness)
    add("icl", lambda a: _icl(a, n_labels, results.get("shots")), "accuracy")
    add("heads", _heads)
    add("ov", _ov)
    add("qk", _qk)
    for kind in ("majority", "recency"):
        add(kind, lambda b, kind=kind: _bias(kind, b))
        fix = results.get(f"{kind}_correction")
        out[f"{kind}_correction"] = _correction(kind, fix) if kind in results else _missing(f"{kind}_correction")
    add("decomposition", _components)
    add("reweighting", lambda c: rules.reweighting_verdict(reweighting_accuracies(c), chance=1 / n_labels))
    if "accuracy" in results and out["icl"].state != rules.HOLDS:
        for name in rules.ICL_CLAIMS:
            if out[name].state != NOT_APPLICABLE:
                why = (
                    f"the model does not learn the task in context ({out['icl'].detail}); measured: {out[name].detail}"
                )
                out[name] = _missing(name, why)
    return list(out.values())


def verdict_table(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """JSON-ready rows ``claim, state, detail, key, effect, low, high, margin``."""
    return [v.to_dict() for v in verdicts]
