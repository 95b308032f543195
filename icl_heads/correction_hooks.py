"""The corrections (frozen dataclasses acting on chosen heads at each prompt's final position) and their maths.

Built by :mod:`icl_heads.corrections`; the maths on the final attention row is tested on hand-made tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_heads.access import Head, ModelAccess
from icl_heads.engine import HookFn, Intervention
from icl_heads.interventions import by_layer
from icl_heads.prompts import PromptBatch
from icl_heads.slots import positions_with_labels


def label_counts(demo_labels: Int[Tensor, "batch demo"], n_labels: int) -> Int[Tensor, "batch label"]:
    """Demonstrations per label in each prompt (``-1`` entries are padding)."""
    valid = demo_labels >= 0
    onehot = torch.nn.functional.one_hot(demo_labels.clamp(min=0), n_labels) * valid[..., None]
    return onehot.sum(1)


def _counts(demo_labels: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Real slots, demonstrations per label ``[batch, label]`` and per slot's own label ``[batch, demo]``."""
    valid = demo_labels >= 0
    counts = label_counts(demo_labels, int(demo_labels.max().item()) + 1 if valid.any() else 1).to(dtype)
    return valid, counts, counts.gather(1, demo_labels.clamp(min=0))


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
    valid, counts, own = _counts(demo_labels, attention.dtype)
    present = counts > 0
    mean = (counts * present).sum(-1, keepdim=True) / present.sum(-1, keepdim=True).clamp(min=1)
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
    valid, counts, own = _counts(demo_labels, attention.dtype)
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


def _at_labels(t: Tensor, heads: list[int], n_heads: int, lp: Tensor) -> Tensor:
    """``t[b, label position, kv head of each head]`` as ``[batch, head, demo, d]`` floats (grouped queries too)."""
    kv = torch.tensor([h // (n_heads // t.shape[2]) for h in heads], device=t.device)
    rows = torch.arange(t.shape[0], device=t.device)
    return t[rows[:, None, None], lp.to(t.device).clamp(min=0)[:, None, :], kv[None, :, None]].float()


def _final(t: Tensor, fp: Tensor, query_dim: int) -> tuple[Tensor, Tensor]:
    """Row indices of ``t`` and each row's final position along its query axis ``query_dim``."""
    return torch.arange(t.shape[0], device=t.device), fp.to(t.device) % t.shape[query_dim]


def _keep(store: dict[str, Tensor], key: str, pick: Any = None) -> HookFn:
    """A hook that stores its activation (or ``pick(activation)``) under ``key`` and changes nothing."""

    def fn(t: Tensor, hook: Any) -> None:
        store[key] = t if pick is None else pick(t)

    return fn


def _label_index(pattern: Tensor, heads: list[int], lp: Tensor, fp: Tensor) -> tuple[Tensor, ...]:
    """Index of ``pattern[b, heads, final, label positions]`` (``[batch, head, demo]``; padding slots at 0)."""
    rows, final = _final(pattern, fp, -2)
    h, pos = torch.tensor(heads, device=pattern.device), lp.to(pattern.device).clamp(min=0)
    return rows[:, None, None], h[None, :, None], final[:, None, None], pos[:, None, :]


@dataclass(frozen=True)
class Correction(Intervention):
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

    def hooks_for(self, batch: PromptBatch) -> list[tuple[str, HookFn]]:
        """Forward hooks for ``batch``: its reading positions, demonstration labels and final positions."""
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
        return [hook for layer, hs in by_layer(self.heads).items() for hook in self._layer_hooks(layer, hs, lp, dl, fp)]

    def _layer_hooks(self, layer, heads, lp, dl, fp) -> list[tuple[str, HookFn]]:
        """One ``hook_pattern`` hook replacing the final row's label attention ``att`` by ``self._change(...)(att)``."""
        change = self._change(layer, heads, lp, dl)

        def fn(pattern: Tensor, hook: Any) -> Tensor:
            idx = _label_index(pattern, heads, lp, fp)
            valid = (lp.to(pattern.device) >= 0)[:, None, :].expand(-1, len(heads), -1)
            new = change(torch.where(valid, pattern[idx].float(), 0.0)).to(pattern.dtype)
            pattern = pattern.clone()
            pattern[tuple(i.expand_as(new)[valid] for i in idx)] = new[valid]
            return pattern

        return [(ModelAccess.hook(layer, "pattern"), fn)]


@dataclass(frozen=True)
class CountNormalisation(Correction):
    """Majority-bias correction: label attention made independent of label counts (see :func:`count_normalise`).

    Attributes:
        heads: the ``(layer, head)`` pairs to correct.
        strength: exponent on ``mean_count / n_c`` (1: exact normalisation).
    """

    balanced_noop: ClassVar[bool] = True
    strength: float = 1.0

    def _change(self, layer, heads, lp, dl):
        return lambda a: count_normalise(a, dl.to(a.device), self.strength)


@dataclass(frozen=True)
class PositionalPrior(Correction):
    """Recency-bias correction for any model: divide each slot's attention by its positional prior.

    Attributes:
        heads: the ``(layer, head)`` pairs to correct.
        prior: ``{n_demos: [head, slot]}`` mean share of label attention per slot over
            content-shuffled prompts, scaled to mean 1 over slots (see :func:`positional_prior`).
        strength: exponent on the prior (1: divide by it).
    """

    prior: dict = field(default_factory=dict, repr=False)
    strength: float = 1.0

    def _change(self, layer, heads, lp, dl):
        n_demo = (lp >= 0).sum(1)
        if missing := sorted({int(d) for d in n_demo} - set(self.prior)):
            raise ValueError(
                f"no positional prior for prompts with {missing} demonstrations (have {sorted(self.prior)}); "
                "build it with positional_prior(model, heads, reference prompts with that many shots)"
            )
        rows = [self.heads.index((layer, h)) for h in heads]
        table = torch.ones(len(lp), len(heads), lp.shape[1])
        for b, d in enumerate(n_demo.tolist()):
            table[b, :, :d] = self.prior[d][rows]
        return lambda a: slot_reweight(a, table.to(a.device), self.strength)


@dataclass(frozen=True)
class OVCompensation(Correction):
    """The paper's majority-bias fix: add minority-label positions' weighted values to ``hook_z`` at the final position.

    Attributes:
        heads: the ``(layer, head)`` pairs to correct.
        a_c: the base scale (the paper uses about 0.03); the added vector is scaled by
            ``a_c * n_majority / n_minority``.
    """

    a_c: float = 0.03
    balanced_noop: ClassVar[bool] = True
    edits_pattern: ClassVar[bool] = False

    def _layer_hooks(self, layer, heads, lp, dl, fp):
        store: dict[str, Tensor] = {}

        def add(z: Tensor, hook: Any) -> Tensor:
            if "att" not in store or "v" not in store:
                from icl_heads.access import UnfaithfulModelError

                raise UnfaithfulModelError(
                    f"OVCompensation cannot run on this model: layer {layer}'s attention pattern and values reach "
                    "their hooks only after hook_z (TransformerLens 4 lets the Hugging Face module compute this "
                    "attention), so the attention the correction needs is not known when it must edit z"
                )
            dev = z.device
            rows, final = _final(z, fp, 1)
            vals = _at_labels(store["v"], heads, z.shape[2], lp)
            delta = ov_compensation_delta(store["att"].float() * (lp.to(dev) >= 0)[:, None], vals, dl.to(dev), self.a_c)
            z = z.clone()
            z[rows[:, None], final[:, None], torch.tensor(heads, device=dev)[None, :]] += delta.to(z.dtype)
            return z

        return [
            (ModelAccess.hook(layer, "v"), _keep(store, "v")),
            (ModelAccess.hook(layer, "pattern"), _keep(store, "att", lambda p: p[_label_index(p, heads, lp, fp)])),
            (ModelAccess.hook(layer, "z"), add),
        ]


@dataclass(frozen=True)
class UnrotatedAttention(Correction):
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

        def final_row(t: Tensor, query_dim: int) -> Tensor:  # [batch, chosen head, ...] at the final query
            return t[_final(t, fp, query_dim)][:, h_idx.to(t.device)]

        def replace(pattern: Tensor, hook: Any) -> Tensor:
            dev = pattern.device
            rows, final = _final(pattern, fp, -2)
            keys = _at_labels(store["k"], heads, pattern.shape[1], lp)
            new = torch.einsum("bhd,bhpd->bhp", store["q"].float(), keys) / self.attn_scale[layer]
            pattern = pattern.clone()
            row = rescore_row(store["scores"].float(), new, lp.to(dev), self.mix)
            pattern[rows[:, None], h_idx.to(dev)[None, :], final[:, None]] = row.to(pattern.dtype)
            return pattern

        return [
            (ModelAccess.hook(layer, "q"), _keep(store, "q", lambda q: final_row(q, 1))),  # [b, head, d]
            (ModelAccess.hook(layer, "k"), _keep(store, "k")),
            (ModelAccess.hook(layer, "attn_scores"), _keep(store, "scores", lambda s: final_row(s.transpose(1, 2), 1))),
            (ModelAccess.hook(layer, "pattern"), replace),
        ]
