"""Head ablation, and combining interventions (each an object with ``hooks_for(batch)``).

>>> import icl_heads as ih
>>> model = ih.load_model("organism")
>>> tokens = model.to_tokens(ih.organism_task().prompts(n=2, shots=4).texts(), padding_side="left")
>>> with ih.ablate(model, [(1, 3)]):
...     logits = model(tokens)
>>> logits.shape[0]
2
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from icl_heads import _checks
from icl_heads.access import Capture, Head, ModelAccess, batches, require_pattern_edits
from icl_heads.engine import HookFn, Hooks, Intervention, as_intervention, digest
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, PromptBatch, TokenizedPrompts

HOWS = ("zero", "mean")
WHERE = ("all", "final")
#: reference prompts of a mean-ablation
Reference = ICLPrompts | TokenizedPrompts | None


def by_layer(pairs: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """``(layer, index)`` pairs grouped by layer, in order of first appearance."""
    out: dict[int, list[int]] = {}
    for layer, index in pairs:
        out.setdefault(layer, []).append(index)
    return out


def head_pairs(heads: Iterable[Sequence[int]] | Any) -> tuple[Head, ...]:
    """``(layer, head)`` pairs of non-negative integers, in order, without repeats (a result's ``.heads`` too).

    Raises:
        TypeError: ``heads`` is not a sequence of pairs.
        ValueError: a pair that is not two non-negative integers (``(1.7, 1)`` is refused, not truncated).
    """
    heads = getattr(heads, "heads", heads)
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Iterable):
        hint = " ('found' is accepted by the bias measurements and corrections only; pass find_in_context_heads(...)"
        hint = hint + " or its .heads here)" if heads == "found" else ""
        raise TypeError(f"heads must be a sequence of (layer, head) pairs, got {heads!r}{hint}")
    out = []
    for h in heads:
        if isinstance(h, (str, bytes)) or not isinstance(h, Iterable) or len(h := tuple(h)) != 2:
            one = " (for one head pass [(layer, head)])" if isinstance(h, int) else ""
            raise ValueError(f"heads must be (layer, head) pairs, got {h!r}{one}")
        try:
            out.append(tuple(_checks.check_int("layer and head", v, minimum=0) for v in h))
        except (TypeError, ValueError):
            raise ValueError(f"heads must be (layer, head) pairs of non-negative integers, got {h!r}") from None
    return tuple(dict.fromkeys(out))


def check_heads(access: ModelAccess, heads: Iterable[Sequence[int]] | Any) -> tuple[Head, ...]:
    """Validate ``(layer, head)`` pairs (or a result's ``.heads``) against the model.

    Raises:
        ValueError: a pair outside the model's layers or heads, or not a pair of integers.
    """
    out = head_pairs(heads)
    for layer, head in out:
        if not (layer < access.n_layers and head < access.n_heads):
            raise ValueError(
                f"head ({layer}, {head}) is outside the model: layers 0..{access.n_layers - 1}, heads 0..{access.n_heads - 1}"
            )
    return out


def head_means(
    model: Any, prompts: ICLPrompts | TokenizedPrompts, *, where: str = "all", options: RunOptions | None = None
) -> Float[Tensor, "layer head d_head"]:
    """Mean of every head's ``hook_z`` over reference prompts (all real tokens, or final positions).

    Args:
        model: the model.
        prompts: the reference prompts.
        where: ``"all"`` real tokens or the ``"final"`` positions.
        options: how prompts are run: batch size, padding side, progress bar; does not change the result.
    """
    options = run_options(options)
    access = faithful_access(model, "head_means")
    final = where == "final"
    total = torch.zeros(access.n_layers, access.n_heads, access.d_head)
    count = 0
    for batch in batches(access, access.tokenize(prompts), options):
        caps = [Capture(access.hook(layer, "z"), "final" if final else "all") for layer in range(access.n_layers)]
        _, got = access.run(batch, capture=caps)
        mask = batch.attention_mask.bool()
        for layer in range(access.n_layers):
            z = got[access.hook(layer, "z")].cpu()
            total[layer] += z.sum(0) if final else z[mask].sum(0)
        count += len(batch.golds) if final else int(mask.sum())
    return total / count


@dataclass(frozen=True)
class HeadAblation(Intervention):
    """Replace chosen heads' outputs (``hook_z``) by zero or by a mean, at all or final positions.

    Attributes:
        heads: the ``(layer, head)`` pairs.
        how: ``"zero"`` or ``"mean"``.
        where: ``"all"`` positions or only each prompt's ``"final"`` position.
        means: ``[layer, head, d_head]`` means for ``how="mean"`` (see :func:`head_means`).

    Raises:
        ValueError: no heads, a head that is not a pair of non-negative integers, an unknown ``how``/``where``,
            or mean-ablation without means (or heads outside them). Heads beyond the model's are refused when
            the hooks run; :func:`ablation` checks them against the model up front.
    """

    heads: tuple[Head, ...]
    how: str = "zero"
    where: str = "all"
    means: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", head_pairs(self.heads))
        if not self.heads:
            raise ValueError("no heads to ablate; pass at least one (layer, head) pair")
        if self.how not in HOWS:
            raise ValueError(f"how must be one of {HOWS}, got {self.how!r}")
        if self.where not in WHERE:
            raise ValueError(f"where must be one of {WHERE}, got {self.where!r}")
        if self.how == "mean" and self.means is None:
            raise ValueError("mean-ablation needs means: pass reference prompts to ablation(...) or head_means(...)")
        if self.means is not None:
            n_layers, n_heads = self.means.shape[:2]
            if outside := [h for h in self.heads if not (h[0] < n_layers and h[1] < n_heads)]:
                raise ValueError(f"heads {outside} are outside the means' {n_layers} layers and {n_heads} heads")

    def hooks(self, positions: Tensor | None = None) -> list[tuple[str, HookFn]]:
        """Forward hooks; ``positions`` ``[batch]`` limits the ablation to one position per row (-1: last)."""
        return [
            (ModelAccess.hook(layer, "z"), self._fn(layer, hs, positions)) for layer, hs in by_layer(self.heads).items()
        ]

    def _fn(self, layer: int, heads: list[int], positions: Tensor | None) -> HookFn:
        idx = torch.tensor(heads)

        def fn(z: Tensor, hook: Any) -> Tensor:
            if max(heads) >= z.shape[2]:
                raise ValueError(
                    f"head ({layer}, {max(heads)}) is outside the model: it has {z.shape[2]} heads per layer"
                )
            z = z.clone()
            value = 0.0 if self.how == "zero" else self.means[layer, idx].to(z.device, z.dtype)  # type: ignore[index]
            h = idx.to(z.device)
            if positions is None:
                z[:, :, h] = value
            else:
                rows = torch.arange(z.shape[0], device=z.device)
                z[rows[:, None], (positions.to(z.device) % z.shape[1])[:, None], h[None, :]] = value
            return z

        return fn

    def hooks_for(self, batch: PromptBatch) -> list[tuple[str, HookFn]]:
        """Forward hooks for ``batch`` (its own final positions with ``where="final"``)."""
        return self.hooks(batch.final_positions if self.where == "final" else None)

    def cache_key(self) -> str | None:
        """Content key of the ablation (the order of the heads does not matter)."""
        return digest("HeadAblation", tuple(sorted(self.heads)), self.how, self.where, self.means)


def ablation(
    model: Any, heads: Iterable[Sequence[int]], *, how: str = "zero", where: str = "all", reference: Reference = None
) -> HeadAblation:
    """Build a :class:`HeadAblation` for ``model`` (mean-ablation needs ``reference`` prompts).

    Raises:
        ValueError: no heads, heads outside the model or not integer pairs, an unknown
            ``how``/``where``, or ``how="mean"`` without ``reference``.
    """
    heads = check_heads(access := faithful_access(model, "ablation"), heads)
    if not heads:
        raise ValueError("no heads to ablate; pass at least one (layer, head) pair, e.g. found.heads")
    if how == "mean" and reference is None:
        raise ValueError("how='mean' needs reference prompts to average over: ablation(..., reference=prompts)")
    means = head_means(access, reference, where=where) if how == "mean" else None
    return HeadAblation(heads=heads, how=how, where=where, means=means)


@contextmanager
def ablate(
    model: Any, heads: Iterable[Sequence[int]], *, how: str = "zero", where: str = "all", reference: Reference = None
) -> Iterator[HeadAblation]:
    """Context manager: every forward pass of ``model`` inside runs with the heads ablated.

    With ``where="final"`` the last position of each row is ablated (left-pad batches).

    Raises:
        ValueError: as :func:`ablation`.
    """
    abl = ablation(model, heads, how=how, where=where, reference=reference)
    with model.hooks(fwd_hooks=abl.hooks(torch.tensor([-1]) if where == "final" else None)):
        yield abl


class Combined(Intervention):
    """Several interventions (or hook lists) applied together, in order; its key is made of its parts' keys."""

    def __init__(self, *parts: Hooks) -> None:
        self.parts = tuple(as_intervention(p) for p in parts)
        self.edits_pattern = any(p.edits_pattern for p in self.parts)  # type: ignore[misc]

    def hooks_for(self, batch: PromptBatch) -> list[tuple[str, HookFn]]:
        return [h for p in self.parts for h in p.hooks_for(batch)]

    def cache_key(self) -> str | None:
        keys = [p.cache_key() for p in self.parts]
        return None if None in keys else digest("Combined", keys)


def combine(*providers: Hooks) -> Combined:
    """One batch-aware intervention from several (e.g. an ablation and a correction at once)."""
    return Combined(*providers)


@contextmanager
def intervening(model: Any, *interventions: Any, batch: PromptBatch) -> Iterator[None]:
    """Context manager: forward passes of ``model`` inside run with every intervention applied, for ``batch``.

    Run ``model(batch.tokens, attention_mask=batch.attention_mask)`` inside.

    Raises:
        ValueError: no interventions.
        TypeError: an object that is not an :class:`~icl_heads.engine.Intervention`.
        UnfaithfulModelError: a correction that edits attention patterns, on a model that discards such edits.
    """
    if not interventions:
        raise ValueError("no interventions given; pass e.g. ih.interventions.ablation(model, heads) or a correction")
    hooks: list[tuple[str, HookFn]] = []
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(
                f"{type(iv).__name__} is not an intervention (an Intervention with hooks_for(batch)); pass a "
                "HeadAblation, a correction or combine(...) of them"
            )
        if iv.edits_pattern:
            require_pattern_edits(ModelAccess(model), type(iv).__name__)
        hooks += iv.hooks_for(batch)
    with model.hooks(fwd_hooks=hooks):
        yield
