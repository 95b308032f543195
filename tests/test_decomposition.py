import numpy as np
import pytest
import torch

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.accuracy import predict
from icl_heads.components.decompose import decompose
from icl_heads.components.result import Decomposition, component_table
from icl_heads.components.stability import ComponentStability, component_stability
from icl_heads.options import RunOptions
from icl_heads.organism import HELDOUT_TEMPLATES, organism_task
from icl_heads.prompts.designs import balanced_sample, fixed_demo_prompts
from icl_heads.testing import majority_copier_gpt2_dir, tiny_gpt2_dir, toy_task


@pytest.fixture(scope="module")
def biased_gpt2(tmp_path_factory):
    """A tiny GPT-2 whose every bias (attention, MLP, final norm) is random and non-zero."""
    from transformers import GPT2LMHeadModel

    path = tiny_gpt2_dir(tmp_path_factory.mktemp("biased") / "m")
    hf = GPT2LMHeadModel.from_pretrained(path)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(".bias") or "ln_" in name:
                p.add_(0.5 * torch.randn(p.shape, generator=gen))
    hf.save_pretrained(path)
    return ih.load_model(path)


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    return ih.load_model(majority_copier_gpt2_dir(tmp_path_factory.mktemp("copier") / "m"))


def test_components_add_up_to_the_label_logits(any_model, task):
    prompts = task.prompts(12, 4, seed=3)
    dec = decompose(any_model, prompts, options=RunOptions(batch_size=5))
    access = ModelAccess(any_model)
    n_comp = access.n_layers * (access.n_heads + 1) + 2
    assert dec.logits.shape == (12, n_comp, 2)
    assert dec.names[0] == "embed" and dec.names[1] == "L0H0" and dec.names[-1] == "bias"
    assert dec.names[access.n_heads + 1] == "MLP0"
    torch.testing.assert_close(dec.total(), dec.full_logits, atol=1e-4, rtol=0)
    assert dec.reconstruction_error < 1e-4
    # the model's own label logits, from a plain evaluation pass
    torch.testing.assert_close(dec.full_logits, predict(any_model, prompts).label_logits, atol=1e-5, rtol=1e-5)


def test_bias_terms_are_decomposed(biased_gpt2, task):
    dec = decompose(biased_gpt2, task.prompts(10, 3, seed=4))
    torch.testing.assert_close(dec.total(), dec.full_logits, atol=1e-4, rtol=0)
    # the bias component is real here, so leaving it out would break the sum
    assert dec.component("bias").abs().max() > 0.01
    assert (dec.total() - dec.component("bias") - dec.full_logits).abs().max() > 0.01


def test_head_logits_match_a_full_cache(any_model, task):
    """Per-head logits from run_with_cache, independently of the capture path (catches mislabelled heads)."""
    prompts = task.prompts(3, 2, seed=8)
    dec = decompose(any_model, prompts)
    access = ModelAccess(any_model)
    tp = access.tokenize(prompts)
    W_UL = access.W_U[:, list(tp.label_token_ids)].float()
    for i, ids in enumerate(tp.tokens):
        _, cache = any_model.run_with_cache(torch.tensor([ids]))
        scale = cache["ln_final.hook_scale"][0, -1]
        for layer, head in [(0, 1), (access.n_layers - 1, access.n_heads - 1)]:
            o = cache[f"blocks.{layer}.attn.hook_z"][0, -1, head] @ access.W_O(layer)[head]
            want = access.final_norm(o, scale) @ W_UL
            torch.testing.assert_close(dec.component(f"L{layer}H{head}")[i], want, atol=1e-5, rtol=1e-5)
        mlp = access.final_norm(cache[f"blocks.{layer}.hook_mlp_out"][0, -1], scale) @ W_UL
        torch.testing.assert_close(dec.component(f"MLP{layer}")[i], mlp, atol=1e-5, rtol=1e-5)


def test_hand_built_copier_is_the_only_head_with_logits(copier):
    task = toy_task()
    a = task.prompts(10, 4, seed=1, counts=(3, 1), gold=0)
    b = task.prompts(10, 4, seed=2, counts=(1, 3), gold=1)
    dec = decompose(copier, ih.ICLPrompts(prompts=a.prompts + b.prompts, task=task))
    kinds = dec.kinds().set_index("component")
    assert kinds.loc["L1H0", "accuracy"] == 1.0
    heads = kinds[(kinds.type == "head") & (kinds.index != "L1H0")]
    assert len(heads) == 3
    for name in heads.index:
        torch.testing.assert_close(dec.component(name), torch.zeros(20, 2), atol=1e-6, rtol=0)
    # a component that writes nothing predicts one label always: label-biased
    assert heads.label_biased.all()
    assert kinds.loc["MLP0", "kind"] == "label-biased"


def test_decomposition_does_not_depend_on_batch_or_padding(any_model, task, fresh):
    prompts = task.prompts(9, 3, seed=6)
    ref = decompose(any_model, prompts, options=RunOptions(batch_size=9))
    for bs, side in [(1, "right"), (4, "left")]:
        got = decompose(any_model, prompts, options=RunOptions(batch_size=bs, padding_side=side))
        torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_a_wrong_bias_is_caught_by_the_self_check(models, task, monkeypatch):
    model = models["gpt2"]
    monkeypatch.setattr(ModelAccess, "b_O", lambda self, layer: torch.linspace(-1, 1, self.d_model))
    with pytest.raises(RuntimeError, match="add up"):
        decompose(model, task.prompts(4, 2, seed=0))


def test_bad_inputs_raise(models):
    with pytest.raises(TypeError, match="prompts"):
        decompose(models["gpt2"], ["not", "prompts"])
    with pytest.raises(TypeError, match="TransformerLens"):
        decompose(torch.nn.Linear(2, 2), toy_task().prompts(2, 1))


def _hand_made(n: int = 100) -> Decomposition:
    """Components with known behaviour on a 1-layer, 4-head model (7 components)."""
    golds = torch.arange(n) % 2
    onehot = torch.nn.functional.one_hot(golds, 2).float()
    right = onehot - 0.5  # always right
    logits = torch.zeros(n, 7, 2)
    logits[:, 0, 0] = 1.0  # embed: always label 0 -> label-biased
    logits[:, 1] = right  # L0H0: perfect -> good
    logits[:, 2] = -right  # L0H1: always wrong -> bad
    wrong_55 = right.clone()
    wrong_55[:55] *= -1  # L0H2: 45% right -> not significantly below chance at n=100
    logits[:, 3] = wrong_55
    logits[:, 4] = torch.tensor([0.0, 1.0])  # L0H3: label 1 on 92% of prompts
    logits[:8, 4] = torch.tensor([1.0, 0.0])
    full = right.clone()
    full[:20] *= -1  # the whole model: 80% right
    logits[:, 5] = full - logits[:, :5].sum(1)  # MLP0 makes the sum equal the full model
    return Decomposition.from_tensors(logits, full, golds, n_layers=1, n_heads=4, label_words=("foo", "bar"))


def test_kinds_on_hand_made_components():
    dec = _hand_made()
    assert dec.full_accuracy == 0.8
    k = dec.kinds().set_index("component")
    assert k.loc["embed", "kind"] == "label-biased" and k.loc["embed", "top_label_share"] == 1.0
    assert k.loc["L0H0", "kind"] == "good" and k.loc["L0H0", "accuracy"] == 1.0
    assert k.loc["L0H1", "kind"] == "bad" and k.loc["L0H1", "p_below_chance"] < 1e-20
    assert k.loc["L0H2", "accuracy"] == 0.45 and k.loc["L0H2", "kind"] == "other"
    assert 0.1 < k.loc["L0H2", "p_below_chance"] < 0.5
    assert k.loc["L0H3", "top_label_share"] == 0.92 and k.loc["L0H3", "kind"] == "label-biased"
    assert dec.kinds(bias_threshold=0.95).set_index("component").loc["L0H3", "kind"] != "label-biased"
    # Bonferroni over 7 components keeps the clearly bad head bad
    assert dec.kinds(correction="bonferroni").set_index("component").loc["L0H1", "bad"]
    assert (k.ci_low <= k.accuracy).all() and (k.accuracy <= k.ci_high + 1e-12).all()
    summary = dec.kind_summary().set_index("kind")
    assert summary.loc["good", "n"] == 1 and summary.loc["bad", "n"] == 1
    assert summary.n.sum() == 7
    with pytest.raises(ValueError, match="bias_threshold"):
        dec.kinds(bias_threshold=1.5)
    with pytest.raises(ValueError, match="correction"):
        dec.kinds(correction="holm")


def test_from_tensors_checks_shapes():
    with pytest.raises(ValueError, match="components"):
        Decomposition.from_tensors(
            torch.zeros(3, 5, 2), torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), n_layers=1, n_heads=4
        )


def test_figures_and_round_trip(tmp_path):
    dec = _hand_made()
    fig = dec.heatmap()
    heat = fig.data[0]
    assert heat.zmid == 0.5 and heat.z.shape == (1, 4)
    assert "L0H0" in heat.text[0][0] and "Accuracy of each head" in fig.layout.title.text
    assert [t.text[0] for t in fig.data[1:]] == ["L0H0"]  # the good head is outlined
    bars = dec.plot_accuracy()
    assert {t.name for t in bars.data} == {"good", "bad", "label-biased", "other"}
    hover = {t.name: [c[2] for c in t.customdata] for t in bars.data}
    assert hover["good"] == [""]  # the test for 'below chance' is shown only below chance
    assert all(line.startswith("<br>p (below chance): ") for line in hover["bad"])
    back = Decomposition.load(dec.save(tmp_path / "dec"))
    torch.testing.assert_close(back.logits, dec.logits)
    assert back.names == dec.names and back.label_words == ("foo", "bar")
    assert back.kinds().kind.tolist() == dec.kinds().kind.tolist()
    assert "full-model accuracy" in dec._repr_html_()


def test_component_table_order():
    t = component_table(2, 2)
    assert t.component.tolist() == ["embed", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1", "bias"]
    assert t.set_index("component").loc["L1H1", ["layer", "head"]].tolist() == [1, 1]


def test_fixed_demo_prompts_and_balanced_sample():
    task = toy_task()
    labels = np.asarray(task.labels)
    rng = np.random.default_rng(0)
    q = balanced_sample(labels, 10, rng)
    d = balanced_sample(labels, 4, rng, exclude=q)
    assert np.bincount(labels[q]).tolist() == [5, 5] and not set(q) & set(d)
    prompts = fixed_demo_prompts(task, d, q)
    assert len(prompts) == 10 and len({p.demos for p in prompts.prompts}) == 1
    assert [p.gold for p in prompts.prompts] == labels[q].tolist()
    with pytest.raises(ValueError, match="both"):
        fixed_demo_prompts(task, d, [d[0]])
    with pytest.raises(ValueError, match="outside"):
        fixed_demo_prompts(task, d, [10_000])
    with pytest.raises(ValueError, match="unused examples"):
        balanced_sample(labels, 1000, rng)


def test_stability_on_tiny_model(models, task):
    t = task.template
    stab = component_stability(models["gpt2"], task, templates=(t, t), n_demo_sets=3, n=12, top=3)
    assert set(stab.df.axis) == {"demo set", "template"}
    assert (stab.df.axis == "demo set").sum() == 2 * 3 and (stab.df.axis == "template").sum() == 3
    same = stab.df[stab.df.axis == "template"]
    # the same template twice: identical runs, perfect agreement
    np.testing.assert_allclose(same.pearson, 1.0)
    assert (same.top_iou == 1.0).all()
    demo = stab.df[stab.df.axis == "demo set"]
    assert demo.pearson.between(-1, 1).all() and demo.top_iou.between(0, 1).all()
    assert stab.accuracies.shape == (2, 3, len(stab.names))
    fig = stab.plot("demo set", 1)
    assert fig.data[0].text[1] == "L0H0" and "Pearson" in fig.layout.title.text
    with pytest.raises(ValueError, match="axis"):
        stab.plot("seed")
    with pytest.raises(ValueError, match="two"):
        component_stability(models["gpt2"], task, n_demo_sets=1)


@pytest.mark.slow
def test_organism_decomposition_and_stability(organism):
    task = organism_task(max_words=6, noise_rate=0.2, seed=21)
    prompts = task.with_template(HELDOUT_TEMPLATES[0]).prompts(64, 4, seed=21)
    dec = decompose(organism, prompts)
    torch.testing.assert_close(dec.total(), dec.full_logits, atol=1e-4, rtol=0)
    assert 0.6 < dec.full_accuracy < 1.0  # the perturbed template makes the model imperfect
    stab = component_stability(organism, task, templates=HELDOUT_TEMPLATES[:2], n_demo_sets=3, n=100, seed=21)
    assert isinstance(stab, ComponentStability)
    # component accuracies are a property of the model, not of the demonstration set
    assert stab.summary()["pearson across demo sets"] > 0.5
