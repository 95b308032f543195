"""What in-context heads write: their value-output vectors ``v_p W_O`` at label positions, on the vocabulary.

DESIGN §2a: weighted by attention, ``A[t, p] v_p W_O`` sums over ``p`` to the head's output ``z_t W_O``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import product
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
    head_columns,
    heads_of,
    label_and_control,
    label_shift,
    layers_of,
    ov_at,
    token_str,
    words_at,
)
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, PromptBatch, TokenizedPrompts
from icl_heads.reading import MIN_READ_SHARE, ReadingInfo, resolve_read_at
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
        The vectors, the attention weights (``weights[..., None] * vectors`` summed over all ``p <= t`` is
        ``z_t W_O``) and the final norm's scale at the final position.

    Raises:
        ValueError: heads outside the model.
    """
    access = faithful_access(model, "per_position_ov")
    heads = check_heads(access, heads)
    _, got = gather_heads(access, batch, layers_of(heads), positions, values=True)
    vecs = torch.stack([ov_at(access, got, layer, h) for layer, h in heads], 1)
    attn = torch.stack([at_keys(got[access.hook(layer, "pattern")], positions)[:, h] for layer, h in heads], 1)
    return vecs, attn, got["ln_final.hook_scale"]


@dataclass(frozen=True, repr=False)
class OVLabelFeatures(Result):
    """What each head's value-output vector at label (and control) positions promotes.

    The ``"label"`` positions are where each demonstration's label is read (``config["read_at"]``: its label
    token, the template token after it or its whole slot; the ``role`` column of ``positions`` names each token).

    Attributes:
        heads: the analysed heads.
        df: one row per head, ``kind`` (``"label"``, ``"control"``) and ``label`` (each word, and ``"all"``): ``n``
            (demonstrations, the independent units), ``n_positions`` (tokens), ``share_promoting`` (share of
            positions whose vector ranks its own label above every other) with its 95% Wilson interval over
            demonstrations ``share_ci_low, share_ci_high``, ``mean_logit_diff`` and ``mean_logprob_diff`` (own label
            vs the rest, for ``v_p W_O``), their ``weighted_`` versions (for ``A[t, p] v_p W_O``),
            ``median_own_rank`` (in the whole vocabulary, 1 = top), ``top_rank_share`` (rank <= ``top_rank``),
            ``mean_attention`` and ``top_tokens`` (of the mean projected vector).
        positions: one row per prompt, demonstration, kind and head: position, token, ``attention``,
            ``logit_{word}`` and ``rank_{word}`` per label word, the differences, ``promotes``, ``own_rank``,
            ``top_tokens`` (ranks and top tokens do not depend on the attention weight).
        label_words: the task's label words.
        config: the arguments, with ``read_at`` (the position used) and what the heads' attention showed.
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
        return self.df[(self.df.kind == kind) & (self.df.label == "all")].set_index("name")["share_promoting"]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self._warning_summary(), "read at": self.config.get("read_at", "label")}
        label, control = self.share("label"), self.share("control")
        ranks = self.df[(self.df.kind == "label") & (self.df.label == "all")].set_index("name").median_own_rank
        for name in list(label.index)[:4]:
            out[f"{name}: label positions promoting their label"] = float(label[name])
            if name in control.index:
                out[f"{name}: control positions promoting their demo's label"] = float(control[name])
            out[f"{name}: median rank of the label in the vocabulary"] = float(ranks[name])
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

    The vector ``v_p W_O`` at each label position ``p`` (and control position ``p + control_offset``) goes through
    the final norm (the final position's scale frozen) and the unembedding: does it promote the label shown at ``p``?

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        control_offset: where the control position sits relative to each label position.
        top_k: how many top tokens to list.
        top_rank: a label "ranks in the top" when its rank is at most this.
        read_at: ``"label"`` (label token), ``"after_label"`` (last template token after it), ``"slot"`` (all its
            tokens) or ``"auto"`` (where the heads attend, see :func:`~icl_heads.reading.resolve_read_at`).
        min_read_share: below this share of the heads' attention on the positions read, the result warns.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        An :class:`OVLabelFeatures` result.

    Raises:
        ValueError: ``control_offset == 0``, ``top_k``/``top_rank`` below 1, unknown ``read_at``, bad heads or prompts.
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
    used, info, warnings = resolve_read_at(access, tp, list(heads), read_at, min_share=min_read_share)
    words = tuple(tp.prompts.task.label_words)
    label_ids = torch.tensor(tp.label_token_ids)
    n_vocab = access.W_U.shape[1]
    sums = torch.zeros(len(heads), 2, len(words), n_vocab)
    counts = torch.zeros(len(heads), 2, len(words))
    frames, diffs = [], ("logit_diff", "logprob_diff")
    for batch in batches(access, tp, options, desc="OV features"):
        read, read_labels = positions_with_labels(batch, used)
        positions, kind, valid = label_and_control(batch, control_offset, read)
        own = read_labels.repeat(1, 2)
        _, got = gather_heads(access, batch, layers_of(heads), positions, values=True)
        bi, ni = valid.nonzero(as_tuple=True)
        tok_ids = batch.tokens[bi, positions[bi, ni]]
        strings = decode_ids(access.tokenizer, tok_ids)
        roles = batch.roles[bi, positions[bi, ni]].clamp(min=0) if batch.roles is not None else None
        base = {
            "prompt": batch.index[bi].numpy(),
            "demo": read_positions(batch, used)[1].repeat(1, 2)[bi, ni].numpy(),
            "role": "label" if roles is None else words_at(ROLES, roles),
            "position": (positions[bi, ni] - label_shift(batch)[bi]).numpy(),
            "kind": np.where(kind[bi, ni].numpy() == 0, "label", "control"),
            "label": words_at(words, own[bi, ni]),
            "token": [strings[int(i)] for i in tok_ids],
        }
        for i, (layer, h) in enumerate(heads):
            vec = ov_at(access, got, layer, h)
            attn = at_keys(got[access.hook(layer, "pattern")], positions)[:, h].cpu()
            scale = got["ln_final.hook_scale"].to(vec.device)[:, None, :]
            logits = access.unembed(access.final_norm(vec, scale)).cpu()
            m = label_metrics(logits, label_ids, own)
            w = own_vs_rest(attn[..., None] * m["label_logits"], own)
            for kd, c in product((0, 1), range(len(words))):
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
                        **head_columns(layer, h),
                        "attention": attn[bi, ni].numpy(),
                        **{f"logit_{word}": m["label_logits"][bi, ni, c].numpy() for c, word in enumerate(words)},
                        **{f"{p}{k}": d[k][bi, ni].numpy() for p, d in (("", m), ("weighted_", w)) for k in diffs},
                        "promotes": m["promotes"][bi, ni].numpy(),
                        **{f"rank_{word}": ranks[:, c].numpy() for c, word in enumerate(words)},
                        "own_rank": ranks.gather(1, own[bi, ni][:, None])[:, 0].numpy(),
                        "top_tokens": ["|".join(top_str[int(t)] for t in row) for row in top],
                    }
                )
            )
    positions_df = pd.concat(frames, ignore_index=True).sort_values(
        ["layer", "head", "prompt", "kind", "demo"], kind="stable", ignore_index=True
    )
    means = (
        torch.cat([sums, sums.sum(2, keepdim=True)], 2) / torch.cat([counts, counts.sum(2, keepdim=True)], 2)[..., None]
    )
    return OVLabelFeatures(
        heads=heads,
        df=_aggregate_ov(positions_df, means, heads, words, top_k, top_rank, access.tokenizer),
        positions=positions_df,
        label_words=words,
        config=OVLabelFeaturesConfig(control_offset=control_offset, top_k=top_k, top_rank=top_rank, **info),
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
        warnings=warnings,
    )


def _aggregate_ov(pos, means, heads, words, top_k, top_rank, tokenizer) -> pd.DataFrame:
    """One row per head, kind and label (and ``"all"``); ``means [head, kind, label + all, vocab]`` give top tokens."""
    # n counts demonstrations (the independent units): a slot of two tokens is one demonstration
    pos = pos.assign(in_top=pos.own_rank <= top_rank, _unit=pos.prompt.astype(np.int64) * 100_000 + pos.demo)
    agg = {
        "n": ("_unit", "nunique"),
        "n_positions": ("prompt", "size"),
        "share_promoting": ("promotes", "mean"),
        **{f"mean_{k}": (k, "mean") for k in ("logit_diff", "logprob_diff")},
        **{f"weighted_mean_{k}": (f"weighted_{k}", "mean") for k in ("logit_diff", "logprob_diff")},
        "median_own_rank": ("own_rank", "median"),
        "top_rank_share": ("in_top", "mean"),
        "mean_attention": ("attention", "mean"),
    }
    keys = ["layer", "head", "name", "kind"]
    by_label = pos.groupby([*keys, "label"], sort=False).agg(**agg).reset_index()
    overall = pos.groupby(keys, sort=False).agg(**agg).reset_index().assign(label="all")
    df = pd.concat([by_label, overall], ignore_index=True)
    index, rank = {h: i for i, h in enumerate(heads)}, {w: c for c, w in enumerate((*words, "all"))}
    df["top_tokens"] = [
        "|".join(
            token_str(tokenizer, int(t))
            for t in means[index[(r.layer, r.head)], int(r.kind != "label"), rank[r.label]]
            .topk(min(top_k, means.shape[-1]))
            .indices
        )
        for r in df.itertuples()
    ]
    # Wilson interval of the share over demonstrations (a demonstration's positions are not independent)
    ci = [wilson(float(r.share_promoting) * int(r.n), int(r.n)).ci for r in df.itertuples()]
    at = df.columns.get_loc("share_promoting")
    df.insert(at + 1, "share_ci_low", [c[0] for c in ci])
    df.insert(at + 2, "share_ci_high", [c[1] for c in ci])
    return (
        df.assign(_k=df.kind.map({"label": 0, "control": 1}), _l=df.label.map(rank))
        .sort_values(["layer", "head", "_k", "_l"], kind="stable")
        .drop(columns=["_k", "_l"])
        .reset_index(drop=True)
    )
