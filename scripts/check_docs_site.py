"""Check a built docs site: every notebook has a page with its plotly figures, plotly.js and MathJax are in the
site, and no page loads a script or style sheet from the network.

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
_REMOTE = re.compile(r'<(?:script|link)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]+)"')
_MATHJAX = re.compile(r'<script src="([^"]*mathjax/tex-mml-chtml\.js)"')


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


def offline_problems(site: Path) -> list[str]:
    """Pages of ``site`` that load a script or style sheet from the network, or MathJax from anywhere but the site.

    Args:
        site: the built site folder.

    Returns:
        One line per problem.
    """
    problems = []
    pages = sorted(site.rglob("*.html"))
    for page in pages:
        html = page.read_text(encoding="utf-8")
        name = str(page.relative_to(site))
        problems += [f"{name}: loads {url} from the network" for url in dict.fromkeys(_REMOTE.findall(html))]
        for src in _MATHJAX.findall(html):
            file = site / src.lstrip("/") if src.startswith("/") else page.parent / src
            if not file.resolve().is_file():
                problems.append(f"{name}: MathJax ({src}) is not a file in the site")
    if pages and not any(_MATHJAX.search(p.read_text(encoding="utf-8")) for p in pages):
        problems.append("no page loads MathJax from the site (javascripts/mathjax/tex-mml-chtml.js)")
    if pages and not (site / "javascripts" / "mathjax" / "output" / "chtml" / "fonts").is_dir():
        problems.append("MathJax's fonts are not in the site (javascripts/mathjax/output/chtml/fonts)")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    site = Path(argv[0])
    problems = site_problems(site) + offline_problems(site)
    for p in problems:
        print(f"docs site {site}: {p}", file=sys.stderr)
    if not problems:
        print(f"docs site {site}: {len(NOTEBOOKS)} notebook pages with plotly figures, MathJax from the site")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
