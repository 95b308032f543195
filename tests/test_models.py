import pytest
import torch
from transformers import AutoModelForCausalLM

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.models import transformer_lens_major

TL_MAJOR = transformer_lens_major()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_load_model_matches_hugging_face(kind, model_dirs, models):
    hf = AutoModelForCausalLM.from_pretrained(model_dirs[kind], attn_implementation="eager").eval()
    tokens = torch.tensor([[1, 5, 9, 22, 40, 7, 3, 11]])
    with torch.inference_mode():
        ref = hf(tokens).logits
        ours = models[kind](tokens)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_model_kind_matches_transformer_lens_version(models):
    kinds = {type(m).__name__ for k, m in models.items() if k in ("gpt2", "llama")}
    assert kinds == ({"TransformerBridge"} if TL_MAJOR >= 4 else {"HookedTransformer"})


def test_unsupported_model_object_is_refused(model_dirs):
    hf = AutoModelForCausalLM.from_pretrained(model_dirs["llama"])
    with pytest.raises(TypeError, match="expected a TransformerLens model"):
        ih.icl_accuracy(hf, ih.testing.toy_task().prompts(2, 2))
    with pytest.raises(TypeError, match="load_model"):
        ModelAccess("gpt2")


def test_final_norm_reproduces_logits(any_model, task):
    access = ModelAccess(any_model)
    tp = access.tokenize(task.prompts(6, 3, seed=1))
    batch = next(access.batches(tp, 6))
    last = f"blocks.{access.n_layers - 1}.hook_resid_post"
    from icl_heads.access import Capture

    logits, got = access.run(batch, capture=[Capture(last), Capture("ln_final.hook_scale")])
    rebuilt = (
        access.unembed(access.final_norm(got[last], got["ln_final.hook_scale"]) + access.final_norm_bias()) + access.b_U
    )
    torch.testing.assert_close(rebuilt, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.tl4
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_bridge_booted_by_the_user_without_compatibility_mode(kind, model_dirs, task):
    from transformer_lens.model_bridge import TransformerBridge

    from icl_heads.access import Capture

    raw = TransformerBridge.boot_transformers(str(model_dirs[kind]), device="cpu")
    access = ModelAccess(raw)
    batch = next(access.batches(access.tokenize(task.prompts(4, 2, seed=2)), 4))
    last = f"blocks.{access.n_layers - 1}.hook_resid_post"
    logits, got = access.run(batch, capture=[Capture(last), Capture("ln_final.hook_scale")])
    rebuilt = (
        access.unembed(access.final_norm(got[last], got["ln_final.hook_scale"]) + access.final_norm_bias()) + access.b_U
    )
    torch.testing.assert_close(rebuilt, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.tl4
def test_device_map_options_reach_transformer_lens(monkeypatch, model_dirs):
    from transformer_lens.model_bridge import TransformerBridge

    seen = {}
    real = TransformerBridge.boot_transformers

    def spy(name, **kw):
        seen.update(kw)
        return real(name, **{k: v for k, v in kw.items() if k not in ("n_devices", "max_memory")})

    monkeypatch.setattr(TransformerBridge, "boot_transformers", spy)
    ih.load_model(model_dirs["llama"], device_map={"": "cpu"}, n_devices=1, max_memory={"cpu": "4GiB"}, dtype="float32")
    assert seen["device_map"] == {"": "cpu"} and seen["n_devices"] == 1 and seen["max_memory"] == {"cpu": "4GiB"}
    assert seen["dtype"] is torch.float32 and seen["device"] is None


@pytest.mark.tl4
def test_a_model_dispatched_block_by_block_gives_the_same_numbers(model_dirs, models, task):
    """As far as a CPU machine can: accelerate places every block by an explicit device map."""
    blocks = {f"model.layers.{i}": "cpu" for i in range(2)}
    device_map = {
        "model.embed_tokens": "cpu",
        **blocks,
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    split = ih.load_model(model_dirs["llama"], device_map=device_map)
    prompts = task.prompts(6, 4, seed=2)
    a, b = ih.decompose(models["llama"], prompts), ih.decompose(split, prompts)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-6, rtol=0)
    sa = ih.score_heads(models["llama"], prompts)["dla"]
    sb = ih.score_heads(split, prompts)["dla"]
    torch.testing.assert_close(sa, sb, atol=1e-6, rtol=0)


def test_transformer_lens_fold_warning_does_not_reach_the_user(tmp_path, recwarn):
    if TL_MAJOR < 4:
        pytest.skip("the warning comes from TransformerBridge")
    from icl_heads.testing import tiny_family_dir

    ih.load_model(tiny_family_dir("olmo2", tmp_path / "olmo2"))
    assert not [w for w in recwarn if "fold_ln" in str(w.message)]
