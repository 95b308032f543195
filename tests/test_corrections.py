import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import icl_heads as ih
from icl_heads.access import Capture, ModelAccess
from icl_heads.correction_hooks import (
    CountNormalisation,
    OVCompensation,
    PositionalPrior,
    count_normalise,
    ov_compensation_delta,
    rescore_row,
    slot_reweight,
)
from icl_heads.corrections import (
    attention_scales,
    correcting,
    count_normalisation,
    ov_compensation,
    positional_prior,
    unrotated_attention,
)
from icl_heads.debias import correct_majority_bias, correct_recency_bias
from icl_heads.options import RunOptions
from icl_heads.organism import HELDOUT_TEMPLATES
from icl_heads.testing import majority_copier_gpt2_dir, toy_task
from icl_heads.tuning import BiasCorrection, tune_correction

# ---- maths on hand-made rows ---------------------------------------------------------------------


def test_count_normalise_equalises_label_mass_and_keeps_total():
    att = torch.tensor([[[0.1, 0.2, 0.3, 0.1, -1.0]]])  # last slot is padding
    labels = torch.tensor([[0, 0, 0, 1, -1]])
    new = count_normalise(att, labels)
    # label 0 has 3 demonstrations, label 1 one: masses 0.6/3 and 0.1/1, rescaled to the old total 0.7
    want = torch.tensor([0.1, 0.2, 0.3, 0.3]) * 0.7 / 0.9
    torch.testing.assert_close(new[0, 0, :4], want)
    assert new[0, 0, 4] == -1.0
    torch.testing.assert_close(new[0, 0, :4].sum(), torch.tensor(0.7))


def test_count_normalise_and_ov_compensation_do_nothing_when_balanced():
    att = torch.rand(3, 4, 6)
    labels = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 1, 0, 0, -1, -1], [2, 0, 1, 2, 1, 0]])
    assert torch.equal(count_normalise(att, labels, strength=2.5), att)
    values = torch.randn(3, 4, 6, 5)
    assert torch.equal(ov_compensation_delta(att, values, labels, a_c=0.7), torch.zeros(3, 4, 5))


def test_ov_compensation_adds_scaled_minority_values():
    att = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]])
    values = torch.arange(8.0).view(1, 1, 4, 2)
    labels = torch.tensor([[0, 0, 0, 1]])  # label 1 is the minority, 3:1
    got = ov_compensation_delta(att, values, labels, a_c=0.5)
    torch.testing.assert_close(got, (0.5 * 3 / 1 * 0.4 * values[0, 0, 3])[None, None])


def test_slot_reweight_and_rescore_row():
    att = torch.tensor([[[0.1, 0.2, 0.3]]])
    torch.testing.assert_close(slot_reweight(att, torch.ones(1, 1, 3)), att)
    prior = torch.tensor([[[0.5, 1.0, 1.5]]])
    new = slot_reweight(att, prior)
    torch.testing.assert_close(new, torch.tensor([[[0.2, 0.2, 0.2]]]))
    scores = torch.tensor([[[0.0, 1.0, 2.0, float("-inf")]]])
    pos = torch.tensor([[1, -1]])
    torch.testing.assert_close(rescore_row(scores, torch.tensor([[[5.0, 9.0]]]), pos, mix=0.0), scores.softmax(-1))
    row = rescore_row(scores, torch.tensor([[[5.0, 9.0]]]), pos, mix=1.0)
    torch.testing.assert_close(row, torch.tensor([[[0.0, 5.0, 2.0, float("-inf")]]]).softmax(-1))
    assert row[0, 0, 3] == 0


# ---- hooks on real forward passes ----------------------------------------------------------------


def _batch(model, prompts, **kw):
    access = ModelAccess(model)
    return access, next(iter(access.batches(access.tokenize(prompts), 64, **kw)))


def _run(access, batch, hooks=(), layers=None):
    layers = range(access.n_layers) if layers is None else layers
    caps = [Capture(access.hook(ly, n), "all") for ly in layers for n in ("pattern", "z", "v")]
    return access.run(batch, hooks=hooks, capture=caps)


def _corrections(model, heads, prompts):
    out = [count_normalisation(model, heads, 1.5), ov_compensation(model, heads, 0.8)]
    out.append(positional_prior(model, heads, prompts, strength=2.0))
    if ModelAccess(model).rotary and "native" not in type(model).__name__.lower():
        try:
            out.append(unrotated_attention(model, heads, mix=1.0))
        except ValueError as err:  # a TransformerBridge from boot_native forms the pattern before its scores hook
            assert "positional-prior" in str(err)
    return out


def test_majority_corrections_change_nothing_with_balanced_counts(any_model, task):
    prompts = task.prompts(6, 4, seed=1)  # 2:2 demonstrations
    access, batch = _batch(any_model, prompts)
    base, _ = access.run(batch)
    for corr in (
        count_normalisation(any_model, [(0, 1), (1, 2)], 3.0),
        ov_compensation(any_model, [(1, 0)], 2.0),
    ):
        got, _ = access.run(batch, hooks=corr)
        # exactly: tuning relies on it (balanced_noop) and reuses the uncorrected balanced accuracy
        assert corr.balanced_noop and torch.equal(got, base)
    # but they do act on imbalanced prompts
    access, batch = _batch(any_model, task.prompts(6, 4, seed=1, counts=(3, 1)))
    base, _ = access.run(batch)
    for corr in (
        count_normalisation(any_model, [(0, 1), (1, 2)], 3.0),
        ov_compensation(any_model, [(1, 0)], 2.0),
    ):
        assert (access.run(batch, hooks=corr)[0] - base).abs().max() > 1e-4


def test_corrections_leave_other_heads_and_positions_untouched(any_model, task):
    heads = [(1, 0), (1, 3)]
    prompts = task.prompts(5, 4, seed=2, counts=(3, 1))
    access, batch = _batch(any_model, prompts)
    _, ref = _run(access, batch)
    rows = torch.arange(len(batch.golds))
    for corr in _corrections(any_model, heads, task.prompts(8, 4, seed=9)):
        _, got = _run(access, batch, hooks=corr)
        for name in ("pattern", "z"):
            # layer 0 is upstream of every change: identical
            torch.testing.assert_close(got[access.hook(0, name)], ref[access.hook(0, name)], atol=0, rtol=0)
        pat, pat0 = got[access.hook(1, "pattern")], ref[access.hook(1, "pattern")]
        z, z0 = got[access.hook(1, "z")], ref[access.hook(1, "z")]
        others = [1, 2]
        torch.testing.assert_close(pat[:, others], pat0[:, others], atol=0, rtol=0)
        torch.testing.assert_close(z[:, :, others], z0[:, :, others], atol=0, rtol=0)
        # corrected heads: only the final query position changes
        mask = torch.ones_like(z[..., 0, 0], dtype=torch.bool)
        mask[rows, batch.final_positions] = False
        torch.testing.assert_close(z[:, :, [0, 3]][mask], z0[:, :, [0, 3]][mask], atol=0, rtol=0)
        changed = (z[rows, batch.final_positions][:, [0, 3]] - z0[rows, batch.final_positions][:, [0, 3]]).abs()
        assert changed.max() > 1e-6, type(corr).__name__


def test_count_normalisation_in_the_model_matches_the_formula(any_model, task):
    access, batch = _batch(any_model, task.prompts(4, 4, seed=3, counts=(3, 1)), padding_side="left")
    _, ref = _run(access, batch, layers=[1])
    _, got = _run(access, batch, hooks=CountNormalisation(((1, 2),), strength=1.0), layers=[1])
    rows = torch.arange(4)
    lp = batch.label_positions
    before = ref[access.hook(1, "pattern")][rows[:, None], 2, batch.final_positions[:, None], lp]
    after = got[access.hook(1, "pattern")][rows[:, None], 2, batch.final_positions[:, None], lp]
    torch.testing.assert_close(after, count_normalise(before[:, None], batch.demo_labels)[:, 0])
    final_rows = got[access.hook(1, "pattern")][rows, 2, batch.final_positions]
    torch.testing.assert_close(final_rows.sum(-1), torch.ones(4))  # still a distribution


def test_ov_compensation_in_the_model_matches_the_formula(any_model, task):
    access, batch = _batch(any_model, task.prompts(4, 4, seed=3, counts=(1, 3)))
    _, ref = _run(access, batch, layers=[1])
    _, got = _run(access, batch, hooks=OVCompensation(((1, 3),), a_c=0.5), layers=[1])
    rows, f = torch.arange(4), batch.final_positions
    pat, v = ref[access.hook(1, "pattern")], ref[access.hook(1, "v")]
    kv = 3 // (access.n_heads // v.shape[2])
    want = torch.zeros(4, access.d_head)
    for b in range(4):
        for p, y in zip(batch.label_positions[b].tolist(), batch.demo_labels[b].tolist(), strict=True):
            if y == 0:  # the minority label, 1 of 4 demonstrations
                want[b] += 0.5 * 3 * pat[b, 3, f[b], p] * v[b, p, kv]
    delta = got[access.hook(1, "z")][rows, f, 3] - ref[access.hook(1, "z")][rows, f, 3]
    torch.testing.assert_close(delta, want, atol=1e-5, rtol=1e-4)


def test_unrotated_attention_matches_the_formula(models, task):
    model = models["llama"]
    access, batch = _batch(model, task.prompts(4, 4, seed=4))
    caps = [Capture(access.hook(1, n), "all") for n in ("q", "k", "rot_q", "rot_k", "attn_scores", "pattern")]
    _, ref = access.run(batch, capture=caps)
    q, k = ref[access.hook(1, "q")], ref[access.hook(1, "k")]
    rq, rk = ref[access.hook(1, "rot_q")], ref[access.hook(1, "rot_k")]
    group = access.n_heads // k.shape[2]
    scale = attention_scales(access)[1]
    scores = ref[access.hook(1, "attn_scores")]
    rotated = torch.einsum("bqhd,bkhd->bhqk", rq, rk.repeat_interleave(group, 2)) / scale
    finite = torch.isfinite(scores) & (scores > -1e4)
    torch.testing.assert_close(rotated[finite], scores[finite], atol=1e-4, rtol=1e-4)  # the scale is right
    _, got = access.run(batch, hooks=unrotated_attention(model, [(1, 1)], mix=1.0), capture=caps[-1:])
    rows, f, lp = torch.arange(4), batch.final_positions, batch.label_positions
    plain = torch.einsum("bhd,bphd->bhp", q[rows, f], k.repeat_interleave(group, 2)[rows[:, None], lp])[:, 1] / scale
    row = scores[rows, 1, f].clone()
    row[rows[:, None], lp] = plain
    torch.testing.assert_close(got[access.hook(1, "pattern")][rows, 1, f], row.softmax(-1), atol=1e-5, rtol=1e-4)
    # mix=0 keeps the rotated scores
    base, _ = access.run(batch)
    torch.testing.assert_close(access.run(batch, hooks=unrotated_attention(model, [(1, 1)], 0.0))[0], base)


def test_unrotated_attention_refuses_models_without_rotary(models):
    with pytest.raises(ValueError, match="rotary"):
        unrotated_attention(models["gpt2"], [(0, 0)])
    if "native" in models:
        with pytest.raises(ValueError, match="scores are not available"):
            unrotated_attention(models["native"], [(0, 0)])
    with pytest.raises(ValueError, match="rotary"):
        correct_recency_bias(models["gpt2"], toy_task(), method="unrotated", heads=[(0, 0)], n=4, tune_n=4)


def test_positional_prior_is_flat_slot_attention_after_correction(any_model, task):
    heads = [(1, 0), (1, 2)]
    ref = task.prompts(30, 4, seed=11)
    corr = positional_prior(any_model, heads, ref)
    assert set(corr.prior) == {4}
    torch.testing.assert_close(corr.prior[4].mean(-1), torch.ones(2))
    # corrected on the same prompts, each slot's mean share of label attention is near uniform
    refitted = positional_prior(any_model, heads, ref)
    assert torch.equal(refitted.prior[4], corr.prior[4])
    flat = PositionalPrior(corr.heads, prior={4: torch.ones(2, 4)})
    access, batch = _batch(any_model, ref)
    torch.testing.assert_close(access.run(batch, hooks=flat)[0], access.run(batch)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no positional prior for prompts with \\[3\\]"):
        access.run(next(iter(access.batches(access.tokenize(task.prompts(2, 3)), 2))), hooks=corr)


def test_context_manager_and_providers_agree(any_model, task):
    prompts = task.prompts(4, 4, seed=5, counts=(1, 3))
    access, batch = _batch(any_model, prompts, padding_side="left")
    corr = count_normalisation(any_model, [(1, 1)], 2.0)
    want, _ = access.run(batch, hooks=corr)
    with correcting(any_model, corr, batch.label_positions, batch.demo_labels):  # left padding: final = last
        logits = any_model(batch.tokens, attention_mask=batch.attention_mask)
    torch.testing.assert_close(logits[:, -1].float(), want, atol=1e-5, rtol=1e-5)
    # and outside the context manager the model is back to normal
    torch.testing.assert_close(
        any_model(batch.tokens, attention_mask=batch.attention_mask)[:, -1].float(),
        access.run(batch)[0],
        atol=1e-5,
        rtol=1e-5,
    )


def _concat(*sets):
    return ih.ICLPrompts(prompts=sum((p.prompts for p in sets), ()), task=sets[0].task)


def test_corrected_accuracy_does_not_depend_on_batch_or_padding(any_model, task, fresh):
    # prompts with 3 and 4 demonstrations share batches: padded label slots must not leak in
    prompts = _concat(task.prompts(6, 4, seed=6, counts=(3, 1)), task.prompts(5, 3, seed=7))
    reference = _concat(task.prompts(10, 4, seed=12), task.prompts(10, 3, seed=13))
    for corr in _corrections(any_model, [(0, 2), (1, 1)], reference):
        a = ih.icl_accuracy(any_model, prompts, hooks=corr, options=RunOptions(batch_size=11))
        b = ih.icl_accuracy(any_model, prompts, hooks=corr, options=RunOptions(batch_size=3, padding_side="left"))
        c = torch.cat([ih.icl_accuracy(any_model, prompts[i : i + 1], hooks=corr).label_logits for i in range(11)])
        torch.testing.assert_close(a.label_logits, b.label_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.label_logits, c, atol=1e-4, rtol=1e-4)


def test_bad_corrections(models):
    with pytest.raises(ValueError, match="at least one"):
        CountNormalisation(())
    with pytest.raises(ValueError, match="outside the model"):
        count_normalisation(models["gpt2"], [(0, 9)])
    # mismatched shapes: our ValueError, or jaxtyping's TypeError when shapes are checked at run time
    with pytest.raises((ValueError, TypeError), match=r"\[batch, demo\]|batch|demo"):
        CountNormalisation(((0, 0),)).hooks(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))


# ---- tuning and evaluation -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    return ih.load_model(majority_copier_gpt2_dir(tmp_path_factory.mktemp("copier") / "m"))


def test_count_normalisation_and_ov_remove_a_label_counters_bias(copier):
    prompts = toy_task().prompts(8, 4, seed=1, counts=(3, 1))
    before = ih.icl_accuracy(copier, prompts).label_logits
    assert (before[:, 0] > before[:, 1] + 0.1).all()  # the counter prefers the majority
    # uniform attention: count normalisation gives each label equal mass; the OV compensation adds the
    # minority's values a_c * 3 / 1 times, which makes up the 3:1 difference when 1 + 3 a_c = 3
    for corr in (count_normalisation(copier, [(1, 0)], 1.0), ov_compensation(copier, [(1, 0)], 2 / 3)):
        after = ih.icl_accuracy(copier, prompts, hooks=corr).label_logits
        torch.testing.assert_close(after[:, 0], after[:, 1], atol=1e-5, rtol=1e-5)


def test_tuning_and_evaluation_on_a_label_counter(copier, tmp_path):
    task = toy_task()
    res = correct_majority_bias(
        copier,
        task,
        method="count",
        heads=[(1, 0)],
        n=12,
        tune_n=8,
        seed=0,
        tune_seed=5,
        grid=[0.0, 0.5, 1.0],
        n_boot=100,
    )
    assert isinstance(res, BiasCorrection) and res.value == 1.0
    tuning = res.tuning.set_index("value")
    assert tuning.loc[0.0, "bias"] > 0.3 and tuning.chosen.sum() == 1 and tuning.loc[1.0, "chosen"]
    row = res.df.set_index("metric").loc["bias"]
    assert row.before > 0.3 and row.after < row.before and res.reduction > 50
    acc = res.df.set_index("metric").loc["balanced_accuracy"]
    assert acc.before == acc.after and res.accuracy_change == 0  # no change at all on balanced prompts
    assert list(res.df.metric) == ["bias", "probability_bias", "imbalanced_accuracy", "balanced_accuracy"]
    loaded = BiasCorrection.load(res.save(tmp_path / "r"))
    assert loaded.reduction == res.reduction and loaded.heads == ((1, 0),) and loaded.tuning.equals(res.tuning)
    fig = res.plot()
    assert isinstance(fig, go.Figure) and "reduction" in fig.layout.title.text
    assert "reduction %" in res.summary()


def test_reduction_counts_overshoot_as_remaining_bias():
    from icl_heads.tuning import _reduction

    before, after = np.full(50, 0.2), np.full(50, -0.05)  # overshoot to a quarter of the bias, reversed
    red = _reduction(before, after, n_boot=50, seed=0)
    assert red == pytest.approx(75) and red.low == pytest.approx(75) and red.high == pytest.approx(75)
    assert red.n == 50 and red.method == "paired bootstrap"


def test_tuning_respects_the_accuracy_limit(models, task):
    calls = []

    def build(value):
        calls.append(value)
        return ih.interventions.ablation(models["llama"], [(1, h) for h in range(4)]) if value else ()

    value, table = tune_correction(
        models["llama"], task, build, [0.0, 1.0], kind="majority", shots=2, n=6, seed=3, skews=[(2, 1)]
    )
    assert calls == [0.0, 1.0] and list(table.value) == [0.0, 1.0]
    assert value in (0.0, 1.0) and table.allowed[0]
    assert (table.loc[table.value == value, "accuracy_drop"] <= 0.01).all() or not table.allowed.any()
    with pytest.raises(ValueError, match="kind"):
        tune_correction(models["llama"], task, build, [0.0], kind="other", shots=2)


def test_tuning_warns_when_there_is_no_bias_to_tune(models, task, monkeypatch, caplog):
    import types

    import icl_heads.tuning as tuning

    monkeypatch.setattr(tuning, "_measure", lambda *a, **k: types.SimpleNamespace(bias=0.0))
    with caplog.at_level("WARNING", logger="icl_heads"):
        value, table = tune_correction(models["gpt2"], task, lambda v: (), [0.0, 2.0], kind="majority", shots=2, n=6)
    assert value == 0.0 and (table.bias == 0).all()
    assert "nothing to tune" in caplog.text and "tune_n" in caplog.text


def test_evaluation_refuses_tuning_on_test_prompts(models, task):
    with pytest.raises(ValueError, match="tune_seed"):
        correct_majority_bias(models["gpt2"], task, heads=[(0, 0)], seed=3, tune_seed=3)
    with pytest.raises(ValueError, match="unknown method"):
        correct_recency_bias(models["gpt2"], task, method="nope", heads=[(0, 0)])


# ---- the organism -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def organism_task():
    return ih.organism_task(max_words=6, noise_rate=0.3, template=HELDOUT_TEMPLATES[1], seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["count", "ov"])
def test_majority_corrections_reduce_bias_on_the_organism(organism, organism_task, method):
    grid = {"count": [0.0, 3.0], "ov": [0.0, 2.0]}[method]
    res = correct_majority_bias(
        organism, organism_task, method=method, heads=[(1, 1), (1, 7)], n=100, tune_n=50, seed=21, tune_seed=22,
        grid=grid, skews=[(3, 1)], n_boot=300,
    )  # fmt: skip
    assert res.value == grid[1]
    assert res.reduction.ci[0] > 10, res.summary()
    acc = res.df.set_index("metric").loc["balanced_accuracy"]
    assert acc.after >= acc.before - 0.01


@pytest.mark.slow
def test_positional_prior_reduces_order_dependence_on_the_organism(organism, organism_task):
    res = correct_recency_bias(
        organism, organism_task, method="prior", heads=[(1, 1), (1, 7)], n=240, tune_n=80, seed=21, tune_seed=25,
        grid=[0.0, 2.0], n_random_orders=1, n_boot=300,
    )  # fmt: skip
    df = res.df.set_index("metric")
    assert res.value == 2.0 and res.reduction > 0, res.summary()
    assert list(df.index) == [
        "bias", "order_spread", "order_std", "sensitivity", "last_label_excess", "last_label_pull",
        "accuracy_over_orders", "balanced_accuracy",
    ]  # fmt: skip
    assert res.config["read_at"] in ("label", "slot", "after_label") and res.config["read_at_requested"] == "auto"
    # the per-prompt order sensitivity falls with a clear margin
    assert df.loc["sensitivity", "after_ci_high"] < df.loc["sensitivity", "before"]
    assert df.loc["balanced_accuracy", "after"] >= df.loc["balanced_accuracy", "before"] - 0.01


@pytest.mark.parametrize("read_at", ["after_label", "slot"])
def test_count_normalisation_acts_at_the_reading_position(models, task, read_at):
    from icl_heads.slots import positions_with_labels

    model = models["llama"]
    access, batch = _batch(model, task.with_template("{text} ; {label} ,\n").prompts(4, 4, seed=3, counts=(3, 1)))
    _, ref = _run(access, batch, layers=[1])
    _, got = _run(access, batch, hooks=CountNormalisation(((1, 2),), strength=1.0, read_at=read_at), layers=[1])
    rows, f = torch.arange(4), batch.final_positions
    pos, labels = positions_with_labels(batch, read_at)
    before = ref[access.hook(1, "pattern")][rows[:, None], 2, f[:, None], pos.clamp(min=0)]
    after = got[access.hook(1, "pattern")][rows[:, None], 2, f[:, None], pos.clamp(min=0)]
    valid = pos >= 0
    want = count_normalise(torch.where(valid, before, 0.0)[:, None], labels)[:, 0]
    torch.testing.assert_close(after[valid], want[valid])
    # the label tokens themselves are untouched when the correction acts after them
    if read_at == "after_label":
        lp = batch.label_positions
        torch.testing.assert_close(
            got[access.hook(1, "pattern")][rows[:, None], 2, f[:, None], lp],
            ref[access.hook(1, "pattern")][rows[:, None], 2, f[:, None], lp],
        )
    with pytest.raises(ValueError, match="read_at"):
        CountNormalisation(((1, 2),), read_at="auto")


def test_ablate_and_correct_at_once(models, task):
    """One protocol (hooks_for) and one context manager for every intervention, composable."""
    model = models["llama"]
    prompts = task.prompts(6, 4, seed=8, counts=(3, 1))
    access, batch = _batch(model, prompts)
    abl = ih.interventions.ablation(model, [(0, 1)])
    corr = count_normalisation(model, [(1, 2)], 3.0)
    both, _ = access.run(batch, hooks=ih.interventions.combine(abl, corr))
    with ih.intervening(model, abl, corr, batch=batch):
        own = model(batch.tokens, attention_mask=batch.attention_mask)[torch.arange(6), batch.final_positions]
    torch.testing.assert_close(own.float(), both, atol=1e-5, rtol=1e-5)
    alone = [access.run(batch, hooks=h)[0] for h in (abl, corr)]
    assert all((both - a).abs().max() > 1e-4 for a in alone)  # each part does something
    assert ih.interventions.combine(abl, corr).edits_pattern and not ih.interventions.combine(abl).edits_pattern
    raw = [("blocks.0.hook_resid_pre", lambda x, hook: x)]
    with pytest.raises(TypeError, match="hooks_for"), ih.intervening(model, raw, batch=batch):
        pass
    with pytest.raises(ValueError, match="no interventions"), ih.intervening(model, batch=batch):
        pass
