"""Every result's headline number with an interval is an Estimate."""

from __future__ import annotations

import pytest

import icl_heads as ih
from icl_heads.organism import HELDOUT_TEMPLATES
from icl_heads.stats import Estimate
from icl_heads.tuning import BiasCorrection


def _check(e, n, method, *, covers=True):
    assert isinstance(e, Estimate), type(e)
    assert e.n == n and e.method == method, (e.n, e.method)
    assert e.low <= e.high
    if covers:
        assert e.low <= e <= e.high, repr(e)


@pytest.fixture(scope="module")
def hard_task():
    return ih.organism_task(max_words=6, noise_rate=0.3, template=HELDOUT_TEMPLATES[1], seed=3)


@pytest.fixture(scope="module")
def majority(organism):
    return ih.majority_bias(organism, ih.organism_task(), shots=4, n=40, n_boot=200)


@pytest.fixture(scope="module")
def recency(organism):
    return ih.recency_bias(organism, ih.organism_task(), shots=4, n=40, n_random_orders=2, n_boot=200)


def test_majority_bias_headlines_are_estimates(majority):
    n = len(majority.golds)
    for name in ("bias", "prob_bias"):
        e = getattr(majority, name)
        _check(e, n, "bootstrap")
    assert float(majority.bias) == float(majority.per_prompt.mean())  # the reported number, exactly


def test_recency_bias_headlines_are_estimates(recency):
    n = len(recency.golds)
    for name in ("last_label_excess", "last_label_pull", "sensitivity"):
        _check(getattr(recency, name), n, "bootstrap")
    # spreads over orders: a bootstrap of a standard deviation need not cover the estimate
    for name in ("bias", "order_std"):
        _check(getattr(recency, name), n, "bootstrap", covers=False)
    assert recency.block_gaps is not None
    _check(recency.block_gap, len(recency.block_gaps), "bootstrap")


def test_correction_reduction_is_a_paired_estimate(organism, hard_task, tmp_path):
    res = ih.correct_majority_bias(
        organism, hard_task, heads=[(1, 1), (1, 7)], n=60, tune_n=30, seed=21, tune_seed=22, grid=[0.0, 3.0],
        skews=[(3, 1)], n_boot=200,
    )  # fmt: skip
    _check(res.reduction, 60, "paired bootstrap")
    _check(res.accuracy_change, 60, "paired bootstrap")
    back = BiasCorrection.load(res.save(tmp_path / "fix"))
    assert back.reduction.to_dict() == res.reduction.to_dict()


def test_accuracy_heads_and_decomposition_estimates(organism):
    task = ih.organism_task()
    prompts = task.prompts(40, 4, seed=0)
    acc = ih.icl_accuracy(organism, prompts)
    _check(acc.accuracy, 40, "wilson")
    _check(acc.strict_accuracy, 40, "wilson")
    assert acc.ci == acc.accuracy.ci
    found = ih.find_in_context_heads(organism, prompts, n_random=6)
    _check(found.accuracy, 40, "wilson")
    _check(found.ablated_accuracy, 40, "wilson")
    _check(found.random_ablated_accuracy, 6, "samples")
    v = found.verification.set_index("condition")
    assert found.ablated_accuracy == v.loc["found heads", "accuracy"]
    held_out = ih.find_in_context_heads(organism, prompts, verify_prompts=task.prompts(24, 4, seed=9), n_random=6)
    _check(held_out.ablated_accuracy, 24, "wilson")  # n counts the prompts the verification ran on
    _check(held_out.accuracy, 24, "wilson")
    dec = ih.decompose(organism, prompts)
    _check(dec.full_accuracy, 40, "wilson")
    assert dec.full_accuracy.low >= 0 and dec.full_accuracy.high <= 1


def test_unverified_heads_have_no_verification_numbers(organism):
    from icl_heads.heads import NotVerifiedError

    found = ih.find_in_context_heads(organism, ih.organism_task().prompts(12, 4, seed=3), verify=False)
    assert not hasattr(found, "ablated_accuracy") and getattr(found, "accuracy", None) is None
    with pytest.raises(ValueError, match="verify=True"):
        found.random_ablated_accuracy  # noqa: B018
    assert issubclass(NotVerifiedError, ValueError)
