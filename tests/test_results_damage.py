"""A damaged saved result is never read as other numbers: it loads equal to the original or is refused, naming the file.

One tiny result of every result type is built once on the organism and saved; hypothesis
then damages a copy of the folder (truncates a file, deletes a CSV row or column, deletes
a meta.json entry, flips a byte, deletes a file, swaps two files of the folder or a file
with the same file of another result) and loads it back.
"""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import icl_heads as ih
from icl_heads.head_definitions import compare_head_definitions
from icl_heads.organism import HELDOUT_TEMPLATES
from icl_heads.protocols import yu_heads
from icl_heads.results import RESULT_TYPES, load_result

HEADS = [(1, 1), (1, 7)]


def _build(model):
    task = ih.organism_task()
    hard = ih.organism_task(max_words=6, noise_rate=0.3, template=HELDOUT_TEMPLATES[1], seed=3)
    p = task.prompts(16, 4, seed=0)
    scores = ih.find_in_context_heads(model, p, verify=False).scores["logprob_increase"]
    return [
        ih.icl_accuracy(model, p),
        ih.find_in_context_heads(model, p, n_random=2),
        ih.compare_head_scores(model, p, sample=6, k=3),
        ih.heads_needed(model, p, scores, n_random=2, max_k=2),
        ih.reading_roles(model, p, n_boot=20),
        ih.check_faithfulness(model),
        ih.ov_label_features(model, p, HEADS),
        ih.qk_label_attention(model, p, HEADS),
        ih.flip_analysis(model, p, heads=HEADS, resample_demos=True),
        ih.two_tower_test(model, p, HEADS),
        ih.decompose(model, p),
        ih.component_stability(model, task, n_demo_sets=2, n=8),
        ih.compare_reweighting(model, task, seeds=[0], n_test=8),
        ih.majority_bias(model, task, n=8, n_boot=20),
        ih.recency_bias(model, task, n=8, n_boot=20, n_random_orders=1, heads=HEADS),
        ih.correct_majority_bias(
            model, hard, heads=HEADS, n=24, tune_n=12, seed=21, tune_seed=22, grid=[0.0, 3.0], skews=[(3, 1)],
            n_boot=20,
        ),
        compare_head_definitions(model, task, n=8, n_trials=4, n_seqs=2, n_random=2),
        ih.compare_corrections(
            model, hard, methods=["batch", "majority:count"], heads=HEADS, n=10, tune_n=10, seed=21, tune_seed=22,
            n_boot=20,
        ),
        yu_heads(model, [task], seeds=[0], n=8, n_random=2),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def saved(organism, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    return {type(r).__name__: r.save(root / type(r).__name__) for r in _build(organism)}


def _tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_every_result_type_is_covered(saved):
    package = {name for name, cls in RESULT_TYPES.items() if cls.__module__.startswith("icl_heads.")}
    assert set(saved) == package


@pytest.mark.parametrize("name", sorted(n for n, c in RESULT_TYPES.items() if c.__module__.startswith("icl_heads.")))
def test_an_undamaged_result_loads_back_identical(saved, name, tmp_path):
    again = load_result(saved[name]).save(tmp_path / "again")
    assert _tree(again) == _tree(saved[name])


def _truncate(data: st.DataObject, file: Path) -> None:
    raw = file.read_bytes()
    file.write_bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)), label="keep bytes")])


def _flip_byte(data: st.DataObject, file: Path) -> None:
    raw = bytearray(file.read_bytes())
    if raw:
        i = data.draw(st.integers(0, len(raw) - 1), label="byte")
        raw[i] ^= data.draw(st.integers(1, 255), label="xor")
        file.write_bytes(bytes(raw))


def _delete_line(data: st.DataObject, file: Path) -> None:
    lines = file.read_bytes().splitlines(keepends=True)
    if lines:
        del lines[data.draw(st.integers(0, len(lines) - 1), label="line")]
        file.write_bytes(b"".join(lines))


def _delete_column(data: st.DataObject, file: Path) -> None:
    lines = [line.split(",") for line in file.read_text().splitlines()]
    if lines and lines[0]:
        j = data.draw(st.integers(0, len(lines[0]) - 1), label="column")
        file.write_text("\n".join(",".join(c for k, c in enumerate(cells) if k != j) for cells in lines) + "\n")


def _delete_meta_entry(data: st.DataObject, file: Path) -> None:
    meta = json.loads(file.read_text())
    where = data.draw(st.sampled_from(["top", "fields", "tables", "files"]), label="where")
    holder = meta if where == "top" else meta[where]
    if holder:
        del holder[data.draw(st.sampled_from(sorted(holder)), label="key")]
        file.write_text(json.dumps(meta, indent=2))


def _delete_file(data: st.DataObject, file: Path) -> None:
    file.unlink()


DAMAGE = {
    "truncate": _truncate,
    "flip a byte": _flip_byte,
    "delete a line": _delete_line,
    "delete a CSV column": _delete_column,
    "delete a meta.json entry": _delete_meta_entry,
    "delete the file": _delete_file,
}


def _damage(data: st.DataObject, folder: Path, saved: dict[str, Path]) -> set[str]:
    """Damage ``folder`` in one drawn way; the names of the files touched."""
    files = sorted(p.name for p in folder.iterdir())
    kind = data.draw(st.sampled_from([*DAMAGE, "swap two files", "swap with another result"]), label="damage")
    first = data.draw(st.sampled_from(files), label="file")
    if kind == "swap two files":
        second = data.draw(st.sampled_from(files), label="other file")
        a, b = (folder / first).read_bytes(), (folder / second).read_bytes()
        (folder / first).write_bytes(b)
        (folder / second).write_bytes(a)
        return {first, second}
    if kind == "swap with another result":
        others = [p for p in saved.values() if p.name != folder.name and (p / first).exists()]
        if others:
            other = data.draw(st.sampled_from(others), label="other result")
            (folder / first).write_bytes((other / first).read_bytes())
        return {first}
    if kind == "delete a meta.json entry":
        first = "meta.json"
    elif kind in ("delete a line", "delete a CSV column"):
        csvs = [f for f in files if f.endswith(".csv")]
        if not csvs:
            return set()
        first = data.draw(st.sampled_from(csvs), label="csv")
    DAMAGE[kind](data, folder / first)
    return {first}


@pytest.mark.parametrize("name", sorted(n for n, c in RESULT_TYPES.items() if c.__module__.startswith("icl_heads.")))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_result_loads_equal_or_is_refused_naming_the_file(saved, name, data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        shutil.copytree(saved[name], folder)
        touched = _damage(data, folder, saved)
        try:
            loaded = load_result(folder)
        except (ValueError, FileNotFoundError) as err:
            message = str(err)
            assert str(folder) in message, message
            assert any(f in message for f in touched) or not touched, (touched, message)
            return
        again = loaded.save(Path(tmp) / "again")
        assert _tree(again) == _tree(saved[name]), f"{name} loaded with other content after damaging {touched}"
