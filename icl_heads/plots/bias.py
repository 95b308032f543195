"""Figures for majority-label and recency bias, their corrections and the comparison of every correction."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_heads._format import fmt, fmt_ci
from icl_heads.bias import MajorityBias
from icl_heads.compare_corrections import CorrectionComparison
from icl_heads.order_bias import RecencyBias
from icl_heads.plots._style import NEUTRAL, SEQUENTIAL, error_bars, fit_titles, heatmap_height, label_colour, wrap
from icl_heads.results import draws
from icl_heads.tuning import BiasCorrection


def _error(df, value: str, low: str, high: str) -> dict:
    return error_bars(df[value].to_numpy(), df[low].to_numpy(), df[high].to_numpy())


def _skew(counts: str) -> tuple[float, int]:
    """Sort key of a condition ``"3:1"``: how skewed it is (majority over minority count), then its majority label."""
    n = [int(c) for c in str(counts).split(":")]
    return max(n) / min(n), n.index(max(n))


@draws(MajorityBias)
def plot_majority_bias(result: MajorityBias) -> go.Figure:
    """Accuracy shift (vs balanced, same queries) per gold label in each imbalanced condition, 95% intervals.

    Conditions run from the least to the most skewed; each label word keeps its colour of every figure.
    """
    df = result.df[result.df.condition != "balanced"]
    order = list(dict.fromkeys(df.sort_values("counts", key=lambda c: c.map(_skew), kind="stable").condition))
    words = result.provenance.get("label_words") or [g for g in dict.fromkeys(df.gold) if g != "all"]
    fig = go.Figure()
    for gold in dict.fromkeys(df.gold):
        part = df[df.gold == gold]
        hover = "%{x}<br>majority: %{customdata[0]}<br>accuracy shift: %{y:.3f}<br>accuracy: %{customdata[1]:.3f}"
        bars = go.Bar(x=part.condition, y=part["shift"], name=f"gold = {gold}", marker_color=label_colour(gold, words))
        bars.update(error_y=_error(part, "shift", "shift_ci_low", "shift_ci_high"))
        bars.update(customdata=np.stack([part.majority, part.accuracy, part.n], axis=-1))
        fig.add_trace(bars.update(hovertemplate=hover + " (n=%{customdata[2]})<extra>" + f"gold = {gold}</extra>"))
    lo, hi = result.bias.ci
    fig.update_layout(
        title=f"Majority-label bias: accuracy shift vs balanced demonstrations (bias {fmt(result.bias)}, "
        f"95% CI {fmt_ci((lo, hi))})",
        xaxis={"title": "demonstration counts per label", "categoryorder": "array", "categoryarray": order},
        yaxis_title="accuracy minus balanced accuracy<br>(same queries)",
        barmode="group",
    )
    fig.add_hline(y=0, line_color="black", line_width=1)
    return fit_titles(fig)


@draws(RecencyBias)
def plot_recency_bias(result: RecencyBias) -> go.Figure:
    """Left: accuracy per demonstration order (95% intervals). Right: attention per head and demonstration slot."""
    titles = ("accuracy per order", "attention from the final position to each label token")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], subplot_titles=titles)
    df = result.df
    bars = go.Bar(
        x=df.order,
        y=df.accuracy,
        error_y=_error(df, "accuracy", "ci_low", "ci_high"),
        customdata=np.stack([df.last_label_rate, df.last_label_gold], axis=-1),
        hovertemplate="%{x}: accuracy %{y:.3f}<br>last label predicted: %{customdata[0]:.3f}"
        "<br>last label gold: %{customdata[1]:.3f}<extra></extra>",
        showlegend=False,
    )
    fig.add_trace(bars, 1, 1)
    att = result.attention
    if len(att):
        names = list(dict.fromkeys(att.name))
        slots = sorted(att.slot.unique())
        first = 1 - int(min(slots))  # slots are shown numbered from 1 in every figure
        z, share = (
            att.pivot(index="name", columns="slot", values=v).loc[names, slots].to_numpy()
            for v in ("attention", "share")
        )
        heat = go.Heatmap(
            z=z,
            x=[f"demo {s + first}" for s in slots],
            y=names,
            customdata=share,
            colorscale=SEQUENTIAL,
            colorbar={"title": {"text": "attention"}},
            hovertemplate="%{y}, %{x}<br>attention: %{z:.3f}<br>share of label attention: %{customdata:.3f}"
            "<extra></extra>",
        )
        fig.add_trace(heat, 1, 2)
    lo, hi = result.bias.ci
    fig.update_layout(
        title=f"Recency bias: accuracy spread over orders beyond chance {fmt(result.bias)}, 95% CI "
        f"{fmt_ci((lo, hi))}<br><sup>raw std {fmt(result.order_std)}, permutation p {fmt(result.order_p)}; excess "
        f"last-label predictions {fmt(result.last_label_excess)}</sup>"
    )
    fig.update_xaxes(title_text="demonstration order", row=1, col=1)
    fig.update_yaxes(title_text="accuracy<br>over the label set", range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="demonstration slot (1 = first)", row=1, col=2)
    fig.update_yaxes(title_text="head", autorange="reversed", row=1, col=2)
    fig.update_layout(height=max(heatmap_height(len(set(att.name))) or 450, 400), margin={"l": 70})
    return fit_titles(fig)


@draws(BiasCorrection)
def plot_correction(result: BiasCorrection) -> go.Figure:
    """Bias and balanced accuracy before and after the correction, 95% intervals; tuning curve."""
    titles = (f"{result.kind} bias", "accuracy on balanced prompts", f"tuning {result.parameter}")
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.12, subplot_titles=titles)
    df = result.df.set_index("metric")
    for col, metric in ((1, "bias"), (2, "balanced_accuracy")):
        row = df.loc[metric]
        for stage, colour in (("before", NEUTRAL), ("after", "#000000")):
            v, lo, hi = (float(row[f"{stage}{end}"]) for end in ("", "_ci_low", "_ci_high"))
            error = {"type": "data", "symmetric": False, "array": [hi - v], "arrayminus": [v - lo]}
            bar = go.Bar(x=[stage], y=[v], marker_color=colour, error_y=error, showlegend=False)
            fig.add_trace(bar.update(hovertemplate=f"{metric} {stage}: %{{y:.4f}}<extra></extra>"), 1, col)
    tune = result.tuning
    curve = go.Scatter(
        x=tune.value,
        y=tune.bias,
        mode="lines+markers",
        marker={"color": np.where(tune.chosen, "#000000", np.where(tune.allowed, NEUTRAL, "#cccccc"))},
        customdata=tune.accuracy_drop,
        hovertemplate=f"{result.parameter}=%{{x:g}}<br>bias: %{{y:.4f}}<br>balanced accuracy drop: "
        "%{customdata:.3f}<extra></extra>",
        showlegend=False,
    )
    fig.add_trace(curve, 1, 3)
    lo, hi = result.reduction.ci
    cut, ci = f"{result.reduction:.0f}%", f"95% CI [{lo:.0f}, {hi:.0f}]"
    found = f"{cut} reduction ({ci})" if lo > 0 else f"no significant reduction ({cut}, {ci} includes 0)"
    fig.update_layout(title=f"{result.method} correction of {result.kind} bias on held-out prompts: {found}")
    headline = result.config.get("headline", "")
    fig.update_yaxes(title_text=wrap(f"{headline} (0 = no bias)" if headline else "bias (0 = none)", 34), row=1, col=1)
    fig.update_yaxes(title_text="accuracy", range=[0, 1], row=1, col=2)
    fig.update_xaxes(title_text=result.parameter, row=1, col=3)
    fig.update_yaxes(title_text="bias on tuning prompts", row=1, col=3)
    fig.add_hline(y=0, line_color="black", line_width=1, row=1, col=3)
    fig.update_layout(margin={"l": 90})
    return fit_titles(fig)


@draws(CorrectionComparison)
def plot_correction_comparison(result: CorrectionComparison) -> go.Figure:
    """Per method: the reduction of each bias (percent) and the change of each accuracy, 95% paired intervals."""
    panels = (
        ("majority_reduction", "majority bias reduction (%)"),
        ("recency_reduction", "recency bias reduction (%)"),
        ("balanced_accuracy_change", "balanced accuracy change"),
        ("imbalanced_accuracy_change", "imbalanced accuracy change"),
    )
    # two short lines per panel title and per method label, so that the four panels keep their titles apart at 700 px
    titles = [t.replace(" reduction", "<br>reduction").replace(" accuracy", "<br>accuracy") for _, t in panels]
    fig = make_subplots(rows=1, cols=4, shared_yaxes=True, horizontal_spacing=0.03, subplot_titles=titles)
    fig.update_annotations(font_size=13)
    df = result.df.iloc[::-1]
    labels = [
        f"{m}<br>({int(lab)} lab., +{x:g} passes)" if lab == lab else f"{m}<br>(not applicable)"
        for m, lab, x in zip(df.method, df.labelled, df.extra_passes_per_prompt, strict=True)
    ]
    notes = np.stack([df.family, df.setting.fillna(""), df.note.fillna("")], axis=-1)
    for col, (key, title) in enumerate(panels, start=1):
        hover = (
            "%{y}<br>" + title + ": %{x:.3f}<br>%{customdata[0]} %{customdata[1]}<br>%{customdata[2]}<extra></extra>"
        )
        points = go.Scatter(x=df[key], y=labels, mode="markers", marker={"color": "#000000"}, showlegend=False)
        points.update(error_x=_error(df, key, f"{key}_low", f"{key}_high"), customdata=notes, hovertemplate=hover)
        fig.add_trace(points, row=1, col=col)
        fig.add_vline(x=100 if "reduction" in key else 0, line_color=NEUTRAL, line_dash="dot", row=1, col=col)
        fig.add_vline(x=0, line_color="black", line_width=1, row=1, col=col)
    base = result.baseline.set_index("metric")
    fig.update_layout(
        title="Bias corrections and calibrations on the same held-out prompts<br><sup>uncorrected: majority bias "
        f"{fmt(base.value['majority'])}, recency block gap {fmt(base.value['recency'])}, balanced accuracy "
        f"{fmt(base.value['balanced_accuracy'])}, imbalanced {fmt(base.value['imbalanced_accuracy'])}; "
        "labelled queries and extra passes per test prompt in brackets</sup>",
        height=max(400, 48 * len(df) + 160),
        margin={"l": 150},
    )
    return fit_titles(fig)
