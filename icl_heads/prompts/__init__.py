"""Few-shot classification tasks (:class:`ICLTask`) and prompts (:class:`ICLPrompts`) whose label positions are known.

Modules, in import order: ``text`` (one prompt in text), ``batch`` (token ids and padded batches),
``tokenization`` (text to token ids, label positions and roles), ``task`` (the task and its sampling), ``designs``.
"""

from icl_heads.prompts.batch import PromptBatch, PromptTooLongError, TokenizedPrompts
from icl_heads.prompts.designs import balanced_sample, fixed_demo_prompts, last_two_differ
from icl_heads.prompts.task import ORDERS, ICLPrompts, ICLTask, PromptConfig
from icl_heads.prompts.text import DEFAULT_TEMPLATE, ICLPrompt, render
from icl_heads.prompts.tokenization import LabelTokenError, label_token_ids, tokenize_prompts, tokenizer_fingerprint

__all__ = [
    "DEFAULT_TEMPLATE",
    "ORDERS",
    "ICLPrompt",
    "ICLPrompts",
    "ICLTask",
    "LabelTokenError",
    "PromptBatch",
    "PromptConfig",
    "PromptTooLongError",
    "TokenizedPrompts",
    "balanced_sample",
    "fixed_demo_prompts",
    "label_token_ids",
    "last_two_differ",
    "render",
    "tokenize_prompts",
    "tokenizer_fingerprint",
]
