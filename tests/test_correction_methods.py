"""One correction engine (correct_bias) with a registry of methods."""

from __future__ import annotations

import pytest

import icl_heads as ih
from icl_heads.correction_methods import (
    CORRECTION_METHODS,
    CorrectionMethod,
    correction_method,
    register_correction_method,
    unregister_correction_method,
)
from icl_heads.corrections import count_normalisation
from icl_heads.debias import correct_bias, correct_majority_bias
from icl_heads.testing import majority_copier_gpt2_dir, toy_task

KW = dict(heads=[(1, 0)], n=12, tune_n=8, seed=0, tune_seed=5, n_boot=100)


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    return ih.load_model(majority_copier_gpt2_dir(tmp_path_factory.mktemp("copier") / "m"))


def test_the_four_methods_are_registered_with_a_no_op_value():
    assert {b: sorted(m) for b, m in CORRECTION_METHODS.items()} == {
        "majority": ["count", "ov"],
        "recency": ["prior", "unrotated"],
    }
    assert correction_method("majority", "ov").parameter == "a_c" and correction_method("recency", "prior").grid[0] == 0


def test_named_wrapper_is_the_engine_with_its_bias_fixed(copier):
    task = toy_task()
    wrapped = correct_majority_bias(copier, task, method="count", grid=[0.0, 0.5, 1.0], **KW)
    engine = correct_bias(copier, task, bias="majority", grid=[0.0, 0.5, 1.0], **KW)  # "count" is the default
    assert engine.method == wrapped.method == "count" and engine.value == wrapped.value == 1.0
    assert engine.df.equals(wrapped.df) and engine.tuning.equals(wrapped.tuning)
    assert engine.reduction.to_dict() == wrapped.reduction.to_dict()


def test_a_registered_method_is_tuned_and_measured_like_the_built_in_ones(copier):
    half = CorrectionMethod(
        bias="majority",
        name="count_half",
        parameter="double_strength",
        grid=(0.0, 2.0),
        prepare=lambda s: lambda v: count_normalisation(s.model, s.heads, v / 2, read_at=s.read_at),
        description="count normalisation at half the given strength",
    )
    register_correction_method(half)
    try:
        with pytest.raises(ValueError, match="registered already"):
            register_correction_method(half)
        task = toy_task()
        mine = correct_bias(copier, task, bias="majority", method="count_half", **KW)
        count = correct_bias(copier, task, bias="majority", method="count", grid=[0.0, 1.0], **KW)
        assert mine.method == "count_half" and mine.parameter == "double_strength" and mine.value == 2.0
        assert mine.df.set_index("metric").after.equals(count.df.set_index("metric").after)  # same correction
    finally:
        assert unregister_correction_method("majority", "count_half") is half
    assert "count_half" not in CORRECTION_METHODS["majority"]


def test_bad_choices_name_the_valid_ones(copier):
    task = toy_task()
    with pytest.raises(ValueError, match=r"bias must be one of \['majority', 'recency'\]"):
        correct_bias(copier, task, bias="gender", **KW)
    with pytest.raises(
        ValueError, match=r"unknown method 'nope' for the recency bias; choose from \['prior', 'unrotated'\]"
    ):
        correct_bias(copier, task, bias="recency", method="nope", **KW)
    with pytest.raises(ValueError, match="skews applies to the majority bias only"):
        correct_bias(copier, task, bias="recency", skews=[(3, 1)], **KW)
    with pytest.raises(ValueError, match="bias must be one of"):  # the bias is checked before its options
        correct_bias(copier, task, bias="foo", skews=[(3, 1)], **KW)
    with pytest.raises(ValueError, match="grid is empty"):
        correct_bias(copier, task, bias="majority", grid=(), **KW)
    with pytest.raises(ValueError, match="draws the prompts the 'prior' method fits on"):
        correct_bias(copier, task, bias="recency", **{**KW, "seed": 6})
    with pytest.raises(ValueError, match="must hold 0.0"):
        CorrectionMethod("majority", "x", "s", (1.0, 2.0), lambda s: lambda v: ())


def test_a_grid_without_the_no_op_value_is_flagged(copier):
    res = correct_bias(copier, toy_task(), bias="majority", grid=[0.5, 1.0], **KW)
    assert any("lacks strength=0 (no correction)" in w for w in res.warnings)
    assert not any(
        "lacks" in w for w in correct_bias(copier, toy_task(), bias="majority", grid=[0, 1.0], **KW).warnings
    )


def test_a_method_that_builds_no_intervention_is_named_as_such(copier):
    junk = CorrectionMethod("majority", "junk", "x", (0.0, 1.0), lambda s: lambda v: 3, "returns a number")
    register_correction_method(junk)
    try:
        with pytest.raises(TypeError, match=r"built for the value 1 is a int, not an intervention"):
            correct_bias(copier, toy_task(), bias="majority", method="junk", **KW)
    finally:
        unregister_correction_method("majority", "junk")
