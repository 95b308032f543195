"""What the methods recover: every analysis run unchanged on the :mod:`icl_heads.validation` models, against truth.

``scripts/recovery_page.py`` writes ``docs/validation.md`` from one run of :func:`recovery_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from scipy.stats import mannwhitneyu

from icl_heads.bias import majority_bias
from icl_heads.debias import correct_majority_bias, correct_recency_bias
from icl_heads.head_count import heads_needed
from icl_heads.head_definitions import compare_head_definitions
from icl_heads.heads import find_in_context_heads
from icl_heads.mechanism import ov_label_features, qk_label_attention
from icl_heads.models import load_model
from icl_heads.options import RunOptions
from icl_heads.order_bias import recency_bias
from icl_heads.reading import reading_roles
from icl_heads.scoring import METHODS, score_heads, top_heads
from icl_heads.validation import MODELS, ground_truth, validation_task
from icl_heads.verdicts import collect_verdicts

__all__ = ["head_recovery", "recovery_table"]

HEAD_MODELS = ("sparse", "redundant", "after_label", "deep")
BIAS_MODELS = ("majority", "recency")


def _name(head: tuple[int, int]) -> str:
    return f"L{head[0]}H{head[1]}"


def head_recovery(scores: torch.Tensor, planted: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """AUROC of ``[layer, head]`` scores for the planted heads, precision at their number, and which are found.

    The AUROC is the Mann-Whitney U of planted against other heads over their product
    (ties count half); a head is *recovered* when it is among the ``len(planted)`` best.

    Raises:
        ValueError: no planted heads, or every head planted.
    """
    planted = [tuple(h) for h in planted]
    flat = scores.flatten().double()
    is_planted = torch.zeros_like(flat, dtype=torch.bool)
    is_planted[[layer * scores.shape[1] + head for layer, head in planted]] = True
    if not 0 < int(is_planted.sum()) < len(flat):
        raise ValueError(f"planted heads {planted} must be some but not all of the {len(flat)} heads")
    pos, neg = flat[is_planted].numpy(), flat[~is_planted].numpy()
    auroc = mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))
    top = set(top_heads(scores, len(planted)))
    return {
        "auroc": float(auroc),
        "precision": len(top & set(planted)) / len(planted),
        "recovered": [_name(h) for h in planted if h in top],
        "missed": [_name(h) for h in planted if h not in top],
    }


def _row(model: str, check: str, value: Any, truth: Any, ok: bool, method: str = "", **detail: Any) -> dict[str, Any]:
    return {"model": model, "check": check, "method": method, "value": value, "truth": truth, "ok": bool(ok)} | {
        "detail": "; ".join(f"{k} {v}" for k, v in detail.items())
    }


def _recovery_row(name: str, check: str, method: str, scores: torch.Tensor, heads: Sequence[tuple[int, int]]) -> dict:
    rec = head_recovery(scores, heads)
    recovered, missed = (", ".join(rec[k]) or "none" for k in ("recovered", "missed"))
    planted = ", ".join(map(_name, heads))
    return _row(
        name,
        check,
        rec["auroc"],
        planted,
        rec["precision"] == 1,
        method,
        precision=rec["precision"],
        recovered=recovered,
        missed=missed,
    )


def _heads_rows(name: str, n: int, options: RunOptions) -> list[dict[str, Any]]:
    truth, model, task = ground_truth(name), load_model(f"validation:{name}"), validation_task(name)
    prompts, held = task.prompts(n=n, shots=4, seed=0), task.prompts(n=n, shots=4, seed=1)
    per_prompt = score_heads(model, prompts, methods=METHODS, options=options)
    rows = [_recovery_row(name, "head scores", m, per_prompt[m].mean(0), truth.heads) for m in METHODS]
    # the function-vector and induction definitions beside the in-context score (its ablations are read back below)
    definitions = compare_head_definitions(model, task, n=n, seed=0, options=options).scores.items()
    rows += [_recovery_row(name, "head definitions", d, table, truth.heads) for d, table in definitions]
    planted = ", ".join(map(_name, truth.heads))
    found = find_in_context_heads(model, prompts, also=(), verify_prompts=held, options=options)
    verdict = next(v for v in collect_verdicts({"heads": found}) if v.claim == "a few heads carry ICL")
    expect = "holds" if truth.needed == 1 else "not holds"  # one head's ablation gives chance, or no single one does
    rows.append(
        _row(name, "top-1% verdict", verdict.state, expect, (verdict.state == "holds") == (expect == "holds"),
             heads=", ".join(found.names))
    )  # fmt: skip
    count = heads_needed(model, held, found, greedy=True, n_random=5, options=options)
    greedy = ", ".join(map(_name, count.greedy_heads))
    ok = count.k_greedy == truth.needed and set(count.greedy_heads) <= set(truth.heads)
    rows.append(_row(name, "heads_needed (greedy)", greedy, f"{truth.needed} of {planted}", ok))
    read_at = str(reading_roles(model, prompts, options=options).reads(list(truth.heads[:1])).read_at.iloc[0])
    rows.append(_row(name, "reading role", read_at, truth.read_at, read_at == truth.read_at))
    if "relay" not in str(MODELS[name][1][truth.heads[0]]):  # the deep head writes no label: nothing for OV to read
        for check, analysis in (("OV reads at", ov_label_features), ("QK reads at", qk_label_attention)):
            at = analysis(model, prompts, list(truth.heads[:1]), options=options).summary()["read at"]
            rows.append(_row(name, check, at, truth.read_at, at == truth.read_at, "read_at='auto'"))
    return rows


def _bias_rows(name: str, n: int, seeds: int, options: RunOptions) -> list[dict[str, Any]]:
    truth, model, task = ground_truth(name), load_model(f"validation:{name}"), validation_task(name)
    kind = "majority" if truth.majority_bias is not None else "recency"
    true = truth.majority_bias if kind == "majority" else truth.recency_bias
    rows, covered, estimates = [], 0, []
    for seed in range(seeds):
        if kind == "majority":
            est = majority_bias(model, task, n=n, seed=seed, options=options).bias
        else:
            est = recency_bias(model, task, n=n, seed=seed, heads=list(truth.heads), options=options).block_gap
        estimates.append(est.value)
        covered += est.low <= true <= est.high
    rows.append(
        _row(name, f"{kind} bias: 95% interval covers the truth", f"{covered}/{seeds}", true,
             covered >= 0.9 * seeds, mean_estimate=round(sum(estimates) / seeds, 4))
    )  # fmt: skip
    correct = correct_majority_bias if kind == "majority" else correct_recency_bias
    method = truth.corrections[kind]
    fix = correct(model, task, method=method, heads=list(truth.heads), options=options).summary()
    reduction = float(fix["reduction %"].value)
    drop = fix["balanced accuracy before"] - fix["balanced accuracy after"]
    rows.append(
        _row(name, f"{kind} correction: share of the bias removed (%)", reduction, ">= 80", reduction >= 80 and drop <= 0.01,
             method, bias_before=round(fix["bias before"], 4), bias_after=round(fix["bias after"], 4),
             balanced_accuracy_drop=round(drop, 4))
    )  # fmt: skip
    return rows


def recovery_table(
    models: Sequence[str] = tuple(MODELS),
    *,
    n: int = 64,
    bias_n: int = 200,
    seeds: int = 20,
    options: RunOptions | None = None,
) -> pd.DataFrame:
    """Every method's answer on every validation model, against the planted truth.

    Args:
        models: names from :data:`~icl_heads.validation.MODELS`.
        n: prompts for head scoring, the finder, ``heads_needed`` and reading roles (the
            finder's check and ``heads_needed`` use ``n`` more, held out).
        bias_n: prompts per bias measurement.
        seeds: seeds over which each planted bias's interval coverage is counted.
        options: how prompts are run (default: no progress bars).

    Returns:
        One row per model and check: ``model, check, method, value, truth, ok, detail``.

    Raises:
        ValueError: an unknown model name.
    """
    options = options or RunOptions(progress=False)
    rows: list[dict[str, Any]] = []
    for name in models:
        ground_truth(name)
        rows += _bias_rows(name, bias_n, seeds, options) if name in BIAS_MODELS else _heads_rows(name, n, options)
    return pd.DataFrame(rows)
