"""A self-contained HTML report: plotly figures inline (plotly.js embedded once), tables, and headline numbers."""

from __future__ import annotations

import datetime
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

if TYPE_CHECKING:
    from icl_heads.agreement import ScoreAgreement

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f4f4f4; }
.note { color: #555; font-size: 0.9em; } .figure { margin: 1em 0; }
"""


@dataclass
class Report:
    """Collects sections of figures, tables and text; writes one HTML file that needs no network."""

    title: str
    intro: str = ""
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    n_figures: int = 0

    def section(self, heading: str) -> list[str]:
        parts: list[str] = []
        self.sections.append((heading, parts))
        return parts

    def figure(self, parts: list[str], fig: go.Figure) -> None:
        self.n_figures += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{self.n_figures}")
        parts.append(f'<div class="figure">{div}</div>')

    @staticmethod
    def table(parts: list[str], df: pd.DataFrame, max_rows: int = 30) -> None:
        parts.append(df.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))

    @staticmethod
    def text(parts: list[str], text: str) -> None:
        parts.append(f"<p>{html.escape(text)}</p>")

    @staticmethod
    def numbers(parts: list[str], values: dict[str, Any]) -> None:
        rows = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in values.items()
        )
        parts.append(f"<table>{rows}</table>")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        body = "".join(f"<h2>{html.escape(h)}</h2>{''.join(parts)}" for h, parts in self.sections)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(self.title)}</h1><p class='note'>{html.escape(self.intro)} Generated {stamp}.</p>"
            f"{body}</body></html>"
        )
        path.write_text(page, encoding="utf-8")
        return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v)


def agreement_section(report: Report, agreement: ScoreAgreement) -> None:
    """Add a section showing how a cheap head score agrees with the exact ablation score on a sample of heads.

    Args:
        report: the report to extend.
        agreement: from :func:`icl_heads.compare_head_scores`.
    """
    parts = report.section(f"{agreement.method} score vs exact ablation ({len(agreement.heads)} heads)")
    Report.text(
        parts,
        f"The {agreement.method} score against the exact ablation effect (the drop in the gold label's "
        f"log-probability when one head is ablated) on {len(agreement.heads)} heads. A Spearman correlation "
        "well below 0.9 or a different top head means the cheap score should not replace the exact one here.",
    )
    Report.numbers(parts, agreement.summary())
    report.figure(parts, agreement.plot())
