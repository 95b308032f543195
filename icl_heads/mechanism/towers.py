"""Does a head's QK score act as a learned similarity between the query and each demonstration (two towers)?"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from icl_heads.access import batches
from icl_heads.faithfulness import faithful_access
from icl_heads.mechanism._maths import (
    bilinear_probe_r2,
    masked_mean,
    paired_auc,
    roc_auc,
    unit_features,
    visible_scores,
)
from icl_heads.mechanism._run import at_keys, gather_heads, head_columns, heads_of, layers_of, per_demo
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.reading import MIN_READ_SHARE, ReadingInfo, resolve_read_at
from icl_heads.records import UNSET, Provenance
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.slots import read_positions


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class TwoTowerTestConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.two_tower_test`, and where it read."""

    probe_rank: int | None = UNSET
    probe_components: int = UNSET
    probe_ridge: float = UNSET
    seed: int = UNSET


@dataclass(frozen=True, repr=False)
class TwoTowerTest(Result):
    """Does a head's QK score act as a learned similarity between the query and each demonstration?

    Attributes:
        heads: the analysed heads.
        df: one row per head: ``auc_score`` (ROC AUC of the pre-softmax score at the read positions for "this
            demonstration has the query's class", pooled), ``auc_score_within`` (within prompts), the same for the
            cosine of the residual streams entering the layer (``auc_cosine``/``auc_cosine_within``),
            ``score_same``, ``score_other`` and, with a probe, ``probe_r2`` (held-out R² of a low-rank bilinear
            probe of the score; NaN for a head whose scores are all equal: nothing to explain).
        positions: one row per prompt, demonstration and head: ``same_class``, ``score``, ``cosine``.
        config: the arguments, with ``read_at`` (label token, the token after it, or the whole slot, whose score is
            the log-sum-exp of its tokens' scores and whose cosine and probe features are means over its tokens).
        provenance: model, prompts, versions.
        warnings: why these numbers may not describe what the heads read (empty when fine).
    """

    heads: tuple
    df: pd.DataFrame
    positions: pd.DataFrame
    config: TwoTowerTestConfig = field(default_factory=TwoTowerTestConfig)
    provenance: Provenance = field(default_factory=Provenance)
    warnings: tuple = ()
    _title: ClassVar[str] = "Two-tower test of QK scores"

    def summary(self) -> dict[str, Any]:
        best = self.df.sort_values("auc_score", ascending=False).head(4)
        out: dict[str, Any] = {**self._warning_summary(), "read at": self.config.get("read_at", "label")}
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

    def heatmap(self, column: str = "auc_score") -> Figure:
        """Layer x head heatmap of an AUC column, centred at 0.5 (chance)."""
        return self._draw("heatmap", column)

    def plot(self, column: str = "auc_score") -> Figure:
        """The main figure: the layer x head heatmap of :meth:`heatmap`."""
        return self.heatmap(column)


def _demo_means(values: Tensor, demo: Tensor, n_demo: int) -> Tensor:
    """Mean of vectors ``[b, n, d]`` over each demonstration's positions (``demo [b, n]``, -1: none; 0 if empty)."""
    onehot = torch.nn.functional.one_hot(demo.clamp(min=0), n_demo).float() * (demo >= 0)[..., None].float()
    onehot = onehot.to(values.device)  # [b, n, demo]
    return torch.einsum("bnd,bnk->bkd", values.float(), onehot) / onehot.sum(1)[..., None].clamp(min=1.0)


def two_tower_test(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: Any = None,
    *,
    probe_rank: int | None = None,
    probe_components: int = 16,
    probe_ridge: float = 1e-3,
    seed: int = 0,
    read_at: str = "auto",
    min_read_share: float = MIN_READ_SHARE,
    options: RunOptions | None = None,
) -> TwoTowerTest:
    """Score each head's QK score as a classifier of "same class as the query" at the read positions.

    Hypothesis (DESIGN §2a): queries (final position) and keys (where each demonstration is read) are two towers of
    a metric-learning model. The ROC AUC measures it; the cosine of the residual streams is the untrained baseline.
    With ``probe_rank``, a bilinear form of that rank between the unit residual streams is fitted to each head's
    scores on half the prompts, and its R² is measured on the other half.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts with demonstrations of several classes.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        probe_rank: rank of the bilinear probe, or None for no probe.
        probe_components: principal components of each side the probe uses.
        probe_ridge: ridge penalty of the probe's least squares.
        seed: seed of the probe's train/test split of prompts.
        read_at: ``"label"``, ``"after_label"``, ``"slot"`` or ``"auto"`` (see :func:`ov_label_features`).
        min_read_share: below this share of the heads' attention on the positions read, the result warns.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        A :class:`TwoTowerTest` result.

    Raises:
        ValueError: no demonstrations of the query's class or no others; a bad probe setting or fewer than 4
            prompts for it; an unknown ``read_at``; bad heads or prompts.
        TypeError: an unsupported model.
    """
    options = run_options(options)
    access = faithful_access(model, "two_tower_test")
    tp = access.tokenize(prompts)
    heads = heads_of(access, heads)
    used, info, warnings = resolve_read_at(access, tp, list(heads), read_at, min_share=min_read_share)
    layers = layers_of(heads)
    frames, feats, groups = [], {layer: ([], []) for layer in layers}, []
    for batch in batches(access, tp, options, desc="two towers"):
        n_demo = batch.label_positions.shape[1]
        read, demo = read_positions(batch, used)
        _, got = gather_heads(access, batch, layers, read, scores=True, resid=True)
        bi, di = (per_demo((read >= 0)[:, None].float(), demo, n_demo)[:, 0] > 0).nonzero(as_tuple=True)
        groups.append(batch.index[bi])
        cos = {}
        for layer in layers:
            q_all = unit_features(got[access.hook(layer, "resid_pre")].cpu(), access.centred_norm)  # [b, d]
            k_pos = unit_features(got["at:" + access.hook(layer, "resid_pre")].cpu(), access.centred_norm)  # [b, n, d]
            cos[layer] = _demo_means((q_all[:, None] * k_pos).sum(-1, keepdim=True), demo, n_demo)[bi, di, 0].numpy()
            if probe_rank is not None:
                feats[layer][0].append(q_all[bi])
                feats[layer][1].append(_demo_means(k_pos, demo, n_demo)[bi, di])
        for layer, h in heads:
            score = per_demo(at_keys(got[access.hook(layer, "attn_scores")], read), demo, n_demo, "lse")[:, h]
            frames.append(
                pd.DataFrame(
                    {
                        "prompt": batch.index[bi].numpy(),
                        "demo": di.numpy(),
                        "same_class": (batch.demo_labels[bi, di] == batch.golds[bi]).numpy(),
                        **head_columns(layer, h),
                        "score": visible_scores(score.cpu())[bi, di].numpy(),
                        "cosine": cos[layer],
                    }
                )
            )
    pos = pd.concat(frames, ignore_index=True).sort_values(["layer", "head", "prompt", "demo"], ignore_index=True)
    df = _tower_table(pos)
    if probe_rank is not None:
        df["probe_r2"] = _probe_r2(df, pos, feats, torch.cat(groups), probe_rank, probe_components, probe_ridge, seed)
    return TwoTowerTest(
        heads=heads,
        df=df,
        positions=pos,
        config=TwoTowerTestConfig(
            probe_rank=probe_rank, probe_components=probe_components, probe_ridge=probe_ridge, seed=seed, **info
        ),
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
        warnings=warnings,
    )


def _tower_table(pos: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (layer, head), part in pos.groupby(["layer", "head"], sort=True):
        same = part.same_class.to_numpy()
        rows.append(
            {
                **head_columns(layer, head),
                **{
                    f"auc_{col}{within}": auc
                    for col in ("score", "cosine")
                    for within, auc in (
                        ("", roc_auc(part[col], same)),
                        ("_within", paired_auc(part[col], same, part.prompt)),
                    )
                },
                "score_same": masked_mean(part.score, same, "with the gold label"),
                "score_other": masked_mean(part.score, ~same, "without the gold label"),
            }
        )
    return pd.DataFrame(rows)


def _probe_r2(df, pos, feats, groups, rank: int, components: int, ridge: float, seed: int) -> list[float]:
    """Probe R² per head (NaN where the scores are constant, e.g. zero query weights: nothing to explain)."""
    r2 = []
    for row in df.itertuples():
        q, k = (torch.cat(x) for x in feats[row.layer])
        # rows of the head's part are sorted by prompt and demo; the features are in batch order, which is the same
        y = torch.tensor(pos[(pos.layer == row.layer) & (pos["head"] == row.head)].score.to_numpy())
        const = float(y.max() - y.min()) == 0.0
        r2.append(
            float("nan")
            if const
            else bilinear_probe_r2(q, k, y, groups, rank=rank, n_components=components, ridge=ridge, seed=seed)
        )
    return r2
