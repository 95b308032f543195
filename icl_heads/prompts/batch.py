"""Prompts as token ids (:class:`TokenizedPrompts`) and their padded batches (:class:`PromptBatch`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor


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
        tokenizer_fingerprint: a hash of the tokenizer that made the ids; a model with
            another tokenizer refuses them.
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
        from icl_heads.slots import AFTER_LABEL, LABEL

        out = []
        for roles, index, labels in zip(self.roles, self.demo_index, self.label_positions, strict=True):
            slots: list[list[int]] = [[] for _ in labels]
            for pos, (r, d) in enumerate(zip(roles, index, strict=True)):
                if r in (LABEL, AFTER_LABEL) and d >= 0:
                    slots[d].append(pos)
            out.append(tuple(tuple(s) for s in slots))
        return tuple(out)

    @property
    def final_positions(self) -> tuple[int, ...]:
        return tuple(len(t) - 1 for t in self.tokens)

    def batches(
        self, batch_size: int = 32, padding_side: str = "right", pad_id: int = 0, *, by_length: bool = False
    ) -> Iterator[PromptBatch]:
        """Padded batches in prompt order, or (``by_length``) of prompts of similar length, shortest first.

        With ``by_length`` each batch's ``index`` says which prompts it holds: place
        per-prompt results by it.

        Raises:
            ValueError: ``batch_size < 1`` or an unknown ``padding_side``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        order = sorted(range(len(self)), key=lambda i: len(self.tokens[i])) if by_length else range(len(self))
        for start in range(0, len(self), batch_size):
            yield PromptBatch.build(self, order[start : start + batch_size], padding_side, pad_id)


@dataclass(frozen=True)
class PromptBatch:
    """One padded batch: ``tokens`` and ``attention_mask`` ``[batch, pos]``, positions shifted for padding.

    ``roles`` and ``demo_index`` (``[batch, pos]``, ``-1`` at padding) give each token's
    role and demonstration (see :mod:`icl_heads.slots`); None when the prompts carry no roles.
    """

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
        sl = slice(start, stop)
        return replace(
            self,
            **{f.name: getattr(self, f.name)[sl] for f in fields(self) if isinstance(getattr(self, f.name), Tensor)},
        )

    @classmethod
    def build(cls, tp: TokenizedPrompts, index: Sequence[int], padding_side: str, pad_id: int) -> PromptBatch:
        rows = [tp.tokens[i] for i in index]
        width = max(map(len, rows))
        n_demo = max((len(tp.label_positions[i]) for i in index), default=0)
        tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        label_pos = torch.full((len(rows), n_demo), -1, dtype=torch.long)
        demo_labels = torch.full((len(rows), n_demo), -1, dtype=torch.long)
        finals = torch.zeros(len(rows), dtype=torch.long)
        has_roles = len(tp.roles) == len(tp.tokens)
        roles = torch.full((len(rows), width), -1, dtype=torch.long)
        demo_index = torch.full((len(rows), width), -1, dtype=torch.long)
        for b, i in enumerate(index):
            ids = tp.tokens[i]
            shift = width - len(ids) if padding_side == "left" else 0
            tokens[b, shift : shift + len(ids)] = torch.tensor(ids)
            mask[b, shift : shift + len(ids)] = 1
            finals[b] = shift + len(ids) - 1
            m = len(tp.label_positions[i])
            label_pos[b, :m] = torch.tensor(tp.label_positions[i], dtype=torch.long) + shift
            demo_labels[b, :m] = torch.tensor(tp.demo_labels[i], dtype=torch.long)
            if has_roles:
                roles[b, shift : shift + len(ids)] = torch.tensor(tp.roles[i], dtype=torch.long)
                demo_index[b, shift : shift + len(ids)] = torch.tensor(tp.demo_index[i], dtype=torch.long)
        return cls(
            index=torch.tensor(list(index)),
            tokens=tokens,
            attention_mask=mask,
            final_positions=finals,
            label_positions=label_pos,
            demo_labels=demo_labels,
            golds=torch.tensor([tp.golds[i] for i in index]),
            padding_side=padding_side,
            roles=roles if has_roles else None,
            demo_index=demo_index if has_roles else None,
        )
