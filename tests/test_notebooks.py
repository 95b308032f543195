"""Every notebook runs top to bottom offline; an error in any cell fails the test.

With ``ICL_HEADS_EXECUTED_NOTEBOOKS`` set to a folder, the executed notebooks (with
their outputs and figures) are saved there, so that the docs can show them without
running them a second time.
"""

import importlib.util
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code")
    if importlib.util.find_spec("ipywidgets") is not None:  # progress bars draw as widgets, without a warning
        stderr = [o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
        assert not any("IProgress not found" in t for t in stderr)
    if folder := os.environ.get("ICL_HEADS_EXECUTED_NOTEBOOKS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(folder) / path.name)


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert {
        "01_find_in_context_heads",
        "02_ov_qk_mechanism",
        "03_bias_and_corrections",
        "04_components_and_reweighting",
        "05_bring_your_own_model",
    } <= names
