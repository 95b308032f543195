"""Tiny random models and tasks, built offline, for tests, benchmarks and examples.

Each builder writes a Hugging Face checkpoint to a folder, so it is loaded like a real model: ``load_model(path)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from icl_heads.organism.vocab import FILLERS, LABEL_WORDS, TOPICS, TRAIN_TEMPLATES, build_tokenizer, sample_sentence
from icl_heads.prompts import ICLTask

__all__ = ["bpe_tokenizer", "tiny_gpt2_dir", "tiny_llama_dir", "toy_task"]


def _corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng, topics, k, w = np.random.default_rng(seed), list(TOPICS), len(TRAIN_TEMPLATES), len(LABEL_WORDS)
    lines = [
        TRAIN_TEMPLATES[i % k].format(text=sample_sentence(rng, topics[i % len(topics)]), label=LABEL_WORDS[i % w])
        for i in range(n)
    ]
    return [*lines, " ".join(FILLERS)]


def bpe_tokenizer(vocab_size: int = 600):
    """A byte-level BPE tokenizer (GPT-2 style, leading-space tokens) trained on a tiny corpus."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"])
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=end, eos_token=end, unk_token=end, model_max_length=128
    )


def _model(tok: Any, config_cls: str, model_cls: str, seed: int | None, **fields: Any) -> Any:
    """A random ``model_cls`` of ``tok``'s vocabulary (seeded unless ``seed`` is ``None``)."""
    import torch
    import transformers

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = getattr(transformers, config_cls)(vocab_size=len(tok), **ids, **fields)
    if seed is not None:
        torch.manual_seed(seed)
    return getattr(transformers, model_cls)(config)


def _save(model: Any, tok: Any, path: str | Path) -> Path:
    """Save ``model`` and ``tok`` to the folder ``path`` and return it."""
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


def tiny_gpt2_dir(path: str | Path, *, n_layer: int = 2, n_head: int = 4, n_embd: int = 32, seed: int = 0) -> Path:
    """Write a random GPT-2-style checkpoint with a BPE tokenizer to ``path``."""
    tok = bpe_tokenizer()
    fields = dict(n_positions=128, n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    return _save(_model(tok, "GPT2Config", "GPT2LMHeadModel", seed, **fields), tok, path)


def tiny_llama_dir(
    path: str | Path, *, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, d_model: int = 32, seed: int = 0
) -> Path:
    """Write a random Llama-style checkpoint (grouped-query attention) with the organism's tokenizer."""
    tok = build_tokenizer()
    sizes = dict(hidden_size=d_model, intermediate_size=2 * d_model, max_position_embeddings=128)
    heads = dict(num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads)
    fields = dict(**sizes, **heads, tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    model = _model(tok, "LlamaConfig", "LlamaForCausalLM", seed, **fields)
    return _save(model, tok, path)


def toy_task(n_per_class: int = 40, seed: int = 0) -> ICLTask:
    """A small two-topic task (sport vs food) with ``foo``/``bar`` labels."""
    rng = np.random.default_rng(seed)
    pairs = [(sample_sentence(rng, t, max_words=3), t) for _ in range(n_per_class) for t in ("sport", "food")]
    return ICLTask.from_pairs([p[0] for p in pairs], [p[1] for p in pairs], classes=("sport", "food"), name="toy")


def majority_copier_gpt2_dir(path: str | Path, *, copier: tuple[int, int] = (1, 0), strength: float = 4.0) -> Path:
    """Write a hand-built GPT-2-style model in which exactly one head carries the labels.

    Every token embeds to one "neutral" direction except ``foo`` and ``bar``, which get their own.
    Attention is uniform, MLPs are zero, and only the ``copier`` head writes: it copies the
    ``foo``/``bar`` directions it reads, so it promotes the label most frequent in the context.
    The tokenizer is the organism's word-level tokenizer.
    """
    import torch

    tok = build_tokenizer()
    d, n_head = 16, 2
    dh = d // n_head
    fields = dict(n_positions=256, n_embd=d, n_layer=2, n_head=n_head, tie_word_embeddings=True)
    model = _model(tok, "GPT2Config", "GPT2LMHeadModel", None, **fields)
    foo, bar = tok.convert_tokens_to_ids(["foo", "bar"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0)
        wte = model.transformer.wte.weight
        wte[:, 2] = 1.0
        wte[foo, 2], wte[foo, 0] = 0.0, 1.0
        wte[bar, 2], wte[bar, 1] = 0.0, 1.0
        layer, head = copier
        attn = model.transformer.h[layer].attn
        v0 = 2 * d + head * dh  # value columns of the copier head
        attn.c_attn.weight[0, v0] = 1.0
        attn.c_attn.weight[1, v0 + 1] = 1.0
        attn.c_proj.weight[head * dh, 0] = strength
        attn.c_proj.weight[head * dh + 1, 1] = strength
    return _save(model, tok, path)


# ---- one tiny checkpoint per model family, at O(1) weight scale ----

D_MODEL, N_HEADS, N_LAYERS, N_CTX = 64, 4, 2, 128

_STD: dict[str, Any] = dict(hidden_size=D_MODEL, intermediate_size=128, max_position_embeddings=N_CTX)
_STD.update(num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS)
# family -> (what its checkpoint exercises, config class, model class, config fields)
_FAMILIES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "gpt2": ("learned positions, LayerNorm with biases", "GPT2Config", "GPT2LMHeadModel",
             dict(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX)),
    "gpt_neo": ("local attention (window 16) in every other layer", "GPTNeoConfig", "GPTNeoForCausalLM", dict(
        hidden_size=D_MODEL, num_layers=N_LAYERS, num_heads=N_HEADS, max_position_embeddings=N_CTX,
        attention_types=[[["global", "local"], 1]], window_size=16)),
    "gpt_neox": ("partial rotary (25%), parallel attention and MLP", "GPTNeoXConfig", "GPTNeoXForCausalLM",
                 dict(_STD, rotary_pct=0.25, use_parallel_residual=True)),
    "gptj": ("partial rotary (8 of 16 dims), parallel attention and MLP", "GPTJConfig", "GPTJForCausalLM",
             dict(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX, rotary_dim=8)),
    "opt": ("learned positions with an offset", "OPTConfig", "OPTForCausalLM", dict(
        hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, ffn_dim=128,
        max_position_embeddings=N_CTX, word_embed_proj_dim=D_MODEL)),
    "bloom": ("ALiBi, LayerNorm on the embeddings", "BloomConfig", "BloomForCausalLM",
              dict(hidden_size=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS)),
    "falcon": ("one key-value head (multi-query), parallel attention and MLP", "FalconConfig", "FalconForCausalLM", dict(
        hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, multi_query=True,
        new_decoder_architecture=False, parallel_attn=True, bias=True, alibi=False, max_position_embeddings=N_CTX)),
    "llama": ("grouped-query attention (2 key-value heads)", "LlamaConfig", "LlamaForCausalLM",
              dict(_STD, num_key_value_heads=2)),
    "mistral": ("sliding window of 12 tokens, active on the prompts", "MistralConfig", "MistralForCausalLM",
                dict(_STD, num_key_value_heads=2, sliding_window=12)),
    "qwen2": ("query/key/value biases, grouped-query attention", "Qwen2Config", "Qwen2ForCausalLM",
              dict(_STD, num_key_value_heads=2)),
    "qwen3": ("query/key norms", "Qwen3Config", "Qwen3ForCausalLM", dict(_STD, num_key_value_heads=2, head_dim=16)),
    "gemma": ("RMSNorm scaling by 1 + w, embeddings scaled by sqrt(d_model), one key-value head", "GemmaConfig",
              "GemmaForCausalLM", dict(_STD, num_key_value_heads=1, head_dim=16)),
    "gemma2": ("post-attention and post-MLP norms, attention and final-logit soft caps", "Gemma2Config",
               "Gemma2ForCausalLM", dict(_STD, num_key_value_heads=2, head_dim=16, sliding_window=64,
                                         final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                                         query_pre_attn_scalar=16)),
    "gemma3": ("post-attention and post-MLP norms, query/key norms", "Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(_STD, num_key_value_heads=2, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)),
    "phi": ("partial rotary (50%), parallel attention and MLP", "PhiConfig", "PhiForCausalLM",
            dict(_STD, partial_rotary_factor=0.5)),
    "phi3": ("fused query/key/value and gate/up projections", "Phi3Config", "Phi3ForCausalLM",
             dict(_STD, num_key_value_heads=N_HEADS, original_max_position_embeddings=N_CTX)),
    "olmo": ("LayerNorm without parameters", "OlmoConfig", "OlmoForCausalLM", dict(_STD)),
    "olmo2": ("post-attention and post-MLP norms only, query/key norms", "Olmo2Config", "Olmo2ForCausalLM", dict(_STD)),
    "stablelm": ("partial rotary (25%)", "StableLmConfig", "StableLmForCausalLM",
                 dict(_STD, num_key_value_heads=N_HEADS, partial_rotary_factor=0.25)),
}  # fmt: skip

FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
#: what each family's checkpoint exercises
QUIRKS: dict[str, str] = {family: spec[0] for family, spec in _FAMILIES.items()}


def _scramble(model, seed: int) -> None:
    """O(1)-scale weights (linear ``1/sqrt(fan_in)``, norm weights ``1 ± 0.3``, biases ``± 0.3``): hand-written maths
    that ignores a norm's weight, a bias or an architecture's quirk shows up as a large error."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(k in name for k in ("norm", "ln_", "layernorm", "ln_f", "layer_norm"))
            if leaf == "bias" or (is_norm and leaf != "weight"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif is_norm or p.ndim == 1:
                # Gemma's RMSNorm multiplies by (1 + w): keep its weight near 0 so the scale is near 1 too
                centre = 0.0 if "Gemma" in type(model).__name__ else 1.0
                p.copy_(centre + 0.3 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if "embed" not in name and "wte" not in name and "wpe" not in name else 1
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def tiny_family_dir(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of ``family`` (one of :data:`FAMILIES`) with a BPE tokenizer.

    Raises:
        ValueError: an unknown family (lists the valid ones).
    """
    if family not in _FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    _, config_cls, model_cls, fields = _FAMILIES[family]
    tok = bpe_tokenizer()
    model = _model(tok, config_cls, model_cls, seed, pad_token_id=tok.eos_token_id, tie_word_embeddings=False, **fields)
    model.config.architectures = [model_cls]
    _scramble(model.eval(), seed)
    return _save(model, tok, path)
