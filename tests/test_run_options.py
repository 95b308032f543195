"""One ``options: RunOptions`` keyword for how prompts are run; the legacy keywords; one meaning of ``heads=None``."""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import warnings

import pytest
import torch

import icl_heads as ih
from icl_heads.bias import majority_bias, recency_bias
from icl_heads.debias import correct_majority_bias, correct_recency_bias
from icl_heads.engine import LEGACY_RUN_KEYWORDS, RunOptions, count_cost, takes_run_options

# organism.train's batch_size is a training hyperparameter, not how prompts are run
NOT_ANALYSES = {"icl_heads.organism.train"}


def _package_modules() -> list:
    names = [m.name for m in pkgutil.walk_packages(ih.__path__, "icl_heads.")]
    return [importlib.import_module(n) for n in names if n not in NOT_ANALYSES]


def _public_functions() -> dict[str, object]:
    out = {f"icl_heads.{n}": getattr(ih, n) for n in ih.__all__ if inspect.isfunction(getattr(ih, n))}
    for mod in _package_modules():
        for name, obj in vars(mod).items():
            if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                out[f"{mod.__name__}.{name}"] = obj
    return out


def test_no_public_function_takes_the_legacy_keywords():
    functions = _public_functions()
    assert len(functions) > 100  # the walk reached the analysis modules
    legacy = {
        name: sorted(set(inspect.signature(fn).parameters) & set(LEGACY_RUN_KEYWORDS)) for name, fn in functions.items()
    }
    assert {k: v for k, v in legacy.items() if v} == {}
    with_options = {
        name: fn
        for name, fn in functions.items()
        if "RunOptions" in str(getattr(inspect.signature(fn).parameters.get("options"), "annotation", ""))
    }
    for name in ("find_in_context_heads", "icl_accuracy", "decompose", "recency_bias", "correct_majority_bias"):
        assert f"icl_heads.{name}" in with_options
    for name, fn in with_options.items():
        if name.startswith(("icl_heads.engine.", "icl_heads.options.")) or any(
            part.startswith("_") for part in name.split(".")[1:-1]
        ):
            continue  # the engine's own machinery and helpers of private modules take options as they are
        param = inspect.signature(fn).parameters["options"]
        assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None, name
        # every one accepts the legacy keywords and says so
        assert "legacy keywords ``batch_size``" in (fn.__doc__ or ""), name
        assert "options: how prompts are run" in fn.__doc__, name


def test_legacy_keywords_warn_and_give_the_same_result(models, task, fresh):
    model, prompts = models["gpt2"], task.prompts(10, 2, seed=4100)
    new = ih.find_in_context_heads(model, prompts, verify=False, options=RunOptions(batch_size=3, progress=True))
    with pytest.warns(DeprecationWarning, match=r"options=RunOptions\(batch_size=3, progress=True\)"):
        old = ih.find_in_context_heads(model, prompts, verify=False, batch_size=3, progress=True)
    assert old.heads == new.heads
    for key, value in new.scores.items():
        torch.testing.assert_close(old.scores[key], value, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="padding_side='left'"):
        left = ih.icl_accuracy(model, prompts, padding_side="left", batch_size=4)
    torch.testing.assert_close(left.label_logits, ih.icl_accuracy(model, prompts).label_logits, atol=1e-4, rtol=1e-4)


def test_legacy_batch_size_is_applied(models, task, fresh):
    model, prompts = models["gpt2"], task.prompts(10, 2, seed=4101)
    with pytest.warns(DeprecationWarning), count_cost() as ledger:
        ih.icl_accuracy(model, prompts, batch_size=3)
    assert ledger.total.passes == math.ceil(10 / 3)


def test_legacy_keywords_that_disagree_with_options_are_refused(models, task):
    model, prompts = models["gpt2"], task.prompts(6, 2, seed=4102)
    with pytest.raises(TypeError, match="batch_size=8.*disagree"):
        ih.icl_accuracy(model, prompts, options=RunOptions(batch_size=4), batch_size=8)
    with pytest.raises(TypeError, match="must be a RunOptions"):
        ih.icl_accuracy(model, prompts, options={"batch_size": 4})
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        ih.icl_accuracy(model, prompts, batch_size=0)
    with pytest.raises((ValueError, TypeError), match="progress"):  # the test-time type check may answer first
        RunOptions(progress="yes")  # type: ignore[arg-type]
    with pytest.warns(DeprecationWarning):  # the same value twice is not a conflict
        ih.icl_accuracy(model, prompts, options=RunOptions(batch_size=4), batch_size=4)


def test_calls_with_options_pass_no_legacy_keyword_inside(models, task):
    model = models["llama"]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*RunOptions", category=DeprecationWarning)
        ih.find_in_context_heads(model, task.prompts(8, 2, seed=4103), n_random=2, options=RunOptions(batch_size=5))
        recency_bias(model, task, shots=2, n=4, n_random_orders=1, n_boot=20, options=RunOptions(batch_size=3))
        majority_bias(model, task, shots=2, n=4, skews=[(2, 1)], n_boot=20, options=RunOptions(batch_size=3))


def test_takes_run_options_needs_a_keyword_only_options():
    def positional(model, options=None):
        return options

    with pytest.raises(TypeError, match="keyword-only options"):
        takes_run_options(positional)

    @takes_run_options
    def fine(model, *, options: RunOptions | None = None) -> RunOptions:
        """Doc."""
        return options

    assert fine(None) == RunOptions()
    assert list(inspect.signature(fine).parameters) == ["model", "options"]


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
    base = ih.bias.recency_prompts(task, shots=2, n=6, seed=3, n_random_orders=1)["original"]
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
