"""Figures of the head definitions side by side: three layer x head heatmaps and their agreement, ablations."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_heads.head_definitions import DEFINITIONS, HeadDefinitions
from icl_heads.plots._style import DIVERGING, NEUTRAL, bar_with_ci, fit_titles, head_name, outlined
from icl_heads.results import draws

_UNITS = {
    "in_context": "in-context score",
    "function_vector": "AIE (P patched - P shuffled)",
    "induction": "prefix-matching attention",
}


@draws(HeadDefinitions)
def plot_head_definitions(result: HeadDefinitions) -> go.Figure:
    """One heatmap per definition (each with its own colour bar, top set outlined) and their rank correlations."""
    titles = [f"{d} (top {result.k} outlined)" for d in DEFINITIONS] + ["Spearman ρ (Jaccard of top sets)"]
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles, horizontal_spacing=0.2, vertical_spacing=0.25)
    for i, d in enumerate(DEFINITIONS):
        row, col = divmod(i, 2)
        v = result.scores[d].numpy()
        span = float(np.abs(v).max()) or 1.0
        text = [
            [f"{head_name(a, b)}<br>{_UNITS[d]}: {v[a, b]:.4g}" for b in range(v.shape[1])] for a in range(v.shape[0])
        ]
        kw = {"colorscale": DIVERGING, "zmid": 0, "zmin": -span, "zmax": span, "colorbar": _bar(fig, i + 1)}
        fig.add_trace(go.Heatmap(z=v, text=text, hoverinfo="text", **kw), row + 1, col + 1)
        fig.add_trace(outlined(result.top[d], 14, showlegend=False), row + 1, col + 1)
        fig.update_xaxes(title_text="head" if row else None, row=row + 1, col=col + 1)
        fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1, row=row + 1, col=col + 1)
    rho, jac = np.eye(len(DEFINITIONS)), np.eye(len(DEFINITIONS))
    for r in result.overlap.itertuples():
        i, j = DEFINITIONS.index(r.a), DEFINITIONS.index(r.b)
        rho[i, j] = rho[j, i] = r.spearman
        jac[i, j] = jac[j, i] = r.jaccard
    short = ["in-context", "FV", "induction"]
    agreement = go.Heatmap(z=rho, x=short, y=short, zmin=-1, zmax=1, colorscale=DIVERGING, texttemplate="%{text}")
    agreement.update(
        text=np.vectorize(lambda r, j: f"{r:.2f} ({j:.2f})")(rho, jac),
        textfont={"size": 14},
        hovertemplate="%{y} vs %{x}: Spearman %{z:.3f}<extra></extra>",
        colorbar=_bar(fig, 4),
    )
    fig.add_trace(agreement, 2, 2)
    fig.update_yaxes(autorange="reversed", row=2, col=2)
    fig.update_layout(
        title="Three head definitions: every head's score (each on its own colour scale) and their agreement",
        height=200 + 2 * 40 * max(3, result.scores[DEFINITIONS[0]].shape[0]),
    )
    return fit_titles(fig)


def _bar(fig: go.Figure, n: int) -> dict:
    """A slim colour bar just right of subplot ``n`` and as tall as it."""
    x, y = fig.layout[f"xaxis{n}"].domain, fig.layout[f"yaxis{n}"].domain
    return {"x": x[1] + 0.01, "xanchor": "left", "y": sum(y) / 2, "len": y[1] - y[0], "thickness": 10}


@draws(HeadDefinitions, "plot_ablation")
def plot_definition_ablation(result: HeadDefinitions) -> go.Figure:
    """Held-out accuracy with each definition's top set ablated (Wilson 95%) and with random sets (95% of sets)."""
    bars = []  # (name, accuracy, low, high, colour)
    for row in result.ablation.itertuples():
        name = "no ablation" if row.condition == "none" else f"top {row.condition}"
        bars.append((name, row.accuracy, row.ci_low, row.ci_high, "#000000"))
        if row.condition != "none":
            name = f"random {result.k} (vs {row.condition})"
            bars.append((name, row.random_accuracy, row.random_ci_low, row.random_ci_high, NEUTRAL))
    names, means, lows, highs, colours = zip(*bars, strict=True)
    fig = bar_with_ci(
        names,
        means,
        lows,
        highs,
        yaxis_range=[0, 1],
        yaxis_title="accuracy over the label set",
        title=f"Accuracy with each definition's top {result.k} head(s) ablated vs random sets of the same size",
    )
    fig.update_traces(marker_color=colours)
    return fit_titles(fig)
