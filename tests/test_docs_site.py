"""The docs' notebook pages: plotly figures get an HTML rendering, and the site check catches missing figures."""

import importlib.util
from pathlib import Path

import plotly.graph_objects as go
import pytest

SCRIPTS = Path(__file__).parent.parent / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _executed_notebook():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig")
    figure = go.Figure(go.Bar(x=["L0H1"], y=[1.0])).to_plotly_json()
    widget = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": widget}),
        nbformat.v4.new_output("display_data", data={"application/vnd.plotly.v1+json": figure}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# A notebook"), cell]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return nb


def test_prepare_renders_plotly_figures_and_drops_widgets():
    pytest.importorskip("mkdocs")
    nb = _script("docs_notebooks").prepare(_executed_notebook())
    (out,) = nb.cells[1].outputs
    html = out["data"]["text/html"]
    assert 'class="plotly-graph-div"' in html and "Plotly.newPlot(" in html
    assert len(html) < 50_000  # without plotly.js (4 MB), which the page loads once from the site
    assert "widgets" not in nb.metadata


def _site(tmp_path: Path, pages: dict[str, str], with_plotly_js: bool = True) -> Path:
    for name, body in pages.items():
        page = tmp_path / "notebooks" / name / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text(body)
    if with_plotly_js:
        (tmp_path / "javascripts").mkdir()
        (tmp_path / "javascripts" / "plotly.min.js").write_text("/* plotly */")
    return tmp_path


def test_site_check_passes_only_with_drawn_figures_and_plotly_js(tmp_path):
    pytest.importorskip("mkdocs")
    figure = _script("docs_notebooks").prepare(_executed_notebook()).cells[1].outputs[0]["data"]["text/html"]
    script = '<script src="../../javascripts/plotly.min.js"></script>\n'
    check = _script("check_docs_site").site_problems
    good = _site(tmp_path / "good", {"01_a": script + figure, "02_b": script + figure})
    assert check(good, ["01_a", "02_b"]) == []

    no_figure = _site(tmp_path / "no_figure", {"01_a": script + figure, "02_b": script + "<p>text only</p>"})
    assert [p.split(":")[0] for p in check(no_figure, ["01_a", "02_b"])] == ["02_b"]
    assert check(no_figure, ["01_a", "02_b", "03_c"])[-1].startswith("03_c: no page")

    no_js = _site(tmp_path / "no_js", {"01_a": script + figure}, with_plotly_js=False)
    assert "plotly.js is not loaded" in check(no_js, ["01_a"])[0]
    late_js = _site(tmp_path / "late_js", {"01_a": figure + script})
    assert "after the first figure" in check(late_js, ["01_a"])[0]


def test_site_check_refuses_pages_that_load_from_the_network_or_lack_mathjax(tmp_path):
    check = _script("check_docs_site").offline_problems
    local = '<script src="../javascripts/mathjax/tex-mml-chtml.js"></script>'
    site = _site(tmp_path / "good", {"01_a": local.replace("../", "../../")})
    (site / "javascripts" / "mathjax" / "output" / "chtml" / "fonts").mkdir(parents=True)
    (site / "javascripts" / "mathjax" / "tex-mml-chtml.js").write_text("/* mathjax */")
    assert check(site) == []

    cdn = '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
    (site / "index.html").write_text(cdn + '<link rel="stylesheet" href="//cdnjs.example/x.css">')
    problems = check(site)
    assert any("index.html: loads https://cdn.jsdelivr.net" in p for p in problems)
    assert any("loads //cdnjs.example/x.css" in p for p in problems)

    bare = _site(tmp_path / "bare", {"01_a": local.replace("../", "../../")})
    assert [p.split(":")[0] for p in check(bare)] == [
        "notebooks/01_a/index.html",
        "MathJax's fonts are not in the site (javascripts/mathjax/output/chtml/fonts)",
    ]


def test_the_docs_hook_copies_mathjax_and_a_code_style_into_the_site(tmp_path):
    pytest.importorskip("mkdocs")
    hook = _script("docs_notebooks")
    hook.on_post_build({"site_dir": str(tmp_path)})
    assert (tmp_path / "javascripts" / "mathjax" / "tex-mml-chtml.js").stat().st_size > 500_000
    assert any((tmp_path / "javascripts" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))
    assert ".highlight" in (tmp_path / "css" / "pygments.css").read_text()
    assert _script("check_docs_site").offline_problems(tmp_path) == []  # no page, nothing loaded from outside
