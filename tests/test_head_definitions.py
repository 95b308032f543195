"""Head definitions side by side: each score against a direct implementation, the cost bound, the planted head."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from icl_heads import _resume
from icl_heads.access import ModelAccess
from icl_heads.engine import count_cost
from icl_heads.head_definitions import (
    HeadDefinitions,
    compare_head_definitions,
    function_vector_scores,
    induction_scores,
    repeated_random_tokens,
    shuffled_labels,
)
from icl_heads.models import load_model
from icl_heads.options import RunOptions
from icl_heads.prompts import LabelTokenError
from icl_heads.results import load_result
from icl_heads.validation import validation_task


def _run(model, tokens: list[int], hooks=()):
    return model.run_with_hooks(torch.tensor([tokens]), fwd_hooks=list(hooks))[0, -1].float()


def _direct_aie(model, clean, corrupt, probs: str) -> torch.Tensor:
    """Todd et al.'s loop, one prompt at a time: mean hook_z over clean prompts, patched into each shuffled one."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    ids = torch.tensor(clean.label_token_ids)
    z_final: list[torch.Tensor] = []
    for tokens in clean.tokens:
        kept = {}

        def keep(layer, kept=kept):
            return lambda z, hook: kept.__setitem__(layer, z[0, -1].detach().clone())

        _run(model, tokens, [(f"blocks.{la}.attn.hook_z", keep(la)) for la in range(n_layers)])
        z_final.append(torch.stack([kept[la] for la in range(n_layers)]))
    mean = torch.stack(z_final).mean(0)

    def p_gold(logits, gold):
        return logits[ids].softmax(-1)[gold] if probs == "labels" else logits.softmax(-1)[ids[gold]]

    out = torch.zeros(len(corrupt), n_layers, n_heads)
    for i, (tokens, gold) in enumerate(zip(corrupt.tokens, corrupt.golds, strict=True)):
        base = p_gold(_run(model, tokens), gold)
        for layer in range(n_layers):
            for head in range(n_heads):

                def patch(z, hook, layer=layer, head=head):
                    z = z.clone()
                    z[0, -1, head] = mean[layer, head].to(z.dtype)
                    return z

                out[i, layer, head] = p_gold(_run(model, tokens, [(f"blocks.{layer}.attn.hook_z", patch)]), gold) - base
    return out


@pytest.mark.parametrize("probs", ["labels", "vocab"])
def test_function_vector_aie_equals_a_direct_loop_over_heads(any_model, task, probs, fresh):
    prompts = task.prompts(n=5, shots=4, seed=3)
    got = function_vector_scores(any_model, prompts, seed=1, probs=probs, options=RunOptions(batch_size=2))
    access = ModelAccess(any_model)
    clean, corrupt = access.tokenize(prompts), access.tokenize(shuffled_labels(prompts, 1))
    want = _direct_aie(any_model, clean, corrupt, probs)
    if probs == "labels":
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert want.abs().max() > 1e-4  # effects ten times the tolerance: the comparison is not 0 == 0
    else:  # a random model spreads ~1/vocab over every token: the effects are tiny, compared relative to their size
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-3)
        assert want.abs().max() > 1e-6


def test_function_vector_scores_do_not_depend_on_batch_size_or_padding(models, task, fresh):
    prompts = task.prompts(n=5, shots=4, seed=4)
    right = function_vector_scores(models["gpt2"], prompts, options=RunOptions(batch_size=5))
    left = function_vector_scores(models["gpt2"], prompts, options=RunOptions(batch_size=3, padding_side="left"))
    torch.testing.assert_close(left, right, atol=1e-6, rtol=0)


def test_shuffled_labels_permute_each_prompts_labels_and_keep_the_rest(task):
    prompts = task.prompts(n=40, shots=4, seed=0)
    shuffled = shuffled_labels(prompts, seed=0)
    moved = 0
    for a, b in zip(prompts.prompts, shuffled.prompts, strict=True):
        assert (a.query, a.gold) == (b.query, b.gold)
        assert [t for t, _ in a.demos] == [t for t, _ in b.demos]
        assert sorted(y for _, y in a.demos) == sorted(y for _, y in b.demos)
        moved += [y for _, y in a.demos] != [y for _, y in b.demos]
    assert moved > 20


def test_induction_score_equals_explicit_prefix_matching_attention(any_model, fresh):
    n_layers = any_model.cfg.n_layers
    got = induction_scores(any_model, n_seqs=3, length=7, seed=2, options=RunOptions(batch_size=2))
    tokens, start = repeated_random_tokens(any_model, 3, 7, seed=2)
    T = 7
    assert torch.equal(tokens[:, start : start + T], tokens[:, start + T :])
    assert all(len(set(row[start : start + T].tolist())) == T for row in tokens)
    want = torch.zeros(3, n_layers, any_model.cfg.n_heads)
    for s in range(3):
        pattern = {}

        def keep(layer, pattern=pattern):
            return lambda p, hook: pattern.__setitem__(layer, p[0].detach().float())

        hooks = [(f"blocks.{la}.attn.hook_pattern", keep(la)) for la in range(n_layers)]
        any_model.run_with_hooks(tokens[s : s + 1], fwd_hooks=hooks)
        for layer in range(n_layers):
            for j in range(
                T
            ):  # second copy's j-th token; its first occurrence is at start + j, followed by start + j + 1
                want[s, layer] += pattern[layer][:, start + T + j, start + j + 1] / T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_repeated_tokens_refuse_a_length_that_does_not_fit(models):
    with pytest.raises(ValueError, match="length must be between 2 and"):
        repeated_random_tokens(models["gpt2"], 2, 10_000)


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_function_vector_cost_is_at_most_one_plus_heads_passes_per_trial(models, task, batch_size, fresh):
    model = models["gpt2"]
    n, L, H = 5, model.cfg.n_layers, model.cfg.n_heads
    with count_cost() as ledger:
        function_vector_scores(model, task.prompts(n=n, shots=4, seed=0), options=RunOptions(batch_size=batch_size))
    n_batches = -(-n // batch_size)
    assert ledger.total.passes == n_batches * (1 + L * H) <= n * (1 + L * H)
    # the clean and shuffled prompts share the first pass of each batch: 2 rows per trial there, 1 per head after
    assert ledger.total.rows == n * (2 + L * H)


def test_function_vector_passes_resume_at_the_patched_layer(models, task):
    model = models["gpt2"]
    if not _resume.support(ModelAccess(model)).resume:
        pytest.skip("this TransformerLens cannot resume a pass at a layer")
    with count_cost() as ledger:
        function_vector_scores(model, task.prompts(n=4, shots=4, seed=5))
    total = ledger.total
    assert total.layer_tokens < total.tokens * model.cfg.n_layers  # the later layers' heads skip the earlier blocks


@pytest.fixture(scope="module")
def sparse():
    model = load_model("validation:sparse")
    with count_cost() as ledger:
        result = compare_head_definitions(model, validation_task("sparse"), n=32, n_trials=8, n_seqs=4, n_random=5)
    return result, ledger


def test_on_the_sparse_validation_model_the_in_context_definition_recovers_the_planted_head(sparse):
    result, ledger = sparse
    assert isinstance(result, HeadDefinitions)
    assert result.k == 1 and result.top["in_context"] == ((1, 17),)
    abl = result.ablation.set_index("condition")
    # the planted head ablated: chance (foo and bar tie); random single heads leave the model perfect
    assert abl.loc["in_context", "ci_high"] < abl.loc["in_context", "random_ci_low"]
    assert abl.loc["in_context", "n"] == 32 and abl.loc["in_context", "n_sets"] == 5
    cost = result.cost.set_index("definition").passes
    assert cost["function_vector"] == 1 + 2 * 32 and cost["induction"] == 1 and cost["in_context"] == 1
    assert ledger.total.passes == cost.sum()
    assert set(result.df.definition) == {"in_context", "function_vector", "induction"} and len(result.df) == 3 * 64
    assert len(result.overlap) == 3 and result.overlap.jaccard.between(0, 1).all()


def test_result_saves_reloads_and_draws(sparse, tmp_path):
    result, _ = sparse
    back = load_result(result.save(tmp_path / "defs"))
    assert back.top == result.top and back.summary() == result.summary()
    for name in ("df", "overlap", "ablation", "cost"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(result, name), check_exact=True)
    torch.testing.assert_close(back.scores["function_vector"], result.scores["function_vector"])
    assert len(result.plot().data) == 7 and len(result.plot_ablation().data) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, "k must be between 1"),
        ({"k": 9}, ValueError, "k must be between 1"),
        ({"n_trials": 0}, ValueError, "n_trials"),
        ({"shots": 1}, ValueError, "shots"),
        ({"n_random": 1}, ValueError, "n_random"),
        ({"method": "nope"}, ValueError, "unknown method"),
        ({"probs": "logits"}, ValueError, "probs must be one of"),
    ],
)
def test_bad_input_is_refused_before_any_pass(models, task, kwargs, error, match):
    with count_cost() as ledger, pytest.raises(error, match=match):
        compare_head_definitions(models["gpt2"], task, **kwargs)
    assert ledger.total.passes == 0


def test_label_words_the_model_lacks_are_refused_before_any_pass(models, task):
    with count_cost() as ledger, pytest.raises(LabelTokenError):
        compare_head_definitions(models["gpt2"], task.with_label_words(("xylophonequartz", "bar")))
    assert ledger.total.passes == 0
    with pytest.raises(TypeError, match="ICLTask"):
        compare_head_definitions(models["gpt2"], task.prompts(n=2, shots=4))
