"""Figures for the mechanism of in-context heads: label attention, OV label logits, two-tower AUCs, flips."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np
import plotly.graph_objects as go

from icl_heads.mechanism.flips import FlipAnalysis
from icl_heads.mechanism.ov import OVLabelFeatures
from icl_heads.mechanism.qk import QKLabelAttention
from icl_heads.mechanism.towers import TwoTowerTest
from icl_heads.plots._style import SEQUENTIAL, fit_titles, head_name, heatmap_height, label_colour, layer_head_heatmap
from icl_heads.results import draws

#: controls are drawn in greys, one per label of their demonstration
_GREYS = ("#7f7f7f", "#bcbcbc", "#5f5f5f", "#a0a0a0")


def _pick(available: Sequence[tuple[int, int]], heads) -> list[tuple[int, int]]:
    if heads is None:
        return list(available)
    chosen = [tuple(int(v) for v in h) for h in heads]
    missing = [h for h in chosen if h not in available]
    if missing:
        raise ValueError(f"heads {missing} were not analysed; available: {list(available)}")
    return chosen


@draws(QKLabelAttention)
def plot_label_attention(qk: QKLabelAttention, heads: Sequence[tuple[int, int]] | None = None) -> go.Figure:
    """Heatmap of attention from the final position of one prompt to every token (x), per head (y).

    Label positions are bold on the token axis and named with their label in the hover.

    Raises:
        ValueError: heads that were not analysed.
    """
    available = [tuple(h) for h in qk.heads]
    chosen = _pick(available, heads)
    z = qk.example_pattern.numpy()[[available.index(h) for h in chosen]]
    ex, names = qk.example, [head_name(*h) for h in chosen]
    labels = dict(zip(ex["label_positions"], ex["demo_labels"], strict=True))
    shown = [tok.replace("\n", "\\n").strip() or "␣" for tok in qk.example_tokens]
    ticks = [f"<b>{tok}</b>" if i in labels else tok for i, tok in enumerate(shown)]
    where = [
        f"pos {i}: {t!r}" + (f" (label of a {labels[i]} demonstration)" if i in labels else "")
        for i, t in enumerate(qk.example_tokens)
    ]
    hover = [
        [f"{name}<br>{w}<br>attention: {a:.3f}" for w, a in zip(where, z[r], strict=False)]
        for r, name in enumerate(names)
    ]
    style = {"colorscale": SEQUENTIAL, "zmin": 0, "colorbar": {"title": {"text": "attention from final position"}}}
    fig = go.Figure(go.Heatmap(z=z, x=list(range(z.shape[1])), y=names, text=hover, hoverinfo="text", **style))
    fig.update_layout(
        title=f"Attention from the final position, prompt {ex['index']} (gold {ex['gold']}, predicted {ex['prediction']});"
        " bold: label positions",
        xaxis={"title": "token", "tickmode": "array", "tickvals": list(range(z.shape[1])), "ticktext": ticks},
        yaxis={"title": "head", "autorange": "reversed"},
        height=heatmap_height(len(names)),
    )
    return fit_titles(fig)


@draws(OVLabelFeatures)
def plot_ov_logit_diff(ov: OVLabelFeatures, head: tuple[int, int] | None = None) -> go.Figure:
    """Box plot of the OV vectors' label logit difference at each demonstration slot, by the label there.

    With two labels the y axis is ``logit(first) - logit(second)``; with more, the label shown
    there minus the mean of the others. Control positions are drawn in grey.

    Raises:
        ValueError: a head that was not analysed.
    """
    available = [tuple(h) for h in ov.heads]
    layer, h = _pick(available, None if head is None else [head])[0]
    part = ov.positions[(ov.positions.layer == layer) & (ov.positions["head"] == h)]
    words = list(ov.label_words)
    if len(words) == 2:
        y_all = part[f"logit_{words[0]}"] - part[f"logit_{words[1]}"]
        y_title = f"logit({words[0]}) - logit({words[1]}) of v_p W_O"
    else:
        y_all = part.logit_diff
        y_title = "logit(label shown) - mean logit(other labels) of v_p W_O"
    fig = go.Figure()
    for kind in ("label", "control"):
        for i, word in enumerate(words):
            sel = (part.kind == kind) & (part.label == word)
            if not sel.any():
                continue
            box = go.Box(x=[f"demo {d + 1}" for d in part.demo[sel]], y=y_all[sel], boxpoints="outliers")
            box.update(name=f"{word} position" if kind == "label" else f"control ({word} demo)")
            box.update(marker_color=label_colour(word, words) if kind == "label" else _GREYS[i % len(_GREYS)])
            fig.add_trace(
                box.update(hovertemplate=f"{head_name(layer, h)} {kind} {word}<br>%{{x}}: %{{y:.3f}}<extra></extra>")
            )
    fig.add_hline(y=0, line_dash="dot")
    slots = [f"demo {d + 1}" for d in sorted(part.demo.unique())]
    fig.update_layout(
        title=f"{head_name(layer, h)}: label logits of the value-output vector at each demonstration",
        xaxis={"title": "demonstration slot (1 = first)", "categoryorder": "array", "categoryarray": slots},
        yaxis={"title": y_title},
        boxmode="group",
    )
    return fit_titles(fig)


@draws(TwoTowerTest, "heatmap", "plot")
def plot_auc_heatmap(tt: TwoTowerTest, column: str = "auc_score") -> go.Figure:
    """Layer x head heatmap of a two-tower AUC (0.5 = chance), the baseline's AUC in the hover.

    Raises:
        KeyError: an unknown column.
    """
    values = tt.table(column)
    extra = {o: tt.table(o, *values.shape) for o in ("auc_score", "auc_score_within", "auc_cosine") if o != column}
    what = "QK score" if "score" in column else "residual cosine (baseline)"
    scope = "within prompts" if column.endswith("within") else "pooled over prompts"
    return layer_head_heatmap(
        values,
        title=f"Same-class vs other-class demonstrations: ROC AUC of the {what} at label positions ({scope})",
        colorbar="ROC AUC (0.5 = chance)",
        centre=0.5,
        extra=extra,
    )


@draws(FlipAnalysis)
def plot_flip(flip: FlipAnalysis, heads: Sequence[tuple[int, int]] | None = None) -> go.Figure:
    """Grouped bars per head: attention on the old and the new predicted label's positions, before and after.

    Raises:
        ValueError: heads that were not analysed.
    """
    chosen = _pick([(int(r.layer), int(r.head)) for r in flip.df.itertuples()], heads)
    df = flip.df.set_index(["layer", "head"]).loc[chosen]
    names = [head_name(*h) for h in chosen]
    changes = np.stack([df.attention_rel_change, df.ov_rel_change], -1)
    fig = go.Figure()
    for (which, colour), (when, pattern) in product(
        (("old", "#7f7f7f"), ("new", "#000000")), (("before", ""), ("after", "/"))
    ):
        column, name = f"{which}_label_{when}", f"{which} label, {when}"
        hover = f"%{{x}} {name}: %{{y:.3f}}<br>relative change: attention %{{customdata[0]:.3f}}, "
        bars = go.Bar(x=names, y=df[column].to_numpy(), name=name, customdata=changes)
        bars.update(marker={"color": colour, "pattern": {"shape": pattern}})
        fig.add_trace(bars.update(hovertemplate=hover + "OV %{customdata[1]:.3f}<extra></extra>"))
    n = int(flip.pairs.flipped.sum())
    fig.update_layout(
        title=f"Attention on each label's positions before and after the prediction flips ({n} pairs)",
        xaxis={"title": "head"},
        yaxis={"title": "attention from final position (summed)"},
        barmode="group",
    )
    return fit_titles(fig)
