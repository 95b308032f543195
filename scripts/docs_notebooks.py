"""MkDocs hook: the docs show the five notebooks executed, with their plotly figures.

The notebooks in ``notebooks/`` are stored without outputs. The docs read executed copies
from the folder named by ``ICL_HEADS_EXECUTED_NOTEBOOKS`` (default ``results/notebooks``,
gitignored), which the notebook tests write, so CI executes each notebook once:

    ICL_HEADS_EXECUTED_NOTEBOOKS=results/notebooks pytest -m notebook
    mkdocs build --strict

With ``ICL_HEADS_DOCS_EXECUTE=1`` the build executes missing or stale copies itself.
Otherwise a missing copy, or one whose cells differ from the notebook (stale), fails the
build with a message that says how to make it.

Each copy is prepared for a static page: a plotly figure (stored as plotly JSON) gets an
HTML rendering drawn by one plotly.js file that the build copies from the installed
plotly package into the site (no network needed, as for the rest of the docs); progress
bar widgets, which would need a widget manager from the network, are dropped.

The maths of every page is typeset by MathJax 3, which the build also copies into the
site, from the ``django-static-mathjax`` package (a plain copy of MathJax's files; the
``docs`` extra installs it), and code is coloured by pygments with a style sheet the build
writes, so that no page loads anything from the network.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import nbformat
import plotly.io as pio
from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url
from plotly.offline import get_plotlyjs
from pygments.formatters import HtmlFormatter

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "notebooks"
PAGES = "notebooks"  # folder of the notebook pages in the site
PLOTLY_JS = "javascripts/plotly.min.js"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
PYGMENTS_CSS = "css/pygments.css"
MATHJAX = "javascripts/mathjax"  # MathJax 3's es5 folder in the site; mkdocs.yml loads MATHJAX/tex-mml-chtml.js
# what the page's MathJax loads: the bundle, its fonts, and the TeX extensions and menu it may fetch on demand
_MATHJAX_PARTS = ("tex-mml-chtml.js", "output/chtml", "input/tex/extensions", "ui", "a11y", "adaptors")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# nbconvert's page loads MathJax 2 from a CDN; the site already loads MathJax 3 (docs/javascripts/mathjax.js)
_MATHJAX_2 = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
_MERMAID = re.compile(
    r"<script type=\"module\">\s*document\.addEventListener\(\"DOMContentLoaded\".*?mermaid.*?</script>", re.S
)


def executed_folder() -> Path:
    """The folder of executed notebooks: ``$ICL_HEADS_EXECUTED_NOTEBOOKS``, relative to the repository root."""
    folder = Path(os.environ.get("ICL_HEADS_EXECUTED_NOTEBOOKS", "results/notebooks"))
    return folder if folder.is_absolute() else ROOT / folder


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def _execute(source: Path, dest: Path) -> None:
    from nbclient import NotebookClient

    nb = nbformat.read(source, as_version=4)
    with tempfile.TemporaryDirectory() as cwd:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)


def load_executed(source: Path, folder: Path) -> nbformat.NotebookNode:
    """The executed copy of ``source`` in ``folder``; executes it if allowed, else fails with the fix."""
    path = folder / source.name
    expected = _cells(nbformat.read(source, as_version=4))
    problem = "missing" if not path.exists() else None
    if problem is None and _cells(nbformat.read(path, as_version=4)) != expected:
        problem = "stale (its cells differ from the notebook)"
    if problem and os.environ.get("ICL_HEADS_DOCS_EXECUTE") == "1":
        _execute(source, path)
    elif problem:
        raise PluginError(
            f"executed notebook {_shown(path)} is {problem}. From the repository root, write the executed "
            f"notebooks with\n    ICL_HEADS_EXECUTED_NOTEBOOKS={_shown(folder)} pytest -m notebook\n"
            "or let the build execute them (a few minutes): ICL_HEADS_DOCS_EXECUTE=1 mkdocs build"
        )
    nb = nbformat.read(path, as_version=4)
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        raise PluginError(f"{_shown(path)} has no outputs: it was saved without being executed")
    return nb


def prepare(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Give every plotly figure an HTML rendering (plotly.js loaded by the page) and drop widget outputs."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                continue
            if PLOTLY_MIME in data and "text/html" not in data:
                data["text/html"] = pio.to_html(data[PLOTLY_MIME], full_html=False, include_plotlyjs=False)
            kept.append(out)
        cell.outputs = kept
    return nb


_pages: list[tempfile.TemporaryDirectory] = []  # the prepared copies, kept until the build ends


@event_priority(100)  # before mkdocs-jupyter turns the .ipynb files into pages
def on_files(files: Files, config) -> Files:
    folder = executed_folder()
    _pages.append(tempfile.TemporaryDirectory(prefix="icl-heads-notebooks-"))
    pages = Path(_pages[-1].name)
    (pages / PAGES).mkdir()
    for source in sorted(SOURCE.glob("*.ipynb")):
        nbformat.write(prepare(load_executed(source, folder)), pages / PAGES / source.name)
        files.append(File(f"{PAGES}/{source.name}", str(pages), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_content(html: str, page, config, files) -> str:
    if not page.file.src_uri.startswith(PAGES + "/"):
        return html
    html = _MERMAID.sub("", _MATHJAX_2.sub("", html))
    return f'<script src="{get_relative_url(PLOTLY_JS, page.url)}"></script>\n{html}'


def mathjax_source() -> Path:
    """MathJax 3's ``es5`` folder in the installed ``django-static-mathjax`` package.

    Raises:
        PluginError: the package is not installed.
    """
    spec = importlib.util.find_spec("mathjax")
    folder = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5" if spec else None
    if folder is None or not (folder / "tex-mml-chtml.js").is_file():
        raise PluginError(
            "the docs serve MathJax from the site and copy it from the django-static-mathjax package, which is "
            "not installed: pip install -e '.[docs]'"
        )
    return folder


def on_post_build(config) -> None:
    path = Path(config["site_dir"]) / PLOTLY_JS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(get_plotlyjs(), encoding="utf-8")
    css = Path(config["site_dir"]) / PYGMENTS_CSS
    css.parent.mkdir(parents=True, exist_ok=True)
    css.write_text(HtmlFormatter().get_style_defs(".highlight"), encoding="utf-8")
    source, target = mathjax_source(), Path(config["site_dir"]) / MATHJAX
    for part in _MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / part, target / part)
    while _pages:
        _pages.pop().cleanup()
