"""One ``options: RunOptions`` keyword for how prompts are run; one meaning of ``heads=None``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import icl_heads as ih
from icl_heads.debias import correct_majority_bias, correct_recency_bias
from icl_heads.engine import count_cost
from icl_heads.options import RunOptions, run_options
from icl_heads.order_bias import recency_bias


def _package_modules() -> list:
    return [importlib.import_module(m.name) for m in pkgutil.walk_packages(ih.__path__, "icl_heads.")]


def _public_functions() -> dict[str, object]:
    out = {f"icl_heads.{n}": getattr(ih, n) for n in ih.__all__ if inspect.isfunction(getattr(ih, n))}
    for mod in _package_modules():
        for name, obj in vars(mod).items():
            if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                out[f"{mod.__name__}.{name}"] = obj
    return out


def test_every_public_analysis_takes_one_options_keyword():
    functions = _public_functions()
    assert len(functions) > 100  # the walk reached the analysis modules
    old = {"batch_size", "padding_side", "progress"}
    taking_old = {name: old & set(inspect.signature(fn).parameters) for name, fn in functions.items()}
    # keywords of RunOptions appear only on RunOptions itself and the helper that replaces them
    assert {k: v for k, v in taking_old.items() if v and k != "icl_heads.options.run_options"} == {}
    with_options = {
        name: fn
        for name, fn in functions.items()
        if "RunOptions" in str(getattr(inspect.signature(fn).parameters.get("options"), "annotation", ""))
    }
    for name in ("find_in_context_heads", "icl_accuracy", "decompose", "recency_bias", "correct_majority_bias"):
        assert f"icl_heads.{name}" in with_options
    for name, fn in with_options.items():
        if name in ("icl_heads.access.batches", "icl_heads.options.run_options") or any(
            part.startswith("_") for part in name.split(".")[1:-1]
        ):
            continue  # the batch loop, the options helper and helpers of private modules take options as they are
        param = inspect.signature(fn).parameters["options"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None, name
        assert "options: how prompts are run" in fn.__doc__, name


def test_options_of_the_wrong_type_are_refused_and_the_old_keywords_do_not_exist(models, task):
    model, prompts = models["gpt2"], task.prompts(6, 2, seed=4102)
    for call in (lambda: run_options({"batch_size": 4}), lambda: ih.icl_accuracy(model, prompts, options={})):
        with pytest.raises(TypeError, match="RunOptions"):  # ours, or the test-time type check's, naming the type
            call()
    with pytest.raises(TypeError, match="batch_size"):
        ih.icl_accuracy(model, prompts, batch_size=4)
    with pytest.raises((ValueError, TypeError), match="progress"):  # the test-time type check may answer first
        RunOptions(progress="yes")  # type: ignore[arg-type]


def test_batch_size_is_applied(models, task, fresh):
    model, prompts = models["gpt2"], task.prompts(10, 2, seed=4101)
    with count_cost() as ledger:
        ih.icl_accuracy(model, prompts, options=RunOptions(batch_size=3))
    assert ledger.total.passes == 4  # ceil(10 / 3)


# ---- heads=None ---------------------------------------------------------------------------------


def test_bias_functions_default_to_found_heads_and_refuse_none(models, task):
    model = models["gpt2"]
    for fn in (recency_bias, correct_majority_bias, correct_recency_bias):
        assert inspect.signature(fn).parameters["heads"].default == "found"
        assert '``"found"``' in fn.__doc__
    with pytest.raises(ValueError, match=r'means every head elsewhere.*heads="found"'):
        recency_bias(model, task, shots=2, n=4, heads=None)
    with pytest.raises(ValueError, match="means every head elsewhere"):
        correct_majority_bias(model, task, heads=None, n=4, tune_n=4)
    with pytest.raises(ValueError, match="means every head elsewhere"):
        correct_recency_bias(model, task, heads=None, n=4, tune_n=4)
    with pytest.raises(ValueError, match="'all'"):
        recency_bias(model, task, shots=2, n=4, heads="all")


def test_found_heads_and_a_result_are_accepted(models, task):
    model = models["llama"]
    kw = dict(shots=2, n=6, seed=3, n_random_orders=1, n_boot=20)
    found = recency_bias(model, task, **kw)  # heads="found": the in-context heads on the original-order prompts
    base = ih.order_bias.recency_prompts(task, shots=2, n=6, seed=3, n_random_orders=1)["original"]
    heads = ih.bias.default_heads(model, base)
    slots = list(zip(found.attention["layer"], found.attention["head"], strict=True))
    assert slots == [h for h in heads for _ in range(2)]  # two slots per head
    result = ih.find_in_context_heads(model, base, verify=False)
    by_result = recency_bias(model, task, heads=result, **kw)
    assert set(zip(by_result.attention["layer"], by_result.attention["head"], strict=True)) == set(result.heads)


def test_none_means_every_head_outside_the_bias_functions(models, task):
    model = models["gpt2"]
    prompts = task.prompts(6, 2, seed=4104)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    qk = ih.qk_label_attention(model, prompts, None, read_at="label")
    assert qk.df.name.nunique() == n_heads
    roles = ih.reading_roles(model, prompts, n_boot=10)
    assert len(roles.reads(None)) == n_heads
