"""Titles wrap to fit narrow figures; the report's one rounding rule."""

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from icl_heads._format import fmt, fmt_ci
from icl_heads.plots._style import fit_titles, wrap


def test_wrap_keeps_words_and_breaks_long_lines():
    text = "Recency bias: accuracy spread over orders beyond chance 0.034, 95% CI [-0.010, 0.080] on 200 prompts"
    out = wrap(text, 40)
    lines = out.split("<br>")
    assert len(lines) > 1 and all(len(line) <= 40 for line in lines)
    assert " ".join(lines) == text


def test_fit_titles_wraps_title_and_subplot_titles_and_grows_the_margin():
    fig = make_subplots(rows=1, cols=2, subplot_titles=("a" * 10 + " " + "b" * 30, "short"))
    fig.add_trace(go.Bar(x=[1], y=[1]), row=1, col=1)
    fig.update_layout(title="word " * 40)
    fit_titles(fig, width=60)
    assert fig.layout.title.text.count("<br>") >= 2
    assert "<br>" in fig.layout.annotations[0].text and fig.layout.annotations[1].text == "short"
    assert fig.layout.margin.t >= 40 + 22 * 3


def test_one_rounding_rule():
    assert fmt(0.8878) == "0.888" and fmt(0.87) == "0.870"  # the same number never shows as 0.87 and 0.8878
    assert fmt(3e-7) == "3.0e-07" and fmt(0.0) == "0.000" and fmt(float("nan")) == "nan"
    assert fmt_ci((0.1, 0.25)) == "[0.100, 0.250]"


def test_titles_hang_below_the_modebar_band_and_sup_lines_stay_small():
    from icl_heads.plots._style import MODEBAR_BAND

    fig = go.Figure(go.Bar(x=[1], y=[1]), layout={"height": 300})
    fig.update_layout(title="Recency bias " + "word " * 20 + "<br><sup>" + "small " * 20 + "</sup>")
    fit_titles(fig)
    assert fig.layout.title.yref == "container" and fig.layout.title.pad.t >= MODEBAR_BAND
    small = fig.layout.title.text.split("<br>")[-2:]
    assert all(line.startswith("<span style=") and line.endswith("</span>") for line in small)
    assert wrap(fig.layout.title.text, 70) == fig.layout.title.text  # wrapping twice changes nothing
    assert fig.layout.height == 300 + fig.layout.margin.t - 100  # a set height keeps its plot area


def test_one_colour_per_label_word():
    from icl_heads.plots._style import NEUTRAL, label_colour

    words = ("foo", "bar", "baz")
    assert [label_colour(w, words) for w in words] == [label_colour(w, list(words)) for w in words]
    assert len({label_colour(w, words) for w in words}) == 3 and label_colour("all", words) == NEUTRAL
