"""UniBias: label-logit projections of heads and FFN neurons, the criteria, the mask, and a planted biased head."""

from __future__ import annotations

import math

import pytest
import torch

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.accuracy import predict
from icl_heads.options import RunOptions
from icl_heads.testing import tiny_gpt2_dir, toy_task
from icl_heads.unibias import (
    ComponentMask,
    UniBiasGrid,
    component_label_logits,
    fit_unibias,
    label_imbalance,
    unibias_criteria,
)
from icl_heads.validation import validation_task


def _hand_logits(model, prompts):
    """Every head's and neuron's label logits at the final position, one prompt at a time from a full cache."""
    access = ModelAccess(model)
    tp = access.tokenize(prompts)
    W_UL = access.W_U[:, list(tp.label_token_ids)].float()
    heads, neurons = [], []
    for ids in tp.tokens:
        _, cache = model.run_with_cache(torch.tensor([ids]))
        scale = cache["ln_final.hook_scale"][0, -1]
        hs, ns = [], []
        for layer in range(access.n_layers):
            W_O, W_out = model.blocks[layer].attn.W_O.detach(), model.blocks[layer].mlp.W_out.detach()
            for head in range(access.n_heads):
                out = cache[f"blocks.{layer}.attn.hook_z"][0, -1, head] @ W_O[head]
                hs.append(access.final_norm(out, scale) @ W_UL)
            act = cache[f"blocks.{layer}.mlp.hook_post"][0, -1]
            for n in range(W_out.shape[0]):
                ns.append(access.final_norm(act[n] * W_out[n], scale) @ W_UL)
        heads.append(torch.stack(hs))
        neurons.append(torch.stack(ns))
    return torch.stack(heads), torch.stack(neurons)


def test_projections_equal_a_hand_computation(any_model, task):
    prompts = task.prompts(5, 2, seed=3)
    g_heads, g_neurons, full = component_label_logits(any_model, prompts, options=RunOptions(batch_size=3))
    want_heads, want_neurons = _hand_logits(any_model, prompts)
    torch.testing.assert_close(g_heads, want_heads, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_neurons, want_neurons, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, predict(any_model, prompts).label_logits, atol=1e-5, rtol=1e-5)


def test_criteria_equal_their_definitions():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(7, 5, 3, generator=gen)
    g[:, 1] = torch.tensor([2.0, -1.0, 0.5])  # the same push on every prompt: bias 1, cv 0
    g[:, 2] = 0.0  # writes nothing
    full = torch.randn(7, 3, generator=gen)
    got = unibias_criteria(g, full)
    scale = sum(sum(abs(full[p, c] - full[p].mean()) for c in range(3)) for p in range(7)) / 7
    for j in range(5):
        d = [[float(g[p, j, c] - g[p, j].mean()) for c in range(3)] for p in range(7)]
        mag = sum(sum(abs(v) for v in row) for row in d) / 7
        means = [sum(d[p][c] for p in range(7)) / 7 for c in range(3)]
        sds = [math.sqrt(sum((d[p][c] - means[c]) ** 2 for p in range(7)) / 6) for c in range(3)]
        pull = sum(abs(m) for m in means)
        want = [mag / float(scale), pull / mag if mag else 0.0, sum(sds) / pull if pull else math.inf]
        torch.testing.assert_close(got[j], torch.tensor(want), atol=1e-5, rtol=1e-5)
    assert got[1, 1] == pytest.approx(1.0) and got[1, 2] == pytest.approx(0.0, abs=1e-6)
    assert got[2, 1] == 0 and math.isinf(got[2, 2])


def test_label_imbalance_is_zero_when_mean_probabilities_match_the_gold_frequencies():
    golds = torch.tensor([0, 0, 0, 1])
    probs = torch.tensor([[0.6, 0.2], [0.6, 0.2], [0.6, 0.2], [0.6, 0.2]])  # shares 0.75 / 0.25
    assert label_imbalance(probs, golds)[0] == pytest.approx(0.0, abs=1e-7)
    imbalance, mass = label_imbalance(torch.tensor([[0.6, 0.2]] * 4), torch.tensor([0, 1, 0, 1]))
    assert imbalance == pytest.approx((math.log(2 * 0.75) + abs(math.log(2 * 0.25))) / 2) and mass == pytest.approx(0.8)


def test_the_mask_equals_a_hand_run_with_those_components_zeroed(any_model, task):
    access = ModelAccess(any_model)
    last = access.n_layers - 1
    mask = ComponentMask(heads=((0, 1), (last, access.n_heads - 1)), neurons=((0, 3), (last, 5), (last, 7)))
    prompts = task.prompts(4, 2, seed=5)
    tp = access.tokenize(prompts)
    batch = next(iter(access.batches(tp, 4, "left")))
    got, _ = access.run(batch, hooks=mask)
    clean, _ = access.run(batch)
    for b, ids in enumerate(tp.tokens):

        def zero_heads(z, hook, heads=()):
            z = z.clone()
            z[0, -1, list(heads)] = 0
            return z

        def zero_neurons(a, hook, ns=()):
            a = a.clone()
            a[0, -1, list(ns)] = 0
            return a

        hooks = [
            ("blocks.0.attn.hook_z", lambda z, hook: zero_heads(z, hook, [1])),
            (f"blocks.{last}.attn.hook_z", lambda z, hook: zero_heads(z, hook, [access.n_heads - 1])),
            ("blocks.0.mlp.hook_post", lambda a, hook: zero_neurons(a, hook, [3])),
            (f"blocks.{last}.mlp.hook_post", lambda a, hook: zero_neurons(a, hook, [5, 7])),
        ]
        with torch.inference_mode():
            want = any_model.run_with_hooks(torch.tensor([ids]), fwd_hooks=hooks)[0, -1].float()
        torch.testing.assert_close(got[b], want, atol=1e-5, rtol=1e-5)
        assert (got[b] - clean[b]).abs().max() > 1e-4  # the mask changed something


STRENGTH, NEURON = 3.0, 17


@pytest.fixture(scope="module")
def foo_pusher(tmp_path_factory):
    """A tiny random GPT-2 whose FFN neuron L1N17 writes the same foo-minus-bar vector on every prompt.

    Its input weights are zero and its input bias large, so its activation is the same
    whatever the prompt; its value vector (row of W_out) is the unembedding's foo-minus-bar direction.
    """
    from transformers import GPT2LMHeadModel

    path = tiny_gpt2_dir(tmp_path_factory.mktemp("pusher") / "m")
    hf = GPT2LMHeadModel.from_pretrained(path)
    ids = ModelAccess(ih.load_model(path)).tokenize(toy_task().prompts(1, 1)).label_token_ids
    with torch.no_grad():
        mlp = hf.transformer.h[1].mlp
        mlp.c_fc.weight[:, NEURON] = 0
        mlp.c_fc.bias[NEURON] = 3.0
        u = hf.lm_head.weight[ids[0]] - hf.lm_head.weight[ids[1]]
        mlp.c_proj.weight[NEURON] = STRENGTH * u / u.norm()
    hf.save_pretrained(path)
    return ih.load_model(path)


def test_unibias_finds_and_masks_a_planted_label_biased_neuron(foo_pusher):
    task = toy_task()
    # the random model gives its label words 0.4% of the probability, a fifth of it from the planted
    # neuron: the default guard (keep 95% of the label mass, for trained models) would refuse the mask
    fit = fit_unibias(foo_pusher, task, n_tune=32, shots=2, tune_seed=1, grid=UniBiasGrid(min_label_mass=0.5))
    assert (1, NEURON) in fit.intervention.neurons
    row = fit.components.set_index("component").loc[f"L1N{NEURON}"]
    assert row.bias > 0.99 and row.cv < 0.1
    chosen = fit.candidates[fit.candidates.chosen].iloc[0]
    assert chosen.imbalance < fit.candidates.imbalance.iloc[0]  # better than no change, on the tuning prompts
    assert fit.passes == 1 + len(fit.candidates) and fit.n_tune == 32
    # on held-out prompts the mean label probabilities come much closer to the gold frequencies
    test = task.prompts(60, 2, seed=9)
    before, after = predict(foo_pusher, test), predict(foo_pusher, test, hooks=fit.intervention)
    gap = [label_imbalance(p.label_logits.softmax(-1), test.golds)[0] for p in (before, after)]
    assert before.predicted.float().mean() < 0.05 < after.predicted.float().mean()  # the share of "bar"
    assert gap[1] < 0.5 * gap[0], gap


def test_unibias_misses_the_planted_majority_and_recency_biases():
    """The planted in-context head pushes whichever label its counts favour, so its push is not consistent."""
    model, task = ih.load_model("validation:majority"), validation_task("majority")
    fit = fit_unibias(model, task, n_tune=32, shots=4, tune_seed=1)
    row = fit.components.set_index("component").loc["L1H17"]
    assert row.relatedness == pytest.approx(1.0, abs=1e-3) and row.bias < 0.1
    assert fit.intervention == ComponentMask() and fit.thresholds is None
    before = ih.majority_bias(model, task, n=40, seed=5)
    after = ih.majority_bias(model, task, n=40, seed=5, hooks=fit.intervention)
    assert before.bias.value > 0.1 and after.bias.value == before.bias.value
    # nor the positional prior of validation:recency: no component pushes one label on every prompt
    recency = fit_unibias(ih.load_model("validation:recency"), validation_task("recency"), n_tune=32, tune_seed=1)
    assert recency.intervention == ComponentMask()


def test_bad_input_is_refused_before_model_work(models, task):
    model = models["gpt2"]
    with pytest.raises(TypeError, match="ICLTask"):
        fit_unibias(model, "task")
    with pytest.raises(ValueError, match="n_tune"):
        fit_unibias(model, task, n_tune=1)
    with pytest.raises(ValueError, match="at least 2"):
        fit_unibias(model, task, prompts=task.prompts(1, 2))
    with pytest.raises(TypeError, match="ICLPrompts"):
        fit_unibias(model, task, prompts=task.prompts(4, 2).texts())
    with pytest.raises(ValueError, match="another task"):
        fit_unibias(model, task, prompts=toy_task(seed=3).prompts(4, 2))
    with pytest.raises(ValueError, match="bias"):
        UniBiasGrid(bias=(0.5, 1.5))
    with pytest.raises(ValueError, match="empty"):
        UniBiasGrid(cv=())
    with pytest.raises(TypeError, match="UniBiasGrid"):
        fit_unibias(model, task, grid={"bias": (0.5,)})
