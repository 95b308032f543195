import pytest
import torch
from scipy.stats import spearmanr

import icl_heads as ih
import icl_heads.attribution as attribution
from icl_heads.agreement import resolved_from_zero, split_half_spearman
from icl_heads.attribution import head_estimates, largest_heads
from icl_heads.interventions import HeadAblation, head_means
from icl_heads.options import RunOptions

#: bundled organisms and their tasks' layouts
ORGANISMS = {"organism": "separator", "organism-slot": "slot"}


def test_head_estimates_sum_over_real_positions_or_take_the_final_one():
    z = torch.arange(2 * 3 * 2 * 1, dtype=torch.float).view(2, 3, 2, 1)
    grad = torch.ones_like(z)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    finals = torch.tensor([1, 2])
    # zero-ablation at every real position: sum of z over unmasked positions
    torch.testing.assert_close(
        head_estimates(z, grad, None, mask, finals, "all"), torch.tensor([[2.0, 4.0], [24.0, 27.0]])
    )
    torch.testing.assert_close(
        head_estimates(z, grad, None, mask, finals, "final"), torch.tensor([[2.0, 3.0], [10.0, 11.0]])
    )
    ref = torch.tensor([[1.0], [2.0]])
    got = head_estimates(z, 2 * grad, ref, mask, finals, "final")
    torch.testing.assert_close(got, 2 * (torch.tensor([[2.0, 3.0], [10.0, 11.0]]) - ref[:, 0]))


def test_largest_heads_rank_by_magnitude():
    scores = torch.tensor([[0.1, -2.0], [1.0, 0.0]])
    assert largest_heads(scores, 2) == ((0, 1), (1, 0))


def _scaled_effects(access, batch, label_ids, eps):
    """Exact drop of log p(gold) when each head's hook_z is scaled by (1 - eps) at every position."""
    rows = torch.arange(len(batch.golds))
    gold = label_ids[batch.golds]
    base, _ = access.run(batch)
    base = base.log_softmax(-1)[rows, gold]
    out = torch.zeros(len(rows), access.n_layers, access.n_heads)
    for layer in range(access.n_layers):
        for h in range(access.n_heads):

            def fn(z, hook, h=h):
                z = z.clone()
                z[:, :, h] *= 1 - eps
                return z

            lg, _ = access.run(batch, hooks=[(access.hook(layer, "z"), fn)])
            out[:, layer, h] = base - lg.log_softmax(-1)[rows, gold]
    return out


def test_estimate_is_the_first_order_effect_of_every_head(any_model, task):
    # zero-ablation estimate = g . z; scaling z by (1 - eps) changes log p by eps * g . z to first order
    access = ih.access.ModelAccess(any_model)
    tp = access.tokenize(task.prompts(6, 3, seed=11))
    label_ids = torch.tensor(tp.label_token_ids)
    batch = next(access.batches(tp, 6, "left"))
    est = attribution.per_prompt_attribution(access, batch, label_ids, check=True)
    eps = 1e-2
    fd = _scaled_effects(access, batch, label_ids, eps) / eps
    scale = float(est.abs().max())
    assert scale > 1e-4  # the heads of a random model do move the log-probability
    torch.testing.assert_close(fd, est, rtol=0.05, atol=0.03 * scale)


def test_final_position_mean_ablation_estimate_is_exact_to_first_order(any_model, task):
    # one prompt, replacement = its own final-position z plus a small step: the exact effect is linear in the step
    access = ih.access.ModelAccess(any_model)
    tp = access.tokenize(task.prompts(1, 3, seed=12))
    label_ids = torch.tensor(tp.label_token_ids)
    batch = next(access.batches(tp, 1))
    from icl_heads.access import Capture

    caps = [Capture(access.hook(layer, "z")) for layer in range(access.n_layers)]
    _, got = access.run(batch, capture=caps)
    z = torch.stack([got[access.hook(layer, "z")][0] for layer in range(access.n_layers)])  # [layer, head, d_head]
    step = torch.randn(z.shape, generator=torch.Generator().manual_seed(0)) * 1e-2 * z.abs().mean()
    means = z + step
    est = attribution.per_prompt_attribution(access, batch, label_ids, how="mean", where="final", means=means)
    exact = ih.scoring.per_prompt_ablation(access, batch, label_ids, 8, how="mean", where="final", means=means)
    scale = float(exact.abs().max())
    assert scale > 0
    torch.testing.assert_close(est, exact, rtol=0.05, atol=0.05 * scale)


def test_exact_variants_match_the_intervention_module(any_model, task):
    access = ih.access.ModelAccess(any_model)
    tp = access.tokenize(task.prompts(5, 2, seed=13))
    label_ids = torch.tensor(tp.label_token_ids)
    batch = next(access.batches(tp, 5, "left"))
    rows = torch.arange(5)
    gold = label_ids[batch.golds]
    base = access.run(batch)[0].log_softmax(-1)[rows, gold]
    for how in ("zero", "mean"):
        for where in ("all", "final"):
            means = head_means(access, tp, where=where) if how == "mean" else None
            heads = ((0, 1), (1, 2))
            got = ih.scoring.per_prompt_ablation(
                access, batch, label_ids, 2, heads=heads, how=how, where=where, means=means
            )
            for head in heads:
                abl = HeadAblation((head,), how=how, where=where, means=means)
                want = base - access.run(batch, hooks=abl)[0].log_softmax(-1)[rows, gold]
                torch.testing.assert_close(got[:, head[0], head[1]], want, atol=1e-5, rtol=1e-5)
            assert torch.isnan(got[:, 0, 0]).all()  # heads not asked for are not scored


def test_attribution_does_not_depend_on_batch_size_or_padding(any_model, task, fresh):
    prompts = task.prompts(10, 3, seed=14)
    ref = ih.score_heads(any_model, prompts, methods=("attribution",), options=RunOptions(batch_size=10))["attribution"]
    for bs, side in [(1, "right"), (4, "left")]:
        got = ih.score_heads(
            any_model, prompts, methods=("attribution",), options=RunOptions(batch_size=bs, padding_side=side)
        )
        torch.testing.assert_close(got["attribution"], ref, atol=1e-5, rtol=1e-4)


def test_no_gradients_are_left_and_grad_mode_is_untouched(any_model, task):
    params = list(any_model.parameters())
    flags = [p.requires_grad for p in params]
    prompts = task.prompts(4, 2, seed=15)
    with torch.inference_mode():  # works inside the user's inference mode too
        ih.score_heads(any_model, prompts, methods=("attribution",))
    assert torch.is_grad_enabled()
    assert all(p.grad is None for p in params)
    assert [p.requires_grad for p in params] == flags


def test_rescore_replaces_the_largest_estimates_by_the_exact_effect(any_model, task):
    prompts = task.prompts(6, 2, seed=16)
    plain = ih.score_heads(any_model, prompts, methods=("attribution", "ablation"))
    refined = ih.score_heads(any_model, prompts, methods=("attribution",), rescore=3)["attribution"]
    chosen = largest_heads(plain["attribution"].mean(0), 3)
    for layer in range(plain["ablation"].shape[1]):
        for h in range(plain["ablation"].shape[2]):
            want = plain["ablation"] if (layer, h) in chosen else plain["attribution"]
            torch.testing.assert_close(refined[:, layer, h], want[:, layer, h], atol=1e-5, rtol=1e-5)


def test_rescoring_every_head_agrees_perfectly(models, task):
    model = models["gpt2"]
    total = ih.access.ModelAccess(model).n_layers * ih.access.ModelAccess(model).n_heads
    agreement = ih.compare_head_scores(model, task.prompts(6, 2, seed=17), rescore=total, k=3)
    assert agreement.spearman == pytest.approx(1.0) and agreement.top_k_overlap == 1.0 and agreement.same_top_head
    torch.testing.assert_close(
        torch.tensor(agreement.df.estimate.values), torch.tensor(agreement.df.exact.values), atol=1e-5, rtol=1e-5
    )


def test_agreement_on_a_sample_round_trips_and_plots(models, task, tmp_path):
    model = models["llama"]
    agreement = ih.compare_head_scores(model, task.prompts(6, 2, seed=18), method="dla", sample=5, seed=3, k=2)
    assert len(agreement.df) == 5 and len(set(agreement.heads)) == 5
    assert set(agreement.df.rank_exact) == set(range(1, 6))
    again = ih.compare_head_scores(model, task.prompts(6, 2, seed=18), method="dla", sample=5, seed=3, k=2)
    assert again.heads == agreement.heads
    back = ih.agreement.ScoreAgreement.load(agreement.save(tmp_path / "agreement"))
    assert back.heads == agreement.heads and back.spearman == agreement.spearman
    fig = agreement.plot()
    assert list(fig.data[0].text) == agreement.df.name.tolist()
    from icl_heads._cli_sections import agreement_part
    from icl_heads.report import Report

    report = Report("t")
    report.add(agreement_part(agreement))
    assert "Spearman" in "".join(report.sections[0][1]) or "spearman" in "".join(report.sections[0][1])


def test_bad_arguments_are_refused_before_work(models, task):
    model, prompts = models["gpt2"], task.prompts(4, 2, seed=19)
    with pytest.raises(ValueError, match="how must be one of"):
        ih.score_heads(model, prompts, methods=("attribution",), how="noise")
    with pytest.raises(ValueError, match="where must be one of"):
        ih.score_heads(model, prompts, methods=("attribution",), where="label")
    with pytest.raises(ValueError, match="rescore must be"):
        ih.score_heads(model, prompts, methods=("attribution",), rescore=-1)
    with pytest.raises(ValueError, match="cheap score"):
        ih.compare_head_scores(model, prompts, method="ablation")
    with pytest.raises(ValueError, match="sample must be between 2"):
        ih.compare_head_scores(model, prompts, sample=100)
    with pytest.raises(ValueError, match="k must be between 1"):
        ih.compare_head_scores(model, prompts, sample=3, k=4)


def test_mismatched_rebuilt_logits_are_refused(models, task, monkeypatch):
    real = attribution._final_logits
    monkeypatch.setattr(attribution, "_final_logits", lambda access, resid: real(access, resid) + 1.0)
    with pytest.raises(ValueError, match="differ from the model's logits"):
        ih.score_heads(models["gpt2"], task.prompts(3, 2, seed=20), methods=("attribution",))


def test_split_half_self_agreement_separates_signal_from_noise():
    gen = torch.Generator().manual_seed(0)
    signal = torch.arange(10, dtype=torch.float)
    clean = signal + 0.01 * torch.randn(64, 10, generator=gen)
    noisy = 0.01 * signal + torch.randn(64, 10, generator=gen)
    assert split_half_spearman(clean) > 0.99
    assert abs(split_half_spearman(noisy)) < 0.5
    assert split_half_spearman(clean[:3]) != split_half_spearman(clean[:3])  # NaN: too few prompts
    se, resolved = resolved_from_zero(torch.stack([clean[:, 0] - 0.0, clean[:, 9]], 1))
    torch.testing.assert_close(torch.tensor(se), clean[:, [0, 9]].double().std(0) / 8)
    assert resolved.tolist() == [False, True]


def test_agreement_reports_the_exact_scores_own_noise(models, task):
    agreement = ih.compare_head_scores(models["llama"], task.prompts(12, 2, seed=23), k=2)
    per_head = agreement.df.set_index("name")
    assert (per_head.resolved == (per_head.exact.abs() > 2 * per_head.exact_se)).all()
    assert -1 <= agreement.exact_self_spearman <= 1
    if agreement.df.resolved.sum() < len(agreement.df):
        assert any("resolved from zero" in w for w in agreement.warnings)
    assert "exact split-half self-agreement" in agreement.summary()


def _organism_samples(name: str, n_samples: int = 4, n: int = 64):
    """The estimate (4 largest re-scored) against the exact score on disjoint prompt samples of one organism."""
    model = ih.load_model(name)
    task = ih.organism_task(seed=21, layout=ORGANISMS[name])
    return [ih.compare_head_scores(model, task.prompts(n, 4, seed=100 + i), rescore=4, k=3) for i in range(n_samples)]


@pytest.fixture(scope="module", params=list(ORGANISMS))
def organism_agreements(request):
    return request.param, _organism_samples(request.param)


@pytest.mark.slow
def test_the_exact_score_does_not_reproduce_its_own_ranking_of_all_heads(organism_agreements):
    # why the all-heads must-hold is out of reach: most heads' exact effects are sampling noise around zero
    _, samples = organism_agreements
    exact = [torch.tensor(a.df.sort_values(["layer", "head"]).exact.values) for a in samples]
    across = [float(spearmanr(exact[i], exact[j]).statistic) for i in range(4) for j in range(i + 1, 4)]
    assert sum(across) / len(across) < 0.8, across
    assert sum(a.exact_self_spearman for a in samples) / len(samples) < 0.9
    assert all(a.df.resolved.sum() < 24 and any("resolved from zero" in w for w in a.warnings) for a in samples)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ORGANISMS))
def test_the_linear_estimate_misses_the_layer_0_heads_that_matter(name):
    # the heads with the largest exact effect act through saturated downstream attention: the gradient is ~0
    model = ih.load_model(name)
    task = ih.organism_task(seed=21, layout=ORGANISMS[name])
    plain = ih.compare_head_scores(model, task.prompts(64, 4, seed=100), k=3)
    top = plain.df.sort_values("rank_exact").iloc[0]
    assert top.layer == 0 and abs(top.estimate) < 0.25 * top.exact


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="not met: see docs/methods.md, 'Where the linear estimate fails'")
def test_must_hold_spearman_and_top_heads_on_every_prompt_sample(organism_agreements):
    # the must-hold, on every one of four disjoint 64-prompt samples: Spearman >= 0.9 over all 24 heads
    # and the exact score's top-1 head and top-3 set found by the estimate
    name, samples = organism_agreements
    for a in samples:
        assert len(a.df) == 24
        assert a.spearman >= 0.9 and a.same_top_head and a.top_k_overlap == 1.0, (name, a.summary())
