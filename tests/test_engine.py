"""The batch engine: run options, the loop over batches, and the cost ledger."""

from __future__ import annotations

import contextlib
import math

import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.engine import CostLedger, count_cost
from icl_heads.models import transformer_lens_major
from icl_heads.options import RunOptions, run_options
from icl_heads.testing import toy_task

MODEL_KINDS = ["gpt2", "llama"] + (["native"] if transformer_lens_major() >= 4 else [])


@pytest.fixture(scope="module")
def task():
    return toy_task()


def test_run_options_refuse_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        RunOptions(batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        RunOptions(batch_size=-4)
    with pytest.raises(ValueError, match="padding_side"):
        RunOptions(padding_side="middle")
    assert run_options(RunOptions(batch_size=4), batch_size=None, progress=True) == RunOptions(4, "right", True)


@pytest.mark.parametrize("batch_size", [3, 8])
def test_ledger_counts_every_pass_row_token_and_layer(models, task, batch_size, fresh):
    model = models["gpt2"]
    prompts = task.prompts(10, 2, seed=100 + batch_size)  # fresh prompts: nothing to reuse
    access = ModelAccess(model)
    tp = access.tokenize(prompts)
    with count_cost() as ledger:
        ih.icl_accuracy(model, prompts, options=RunOptions(batch_size=batch_size))
    total = ledger.total
    assert total.passes == math.ceil(10 / batch_size)
    assert total.rows == 10
    # prompts are batched by length; a batch is padded to its longest prompt
    lengths = sorted(map(len, tp.tokens))
    chunks = [lengths[s : s + batch_size] for s in range(0, len(lengths), batch_size)]
    expected_tokens = sum(len(c) * max(c) for c in chunks)
    assert total.tokens == expected_tokens
    assert expected_tokens <= sum(len(b.tokens) * b.tokens.shape[1] for b in access.batches(tp, batch_size, "right"))
    assert total.layer_tokens == expected_tokens * model.cfg.n_layers
    assert list(ledger.df.section) == ["total"]


def test_ledgers_nest_and_split_by_section(models, task, fresh):
    model = models["gpt2"]
    prompts = task.prompts(6, 2, seed=9001)
    outer = CostLedger()
    with count_cost(outer):
        with outer.section("first"):
            ih.icl_accuracy(model, prompts, options=RunOptions(batch_size=6))
        with count_cost() as inner, outer.section("second"):
            ih.icl_accuracy(model, task.prompts(6, 2, seed=9011), options=RunOptions(batch_size=3))
    assert outer.sections["first"].passes == 1
    assert outer.sections["second"].passes == 2
    assert inner.total.passes == 2 and inner.total.rows == 6
    assert outer.total.rows == 12
    assert outer.as_dict()["total"]["passes"] == 3
    assert list(outer.df.section) == ["first", "second", "total"]


def test_no_ledger_no_cost(models, task):
    with count_cost() as ledger:
        pass
    ih.icl_accuracy(models["gpt2"], task.prompts(4, 2, seed=9002))
    assert ledger.total.passes == 0


def test_same_prompts_and_intervention_run_once(models, task):
    """A random head set drawn again, or a clean run repeated, reuses the earlier predictions exactly."""
    model = models["gpt2"]
    heads = [(1, 0), (0, 2)]
    with count_cost() as ledger:
        a = ih.icl_accuracy(
            model,
            task.prompts(12, 2, seed=9003),
            hooks=ih.interventions.ablation(model, heads),
            options=RunOptions(batch_size=4),
        )
        b = ih.icl_accuracy(
            model,
            task.prompts(12, 2, seed=9003),
            hooks=ih.interventions.ablation(model, heads[::-1]),
            options=RunOptions(batch_size=6),
        )
    assert ledger.total.passes == 3  # the second call (same heads, other order and batch size) ran nothing
    assert torch.equal(a.label_logits, b.label_logits)
    with count_cost() as ledger:
        ih.icl_accuracy(
            model,
            task.prompts(12, 2, seed=9003),
            hooks=ih.interventions.ablation(model, heads[:1]),
            options=RunOptions(batch_size=4),
        )
        ih.icl_accuracy(
            model,
            task.prompts(12, 2, seed=9004),
            hooks=ih.interventions.ablation(model, heads),
            options=RunOptions(batch_size=4),
        )
    assert ledger.total.passes == 6  # another intervention, other prompts: both run


def test_nothing_is_reused_under_temporary_hooks_or_after_weights_change(models, task):
    model = models["llama"]
    prompts = task.prompts(8, 2, seed=9005)
    clean = ih.icl_accuracy(model, prompts).label_logits
    with ih.ablate(model, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        ablated = ih.icl_accuracy(model, prompts).label_logits
    assert not torch.allclose(clean, ablated)
    hooks = ih.interventions.ablation(model, [(0, 0)])
    first = ih.icl_accuracy(model, prompts, hooks=hooks).label_logits
    w = model.blocks[1].mlp.W_out if hasattr(model.blocks[1].mlp, "W_out") else None
    param = next(model.parameters()) if w is None else w
    with torch.no_grad():
        param.mul_(1.5)
    try:
        changed = ih.icl_accuracy(model, prompts, hooks=hooks).label_logits
    finally:
        with torch.no_grad():
            param.div_(1.5)
    assert not torch.allclose(first, changed)
    assert torch.allclose(ih.icl_accuracy(model, prompts, hooks=hooks).label_logits, first, atol=1e-5)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_a_pass_resumes_at_its_first_hooked_layer_with_the_same_logits(models, task, kind):
    """After a clean pass, ablating a layer-1 head runs only the layers from 1 on, and gives the same logits."""
    from icl_heads.engine import no_reuse

    model = models[kind]
    prompts = task.prompts(10, 2, seed=9021)
    hooks = ih.interventions.ablation(model, [(1, 0), (1, 2)])
    with count_cost() as ledger:
        # clean: keeps the residual entering every block
        ih.icl_accuracy(model, prompts, options=RunOptions(batch_size=4))
        resumed = ih.icl_accuracy(model, prompts, hooks=hooks, options=RunOptions(batch_size=4)).label_logits
    n_layers, tokens = model.cfg.n_layers, ledger.total.tokens // 2  # each call runs the same padded tokens
    assert ledger.total.layer_tokens == tokens * n_layers + tokens * (n_layers - 1)
    with no_reuse(), count_cost() as full_ledger:  # computed afresh, every pass in full
        full = ih.icl_accuracy(model, prompts, hooks=hooks, options=RunOptions(batch_size=5))
    assert full_ledger.total.passes == 2 and full_ledger.total.layer_tokens == full_ledger.total.tokens * n_layers
    torch.testing.assert_close(resumed, full.label_logits, atol=1e-5, rtol=1e-5)
    clean = ih.icl_accuracy(model, prompts, options=RunOptions(batch_size=4)).label_logits
    assert (resumed - clean).abs().max() > 1e-3  # it ablates


def test_nothing_is_kept_under_temporary_hooks(models, task):

    model = models["llama"]
    prompts = task.prompts(6, 2, seed=9022)
    with ih.ablate(model, [(0, 0)]):
        ih.icl_accuracy(model, prompts)
    with count_cost() as ledger:
        ih.icl_accuracy(model, prompts, hooks=ih.interventions.ablation(model, [(1, 1)]))
    assert ledger.total.layer_tokens == ledger.total.tokens * model.cfg.n_layers  # ran in full


@pytest.mark.tl4
def test_a_model_that_does_not_resume_exactly_always_runs_in_full(tmp_path, task):
    """Bloom's embedding LayerNorm is applied to a resumed residual too: the probe sees it and nothing is skipped."""
    from icl_heads._resume import support
    from icl_heads.testing import tiny_family_dir

    model = ih.load_model(tiny_family_dir("bloom", tmp_path / "bloom"))
    assert not support(ModelAccess(model)).resume
    prompts = task.prompts(6, 2, seed=9023)
    with count_cost() as ledger:
        ih.icl_accuracy(model, prompts, options=RunOptions(batch_size=6))
        ih.icl_accuracy(
            model, prompts, hooks=ih.interventions.ablation(model, [(1, 0)]), options=RunOptions(batch_size=6)
        )
    assert ledger.total.layer_tokens == ledger.total.tokens * model.cfg.n_layers


def test_ablation_drops_are_computed_once_per_batch_and_head(models, task):
    model = models["gpt2"]
    prompts = task.prompts(8, 2, seed=9031)
    with count_cost() as first:
        a = ih.score_heads(model, prompts, methods=("ablation",), options=RunOptions(batch_size=4))
    with count_cost() as again:
        b = ih.score_heads(
            model, task.prompts(8, 2, seed=9031), methods=("ablation",), options=RunOptions(batch_size=4)
        )
    assert first.total.passes > 0 and again.total.passes == 0
    assert torch.equal(a["ablation"], b["ablation"])


def test_reuse_changes_no_result(models, task):
    """Analyses read back and resumed give what they give computed afresh."""
    from icl_heads.engine import no_reuse

    model = models["llama"]
    prompts = task.prompts(10, 2, seed=9041)
    runs = []
    for fresh in (True, False, False):
        ctx = no_reuse() if fresh else contextlib.nullcontext()
        with ctx, count_cost() as ledger:
            curve = ih.ablation_curve(model, prompts, torch.arange(8.0).view(2, 4), ks=(1, 2), n_random=3, seed=9000)
            scores = ih.score_heads(model, prompts, methods=("ablation",), options=RunOptions(batch_size=5))["ablation"]
        runs.append((curve, scores, ledger.total.layer_tokens))
    (c0, s0, cost0), (c1, s1, cost1), (c2, s2, cost2) = runs
    pd.testing.assert_frame_equal(c0, c1, atol=1e-6)
    pd.testing.assert_frame_equal(c0, c2, atol=1e-6)
    torch.testing.assert_close(s0, s1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s0, s2)
    assert cost2 == 0 < cost1 <= cost0  # the third run reads everything back
