"""The public surface: a small top-level namespace, one naming scheme for figures."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
from pathlib import Path

import pytest

import icl_heads as ih
from icl_heads.results import RESULT_TYPES

ROOT = Path(__file__).resolve().parents[1]


def test_namespace_is_small_and_every_name_resolves_and_is_documented():
    public = [n for n in ih.__all__ if not n.startswith("__")]
    assert len(public) <= 37, f"the top-level namespace grew to {len(public)} names: {public}"
    assert len(set(ih.__all__)) == len(ih.__all__)
    overview = (ROOT / "docs" / "api" / "overview.md").read_text()
    for name in ih.__all__:
        assert getattr(ih, name) is not None
        if name != "__version__":
            assert f"`{name}`" in overview, f"docs/api/overview.md does not list {name}"


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'find_heads'"):
        ih.find_heads  # noqa: B018


def test_the_project_uses_only_names_the_top_level_namespace_has():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"\bih\.([A-Za-z_]\w*)")
    hits = sorted(
        {
            f"{f}: ih.{m.group(1)}"
            for f in files
            if f.endswith((".py", ".md", ".ipynb")) and f != "tests/test_namespace.py"
            for m in pattern.finditer((ROOT / f).read_text(encoding="utf-8"))
            if not hasattr(ih, m.group(1))
        }
    )
    assert not hits, f"names used through the top-level namespace that it does not have: {hits}"


def _figure_methods(cls):
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_"):
            continue
        if "Figure" in str(inspect.signature(fn).return_annotation):
            yield name


def test_every_figure_method_follows_the_naming_scheme():
    drawn = {}
    for cls in RESULT_TYPES.values():
        names = list(_figure_methods(cls))
        bad = [n for n in names if not (n in ("plot", "heatmap") or n.startswith("plot_"))]
        assert not bad, f"{cls.__name__} draws figures with {bad}; name them plot, heatmap or plot_<view>"
        if names:
            assert "plot" in names, f"{cls.__name__} draws {names} but has no .plot() for its main figure"
            drawn[cls.__name__] = names
    assert {"InContextHeads", "Decomposition", "MajorityBias", "TwoTowerTest", "ComponentStability"} <= set(drawn)


def test_every_plotting_function_is_named_plot():
    import icl_heads.plots as plots

    for info in pkgutil.iter_modules(plots.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"icl_heads.plots.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ != module.__name__ or name.startswith("_"):
                continue
            assert name.startswith("plot_"), f"icl_heads.plots.{info.name}.{name} should be named plot_<what>"


def test_load_result_reads_back_any_result(models, tmp_path):
    from icl_heads.faithfulness import Faithfulness

    result = ih.check_faithfulness(models["gpt2"], n_prompts=2)
    back = ih.load_result(result.save(tmp_path / "faith"))
    assert type(back) is Faithfulness and back.df.equals(result.df)
    import json
    import shutil

    from icl_heads.results import _meta_checksum

    shutil.copytree(tmp_path / "faith", tmp_path / "other")
    meta = json.loads((tmp_path / "other" / "meta.json").read_text())
    meta["__class__"] = "Nothing"
    meta["checksum"] = _meta_checksum(meta)
    (tmp_path / "other" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'Nothing', which is not a result"):
        ih.load_result(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="no saved result"):
        ih.load_result(tmp_path / "missing")
