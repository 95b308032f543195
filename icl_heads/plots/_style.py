"""Shared figure conventions: head names, hover text, colour scales centred at a natural zero."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go

DIVERGING = "RdBu_r"
SEQUENTIAL = "Viridis"


def wrap(text: str, width: int) -> str:
    """Break ``text`` into lines of at most ``width`` characters with ``<br>`` (existing breaks are kept)."""
    out = []
    for para in text.split("<br>"):
        line = ""
        for word in para.split(" "):
            if line and len(line) + 1 + len(word) > width:
                out.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        out.append(line)
    return "<br>".join(out)


#: characters per title line: fits a figure 700 px wide at plotly's default title size
TITLE_WIDTH = 70


def fit_titles(fig: go.Figure, width: int = TITLE_WIDTH) -> go.Figure:
    """Wrap the figure's title and subplot titles so that they fit at narrow widths; grow the top margin to match.

    Returns the same figure (changed in place).
    """
    title = fig.layout.title.text
    lines = 0
    if title:
        wrapped = wrap(title, width)
        lines = wrapped.count("<br>") + 1
        fig.update_layout(
            title={"text": wrapped, "x": 0.02, "xanchor": "left", "y": 0.98, "yanchor": "top", "yref": "container"}
        )
    subplot_titles = [a for a in fig.layout.annotations if a.text and a.yref == "paper" and a.yanchor == "bottom"]
    n_cols = max(1, len({round(a.x or 0, 3) for a in subplot_titles}))
    sub_lines = 0
    for ann in subplot_titles:
        ann.text = wrap(ann.text, max(20, int(width * 0.85) // n_cols))
        sub_lines = max(sub_lines, ann.text.count("<br>") + 1)
    top = 40 + 22 * lines + 16 * max(0, sub_lines - 1)
    if fig.layout.margin.t is None or fig.layout.margin.t < top:
        fig.update_layout(margin={"t": top})
    return fig


def head_name(layer: int, head: int) -> str:
    """``"L{layer}H{head}"``."""
    return f"L{layer}H{head}"


def layer_head_heatmap(
    values,
    *,
    title: str,
    colorbar: str,
    centre: float | None = 0.0,
    marked: Iterable[tuple[int, int]] = (),
    extra: dict[str, np.ndarray] | None = None,
) -> go.Figure:
    """A layer x head heatmap with ``L{l}H{h}`` hover names, value, rank and marked heads.

    Args:
        values: ``[layer, head]`` array.
        title: figure title.
        colorbar: colour bar title (the quantity and its unit).
        centre: value the diverging scale is centred on (None: sequential scale).
        marked: heads to outline with a marker (e.g. selected heads).
        extra: more ``[layer, head]`` arrays to show in the hover text, by name.
    """
    v = np.asarray(values, dtype=float)
    n_layers, n_heads = v.shape
    order = (-np.nan_to_num(v, nan=-np.inf)).ravel().argsort(kind="stable")
    rank = np.empty(v.size, dtype=int)
    rank[order] = np.arange(1, v.size + 1)
    rank = rank.reshape(v.shape)
    text = []
    for layer in range(n_layers):
        row = []
        for head in range(n_heads):
            parts = [
                f"<b>{head_name(layer, head)}</b>",
                f"{colorbar}: {v[layer, head]:.4g}",
                f"rank: {rank[layer, head]}",
            ]
            for name, arr in (extra or {}).items():
                parts.append(f"{name}: {np.asarray(arr)[layer, head]:.4g}")
            row.append("<br>".join(parts))
        text.append(row)
    kw: dict = {"colorscale": SEQUENTIAL}
    if centre is not None:
        span = float(np.nanmax(np.abs(v - centre))) or 1.0
        kw = {"colorscale": DIVERGING, "zmid": centre, "zmin": centre - span, "zmax": centre + span}
    fig = go.Figure(
        go.Heatmap(
            z=v,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            text=text,
            hoverinfo="text",
            colorbar={"title": {"text": colorbar}},
            **kw,
        )
    )
    marked = list(marked)
    if marked:
        fig.add_trace(
            go.Scatter(
                x=[h for _, h in marked],
                y=[layer for layer, _ in marked],
                mode="markers",
                marker={"symbol": "square-open", "size": 22, "color": "black", "line": {"width": 2}},
                name="selected",
                text=[head_name(layer, h) for layer, h in marked],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title=title,
        xaxis={"title": "head", "dtick": 1},
        yaxis={"title": "layer", "dtick": 1, "autorange": "reversed"},
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def bar_with_ci(
    names: Sequence[str], means: Sequence[float], lows: Sequence[float], highs: Sequence[float], **layout
) -> go.Figure:
    """Bars with asymmetric 95% error bars."""
    m = np.asarray(means, dtype=float)
    fig = go.Figure(
        go.Bar(
            x=list(names),
            y=m,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": np.asarray(highs) - m,
                "arrayminus": m - np.asarray(lows),
            },
            hovertemplate="%{x}: %{y:.3f}<extra></extra>",
        )
    )
    fig.update_layout(**layout)
    return fig
