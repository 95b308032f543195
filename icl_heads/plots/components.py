"""Figures for component decomposition: accuracy heatmaps and bars, stability scatter, reweighting results."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from icl_heads._format import fmt
from icl_heads.components.protocol import ReweightingComparison
from icl_heads.components.result import Decomposition
from icl_heads.components.stability import ComponentStability
from icl_heads.plots._style import error_bars, fit_titles, layer_head_heatmap
from icl_heads.results import draws

KIND_COLOURS = {"good": "#2ca02c", "bad": "#d62728", "label-biased": "#ff7f0e", "other": "#7f7f7f"}


@draws(Decomposition, "heatmap", "plot")
def plot_component_heatmap(dec: Decomposition, **kinds_kw: Any) -> go.Figure:
    """Layer x head heatmap of each head's accuracy alone, diverging around chance; good heads outlined.

    Args:
        dec: a decomposition.
        **kinds_kw: passed to :meth:`~icl_heads.components.result.Decomposition.kinds`.
    """
    df = dec.kinds(**kinds_kw)
    heads = df[df.type == "head"]
    acc, share = np.full((2, dec.n_layers, dec.n_heads), np.nan)
    acc[heads["layer"], heads["head"]] = heads.accuracy
    share[heads["layer"], heads["head"]] = heads.top_label_share
    good = [(int(r.layer), int(r.head)) for r in heads.itertuples() if r.good]
    return layer_head_heatmap(
        acc,
        title=(
            f"Accuracy of each head alone (full model {fmt(dec.full_accuracy)}, chance {fmt(dec.chance)}, "
            f"{dec.n_prompts} prompts); outlined: heads better than the full model"
        ),
        colorbar="accuracy alone",
        centre=dec.chance,
        marked=good,
        extra={"share of most predicted label": share},
    )


def _below_chance(part: Any, chance: float) -> list[str]:
    """The hover line of the test for 'below chance', only for components below chance (above, it says nothing)."""
    return [
        f"<br>p (below chance): {p:.2g}" if acc < chance else ""
        for acc, p in zip(part.accuracy, part.p_below_chance, strict=True)
    ]


@draws(Decomposition, "plot_accuracy")
def plot_component_accuracy(dec: Decomposition, **kinds_kw: Any) -> go.Figure:
    """Every component's accuracy alone (95% Wilson interval), sorted, coloured by kind; full model, chance as lines."""
    df = dec.kinds(**kinds_kw).sort_values("accuracy", ascending=False, kind="stable")
    fig = go.Figure()
    for kind, colour in KIND_COLOURS.items():
        part = df[df.kind == kind]
        hover = (
            "<b>%{x}</b><br>accuracy: %{y:.3f} (95% CI [%{customdata[3]:.3f}, %{customdata[4]:.3f}])"
            "<br>most predicted label: %{customdata[0]} (%{customdata[1]:.2f} of prompts)"
            "%{customdata[2]}<extra>" + kind + "</extra>"
        )
        columns = [part.top_label, part.top_label_share, _below_chance(part, dec.chance), part.ci_low, part.ci_high]
        bars = go.Bar(x=part.component, y=part.accuracy, name=kind, marker_color=colour, hovertemplate=hover)
        bars.update(error_y=error_bars(part.accuracy, part.ci_low, part.ci_high))
        fig.add_trace(bars.update(customdata=np.stack(columns, -1) if len(part) else None))
    fig.add_hline(y=dec.full_accuracy, line_dash="dash", annotation_text=f"full model {dec.full_accuracy:.3f}")
    fig.add_hline(y=dec.chance, line_dash="dot", annotation_text="chance")
    fig.update_layout(
        title=f"Accuracy of each component alone ({dec.n_prompts} prompts, 95% Wilson intervals)",
        xaxis={"title": "component", "categoryorder": "array", "categoryarray": df.component.tolist()},
        yaxis={"title": "accuracy over the label set", "range": [0, 1]},
        legend={"title": "kind", "orientation": "h", "y": -0.25},
    )
    return fit_titles(fig)


@draws(ComponentStability)
def plot_stability(stab: ComponentStability, axis: str = "demo set", pair: int = 0) -> go.Figure:
    """Accuracy of every component in run ``a`` against run ``b`` of one pair along ``axis``.

    Raises:
        ValueError: an unknown axis or a pair index out of range.
    """
    part = stab.df[stab.df.axis == axis].reset_index(drop=True)
    if axis not in ("demo set", "template") or not 0 <= pair < len(part):
        raise ValueError(f"axis must be 'demo set' or 'template' with pair in [0, {len(part)}); got {axis!r}, {pair}")
    row = part.iloc[pair]
    templates = list(stab.templates)
    if axis == "demo set":
        x, y = (stab.accuracies[templates.index(row.fixed), int(i)] for i in (row.a, row.b))
        xlab, ylab = f"demo set {row.a}", f"demo set {row.b}"
    else:
        x, y = (stab.accuracies[templates.index(t), int(row.fixed)] for t in (row.a, row.b))
        xlab, ylab = f"template {row.a!r}", f"template {row.b!r}"
    hover = "<b>%{text}</b><br>" + xlab + ": %{x:.3f}<br>" + ylab + ": %{y:.3f}<extra></extra>"
    fig = go.Figure(go.Scatter(x=x.numpy(), y=y.numpy(), mode="markers", text=list(stab.names), hovertemplate=hover))
    fig.update_traces(name="components")
    full = go.Scatter(x=[row.full_accuracy_a], y=[row.full_accuracy_b], mode="markers", name="full model")
    star = {"symbol": "star", "size": 16, "color": "black"}
    fig.add_trace(full.update(marker=star, hovertemplate="<b>full model</b><br>%{x:.3f} vs %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="y = x"))
    fig.update_layout(
        title=f"Component accuracy, {xlab} vs {ylab}: Pearson r = {fmt(row.pearson)}, top-{stab.config.get('top', 5)} "
        f"IoU = {fmt(row.top_iou)}<br><sup>one pair of {axis}s; the summary's r is the mean over all pairs</sup>",
        xaxis={"title": f"accuracy alone, {xlab}", "range": [0, 1]},
        yaxis={"title": f"accuracy alone, {ylab}", "range": [0, 1]},
    )
    return fit_titles(fig)


@draws(ReweightingComparison)
def plot_reweighting(result: ReweightingComparison) -> go.Figure:
    """Test accuracy of each method, mean ± std over the runs (the seeds and templates the comparison used)."""
    table = result.table()
    n_seeds, n_templates = result.df.seed.nunique(), result.df.template.nunique()
    templates = f" x {n_templates} templates" if n_templates > 1 else ", one template"
    runs = f"{n_seeds} seed{'s' * (n_seeds != 1)}{templates}"
    hover = "%{x}: %{y:.3f} ± %{error_y.array:.3f} (%{customdata} runs)<extra></extra>"
    bars = go.Bar(x=table.method, y=table["mean"], error_y={"type": "data", "array": table["std"]}, hovertemplate=hover)
    fig = go.Figure(bars.update(customdata=table["runs"]))
    fig.add_hline(y=1 / len(result.label_words), line_dash="dot", annotation_text="chance")
    fig.update_layout(
        title=f"Test accuracy with K={result.config['k']} labelled examples (mean ± std over {runs})",
        xaxis_title="method",
        yaxis={"title": "accuracy over the label set", "range": [0, 1]},
    )
    return fit_titles(fig)
