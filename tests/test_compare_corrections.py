"""compare_corrections: bad input refused before model work, disjoint prompts, and the planted biases recovered."""

import pytest

import icl_heads as ih
from icl_heads.bias import majority_prompts
from icl_heads.compare_corrections import (
    COMPARED_METHODS,
    ComparedMethod,
    CorrectionComparison,
    Fitted,
    check_disjoint,
    compare_corrections,
    register_compared_method,
)
from icl_heads.engine import count_cost
from icl_heads.order_bias import recency_block_gap, recency_prompts
from icl_heads.validation import ground_truth, validation_task


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"methods": ["nope"]}, "unknown methods.*choose from.*batch"),
        ({"methods": []}, "no methods to compare.*choose from"),
        ({"n": 5}, "n >= 10"),
        ({"tune_n": 3}, "tune_n >= 10"),
        ({"seed": 1, "tune_seed": 1}, "draws tuning prompts"),
        ({"seed": 2, "tune_seed": 1}, "draws tuning prompts"),
        ({"heads": None}, "heads=None"),
        ({"shots": 3}, "multiple of the 2 classes"),
    ],
)
def test_bad_input_raises_before_any_model_work(models, task, kw, match):
    with count_cost() as ledger, pytest.raises(ValueError, match=match):
        compare_corrections(models["gpt2"], task, **kw)
    assert ledger.total.passes == 0


def test_a_tuning_prompt_that_is_also_a_test_prompt_is_refused(task):
    prompts = task.prompts(10, 4, seed=0)
    with pytest.raises(ValueError, match="also test prompts"):
        check_disjoint(prompts, [task.prompts(10, 4, seed=5), prompts[3:4]])
    check_disjoint(prompts, [task.prompts(10, 4, seed=5)])


def test_registering_a_method_twice_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        register_compared_method(COMPARED_METHODS["batch"])
    with pytest.raises(ValueError, match="family"):
        ComparedMethod("x", "magic", lambda s: Fitted(None, 0))


@pytest.fixture(scope="module")
def majority_run():
    model = ih.load_model("validation:majority")
    task = validation_task("majority")
    with count_cost() as ledger:
        result = compare_corrections(
            model, task, methods=["batch", "majority:count", "calib_plus"], n=60, tune_n=40, n_boot=200
        )
    return result, ledger, task


@pytest.mark.slow
def test_the_table_reports_the_planted_majority_bias_and_count_normalisation_removes_it(majority_run):
    result, ledger, _ = majority_run
    assert isinstance(result, CorrectionComparison)
    truth = ground_truth("majority").majority_bias
    base = result.baseline.set_index("metric")
    assert base.ci_low["majority"] <= truth <= base.ci_high["majority"]
    rows = result.df.set_index("method")
    count = rows.loc["majority:count"]
    assert count.majority_reduction_low > 50  # the correction that inverts the planted mechanism removes most of it
    assert count.imbalanced_accuracy_change_low > 0 and count.labelled == 40
    # Batch Calibration adds no pass: no fit, no pass on the test prompts, nothing in its ledger section
    batch = rows.loc["batch"]
    assert batch.fit_passes == batch.test_prompt_passes == batch.extra_passes_per_prompt == batch.labelled == 0
    assert "corrections: batch" not in ledger.sections and ledger.sections["corrections: majority:count"].rows > 0
    assert "no recency bias to reduce" in batch.note  # the majority model has no recency bias: no % is made up


@pytest.mark.slow
def test_the_uncorrected_row_is_what_the_bias_measurements_report(majority_run):
    result, _, task = majority_run
    c, base = result.config, result.baseline.set_index("metric").value
    model = ih.load_model("validation:majority")
    assert base["majority"] == pytest.approx(float(ih.majority_bias(model, task, n=c["n"], seed=c["seed"]).bias))
    gap = recency_block_gap(model, task, shots=c["recency_shots"], n=c["n"], seed=c["seed"], n_random_orders=0)
    assert base["recency"] == pytest.approx(gap)


@pytest.mark.slow
def test_tuning_and_test_prompts_are_disjoint(majority_run):
    result, _, task = majority_run
    c = result.config
    assert c["seed"] not in (c["tune_seed"], c["tune_seed"] + 1)
    tune = set(task.prompts(c["tune_n"], c["shots"], seed=c["tune_seed"]).prompts)
    tests = [*majority_prompts(task, shots=c["shots"], n=c["n"], seed=c["seed"]).values()]
    tests += [*recency_prompts(task, shots=c["recency_shots"], n=c["n"], seed=c["seed"], n_random_orders=0).values()]
    assert not tune & {p for t in tests for p in t.prompts}


@pytest.mark.slow
def test_the_table_reports_the_planted_recency_bias_and_the_positional_prior_removes_it(tmp_path):
    model = ih.load_model("validation:recency")
    result = compare_corrections(
        model, validation_task("recency"), methods=["recency:prior", "batch"], n=60, tune_n=40, n_boot=200
    )
    base = result.baseline.set_index("metric")
    assert base.ci_low["recency"] <= ground_truth("recency").recency_bias <= base.ci_high["recency"]
    prior = result.df.set_index("method").loc["recency:prior"]
    assert prior.recency_reduction_low > 50 and prior.setting.startswith("strength=")
    back = ih.load_result(result.save(tmp_path / "cmp"))
    assert back.df.equals(result.df) and back.plot().data


def test_batch_calibration_alone_costs_no_pass_and_the_result_round_trips(models, task, tmp_path):
    with count_cost() as ledger:
        result = compare_corrections(models["gpt2"], task, methods=["batch"], n=10, tune_n=10, n_boot=50)
    row = result.df.iloc[0]
    assert row.fit_passes == row.test_prompt_passes == row.extra_passes_per_prompt == 0
    assert set(ledger.sections) == {"total"}  # only the plain passes of the test prompts, nothing under "batch"
    back = ih.load_result(result.save(tmp_path / "cmp"))
    assert back.df.equals(result.df) and back.baseline.equals(result.baseline) and back.plot().data
