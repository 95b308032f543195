"""The validation models' ground truth, checked with raw TransformerLens hooks and explicit loops.

Nothing here calls the analyses being validated: accuracy, ablation and attention
are computed directly from hook_z / hook_v / hook_pattern, so these tests state what
the models do, and the analyses are then judged against it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import icl_heads as ih
from icl_heads.validation import MODELS, ground_truth, validation_task

N_HEADS = 32


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return {name: ih.load_model(f"validation:{name}") for name in MODELS}


def _tokens(model, prompts) -> torch.Tensor:
    ids = [model.tokenizer(t)["input_ids"] for t in prompts.texts()]
    assert len({len(i) for i in ids}) == 1, "one-word texts give prompts of one length"
    return torch.tensor(ids)


def _margin(model, tokens, hooks=()) -> torch.Tensor:
    """logit(foo) - logit(bar) at the last position, under raw forward hooks."""
    foo, bar = model.tokenizer.convert_tokens_to_ids(["foo", "bar"])
    with torch.inference_mode():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[:, -1]
    return logits[:, foo] - logits[:, bar]


def _accuracy(model, tokens, golds, hooks=()) -> float:
    pred = (_margin(model, tokens, hooks) <= 0).long()  # ties go to foo (class 0), as argmax does
    return float((pred == golds).float().mean())


def _zero(layer: int, head: int):
    def hook(z, hook):
        z[:, :, head] = 0.0
        return z

    return (f"blocks.{layer}.attn.hook_z", hook)


def _sample(name: str, n: int = 100, seed: int = 0, **kw):
    prompts = validation_task(name).prompts(n=n, shots=4, seed=seed, **kw)
    return prompts, torch.tensor([p.gold for p in prompts.prompts])


@pytest.mark.parametrize("name", ["sparse", "redundant", "after_label", "deep"])
def test_planted_heads_are_necessary_and_no_other_head_matters(models, name):
    model, truth = models[name], ground_truth(name)
    prompts, golds = _sample(name)
    tokens = _tokens(model, prompts)
    assert _accuracy(model, tokens, golds) == 1.0
    assert _accuracy(model, tokens, golds, [_zero(*h) for h in truth.heads]) == pytest.approx(0.5, abs=0.05)
    for layer in range(truth.n_layers):
        for head in range(N_HEADS):
            if (layer, head) not in truth.heads:
                assert _accuracy(model, tokens, golds, [_zero(layer, head)]) > 0.99, (layer, head)


def test_redundant_heads_are_each_sufficient(models):
    model, truth = models["redundant"], ground_truth("redundant")
    prompts, golds = _sample("redundant")
    tokens = _tokens(model, prompts)
    for head in truth.heads:
        assert _accuracy(model, tokens, golds, [_zero(*head)]) == 1.0


def test_labels_come_from_the_demonstrations(models):
    """Swapped label words: the model follows the demonstrations, so nothing maps a class to a label."""
    model = models["sparse"]
    prompts = validation_task("sparse", label_words=("bar", "foo")).prompts(n=100, shots=4, seed=1)
    golds = torch.tensor([p.gold for p in prompts.prompts])
    assert _accuracy(model, _tokens(model, prompts), 1 - golds) == 1.0  # class 0 is shown as bar now


@pytest.mark.parametrize(("name", "token"), [("sparse", "foo bar"), ("after_label", "\n")])
def test_the_planted_head_reads_its_role(models, name, token):
    """Attention from the last position sits on the read role, and its values there carry the whole answer."""
    model, (layer, head) = models[name], ground_truth(name).heads[0]
    prompts, _ = _sample(name)
    tokens = _tokens(model, prompts)
    ids = torch.tensor(model.tokenizer.convert_tokens_to_ids(token.split(" ") if token != "\n" else ["\n"]))
    at_role = torch.isin(tokens, ids)
    at_role[:, -1] = False
    store = {}

    def keep(pattern, hook):
        store["pattern"] = pattern[:, head, -1].clone()

    _margin(model, tokens, [(f"blocks.{layer}.attn.hook_pattern", keep)])
    assert (store["pattern"] * at_role).sum(1).min() > 0.99

    def zero_values(where):
        def hook(v, hook):
            v[:, :, head] = v[:, :, head] * ~where[:, :, None]
            return v

        return (f"blocks.{layer}.attn.hook_v", hook)

    clean = _margin(model, tokens)
    assert (_margin(model, tokens, [zero_values(at_role)]).abs() < 0.05 * clean.abs()).all()
    torch.testing.assert_close(_margin(model, tokens, [zero_values(~at_role)]), clean, rtol=0.05, atol=0.0)


def test_deep_head_acts_only_through_the_later_attention(models):
    """L1H12 writes nothing the unembedding reads; its effect vanishes once L2H3's attention is frozen."""
    model, truth = models["deep"], ground_truth("deep")
    (l1, h1), (l2, h2) = truth.heads
    prompts, golds = _sample("deep")
    tokens = _tokens(model, prompts)
    store = {}

    def keep_z(z, hook):
        store["z"] = z[:, -1, h1].clone()

    def keep_pattern(pattern, hook):
        store["pattern"] = pattern[:, h2].clone()

    _margin(model, tokens, [(f"blocks.{l1}.attn.hook_z", keep_z), (f"blocks.{l2}.attn.hook_pattern", keep_pattern)])
    foo, bar = model.tokenizer.convert_tokens_to_ids(["foo", "bar"])
    with torch.inference_mode():
        direct = store["z"] @ model.W_O[l1, h1] @ (model.W_U[:, foo] - model.W_U[:, bar])
    assert direct.abs().max() < 1e-4

    def frozen(pattern, hook):
        pattern[:, h2] = store["pattern"]
        return pattern

    assert _accuracy(model, tokens, golds, [_zero(l1, h1), (f"blocks.{l2}.attn.hook_pattern", frozen)]) == 1.0


@pytest.mark.parametrize(
    ("name", "kw", "truth_of"),
    [
        # majority: a weak query whose class is the minority is answered with the majority label
        ("majority", {"counts": (1, 3), "gold": 0}, lambda weak: 1.0 - weak),
        ("majority", {"counts": (2, 2)}, lambda weak: torch.ones_like(weak)),
        # recency: a weak query follows the last block of demonstrations, whatever its class
        ("recency", {"order": "blocked", "gold": 1}, lambda weak: torch.ones_like(weak)),
        ("recency", {"order": "blocked", "gold": 0}, lambda weak: 1.0 - weak),
    ],
)
def test_planted_bias_decides_exactly_the_weak_queries(models, name, kw, truth_of):
    """Which queries the planted bias flips, prompt by prompt; the true bias sizes follow from the weak share."""
    model, truth = models[name], ground_truth(name)
    prompts = validation_task(name).prompts(n=120, shots=4, seed=2, **kw)
    golds = torch.tensor([p.gold for p in prompts.prompts])
    weak = torch.tensor([float(p.query in truth.weak_words) for p in prompts.prompts])
    assert 0 < weak.mean() < 1
    correct = ((_margin(model, _tokens(model, prompts)) <= 0).long() == golds).float()
    torch.testing.assert_close(correct, truth_of(weak))
    share = len(truth.weak_words) / len(validation_task(name).texts)
    true = {"majority": share / 2, "recency": share}[name]  # see GroundTruth: excess rate / block gap
    assert (truth.majority_bias if name == "majority" else truth.recency_bias) == pytest.approx(true)


# ---- the analyses against the ground truth ---------------------------------------------------------------------
OPTIONS = ih.RunOptions(progress=False)


def _verdict(found) -> str:
    from icl_heads.verdicts import collect_verdicts

    return next(v.state for v in collect_verdicts({"heads": found}) if v.claim == "a few heads carry ICL")


@pytest.mark.parametrize("method", ["ablation", "logprob_increase"])
def test_finder_top_one_percent_is_the_planted_head_on_sparse(models, method):
    truth = ground_truth("sparse")
    task = validation_task("sparse")
    found = ih.find_in_context_heads(
        models["sparse"], task.prompts(n=48, shots=4, seed=3), method=method, also=(),
        verify_prompts=task.prompts(n=48, shots=4, seed=4), options=OPTIONS,
    )  # fmt: skip
    assert found.heads == truth.heads
    assert found.ablated_accuracy.value == pytest.approx(0.5, abs=0.05)
    assert found.random_ablated_accuracy.value > 0.99
    assert _verdict(found) == "holds"


def test_random_sets_never_hold_the_planted_head_so_the_claim_holds_after_the_label(models):
    """With 20 random one-head sets from all 64 heads, seed 0 draws the planted head itself; drawn from the others, never."""
    truth, task = ground_truth("after_label"), validation_task("after_label")
    found = ih.find_in_context_heads(
        models["after_label"], task.prompts(n=48, shots=4, seed=0), also=(), options=OPTIONS
    )
    assert found.heads == truth.heads
    assert found.random_ablated_accuracy.value > 0.99
    assert _verdict(found) == "holds"


def test_heads_needed_finds_exactly_the_redundant_pair(models):
    model, truth, task = models["redundant"], ground_truth("redundant"), validation_task("redundant")
    found = ih.find_in_context_heads(model, task.prompts(n=48, shots=4, seed=3), also=(), options=OPTIONS)
    assert _verdict(found) != "holds"  # one of two backup heads: ablating it changes nothing
    count = ih.heads_needed(model, task.prompts(n=48, shots=4, seed=4), found, n_random=2, options=OPTIONS)
    assert count.k_greedy == 2
    assert set(count.greedy_heads) == set(truth.heads)


def test_reading_roles_and_mechanism_read_after_the_label(models):
    model, truth = models["after_label"], ground_truth("after_label")
    prompts = validation_task("after_label").prompts(n=32, shots=4, seed=3)
    reads = ih.reading_roles(model, prompts, options=OPTIONS).reads(list(truth.heads))
    assert list(reads.read_at) == ["after_label"] == [truth.read_at]
    assert list(reads.role) == ["after_label"]
    ov = ih.ov_label_features(model, prompts, list(truth.heads), options=OPTIONS).summary()
    qk = ih.qk_label_attention(model, prompts, list(truth.heads), options=OPTIONS).summary()
    assert ov["read at"] == qk["read at"] == "after_label"
    assert ov["L1H9: label positions promoting their label"] == 1.0


def test_attribution_misses_the_deep_head_that_ablation_finds(models):
    """L1H12 acts through L2H3's attention (saturated softmax): first-order attribution sees almost nothing."""
    from icl_heads.recovery import head_recovery

    truth = ground_truth("deep")
    prompts = validation_task("deep").prompts(n=32, shots=4, seed=3)
    scores = ih.score_heads(models["deep"], prompts, methods=("ablation", "attribution", "dla"), options=OPTIONS)
    ablation = head_recovery(scores["ablation"].mean(0), truth.heads)
    assert ablation["precision"] == 1.0 and ablation["auroc"] == 1.0
    for method in ("attribution", "dla"):
        assert head_recovery(scores[method].mean(0), truth.heads)["missed"] == ["L1H12"]


def test_head_recovery_scores_a_hand_made_ranking():
    from icl_heads.recovery import head_recovery

    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.0]])
    got = head_recovery(scores, [(0, 0), (1, 2)])
    assert got["auroc"] == pytest.approx(4 / 8)  # of 2 x 4 pairs, (0, 0) wins all four and (1, 2) none
    assert got["precision"] == 0.5 and got["recovered"] == ["L0H0"] and got["missed"] == ["L1H2"]
    with pytest.raises(ValueError, match="some but not all"):
        head_recovery(scores, [])


@pytest.mark.parametrize("name", ["majority", "recency"])
def test_bias_interval_covers_the_planted_bias(models, name):
    truth, task = ground_truth(name), validation_task(name)
    if name == "majority":
        est, true = ih.majority_bias(models[name], task, n=120, seed=5, options=OPTIONS).bias, truth.majority_bias
    else:
        rb = ih.recency_bias(models[name], task, n=120, seed=5, heads=list(truth.heads), options=OPTIONS)
        est, true = rb.block_gap, truth.recency_bias
    assert est.low <= true <= est.high
    assert est.high - est.low < 0.25  # informative, not merely wide


@pytest.mark.slow
@pytest.mark.parametrize("name", ["majority", "recency"])
def test_targeting_correction_removes_the_planted_bias(models, name):
    truth, task = ground_truth(name), validation_task(name)
    kind = "majority" if truth.majority_bias is not None else "recency"
    correct = ih.correct_majority_bias if kind == "majority" else ih.correct_recency_bias
    fix = correct(models[name], task, method=truth.corrections[kind], heads=list(truth.heads), options=OPTIONS)
    summary = fix.summary()
    assert summary["reduction %"].value >= 80
    assert summary["balanced accuracy before"] - summary["balanced accuracy after"] <= 0.01


@pytest.mark.slow
def test_bias_intervals_cover_the_truth_in_18_of_20_seeds():
    from icl_heads.recovery import recovery_table

    table = recovery_table(["majority", "recency"], seeds=20)
    coverage = table[table.check.str.contains("covers")]
    assert len(coverage) == 2
    assert coverage.ok.all(), coverage.to_string()


def test_cli_takes_a_validation_model_and_its_task():
    import argparse

    from icl_heads._cli_inputs import load_task, resolve_model
    from icl_heads._cli_output import UsageError

    ref, tokenizer, n_ctx = resolve_model("validation:sparse")
    assert Path(ref).name.startswith("sparse-") and (Path(ref) / "config.json").exists()
    assert tokenizer.convert_tokens_to_ids("foo") != tokenizer.unk_token_id and n_ctx == 256
    args = argparse.Namespace(
        data=None, task="validation:sparse", classes=None, label_words=None, seed=0, template=None
    )
    task, _ = load_task(args)
    assert task.label_words == ("foo", "bar") and len(task.texts) == 20
    with pytest.raises(UsageError, match="unknown validation model"):
        load_task(
            argparse.Namespace(data=None, task="validation:nope", classes=None, label_words=None, seed=0, template=None)
        )
