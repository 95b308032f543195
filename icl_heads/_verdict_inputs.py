"""Read the numbers of :mod:`icl_heads.verdicts` off the result objects of a run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from icl_heads.stats import from_samples, resamples
from icl_heads.verdicts import (
    NOT_APPLICABLE,
    MethodScore,
    Verdict,
    bias_verdict,
    components_verdict,
    correction_verdict,
    faithfulness_verdict,
    heads_verdict,
    ov_verdict,
    qk_verdict,
    sign_state,
)

CLAIMS = {
    "faithfulness": "the linear identities hold",
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


def within_prompt_auc_ci(
    scores: np.ndarray,
    same: np.ndarray,
    groups: np.ndarray,
    prompts: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """Within-group AUC (pairs of a same-class and an other-class position of one group) and its bootstrap interval.

    A group is one prompt seen by one head; prompts are resampled (with all their
    groups); the estimate is total wins over total pairs, as in
    :func:`icl_heads.mechanism._maths.paired_auc`.

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
    w, n = np.asarray(list(wins.values())), np.asarray([pairs[p] for p in wins], dtype=float)
    idx = resamples(len(w), n_boot=n_boot, seed=seed)
    auc = from_samples(float(w.sum() / n.sum()), w[idx].sum(1) / n[idx].sum(1), n=len(w), method="bootstrap")
    return auc.value, auc.ci


def _missing(name: str, why: str = "section skipped") -> Verdict:
    return Verdict(CLAIMS[name], NOT_APPLICABLE, why)


def _faithfulness(f: Any) -> Verdict:
    w = f.worst()
    where = f" (layer {int(w.layer)})" if w.layer >= 0 else ""
    return faithfulness_verdict(float(w.relative_error), float(w.tolerance), w.identity + where)


def _heads(found: Any) -> Verdict:
    if found.verification is None:
        return _missing("heads", "not verified by ablation")
    v = found.verification.set_index("condition")
    random = found.random_ablated_accuracy
    return heads_verdict(
        found.names,
        found.accuracy.value,
        found.ablated_accuracy.value,
        random.value,
        random.ci,
        float(v.loc["found heads", "rank_p"]),
    )


def _ov(ov: Any) -> Verdict:
    rows = ov.df[(ov.df.kind == "label") & (ov.df.label == "all")]
    n = int(rows.n.sum())
    share = float((rows.share_promoting * rows.n).sum() / n)
    return ov_verdict(share, n, len(ov.label_words))


def _qk(qk: Any) -> Verdict:
    pos = qk.positions
    prompt = pos.prompt.to_numpy()
    group = prompt * 100_000 + pos.layer.to_numpy() * 1000 + pos["head"].to_numpy()
    auc, ci = within_prompt_auc_ci(pos.score.to_numpy(float), pos.same_as_gold.to_numpy(bool), group, prompt)
    return qk_verdict(auc, ci, list(qk.df.name))


def _correction(kind: str, fix: Any) -> Verdict:
    if fix is None or isinstance(fix, str):
        return correction_verdict(kind, None, NOT_APPLICABLE, skipped=fix or "section skipped")
    s = fix.summary()
    grid = fix.config.get("grid") or []
    return correction_verdict(
        kind,
        fix.method,
        sign_state(s["before 95% CI"], s["bias before"]),
        reduction=fix.reduction.value,
        ci=fix.reduction.ci,
        before=s["bias before"],
        after=s["bias after"],
        at_grid_edge=bool(grid) and fix.value >= max(grid) and fix.value > 0,
    )


def _components(dec: Any) -> Verdict:
    kinds = dec.kinds()
    best = kinds.loc[kinds.accuracy.idxmax()]
    return components_verdict(
        str(best.component), float(best.accuracy), float(dec.full_accuracy), int(kinds.good.sum()), len(kinds),
        int(dec.n_prompts),
    )  # fmt: skip


def reweighting_inputs(comparison: Any) -> tuple[dict[str, MethodScore], dict[str, MethodScore]]:
    """Accuracy per method and the paired margin of the reweighting over each other method."""
    table = comparison.table()
    scores = {r.method: MethodScore(float(r.mean), float(r.std), int(r.runs)) for r in table.itertuples()}
    runs = scores.get("reweighting", MethodScore(0, 0, 1)).runs
    margins = {}
    for b in scores:
        if b != "reweighting" and "reweighting" in scores:
            m, s = comparison.margin(baseline=b)
            margins[b] = MethodScore(m, s, runs)
    return scores, margins


def extract(results: Mapping[str, Any]) -> list[Verdict]:
    """See :func:`icl_heads.verdicts.collect_verdicts`."""
    from icl_heads.verdicts import reweighting_verdict

    out = []

    def add(name: str, make: Any) -> None:
        value = results.get(name)
        out.append(_missing(name) if value is None else make(value))

    add("faithfulness", _faithfulness)
    add("heads", _heads)
    add("ov", _ov)
    add("qk", _qk)
    for kind in ("majority", "recency"):
        add(kind, lambda b, kind=kind: bias_verdict(kind, *_bias_numbers(kind, b)))
        fix = results.get(f"{kind}_correction")
        out.append(_correction(kind, fix) if kind in results else _missing(f"{kind}_correction"))
    add("decomposition", _components)
    n_labels = int(results.get("n_labels", 2))
    add("reweighting", lambda c: reweighting_verdict(*reweighting_inputs(c), chance=1 / n_labels))
    return out


_MEASURES = {
    "majority": "excess majority predictions",
    "recency": "accuracy spread over orders beyond chance",
}


def _bias_numbers(kind: str, b: Any) -> tuple[float, tuple[float, float], str]:
    """The headline of a bias: recency's block gap (which does not cancel over query classes) when measured."""
    gap = float(getattr(b, "block_gap", float("nan")))
    if kind == "recency" and gap == gap:
        return gap, b.block_gap.ci, "accuracy gap, query's class block last minus first"
    return float(b.bias), b.bias.ci, _MEASURES[kind]
