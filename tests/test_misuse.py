"""Misuse as a new user would try it: never a wrong number, never a file touched outside --out, never a traceback.

Each test is one case of issue #26: a bad input must end in a clear error (exit code 2 and
one line from the command, a ``ValueError``/``TypeError`` naming the argument from Python),
before any model work, and must leave every file outside ``--out`` as it was.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import icl_heads
import icl_heads as ih
from icl_heads.cli import main
from icl_heads.data import DataError, read_labelled_file
from icl_heads.prompts.text import SeparatorInTextError
from icl_heads.testing import tiny_llama_dir, toy_task

FAST = ["--n-prompts", "8", "--quiet", "--skip", "heads,mechanism,bias,components,corrections"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("misuse-model") / "model")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _rows(n_per_class=12):
    task = toy_task(n_per_class=n_per_class)
    return [(t, ("sport", "food")[y]) for t, y in zip(task.texts, task.labels, strict=True)]


GOOD = "text,label\n" + "".join(f"{t},{y}\n" for t, y in _rows())


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (to show that nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(argv, capsys, monkeypatch):
    """Run the command in-process with model loading forbidden; its exit code and its stderr."""

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for bad input")

    monkeypatch.setattr(icl_heads, "load_model", no_model)
    code = main(argv)
    return code, capsys.readouterr().err


def _one_line(code, err, pattern):
    import re

    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(pattern, err), err


def _command(*args, env=None):
    """The command as a user runs it: a separate process, one torch thread."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return [sys.executable, "-m", "icl_heads_cli", *args], env


# ---- 1, 6: columns are resolved unambiguously ---------------------------------------------------------


def test_a_repeated_column_name_is_refused_naming_both(workdir, model_dir, capsys, monkeypatch):
    rows = _rows()
    (workdir / "d.csv").write_text(
        "text,label,label\n" + "".join(f"{t},{y},{'food' if y == 'sport' else 'sport'}\n" for t, y in rows)
    )
    with pytest.raises(DataError, match=r"line 1: the header names 'label' twice \(columns 2 and 3\)"):
        read_labelled_file(workdir / "d.csv")
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]
    code, err = _refused(argv, capsys, monkeypatch)
    _one_line(code, err, r"names 'label' twice \(columns 2 and 3\)")
    assert sorted(p.name for p in workdir.iterdir()) == ["d.csv"]


def test_a_repeated_json_key_is_refused(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "goal", "label": "sport", "label": "food"}\n')
    with pytest.raises(DataError, match=r"line 1: the object names 'label' twice"):
        read_labelled_file(tmp_path / "d.jsonl")


def test_a_repeated_column_that_is_not_read_is_harmless(tmp_path):
    (tmp_path / "d.csv").write_text("text,note,label,note\ngoal,a,sport,b\nsoup,c,food,d\n")
    assert read_labelled_file(tmp_path / "d.csv").labels == ("sport", "food")


def test_text_column_equal_to_label_column_is_refused(workdir, model_dir, capsys, monkeypatch):
    (workdir / "d.csv").write_text(GOOD)
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST, "--text-col", "label"]
    code, err = _refused(argv, capsys, monkeypatch)
    _one_line(code, err, r"the text and the label would both be read from the column 'label'.*--text-col")


# ---- 2, 3, 9: writes confined to --out, a lock before anything else ----------------------------------------


def test_force_never_deletes_a_file_outside_out(workdir, model_dir, capsys, monkeypatch):
    (workdir / "d.csv").write_text(GOOD)
    (workdir / "victim.txt").write_text("mine")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim.txt").write_text("mine too")
    (workdir / "out").mkdir()
    for listed in ("../victim.txt", str(elsewhere / "victim.txt"), "results/../../victim.txt"):
        manifest = {"files": ["report.html", listed, "manifest.json"]}
        (workdir / "out" / "manifest.json").write_text(json.dumps(manifest))
        before = _tree(workdir)
        argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST, "--force"]
        code, err = _refused(argv, capsys, monkeypatch)
        _one_line(code, err, r"lists '.*victim\.txt', which is not a file inside out")
        assert _tree(workdir) == before


def test_force_never_writes_through_a_link_out_of_out(workdir, model_dir, capsys):
    (workdir / "d.csv").write_text(GOOD)
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]
    assert main(argv) == 0
    outside = workdir / "outside"
    outside.mkdir()
    for f in (workdir / "out" / "results").iterdir():
        f.unlink()
    (workdir / "out" / "results").rmdir()
    (workdir / "out" / "results").symlink_to(outside)  # results/ now points out of --out
    code = main([*argv, "--force"])
    assert code == 2 and "not a file inside out" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("kind", ["folder", "file", "empty folder"])
def test_a_users_out_incomplete_is_never_deleted(kind, workdir, model_dir, capsys, monkeypatch):
    (workdir / "d.csv").write_text(GOOD)
    mine = workdir / "out.incomplete"
    if kind == "file":
        mine.write_text("my notes")
    else:
        mine.mkdir()
        if kind == "folder":
            (mine / "thesis.tex").write_text("chapter 1")
    before = _tree(workdir)
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]
    start = time.monotonic()
    code, err = _refused(argv, capsys, monkeypatch)
    assert time.monotonic() - start < 5
    _one_line(code, err, r"out\.incomplete exists .*is never deleted")
    assert _tree(workdir) == before and mine.exists() and not (workdir / "out").exists()


def test_a_run_holding_the_lock_stops_a_second_run(workdir, model_dir, capsys, monkeypatch):
    from icl_heads._cli_output import OutputFolder

    (workdir / "d.csv").write_text(GOOD)
    with OutputFolder(workdir / "out") as tmp:
        argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]
        code, err = _refused(argv, capsys, monkeypatch)
        _one_line(code, err, rf"another icl-heads run \(process {os.getpid()}\) is writing out")
        assert (tmp / "INCOMPLETE").exists()
    assert sorted(p.name for p in workdir.iterdir()) == ["d.csv"]


def test_two_runs_started_together_on_one_out_never_race(workdir, model_dir):
    (workdir / "d.csv").write_text(GOOD)
    cmd, env = _command(
        "analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST, "--threads", "1"
    )
    runs = [subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]  # fmt: skip
    done = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert sorted(code for code, _ in done) == [0, 2], done
    loser = next(err for code, err in done if code == 2)
    assert "Traceback" not in loser and loser.count("\n") == 1, loser
    assert "another icl-heads run" in loser or "is not empty" in loser, loser
    assert not (workdir / "out.incomplete").exists()
    manifest = json.loads((workdir / "out" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(_tree(workdir / "out"))  # one complete run, nothing mixed in


# ---- 4, 10, 13: numeric parameters at the API boundary ------------------------------------------------------


@pytest.mark.parametrize("grid", [[float("nan"), 0.0], [float("inf"), 0.0], [1e30, 0.0], [-1.0, 0.0], [True, 0.0]])
def test_correction_grid_values_must_be_finite_and_in_range(grid, organism):
    task = ih.organism_task()
    with pytest.raises((ValueError, TypeError), match=r"grid\[0\]"):
        ih.correct_majority_bias(organism, task, heads=[(1, 1)], n=20, tune_n=10, grid=grid)


@pytest.mark.parametrize("drop", [float("nan"), -0.1, 2.0])
def test_max_accuracy_drop_must_be_a_share(drop, organism):
    with pytest.raises(ValueError, match=r"max_accuracy_drop is .*finite number in \[0, 1\]"):
        ih.correct_majority_bias(organism, ih.organism_task(), heads=[(1, 1)], n=20, tune_n=10, max_accuracy_drop=drop)


def test_a_registered_method_grid_is_checked_too():
    from icl_heads.correction_methods import CorrectionMethod

    with pytest.raises(ValueError, match=r"grid of 'm'\[1\] is nan"):
        CorrectionMethod("majority", "m", "strength", (0.0, float("nan")), lambda s: None)


@pytest.mark.parametrize("fn", ["majority_bias", "recency_bias"])
def test_n_boot_must_be_a_sensible_count(fn, organism):
    with pytest.raises(ValueError, match="n_boot must be an integer >= 10, got 0"):
        getattr(ih, fn)(organism, ih.organism_task(), n=8, n_boot=0)


def test_n_random_is_named_and_zero_shot_prompts_are_refused(organism):
    prompts = ih.organism_task().prompts(8, 4, seed=0)
    with pytest.raises(ValueError, match="n_random must be an integer >= 2, got 0"):
        ih.find_in_context_heads(organism, prompts, n_random=0)
    with pytest.raises(ValueError, match=r"seed must be below 2\*\*63, got 18446744073709551616"):
        ih.find_in_context_heads(organism, prompts, seed=2**64)
    with pytest.raises(ValueError, match="has no demonstrations.*shots >= 1"):
        ih.find_in_context_heads(organism, ih.organism_task().prompts(8, 0, seed=0), verify=False)


def test_strings_where_a_sequence_belongs_are_refused():
    with pytest.raises(TypeError, match=r"label_words must be a sequence, got the string 'ab'"):
        ih.organism_task().with_label_words("ab")
    with pytest.raises(TypeError, match=r"topics must be a sequence, got the string 'sport'.*\['sport'\]"):
        ih.organism_task("sport")
    with pytest.raises(ValueError, match="repeat a topic"):
        ih.organism_task(("sport", "sport"))


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--seed", str(2**64)], r"--seed must be at most \d+, got 18446744073709551616"),
        (["--classes", "sport,sport"], r"--classes sport,sport lists 'sport' twice"),
        (["--classes", "sport", "--label-words", "foo"], r"--classes sport: .*at least 2 classes"),
        (["--n-prompts", str(10**9)], r"--n-prompts must be at most"),
    ],
)
def test_command_number_and_class_errors_are_one_line(argv, pattern, workdir, capsys, monkeypatch):
    code, err = _refused(["analyze", "--out", "out", *argv], capsys, monkeypatch)
    _one_line(code, err, pattern)
    assert list(workdir.iterdir()) == []


# ---- 5: template separators inside texts ---------------------------------------------------------------------


def test_a_text_with_a_separator_is_refused_with_its_line(workdir, model_dir, capsys, monkeypatch):
    rows = _rows()
    lines = ["text,label", *(f"{t},{y}" for t, y in rows)]
    lines[5] = f'"{rows[4][0]}\nsecond line",{rows[4][1]}'  # a quoted newline inside the 5th row's text
    (workdir / "d.csv").write_text("\n".join(lines) + "\n")
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]
    code, err = _refused(argv, capsys, monkeypatch)
    _one_line(code, err, r"d\.csv: line 6: the text contains '\\n'")
    with pytest.raises(SeparatorInTextError, match=r"text 1 .* contains ' : '") as info:
        ih.ICLTask.from_pairs(["goal", "team : foo", "soup", "bread"], ["sport", "sport", "food", "food"])
    assert info.value.index == 1
    task = ih.ICLTask.from_pairs(
        ["goal", "team : foo", "soup", "bread"], ["a", "a", "b", "b"], template="{text} | {label}\n"
    )
    with pytest.raises(SeparatorInTextError):
        task.with_template("{text} : {label}\n")


# ---- 10, 11: model loading ------------------------------------------------------------------------------------


def test_model_loading_errors_are_clear_and_fast(monkeypatch):
    from icl_heads.models import _check_reference

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = [
        (lambda: ih.load_model("./nope"), FileNotFoundError, r"load_model\('\./nope'\): no such folder"),
        (lambda: ih.load_model(None), TypeError, r"name_or_path"),  # the test-time type checker's message, or ours
        (lambda: _check_reference(None), TypeError, r"needs a model name or folder .*got NoneType"),
        (lambda: ih.load_model("no-such-org/no-such-model"), FileNotFoundError, r"hub is offline"),
        (lambda: ih.load_model("bad name!"), ValueError, r"neither a local model folder"),
    ]
    if not torch.cuda.is_available():
        cases.append((lambda: ih.load_model("organism", device="cuda"), ValueError, r"CUDA is not available"))
    for call, error, pattern in cases:
        start = time.monotonic()
        with pytest.raises(error, match=pattern):
            call()
        assert time.monotonic() - start < 2


def test_an_unknown_hub_name_online_fails_after_one_short_attempt(monkeypatch):
    """Without HF_HUB_OFFLINE: one request (no retries); here the hub is unreachable or says no such model."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises((ValueError, ConnectionError), match="no-such-org-4d1/no-such-model"):
        ih.load_model("no-such-org-4d1/no-such-model")
    assert time.monotonic() - start < 10


def test_the_command_with_an_unknown_hub_name_offline(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    code, err = _refused(["analyze", "--out", "out", "--model", "no-such-org/no-such-model"], capsys, monkeypatch)
    assert time.monotonic() - start < 2
    _one_line(code, err, r"--model no-such-org/no-such-model: .*hub is offline")


# ---- 10: interrupts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["early", "twice"])
def test_ctrl_c_never_prints_a_traceback(when, workdir, model_dir):
    (workdir / "d.csv").write_text(GOOD)
    cmd, env = _command("analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", "--n-prompts", "8",
                        "--quiet", "--threads", "1")  # fmt: skip
    run = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if when == "early":
        time.sleep(0.5)  # still importing
        run.send_signal(signal.SIGINT)
    else:
        deadline = time.monotonic() + 60
        while not (workdir / "out.incomplete").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        run.send_signal(signal.SIGINT)
        time.sleep(0.05)
        run.send_signal(signal.SIGINT)
    code = run.wait(timeout=120)
    err = run.stderr.read()
    assert "Traceback" not in err, err
    assert code in (130, -signal.SIGINT), (code, err)
    assert sorted(p.name for p in workdir.iterdir()) == ["d.csv"]


# ---- 12: long work shows an estimate first, then progress that moves -------------------------------------


def test_the_estimate_scales_with_prompts_and_heads_and_says_how_to_shrink():
    from icl_heads._cli_progress import estimate, predicted_passes
    from icl_heads._cli_sections import ACCURACY, BIAS, HEADS

    assert predicted_passes(HEADS, 200, 24) == HEADS.reference_passes
    assert predicted_passes(HEADS, 40, 144) == round(HEADS.reference_passes * 40 / 200 * 144 / 24)
    assert predicted_passes(BIAS, 100, 144) == round(BIAS.reference_passes / 2)  # no heads loop
    from icl_heads._section_head_definitions import HEAD_DEFINITIONS

    # function vectors run on at most 32 trials whatever --n-prompts is: 40 prompts on the organism made 888
    assert predicted_passes(HEAD_DEFINITIONS, 40, 24) == 888
    assert predicted_passes(HEAD_DEFINITIONS, 200, 24) == HEAD_DEFINITIONS.reference_passes
    passes, text = estimate([ACCURACY, HEADS], 40, 144, per_pass=0.05)
    assert passes == {"accuracy": 40, "heads": predicted_passes(HEADS, 40, 144)}
    minutes = round(sum(passes.values()) * 0.05 / 60)
    assert f"about {minutes} min" in text and "--n-prompts" in text and "--skip heads" in text


def test_each_section_bar_moves_by_the_passes_the_ledger_records():
    from icl_heads._cli_progress import ProgressLedger
    from icl_heads.engine import count_cost, record_pass

    ledger = ProgressLedger(show=False)
    seen = []
    with count_cost(ledger), ledger.progress("heads", expected=10) as led:
        for _ in range(4):
            record_pass(rows=3, tokens=30, layers=2)
            seen.append(led.done)
    assert seen == [3, 6, 9, 12]  # every pass moves the bar, past the prediction too
    assert ledger.as_dict()["heads"] == {"passes": 4, "rows": 12, "tokens": 120, "layer_tokens": 240}


def test_the_command_logs_the_estimate_before_the_first_section(workdir, model_dir, caplog):
    import logging

    (workdir / "d.csv").write_text(GOOD)
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", "--n-prompts", "8"]
    with caplog.at_level(logging.INFO, logger="icl_heads"):
        assert main([*argv, "--skip", "heads,mechanism,bias,components,corrections"]) == 0
    messages = [r.getMessage() for r in caplog.records]
    first = next(i for i, m in enumerate(messages) if m.startswith("section "))
    assert any(m.startswith("estimate: about") and "prompt passes" in m for m in messages[:first]), messages


def test_results_kept_after_a_clash_are_not_replaced_by_the_next_run(workdir, model_dir, capsys, monkeypatch):
    (workdir / "d.csv").write_text(GOOD)
    kept = workdir / "out.incomplete"
    (kept / "results").mkdir(parents=True)
    (kept / "INCOMPLETE").write_text("1\nAn icl-heads run finished but its results were not moved: out/report.html\n")
    (kept / "report.html").write_text("finished")
    before = _tree(workdir)
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]
    code, err = _refused(argv, capsys, monkeypatch)
    _one_line(code, err, r"out\.incomplete holds the finished results of an earlier run")
    assert _tree(workdir) == before
