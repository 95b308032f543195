"""The Estimate type and the intervals of icl_heads.stats."""

from __future__ import annotations

import copy
import math
import pickle
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from icl_heads.results import Result
from icl_heads.stats import Estimate, bootstrap, bootstrap_mean, from_samples, wilson


def test_estimate_is_its_value_and_keeps_its_interval():
    e = Estimate(0.25, 0.1, 0.4, n=20, method="bootstrap")
    assert e == 0.25 and e > 0.2 and f"{e:.2f}" == "0.25" and str(e) == "0.25"
    assert type(e + 1) is float and e + 1 == 1.25
    assert e.ci == (0.1, 0.4) and e.n == 20 and e.excludes(0) and not e.excludes(0.3)
    assert pd.Series([e]).dtype == np.float64
    for copied in (pickle.loads(pickle.dumps(e)), copy.deepcopy(e), Estimate.from_dict(e.to_dict())):
        assert copied.to_dict() == e.to_dict()
    with pytest.raises(AttributeError, match="immutable"):
        e.low = 0.0  # type: ignore[misc]
    assert "[0.1, 0.4]" in repr(e)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "guess"}, "method must be one of"), ({"n": -1}, "n must be"), ({"low": 0.5, "high": 0.1}, "above")],
)
def test_estimate_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Estimate(0.3, **kwargs)


def test_point_estimate_has_no_interval():
    e = Estimate(1.5)
    assert math.isnan(e.low) and not e.excludes(0) and "n=0" in repr(e)


def test_bootstrap_mean_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, big = rng.normal(1, 1, 30), rng.normal(1, 1, 3000)
    e_small, e_big = bootstrap_mean(small), bootstrap_mean(big)
    assert e_small.low < small.mean() < e_small.high and e_big.low < 1 < e_big.high
    assert (e_big.high - e_big.low) < (e_small.high - e_small.low) / 5
    assert e_small.n == 30 and e_small.method == "bootstrap" and float(e_small) == pytest.approx(small.mean())
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean([])


def test_paired_bootstrap_resamples_rows_together():
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 200)
    b = a + 0.1  # perfectly paired: the difference never varies
    e = bootstrap(lambda i: float((b[i] - a[i]).mean()), 200, paired=True)
    assert e.method == "paired bootstrap" and e.high - e.low < 1e-9 and e == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not finite"):
        bootstrap(lambda i: float("nan"), 10)


def test_wilson_matches_the_formula_and_stays_in_unit_interval():
    e = wilson(40, 50)
    assert e.n == 50 and e.method == "wilson" and e == 0.8
    assert e.low == pytest.approx(0.6696, abs=1e-4) and e.high == pytest.approx(0.8876, abs=1e-4)
    assert wilson(0, 50).low == 0.0 and wilson(50, 50).high == 1.0 and wilson(0.5 * 50, 50) == 0.5
    with pytest.raises(ValueError, match="at least one trial"):
        wilson(0, 0)


def test_from_samples_takes_central_quantiles():
    e = from_samples(0.5, np.arange(1001) / 1000)
    assert e.low == pytest.approx(0.025) and e.high == pytest.approx(0.975) and e.n == 1001 and e == 0.5


@dataclass(frozen=True)
class _Holder(Result):
    score: Estimate
    nested: dict


def test_results_save_and_load_estimates_typed(tmp_path):
    held = _Holder(score=Estimate(0.3, 0.2, 0.4, 10, "wilson"), nested={"gap": Estimate(1.0, 0.5, 1.5, 7, "bootstrap")})
    back = _Holder.load(held.save(tmp_path / "r"))
    assert isinstance(back.score, Estimate) and back.score.to_dict() == held.score.to_dict()
    assert isinstance(back.nested["gap"], Estimate) and back.nested["gap"].ci == (0.5, 1.5)
    assert "0.3 [0.2, 0.4]" in repr(back)


def test_bootstrap_mean_reports_the_callers_value_and_paired_method():
    x = np.random.default_rng(2).random(50).astype(np.float32)
    plain = bootstrap_mean(x, seed=3)
    given = bootstrap_mean(x, seed=3, value=float(x.mean()), paired=True)
    assert float(given) == float(x.mean()) and given.ci == plain.ci  # same resamples, same interval
    assert given.method == "paired bootstrap" and plain.method == "bootstrap"


def test_from_samples_keeps_float32_quantiles_and_names_its_method():
    s = np.random.default_rng(4).random(21).astype(np.float32)
    e = from_samples(0.5, s, n=7, method="bootstrap")
    assert e.low == float(np.quantile(s, 0.025)) and e.high == float(np.quantile(s, 0.975))
    assert e.n == 7 and e.method == "bootstrap"


@dataclass(frozen=True, repr=False)
class _Summarised(Result):
    score: Estimate

    def summary(self):
        return {"score": self.score, "95% CI": self.score.ci, "other CI": (0.0, 1.0)}


def test_a_result_shows_an_estimate_with_its_interval_once():
    shown = repr(_Summarised(Estimate(0.3, 0.2, 0.4, 10, "wilson")))
    assert shown == "_Summarised(score=0.300 [0.200, 0.400], other CI=[0.000, 1.000])"
    assert "95% CI" not in _Summarised(Estimate(0.3, 0.2, 0.4, 10, "wilson"))._repr_html_()


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0.5, 0.4, float("nan")), {}, "both ends or neither"),
        ((0.5, 0.4, 0.6), {"level": 5.0}, "level must be between 0 and 1"),
        ((0.5, 0.4, 0.6), {"n": True}, "n must be a count"),
        ((0.5, 0.4, 0.6), {"method": "point"}, "point estimate has no interval"),
    ],
)
def test_estimate_refuses_inconsistent_intervals(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Estimate(*args, **kwargs)


def test_estimate_repr_names_a_level_other_than_95():
    assert "level=0.9" in repr(Estimate(0.5, 0.4, 0.6, 10, "bootstrap", level=0.9))
    assert "level" not in repr(Estimate(0.5, 0.4, 0.6, 10, "bootstrap"))


def test_saving_onto_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        _Holder(score=Estimate(0.3), nested={}).save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
