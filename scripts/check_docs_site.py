"""Check a built docs site: every notebook has a page with its plotly figures, and plotly.js is in the site.

Usage: ``python scripts/check_docs_site.py SITE_DIR`` (exit 1 with the problems listed).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urljoin

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
_FIGURE_DIV = re.compile(r'<div [^>]*class="plotly-graph-div"[^>]*>')
_ID = re.compile(r'id="([^"]+)"')
_SCRIPT = re.compile(r'<script src="([^"]*plotly[^"]*\.js)"></script>')


def site_problems(site: Path, names: list[str] | None = None) -> list[str]:
    """What is wrong with the notebook pages of ``site`` (empty if nothing).

    Args:
        site: the built site folder.
        names: notebook stems to look for (default: every notebook in ``notebooks/``).

    Returns:
        One line per problem.
    """
    names = [p.stem for p in NOTEBOOKS] if names is None else names
    problems = []
    for name in names:
        page = site / "notebooks" / name / "index.html"
        if not page.exists():
            problems.append(f"{name}: no page ({page.relative_to(site)})")
            continue
        html = page.read_text(encoding="utf-8")
        figures = [m.group(1) for div in _FIGURE_DIV.findall(html) if (m := _ID.search(div))]
        drawn = [f for f in figures if re.search(rf'Plotly\.newPlot\(\s*"{re.escape(f)}"', html)]
        if not figures or len(drawn) != len(figures):
            problems.append(f"{name}: {len(figures)} plotly figure divs, {len(drawn)} drawn by Plotly.newPlot")
        scripts = _SCRIPT.findall(html)
        url = f"notebooks/{name}/"
        if not scripts or not any((site / urljoin(url, s)).is_file() for s in scripts):
            problems.append(f"{name}: plotly.js is not loaded from a file in the site ({scripts or 'no script tag'})")
        elif html.index(scripts[0]) > html.index(figures[0] if figures else scripts[0]):
            problems.append(f"{name}: plotly.js is loaded after the first figure")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    site = Path(argv[0])
    problems = site_problems(site)
    for p in problems:
        print(f"docs site {site}: {p}", file=sys.stderr)
    if not problems:
        print(f"docs site {site}: {len(NOTEBOOKS)} notebook pages with plotly figures")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
