"""Tokenization now lives in :mod:`icl_heads.prompts.tokenization`; this module keeps the old import path working."""

from icl_heads.prompts.tokenization import label_token_ids, tokenize_prompts, tokenizer_fingerprint

__all__ = ["label_token_ids", "tokenize_prompts", "tokenizer_fingerprint"]
