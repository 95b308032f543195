"""Anchor re-weighting: the scaled attention against the formula, no change at zero, training, and a planted majority bias."""

from __future__ import annotations

import pytest
import torch

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.accuracy import predict
from icl_heads.anchors import AnchorReweighting, anchor_slots, fit_anchor_reweighting
from icl_heads.engine import count_cost
from icl_heads.options import RunOptions
from icl_heads.order_bias import recency_block_gap
from icl_heads.testing import toy_task
from icl_heads.validation import validation_task


def _mixed_prompts(task):
    """Prompts with 4 and with 3 demonstrations, so slots must count back from the query."""
    a, b = task.prompts(2, 4, seed=3), task.prompts(2, 3, seed=4)
    return ih.ICLPrompts(prompts=a.prompts + b.prompts, task=task)


def test_slots_count_back_from_the_query():
    lp = torch.tensor([[3, 7, 11, 15], [4, 9, 13, -1], [5, -1, -1, -1]])
    assert anchor_slots(lp, 4).tolist() == [[0, 1, 2, 3], [1, 2, 3, -1], [3, -1, -1, -1]]
    with pytest.raises(ValueError, match="at most 3"):
        anchor_slots(lp, 3)


def test_reweighted_attention_equals_the_formula(any_model, task):
    access = ModelAccess(any_model)
    tp = access.tokenize(_mixed_prompts(task))
    batch = next(iter(access.batches(tp, 4, "left")))
    beta = torch.randn(access.n_layers, access.n_heads, 4, generator=torch.Generator().manual_seed(0))
    got: dict[str, torch.Tensor] = {}

    def keep(key):
        def fn(pattern, hook):
            got[key] = pattern.detach().float().clone()

        return fn

    layer = access.n_layers - 1
    name = access.hook(layer, "pattern")
    hooks = [(name, keep("before")), *AnchorReweighting(beta).hooks_for(batch), (name, keep("after"))]
    with torch.inference_mode():
        any_model.run_with_hooks(batch.tokens, attention_mask=batch.attention_mask, fwd_hooks=hooks)
    want = got["before"].clone()
    for b in range(4):
        demos = [p for p in batch.label_positions[b].tolist() if p >= 0]
        for i, p in enumerate(demos):
            slot = 4 - len(demos) + i
            for h in range(access.n_heads):
                want[b, h, batch.final_positions[b], p] *= float(beta[layer, h, slot].exp())
    torch.testing.assert_close(got["after"], want, atol=1e-6, rtol=1e-5)
    assert (got["after"] - got["before"]).abs().max() > 1e-3  # the edit happened, and only where it should


def test_zero_beta_leaves_the_logits_exactly_unchanged(any_model, task):
    access = ModelAccess(any_model)
    batch = next(iter(access.batches(access.tokenize(_mixed_prompts(task)), 4, "left")))
    clean, _ = access.run(batch)
    same, _ = access.run(batch, hooks=AnchorReweighting(torch.zeros(access.n_layers, access.n_heads, 4)))
    torch.testing.assert_close(same, clean, atol=0, rtol=0)


def test_fitting_reduces_the_training_loss_and_counts_its_passes(models, task):
    model = models["llama"]
    prompts = task.prompts(8, 2, seed=2)
    with count_cost() as ledger:
        fit = fit_anchor_reweighting(model, task, prompts=prompts, steps=6, lr=0.1, options=RunOptions(batch_size=5))
    assert fit.passes == 6 and ledger.total.passes == 6 * 2 and fit.n_train == 8  # two batches per step
    # the first loss is the model's own label-word cross-entropy
    logits = predict(model, prompts).label_logits
    assert fit.losses[0] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, prompts.golds)), rel=1e-4)
    assert fit.losses[-1] < fit.losses[0]
    assert fit.intervention.beta.shape == (2, 4, 2) and fit.intervention.beta.abs().max() > 0


def test_anchor_reweighting_removes_a_fixed_layout_majority_bias():
    """With the demonstrations' labels in a fixed layout (the paper's setting), the slot scales can undo the counts.

    validation:majority's in-context head reads label counts on weak queries; with three
    ``foo`` demonstrations then one ``bar``, weak ``bar`` queries are answered ``foo``.
    """
    model, task = ih.load_model("validation:majority"), validation_task("majority")
    layout = dict(shots=4, counts=(3, 1), order=[0, 0, 0, 1])
    fit = fit_anchor_reweighting(model, task, prompts=task.prompts(32, seed=1, **layout), steps=100, lr=0.1)
    test = task.prompts(100, seed=9, **layout)
    rates = []
    for hooks in [(), fit.intervention]:
        p = predict(model, test, hooks=hooks)
        rates.append(float((p.predicted[p.golds == 1] == 0).float().mean()))  # minority gold, majority predicted
    assert rates[0] > 0.2 and rates[1] < 0.05, rates
    assert fit.intervention.beta[1, 17, 3] > fit.intervention.beta[1, 17, :3].max() + 0.5  # the bar slot, up


def test_anchor_reweighting_removes_the_planted_recency_bias():
    """validation:recency's in-context head adds a linear positional prior; the slot scales learn to undo it."""
    model, task = ih.load_model("validation:recency"), validation_task("recency")
    fit = fit_anchor_reweighting(model, task, n_train=32, shots=4, seed=1, steps=50, lr=0.1)
    before = recency_block_gap(model, task, shots=4, n=100, seed=5)
    after = recency_block_gap(model, task, shots=4, n=100, seed=5, hooks=fit.intervention)
    assert before > 0.2 and after < 0.05, (before, after)
    scales = fit.intervention.beta[1, 17]
    assert (scales[:-1] > scales[1:]).all()  # earlier demonstrations weighted up, against the prior


@pytest.mark.slow
def test_anchor_reweighting_misses_the_majority_bias_of_random_layouts():
    """Slot scales cannot tell a majority label from a minority one when the labels' order is random."""
    model, task = ih.load_model("validation:majority"), validation_task("majority")
    fit = fit_anchor_reweighting(model, task, n_train=32, shots=6, seed=1, steps=30, lr=0.1)
    before = ih.majority_bias(model, task, n=100, seed=5)
    after = ih.majority_bias(model, task, n=100, seed=5, hooks=fit.intervention)
    assert before.bias.value > 0.1 and after.bias.value > 0.1 and before.bias.low <= after.bias.value


def test_bad_input_is_refused_before_model_work(models, task):
    model = models["gpt2"]
    with pytest.raises(TypeError, match="ICLTask"):
        fit_anchor_reweighting(model, "task")
    with pytest.raises(ValueError, match="steps"):
        fit_anchor_reweighting(model, task, steps=0)
    with pytest.raises(ValueError, match="lr"):
        fit_anchor_reweighting(model, task, lr=0.0)
    with pytest.raises(TypeError, match="ICLPrompts"):
        fit_anchor_reweighting(model, task, prompts=task.prompts(4, 2).texts())
    with pytest.raises(ValueError, match="another task"):
        fit_anchor_reweighting(model, task, prompts=toy_task(seed=3).prompts(4, 2))
    with pytest.raises(ValueError, match="no demonstrations"):
        fit_anchor_reweighting(model, task, shots=0, steps=1)
    with pytest.raises(ValueError, match=r"\[layer, head, slot\]"):
        AnchorReweighting(torch.zeros(2, 4))
    access = ModelAccess(model)
    batch = next(iter(access.batches(access.tokenize(task.prompts(2, 4)), 2, "left")))
    with pytest.raises(ValueError, match="fitted for at most 2"):
        access.run(batch, hooks=AnchorReweighting(torch.zeros(2, 4, 2)))
