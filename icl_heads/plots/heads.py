"""Figures for in-context heads: score heatmaps, ablation against random heads, ablation curves, score agreement."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from icl_heads.agreement import ScoreAgreement
from icl_heads.heads import InContextHeads
from icl_heads.plots._style import NEUTRAL, bar_with_ci, error_bars, fit_titles, label_colour, layer_head_heatmap
from icl_heads.results import draws

_UNITS = {
    "logprob_increase": "log-prob increase of gold label",
    "dla": "direct logit attribution (gold - label mean)",
    "ablation": "drop in gold log-prob when ablated",
}


@draws(InContextHeads, "heatmap", "plot")
def plot_head_scores(found: InContextHeads, method: str | None = None, label: str = "all") -> go.Figure:
    """Layer x head heatmap of ``found``'s scores, selected heads outlined."""
    method = method or found.method
    table = found.score_table(method, label)
    marked = found.heads if label == "all" else found.heads_by_label.get(label, ())
    scope = "all prompts" if label == "all" else f"gold = {label}"
    return layer_head_heatmap(
        table.numpy(),
        title=f"Head scores: {method} ({scope}); outlined: selected heads",
        colorbar=_UNITS.get(method, method),
        centre=0.0,
        marked=marked,
    )


def plot_head_score_selector(found: InContextHeads) -> go.Figure:
    """Every head score of ``found`` in one layer x head heatmap, with a dropdown to choose the score.

    The choices are each score computed over all prompts and the main score per gold label,
    each on its own zero-centred colour scale; the selected heads stay outlined.
    """
    methods = dict.fromkeys([found.method, *(k for k in found.scores if ":" not in k)])
    choices = [(f"{m} (all prompts)", plot_head_scores(found, method=m)) for m in methods] + [
        (f"{found.method} (gold = {word})", plot_head_scores(found, label=word)) for word in found.heads_by_label
    ]
    fig, spans = go.Figure(), []
    for _, sub in choices:
        fit_titles(sub)  # each choice brings its own title: wrapped like every other title
        spans.append(range(len(fig.data), len(fig.data) + len(sub.data)))
        fig.add_traces(list(sub.data))
    buttons = [
        {
            "label": name,
            "method": "update",
            "args": [{"visible": [i in span for i in range(len(fig.data))]}, {"title": sub.layout.title}],
        }
        for (name, sub), span in zip(choices, spans, strict=True)
    ]
    for i, trace in enumerate(fig.data):
        trace.visible = i in spans[0]
    menu = {"buttons": buttons, "direction": "up", "x": 1.0, "xanchor": "right", "y": -0.08, "yanchor": "top"}
    first = choices[0][1].layout
    fig.update_layout(title=first.title, xaxis=first.xaxis, yaxis=first.yaxis, legend=first.legend, margin=first.margin)
    fig.update_layout(updatemenus=[{**menu, "showactive": True}], height=first.height)
    return fig


@draws(InContextHeads, "plot_verification")
def plot_verification(found: InContextHeads) -> go.Figure:
    """ICL accuracy with no ablation, the found heads, random sets (95% interval) and each label's heads."""
    if found.verification is None:
        raise ValueError("this result was computed with verify=False; rerun find_in_context_heads(..., verify=True)")
    v = found.verification
    fig = bar_with_ci(
        *(v[c].tolist() for c in ("condition", "accuracy", "ci_low", "ci_high")),
        title=f"ICL accuracy after ablating heads ({len(found.heads)} found vs random sets of the same size)",
        xaxis_title="heads ablated",
        yaxis_title="accuracy over the label set",
        yaxis_range=[0, 1],
    )
    words = list(found.heads_by_label)
    fig.update_traces(marker_color=[label_colour(c.removesuffix(" heads"), words) for c in v.condition])
    fig.add_hline(y=1 / (len(words) or 2), line_dash="dot", annotation_text="chance")
    return fit_titles(fig)


def plot_ablation_curve(curve: pd.DataFrame, by: str | None = None) -> go.Figure:
    """Accuracy against the number of ablated heads: top-scoring (by the score ``by``) vs random (95% band)."""
    fig = go.Figure()
    for kind, colour in (("found", "#000000"), ("random", NEUTRAL)):
        part = curve[curve.kind == kind].sort_values("k")
        name = "top-scoring heads" if kind == "found" else "random heads (mean, 95% interval)"
        line = go.Scatter(x=part.k, y=part.accuracy, mode="lines+markers", name=name, line={"color": colour})
        line.update(error_y=error_bars(part.accuracy, part.ci_low, part.ci_high))
        fig.add_trace(line.update(hovertemplate="k=%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(
        title="ICL accuracy vs number of ablated heads" + (f": top heads by {by} vs random" if by else ""),
        xaxis={"title": "heads ablated (k)", "type": "log", "tickvals": sorted(curve.k.unique())},
        yaxis={"title": "accuracy over the label set", "range": [0, 1]},
    )
    return fit_titles(fig)


@draws(ScoreAgreement)
def plot_score_agreement(agreement: ScoreAgreement) -> go.Figure:
    """Scatter of the cheap score against the exact ablation effect, one point per sampled head."""
    df = agreement.df
    hover = "%{text}<br>exact %{x:.4g}<br>estimate %{y:.4g}<extra></extra>"
    fig = go.Figure(go.Scatter(x=df.exact, y=df.estimate, mode="markers", text=df.name, hovertemplate=hover))
    lo = float(min(df.exact.min(), df.estimate.min()))
    hi = float(max(df.exact.max(), df.estimate.max()))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot"}, name="y = x"))
    fig.update_layout(
        title=f"{agreement.method} vs exact ablation ({len(agreement.heads)} heads): Spearman "
        f"{agreement.spearman:.3f}, top-{agreement.k} overlap {agreement.top_k_overlap:.2f}",
        xaxis_title="exact ablation effect (drop in gold log-prob)",
        yaxis_title=agreement.method,
        showlegend=False,
    )
    return fit_titles(fig)
