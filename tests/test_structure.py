"""The package's shape: small modules, one-way imports in layers, no cycles, a contributor page naming every module.

Every import counts: at module level, inside functions and under ``if TYPE_CHECKING:``.
"""

import ast
import re
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "icl_heads"
MAX_LINES = 450

# Modules allowed over MAX_LINES, at their size today (each may shrink but not grow). None now.
OVERSIZED: dict[str, int] = {}

#: The layers, bottom first, as docs/contributing.md lists them: a module imports only from its own layer or
#: below (an entry names a module or a package with everything in it; ``""`` is the package's namespace,
#: ``icl_heads/__init__.py``, which gathers the workflow from the layers below and imports ``plots`` so that
#: every result finds its figures).
LAYERS: list[tuple[str, list[str]]] = [
    ("records, stats, format", ["_version", "_checks", "records", "stats", "_format", "options", "results"]),
    ("prompts", ["prompts", "slots", "data", "organism", "validation"]),
    ("model access", ["engine", "_norms", "_resume", "access", "faithfulness", "models", "named_tasks", "testing"]),
    ("interventions", ["interventions", "correction_hooks", "corrections", "correction_methods"]),
    ("analyses", ["accuracy", "scoring", "attribution", "heads", "agreement", "head_count", "head_definitions", "reading",
                  "mechanism", "bias", "order_bias", "tuning",
                  "debias", "components", "unibias", "anchors", "calibration",
                  "compare_corrections", "protocols"]),
    ("plots", ["plots", ""]),
    ("verdicts and report", ["verdict_rules", "verdicts", "report", "recovery"]),
    ("CLI", ["cli", "_cli_inputs", "_cli_sections", "_section_head_definitions", "_section_corrections", "_cli_output",
             "_cli_progress", "_provenance"]),
]  # fmt: skip


def module_files(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """Which of the package's modules each module imports, anywhere in it (functions and ``TYPE_CHECKING`` too)."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against this module's package
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        edges = set()
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of one of the package's modules.

    Raises:
        KeyError: the module is in no layer.
    """
    rel = module.removeprefix("icl_heads").removeprefix(".")
    for i, (_, names) in enumerate(LAYERS):
        if any(rel == n or (n and rel.startswith(n + ".")) for n in names):
            return i
    raise KeyError(f"{module} is in no layer; add it to LAYERS and to docs/contributing.md's layer list")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` through each group of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:
        start = min(group)
        previous = {start: start}
        queue = deque([start])
        while queue:  # shortest way back to start inside the group
            v = queue.popleft()
            if start in graph[v]:
                path = [v]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                cycles.append([*reversed(path), start])
                break
            for w in sorted(graph[v] & set(group)):
                if w not in previous:
                    previous[w] = v
                    queue.append(w)
    return cycles


def test_no_module_is_over_the_line_limit_and_the_oversized_ones_do_not_grow():
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")
    }
    too_long = {name: n for name, n in sizes.items() if n > OVERSIZED.get(name, MAX_LINES)}
    assert not too_long, (
        f"modules over {MAX_LINES} lines (or over their allowance in OVERSIZED): {too_long}; "
        "split them by concept into new modules"
    )
    missing = sorted(set(OVERSIZED) - set(sizes))
    assert not missing, f"OVERSIZED lists modules that no longer exist: {missing}"
    done = sorted(name for name in OVERSIZED if sizes[name] <= MAX_LINES)
    assert not done, f"{done} are now under {MAX_LINES} lines: remove them from OVERSIZED"


def test_the_package_has_no_import_cycles_of_any_kind():
    graph = import_graph(PACKAGE)
    assert len(graph) > 40 and "icl_heads.prompts.tokenization" in graph["icl_heads.prompts.task"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among icl_heads modules: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_import_points_down_the_layers():
    graph = import_graph(PACKAGE)
    up = sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in graph.items()
        for t in targets
        if layer_of(t) > layer_of(m)
    )
    assert not up, "imports that point up the layers of docs/contributing.md: " + "; ".join(up)


def test_no_module_imports_another_modules_private_names():
    modules = module_files(PACKAGE)
    found = [
        f"{name} imports {node.module}.{alias.name}"
        for name, path in modules.items()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("icl_heads")
        for alias in node.names
        if alias.name.startswith("_")
        and not alias.name.startswith("__")  # dunders such as __version__ are public
        and f"{node.module}.{alias.name}" not in modules  # a private module is fine
    ]
    assert not found, "promote what is shared to a public name, or keep it in one module: " + "; ".join(found)


def test_the_graph_counts_deferred_and_type_checking_imports_and_the_finder_reports_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "from .sub.c import thing\n",
        "sub/__init__.py": "",
        "sub/c.py": "import pkg.a\nthing = 1\n",
        "d.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n"
            "def f():\n    from pkg import b\n"
        ),
        "e.py": "from pkg.d import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.d"] == {"pkg.e", "pkg.b"} and graph["pkg.e"] == {"pkg.d"} and graph["pkg.b"] == {"pkg.sub.c"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"], ["pkg.d", "pkg.e", "pkg.d"]]


@pytest.fixture(scope="module")
def contributing() -> str:
    return (ROOT / "docs" / "contributing.md").read_text(encoding="utf-8")


def test_the_module_map_names_every_module(contributing):
    """Each module appears in backticks by its path in the package (a package by ``folder/``)."""
    named = set(re.findall(r"`([\w/]+(?:\.py|/))`", contributing))
    paths = {
        str(p.parent.relative_to(PACKAGE)) + "/" if p.name == "__init__.py" else str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p != PACKAGE / "__init__.py"
    }
    missing = sorted(paths - named)
    assert not missing, f"docs/contributing.md does not mention these modules of icl_heads: {missing}"
    stale = sorted(n for n in named if n.endswith(".py") and not (PACKAGE / n).exists() and not (ROOT / n).exists())
    assert not stale, f"docs/contributing.md names files that do not exist: {stale}"


def test_the_layers_are_those_docs_contributing_lists(contributing):
    listed = re.findall(r"^\d+\. \*\*(.+?)\*\*", contributing, re.M)
    assert listed == [name for name, _ in LAYERS], "docs/contributing.md lists other layers than LAYERS"
