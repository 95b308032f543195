"""Where in-context heads look from the final position: attention and scores at label positions.

* :func:`qk_label_attention`: attention and pre-softmax scores from the final position to
  each label position, by whether the demonstration's label is the gold label or the prediction.
* :func:`two_tower_test`: how well the score separates same-class demonstrations (ROC
  AUC) next to the cosine of the residual streams, and an optional low-rank bilinear probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from torch import Tensor

from icl_heads.engine import RunOptions, batches
from icl_heads.mechanism._maths import _mean, bilinear_probe_r2, paired_auc, roc_auc, unit_features, visible_scores
from icl_heads.mechanism._run import _at_keys, _gather, _heads, _per_demo, _predictions, _reading, _shift, _token_str
from icl_heads.models import Head, ModelAccess
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.reading import MIN_READ_SHARE
from icl_heads.results import Result, provenance
from icl_heads.slots import read_positions


@dataclass(frozen=True, repr=False)
class QKLabelAttention(Result):
    """Where each head looks from the final position: attention and scores at label positions.

    Attributes:
        heads: the analysed heads.
        df: one row per head: mean ``attention_same``/``attention_other`` (label
            positions whose demonstration has / has not the gold label), ``score_same``/
            ``score_other`` (pre-softmax scores), the same split by the model's prediction
            (``attention_predicted``/``attention_not_predicted``, ``score_...``),
            ``label_share`` (mean attention summed over label positions), ``uniform_share``
            (what uniform attention would give), ``auc_attention`` and ``auc_score``
            (same vs other class, pooled over prompts), ``auc_score_within`` (within
            prompts only) and ``n_prompts``.
        positions: one row per prompt, demonstration and head.
        example_pattern: ``[head, pos]`` attention from the final position of the
            example prompt, over its tokens.
        example_tokens: the example prompt's tokens.
        example: index, gold, prediction, label positions and demonstration labels of the example.
        label_words: the task's label words.
        config: the arguments that produced this result, with ``read_at`` (where each
            demonstration's label is read: label token, the token after it, or the whole
            slot, whose attention is summed and whose score is the log-sum-exp of its scores).
        provenance: model, prompts, versions.
        warnings: why these numbers may not describe what the heads read (empty when fine).
    """

    heads: tuple
    df: pd.DataFrame
    positions: pd.DataFrame
    example_pattern: Tensor
    example_tokens: tuple
    example: dict
    label_words: tuple
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    warnings: tuple = ()
    _title: ClassVar[str] = "QK label attention"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self._warning_summary(), "read at": self.config.get("read_at", "label")}
        for row in self.df.head(4).itertuples():
            out[f"{row.name}: attention same / other class"] = f"{row.attention_same:.3g} / {row.attention_other:.3g}"
            out[f"{row.name}: score AUC (pooled, within prompts)"] = f"{row.auc_score:.3g}, {row.auc_score_within:.3g}"
            out[f"{row.name}: attention on label positions"] = float(row.label_share)
        return out

    def plot(self, heads: Sequence[Head] | None = None) -> go.Figure:
        """Attention from the final position of the example prompt to every token, per head."""
        from icl_heads.plots.mechanism import plot_label_attention

        return plot_label_attention(self, heads)


def qk_label_attention(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: Any = None,
    *,
    example: int = 0,
    read_at: str = "auto",
    min_read_share: float = MIN_READ_SHARE,
    batch_size: int = 32,
    padding_side: str = "right",
    progress: bool = False,
) -> QKLabelAttention:
    """Attention and pre-softmax scores from the final position to every demonstration's label.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts with demonstrations of several classes.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        example: index of the prompt whose full attention row is kept for plotting.
        read_at: ``"label"``, ``"after_label"``, ``"slot"`` or ``"auto"`` (see
            :func:`~icl_heads.mechanism.ov_label_features`).
        min_read_share: below this share of the heads' attention (outside the first
            token) on the positions read, the result carries a warning.
        batch_size: prompts per forward pass (does not change the result).
        padding_side: ``"right"`` or ``"left"`` (does not change the result).
        progress: show a progress bar.

    Returns:
        A :class:`QKLabelAttention` result.

    Raises:
        ValueError: ``example`` out of range; no demonstrations of the query's class or no
            others (the comparisons need both); bad heads or prompts.
        TypeError: an unsupported model.
    """
    access = ModelAccess(model, analysis="qk_label_attention")
    tp = access.tokenize(prompts)
    heads = _heads(access, heads)
    if not 0 <= example < len(tp):
        raise ValueError(f"example must index a prompt in [0, {len(tp)}), got {example}")
    used, info, warnings = _reading(access, tp, heads, read_at, min_read_share)
    words = tuple(tp.prompts.task.label_words)
    label_ids = torch.tensor(tp.label_token_ids)
    layers = sorted({layer for layer, _ in heads})
    frames, ex_pattern, ex_pred = [], None, None
    for batch in batches(access, tp, RunOptions(batch_size, padding_side, progress), desc="QK attention"):
        lp = batch.label_positions
        read, demo = read_positions(batch, used)
        logits, got = _gather(access, batch, layers, read, scores=True)
        pred = _predictions(logits, label_ids)
        shift = _shift(batch)
        has = _per_demo((read >= 0)[:, None].float(), demo, lp.shape[1])[:, 0] > 0
        bi, di = has.nonzero(as_tuple=True)
        n_real = (batch.final_positions - shift + 1).float()
        dl, gold = batch.demo_labels[bi, di], batch.golds[bi]
        base = {
            "prompt": batch.index[bi].numpy(),
            "demo": di.numpy(),
            "position": (lp[bi, di] - shift[bi]).numpy(),
            "label": np.asarray(words, dtype=object)[dl.numpy()],
            "gold": np.asarray(words, dtype=object)[gold.numpy()],
            "prediction": np.asarray(words, dtype=object)[pred[bi].numpy()],
            "same_as_gold": (dl == gold).numpy(),
            "same_as_prediction": (dl == pred[bi]).numpy(),
            "uniform_share": ((read >= 0).sum(1) / n_real)[bi].numpy(),
        }
        for layer, h in heads:
            row = got[access.hook(layer, "pattern")]
            attn = _per_demo(_at_keys(row, read), demo, lp.shape[1])[:, h].cpu()
            score = _per_demo(_at_keys(got[access.hook(layer, "attn_scores")], read), demo, lp.shape[1], "lse")[:, h]
            score = visible_scores(score.cpu())
            share = (attn * has).sum(1)
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        "layer": layer,
                        "head": h,
                        "name": f"L{layer}H{h}",
                        "attention": attn[bi, di].numpy(),
                        "score": score[bi, di].numpy(),
                        "label_share": share[bi].numpy(),
                    }
                )
            )
        hit = (batch.index == example).nonzero()
        if len(hit):
            j = int(hit[0, 0])
            span = slice(int(shift[j]), int(batch.final_positions[j]) + 1)
            ex_pattern = torch.stack([got[access.hook(layer, "pattern")][j, h, span].cpu() for layer, h in heads])
            ex_pred = int(pred[j])
    pos = pd.concat(frames, ignore_index=True).sort_values(["layer", "head", "prompt", "demo"], ignore_index=True)
    df = _aggregate_qk(pos)
    assert ex_pattern is not None
    ids = tp.tokens[example]
    ex = {
        "index": example,
        "gold": words[tp.golds[example]],
        "prediction": words[ex_pred],
        "label_positions": list(tp.label_positions[example]),
        "demo_labels": [words[c] for c in tp.demo_labels[example]],
    }
    return QKLabelAttention(
        heads=heads,
        df=df,
        positions=pos,
        example_pattern=ex_pattern,
        example_tokens=tuple(_token_str(access.tokenizer, i) for i in ids),
        example=ex,
        label_words=words,
        config={"example": example, **info},
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
        warnings=warnings,
    )


def _aggregate_qk(pos: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (layer, head, name), part in pos.groupby(["layer", "head", "name"], sort=True):
        same, pred = part.same_as_gold.to_numpy(), part.same_as_prediction.to_numpy()
        per_prompt = part.drop_duplicates("prompt")
        rows.append(
            {
                "layer": layer,
                "head": head,
                "name": name,
                "attention_same": _mean(part.attention, same, "with the gold label"),
                "attention_other": _mean(part.attention, ~same, "without the gold label"),
                "score_same": _mean(part.score, same, "with the gold label"),
                "score_other": _mean(part.score, ~same, "without the gold label"),
                "attention_predicted": _mean(part.attention, pred, "with the predicted label"),
                "attention_not_predicted": _mean(part.attention, ~pred, "without the predicted label"),
                "score_predicted": _mean(part.score, pred, "with the predicted label"),
                "score_not_predicted": _mean(part.score, ~pred, "without the predicted label"),
                "label_share": per_prompt.label_share.mean(),
                "uniform_share": per_prompt.uniform_share.mean(),
                "auc_attention": roc_auc(part.attention, same),
                "auc_score": roc_auc(part.score, same),
                "auc_score_within": paired_auc(part.score, same, part.prompt),
                "n_prompts": len(per_prompt),
            }
        )
    return pd.DataFrame(rows)


# ---- two towers ------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class TwoTowerTest(Result):
    """Does a head's QK score act as a learned similarity between the query and each demonstration?

    Attributes:
        heads: the analysed heads.
        df: one row per head: ``auc_score`` (ROC AUC of the pre-softmax score at label
            positions for "this demonstration has the query's class", pooled over prompts),
            ``auc_score_within`` (within prompts), the same for the baseline similarity
            ``auc_cosine``/``auc_cosine_within`` (cosine of the residual streams entering
            the head's layer at the final and the label position), ``score_same``,
            ``score_other``, and ``probe_r2`` (held-out R² of a low-rank bilinear probe of
            the score) when a probe was fitted (NaN for a head whose scores are all
            equal, e.g. one with zero query weights: there is nothing to explain).
        positions: one row per prompt, demonstration and head: ``same_class``, ``score``, ``cosine``.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    heads: tuple
    df: pd.DataFrame
    positions: pd.DataFrame
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _title: ClassVar[str] = "Two-tower test of QK scores"

    def summary(self) -> dict[str, Any]:
        best = self.df.sort_values("auc_score", ascending=False).head(4)
        out: dict[str, Any] = {}
        for row in best.itertuples():
            out[f"{row.name}: AUC score / cosine"] = f"{row.auc_score:.3g} / {row.auc_cosine:.3g}"
            if "probe_r2" in self.df:
                out[f"{row.name}: probe R²"] = float(row.probe_r2)
        return out

    def table(self, column: str = "auc_score", n_layers: int | None = None, n_heads: int | None = None) -> np.ndarray:
        """``[layer, head]`` array of one column (NaN for heads not analysed).

        Raises:
            KeyError: an unknown column (lists the available ones).
        """
        if column not in self.df:
            raise KeyError(f"no column {column!r}; available: {list(self.df.columns)}")
        n_layers = n_layers or int(self.df.layer.max()) + 1
        n_heads = n_heads or int(self.df["head"].max()) + 1
        out = np.full((n_layers, n_heads), np.nan)
        out[self.df.layer.to_numpy(), self.df["head"].to_numpy()] = self.df[column].to_numpy()
        return out

    def heatmap(self, column: str = "auc_score") -> go.Figure:
        """Layer x head heatmap of an AUC column, centred at 0.5 (chance)."""
        from icl_heads.plots.mechanism import plot_auc_heatmap

        return plot_auc_heatmap(self, column)


def two_tower_test(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: Any = None,
    *,
    probe_rank: int | None = None,
    probe_components: int = 16,
    probe_ridge: float = 1e-3,
    seed: int = 0,
    batch_size: int = 32,
    padding_side: str = "right",
    progress: bool = False,
) -> TwoTowerTest:
    """Score each head's QK score as a classifier of "same class as the query" at label positions.

    Hypothesis (DESIGN §2a): queries (final position) and keys (label positions) are two
    towers of a metric-learning model, so the score is high where the demonstration has the
    query's class. The ROC AUC measures it; the cosine of the residual streams at the two
    positions is the untrained baseline. With ``probe_rank``, a bilinear form of rank
    ``probe_rank`` between the (unit-normalised) residual streams is fitted to each head's
    scores on half the prompts, and its R² is measured on the other half.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts with demonstrations of several classes.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        probe_rank: rank of the bilinear probe, or None for no probe.
        probe_components: principal components of each side the probe uses.
        probe_ridge: ridge penalty of the probe's least squares.
        seed: seed of the probe's train/test split of prompts.
        batch_size: prompts per forward pass (does not change the result).
        padding_side: ``"right"`` or ``"left"`` (does not change the result).
        progress: show a progress bar.

    Returns:
        A :class:`TwoTowerTest` result.

    Raises:
        ValueError: no demonstrations of the query's class or no others; a bad probe
            setting or fewer than 4 prompts for the probe; bad heads or prompts.
        TypeError: an unsupported model.
    """
    access = ModelAccess(model, analysis="two_tower_test")
    tp = access.tokenize(prompts)
    heads = _heads(access, heads)
    layers = sorted({layer for layer, _ in heads})
    frames, feats = [], {layer: ([], []) for layer in layers}
    groups = []
    for batch in batches(access, tp, RunOptions(batch_size, padding_side, progress), desc="two towers"):
        lp = batch.label_positions
        _, got = _gather(access, batch, layers, lp, scores=True, resid=True)
        bi, di = (lp >= 0).nonzero(as_tuple=True)
        base = {
            "prompt": batch.index[bi].numpy(),
            "demo": di.numpy(),
            "same_class": (batch.demo_labels[bi, di] == batch.golds[bi]).numpy(),
        }
        groups.append(batch.index[bi])
        cos = {}
        for layer in layers:
            q = unit_features(got[access.hook(layer, "resid_pre")].cpu(), access.centred_norm)[bi]
            k = unit_features(got["at:" + access.hook(layer, "resid_pre")].cpu(), access.centred_norm)[bi, di]
            cos[layer] = (q * k).sum(-1).numpy()
            if probe_rank is not None:
                feats[layer][0].append(q)
                feats[layer][1].append(k)
        for layer, h in heads:
            score = visible_scores(_at_keys(got[access.hook(layer, "attn_scores")], lp)[:, h].cpu())
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        "layer": layer,
                        "head": h,
                        "name": f"L{layer}H{h}",
                        "score": score[bi, di].numpy(),
                        "cosine": cos[layer],
                    }
                )
            )
    pos = pd.concat(frames, ignore_index=True).sort_values(["layer", "head", "prompt", "demo"], ignore_index=True)
    rows = []
    for (layer, head, name), part in pos.groupby(["layer", "head", "name"], sort=True):
        same = part.same_class.to_numpy()
        rows.append(
            {
                "layer": layer,
                "head": head,
                "name": name,
                "auc_score": roc_auc(part.score, same),
                "auc_score_within": paired_auc(part.score, same, part.prompt),
                "auc_cosine": roc_auc(part.cosine, same),
                "auc_cosine_within": paired_auc(part.cosine, same, part.prompt),
                "score_same": _mean(part.score, same, "with the gold label"),
                "score_other": _mean(part.score, ~same, "without the gold label"),
            }
        )
    df = pd.DataFrame(rows)
    if probe_rank is not None:
        g = torch.cat(groups)
        r2 = []
        for row in df.itertuples():
            q, k = (torch.cat(x) for x in feats[row.layer])
            part = pos[(pos.layer == row.layer) & (pos["head"] == row.head)]
            # rows of `part` are sorted by prompt and demo; the features are in batch order, which is the same
            y = torch.tensor(part.score.to_numpy())
            if float(y.max() - y.min()) == 0.0:  # e.g. zero query weights: nothing to explain
                r2.append(float("nan"))
                continue
            r2.append(
                bilinear_probe_r2(
                    q, k, y, g, rank=probe_rank, n_components=probe_components, ridge=probe_ridge, seed=seed
                )
            )
        df["probe_r2"] = r2
    config = {"probe_rank": probe_rank, "probe_components": probe_components, "probe_ridge": probe_ridge, "seed": seed}
    return TwoTowerTest(
        heads=heads,
        df=df,
        positions=pos,
        config=config,
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
    )
