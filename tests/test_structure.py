"""The package's shape: small modules, no import cycles, and a contributor page that names every module."""

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
# No cycle is allowed. The result <-> figure references are type hints only: they sit
# under ``if TYPE_CHECKING:`` or inside the figure methods, which the graph ignores.


def module_files(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            test = node.test
            type_checking = getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"
            if not type_checking:
                found += _module_level_imports(node.body)
            found += _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            found += _module_level_imports(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                found += _module_level_imports(handler.body)
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Which of the package's modules each module imports at module level."""
    modules = module_files(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = []
        for node in _module_level_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
                continue
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


def test_the_package_has_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert len(graph) > 40 and "icl_heads.prompts.tokenization" in graph["icl_heads.prompts.task"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among icl_heads modules: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_reports_a_cycle_with_its_path_and_ignores_deferred_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "from .sub.c import thing\n",
        "sub/__init__.py": "",
        "sub/c.py": "import pkg.a\nthing = 1\n",
        # deferred imports run only when called or when type checking: no edge
        "d.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
            "def f():\n    from pkg import b\n"
        ),
        "e.py": "from pkg.d import f\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.d"] == set() and graph["pkg.e"] == {"pkg.d"} and graph["pkg.b"] == {"pkg.sub.c"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


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
