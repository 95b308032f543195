"""The validation models' ground truth, checked with raw TransformerLens hooks and explicit loops.

Nothing here calls the analyses being validated: accuracy, ablation and attention
are computed directly from hook_z / hook_v / hook_pattern, so these tests state what
the models do, and the analyses are then judged against it.
"""

from __future__ import annotations

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
