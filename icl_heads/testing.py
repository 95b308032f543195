"""Tiny random models and tasks, built offline, for tests, benchmarks and examples.

Each builder writes a Hugging Face checkpoint (``config.json``, safetensors weights,
tokenizer files) to a folder, so it exercises the same loading path as a real model
on disk: ``load_model(path)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icl_heads.organism.vocab import FILLERS, LABEL_WORDS, TOPICS, TRAIN_TEMPLATES, sample_sentence
from icl_heads.prompts import ICLTask

__all__ = ["bpe_tokenizer", "tiny_gpt2_dir", "tiny_llama_dir", "toy_task"]


def _corpus(seed: int = 0, n: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    topics = list(TOPICS)
    lines = []
    for i in range(n):
        topic = topics[i % len(topics)]
        label = LABEL_WORDS[i % len(LABEL_WORDS)]
        template = TRAIN_TEMPLATES[i % len(TRAIN_TEMPLATES)]
        lines.append(template.format(text=sample_sentence(rng, topic), label=label))
    lines.append(" ".join(FILLERS))
    return lines


def bpe_tokenizer(vocab_size: int = 600):
    """A byte-level BPE tokenizer (GPT-2 style, leading-space tokens) trained on a tiny corpus."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=vocab_size, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        model_max_length=128,
    )


def tiny_gpt2_dir(path: str | Path, *, n_layer: int = 2, n_head: int = 4, n_embd: int = 32, seed: int = 0) -> Path:
    """Write a random GPT-2-style checkpoint with a BPE tokenizer to ``path``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    tok = bpe_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=128,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_llama_dir(
    path: str | Path, *, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, d_model: int = 32, seed: int = 0
) -> Path:
    """Write a random Llama-style checkpoint (grouped-query attention) with the organism's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from icl_heads.organism.vocab import build_tokenizer

    path = Path(path)
    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def toy_task(n_per_class: int = 40, seed: int = 0) -> ICLTask:
    """A small two-topic task (sport vs food) with ``foo``/``bar`` labels."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n_per_class):
        for topic in ("sport", "food"):
            texts.append(sample_sentence(rng, topic, max_words=3))
            labels.append(topic)
    return ICLTask.from_pairs(texts, labels, classes=("sport", "food"), name="toy")


def majority_copier_gpt2_dir(path: str | Path, *, copier: tuple[int, int] = (1, 0), strength: float = 4.0) -> Path:
    """Write a hand-built GPT-2-style model in which exactly one head carries the labels.

    Every token embeds to one "neutral" direction except ``foo`` and ``bar``, which get
    their own directions. All attention is uniform (zero query/key weights), MLPs are
    zero, and only the ``copier`` head has an output: it copies the ``foo``/``bar``
    directions it reads into the residual stream, so it promotes the label that is
    most frequent in the context. Every other head writes exactly nothing. The
    tokenizer is the organism's word-level tokenizer.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from icl_heads.organism.vocab import build_tokenizer

    path = Path(path)
    tok = build_tokenizer()
    d, n_head, n_layer = 16, 2, 2
    dh = d // n_head
    config = GPT2Config(
        vocab_size=len(tok), n_positions=256, n_embd=d, n_layer=n_layer, n_head=n_head,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    foo, bar = tok.convert_tokens_to_ids(["foo", "bar"])
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
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
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
