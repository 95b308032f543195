"""What in-context heads write: their value-output vectors at label positions, projected onto the vocabulary.

DESIGN §2a. For head ``(l, h)``, a prompt with final position ``t`` and a source
position ``p``, the head's per-position value-output vector is ``v_p W_O^{l,h}``
(``v`` from ``hook_v``; with grouped-query attention head ``h`` reads key/value head
``h // (n_heads / n_kv)``). Weighted by attention, ``A[t, p] v_p W_O^{l,h}``, these sum
over ``p`` to the head's output ``z_t W_O^{l,h}``. Projected through the final norm
(its scale frozen at ``t``) and the unembedding, the vector at a demonstration's label
position shows which label the head would copy from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_heads.access import Head, batches
from icl_heads.faithfulness import faithful_access
from icl_heads.interventions import check_heads
from icl_heads.mechanism._maths import label_metrics, own_vs_rest
from icl_heads.mechanism._run import (
    at_keys,
    decode_ids,
    gather_heads,
    heads_of,
    label_and_control,
    label_shift,
    label_word_columns,
    ov_at,
    reading_positions,
    token_str,
)
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, PromptBatch, TokenizedPrompts
from icl_heads.reading import MIN_READ_SHARE, ReadingInfo
from icl_heads.records import UNSET, Provenance
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.slots import ROLES, positions_with_labels, read_positions
from icl_heads.stats import wilson


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class OVLabelFeaturesConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.ov_label_features`, and where it read."""

    control_offset: int = UNSET
    top_k: int = UNSET
    top_rank: int = UNSET


def per_position_ov(
    model: Any, batch: PromptBatch, heads: Sequence[Head], positions: Int[Tensor, "batch n"]
) -> tuple[Float[Tensor, "batch head n d_model"], Float[Tensor, "batch head n"], Float[Tensor, "batch 1"]]:
    """Per-position value-output vectors ``v_p W_O`` of ``heads`` and the attention ``A[t, p]`` from the final position.

    Args:
        model: a TransformerLens model or :class:`~icl_heads.access.ModelAccess`.
        batch: one batch from :func:`icl_heads.access.batches`.
        heads: ``(layer, head)`` pairs.
        positions: source positions per prompt (in the batch's padded coordinates).

    Returns:
        The unweighted vectors, the attention weights (``weights[..., None] * vectors``
        summed over all positions ``p <= t`` is ``z_t W_O``) and the final norm's scale
        at the final position.

    Raises:
        ValueError: heads outside the model.
    """
    access = faithful_access(model, "per_position_ov")
    heads = check_heads(access, heads)
    layers = sorted({layer for layer, _ in heads})
    _, got = gather_heads(access, batch, layers, positions, values=True)
    vecs, attn = [], []
    for layer, h in heads:
        vecs.append(ov_at(access, got, layer, h))
        attn.append(at_keys(got[access.hook(layer, "pattern")], positions)[:, h])
    return torch.stack(vecs, 1), torch.stack(attn, 1), got["ln_final.hook_scale"]


@dataclass(frozen=True, repr=False)
class OVLabelFeatures(Result):
    """What each head's value-output vector at label (and control) positions promotes.

    The ``"label"`` positions are where each demonstration's label is read, by
    ``config["read_at"]``: its label token, the template token after it (e.g. the newline)
    or its whole slot; the ``role`` column of ``positions`` says which token each is.

    Attributes:
        heads: the analysed heads.
        df: one row per head, position ``kind`` (``"label"``, ``"control"``) and
            ``label`` (each label word, and ``"all"``): ``n`` (demonstrations, the
            independent units; a slot's tokens count once), ``n_positions`` (tokens),
            ``share_promoting`` (share of positions whose vector ranks its own label above
            every other label) and its 95% Wilson interval over demonstrations
            ``share_ci_low, share_ci_high``,
            ``mean_logit_diff`` and ``mean_logprob_diff`` (own label vs the rest; for the
            unweighted vector ``v_p W_O``), their ``weighted_`` versions (for
            ``A[t, p] v_p W_O``), ``median_own_rank`` (own label's rank in the whole
            vocabulary, 1 = top), ``top_rank_share`` (share with rank <= ``top_rank``),
            ``mean_attention`` and ``top_tokens`` (of the mean projected vector).
        positions: one row per prompt, demonstration, kind and head, with the position,
            its token, ``attention``, ``logit_{word}`` and ``rank_{word}`` for each label
            word, the differences, ``promotes``, ``own_rank`` and ``top_tokens``. Ranks and
            top tokens do not depend on the attention weight, which only scales the vector.
        label_words: the task's label words.
        config: the arguments that produced this result, with ``read_at`` (the position
            used) and what the heads' attention showed.
        provenance: model, prompts, versions.
        warnings: why these numbers may not describe what the heads read (empty when fine).
    """

    heads: tuple
    df: pd.DataFrame
    positions: pd.DataFrame
    label_words: tuple
    config: OVLabelFeaturesConfig = field(default_factory=OVLabelFeaturesConfig)
    provenance: Provenance = field(default_factory=Provenance)
    warnings: tuple = ()
    _title: ClassVar[str] = "OV label features"

    def share(self, kind: str = "label") -> pd.Series:
        """Share of positions of ``kind`` whose vector promotes its own label, per head name."""
        rows = self.df[(self.df.kind == kind) & (self.df.label == "all")]
        return rows.set_index("name")["share_promoting"]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self._warning_summary(), "read at": self.config.get("read_at", "label")}
        label, control = self.share("label"), self.share("control")
        for name in list(label.index)[:4]:
            out[f"{name}: label positions promoting their label"] = float(label[name])
            if name in control.index:
                out[f"{name}: control positions promoting their demo's label"] = float(control[name])
            rank = self.df[(self.df.name == name) & (self.df.kind == "label") & (self.df.label == "all")]
            out[f"{name}: median rank of the label in the vocabulary"] = float(rank.median_own_rank.iloc[0])
        if len(label) > 4:
            out[f"mean over {len(label)} heads: label positions promoting their label"] = float(label.mean())
        return out

    def plot(self, head: Head | None = None) -> Figure:
        """Label logit difference of the OV vector at each demonstration slot, by the label there."""
        return self._draw("plot", head)


def ov_label_features(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: Any = None,
    *,
    control_offset: int = -1,
    top_k: int = 5,
    top_rank: int = 5,
    read_at: str = "auto",
    min_read_share: float = MIN_READ_SHARE,
    options: RunOptions | None = None,
) -> OVLabelFeatures:
    """Project each head's per-position value-output vectors at label positions onto the vocabulary.

    For every prompt, demonstration and head, the vector ``v_p W_O`` at the label
    position ``p`` (and at the control position ``p + control_offset``, e.g. the
    separator just before the label) goes through the final norm with the scale of the
    final position frozen, and the unembedding (no biases: it is a component's
    contribution). The result says whether the vector promotes the label shown at ``p``.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every
            head (one vocabulary projection per head and position: pick heads on big models).
        control_offset: where the control position sits relative to each label position.
        top_k: how many top tokens to list.
        top_rank: a label "ranks in the top" when its rank is at most this.
        read_at: where each demonstration's label is read: ``"label"`` (its label token),
            ``"after_label"`` (the last template token after it), ``"slot"`` (all of its
            slot's tokens) or ``"auto"`` (where the heads put their attention, see
            :func:`~icl_heads.reading.resolve_read_at`).
        min_read_share: below this share of the heads' attention (outside the first
            token) on the positions read, the result carries a warning.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        An :class:`OVLabelFeatures` result.

    Raises:
        ValueError: ``control_offset == 0``, ``top_k``/``top_rank`` below 1, an unknown
            ``read_at``, bad heads or prompts.
        TypeError: an unsupported model.

    >>> import icl_heads as ih
    >>> model, prompts = ih.load_model("organism"), ih.organism_task().prompts(n=32, shots=4)
    >>> ov = ov_label_features(model, prompts, [(1, 1)], read_at="label")
    >>> bool(ov.share("label")["L1H1"] > 0.9)  # label positions promote their own label
    True
    """
    options = run_options(options)
    if control_offset == 0:
        raise ValueError("control_offset must not be 0 (that is the label position); use e.g. -1 for the separator")
    if top_k < 1 or top_rank < 1:
        raise ValueError(f"top_k and top_rank must be at least 1, got {top_k} and {top_rank}")
    access = faithful_access(model, "ov_label_features")
    tp = access.tokenize(prompts)
    heads = heads_of(access, heads)
    used, info, warnings = reading_positions(access, tp, heads, read_at, min_read_share)
    words = tuple(tp.prompts.task.label_words)
    label_ids = torch.tensor(tp.label_token_ids)
    layers = sorted({layer for layer, _ in heads})
    n_vocab = access.W_U.shape[1]
    sums = torch.zeros(len(heads), 2, len(words), n_vocab)
    counts = torch.zeros(len(heads), 2, len(words))
    frames = []
    for batch in batches(access, tp, options, desc="OV features"):
        read, read_labels = positions_with_labels(batch, used)
        _, read_demo = read_positions(batch, used)
        positions, kind, valid = label_and_control(batch, control_offset, read)
        own = read_labels.repeat(1, 2)
        demo_of = read_demo.repeat(1, 2)
        _, got = gather_heads(access, batch, layers, positions, values=True)
        scale = got["ln_final.hook_scale"]
        bi, ni = valid.nonzero(as_tuple=True)
        tok_ids = batch.tokens[bi, positions[bi, ni]]
        strings = decode_ids(access.tokenizer, tok_ids)
        base = {
            "prompt": batch.index[bi].numpy(),
            "demo": demo_of[bi, ni].numpy(),
            "role": np.asarray(ROLES, dtype=object)[batch.roles[bi, positions[bi, ni]].clamp(min=0).numpy()]
            if batch.roles is not None
            else "label",
            "position": (positions[bi, ni] - label_shift(batch)[bi]).numpy(),
            "kind": np.where(kind[bi, ni].numpy() == 0, "label", "control"),
            "label": np.asarray(words, dtype=object)[own[bi, ni].numpy()],
            "token": [strings[int(i)] for i in tok_ids],
        }
        for i, (layer, h) in enumerate(heads):
            vec = ov_at(access, got, layer, h)
            attn = at_keys(got[access.hook(layer, "pattern")], positions)[:, h]
            logits = access.unembed(access.final_norm(vec, scale.to(vec.device)[:, None, :])).cpu()
            m = label_metrics(logits, label_ids, own)
            w = own_vs_rest(attn.cpu()[..., None] * m["label_logits"], own)
            for kd in (0, 1):
                for c in range(len(words)):
                    sel = valid & (kind == kd) & (own == c)
                    sums[i, kd, c] += logits[sel].sum(0)
                    counts[i, kd, c] += int(sel.sum())
            top = logits[bi, ni].topk(min(top_k, n_vocab), -1).indices
            top_str = decode_ids(access.tokenizer, top)
            ranks = m["ranks"][bi, ni]
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        "layer": layer,
                        "head": h,
                        "name": f"L{layer}H{h}",
                        "attention": attn.cpu()[bi, ni].numpy(),
                        **label_word_columns(words, m["label_logits"][bi, ni], "logit_"),
                        "logit_diff": m["logit_diff"][bi, ni].numpy(),
                        "logprob_diff": m["logprob_diff"][bi, ni].numpy(),
                        "weighted_logit_diff": w["logit_diff"][bi, ni].numpy(),
                        "weighted_logprob_diff": w["logprob_diff"][bi, ni].numpy(),
                        "promotes": m["promotes"][bi, ni].numpy(),
                        **label_word_columns(words, ranks, "rank_"),
                        "own_rank": ranks.gather(1, own[bi, ni][:, None])[:, 0].numpy(),
                        "top_tokens": ["|".join(top_str[int(t)] for t in row) for row in top],
                    }
                )
            )
    positions_df = pd.concat(frames, ignore_index=True).sort_values(
        ["layer", "head", "prompt", "kind", "demo"], kind="stable", ignore_index=True
    )
    df = _aggregate_ov(positions_df, sums, counts, heads, words, top_k, top_rank, access.tokenizer)
    config = OVLabelFeaturesConfig(control_offset=control_offset, top_k=top_k, top_rank=top_rank, **info)
    return OVLabelFeatures(
        heads=heads,
        df=df,
        positions=positions_df,
        label_words=words,
        config=config,
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
        warnings=warnings,
    )


def _aggregate_ov(pos, sums, counts, heads, words, top_k, top_rank, tokenizer) -> pd.DataFrame:
    # n counts demonstrations (the independent units): a slot of two tokens is one demonstration
    pos = pos.assign(in_top=pos.own_rank <= top_rank, _unit=pos.prompt.astype(np.int64) * 100_000 + pos.demo)
    agg = {
        "n": ("_unit", "nunique"),
        "n_positions": ("prompt", "size"),
        "share_promoting": ("promotes", "mean"),
        "mean_logit_diff": ("logit_diff", "mean"),
        "mean_logprob_diff": ("logprob_diff", "mean"),
        "weighted_mean_logit_diff": ("weighted_logit_diff", "mean"),
        "weighted_mean_logprob_diff": ("weighted_logprob_diff", "mean"),
        "median_own_rank": ("own_rank", "median"),
        "top_rank_share": ("in_top", "mean"),
        "mean_attention": ("attention", "mean"),
    }
    keys = ["layer", "head", "name", "kind"]
    by_label = pos.groupby([*keys, "label"], sort=False).agg(**agg).reset_index()
    overall = pos.groupby(keys, sort=False).agg(**agg).reset_index().assign(label="all")
    df = pd.concat([by_label, overall], ignore_index=True)
    index = {h: i for i, h in enumerate(heads)}
    word_index = {w: c for c, w in enumerate(words)}
    tops = []
    for row in df.itertuples():
        i, kd = index[(row.layer, row.head)], 0 if row.kind == "label" else 1
        if row.label == "all":
            total, n = sums[i, kd].sum(0), counts[i, kd].sum()
        else:
            c = word_index[row.label]
            total, n = sums[i, kd, c], counts[i, kd, c]
        ids = (total / n).topk(min(top_k, total.numel())).indices
        tops.append("|".join(token_str(tokenizer, int(t)) for t in ids))
    df["top_tokens"] = tops
    # Wilson interval of the share over demonstrations (a demonstration's positions are not independent)
    ci = [wilson(float(r.share_promoting) * int(r.n), int(r.n)).ci for r in df.itertuples()]
    df.insert(df.columns.get_loc("share_promoting") + 1, "share_ci_low", [c[0] for c in ci])
    df.insert(df.columns.get_loc("share_promoting") + 2, "share_ci_high", [c[1] for c in ci])
    order = {"label": 0, "control": 1}
    rank = {w: c for c, w in enumerate((*words, "all"))}
    return (
        df.assign(_k=df.kind.map(order), _l=df.label.map(rank))
        .sort_values(["layer", "head", "_k", "_l"], kind="stable")
        .drop(columns=["_k", "_l"])
        .reset_index(drop=True)
    )


# ---- QK label attention ----------------------------------------------------------------
