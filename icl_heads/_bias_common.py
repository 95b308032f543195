"""What both bias measurements share: the heads they report on, the task check, prompts with given demonstrations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from icl_heads.access import Head
from icl_heads.faithfulness import faithful_access
from icl_heads.interventions import check_heads
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompt, ICLPrompts, ICLTask

#: ``heads="found"``: run the head finder on the prompts and use its heads (the bias functions' default).
FOUND = "found"


def check_heads_choice(heads: Any) -> Any:
    """Refuse ``heads=None`` and unknown strings before any work (the bias and correction functions).

    Raises:
        ValueError: ``None`` (which means every head elsewhere) or a string other than ``"found"``.
    """
    if heads is None:
        raise ValueError(
            "heads=None means every head elsewhere in icl_heads, but this measurement or correction acts on the "
            'in-context heads: pass heads="found" (run find_in_context_heads on the prompts, the default), '
            "a list of (layer, head) pairs, or an InContextHeads result"
        )
    if isinstance(heads, str) and heads != FOUND:
        raise ValueError(f'heads must be "found", (layer, head) pairs or an InContextHeads result, got {heads!r}')
    return heads


def default_heads(model: Any, prompts: ICLPrompts, *, options: RunOptions | None = None) -> tuple[Head, ...]:
    """The in-context heads of ``model`` on ``prompts``: the top heads plus each label's top heads.

    Calls :func:`~icl_heads.heads.find_in_context_heads` with ``verify=False``; the
    union of its ``heads`` and ``heads_by_label`` follows the paper, whose in-context
    heads are the foo heads together with the bar heads.

    Args:
        model: the model.
        prompts: the prompts the heads are found on.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).
    """
    options = run_options(options)
    from icl_heads.heads import find_in_context_heads

    found = find_in_context_heads(model, prompts, verify=False, options=options)
    return tuple(dict.fromkeys([*found.heads, *(h for hs in found.heads_by_label.values() for h in hs)]))


def resolve_heads(
    model: Any, heads: Any, prompts: ICLPrompts, *, options: RunOptions | None = None
) -> tuple[Head, ...]:
    """``heads`` checked against the model: ``"found"`` is :func:`default_heads` on ``prompts``.

    ``heads`` is ``"found"``, ``(layer, head)`` pairs, or a result with ``.heads``
    (e.g. an ``InContextHeads``).

    Raises:
        ValueError: ``None`` or an unknown string (see :func:`check_heads_choice`), a head
            outside the model, or an empty list of heads.
    """
    if isinstance(check_heads_choice(heads), str):  # "found"
        return default_heads(model, prompts, options=options)
    out = check_heads(faithful_access(model, "resolve_heads"), heads)
    if not out:
        raise ValueError('heads is empty; pass (layer, head) pairs or "found" to find the in-context heads')
    return out


def check_task(task: Any) -> ICLTask:
    if not isinstance(task, ICLTask):
        raise TypeError(
            f"expected an ICLTask (the measurement samples its own prompt conditions), got {type(task).__name__}; "
            "build one with icl_heads.ICLTask.from_pairs(texts, labels) or icl_heads.organism_task()"
        )
    return task


def with_demos(base: ICLPrompts, demos: Sequence[Sequence[tuple[str, int]]], name: str) -> ICLPrompts:
    """``base`` with each prompt's demonstrations replaced (queries and golds kept)."""
    prompts = tuple(
        ICLPrompt(demos=tuple(d), query=p.query, gold=p.gold) for p, d in zip(base.prompts, demos, strict=True)
    )
    return replace(base, prompts=prompts, config=base.config.updated(condition=name))


# ---- majority-label bias ------------------------------------------------------------------------
