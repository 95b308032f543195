"""Prompt pairs whose prediction flips: how much each head's attention and OV vectors at label positions change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from icl_heads.access import Head, batches
from icl_heads.faithfulness import faithful_access
from icl_heads.mechanism._maths import safe_ratio
from icl_heads.mechanism._run import (
    at_keys,
    gather_heads,
    head_columns,
    heads_of,
    layers_of,
    ov_at,
    predicted_labels,
    words_at,
)
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompt, ICLPrompts, TokenizedPrompts
from icl_heads.reading import MIN_READ_SHARE, ReadingInfo, resolve_read_at
from icl_heads.records import UNSET, Provenance
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.slots import positions_with_labels


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class FlipAnalysisConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.mechanism.flips.flip_analysis`, and where it read."""

    resample_demos: Any = UNSET
    seed: int = UNSET
    own_flipped_prompts: bool = UNSET


def flip_prompts(prompts: ICLPrompts | TokenizedPrompts, *, resample_demos: bool = False, seed: int = 0) -> ICLPrompts:
    """A twin of every prompt whose query has another class, so the prediction should flip.

    Args:
        prompts: the original prompts.
        resample_demos: also replace every demonstration's text by another of its class (without it the
            vectors ``v_p W_O`` at label positions cannot change).
        seed: random seed.

    Returns:
        Prompts aligned with ``prompts`` (same demonstration labels, new query and gold).

    Raises:
        TypeError: ``prompts`` is not a prompt set.
        ValueError: a class has too few unused texts to draw from.
    """
    if isinstance(prompts, TokenizedPrompts):
        prompts = prompts.prompts
    if not isinstance(prompts, ICLPrompts):
        raise TypeError(f"expected prompts from ICLTask.prompts(...), got {type(prompts).__name__}")
    task = prompts.task
    by_class = [[t for t, y in zip(task.texts, task.labels, strict=True) if y == c] for c in range(len(task.classes))]
    rng, out = np.random.default_rng(seed), []
    for p in prompts.prompts:
        used = {p.query, *(t for t, _ in p.demos)}
        others = [c for c in range(len(task.classes)) if c != p.gold]
        gold = others[int(rng.integers(len(others)))]
        demos = tuple((_draw(rng, by_class, y, used, task), y) for _, y in p.demos) if resample_demos else p.demos
        out.append(ICLPrompt(demos=demos, query=_draw(rng, by_class, gold, used, task), gold=gold))
    return ICLPrompts(
        prompts=tuple(out),
        task=task,
        config=prompts.config.updated(flipped={"resample_demos": resample_demos, "seed": seed}),
    )


def _norms(x: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each prompt's slice of ``x [batch, ...]``."""
    return x.flatten(1).norm(dim=1)


def _draw(rng: np.random.Generator, by_class: list[list[str]], c: int, used: set[str], task: Any) -> str:
    """A random text of class ``c`` not in ``used`` (then added to it)."""
    free = [t for t in by_class[c] if t not in used]
    if not free:
        raise ValueError(
            f"class {task.classes[c]!r} has no unused text left for a flipped prompt; "
            "add examples to the task or use fewer shots"
        )
    used.add(pick := free[int(rng.integers(len(free)))])
    return pick


@dataclass(frozen=True, repr=False)
class FlipAnalysis(Result):
    """Across prompt pairs whose prediction flips, how much each head's attention and OV vectors change.

    "Old" is the label predicted before the flip, "new" the label predicted after.

    Attributes:
        heads: the analysed heads.
        df: one row per head: ``n_pairs``; mean attention summed over the old label's positions before/after
            (``old_label_before``, ``old_label_after``) and the new label's (``new_label_...``);
            ``attention_rel_change`` (``sum ||a_after - a_before|| / sum ||a_before||`` over pairs, ``a`` the
            attention at label positions), ``ov_rel_change`` (the same for ``v_p W_O``, Frobenius norms) and
            ``weighted_ov_rel_change`` (for ``A[t, p] v_p W_O``). 0/0 counts as no change.
        per_pair: one row per flipped pair and head with the quantities before summing.
        pairs: every pair: ``prompt``, gold and prediction before and after, ``flipped``.
        config: the arguments, with ``read_at`` (the positions compared).
        provenance: model, prompts, versions.
        warnings: why these numbers may not describe what the heads read (empty when fine).
    """

    heads: tuple
    df: pd.DataFrame
    per_pair: pd.DataFrame
    pairs: pd.DataFrame
    config: FlipAnalysisConfig = field(default_factory=FlipAnalysisConfig)
    provenance: Provenance = field(default_factory=Provenance)
    warnings: tuple = ()
    _title: ClassVar[str] = "Attention and OV change across prediction flips"

    def summary(self) -> dict[str, Any]:
        return {
            **self._warning_summary(),
            "read at": self.config.get("read_at", "label"),
            "flipped pairs": int(self.pairs.flipped.sum()),
            "pairs": len(self.pairs),
            **{
                f"{r.name}: relative change attention / OV": f"{r.attention_rel_change:.3g} / {r.ov_rel_change:.3g}"
                for r in self.df.head(4).itertuples()
            },
        }

    def plot(self, heads: Sequence[Head] | None = None) -> Figure:
        """Attention on the old and new label's positions before and after the flip, per head."""
        return self._draw("plot", heads)


def flip_analysis(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    flipped: ICLPrompts | TokenizedPrompts | None = None,
    heads: Any = None,
    *,
    resample_demos: bool = False,
    seed: int = 0,
    read_at: str = "auto",
    min_read_share: float = MIN_READ_SHARE,
    options: RunOptions | None = None,
) -> FlipAnalysis:
    """Compare attention and OV vectors at label positions across pairs whose prediction flips.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: the prompts before the flip.
        flipped: prompts aligned with ``prompts`` (same demonstration labels); default :func:`flip_prompts`.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        resample_demos: passed to :func:`flip_prompts` when ``flipped`` is None.
        seed: passed to :func:`flip_prompts` when ``flipped`` is None.
        read_at: ``"label"``, ``"after_label"``, ``"slot"`` or ``"auto"`` (see :func:`ov_label_features`).
        min_read_share: below this share of the heads' attention on the positions read, the result warns.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        A :class:`FlipAnalysis` result (only pairs whose predicted label differs are analysed).

    Raises:
        ValueError: misaligned prompt sets, or no pair whose prediction flips.
        TypeError: an unsupported model.
    """
    options = run_options(options)
    access = faithful_access(model, "flip_analysis")
    tp_a = access.tokenize(prompts)
    own_flipped = flipped is not None
    if flipped is None:
        flipped = flip_prompts(tp_a.prompts, resample_demos=resample_demos, seed=seed)
    tp_b = access.tokenize(flipped)
    if len(tp_a) != len(tp_b) or any(a != b for a, b in zip(tp_a.demo_labels, tp_b.demo_labels, strict=True)):
        raise ValueError(
            "flipped must align with prompts: the same number of prompts, each with the same demonstration labels; "
            "build it with flip_prompts(prompts)"
        )
    heads = heads_of(access, heads)
    used, info, warnings = resolve_read_at(access, tp_a, list(heads), read_at, min_share=min_read_share)
    words = tuple(tp_a.prompts.task.label_words)
    label_ids = torch.tensor(tp_a.label_token_ids)
    frames, pair_frames = [], []
    pairs = zip(
        batches(access, tp_a, options, desc="flips"),
        batches(access, tp_b, run_options(options, progress=False)),
        strict=True,
    )
    for ba, bb in pairs:
        runs = []
        for batch in (ba, bb):
            read, read_labels = positions_with_labels(batch, used)
            logits, got = gather_heads(access, batch, layers_of(heads), read, values=True)
            runs.append((predicted_labels(logits, label_ids), got, read))
        (pa, ga, ra), (pb, gb, rb) = runs
        flip = pa != pb
        shown = {"gold_before": ba.golds, "gold_after": bb.golds, "prediction_before": pa, "prediction_after": pb}
        pair_frames.append(
            pd.DataFrame(
                {
                    "prompt": ba.index.numpy(),
                    **{k: words_at(words, v) for k, v in shown.items()},
                    "flipped": flip.numpy(),
                }
            )
        )
        if not flip.any():
            continue
        valid = ((ra >= 0) & (rb >= 0)).float()
        old, new = (read_labels == pa[:, None]).float() * valid, (read_labels == pb[:, None]).float() * valid
        for layer, h in heads:
            ov = [ov_at(access, got, layer, h).cpu() * valid[..., None] for got in (ga, gb)]
            attn = [
                at_keys(got[access.hook(layer, "pattern")], r)[:, h].cpu() * valid for r, got in ((ra, ga), (rb, gb))
            ]
            w = [a[..., None] * o for a, o in zip(attn, ov, strict=True)]
            frames.append(
                pd.DataFrame(
                    {
                        "prompt": ba.index[flip].numpy(),
                        **head_columns(layer, h),
                        "old_label": words_at(words, pa[flip]),
                        "new_label": words_at(words, pb[flip]),
                        **{
                            f"{which}_label_{when}": (attn[i] * mask).sum(1)[flip].numpy()
                            for which, mask in (("old", old), ("new", new))
                            for i, when in enumerate(("before", "after"))
                        },
                        **{
                            f"{key}_{what}": _norms(x[1] - x[0] if what == "change" else x[0])[flip].numpy()
                            for key, x in (("attention", attn), ("ov", ov), ("weighted_ov", w))
                            for what in ("change", "norm")
                        },
                    }
                )
            )
    pairs_df = pd.concat(pair_frames, ignore_index=True)
    if not frames:
        raise ValueError(
            f"no prediction flipped in {len(pairs_df)} pairs, so there is nothing to compare; "
            "use prompts the model solves (more shots) or pass your own flipped prompts"
        )
    per_pair = pd.concat(frames, ignore_index=True).sort_values(["layer", "head", "prompt"], ignore_index=True)
    rows = [
        {
            **head_columns(layer, head),
            "n_pairs": len(part),
            **{
                f"{a}_label_{b}": float(part[f"{a}_label_{b}"].mean())
                for a in ("old", "new")
                for b in ("before", "after")
            },
            **{
                f"{key}_rel_change": safe_ratio(part[f"{key}_change"].sum(), part[f"{key}_norm"].sum())
                for key in ("attention", "ov", "weighted_ov")
            },
        }
        for (layer, head), part in per_pair.groupby(["layer", "head"], sort=True)
    ]
    return FlipAnalysis(
        heads=heads,
        df=pd.DataFrame(rows),
        per_pair=per_pair,
        pairs=pairs_df,
        config=FlipAnalysisConfig(resample_demos=resample_demos, seed=seed, own_flipped_prompts=own_flipped, **info),
        provenance=provenance(access.name, tp_a, heads=[list(h) for h in heads]),
        warnings=warnings,
    )
