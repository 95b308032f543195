"""What both bias measurements share: the heads they report on, the task check, prompts with given demonstrations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from icl_heads.interventions import check_heads
from icl_heads.models import Head, ModelAccess
from icl_heads.prompts import ICLPrompt, ICLPrompts, ICLTask


def default_heads(model: Any, prompts: ICLPrompts) -> tuple[Head, ...]:
    """The in-context heads of ``model`` on ``prompts``: the top heads plus each label's top heads.

    Calls :func:`~icl_heads.heads.find_in_context_heads` with ``verify=False``; the
    union of its ``heads`` and ``heads_by_label`` follows the paper, whose in-context
    heads are the foo heads together with the bar heads.
    """
    from icl_heads.heads import find_in_context_heads

    found = find_in_context_heads(model, prompts, verify=False)
    return tuple(dict.fromkeys([*found.heads, *(h for hs in found.heads_by_label.values() for h in hs)]))


def resolve_heads(model: Any, heads: Sequence[Sequence[int]] | None, prompts: ICLPrompts) -> tuple[Head, ...]:
    """``heads`` checked against the model, or :func:`default_heads` on ``prompts`` when None.

    Raises:
        ValueError: a head outside the model, or an empty list of heads.
    """
    if heads is None:
        return default_heads(model, prompts)
    out = check_heads(ModelAccess(model, analysis="resolve_heads"), heads)
    if not out:
        raise ValueError("heads is empty; pass (layer, head) pairs or None to find the in-context heads")
    return out


def _check_task(task: Any) -> ICLTask:
    if not isinstance(task, ICLTask):
        raise TypeError(
            f"expected an ICLTask (the measurement samples its own prompt conditions), got {type(task).__name__}; "
            "build one with icl_heads.ICLTask.from_pairs(texts, labels) or icl_heads.organism_task()"
        )
    return task


def _with_demos(base: ICLPrompts, demos: Sequence[Sequence[tuple[str, int]]], name: str) -> ICLPrompts:
    """``base`` with each prompt's demonstrations replaced (queries and golds kept)."""
    prompts = tuple(
        ICLPrompt(demos=tuple(d), query=p.query, gold=p.gold) for p, d in zip(base.prompts, demos, strict=True)
    )
    return replace(base, prompts=prompts, config={**base.config, "condition": name})


# ---- majority-label bias ------------------------------------------------------------------------
