"""The batch engine: run options, the loop over batches, and the cost ledger."""

from __future__ import annotations

import math

import pytest

import icl_heads as ih
from icl_heads.engine import CostLedger, RunOptions, count_cost, run_options
from icl_heads.models import ModelAccess
from icl_heads.testing import toy_task


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
def test_ledger_counts_every_pass_row_token_and_layer(models, task, batch_size):
    model = models["gpt2"]
    prompts = task.prompts(10, 2, seed=0)
    access = ModelAccess(model, check=False)
    tp = access.tokenize(prompts)
    with count_cost() as ledger:
        ih.icl_accuracy(model, prompts, batch_size=batch_size)
    total = ledger.total
    assert total.passes == math.ceil(10 / batch_size)
    assert total.rows == 10
    expected_tokens = sum(
        len(b.tokens) * b.tokens.shape[1] for b in access.batches(tp, batch_size, "right")
    )  # padded: each batch is as long as its longest prompt
    assert total.tokens == expected_tokens
    assert total.layer_tokens == expected_tokens * model.cfg.n_layers
    assert list(ledger.df.section) == ["total"]


def test_ledgers_nest_and_split_by_section(models, task):
    model = models["gpt2"]
    prompts = task.prompts(6, 2, seed=1)
    outer = CostLedger()
    with count_cost(outer):
        with outer.section("first"):
            ih.icl_accuracy(model, prompts, batch_size=6)
        with count_cost() as inner, outer.section("second"):
            ih.icl_accuracy(model, prompts, batch_size=3)
    assert outer.sections["first"].passes == 1
    assert outer.sections["second"].passes == 2
    assert inner.total.passes == 2 and inner.total.rows == 6
    assert outer.total.rows == 12
    assert outer.as_dict()["total"]["passes"] == 3
    assert list(outer.df.section) == ["first", "second", "total"]


def test_no_ledger_no_cost(models, task):
    with count_cost() as ledger:
        pass
    ih.icl_accuracy(models["gpt2"], task.prompts(4, 2, seed=2))
    assert ledger.total.passes == 0
