"""Build the corrections of majority-label and recency bias (:mod:`icl_heads.correction_hooks`) for a model.

Each acts only on ``heads`` at each prompt's final position; pass one as ``hooks=`` to any analysis.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from icl_heads.access import Capture, ModelAccess, batches, require_pattern_edits
from icl_heads.correction_hooks import (
    Correction,
    CountNormalisation,
    OVCompensation,
    PositionalPrior,
    UnrotatedAttention,
)
from icl_heads.faithfulness import faithful_access
from icl_heads.interventions import check_heads
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.slots import positions_with_labels


def attention_scales(access: ModelAccess) -> tuple[float, ...]:
    """The divisor of ``q . k`` in each layer's attention scores."""
    cfg, base = access.cfg, 1.0
    if getattr(cfg, "use_attn_scale", True):
        s = getattr(cfg, "attn_scale", -1.0)
        base = float(s) if s is not None and s > 0 else math.sqrt(access.d_head)
    by_layer = bool(getattr(cfg, "scale_attn_by_inverse_layer_idx", False))
    return tuple(base * (layer + 1 if by_layer else 1) for layer in range(access.n_layers))


def count_normalisation(
    model: Any, heads: Sequence[Sequence[int]], strength: float = 1.0, *, read_at: str = "label"
) -> CountNormalisation:
    """A :class:`CountNormalisation` for ``model`` (checks the heads).

    Raises:
        ValueError: heads outside the model or none, or a bad ``read_at``.
        UnfaithfulModelError: the model discards edits of attention patterns (TransformerLens 4
            on GPT-J, GPT-Neo, OPT), so this correction would change nothing.
    """
    access = faithful_access(model, "count_normalisation")
    require_pattern_edits(access, "count_normalisation")
    return CountNormalisation(check_heads(access, heads), strength=float(strength), read_at=read_at)


def ov_compensation(
    model: Any, heads: Sequence[Sequence[int]], a_c: float = 0.03, *, read_at: str = "label"
) -> OVCompensation:
    """An :class:`OVCompensation` for ``model`` (checks the heads).

    Raises:
        ValueError: heads outside the model or none, or a bad ``read_at``.
    """
    return OVCompensation(
        check_heads(faithful_access(model, "ov_compensation"), heads), a_c=float(a_c), read_at=read_at
    )


def unrotated_attention(
    model: Any, heads: Sequence[Sequence[int]], mix: float = 1.0, *, read_at: str = "label"
) -> UnrotatedAttention:
    """An :class:`UnrotatedAttention` for a rotary ``model``.

    Raises:
        ValueError: the model has no rotary embeddings (use :func:`positional_prior`),
            or heads outside the model.
    """
    access = faithful_access(model, "unrotated_attention")
    require_pattern_edits(access, "unrotated_attention")
    if not access.rotary:
        raise ValueError(
            f"the un-rotated attention correction needs rotary position embeddings, but {access.name} uses "
            f"{access.cfg.positional_embedding_type!r} positional embeddings; use the positional-prior "
            "correction (positional_prior / method='prior'), which works for any model"
        )
    heads = check_heads(access, heads)
    order: list[str] = []
    names = ("q", "k", "attn_scores", "pattern")
    probe = [(access.hook(heads[0][0], n), lambda a, hook, n=n: order.append(n)) for n in names]
    with torch.inference_mode():
        access.model.run_with_hooks(torch.zeros(1, 2, dtype=torch.long, device=access.device), fwd_hooks=probe)
    if [n for n in order if n in names] != list(names):
        raise ValueError(
            f"this model runs its attention hooks in the order {order}, not q, k, attn_scores, pattern, so the "
            "rotated scores are not available when the pattern is formed (e.g. a TransformerBridge built with "
            "boot_native); use the positional-prior correction (method='prior'), which works for any model"
        )
    return UnrotatedAttention(heads, attn_scale=attention_scales(access), mix=float(mix), read_at=read_at)


def positional_prior(
    model: Any,
    heads: Sequence[Sequence[int]],
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    strength: float = 1.0,
    read_at: str = "label",
    options: RunOptions | None = None,
) -> PositionalPrior:
    """Fit each head's positional prior on content-shuffled prompts and return the correction.

    The prior of slot ``i`` is the head's mean share of final-position label attention on
    the ``i``-th label token (scaled to mean 1 over slots). Use random-order prompts from a
    seed you do not test on, so that only position remains.

    Args:
        model: the model.
        heads: the heads to correct.
        prompts: content-shuffled reference prompts.
        strength: the correction's strength (0: no change).
        read_at: ``"label"``, ``"after_label"`` or ``"slot"``.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Raises:
        ValueError: heads outside the model, or the checks of :class:`~icl_heads.access.ModelAccess`.
    """
    options = run_options(options)
    access = faithful_access(model, "positional_prior")
    require_pattern_edits(access, "positional_prior")
    heads = check_heads(access, heads)
    caps = [Capture(access.hook(ly, "pattern"), "pattern_final") for ly in sorted({ly for ly, _ in heads})]
    sums: dict[int, Tensor] = {}
    counts: dict[int, int] = {}
    for batch in batches(access, access.tokenize(prompts), options, desc="positional prior"):
        _, got = access.run(batch, capture=caps)
        read, _ = positions_with_labels(batch, read_at)
        for b, d in enumerate((read >= 0).sum(1).tolist()):
            if d:
                att = torch.stack([got[access.hook(ly, "pattern")][b, h].cpu()[read[b, :d]] for ly, h in heads])
                sums[d] = sums.get(d, torch.zeros(len(heads), d)) + att / att.sum(-1, keepdim=True).clamp(min=1e-12)
                counts[d] = counts.get(d, 0) + 1
    if not sums:
        raise ValueError("the reference prompts have no demonstrations; sample them with shots >= 1")
    prior = {d: (s / counts[d]) * d for d, s in sums.items()}
    return PositionalPrior(heads, prior=prior, strength=float(strength), read_at=read_at)


@contextmanager
def correcting(
    model: Any,
    correction: Correction,
    label_positions: Int[Tensor, "batch demo"],
    demo_labels: Int[Tensor, "batch demo"],
    final_positions: Int[Tensor, " batch"] | None = None,
) -> Iterator[Correction]:
    """Context manager: forward passes of ``model`` inside run with ``correction`` applied.

    Args:
        model: the model whose forward passes to correct.
        correction: a correction from this module.
        label_positions: ``[batch, demo]`` positions of the label tokens (``-1`` padding).
        demo_labels: ``[batch, demo]`` label (class index) of each demonstration.
        final_positions: ``[batch]`` query positions (default: each row's last token).

    Raises:
        ValueError: shapes that do not match.
        UnfaithfulModelError: a correction that edits attention patterns, on a model that discards such edits.
    """
    if correction.edits_pattern:
        require_pattern_edits(faithful_access(model, "correcting"), type(correction).__name__)
    with model.hooks(fwd_hooks=correction.hooks(label_positions, demo_labels, final_positions)):
        yield correction
