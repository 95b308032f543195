"""Verdicts from hand-made numbers: every state of every claim is reachable, and the figures are the ones given."""

import numpy as np
import pytest

from icl_heads._format import fmt
from icl_heads._verdict_inputs import within_prompt_auc_ci
from icl_heads.verdicts import (
    FAILS,
    HOLDS,
    NOT_APPLICABLE,
    NOT_SIGNIFICANT,
    MethodScore,
    Verdict,
    at_chance,
    bias_verdict,
    components_verdict,
    correction_verdict,
    faithfulness_verdict,
    heads_verdict,
    ov_verdict,
    qk_verdict,
    reweighting_verdict,
    wilson_ci,
)


def test_faithfulness_states_and_figure():
    ok = faithfulness_verdict(3.2e-7, 1e-4, "final norm")
    assert ok.state == HOLDS and "3.2e-07" in ok.detail and "final norm" in ok.detail
    assert faithfulness_verdict(2e-3, 1e-4, "final norm").state == FAILS


@pytest.mark.parametrize(
    ("ablated", "rank_p", "state"),
    [(0.30, 0.01, HOLDS), (0.99, 0.9, FAILS), (0.80, 0.2, NOT_SIGNIFICANT)],
)
def test_heads_states(ablated, rank_p, state):
    v = heads_verdict(["L1H1"], 0.95, ablated, 0.90, (0.70, 0.98), rank_p)
    assert v.state == state
    assert f"0.950 → {fmt(ablated)}" in v.detail and "[0.700, 0.980]" in v.detail


def test_heads_needs_both_rank_and_interval():
    # rank p small but the found heads' accuracy inside the random sets' 95% range: not significant
    assert heads_verdict(["L0H0"], 1.0, 0.85, 0.9, (0.8, 1.0), 0.04).state == NOT_SIGNIFICANT


def test_ov_states():
    assert ov_verdict(0.95, 400, 2).state == HOLDS
    assert ov_verdict(0.40, 400, 2).state == FAILS
    assert ov_verdict(0.56, 20, 2).state == NOT_SIGNIFICANT  # above chance, too few positions
    assert "chance 0.333" in ov_verdict(0.9, 50, 3).detail


def test_qk_states():
    assert qk_verdict(0.9, (0.85, 0.95), ["L1H1"]).state == HOLDS
    assert qk_verdict(0.45, (0.40, 0.52), ["L1H1"]).state == FAILS
    assert qk_verdict(0.55, (0.48, 0.62), ["L1H1"]).state == NOT_SIGNIFICANT


def test_bias_states():
    assert bias_verdict("majority", 0.2, (0.1, 0.3), "excess").state == HOLDS
    assert bias_verdict("majority", 0.0, (-0.05, 0.05), "excess").state == FAILS
    assert bias_verdict("recency", 0.03, (-0.01, 0.07), "spread").state == NOT_SIGNIFICANT


def test_correction_states():
    kw = dict(before=0.2, after=0.1)
    assert correction_verdict("majority", "m", HOLDS, 50.0, (20.0, 80.0), **kw).state == HOLDS
    assert correction_verdict("majority", "m", HOLDS, -10.0, (-30.0, 5.0), **kw).state == FAILS
    ns = correction_verdict("recency", "r", HOLDS, 51.0, (-5.0, 100.0), at_grid_edge=True, **kw)
    assert ns.state == NOT_SIGNIFICANT and "51%" in ns.detail and "largest searched" in ns.detail
    assert correction_verdict("recency", "r", NOT_SIGNIFICANT, 60.0, (30.0, 90.0), **kw).state == NOT_APPLICABLE
    skipped = correction_verdict("recency", None, NOT_APPLICABLE, skipped="no bias to reduce")
    assert skipped.state == NOT_APPLICABLE and "no bias to reduce" in skipped.detail


def test_components_states():
    assert components_verdict("L2H3", 0.95, 0.70, 3, 40, 400).state == HOLDS
    assert components_verdict("L2H3", 0.60, 0.70, 0, 40, 400).state == FAILS
    assert components_verdict("L2H3", 0.72, 0.70, 1, 40, 100).state == NOT_SIGNIFICANT


def test_reweighting_flags_a_baseline_at_chance_and_compares_with_the_strongest_fair_one():
    scores = {
        "reweighting": MethodScore(0.90, 0.02, 3),
        "ICL-24": MethodScore(0.50, 0.01, 3),
        "ICL-4": MethodScore(0.80, 0.02, 3),
        "Calib+": MethodScore(0.85, 0.02, 3),
    }
    margins = {
        "ICL-24": MethodScore(0.40, 0.02, 3),
        "ICL-4": MethodScore(0.10, 0.01, 3),
        "Calib+": MethodScore(0.05, 0.01, 3),
    }
    v = reweighting_verdict(scores, margins, chance=0.5)
    assert v.state == HOLDS
    assert "Calib+" in v.detail and "+0.050" in v.detail and "ICL-24 at chance" in v.detail
    assert "+0.400" not in v.detail  # never headlined against a baseline at chance


def test_reweighting_other_states():
    scores = {"reweighting": MethodScore(0.80, 0.05, 3), "Calib+": MethodScore(0.82, 0.02, 3)}
    assert reweighting_verdict(scores, {"Calib+": MethodScore(-0.02, 0.01, 3)}, 0.5).state == FAILS
    assert reweighting_verdict(scores, {"Calib+": MethodScore(0.02, 0.05, 3)}, 0.5).state == NOT_SIGNIFICANT
    at = {"reweighting": MethodScore(0.8, 0.0, 3), "ICL-24": MethodScore(0.52, 0.0, 3)}
    v = reweighting_verdict(at, {"ICL-24": MethodScore(0.28, 0.0, 3)}, 0.5)
    assert v.state == NOT_APPLICABLE and "ICL-24" in v.detail


def test_at_chance_uses_the_interval():
    assert at_chance(MethodScore(0.60, 0.20, 3), 0.5)  # interval reaches chance
    assert not at_chance(MethodScore(0.60, 0.01, 3), 0.5)


def test_wilson_interval_contains_the_proportion_and_refuses_no_trials():
    lo, hi = wilson_ci(90, 100)
    assert lo < 0.9 < hi and lo >= 0 and hi <= 1
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_ci(0, 0)


def test_verdict_refuses_an_unknown_state():
    with pytest.raises(ValueError, match="state must be one of"):
        Verdict("x", "probably", "")


def test_within_prompt_auc_matches_the_pooled_ratio():
    rng = np.random.default_rng(0)
    n = 50
    prompts = np.repeat(np.arange(n), 4)
    same = np.tile([True, False, True, False], n)
    scores = rng.normal(size=4 * n) + 1.5 * same
    auc, (lo, hi) = within_prompt_auc_ci(scores, same, prompts, prompts)
    wins = pairs = 0.0
    for p in range(n):
        s, y = scores[prompts == p], same[prompts == p]
        d = s[y][:, None] - s[~y][None, :]
        wins, pairs = wins + (d > 0).sum() + 0.5 * (d == 0).sum(), pairs + d.size
    assert auc == pytest.approx(wins / pairs)
    assert lo < auc < hi and lo > 0.5
