import pytest
import torch

import icl_heads as ih
from icl_heads.heads import random_head_sets
from icl_heads.options import RunOptions
from icl_heads.scoring import n_selected, top_heads
from icl_heads.testing import majority_copier_gpt2_dir, toy_task


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    return ih.load_model(majority_copier_gpt2_dir(tmp_path_factory.mktemp("copier") / "m"))


@pytest.fixture(scope="module")
def majority_prompts():
    task = toy_task()
    # gold is always the majority label of the demonstrations: the copier head is right
    a = task.prompts(12, 4, seed=1, counts=(3, 1), gold=0)
    b = task.prompts(12, 4, seed=2, counts=(1, 3), gold=1)
    return ih.ICLPrompts(prompts=a.prompts + b.prompts, task=task)


def test_hand_built_copier_is_found_by_every_method(copier, majority_prompts):
    scores = ih.score_heads(copier, majority_prompts, methods=("logprob_increase", "dla", "ablation"))
    for method, per_prompt in scores.items():
        mean = per_prompt.mean(0)
        assert top_heads(mean, 1) == ((1, 0),), method
        assert mean[1, 0] > 0.5, method
        others = torch.ones_like(mean, dtype=torch.bool)
        others[1, 0] = False
        # heads that write nothing have exactly zero effect under every method
        torch.testing.assert_close(mean[others], torch.zeros(3), atol=1e-6, rtol=0)


def test_copier_scores_are_negative_when_gold_is_the_minority(copier):
    prompts = toy_task().prompts(16, 4, seed=3, counts=(1, 3), gold=0)
    scores = ih.score_heads(copier, prompts)
    assert scores["logprob_increase"].mean(0)[1, 0] < 0
    assert scores["dla"].mean(0)[1, 0] < 0


def test_find_and_verify_on_hand_built_model(copier, majority_prompts):
    found = ih.find_in_context_heads(copier, majority_prompts, k=1, n_random=12)
    assert found.heads == ((1, 0),)
    v = found.verification.set_index("condition")
    assert v.loc["none", "accuracy"] == 1.0
    # without the only label-carrying head, the model cannot tell the labels apart
    assert v.loc["found heads", "accuracy"] <= 0.5
    assert v.loc["found heads", "accuracy"] < v.loc["random heads", "accuracy"]
    assert 0 < v.loc["found heads", "rank_p"] <= 1
    assert len(found.random_accuracies) == 12


def test_scores_do_not_depend_on_batch_size_or_padding(any_model, task, fresh):
    prompts = task.prompts(14, 3, seed=5)
    ref = ih.score_heads(any_model, prompts, options=RunOptions(batch_size=14))
    for bs, side in [(1, "right"), (7, "left"), (4, "left")]:
        got = ih.score_heads(any_model, prompts, options=RunOptions(batch_size=bs, padding_side=side))
        for m in ref:
            torch.testing.assert_close(got[m], ref[m], atol=1e-5, rtol=1e-5)


def test_ablation_scores_do_not_depend_on_heads_per_pass(any_model, task, fresh):
    prompts = task.prompts(6, 2, seed=6)
    one = ih.score_heads(any_model, prompts, methods=("ablation",), heads_per_pass=1)["ablation"]
    many = ih.score_heads(any_model, prompts, methods=("ablation",), heads_per_pass=5)["ablation"]
    torch.testing.assert_close(one, many, atol=1e-5, rtol=1e-5)


def test_result_round_trip_and_figures(copier, majority_prompts, tmp_path):
    found = ih.find_in_context_heads(copier, majority_prompts, k=1, n_random=4, also=("dla", "ablation"))
    path = found.save(tmp_path / "found")
    back = ih.heads.InContextHeads.load(path)
    assert back.heads == found.heads and back.heads_by_label == found.heads_by_label
    torch.testing.assert_close(back.scores["dla:foo"], found.scores["dla:foo"])
    assert back.df.equals(found.df) or (back.df.values == found.df.values).all()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        found.save(path)
    fig = found.heatmap(method="dla", label="bar")
    assert fig.layout.title.text and fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.title.text == "layer"
    assert "L1H0" in fig.data[0].text[1][0]
    assert fig.data[0].zmid == 0
    bars = found.plot_verification()
    assert list(bars.data[0].x) == found.verification.condition.tolist()
    assert "<table>" in found._repr_html_()


def test_selection_arguments():
    assert n_selected(1024, 0.01, None) == 10
    assert n_selected(24, 0.01, None) == 1
    assert n_selected(24, None, 3) == 3
    with pytest.raises(ValueError, match="between 1 and"):
        n_selected(24, None, 25)
    with pytest.raises(ValueError, match="fraction must be"):
        n_selected(24, 1.5, None)
    sets = random_head_sets(3, 8, 2, 5, seed=0)
    assert all(len(set(s)) == 2 for s in sets) and sets == random_head_sets(3, 8, 2, 5, seed=0)
    tested = [(0, 1), (2, 5), (1, 0)]
    others = random_head_sets(3, 8, 2, 200, seed=1, exclude=tested)
    assert not any(h in tested for s in others for h in s)  # the tested heads are never a random draw
    assert len({h for s in others for h in s}) == 24 - 3  # every other head can be drawn
    plain = random_head_sets(3, 8, 2, 200, seed=1)
    kept = [o == p for o, p in zip(others, plain, strict=True) if not set(p) & set(tested)]
    assert kept and all(kept)  # sets that miss the tested heads are the plain draw's (shared across analyses)
    crowded = random_head_sets(2, 2, 3, 4, seed=0, exclude=[(0, 0), (0, 1), (1, 0)])
    assert all(len(set(s)) == 3 and (1, 1) in s for s in crowded)  # the one head outside, then tested ones


def test_unknown_method_is_refused(copier, majority_prompts):
    with pytest.raises(ValueError, match="choose from"):
        ih.find_in_context_heads(copier, majority_prompts, method="magic")


def test_ablate_context_manager_matches_hooks(any_model, task):
    access = ih.access.ModelAccess(any_model)
    tp = access.tokenize(task.prompts(4, 2, seed=7))
    batch = next(access.batches(tp, 4, "left"))
    heads = [(0, 1), (1, 2)]
    with torch.inference_mode(), ih.ablate(any_model, heads):
        inside = any_model(batch.tokens, attention_mask=batch.attention_mask)[:, -1]
    via_hooks, _ = access.run(batch, hooks=ih.interventions.ablation(any_model, heads))
    torch.testing.assert_close(inside.float(), via_hooks, atol=1e-5, rtol=1e-5)
    plain, _ = access.run(batch)
    assert not torch.allclose(plain, via_hooks)


def test_final_position_ablation_only_touches_the_final_position(copier, majority_prompts):
    access = ih.access.ModelAccess(copier)
    batch = next(access.batches(access.tokenize(majority_prompts), 8))
    from icl_heads.access import Capture

    name = access.hook(1, "z")
    _, plain = access.run(batch, capture=[Capture(name, "all")])
    _, ablated = access.run(
        batch, hooks=ih.interventions.ablation(copier, [(1, 0)], where="final"), capture=[Capture(name, "all")]
    )
    rows = torch.arange(8)
    assert (ablated[name][rows, batch.final_positions, 0] == 0).all()
    keep = torch.ones_like(ablated[name][..., 0], dtype=torch.bool)
    keep[rows, batch.final_positions] = False
    torch.testing.assert_close(ablated[name][..., 0][keep], plain[name][..., 0][keep])


def test_mean_ablation_needs_reference_and_uses_it(copier, majority_prompts):
    with pytest.raises(ValueError, match="reference"):
        ih.interventions.ablation(copier, [(1, 0)], how="mean")
    with pytest.raises(ValueError, match="outside the model"):
        ih.interventions.ablation(copier, [(5, 0)])
    abl = ih.interventions.ablation(copier, [(1, 0)], how="mean", reference=majority_prompts)
    assert abl.means.shape == (2, 2, 8) and abl.means[1, 0].abs().sum() > 0
    acc = ih.icl_accuracy(copier, majority_prompts, hooks=abl).accuracy
    assert acc <= 0.75


@pytest.mark.slow
def test_organism_heads_carry_icl(organism):
    task = ih.organism_task(seed=21)
    scoring, held_out = task.prompts(200, 4, seed=22), task.prompts(300, 4, seed=23)
    base = ih.icl_accuracy(organism, held_out).accuracy
    assert base >= 0.95
    # a few heads carry ICL: one head's ablation brings accuracy near chance, the median head costs nothing
    access = ih.access.ModelAccess(organism)
    drops = sorted(
        base - ih.icl_accuracy(organism, held_out, hooks=ih.interventions.HeadAblation(((layer, head),))).accuracy
        for layer in range(access.n_layers)
        for head in range(access.n_heads)
    )
    assert drops[-1] >= 0.3 and drops[len(drops) // 2] <= 0.02
    # the ablation score's top heads hurt far more than random heads of the same number
    found = ih.find_in_context_heads(organism, scoring, method="ablation", k=2, also=(), verify_prompts=held_out)
    v = found.verification.set_index("condition")
    assert v.loc["found heads", "accuracy"] <= 0.8
    assert v.loc["found heads", "accuracy"] < v.loc["random heads", "ci_low"]
    # the label writers found by logprob_increase are redundant: together they bring accuracy to chance
    writers = ih.find_in_context_heads(organism, scoring, k=8, verify_prompts=held_out, n_random=20)
    w = writers.verification.set_index("condition")
    assert w.loc["found heads", "accuracy"] <= 0.6 < w.loc["random heads", "accuracy"]
    assert {layer for layer, _ in writers.heads} == {1}
