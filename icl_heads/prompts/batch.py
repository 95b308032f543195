"""Prompts as token ids (:class:`TokenizedPrompts`) and their padded batches (:class:`PromptBatch`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from icl_heads.options import RunOptions
from icl_heads.slots import AFTER_LABEL, LABEL


class PromptTooLongError(ValueError):
    """A prompt has more tokens than the model's context."""


@dataclass(frozen=True)
class TokenizedPrompts:
    """Prompts as token ids for one tokenizer, with every position the analyses need.

    Attributes:
        tokens: token ids of each prompt, unpadded.
        label_positions: position of each demonstration's label token, per prompt.
        demo_labels: class of each demonstration, per prompt.
        golds: gold class per prompt.
        label_token_ids: the token the model must predict for each class.
        prompts: the text prompts these came from.
        tokenizer_fingerprint: a hash of the tokenizer that made the ids (another tokenizer's model refuses them).
        roles: role code of every token (:data:`icl_heads.slots.ROLES`), per prompt.
        demo_index: demonstration each token belongs to (``-1`` outside demonstrations), per prompt.
    """

    tokens: tuple[tuple[int, ...], ...]
    label_positions: tuple[tuple[int, ...], ...]
    demo_labels: tuple[tuple[int, ...], ...]
    golds: tuple[int, ...]
    label_token_ids: tuple[int, ...]
    prompts: Any  # the ICLPrompts they came from (prompts.task builds on this module)
    tokenizer_fingerprint: str = ""
    roles: tuple[tuple[int, ...], ...] = ()
    demo_index: tuple[tuple[int, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def slot_positions(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """Positions of each demonstration's slot (label tokens and template tokens after them), per prompt."""
        return tuple(
            tuple(
                tuple(
                    p for p, (r, d) in enumerate(zip(roles, index, strict=True)) if d == k and r in (LABEL, AFTER_LABEL)
                )
                for k in range(len(labels))
            )
            for roles, index, labels in zip(self.roles, self.demo_index, self.label_positions, strict=True)
        )

    @property
    def final_positions(self) -> tuple[int, ...]:
        return tuple(len(t) - 1 for t in self.tokens)

    def batches(
        self, batch_size: int = 32, padding_side: str = "right", pad_id: int = 0, *, by_length: bool = False
    ) -> Iterator[PromptBatch]:
        """Padded batches in prompt order, or (``by_length``) shortest first; each batch's ``index`` names its prompts.

        Raises:
            ValueError: ``batch_size < 1`` or an unknown ``padding_side``.
        """
        RunOptions(batch_size=batch_size, padding_side=padding_side)  # checks both
        order = sorted(range(len(self)), key=lambda i: len(self.tokens[i])) if by_length else range(len(self))
        for start in range(0, len(self), batch_size):
            yield PromptBatch.build(self, order[start : start + batch_size], padding_side, pad_id)


@dataclass(frozen=True)
class PromptBatch:
    """One padded batch ``[batch, pos]``, positions shifted for padding; ``roles`` and ``demo_index`` (``-1`` at
    padding, see :mod:`icl_heads.slots`) are None when the prompts carry no roles."""

    index: Int[Tensor, " batch"]
    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    final_positions: Int[Tensor, " batch"]
    label_positions: Int[Tensor, "batch demo"]
    demo_labels: Int[Tensor, "batch demo"]
    golds: Int[Tensor, " batch"]
    padding_side: str
    roles: Int[Tensor, "batch pos"] | None = None
    demo_index: Int[Tensor, "batch pos"] | None = None

    @property
    def has_padding(self) -> bool:
        return bool((self.attention_mask == 0).any())

    def rows(self, start: int, stop: int) -> PromptBatch:
        """The prompts ``start:stop`` of this batch, every per-prompt tensor sliced alike (padding kept)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v[start:stop] for k, v in tensors.items() if isinstance(v, Tensor)})

    @classmethod
    def build(cls, tp: TokenizedPrompts, index: Sequence[int], padding_side: str, pad_id: int) -> PromptBatch:
        """The prompts ``index`` of ``tp``, padded on ``padding_side`` with ``pad_id``."""
        index = list(index)
        lengths = [len(tp.tokens[i]) for i in index]
        width = max(lengths)
        shifts = [width - n if padding_side == "left" else 0 for n in lengths]

        def pad(rows: list[Sequence[int]], fill: int, size: int, at: Sequence[int] = shifts) -> Tensor:
            out = torch.full((len(rows), size), fill, dtype=torch.long)
            for b, (row, s) in enumerate(zip(rows, at, strict=True)):
                out[b, s : s + len(row)] = torch.tensor(row, dtype=torch.long)
            return out

        n_demo = max((len(tp.label_positions[i]) for i in index), default=0)
        left = [0] * len(index)
        has_roles = len(tp.roles) == len(tp.tokens)
        return cls(
            index=torch.tensor(index),
            tokens=pad([tp.tokens[i] for i in index], pad_id, width),
            attention_mask=pad([[1] * n for n in lengths], 0, width),
            final_positions=torch.tensor([s + n - 1 for s, n in zip(shifts, lengths, strict=True)]),
            label_positions=pad(
                [[p + s for p in tp.label_positions[i]] for i, s in zip(index, shifts, strict=True)], -1, n_demo, left
            ),
            demo_labels=pad([tp.demo_labels[i] for i in index], -1, n_demo, left),
            golds=torch.tensor([tp.golds[i] for i in index]),
            padding_side=padding_side,
            roles=pad([tp.roles[i] for i in index], -1, width) if has_roles else None,
            demo_index=pad([tp.demo_index[i] for i in index], -1, width) if has_roles else None,
        )
