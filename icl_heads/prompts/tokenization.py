"""Tokenize text prompts and locate each label token from the tokenizer's character offsets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import weakref
from typing import Any

from icl_heads.prompts.batch import TokenizedPrompts
from icl_heads.prompts.text import render
from icl_heads.slots import BOS, char_roles, token_roles


class LabelTokenError(ValueError):
    """A label word is not exactly one token in context for this tokenizer."""


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; icl_heads needs character offsets. "
            "Load the tokenizer with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _token_at(offsets: list[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    """Indices of the tokens that overlap the character span."""
    return [i for i, (a, b) in enumerate(offsets) if a < span[1] and b > span[0]]


def label_token_ids(task: Any, tokenizer, *, first_token: bool = False) -> tuple[int, ...]:
    """The token each label word is in context (e.g. ``' foo'`` for GPT-2).

    Raises:
        LabelTokenError: a label word splits into several tokens (unless ``first_token``).
    """
    ids = []
    before, after = task.template.split("{label}")
    head = before.format(text="x")
    for word in task.label_words:
        text = head + word + after
        tokens, offsets = _encode(tokenizer, text)
        # include the spaces before the label: a tokenizer may make them a token of their own
        hit = _token_at(offsets, (len(head.rstrip(" ")), len(head) + len(word)))
        pieces = [tokenizer.convert_ids_to_tokens(tokens[i]) for i in hit]
        if not hit:
            raise LabelTokenError(
                f"label word {word!r} produced no token in context {text!r} with {type(tokenizer).__name__}: the "
                "tokenizer drops it, so no label word works with it; check that model.tokenizer is the one the model "
                "was trained with (a folder's tokenizer.json can be loaded with PreTrainedTokenizerFast(tokenizer_file=...))"
            )
        if len(hit) != 1 and not first_token:
            raise LabelTokenError(
                f"label word {word!r} is {len(hit)} tokens {pieces} in context {text!r}; choose single-token "
                "label words (e.g. 'foo'/'bar') or pass first_token=True to use the first token"
            )
        unk = tokenizer.unk_token_id
        if unk is not None and tokens[hit[0]] == unk and unk in _encode(tokenizer, word)[0]:
            raise LabelTokenError(
                f"label word {word!r} is not in the tokenizer's vocabulary (it becomes {pieces[0]!r}); "
                "choose label words the tokenizer knows"
            )
        piece = tokenizer.decode([tokens[hit[0]]]).strip()
        if first_token and len(hit) > 1 and not piece:
            raise LabelTokenError(
                f"label word {word!r} starts with the whitespace token {pieces[0]!r} in {text!r}, which does not "
                "identify the label; choose a label word whose first token carries its text"
            )
        if (piece != word and not first_token) or not piece or not word.startswith(piece) or tokens[hit[0]] == unk:
            raise LabelTokenError(
                f"label word {word!r} merges with the template around it into token {pieces[0]!r} in {text!r}; "
                "change the template so the label stands apart (e.g. a space or newline after it)"
            )
        ids.append(tokens[hit[0]])
    if len(set(ids)) != len(ids):
        raise LabelTokenError(
            f"label words {task.label_words} share the first token; choose words that differ at the start"
        )
    return tuple(ids)


def tokenize_prompts(
    prompts: Any, tokenizer, *, prepend_bos: bool = True, first_token: bool = False
) -> TokenizedPrompts:
    """See :meth:`icl_heads.prompts.ICLPrompts.tokenize`."""
    task = prompts.task
    labels = label_token_ids(task, tokenizer, first_token=first_token)
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    before, after = task.template.split("{label}")
    rows = []
    for p in prompts.prompts:
        text, spans, query = render(p, task)
        tokens, offsets = _encode(tokenizer, text)
        hits = [_token_at(offsets, span) for span in spans]
        for (_, y), hit in zip(p.demos, hits, strict=True):
            if not hit or tokens[hit[0]] != labels[y]:
                got = tokenizer.convert_ids_to_tokens(tokens[hit[0]]) if hit else None
                raise LabelTokenError(
                    f"label {task.label_words[y]!r} became token {got!r} inside the prompt, not the expected "
                    f"{tokenizer.convert_ids_to_tokens(labels[y])!r}; the template's text around the label merges with it"
                )
        # the label the model must predict is the token it would read after the query
        full_text = text[: len(text) - len(query)] + before.format(text=p.query) + task.label_words[p.gold] + after
        full, _ = _encode(tokenizer, full_text)
        if full[: len(tokens)] != tokens or full[len(tokens)] != labels[p.gold]:
            raise LabelTokenError(
                f"after the query {query!r} the gold label does not tokenize as "
                f"{tokenizer.convert_ids_to_tokens(labels[p.gold])!r}; check the template's spacing before {{label}}"
            )
        char_role, char_demo, rendered = char_roles(
            task.template, [(t, task.label_words[y]) for t, y in p.demos], p.query
        )
        if rendered != text:  # pragma: no cover - render and char_roles build the same string
            raise RuntimeError(f"internal error: token roles were computed for {rendered!r}, not {text!r}")
        roles, demo_index = token_roles(char_role, char_demo, offsets, hits)
        positions = tuple(len(bos) + hit[0] for hit in hits)
        demos = tuple(y for _, y in p.demos)
        rows.append((tuple(bos + tokens), positions, demos, (BOS,) * len(bos) + roles, (-1,) * len(bos) + demo_index))
    tokens, positions, demos, roles, demo_index = (tuple(r[i] for r in rows) for i in range(5))
    golds = tuple(p.gold for p in prompts.prompts)
    fingerprint = tokenizer_fingerprint(tokenizer)
    return TokenizedPrompts(tokens, positions, demos, golds, labels, prompts, fingerprint, roles, demo_index)


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's full definition (vocabulary, merges, normalisation), memoised per object."""
    with contextlib.suppress(KeyError, TypeError):
        return _FINGERPRINTS[tokenizer]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id])
    digest = hashlib.sha256((type(tokenizer).__name__ + special + spec).encode()).hexdigest()[:16]
    with contextlib.suppress(TypeError):
        _FINGERPRINTS[tokenizer] = digest
    return digest
