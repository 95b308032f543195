"""Figure of where heads read: final-position attention by token role."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from icl_heads.plots._style import SEQUENTIAL, fit_titles
from icl_heads.reading import ReadingRoles
from icl_heads.results import draws


@draws(ReadingRoles)
def plot_reading_roles(result: ReadingRoles) -> go.Figure:
    """Heatmap: heads (rows, ``L{layer}H{head}``) by token roles (columns), mean attention from the final position.

    The hover shows the 95% bootstrap interval over prompts.
    """
    df = result.df
    roles, names = list(dict.fromkeys(df.role)), list(dict.fromkeys(df.name))
    table, lo, hi = (
        df.pivot(index="name", columns="role", values=v).loc[names, roles].to_numpy()
        for v in ("attention", "ci_low", "ci_high")
    )
    text = np.vectorize(lambda a, b: f"[{a:.3f}, {b:.3f}]")(lo, hi)
    hover = "%{y} reads %{x}: %{z:.3f} (95%% CI %{customdata})<extra></extra>"
    style = {"zmin": 0, "zmax": 1, "colorscale": SEQUENTIAL, "colorbar": {"title": "attention"}}
    fig = go.Figure(go.Heatmap(z=table, x=roles, y=names, customdata=text, hovertemplate=hover, **style))
    fig.update_layout(
        title="Where each head reads: attention from the final position, by token role",
        xaxis_title="token role",
        yaxis={"title": "head", "autorange": "reversed"},
        height=max(300, 18 * len(names) + 120),
    )
    return fit_titles(fig)
