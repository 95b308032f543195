"""Token roles and label slots: which tokens of a prompt are labels, the template after them, text, query.

A demonstration's **slot** is its label token(s) and the template tokens after them (e.g. the ``\\n`` of
``{text} : {label}\\n``); roles come from the tokenizer's character offsets. :func:`read_positions` gives the
positions an analysis reads (:data:`READ_AT`), each tagged with its demonstration.
"""

from __future__ import annotations

import torch
from jaxtyping import Int
from torch import Tensor

#: Token roles, in the order of their integer codes.
ROLES: tuple[str, ...] = ("bos", "demo_text", "separator", "label", "after_label", "query")
BOS, DEMO_TEXT, SEPARATOR, LABEL, AFTER_LABEL, QUERY = range(len(ROLES))
#: Reading positions the analyses and corrections accept (``"auto"``: where the heads look).
READ_AT: tuple[str, ...] = ("label", "after_label", "slot", "auto")


def check_read_at(read_at: str) -> str:
    """``read_at`` itself, or a ValueError listing the valid choices."""
    if read_at not in READ_AT:
        raise ValueError(
            f"read_at must be one of {READ_AT}, got {read_at!r}: 'label' reads each demonstration's label token, "
            "'after_label' the last template token after it (e.g. the newline), 'slot' both, 'auto' where the heads look"
        )
    return read_at


def char_roles(template: str, demos: list[tuple[str, str]], query: str) -> tuple[list[int], list[int], str]:
    """Role and demonstration (``-1`` in the query) of every character of a prompt, and the prompt's text.

    ``demos`` holds ``(text, label word)`` of each demonstration.
    """
    before, after = template.split("{label}")
    pre, sep = before.split("{text}")
    roles: list[int] = []
    demo_of: list[int] = []
    parts: list[str] = []

    def add(text: str, role: int, demo: int) -> None:
        parts.append(text)
        roles.extend([role] * len(text))
        demo_of.extend([demo] * len(text))

    for i, (text, word) in enumerate(demos):
        add(pre, DEMO_TEXT, i)
        add(text, DEMO_TEXT, i)
        add(sep, SEPARATOR, i)
        add(word, LABEL, i)
        add(after, AFTER_LABEL, i)
    add(pre, QUERY, -1)
    add(query, QUERY, -1)
    add(sep.rstrip(" "), QUERY, -1)
    return roles, demo_of, "".join(parts)


def token_roles(
    roles: list[int], demo_of: list[int], offsets: list[tuple[int, int]], label_tokens: list[list[int]]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Role and demonstration of every token: a label token if it overlaps a label word, else its last character's."""
    last = [min(max(a, b - 1), len(roles) - 1) for a, b in offsets]
    out_role = [roles[c] if roles else QUERY for c in last]
    out_demo = [demo_of[c] if demo_of else -1 for c in last]
    for i, hit in enumerate(label_tokens):
        for t in hit:
            out_role[t], out_demo[t] = LABEL, i
    return tuple(out_role), tuple(out_demo)


def slot_mask(
    roles: Int[Tensor, "batch pos"], demo_index: Int[Tensor, "batch pos"], n_demo: int, which: tuple[int, ...]
) -> Tensor:
    """``[batch, demo, pos]`` mask of the tokens of each demonstration whose role is in ``which``."""
    in_role = torch.isin(roles, torch.tensor(which, dtype=roles.dtype))
    demos = torch.arange(n_demo)[None, :, None]
    return (demo_index[:, None, :] == demos) & in_role[:, None, :]


def read_positions(batch, read_at: str) -> tuple[Int[Tensor, "batch n"], Int[Tensor, "batch n"]]:
    """Positions an analysis reads in each prompt of ``batch``, and the demonstration of each.

    Args:
        batch: a :class:`~icl_heads.prompts.PromptBatch`.
        read_at: ``"label"`` (each label position), ``"after_label"`` (the last token of each slot, ``-1`` when
            the template has nothing after the label) or ``"slot"`` (every label and after-label token).

    Returns:
        ``positions [batch, n]`` (padded coordinates) and ``demo [batch, n]`` (each position's demonstration),
        ``-1`` for padding; valid entries come first in each row.

    Raises:
        ValueError: an unknown ``read_at`` (``"auto"`` must be resolved first).
    """
    if read_at == "label":
        lp = batch.label_positions
        demo = torch.arange(lp.shape[1]).expand_as(lp)
        return lp, torch.where(lp >= 0, demo, -1)
    if read_at not in ("after_label", "slot"):
        raise ValueError(f"read_at must be 'label', 'after_label' or 'slot' here, got {read_at!r}")
    if batch.roles is None or batch.demo_index is None:
        raise ValueError(
            f"read_at={read_at!r} needs token roles, but this batch has none; build batches with "
            "TokenizedPrompts.batches(...) from prompts tokenized by ICLPrompts.tokenize"
        )
    n_demo = batch.label_positions.shape[1]
    width = batch.tokens.shape[1]
    if read_at == "after_label":
        mask = slot_mask(batch.roles, batch.demo_index, n_demo, (AFTER_LABEL,))
        pos = torch.where(mask, torch.arange(width), -1).amax(-1)
        has = (batch.label_positions >= 0) & (pos >= 0)
        demo = torch.arange(n_demo).expand_as(pos)
        return torch.where(has, pos, -1), torch.where(has, demo, -1)
    mask = slot_mask(batch.roles, batch.demo_index, n_demo, (LABEL, AFTER_LABEL)).any(1)
    n = max(int(mask.sum(1).max()), 1) if mask.numel() else 1
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :n]
    valid = torch.gather(mask, 1, order)
    positions = torch.where(valid, order, -1)
    demo = torch.where(valid, torch.gather(batch.demo_index, 1, order), -1)
    return positions, demo


def positions_with_labels(batch, read_at: str) -> tuple[Int[Tensor, "batch n"], Int[Tensor, "batch n"]]:
    """:func:`read_positions` with the label (class index) of each position's demonstration instead."""
    pos, demo = read_positions(batch, read_at)
    if batch.demo_labels.shape[1] == 0 or demo.numel() == 0:
        return pos, demo
    labels = torch.gather(batch.demo_labels, 1, demo.clamp(min=0))
    return pos, torch.where(pos >= 0, labels, -1)
