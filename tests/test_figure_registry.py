"""Results draw through icl_heads.plots without importing it: the figures register themselves by result class."""

import ast
from pathlib import Path

import pytest

import icl_heads
from icl_heads.results import FIGURES, RESULT_TYPES

PACKAGE = Path(icl_heads.__file__).parent
#: the modules above the figures (they may import plots) and the figures themselves
ABOVE = {"__init__.py", "report.py", "cli.py", "_cli_sections.py", "_cli_output.py", "_cli_inputs.py"}


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports anywhere: at the top, in functions and under ``if TYPE_CHECKING:``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] != "plots" and str(rel) not in ABOVE:
            yield rel, path


@pytest.mark.parametrize("rel,path", list(_modules()), ids=lambda x: str(x))
def test_no_module_below_the_figures_imports_plots_or_plotly(rel, path):
    imports = _imports(path)
    assert not [m for m in imports if m.startswith("icl_heads.plots")], f"{rel} imports icl_heads.plots"
    plotly = [m for m in imports if m.split(".")[0] == "plotly"]
    if str(rel) == "results.py":  # names the Figure type for annotations only
        assert set(plotly) == {"plotly.graph_objects"}
        tree = ast.parse(path.read_text())
        guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]
        assert any(
            isinstance(b, ast.Import) and b.names[0].name == "plotly.graph_objects" for g in guarded for b in g.body
        )
    else:
        assert not plotly, f"{rel} imports plotly ({plotly}); figures belong in icl_heads.plots"


def test_every_figure_method_has_a_registered_figure():
    import inspect

    for cls in RESULT_TYPES.values():
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_") or (fn.__doc__ or "").startswith("Deprecated"):
                continue
            if "Figure" in str(inspect.signature(fn).return_annotation):
                assert (cls, name) in FIGURES or (name == "plot" and (cls, "heatmap") in FIGURES), (cls, name)


def test_an_unknown_view_names_the_figures_there_are():
    from icl_heads.reading import ReadingRoles

    result = object.__new__(ReadingRoles)
    with pytest.raises(ValueError, match=r"ReadingRoles has no figure 'heatmap'; its figures: \['plot'\]"):
        result._draw("heatmap")
