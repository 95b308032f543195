"""Where in-context heads look from the final position: attention and scores at label positions, by label."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from icl_heads.access import Head, batches
from icl_heads.faithfulness import faithful_access
from icl_heads.mechanism._maths import masked_mean, paired_auc, roc_auc, visible_scores
from icl_heads.mechanism._run import (
    at_keys,
    gather_heads,
    head_columns,
    heads_of,
    label_shift,
    layers_of,
    per_demo,
    predicted_labels,
    token_str,
    words_at,
)
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.reading import MIN_READ_SHARE, ReadingInfo, resolve_read_at
from icl_heads.records import UNSET, Provenance
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.slots import read_positions


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class QKLabelAttentionConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.qk_label_attention`, and where it read."""

    example: int = UNSET


@dataclass(frozen=True, repr=False)
class QKLabelAttention(Result):
    """Where each head looks from the final position: attention and scores at label positions.

    Attributes:
        heads: the analysed heads.
        df: one row per head: mean ``attention_same``/``attention_other`` (label positions whose demonstration has /
            has not the gold label), ``score_same``/``score_other`` (pre-softmax scores), the same split by the
            prediction (``attention_predicted``/``attention_not_predicted``, ``score_...``), ``label_share`` (mean
            attention summed over label positions), ``uniform_share`` (what uniform attention would give),
            ``auc_attention`` and ``auc_score`` (same vs other class, pooled), ``auc_score_within`` (within prompts)
            and ``n_prompts``.
        positions: one row per prompt, demonstration and head.
        example_pattern: ``[head, pos]`` attention from the final position of the example prompt.
        example_tokens: the example prompt's tokens.
        example: index, gold, prediction, label positions and demonstration labels of the example.
        label_words: the task's label words.
        config: the arguments, with ``read_at`` (label token, the token after it, or the whole slot, whose
            attention is summed and whose score is the log-sum-exp of its scores).
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
    config: QKLabelAttentionConfig = field(default_factory=QKLabelAttentionConfig)
    provenance: Provenance = field(default_factory=Provenance)
    warnings: tuple = ()
    _title: ClassVar[str] = "QK label attention"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self._warning_summary(), "read at": self.config.get("read_at", "label")}
        for row in self.df.head(4).itertuples():
            out[f"{row.name}: attention same / other class"] = f"{row.attention_same:.3g} / {row.attention_other:.3g}"
            out[f"{row.name}: score AUC (pooled, within prompts)"] = f"{row.auc_score:.3g}, {row.auc_score_within:.3g}"
            out[f"{row.name}: attention on label positions"] = float(row.label_share)
        return out

    def plot(self, heads: Sequence[Head] | None = None) -> Figure:
        """Attention from the final position of the example prompt to every token, per head."""
        return self._draw("plot", heads)


def qk_label_attention(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: Any = None,
    *,
    example: int = 0,
    read_at: str = "auto",
    min_read_share: float = MIN_READ_SHARE,
    options: RunOptions | None = None,
) -> QKLabelAttention:
    """Attention and pre-softmax scores from the final position to every demonstration's label.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts with demonstrations of several classes.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        example: index of the prompt whose full attention row is kept for plotting.
        read_at: ``"label"``, ``"after_label"``, ``"slot"`` or ``"auto"`` (see :func:`ov_label_features`).
        min_read_share: below this share of the heads' attention on the positions read, the result warns.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        A :class:`QKLabelAttention` result.

    Raises:
        ValueError: ``example`` out of range; no demonstrations of the query's class or no others; bad heads or prompts.
        TypeError: an unsupported model.
    """
    options = run_options(options)
    access = faithful_access(model, "qk_label_attention")
    tp = access.tokenize(prompts)
    heads = heads_of(access, heads)
    if not 0 <= example < len(tp):
        raise ValueError(f"example must index a prompt in [0, {len(tp)}), got {example}")
    used, info, warnings = resolve_read_at(access, tp, list(heads), read_at, min_share=min_read_share)
    words = tuple(tp.prompts.task.label_words)
    label_ids = torch.tensor(tp.label_token_ids)
    frames, ex_pattern, ex_pred = [], None, None
    for batch in batches(access, tp, options, desc="QK attention"):
        lp, (read, demo) = batch.label_positions, read_positions(batch, used)
        logits, got = gather_heads(access, batch, layers_of(heads), read, scores=True)
        pred = predicted_labels(logits, label_ids)
        shift = label_shift(batch)
        has = per_demo((read >= 0)[:, None].float(), demo, lp.shape[1])[:, 0] > 0
        bi, di = has.nonzero(as_tuple=True)
        dl, gold = batch.demo_labels[bi, di], batch.golds[bi]
        base = {
            "prompt": batch.index[bi].numpy(),
            "demo": di.numpy(),
            "position": (lp[bi, di] - shift[bi]).numpy(),
            **{k: words_at(words, v) for k, v in (("label", dl), ("gold", gold), ("prediction", pred[bi]))},
            "same_as_gold": (dl == gold).numpy(),
            "same_as_prediction": (dl == pred[bi]).numpy(),
            "uniform_share": ((read >= 0).sum(1) / (batch.final_positions - shift + 1).float())[bi].numpy(),
        }
        for layer, h in heads:
            attn = per_demo(at_keys(got[access.hook(layer, "pattern")], read), demo, lp.shape[1])[:, h].cpu()
            score = per_demo(at_keys(got[access.hook(layer, "attn_scores")], read), demo, lp.shape[1], "lse")[:, h]
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        **head_columns(layer, h),
                        "attention": attn[bi, di].numpy(),
                        "score": visible_scores(score.cpu())[bi, di].numpy(),
                        "label_share": (attn * has).sum(1)[bi].numpy(),
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
    assert ex_pattern is not None and ex_pred is not None
    return QKLabelAttention(
        heads=heads,
        df=_aggregate_qk(pos),
        positions=pos,
        example_pattern=ex_pattern,
        example_tokens=tuple(token_str(access.tokenizer, i) for i in tp.tokens[example]),
        example={
            "index": example,
            "gold": words[tp.golds[example]],
            "prediction": words[ex_pred],
            "label_positions": list(tp.label_positions[example]),
            "demo_labels": [words[c] for c in tp.demo_labels[example]],
        },
        label_words=words,
        config=QKLabelAttentionConfig(example=example, **info),
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
        warnings=warnings,
    )


def _aggregate_qk(pos: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (layer, head), part in pos.groupby(["layer", "head"], sort=True):
        same, pred = part.same_as_gold.to_numpy(), part.same_as_prediction.to_numpy()
        per_prompt = part.drop_duplicates("prompt")
        splits = (
            (("same", same, "with the gold label"), ("other", ~same, "without the gold label")),
            (("predicted", pred, "with the predicted label"), ("not_predicted", ~pred, "without the predicted label")),
        )
        rows.append(
            {
                **head_columns(layer, head),
                **{
                    f"{col}_{key}": masked_mean(part[col], mask, what)
                    for split in splits
                    for col in ("attention", "score")
                    for key, mask, what in split
                },
                "label_share": per_prompt.label_share.mean(),
                "uniform_share": per_prompt.uniform_share.mean(),
                "auc_attention": roc_auc(part.attention, same),
                "auc_score": roc_auc(part.score, same),
                "auc_score_within": paired_auc(part.score, same, part.prompt),
                "n_prompts": len(per_prompt),
            }
        )
    return pd.DataFrame(rows)
