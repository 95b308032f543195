"""Verdicts: the one rule, every state of every claim, and calibration of every rule by simulation.

The calibration tests feed each verdict rule 1,000 simulated data sets drawn at the
report's sample sizes (200 prompts of 4 demonstrations, 20 random head sets, 29
components, 5 reweighting runs): with no effect it may say *holds* in at most 5% of them
(plus Monte Carlo error), with an effect of twice its margin in at least 80%, and with
an effect of zero it says *contradicted* only where the interval excludes the margin.
"""

import math

import numpy as np
import pytest

from icl_heads.stats import bootstrap_mean
from icl_heads.verdict_rules import (
    CLAIMS,
    CONTRADICTED,
    HOLDS,
    INCONCLUSIVE,
    MARGINS,
    NOT_APPLICABLE,
    Verdict,
    at_chance,
    bias_verdict,
    components_verdict,
    correction_verdict,
    faithfulness_verdict,
    heads_verdict,
    icl_verdict,
    judge,
    legend,
    ov_verdict,
    qk_verdict,
    reweighting_verdict,
)
from icl_heads.verdicts import prompt_wins

N_SIM = 1000
N_PROMPTS, SHOTS, N_SETS, N_COMPONENTS, N_RUNS = 200, 4, 20, 29, 5
#: 5% plus three Monte Carlo standard errors of a 5% rate over 1,000 data sets
MAX_FALSE_HOLDS = 0.05 + 3 * math.sqrt(0.05 * 0.95 / N_SIM)


def test_judge_reads_only_the_interval_and_the_margin():
    assert judge(0.01, 0.3, 0.1) == HOLDS
    assert judge(-0.05, 0.08, 0.1) == CONTRADICTED  # excludes the margin, though it includes 0
    assert judge(-0.3, -0.2, 0.1) == CONTRADICTED  # opposite direction
    assert judge(-0.05, 0.15, 0.1) == INCONCLUSIVE
    assert list(judge(np.array([0.1, -1.0]), np.array([0.2, 0.5]), 0.1)) == [HOLDS, INCONCLUSIVE]
    with pytest.raises(ValueError, match="margin must be positive"):
        judge(0, 1, 0)


def test_an_exact_zero_with_an_interval_crossing_zero_is_not_a_failure():
    # the old rule called an estimate of exactly 0 "does not hold"
    assert bias_verdict("majority", 0.0, (-0.08, 0.08), "excess").state == INCONCLUSIVE
    assert bias_verdict("majority", 0.0, (-0.02, 0.02), "excess").state == CONTRADICTED


def test_legend_names_every_state_and_every_margin():
    text = "\n".join(legend())
    for state in (HOLDS, CONTRADICTED, INCONCLUSIVE, NOT_APPLICABLE):
        assert f"{state}:" in text
    for key in MARGINS:
        assert f"margin of '{CLAIMS[key]}'" in text


def test_faithfulness_states_and_figure():
    ok = faithfulness_verdict(3.2e-7, 1e-4, "final norm")
    assert ok.state == HOLDS and "3.2e-07" in ok.detail and "final norm" in ok.detail
    assert faithfulness_verdict(2e-3, 1e-4, "final norm").state == CONTRADICTED


def test_icl_accuracy_of_one_has_a_wilson_interval():
    v = icl_verdict(200, 200, 0.5, shots=4)
    assert v.state == HOLDS and "4-shot" in v.detail
    assert 0.97 < v.low + 0.5 < 0.99 and v.high + 0.5 == pytest.approx(1.0)
    assert icl_verdict(96, 200, 0.5).state == CONTRADICTED  # 0.48: excludes chance + 0.1


def test_heads_states():
    rand = np.full(N_SETS, 0.95) + np.linspace(-0.02, 0.02, N_SETS)
    assert heads_verdict(["L1H1"], 1.0, 100, 200, rand).state == HOLDS
    assert heads_verdict(["L1H1"], 1.0, 200, 200, rand).state == CONTRADICTED
    assert heads_verdict(["L1H1"], 1.0, 27, 30, rand).state == INCONCLUSIVE


def test_ov_compares_label_slots_with_their_controls():
    assert ov_verdict(0.95, 800, 0.46, 800, 2).state == HOLDS
    # a head promoting the demonstration's label from anywhere: controls as high as the label slots
    promoter = ov_verdict(1.0, 400, 1.0, 400, 2)
    assert promoter.state == CONTRADICTED and "control positions 1.000" in promoter.detail
    assert ov_verdict(0.56, 20, 0.5, 20, 2).state == INCONCLUSIVE
    assert "chance 0.333" in ov_verdict(0.9, 50, 0.3, 50, 3).detail


def test_qk_states():
    pairs = np.full(N_PROMPTS, 4.0)
    assert qk_verdict(np.full(N_PROMPTS, 3.6), pairs, ["L1H1"]).state == HOLDS
    assert qk_verdict(np.full(N_PROMPTS, 2.0), pairs, ["L1H1"]).state == CONTRADICTED
    wins = np.random.default_rng(0).binomial(4, 0.53, size=30).astype(float)
    assert qk_verdict(wins, np.full(30, 4.0), ["L1H1"]).state == INCONCLUSIVE


def test_correction_states():
    kw = dict(before=0.2, after=0.1)
    assert correction_verdict("majority", "m", HOLDS, 50.0, (20.0, 80.0), **kw).state == HOLDS
    assert correction_verdict("majority", "m", HOLDS, -10.0, (-30.0, 5.0), **kw).state == CONTRADICTED
    ns = correction_verdict("recency", "r", HOLDS, 51.0, (-5.0, 100.0), at_grid_edge=True, grid_size=5, **kw)
    assert ns.state == INCONCLUSIVE and "51%" in ns.detail and "largest searched" in ns.detail
    assert "chosen from 5 values on separate tuning prompts" in ns.detail
    assert correction_verdict("recency", "r", INCONCLUSIVE, 60.0, (30.0, 90.0), **kw).state == NOT_APPLICABLE
    skipped = correction_verdict("recency", None, NOT_APPLICABLE, skipped="no bias to reduce")
    assert skipped.state == NOT_APPLICABLE and "no bias to reduce" in skipped.detail


def test_components_equal_to_the_whole_is_not_a_win_and_says_bonferroni():
    rng = np.random.default_rng(0)
    full = rng.random(N_PROMPTS) < 0.855
    same = np.repeat(full[:, None], N_COMPONENTS, 1)
    v = components_verdict([f"c{i}" for i in range(N_COMPONENTS)], same, full)
    assert v.state != HOLDS and v.low < 0 < v.high and "Bonferroni" in v.detail
    better = same.copy()
    better[:, 3] = rng.random(N_PROMPTS) < 0.99
    assert components_verdict([f"c{i}" for i in range(N_COMPONENTS)], better, full).state == HOLDS


def test_reweighting_uses_a_t_interval_over_runs_and_leaves_baselines_at_chance_out():
    acc = {
        "reweighting": [0.90, 0.91, 0.89, 0.92, 0.90],
        "ICL-24": [0.50, 0.51, 0.49, 0.50, 0.50],
        "ICL-4": [0.80, 0.79, 0.81, 0.80, 0.82],
        "Calib+": [0.84, 0.85, 0.83, 0.86, 0.84],
    }
    v = reweighting_verdict(acc, chance=0.5)
    assert v.state == HOLDS and "Calib+" in v.detail and "ICL-24 at chance" in v.detail and "4 df" in v.detail
    # the three runs: gains +0.01, +0.05, +0.10 over Calib+ give a t interval reaching below zero
    three = {"reweighting": [0.86, 0.90, 0.95], "Calib+": [0.85, 0.85, 0.85]}
    v3 = reweighting_verdict(three, chance=0.5)
    assert v3.state == INCONCLUSIVE and v3.low < -0.05 and v3.high > 0.15
    at = {"reweighting": [0.8, 0.8, 0.8], "ICL-24": [0.52, 0.52, 0.52]}
    assert reweighting_verdict(at, 0.5).state == NOT_APPLICABLE


def test_at_chance_uses_the_interval():
    assert at_chance([0.4, 0.8, 0.6], 0.5)  # interval reaches chance
    assert not at_chance([0.60, 0.61, 0.59], 0.5)


def test_verdict_refuses_an_unknown_state():
    with pytest.raises(ValueError, match="state must be one of"):
        Verdict("x", "probably", "")


def test_prompt_wins_match_the_pooled_ratio():
    rng = np.random.default_rng(0)
    n = 50
    prompts = np.repeat(np.arange(n), 4)
    same = np.tile([True, False, True, False], n)
    scores = rng.normal(size=4 * n) + 1.5 * same
    wins, pairs = prompt_wins(scores, same, prompts, prompts)
    assert wins.shape == pairs.shape == (n,) and (pairs == 4).all()
    v = qk_verdict(wins, pairs, ["L0H0"])
    assert v.effect + 0.5 == pytest.approx(wins.sum() / pairs.sum()) and v.low > 0


# ---- calibration by simulation ----------------------------------------------------------------------------


def _rates(states) -> dict[str, float]:
    states = np.asarray(states)
    return {s: float((states == s).mean()) for s in (HOLDS, CONTRADICTED, INCONCLUSIVE)}


def _check(name, null_states, effect_states, null_verdicts=None):
    null, effect = _rates(null_states), _rates(effect_states)
    print(f"\n{name}: no effect {null}; effect 2x margin {effect}")
    assert null[HOLDS] <= MAX_FALSE_HOLDS, (name, null)
    assert effect[HOLDS] >= 0.80, (name, effect)
    if null_verdicts is not None:  # contradicted exactly where the interval excludes the margin
        for v in null_verdicts:
            assert (v.state == CONTRADICTED) == (v.high < v.margin and v.low <= 0)


def test_calibration_icl():
    rng = np.random.default_rng(1)
    m = MARGINS["icl"]
    null = [icl_verdict(int(k), N_PROMPTS, 0.5) for k in rng.binomial(N_PROMPTS, 0.5, N_SIM)]
    eff = [icl_verdict(int(k), N_PROMPTS, 0.5).state for k in rng.binomial(N_PROMPTS, 0.5 + 2 * m, N_SIM)]
    _check("icl", [v.state for v in null], eff, null)


def test_calibration_heads():
    rng = np.random.default_rng(2)
    m = MARGINS["heads"]

    def draw(drop):
        set_means = np.clip(rng.normal(0.85, 0.08, (N_SIM, N_SETS)), 0, 1)  # spread between random sets
        sets = rng.binomial(N_PROMPTS, set_means) / N_PROMPTS
        found = rng.binomial(N_PROMPTS, np.clip(set_means.mean(1) - drop, 0, 1))
        return [heads_verdict(["L1H1"], 0.95, int(f), N_PROMPTS, s) for f, s in zip(found, sets, strict=True)]

    null = draw(0.0)
    _check("heads", [v.state for v in null], [v.state for v in draw(2 * m)], null)


def test_calibration_ov():
    rng = np.random.default_rng(3)
    m, n = MARGINS["ov"], N_PROMPTS * SHOTS

    def draw(label_p, control_p):
        lab, ctl = rng.binomial(n, label_p, N_SIM) / n, rng.binomial(n, control_p, N_SIM) / n
        return [ov_verdict(a, n, b, n, 2) for a, b in zip(lab, ctl, strict=True)]

    # no effect: the label slots promote their label no more than the controls (a promoter from anywhere),
    # or no more than chance
    null = draw(0.9, 0.9) + draw(0.5, 0.3)
    eff = draw(0.46 + 2 * m, 0.46)
    states = [v.state for v in null]
    _check("ov (vs control)", states[:N_SIM], [v.state for v in eff], null[:N_SIM])
    _check("ov (vs chance)", states[N_SIM:], [v.state for v in eff], null[N_SIM:])


def _qk_sims(auc, rng):
    # each prompt: SHOTS label positions, half same-class; 4 pairs, each won with probability auc
    wins = rng.binomial(4, auc, (N_SIM, N_PROMPTS)).astype(float)
    return [qk_verdict(w, np.full(N_PROMPTS, 4.0), ["L1H1"], seed=i) for i, w in enumerate(wins)]


def test_calibration_qk():
    rng = np.random.default_rng(4)
    null = _qk_sims(0.5, rng)
    _check("qk", [v.state for v in null], [v.state for v in _qk_sims(0.5 + 2 * MARGINS["qk"], rng)], null)


@pytest.mark.parametrize("kind", ["majority", "recency"])
def test_calibration_bias(kind):
    rng = np.random.default_rng(5)
    m = MARGINS[kind]

    def draw(effect):
        # per-prompt measures as the bias analyses bootstrap them: majority's excess per prompt (in [-1, 1]),
        # recency's block gap per prompt (accuracy last minus first: -1, 0 or 1)
        if kind == "majority":
            x = np.clip(rng.normal(effect, 0.15, (N_SIM, N_PROMPTS)), -1, 1)
        else:
            p_last, p_first = 0.7 + effect / 2, 0.7 - effect / 2
            x = (rng.random((N_SIM, N_PROMPTS)) < p_last).astype(float) - (rng.random((N_SIM, N_PROMPTS)) < p_first)
        out = []
        for i, row in enumerate(x):
            e = bootstrap_mean(row, seed=i)
            out.append(bias_verdict(kind, e.value, e.ci, "measure"))
        return out

    null = draw(0.0)
    _check(kind, [v.state for v in null], [v.state for v in draw(2 * m)], null)


def test_calibration_correction():
    rng = np.random.default_rng(6)
    m = MARGINS["majority_correction"]

    def draw(reduction):
        # per-prompt bias before, and after shrunk by the reduction (paired prompts); relative reduction in %
        before = rng.normal(0.21, 0.15, (N_SIM, N_PROMPTS))
        after = before * (1 - reduction / 100) + rng.normal(0, 0.05, (N_SIM, N_PROMPTS))
        out = []
        for i in range(N_SIM):
            idx = np.random.default_rng(i).integers(0, N_PROMPTS, (1000, N_PROMPTS))
            b, a = before[i][idx].mean(1), after[i][idx].mean(1)
            red = 100 * (1 - np.abs(a) / np.abs(b))
            lo, hi = np.quantile(red, [0.025, 0.975])
            value = 100 * (1 - abs(after[i].mean()) / abs(before[i].mean()))
            out.append(correction_verdict("majority", "count", HOLDS, value, (lo, hi), before=0.2, after=0.1))
        return out

    null = draw(0.0)
    _check("majority correction", [v.state for v in null], [v.state for v in draw(2 * m)], null)


def test_calibration_components():
    rng = np.random.default_rng(7)
    m = MARGINS["decomposition"]
    names = [f"c{i}" for i in range(N_COMPONENTS)]

    def draw(best_gain):
        out = []
        for _ in range(N_SIM):
            full = rng.random(N_PROMPTS) < 0.7
            comp = rng.random((N_PROMPTS, N_COMPONENTS)) < rng.uniform(0.4, 0.7, N_COMPONENTS)
            comp[:, 0] = rng.random(N_PROMPTS) < 0.7 + best_gain
            out.append(components_verdict(names, comp, full))
        return out

    null = draw(0.0)
    _check("components (best of 29)", [v.state for v in null], [v.state for v in draw(2 * m)], null)


def test_calibration_reweighting():
    rng = np.random.default_rng(8)
    m = MARGINS["reweighting"]
    n_test = 100

    def draw(gain):
        out = []
        for _ in range(N_SIM):
            run_level = np.clip(
                rng.normal(0.85, 0.04, N_RUNS), 0, 1
            )  # the runs differ (seeds: demonstrations, training data)
            base = rng.binomial(n_test, run_level) / n_test
            mine = rng.binomial(n_test, np.clip(run_level + gain + rng.normal(0, 0.03, N_RUNS), 0, 1)) / n_test
            out.append(reweighting_verdict({"reweighting": mine, "Calib+": base}, chance=0.5))
        return out

    null = draw(0.0)
    _check("reweighting (t, 4 df)", [v.state for v in null], [v.state for v in draw(2 * m)], null)
