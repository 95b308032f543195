"""A self-contained HTML report: verdicts first, then sections of figures and tables, then provenance.

Plotly.js is embedded once; every number goes through :func:`icl_heads._format.fmt`.
"""

from __future__ import annotations

import datetime
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from icl_heads._format import fmt, show
from icl_heads.plots._style import fit_titles

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { max-width: 100%; display: block; overflow-x: auto; } td, th { word-break: normal; overflow-wrap: normal; }
.warning { background: #fff4e5; border-left: 4px solid #e67e22; padding: 0.5em 1em; margin: 1em 0; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; } th { background: #f4f4f4; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } .note { color: #555; font-size: 0.9em; }
#verdicts, #provenance { border: 1px solid #bbb; border-radius: 4px; padding: 0.5em 1em; margin: 1em 0; }
#verdicts h2, #provenance h2 { margin-top: 0.3em; } .figure { margin: 1em 0; } .state { font-weight: bold; }
#verdicts li { margin: 0.3em 0; text-align: left; } #provenance td, #provenance th { text-align: left; }
.state-holds { color: #1a7f37; } .state-fails { color: #b42318; } .state-ns { color: #9a6700; } .state-na { color: #666; }
"""

# after plotly has drawn: record titles wider than their figure and a page wider than the window,
# so that a browser (or the test suite) can read the layout's health off the DOM
_LAYOUT_CHECK = """
window.addEventListener('load', function () { setTimeout(function () {
  var bad = [], clipped = [], covered = [], split = [];
  function meets(a, b) { return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom; }
  document.querySelectorAll('.js-plotly-plot').forEach(function (p) {
    var box = p.getBoundingClientRect(), bar = p.querySelector('.modebar');
    var mode = bar ? bar.getBoundingClientRect() : null;
    p.querySelectorAll('.gtitle, .annotation-text').forEach(function (t) {
      var r = t.getBoundingClientRect();
      if (!r.width) { return; }
      if (r.left < box.left - 1 || r.right > box.right + 1) { bad.push(p.id + ': ' + t.textContent); }
      if (r.top < box.top - 1 || r.bottom > box.bottom + 1) { clipped.push(p.id + ': ' + t.textContent); }
      if (mode && mode.width && meets(r, mode)) { covered.push(p.id + ': ' + t.textContent); }
    });
  });
  document.querySelectorAll('td, th').forEach(function (cell) {
    var walk = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT), node, m, re = /[^\\s-]+/g, range = document.createRange();
    while ((node = walk.nextNode())) {
      while ((m = re.exec(node.data))) {
        range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
        var tops = {};
        Array.prototype.forEach.call(range.getClientRects(), function (r) { if (r.width) { tops[Math.round(r.top)] = 1; } });
        if (Object.keys(tops).length > 1) { split.push(m[0]); }
      }
    }
  });
  var found = {'overflowing-titles': bad, 'clipped-titles': clipped, 'modebar-over-titles': covered, 'split-words': split};
  Object.keys(found).forEach(function (k) { document.body.setAttribute('data-' + k, JSON.stringify(found[k])); });
  document.body.setAttribute('data-page-overflow',
    String(document.documentElement.scrollWidth > document.documentElement.clientWidth + 1));
  document.body.setAttribute('data-layout-checked', String(window.innerWidth));
}, 500); });
"""

_STATE_CLASS = {
    "holds": "state-holds",
    "contradicted": "state-fails",
    "inconclusive": "state-ns",
    "not applicable": "state-na",
}


@dataclass
class Section:
    """One section of the report as data, built by an analysis and rendered by :meth:`Report.add`.

    ``blocks`` are what the reader sees, in order; ``csv`` the tables written as ``results/<name>.csv``; ``summary``
    its entries in ``summary.json``; ``results`` the result objects the verdicts are judged from.
    """

    heading: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)
    csv: dict[str, pd.DataFrame] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def numbers(self, values: dict[str, Any]) -> None:
        self.blocks.append(("numbers", dict(values)))

    def warnings(self, result: Any) -> None:
        """Each of a result's warnings (``result.warnings``), in a box the reader cannot miss."""
        self.blocks.append(("warnings", result))

    def figure(self, fig: go.Figure) -> None:
        self.blocks.append(("figure", fig))

    def table(self, df: pd.DataFrame, max_rows: int = 30) -> None:
        self.blocks.append(("table", (df, max_rows)))

    def result(self, result: Any, *figures: go.Figure) -> None:
        """A result's warnings, its summary numbers and ``figures``."""
        self.warnings(result)
        self.numbers(result.summary())
        for fig in figures:
            self.figure(fig)


def _rows(values: dict[str, Any]) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(show(v))}</td></tr>" for k, v in values.items())


@dataclass
class Report:
    """Collects sections of figures, tables and text; writes one HTML file that needs no network."""

    title: str
    intro: str = ""
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    n_figures: int = 0
    verdicts: list[Any] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    cost: pd.DataFrame | None = None

    def add(self, section: Section) -> None:
        """Render a :class:`Section`'s blocks, in order, as a new section of the page."""
        parts: list[str] = []
        self.sections.append((section.heading, parts))
        for kind, payload in section.blocks:
            if kind == "figure":
                self.n_figures += 1
                fit_titles(payload)
                div = payload.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{self.n_figures}")
                parts.append(f'<div class="figure">{div}</div>')
            elif kind == "table":
                parts.append(payload[0].head(payload[1]).to_html(index=False, float_format=fmt, border=0))
            elif kind == "warnings":
                warnings = getattr(payload, "warnings", ()) or ()
                parts += [f'<div class="warning"><b>Warning:</b> {html.escape(str(w))}</div>' for w in warnings]
            elif kind == "text":
                parts.append(f"<p>{html.escape(payload)}</p>")
            else:
                parts.append(f"<table>{_rows(payload)}</table>")

    def _verdict_block(self) -> str:
        if not self.verdicts:
            return ""
        from icl_heads.verdict_rules import legend

        items = "".join(
            f"<li data-state='{html.escape(v.state)}'><b>{html.escape(v.claim)}</b>: <span class='state "
            f"{_STATE_CLASS[v.state]}'>{html.escape(v.state)}</span> ({html.escape(v.detail)})</li>"
            for v in self.verdicts
        )
        first = next((v for v in self.verdicts if getattr(v, "key", "") == "icl"), None)
        no_icl = ""
        if first is not None and first.state not in ("holds", "not applicable"):
            no_icl = (
                "<p class='warning'><b>The model does not learn this task in context</b> (its accuracy's 95% "
                f"interval reaches chance: {html.escape(first.detail)}). Every claim about how in-context "
                "learning works is therefore <i>not applicable</i>. Check the label words and the template (shown "
                "above): a model answers at chance when its prompts are not in the format it expects.</p>"
            )
        keys = "".join(f"<li>{html.escape(line)}</li>" for line in legend())
        return (
            f"<section id='verdicts'><h2>Verdicts on this model</h2>{no_icl}<p class='note'>Each claim of the two "
            "papers, judged from one 95% interval of its effect (the paper's direction positive) against the "
            "smallest effect that would count as the claim (its margin):</p>"
            f"<ul>{items}</ul><details><summary class='note'>What the states mean, and each claim's margin"
            f"</summary><ul class='note'>{keys}</ul></details></section>"
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        body = self._verdict_block() + "".join(f"<h2>{html.escape(h)}</h2>{''.join(p)}" for h, p in self.sections)
        if self.provenance:
            body += f"<section id='provenance'><h2>Provenance</h2><table>{_rows(_flatten(self.provenance))}</table></section>"
        if self.cost is not None and not self.cost.empty:
            body += (
                "<section id='cost'><h2>Cost</h2><p class='note'>The model work of each section: forward passes, "
                "prompt rows, padded tokens, and layer×token evaluations (padded tokens times the layers a pass runs; "
                f"a backward pass counts as two).</p>{self.cost.to_html(index=False, border=0, float_format=fmt)}</section>"
            )
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(self.title)}</h1><p class='note'>{html.escape(self.intro)} Generated {stamp}.</p>"
            f"{body}<script>{_LAYOUT_CHECK}</script></body></html>"
        )
        path.write_text(page, encoding="utf-8")
        return path


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and len(v) > 1:
            out.update(_flatten(v, f"{prefix}{k}: "))
        else:
            out[f"{prefix}{k}"] = v
    return out
