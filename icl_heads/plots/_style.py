"""Shared figure conventions: head names, hover text, colour scales centred at a natural zero."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import plotly.graph_objects as go

DIVERGING = "RdBu_r"
SEQUENTIAL = "Viridis"


#: how a subtitle line is written once wrapped
SMALL = ('<span style="font-size:12px">', "</span>")


def wrap(text: str, width: int) -> str:
    """Break ``text`` into lines of at most ``width`` characters with ``<br>`` (existing breaks are kept).

    A line in ``<sup>...</sup>`` (a subtitle) stays small on every line it wraps onto: it becomes
    ``<span style="font-size:12px">`` lines, as plotly raises a second ``<sup>`` line out of place.
    """
    out = []
    for para in text.split("<br>"):
        small = para.startswith(SMALL[0]) and para.endswith(SMALL[1])
        sup = para.startswith("<sup>") and para.endswith("</sup>")
        if sup or small:
            para = para[len(SMALL[0] if small else "<sup>") : -len(SMALL[1] if small else "</sup>")]
        lines, line = [], ""
        for word in para.split(" "):
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
        out += [f"{SMALL[0]}{line}{SMALL[1]}" for line in lines] if sup or small else lines
    return "<br>".join(out)


#: characters per title line: fits a figure 700 px wide at plotly's default title size
TITLE_WIDTH = 70
#: pixels per line of a title and of a subplot title; the band at the top of a figure kept for the modebar
TITLE_LINE, SUBTITLE_LINE, MODEBAR_BAND = 22, 17, 30
#: plotly's default top margin
DEFAULT_TOP = 100
#: where a title hangs: at the top left of the figure, below the modebar band
TITLE_PLACE = {"x": 0.02, "xanchor": "left", "xref": "container", "y": 1, "yanchor": "top", "yref": "container"}


def fit_titles(fig: go.Figure, width: int = TITLE_WIDTH) -> go.Figure:
    """Wrap the figure's title and subplot titles so that they fit at narrow widths; grow the top margin to match.

    The title hangs below a band at the top left free for plotly's modebar, above the subplot titles, so that
    nothing clips or covers it at any width (plotly lifts a multi-line title by half a line per extra line: the
    padding makes up for it). Returns the same figure (changed in place).
    """
    subplot_titles = [a for a in fig.layout.annotations if a.text and a.yref == "paper" and a.yanchor == "bottom"]
    n_cols = max(1, len({round(a.x or 0, 3) for a in subplot_titles}))
    sub_lines = 0
    for ann in subplot_titles:
        ann.text = wrap(ann.text, max(20, int(width * 0.85) // n_cols))
        sub_lines = max(sub_lines, ann.text.count("<br>") + 1)
    sub_height = SUBTITLE_LINE * sub_lines + 6 if sub_lines else 0
    title = fig.layout.title.text
    height = 0
    if title:
        wrapped = wrap(title, width)
        lines = wrapped.count("<br>") + 1
        height = TITLE_LINE * lines + TITLE_LINE // 2 * (lines - 1) + 6
        pad = {"t": MODEBAR_BAND + TITLE_LINE // 2 * (lines - 1)}
        fig.update_layout(title={"text": wrapped, **TITLE_PLACE, "pad": pad})
    top = MODEBAR_BAND + height + sub_height + 6
    if fig.layout.margin.t is None or fig.layout.margin.t < top:
        if fig.layout.height:  # a figure drawn at a set height keeps its plot area: the margin adds to it
            fig.update_layout(height=fig.layout.height + top - (fig.layout.margin.t or DEFAULT_TOP))
        fig.update_layout(margin={"t": top})
    return fig


#: the colour of each label word in every figure: the task's i-th label word gets the i-th colour
LABEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
#: the colour of what belongs to no label (all prompts, control positions)
NEUTRAL = "#7f7f7f"


def label_colour(word: str, words: Sequence[str]) -> str:
    """The colour of label word ``word`` among the task's ``words`` (grey for anything else, e.g. ``"all"``)."""
    words = list(words)
    return LABEL_COLOURS[words.index(word) % len(LABEL_COLOURS)] if word in words else NEUTRAL


def heatmap_height(rows: int) -> int | None:
    """A figure height that keeps a heatmap's rows short (None: plotly's default height suits ``rows``)."""
    return 200 + 45 * rows if rows < 6 else None


def head_name(layer: int, head: int) -> str:
    """``"L{layer}H{head}"``."""
    return f"L{layer}H{head}"


def error_bars(value, low, high) -> dict:
    """Asymmetric error bars from ``low`` to ``high`` around ``value``."""
    return {"type": "data", "symmetric": False, "array": high - value, "arrayminus": value - low}


def outlined(heads: Sequence[tuple[int, int]], size: int, **kw) -> go.Scatter:
    """Black open squares on the given heads of a layer x head heatmap."""
    return go.Scatter(
        x=[h for _, h in heads],
        y=[layer for layer, _ in heads],
        mode="markers",
        marker={"symbol": "square-open", "size": size, "color": "black", "line": {"width": 2}},
        text=[head_name(*h) for h in heads],
        hoverinfo="text",
        **kw,
    )


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
    rank = np.empty(v.size, dtype=int)
    rank[(-np.nan_to_num(v, nan=-np.inf)).ravel().argsort(kind="stable")] = np.arange(1, v.size + 1)
    rank = rank.reshape(v.shape)
    text = [
        [
            "<br>".join(
                [f"<b>{head_name(layer, head)}</b>", f"{colorbar}: {v[layer, head]:.4g}", f"rank: {rank[layer, head]}"]
                + [f"{name}: {np.asarray(arr)[layer, head]:.4g}" for name, arr in (extra or {}).items()]
            )
            for head in range(n_heads)
        ]
        for layer in range(n_layers)
    ]
    kw: dict = {"colorscale": SEQUENTIAL}
    if centre is not None:
        span = float(np.nanmax(np.abs(v - centre))) or 1.0
        kw = {"colorscale": DIVERGING, "zmid": centre, "zmin": centre - span, "zmax": centre + span}
    kw["colorbar"] = {"title": {"text": colorbar}}
    fig = go.Figure(go.Heatmap(z=v, x=list(range(n_heads)), y=list(range(n_layers)), text=text, hoverinfo="text", **kw))
    if marked := list(marked):
        fig.add_trace(outlined(marked, 22, name="selected"))
    fig.update_layout(
        title=title,
        xaxis={"title": "head", "dtick": 1},
        yaxis={"title": "layer", "dtick": 1, "autorange": "reversed"},
        legend={"orientation": "h", "y": -0.15},
        height=heatmap_height(n_layers),
    )
    return fit_titles(fig)


def bar_with_ci(
    names: Sequence[str], means: Sequence[float], lows: Sequence[float], highs: Sequence[float], **layout
) -> go.Figure:
    """Bars with asymmetric 95% error bars."""
    m = np.asarray(means, dtype=float)
    bars = go.Bar(
        x=list(names),
        y=m,
        error_y=error_bars(m, np.asarray(lows), np.asarray(highs)),
        hovertemplate="%{x}: %{y:.3f}<extra></extra>",
    )
    return go.Figure(bars).update_layout(**layout)
