"""Corrections of majority-label and recency bias, as hooks on chosen heads at the final position.

Every correction is a frozen dataclass restricted to ``heads`` and to each prompt's
final query position; every other head, query position and layer is untouched.

* :class:`CountNormalisation` (majority): at the final position, each label's total
  attention on its label tokens is divided by how many demonstrations carry it, then
  the label tokens' total attention is restored. Balanced counts: no change at all.
* :class:`OVCompensation` (majority, the paper's fix): adds to the head's ``hook_z``
  the attention-weighted values of the minority labels' positions, scaled by
  ``a_c * n_majority / n_minority``. Balanced counts: no change at all.
* :class:`UnrotatedAttention` (recency, rotary models only): the attention scores from
  the final position to label tokens are recomputed from un-rotated ``hook_q`` and
  ``hook_k`` (``mix`` interpolates), other keys keep their scores, and the row is
  softmaxed again.
* :class:`PositionalPrior` (recency, any model): attention on demonstration slot ``i``
  is divided by that slot's mean share of label attention over content-shuffled
  prompts (to the power ``strength``), then the label tokens' total attention is restored.

Each is a batch-aware hook provider: ``correction(batch)`` gives forward hooks, so it
plugs into ``icl_accuracy(model, prompts, hooks=correction)``. For a forward pass of
your own, use :func:`correcting` with the label positions and demonstration labels.
``read_at`` (``"label"``, ``"after_label"`` or ``"slot"``, see :mod:`icl_heads.slots`)
says which tokens of each demonstration a correction acts on: the model's reading
position, not necessarily the label token.
The maths on attention rows lives in module-level functions tested on hand-made tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_heads.engine import RunOptions, batches
from icl_heads.faithfulness import require_pattern_edits
from icl_heads.interventions import check_heads
from icl_heads.models import Capture, Head, HookFn, ModelAccess
from icl_heads.prompts import ICLPrompts, PromptBatch, TokenizedPrompts
from icl_heads.slots import positions_with_labels

# ---- pure maths on the final attention row ---------------------------------------------------


def label_counts(demo_labels: Int[Tensor, "batch demo"], n_labels: int) -> Int[Tensor, "batch label"]:
    """Demonstrations per label in each prompt (``-1`` entries are padding)."""
    valid = demo_labels >= 0
    onehot = torch.nn.functional.one_hot(demo_labels.clamp(min=0), n_labels) * valid[..., None]
    return onehot.sum(1)


def _restore_mass(old: Tensor, new: Tensor) -> Tensor:
    """Rescale ``new`` (last dim) so its sum equals ``old``'s."""
    total_old, total_new = old.sum(-1, keepdim=True), new.sum(-1, keepdim=True)
    return torch.where(total_new > 0, new * (total_old / total_new.clamp(min=1e-30)), old)


def count_normalise(
    attention: Float[Tensor, "batch head demo"], demo_labels: Int[Tensor, "batch demo"], strength: float = 1.0
) -> Float[Tensor, "batch head demo"]:
    """Make each label's attention mass independent of its number of demonstrations.

    A label with ``n_c`` demonstrations has its label tokens' attention multiplied by
    ``(mean_count / n_c) ** strength`` (``mean_count`` over the labels present); the
    total attention on label tokens is then restored. Rows with balanced counts, and
    padding slots (label ``-1``), are returned unchanged.
    """
    valid = demo_labels >= 0
    n_labels = int(demo_labels.max().item()) + 1 if valid.any() else 1
    counts = label_counts(demo_labels, n_labels).to(attention.dtype)  # [batch, label]
    present = counts > 0
    mean = (counts * present).sum(-1, keepdim=True) / present.sum(-1, keepdim=True).clamp(min=1)
    own = counts.gather(1, demo_labels.clamp(min=0))  # [batch, demo]
    factor = torch.where(valid, (mean / own.clamp(min=1)) ** strength, torch.ones_like(own))
    new = _restore_mass(attention * valid[:, None], attention * factor[:, None] * valid[:, None])
    new = torch.where(valid[:, None], new, attention)
    balanced = (counts.masked_fill(~present, float("inf")).amin(-1) == counts.amax(-1))[:, None, None]
    return torch.where(balanced, attention, new)


def ov_compensation_delta(
    attention: Float[Tensor, "batch head demo"],
    values: Float[Tensor, "batch head demo d_head"],
    demo_labels: Int[Tensor, "batch demo"],
    a_c: float,
) -> Float[Tensor, "batch head d_head"]:
    """The paper's OV compensation: ``sum over minority-label slots p of a_c * n_max / n_c(p) * A_p v_p``.

    A label is a minority label when it has fewer demonstrations than the most common
    one; balanced rows get exactly zero.
    """
    valid = demo_labels >= 0
    n_labels = int(demo_labels.max().item()) + 1 if valid.any() else 1
    counts = label_counts(demo_labels, n_labels).to(attention.dtype)
    own = counts.gather(1, demo_labels.clamp(min=0))
    n_max = counts.amax(-1, keepdim=True)
    weight = torch.where(valid & (own < n_max), a_c * n_max / own.clamp(min=1), torch.zeros_like(own))
    return torch.einsum("bhp,bp,bhpd->bhd", attention, weight, values)


def slot_reweight(
    attention: Float[Tensor, "batch head demo"], prior: Float[Tensor, "batch head demo"], strength: float = 1.0
) -> Float[Tensor, "batch head demo"]:
    """Divide each slot's attention by its positional prior (relative, mean 1), restore the label mass."""
    return _restore_mass(attention, attention / prior.clamp(min=1e-12) ** strength)


def rescore_row(
    scores: Float[Tensor, "batch head key"],
    new_scores: Float[Tensor, "batch head demo"],
    label_positions: Int[Tensor, "batch demo"],
    mix: float = 1.0,
) -> Float[Tensor, "batch head key"]:
    """Softmax of ``scores`` with label keys' scores moved ``mix`` of the way to ``new_scores``."""
    valid = label_positions >= 0
    pos = label_positions.clamp(min=0)[:, None, :].expand(-1, scores.shape[1], -1)
    old = scores.gather(2, pos)
    moved = torch.where(valid[:, None], old + mix * (new_scores - old), old)
    return scores.scatter(2, pos, moved).softmax(-1)


# ---- hooks ----------------------------------------------------------------------------------


def _by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(layer, []).append(head)
    return out


def _kv_index(heads: list[int], n_heads: int, n_kv: int) -> list[int]:
    return [h // (n_heads // n_kv) for h in heads]


@dataclass(frozen=True)
class _Correction:
    """Base: chosen heads, final position only; subclasses build hooks for one batch.

    ``read_at`` picks the positions of each demonstration the correction acts on when
    called on a batch: ``"label"`` (label tokens), ``"after_label"`` (the last template
    token after each label) or ``"slot"`` (all of them).
    """

    heads: tuple[Head, ...]
    #: whether the correction edits ``hook_pattern`` (some models discard such edits: checked before use)
    edits_pattern: ClassVar[bool] = True
    read_at: str = field(default="label", kw_only=True)

    def __post_init__(self) -> None:
        if not self.heads:
            raise ValueError("a correction needs at least one (layer, head); pass the in-context heads")
        if self.read_at not in ("label", "after_label", "slot"):
            raise ValueError(
                f"read_at must be 'label', 'after_label' or 'slot', got {self.read_at!r}; resolve 'auto' with "
                "icl_heads.reading.resolve_read_at or let correct_majority_bias/correct_recency_bias do it"
            )
        object.__setattr__(self, "heads", tuple((int(a), int(b)) for a, b in self.heads))

    def __call__(self, batch: PromptBatch) -> list[tuple[str, HookFn]]:
        positions, labels = positions_with_labels(batch, self.read_at)
        return self.hooks(positions, labels, batch.final_positions)

    def hooks(
        self,
        label_positions: Int[Tensor, "batch demo"],
        demo_labels: Int[Tensor, "batch demo"],
        final_positions: Int[Tensor, " batch"] | None = None,
    ) -> list[tuple[str, HookFn]]:
        """Forward hooks for a batch (``final_positions`` None: each row's last position).

        Raises:
            ValueError: label positions and labels of different shapes.
        """
        lp, dl = torch.as_tensor(label_positions), torch.as_tensor(demo_labels)
        if lp.shape != dl.shape or lp.ndim != 2:
            raise ValueError(
                f"label_positions {tuple(lp.shape)} and demo_labels {tuple(dl.shape)} must both be [batch, demo]"
            )
        fp = torch.full((lp.shape[0],), -1) if final_positions is None else torch.as_tensor(final_positions)
        return [
            hook for layer, hs in _by_layer(self.heads).items() for hook in self._layer_hooks(layer, hs, lp, dl, fp)
        ]

    def _layer_hooks(self, layer, heads, lp, dl, fp) -> list[tuple[str, HookFn]]:  # pragma: no cover
        raise NotImplementedError


def _pattern_hook(heads: list[int], lp: Tensor, fp: Tensor, change) -> HookFn:
    """A ``hook_pattern`` hook replacing ``pattern[b, heads, final, label positions]`` by ``change(att)``.

    ``att`` is ``[batch, head, demo]`` with zeros at padding slots (label position -1).
    """

    def fn(pattern: Tensor, hook: Any) -> Tensor:
        dev = pattern.device
        rows = torch.arange(pattern.shape[0], device=dev)
        final = fp.to(dev) % pattern.shape[-2]
        h = torch.tensor(heads, device=dev)
        pos = lp.to(dev).clamp(min=0)
        att = pattern[rows[:, None, None], h[None, :, None], final[:, None, None], pos[:, None, :]]
        valid = (lp.to(dev) >= 0)[:, None, :].expand_as(att)
        new = change(torch.where(valid, att.float(), 0.0)).to(pattern.dtype)
        pattern = pattern.clone()
        idx = (rows[:, None, None], h[None, :, None], final[:, None, None], pos[:, None, :])
        pattern[tuple(i.expand_as(new)[valid] for i in idx)] = new[valid]
        return pattern

    return fn


@dataclass(frozen=True)
class CountNormalisation(_Correction):
    """Majority-bias correction: label attention made independent of label counts (see :func:`count_normalise`).

    Attributes:
        heads: the ``(layer, head)`` pairs to correct.
        strength: exponent on ``mean_count / n_c`` (1: exact normalisation).
    """

    strength: float = 1.0

    def _layer_hooks(self, layer, heads, lp, dl, fp):
        return [
            (
                ModelAccess.hook(layer, "pattern"),
                _pattern_hook(heads, lp, fp, lambda a: count_normalise(a, dl.to(a.device), self.strength)),
            )
        ]


@dataclass(frozen=True)
class PositionalPrior(_Correction):
    """Recency-bias correction for any model: divide each slot's attention by its positional prior.

    Attributes:
        heads: the ``(layer, head)`` pairs to correct.
        prior: ``{n_demos: [head, slot]}`` mean share of label attention per slot over
            content-shuffled prompts, scaled to mean 1 over slots (see :func:`positional_prior`).
        strength: exponent on the prior (1: divide by it).
    """

    prior: dict = field(default_factory=dict, repr=False)
    strength: float = 1.0

    def _layer_hooks(self, layer, heads, lp, dl, fp):
        n_demo = (lp >= 0).sum(1)
        missing = sorted({int(d) for d in n_demo} - set(self.prior))
        if missing:
            raise ValueError(
                f"no positional prior for prompts with {missing} demonstrations (have {sorted(self.prior)}); "
                "build it with positional_prior(model, heads, reference prompts with that many shots)"
            )
        rows = [self.heads.index((layer, h)) for h in heads]
        table = torch.ones(len(lp), len(heads), lp.shape[1])
        for b, d in enumerate(n_demo.tolist()):
            table[b, :, :d] = self.prior[d][rows]
        return [
            (
                ModelAccess.hook(layer, "pattern"),
                _pattern_hook(heads, lp, fp, lambda a: slot_reweight(a, table.to(a.device), self.strength)),
            )
        ]


@dataclass(frozen=True)
class OVCompensation(_Correction):
    """The paper's majority-bias fix: add minority-label positions' weighted values to ``hook_z`` at the final position.

    Attributes:
        heads: the ``(layer, head)`` pairs to correct.
        a_c: the base scale (the paper uses about 0.03); the added vector is scaled by
            ``a_c * n_majority / n_minority``.
    """

    a_c: float = 0.03
    edits_pattern: ClassVar[bool] = False

    def _layer_hooks(self, layer, heads, lp, dl, fp):
        store: dict[str, Tensor] = {}

        def keep_v(v: Tensor, hook: Any) -> None:
            store["v"] = v

        def keep_pattern(pattern: Tensor, hook: Any) -> None:
            rows = torch.arange(pattern.shape[0], device=pattern.device)
            final = fp.to(pattern.device) % pattern.shape[-2]
            store["att"] = pattern[
                rows[:, None, None],
                torch.tensor(heads, device=pattern.device)[None, :, None],
                final[:, None, None],
                lp.to(pattern.device).clamp(min=0)[:, None, :],
            ]
            store["n_heads"] = torch.tensor(pattern.shape[1])

        def add(z: Tensor, hook: Any) -> Tensor:
            if "att" not in store or "v" not in store:
                from icl_heads.faithfulness import UnfaithfulModelError

                raise UnfaithfulModelError(
                    f"OVCompensation cannot run on this model: layer {layer}'s attention pattern and values reach "
                    "their hooks only after hook_z (TransformerLens 4 lets the Hugging Face module compute this "
                    "attention), so the attention the correction needs is not known when it must edit z"
                )
            dev = z.device
            v, att = store["v"], store["att"].float()
            kv = torch.tensor(_kv_index(heads, int(store["n_heads"]), v.shape[2]), device=dev)
            rows = torch.arange(z.shape[0], device=dev)
            pos = lp.to(dev).clamp(min=0)
            vals = v[rows[:, None, None], pos[:, None, :], kv[None, :, None]].float()  # [b, head, demo, d]
            delta = ov_compensation_delta(att * (lp.to(dev) >= 0)[:, None], vals, dl.to(dev), self.a_c)
            z = z.clone()
            final = fp.to(dev) % z.shape[1]
            h = torch.tensor(heads, device=dev)
            z[rows[:, None], final[:, None], h[None, :]] += delta.to(z.dtype)
            return z

        return [
            (ModelAccess.hook(layer, "v"), keep_v),
            (ModelAccess.hook(layer, "pattern"), keep_pattern),
            (ModelAccess.hook(layer, "z"), add),
        ]


@dataclass(frozen=True)
class UnrotatedAttention(_Correction):
    """Recency-bias correction for rotary models: final-row scores at label keys from un-rotated q and k.

    Attributes:
        heads: the ``(layer, head)`` pairs to correct.
        attn_scale: the model's score divisor for each layer (see :func:`unrotated_attention`).
        mix: 1 uses the un-rotated scores, 0 keeps the rotated ones, between interpolates.
    """

    attn_scale: tuple[float, ...] = ()
    mix: float = 1.0

    def _layer_hooks(self, layer, heads, lp, dl, fp):
        store: dict[str, Tensor] = {}
        h_idx = torch.tensor(heads)

        def keep_q(q: Tensor, hook: Any) -> None:
            rows = torch.arange(q.shape[0], device=q.device)
            store["q"] = q[rows, fp.to(q.device) % q.shape[1]][:, h_idx.to(q.device)]  # [b, head, d]
            store["n_heads"] = torch.tensor(q.shape[2])

        def keep_k(k: Tensor, hook: Any) -> None:
            store["k"] = k

        def keep_scores(scores: Tensor, hook: Any) -> None:
            rows = torch.arange(scores.shape[0], device=scores.device)
            store["scores"] = scores[rows, :, fp.to(scores.device) % scores.shape[-2]][:, h_idx.to(scores.device)]

        def replace(pattern: Tensor, hook: Any) -> Tensor:
            dev = pattern.device
            k = store["k"]
            kv = torch.tensor(_kv_index(heads, int(store["n_heads"]), k.shape[2]), device=dev)
            rows = torch.arange(pattern.shape[0], device=dev)
            pos = lp.to(dev).clamp(min=0)
            keys = k[rows[:, None, None], pos[:, None, :], kv[None, :, None]].float()  # [b, head, demo, d]
            new = torch.einsum("bhd,bhpd->bhp", store["q"].float(), keys) / self.attn_scale[layer]
            row = rescore_row(store["scores"].float(), new, lp.to(dev), self.mix)
            pattern = pattern.clone()
            final = fp.to(dev) % pattern.shape[-2]
            pattern[rows[:, None], h_idx.to(dev)[None, :], final[:, None]] = row.to(pattern.dtype)
            return pattern

        return [
            (ModelAccess.hook(layer, "q"), keep_q),
            (ModelAccess.hook(layer, "k"), keep_k),
            (ModelAccess.hook(layer, "attn_scores"), keep_scores),
            (ModelAccess.hook(layer, "pattern"), replace),
        ]


# ---- builders ---------------------------------------------------------------------------------


def attention_scales(access: ModelAccess) -> tuple[float, ...]:
    """The divisor of ``q . k`` in each layer's attention scores."""
    cfg = access.cfg
    base = 1.0
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
    access = ModelAccess(model, analysis="count_normalisation")
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
        check_heads(ModelAccess(model, analysis="ov_compensation"), heads), a_c=float(a_c), read_at=read_at
    )


def unrotated_attention(
    model: Any, heads: Sequence[Sequence[int]], mix: float = 1.0, *, read_at: str = "label"
) -> UnrotatedAttention:
    """An :class:`UnrotatedAttention` for a rotary ``model``.

    Raises:
        ValueError: the model has no rotary embeddings (use :func:`positional_prior`),
            or heads outside the model.
    """
    access = ModelAccess(model, analysis="unrotated_attention")
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
    batch_size: int = 32,
) -> PositionalPrior:
    """Fit each head's positional prior on content-shuffled prompts and return the correction.

    The prior of slot ``i`` is the mean, over ``prompts``, of the share of the head's
    final-position attention on label tokens that falls on the ``i``-th label token,
    scaled so its mean over slots is 1. Use random-order prompts from a seed you do not
    test on: their content is independent of the slot, so only position remains.

    With ``read_at="slot"`` every slot token is a slot of its own; ``"after_label"`` uses
    the token after each label.

    Raises:
        ValueError: heads outside the model, or the checks of :class:`~icl_heads.models.ModelAccess`.
    """
    access = ModelAccess(model, analysis="positional_prior")
    require_pattern_edits(access, "positional_prior")
    heads = check_heads(access, heads)
    tp = access.tokenize(prompts)
    layers = sorted({layer for layer, _ in heads})
    sums: dict[int, Tensor] = {}
    counts: dict[int, int] = {}
    for batch in batches(access, tp, RunOptions(batch_size)):
        caps = [Capture(access.hook(ly, "pattern"), "pattern_final") for ly in layers]
        _, got = access.run(batch, capture=caps)
        read, _ = positions_with_labels(batch, read_at)
        n_demo = (read >= 0).sum(1)
        for b, d in enumerate(n_demo.tolist()):
            if d == 0:
                continue
            pos = read[b, :d]
            att = torch.stack([got[access.hook(ly, "pattern")][b, h].cpu()[pos] for ly, h in heads])
            share = att / att.sum(-1, keepdim=True).clamp(min=1e-12)
            sums[d] = sums.get(d, torch.zeros(len(heads), d)) + share
            counts[d] = counts.get(d, 0) + 1
    if not sums:
        raise ValueError("the reference prompts have no demonstrations; sample them with shots >= 1")
    prior = {d: (s / counts[d]) * d for d, s in sums.items()}
    return PositionalPrior(heads, prior=prior, strength=float(strength), read_at=read_at)


@contextmanager
def correcting(
    model: Any,
    correction: _Correction,
    label_positions: Int[Tensor, "batch demo"],
    demo_labels: Int[Tensor, "batch demo"],
    final_positions: Int[Tensor, " batch"] | None = None,
) -> Iterator[_Correction]:
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
        require_pattern_edits(ModelAccess(model, analysis="correcting"), type(correction).__name__)
    with model.hooks(fwd_hooks=correction.hooks(label_positions, demo_labels, final_positions)):
        yield correction
