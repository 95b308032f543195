"""Few-shot classification tasks and prompts whose label positions are known exactly.

An :class:`ICLTask` holds labelled sentences, the label words the prompts show for
each class (default ``("foo", "bar")``) and a template. :meth:`ICLTask.prompts`
samples an :class:`ICLPrompts` set: demonstrations and a query per prompt, in text.
:meth:`ICLPrompts.tokenize` turns them into :class:`TokenizedPrompts` for one
tokenizer, where every prompt knows its token ids, each demonstration's label
position and label, the gold label and the final position.

The package, in the order its modules import each other:

* :mod:`~icl_heads.prompts.text`: the template's rules, one prompt in text (:class:`ICLPrompt`), :func:`render`;
* :mod:`~icl_heads.prompts.batch`: :class:`TokenizedPrompts` and their padded :class:`PromptBatch`;
* :mod:`~icl_heads.prompts.tokenization`: text to token ids, label positions and roles (:func:`tokenize_prompts`);
* :mod:`~icl_heads.prompts.task`: :class:`ICLTask` and its sampling into :class:`ICLPrompts`;
* :mod:`~icl_heads.prompts.designs`: other prompt designs (:func:`fixed_demo_prompts`, :func:`balanced_sample`).
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
