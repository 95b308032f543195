import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import icl_heads as ih
from icl_heads.bias import MajorityBias, majority_bias, majority_conditions, majority_prompts
from icl_heads.options import RunOptions
from icl_heads.order_bias import (
    RecencyBias,
    demo_orders,
    last_label_prob_pull,
    order_permutation_p,
    order_spread,
    recency_bias,
    recency_prompts,
)
from icl_heads.organism import HELDOUT_TEMPLATES
from icl_heads.testing import majority_copier_gpt2_dir, toy_task


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    """A hand-built model whose only label-carrying head counts labels: pure majority bias."""
    return ih.load_model(majority_copier_gpt2_dir(tmp_path_factory.mktemp("copier") / "m"))


# ---- prompt construction -----------------------------------------------------------------------


def test_majority_conditions():
    assert majority_conditions(2, 4, [(3, 1), (5, 1)]) == [(2, 2), (1, 2), (2, 1), (3, 1), (1, 3), (5, 1), (1, 5)]
    assert majority_conditions(3, 3, [(2, 1)]) == [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)]
    with pytest.raises(ValueError, match="multiple"):
        majority_conditions(2, 3, [])
    with pytest.raises(ValueError, match="majority > minority"):
        majority_conditions(2, 4, [(1, 3)])


def test_majority_prompts_are_nested_subsets_with_shared_queries():
    sets = majority_prompts(toy_task(), shots=4, n=10, seed=3)
    assert next(iter(sets)) == "balanced"
    pool = {}
    for name, prompts in sets.items():
        counts = prompts.config["counts"]
        for i, p in enumerate(prompts.prompts):
            assert [p.query, p.gold] == [sets["balanced"].prompts[i].query, sets["balanced"].prompts[i].gold]
            assert np.bincount([y for _, y in p.demos], minlength=2).tolist() == counts, name
            pool.setdefault(i, []).append(p.demos)
    for demos in pool.values():
        for y in (0, 1):  # each condition keeps a prefix of one pool of each label, in pool order
            per_label = [[x for x in d if x[1] == y] for d in demos]
            longest = max(per_label, key=len)
            assert len(longest) == 5
            assert all(ours == longest[: len(ours)] for ours in per_label)
    # the balanced prompts are the minus-one prompts plus one demonstration
    for a, b in zip(sets["balanced"].prompts, sets["2:1 (foo/bar)"].prompts, strict=True):
        assert set(b.demos) < set(a.demos) and len(a.demos) - len(b.demos) == 1


def test_recency_orders_permute_the_same_demonstrations():
    orders = demo_orders([0, 1, 1, 0], 2, np.random.default_rng(0))
    assert orders["original"] == [0, 1, 2, 3] and orders["reversed"] == [3, 2, 1, 0]
    assert orders["blocked"] == [0, 3, 1, 2] and orders["blocked_reversed"] == [1, 2, 0, 3]
    sets = recency_prompts(toy_task(), shots=4, n=6, seed=1, n_random_orders=2)
    assert list(sets) == ["original", "reversed", "blocked", "blocked_reversed", "random_0", "random_1"]
    for name, prompts in sets.items():
        for p, q in zip(prompts.prompts, sets["original"].prompts, strict=True):
            assert sorted(p.demos) == sorted(q.demos) and p.query == q.query
        if name == "blocked":
            assert all([y for _, y in p.demos] == [0, 0, 1, 1] for p in prompts.prompts)


# ---- statistics on hand-made numbers ------------------------------------------------------------


def test_order_spread_removes_sampling_noise():
    rng = np.random.default_rng(0)
    # no systematic order effect: each prompt's correctness is shuffled over orders
    noisy = np.stack([rng.permutation(row) for row in rng.integers(0, 2, (400, 8))], axis=1)
    assert noisy.mean(-1).std(ddof=1) > 0.01
    assert order_spread(noisy) < 0.01
    assert order_spread(np.ones((5, 30))) == 0
    # a true spread of accuracies 0.2 apart is recovered
    p = np.array([0.5, 0.7] * 4)[:, None]
    strong = (rng.random((8, 20000)) < p).astype(float)
    assert abs(order_spread(strong) - np.std([0.5, 0.7] * 4, ddof=1)) < 0.01
    with pytest.raises(ValueError, match="at least 2 orders"):
        order_spread(np.ones((1, 5)))
    assert order_permutation_p(noisy, n_perm=200) > 0.05
    assert order_permutation_p(strong[:, :2000], n_perm=200) < 0.01


def test_last_label_probability_pull():
    # two orders of one prompt: label 0 last, then label 1 last; p(label 0) 0.8 then 0.4
    probs = torch.tensor([[[0.8, 0.2]], [[0.4, 0.6]]])
    last = torch.tensor([[0], [1]])
    torch.testing.assert_close(last_label_prob_pull(probs, last), torch.tensor([0.4]))


# ---- measurements on tiny models -------------------------------------------------------------


def test_majority_bias_of_a_label_counter(copier):
    mb = majority_bias(copier, toy_task(), shots=4, n=20, seed=0, n_boot=200)
    # a model that counts labels always predicts the majority: the bias is large and certain
    assert mb.bias > 0.3 and mb.bias.ci[0] > 0.2
    cond = mb.conditions.set_index("counts")
    assert cond.loc["5:1", "majority_rate"] == 1.0 and cond.loc["1:5", "majority_rate"] == 1.0
    assert (mb.df.loc[mb.df.condition == "balanced", "shift"] == 0).all()
    assert mb.label_logits.shape == (7, 20, 2) and mb.counts.shape == (7, 2)
    assert set(mb.df.gold) == {"all", "foo", "bar"}


def test_measurements_do_not_depend_on_batch_size(any_model, task, fresh):
    a = majority_bias(any_model, task, shots=2, n=8, skews=[(2, 1)], options=RunOptions(batch_size=8), n_boot=50)
    b = majority_bias(any_model, task, shots=2, n=8, skews=[(2, 1)], options=RunOptions(batch_size=3), n_boot=50)
    torch.testing.assert_close(a.label_logits, b.label_logits, atol=1e-4, rtol=1e-4)
    r1 = recency_bias(any_model, task, shots=4, n=6, heads=[(0, 1), (1, 0)], n_random_orders=1, n_boot=50)
    four = RunOptions(batch_size=4)
    r2 = recency_bias(any_model, task, shots=4, n=6, heads=[(0, 1), (1, 0)], n_random_orders=1, n_boot=50, options=four)
    torch.testing.assert_close(r1.label_logits, r2.label_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(r1.attention.attention, r2.attention.attention, atol=1e-5)


def test_recency_bias_tables(models, task):
    rb = recency_bias(models["llama"], task, shots=4, n=10, heads=[(1, 0), (1, 3)], n_random_orders=2, n_boot=100)
    assert list(rb.df.order)[:4] == ["original", "reversed", "blocked", "blocked_reversed"]
    assert rb.label_logits.shape == (6, 10, 2)
    att = rb.attention
    assert set(att.name) == {"L1H0", "L1H3"} and sorted(att.slot.unique()) == [0, 1, 2, 3]
    # shares of label attention over slots sum to one for every head
    np.testing.assert_allclose(att.groupby("name").share.sum().to_numpy(), 1.0, atol=1e-5)
    assert ((att.attention > 0) & (att.attention < 1)).all()
    assert rb.bias <= rb.order_std + 1e-9 and rb.order_std >= 0
    # blocked orders end with the second label, blocked_reversed with the first
    assert (rb.last_labels[2] == 1).all() and (rb.last_labels[3] == 0).all()


def test_results_save_load_and_plot(models, task, tmp_path):
    mb = majority_bias(models["gpt2"], task, shots=2, n=6, skews=[(3, 1)], n_boot=50)
    loaded = MajorityBias.load(mb.save(tmp_path / "mb"))
    assert loaded.bias == mb.bias and loaded.df.equals(mb.df)
    torch.testing.assert_close(loaded.label_logits, mb.label_logits)
    assert "majority bias" in repr(mb) and "<table>" in mb._repr_html_()
    fig = mb.plot()
    assert isinstance(fig, go.Figure) and "Majority-label bias" in fig.layout.title.text
    assert fig.layout.yaxis.title.text and fig.layout.xaxis.title.text
    rb = recency_bias(models["gpt2"], task, shots=4, n=6, heads=[(1, 1)], n_random_orders=1, n_boot=50)
    assert RecencyBias.load(rb.save(tmp_path / "rb")).order_std == rb.order_std
    fig = rb.plot()
    assert isinstance(fig, go.Figure) and "Recency bias" in fig.layout.title.text
    assert "L1H1" in fig.data[1].y


def test_bad_input(models, task):
    with pytest.raises(TypeError, match="ICLTask"):
        majority_bias(models["gpt2"], task.prompts(4, 2), shots=2)
    with pytest.raises(ValueError, match="at least 2 demonstrations"):
        recency_bias(models["gpt2"], task, shots=1, heads=[(0, 0)])
    with pytest.raises(ValueError, match="outside the model"):
        recency_bias(models["gpt2"], task, shots=2, n=2, heads=[(5, 0)])
    with pytest.raises(ValueError, match="cannot cover"):
        majority_bias(models["gpt2"], task, shots=2, n=1)


def test_default_heads_are_the_in_context_heads(models, task):
    heads = ih.bias.default_heads(models["llama"], task.prompts(8, 2, seed=2))
    found = ih.find_in_context_heads(models["llama"], task.prompts(8, 2, seed=2), verify=False)
    assert set(found.heads) <= set(heads)
    assert set(heads) == set(found.heads) | {h for hs in found.heads_by_label.values() for h in hs}


# ---- the organism ------------------------------------------------------------------------------


@pytest.mark.slow
def test_organism_has_majority_bias(organism):
    task = ih.organism_task(max_words=6, noise_rate=0.3, template=HELDOUT_TEMPLATES[1], seed=3)
    mb = majority_bias(organism, task, shots=4, n=120, seed=7, n_boot=500)
    assert mb.bias.ci[0] > 0.05, mb.summary()
    five_one = mb.df[(mb.df.counts.isin(["5:1", "1:5"])) & (mb.df.gold != "all")]
    # the minority gold label loses accuracy, the majority gold label gains
    assert (five_one[five_one.majority != five_one.gold]["shift"] < 0).all()
    assert (five_one[five_one.majority == five_one.gold]["shift"] > 0).all()


@pytest.mark.slow
def test_organism_has_order_dependence(organism):
    task = ih.organism_task(max_words=6, noise_rate=0.3, template=HELDOUT_TEMPLATES[1], seed=3)
    rb = recency_bias(organism, task, shots=8, n=300, seed=7, heads=[(1, 1), (1, 7)], n_random_orders=2, n_boot=500)
    # accuracy depends on the order of the same demonstrations beyond chance
    assert rb.order_p < 0.05 and rb.bias > 0.02, rb.summary()
    att = rb.attention.groupby("slot").share.mean()
    # the in-context heads' attention depends strongly on the slot: the positional prior to correct
    assert att.max() > 3 * att.min()


def test_block_gap_alone_equals_the_full_recency_measure():
    """Tuning measures only the two blocked orders: the same block gap as recency_bias, a quarter of the passes."""
    from icl_heads.engine import count_cost
    from icl_heads.order_bias import recency_block_gap
    from icl_heads.organism import HELDOUT_TEMPLATES

    model = ih.load_model("organism")
    task = ih.organism_task(template=HELDOUT_TEMPLATES[1], max_words=6, noise_rate=0.3)
    hooks = ih.interventions.ablation(model, [(1, 1), (1, 3)])
    for h, seed in (((), 3), (hooks, 3), (hooks, 4)):
        with count_cost() as full_cost:
            full = ih.recency_bias(model, task, shots=4, n=60, seed=seed, hooks=h, heads=[(1, 1)], n_boot=50)
        with count_cost() as alone_cost:
            alone = recency_block_gap(model, task, shots=4, n=60, seed=seed, hooks=h, options=RunOptions(batch_size=7))
        assert alone == full.block_gap
        assert alone_cost.total.rows == full_cost.total.rows // 4
    assert full.block_gap != 0  # a setting where there is a gap to get right
