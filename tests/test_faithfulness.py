"""The faithfulness guard: identities measured once per model, every analysis refuses a model that breaks one."""

from __future__ import annotations

import pytest
import torch

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.faithfulness import IDENTITIES, tolerance_for
from icl_heads.models import resolve_dtype, transformer_lens_major
from icl_heads.testing import tiny_family_dir, tiny_gpt2_dir, toy_task

TL_MAJOR = transformer_lens_major()


def test_every_identity_is_measured_and_holds_on_the_test_models(any_model):
    report = ih.check_faithfulness(any_model)
    assert set(report.df.identity) == set(IDENTITIES)
    # one row per layer for the per-layer identity
    n_layers = ModelAccess(any_model).n_layers
    assert (report.df.identity == "heads sum to attention output").sum() == n_layers
    assert report.passed and (report.df.relative_error < 1e-5).all(), report.df


@pytest.fixture
def broken(tmp_path):
    """A GPT-2 that adds a constant to layer 0's attention output through a permanent hook: not a head's doing."""
    model = ih.load_model(tiny_gpt2_dir(tmp_path / "m"))
    shift = torch.full((model.cfg.d_model,), 0.5)
    model.add_hook("blocks.0.hook_attn_out", lambda act, hook: act + shift, is_permanent=True)
    return model


def test_a_model_that_breaks_an_identity_is_refused_by_every_analysis(broken):
    report = ih.check_faithfulness(broken)
    assert not report.passed
    bad = report.df[~report.df.passed]
    assert ("heads sum to attention output", 0) in set(zip(bad.identity, bad.layer, strict=True))
    task = toy_task()
    prompts = task.prompts(6, 4, seed=0)
    calls = {
        "find_in_context_heads": lambda: ih.find_in_context_heads(broken, prompts, k=1, verify=False),
        "score_heads": lambda: ih.score_heads(broken, prompts),
        "decompose": lambda: ih.decompose(broken, prompts),
        "ov_label_features": lambda: ih.ov_label_features(broken, prompts, [(0, 0)]),
        "qk_label_attention": lambda: ih.qk_label_attention(broken, prompts, [(0, 0)]),
        "majority_bias": lambda: ih.majority_bias(broken, task, n=4, n_boot=10),
        "ablate": lambda: ih.ablate(broken, [(0, 0)]).__enter__(),
    }
    for name, call in calls.items():
        with pytest.raises(ih.UnfaithfulModelError, match=r"GPT2LMHeadModel.*'heads sum to attention output'") as err:
            call()
        assert "layer 0" in str(err.value) and "relative" in str(err.value), name
    # accuracy reads nothing but the logits: it still runs
    assert 0 <= ih.icl_accuracy(broken, prompts).accuracy <= 1
    # without the hook the same model is analysed again (the check is redone when the hooks change)
    broken.reset_hooks(including_permanent=True)
    assert ih.check_faithfulness(broken).passed
    ih.decompose(broken, prompts)


def test_the_check_runs_once_per_model_until_its_weights_change(models, monkeypatch):
    from icl_heads import faithfulness

    model = models["llama"]
    faithfulness.faithful_access(model)  # cached
    calls = []
    real = faithfulness.check_faithfulness
    monkeypatch.setattr(faithfulness, "check_faithfulness", lambda *a, **k: calls.append(1) or real(*a, **k))
    faithfulness.faithful_access(model)
    ModelAccess(model)  # a plain access checks nothing
    assert calls == []
    with torch.no_grad():
        model.W_U.add_(0.0)  # an in-place write: the weights may have changed
    faithfulness.faithful_access(model)
    assert calls == [1]


def test_gemma_norm_weight_is_read_off_the_layer(tmp_path):
    if TL_MAJOR < 4:
        pytest.skip("local Gemma folders load through TransformerBridge (TransformerLens 4)")
    model = ih.load_model(tiny_family_dir("gemma", tmp_path / "g"))
    access = ModelAccess(model)
    raw = model.ln_final.w.detach().float()
    # Gemma's RMSNorm multiplies by (1 + w): the stored parameter alone would be wrong
    torch.testing.assert_close(access.final_norm_map.weight, 1 + raw, atol=1e-5, rtol=0)
    assert any("1 + w" in note for note in ih.check_faithfulness(model).notes)


@pytest.mark.tl4
@pytest.mark.parametrize("family", ["gemma2", "olmo2"])
def test_post_attention_norm_scores_differ_from_raw_head_outputs(family, tmp_path):
    """On a post-norm model, what a head writes is not z W_O: scoring raw outputs would be far off."""
    model = ih.load_model(tiny_family_dir(family, tmp_path / family))
    access = ModelAccess(model)
    assert access.post_attn_norm(0) is not None
    report = ih.check_faithfulness(model)
    assert report.passed and any("post-attention norm" in n for n in report.notes)
    # the matrix test checks exactness; here: the correction is not a no-op on these weights
    w = access.post_attn_norm(0).weight
    assert (w - 1).abs().max() > 0.1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_within_the_documented_tolerance(family, dtype, tmp_path):
    model = ih.load_model(tiny_family_dir(family, tmp_path / family), dtype=dtype)
    assert model.W_U.dtype == resolve_dtype(dtype)
    report = ih.check_faithfulness(model)
    assert report.passed, report.df
    assert (report.df.tolerance == tolerance_for(resolve_dtype(dtype))).all()
    dec = ih.decompose(model, toy_task().prompts(6, 4, seed=0))
    assert dec.reconstruction_error <= tolerance_for(resolve_dtype(dtype)) * max(
        1.0, float(dec.full_logits.abs().max())
    )


def test_dtype_names():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("torch.float16") is torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'bfloat17'.*bfloat16"):
        resolve_dtype("bfloat17")
    with pytest.raises(ValueError, match="unknown dtype"):
        ih.load_model("organism", dtype="int4")


def test_tokenized_prompts_are_refused_by_a_model_with_another_tokenizer(models, organism):
    task = toy_task()
    prompts = task.prompts(4, 2, seed=0)
    organism_tp = ModelAccess(organism).tokenize(prompts)
    gpt2_tp = ModelAccess(models["gpt2"]).tokenize(prompts)
    with pytest.raises(ValueError, match="another tokenizer.*pass the text prompts"):
        ih.icl_accuracy(models["gpt2"], organism_tp)
    with pytest.raises(ValueError, match="another tokenizer"):
        ih.decompose(organism, gpt2_tp)
    # the text prompts work with both, and a model's own TokenizedPrompts too
    assert len(ih.icl_accuracy(organism, organism_tp).golds) == 4
    assert len(ih.icl_accuracy(models["gpt2"], prompts).golds) == 4


def test_pattern_edits_are_detected_even_where_a_layer_writes_nothing(tmp_path):
    """The hand-built copier has all-zero values in layer 0: halving its pattern changes nothing, editing it applies."""
    from icl_heads.access import pattern_edits_apply
    from icl_heads.testing import majority_copier_gpt2_dir

    model = ih.load_model(majority_copier_gpt2_dir(tmp_path / "copier"))
    assert pattern_edits_apply(ModelAccess(model))
