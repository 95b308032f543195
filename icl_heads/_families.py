"""Tiny random Hugging Face checkpoints of many model families, built offline.

Weights are at O(1) scale (``std = 1/sqrt(fan_in)``), norm weights away from 1 and
biases non-zero, so hand-written maths that ignores a norm's weight, a bias or an
architecture's quirk (Gemma's ``1 + w``, post-attention norms, soft-capped logits,
ALiBi, partial rotary, one key-value head, a sliding window) shows up as a large
error instead of hiding behind near-identity weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

D_MODEL, N_HEADS, N_LAYERS, N_CTX = 64, 4, 2, 128

# family -> (config class, model class, config fields); fields use D_MODEL etc.
_FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX)),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM", dict(
        hidden_size=D_MODEL, num_layers=N_LAYERS, num_heads=N_HEADS, max_position_embeddings=N_CTX,
        attention_types=[[["global", "local"], 1]], window_size=16)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, intermediate_size=128,
        max_position_embeddings=N_CTX, rotary_pct=0.25, use_parallel_residual=True)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM", dict(
        n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=N_CTX, rotary_dim=8)),
    "opt": ("OPTConfig", "OPTForCausalLM", dict(
        hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, ffn_dim=128,
        max_position_embeddings=N_CTX, word_embed_proj_dim=D_MODEL)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS)),
    "falcon": ("FalconConfig", "FalconForCausalLM", dict(
        hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, multi_query=True,
        new_decoder_architecture=False, parallel_attn=True, bias=True, alibi=False, max_position_embeddings=N_CTX)),
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=2, max_position_embeddings=N_CTX)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=2, max_position_embeddings=N_CTX, sliding_window=12)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=2, max_position_embeddings=N_CTX)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=N_CTX)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=N_CTX)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=N_CTX, sliding_window=64,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=16)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=N_CTX, sliding_window=64,
        query_pre_attn_scalar=16)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        max_position_embeddings=N_CTX, partial_rotary_factor=0.5)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS, max_position_embeddings=N_CTX, original_max_position_embeddings=N_CTX)),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        max_position_embeddings=N_CTX)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        max_position_embeddings=N_CTX)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(
        hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS, max_position_embeddings=N_CTX, partial_rotary_factor=0.25)),
}  # fmt: skip

FAMILIES: tuple[str, ...] = tuple(_FAMILIES)

#: what each family's checkpoint exercises
QUIRKS: dict[str, str] = {
    "gpt2": "learned positions, LayerNorm with biases",
    "gpt_neo": "local attention (window 16) in every other layer",
    "gpt_neox": "partial rotary (25%), parallel attention and MLP",
    "gptj": "partial rotary (8 of 16 dims), parallel attention and MLP",
    "opt": "learned positions with an offset",
    "bloom": "ALiBi, LayerNorm on the embeddings",
    "falcon": "one key-value head (multi-query), parallel attention and MLP",
    "llama": "grouped-query attention (2 key-value heads)",
    "mistral": "sliding window of 12 tokens, active on the prompts",
    "qwen2": "query/key/value biases, grouped-query attention",
    "qwen3": "query/key norms",
    "gemma": "RMSNorm scaling by 1 + w, embeddings scaled by sqrt(d_model), one key-value head",
    "gemma2": "post-attention and post-MLP norms, attention and final-logit soft caps",
    "gemma3": "post-attention and post-MLP norms, query/key norms",
    "phi": "partial rotary (50%), parallel attention and MLP",
    "phi3": "fused query/key/value and gate/up projections",
    "olmo": "LayerNorm without parameters",
    "olmo2": "post-attention and post-MLP norms only, query/key norms",
    "stablelm": "partial rotary (25%)",
}


def _scramble(model, seed: int) -> None:
    """O(1)-scale weights: linear ``1/sqrt(fan_in)``, norm weights ``1 ± 0.3``, biases ``± 0.3``."""
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
    import torch
    import transformers

    from icl_heads.testing import bpe_tokenizer

    if family not in _FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    config_cls, model_cls, fields = _FAMILIES[family]
    path = Path(path)
    tok = bpe_tokenizer()
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    config = getattr(transformers, config_cls)(vocab_size=len(tok), tie_word_embeddings=False, **ids, **fields)
    config.architectures = [model_cls]
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    _scramble(model, seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
