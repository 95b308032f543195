"""The command refuses bad input before the model loads, never loses a file, and leaves no half-written results."""

import json

import pytest

import icl_heads
from icl_heads._cli_sections import AnalysisSection
from icl_heads.cli import main
from icl_heads.testing import tiny_llama_dir, toy_task

FAST = ["--n-prompts", "8", "--quiet", "--skip", "heads,mechanism,bias,components,corrections"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_llama_dir(tmp_path_factory.mktemp("cli-model") / "model")


def _rows(n_per_class=12, classes=("sport", "food")):
    task = toy_task(n_per_class=n_per_class)
    return [(t, classes[y]) for t, y in zip(task.texts, task.labels, strict=True)]


def _csv(rows):
    return "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows)


def _jsonl(rows):
    return "\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n"


GOOD = _csv(_rows())
BLANK_TEXT = "\n".join(",sport" if i == 2 else " ,food" if i == 4 else row for i, row in enumerate(GOOD.splitlines()))
THREE = _csv([(t, y) for t, y in _rows(classes=("a", "b"))] + [(t, "c") for t, _ in _rows(6)])
NON_UTF8 = GOOD.encode() + "goal caf\xe9,sport\n".encode("latin-1")
BAD_JSONL = "\n".join([*_jsonl(_rows()).splitlines()[:10], '{"text": "goal", "label": sport}']) + "\n"
MIXED = _jsonl(_rows()).replace('"label": "sport"', '"label": 1', 1).replace('"label": "food"', '"label": "1"')


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _refused(argv, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load for bad input")

    monkeypatch.setattr(icl_heads, "load_model", no_model)
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


# (name, data file name, its content, extra arguments, expected message, arguments or file that fix it)
CASES = [
    (
        "blank text",
        "d.csv",
        BLANK_TEXT,
        [],
        r"2 rows have a missing text or label \(lines 3, 5\).*--dropna",
        ["--dropna"],
    ),
    (
        "blank label",
        "d.csv",
        GOOD.replace(",food\n", ",\n", 1),
        [],
        r"1 rows have a missing text or label \(line 3\)",
        ["--dropna"],
    ),
    (
        "3 classes, shots 4",
        "d.csv",
        THREE,
        ["--label-words", "foo,bar,the", "--shots", "4", "--skip", "heads,mechanism,components,corrections"],
        r"--shots 4 is not a multiple of the 3 classes.*--shots 6",
        ["--shots", "6"],
    ),
    ("empty csv", "d.csv", "", [], r"d\.csv is empty", GOOD),
    ("header only", "d.csv", "text,label\n", [], r"has a header but no rows", GOOD),
    ("bad json line", "d.jsonl", BAD_JSONL, [], r"line 11 is not valid JSON", _jsonl(_rows())),
    ("non-utf8", "d.csv", NON_UTF8, [], r"line 26 is not valid UTF-8 \(byte 0xe9 at column 9\)", GOOD),
    ("mixed labels", "d.jsonl", MIXED, [], r"mixes numbers \(line 1\), strings \(line 2\)", _jsonl(_rows())),
    (
        "missing column",
        "d.csv",
        GOOD.replace("label", "topic", 1),
        [],
        r"no column 'label'.*--label-col",
        ["--label-col", "topic"],
    ),
    ("one class", "d.csv", _csv([(t, "sport") for t, _ in _rows()]), [], r"every row has the label 'sport'", GOOD),
    ("extra field", "d.csv", GOOD + "goal, team,sport\n", [], r"line 26 has 3 fields but the header has 2", GOOD),
    ("negative seed", "d.csv", GOOD, ["--seed", "-1"], r"--seed must be at least 0, got -1", ["--seed", "1"]),
    ("few prompts", "d.csv", GOOD, ["--n-prompts", "4"], r"--n-prompts must be at least 8", ["--n-prompts", "8"]),
    (
        "skip typo",
        "d.csv",
        GOOD,
        ["--skip", "heads,mechanizm,bias,components"],
        r"unknown section 'mechanizm'; did you mean 'mechanism'",
        ["--skip", "heads,mechanism,bias,components,corrections"],
    ),
    ("no cuda", "d.csv", GOOD, ["--device", "cuda"], r"--device cuda: CUDA is not available", ["--device", "cpu"]),
    ("bad device", "d.csv", GOOD, ["--device", "gpu0"], r"--device 'gpu0' is not a device", ["--device", "cpu"]),
    (
        "unknown label word",
        "d.csv",
        GOOD,
        ["--label-words", "football,bar"],
        r"'football' is not in the tokenizer's vocabulary.*--label-words",
        ["--label-words", "foo,bar"],
    ),
    (
        "wrong word count",
        "d.csv",
        GOOD,
        ["--label-words", "foo,bar,the"],
        r"2 classes \(sport, food\) need one word each, got 3",
        ["--label-words", "foo,bar"],
    ),
    (
        "unknown class",
        "d.csv",
        GOOD,
        ["--classes", "sport,music"],
        r"--classes: 'music' is not a label",
        ["--classes", "food,sport"],
    ),
    (
        "too many shots",
        "d.csv",
        GOOD,
        ["--shots", "30"],
        r"class 'sport' has 12 examples but a prompt needs 16",
        ["--shots", "4"],
    ),
    ("folder as data", "d.csv", None, [], r"d\.csv is a folder", GOOD),
    (
        "components need examples",
        "d.csv",
        GOOD,
        ["--skip", "heads,mechanism,bias,corrections"],
        r"components section needs 16 examples of each class .* class 'sport' has 12",
        _csv(_rows(16)),
    ),
    ("unknown suffix", "d.txt", GOOD, [], r"use a \.csv or \.jsonl file \(got suffix '\.txt'\)", None),
]


@pytest.mark.parametrize("name, file, content, extra, message, fix", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_first_in_one_line_and_the_fix_works(
    name, file, content, extra, message, fix, workdir, model_dir, capsys, monkeypatch
):
    data = workdir / file
    if content is None:
        data.mkdir()
    elif isinstance(content, bytes):
        data.write_bytes(content)
    else:
        data.write_text(content)
    argv = ["analyze", "--model", str(model_dir), "--data", str(data), "--out", "out", *FAST, *extra]
    before = sorted(p.name for p in workdir.iterdir())
    with monkeypatch.context() as m:
        code, err = _refused(argv, capsys, m)
    assert code == 2 and err.count("\n") == 1 and err.startswith("icl-heads: error: ")
    assert __import__("re").search(message, err), err
    assert sorted(p.name for p in workdir.iterdir()) == before  # nothing left behind
    if fix is None:
        return
    if isinstance(fix, str):
        if data.is_dir():
            data.rmdir()
        data.write_text(fix)
        fix = []
    assert main([*argv, *fix]) == 0
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert summary["shots"] % len(summary["classes"]) == 0 or "--shots" in fix
    assert (workdir / "out" / "manifest.json").exists() and not (workdir / "out.incomplete").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "./no/such/model"], r"--model \./no/such/model: no such folder"),
        (["--model", "/tmp/nope/model"], r"--model /tmp/nope/model: no such folder"),
        (["--model", "bad name!"], r"neither a local folder nor a hub name"),
        (["--task", "imdb"], r"unknown --task 'imdb'"),
        (["--threads", "0"], r"--threads must be at least 1"),
        (["--classes", "sport,opera"], r"the organism has no topic 'opera'"),
    ],
)
def test_bad_model_and_task_references(argv, message, workdir, capsys, monkeypatch):
    code, err = _refused(["analyze", "--out", "out", *argv], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and __import__("re").search(message, err), err
    assert list(workdir.iterdir()) == []


def test_hub_name_offline_says_so(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = _refused(["analyze", "--out", "out", "--model", "no-such-org/no-such-model"], capsys, monkeypatch)
    assert code == 2 and "not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE is set)" in err


def test_argparse_errors_are_one_line_with_code_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["analyze", "--out", "x", "--shots", "four"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "invalid int value: 'four'" in err


def test_debug_shows_the_traceback(workdir):
    from icl_heads._cli_output import UsageError

    with pytest.raises(UsageError, match="--seed must be at least 0"):
        main(["analyze", "--out", "out", "--seed", "-1", "--debug"])


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"icl-heads {icl_heads.__version__}"


def test_upper_case_csv_numeric_classes_and_the_mapping(workdir, model_dir, capsys):
    rows = [(t, 10 if y == "sport" else 2) for t, y in _rows()]
    (workdir / "D.CSV").write_text(_csv(rows))
    assert main(["analyze", "--model", str(model_dir), "--data", "D.CSV", "--out", "out", *FAST]) == 0
    printed = capsys.readouterr().out
    assert f"report: {workdir.name}" not in printed and "report: out/report.html" in printed
    assert "-shot accuracy:" in printed
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    assert [c["class"] for c in summary["classes"]] == [2, 10]  # numeric order, not "10" < "2"
    assert summary["label_words"] == {"2": "foo", "10": "bar"}
    html = (workdir / "out" / "report.html").read_text()
    assert "2 → foo, 10 → bar" in html


def test_unknown_words_are_counted_and_reported(workdir, model_dir):
    rows = [(f"{t} zorblax", y) for t, y in _rows()]
    (workdir / "d.csv").write_text(_csv(rows))
    assert main(["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]) == 0
    summary = json.loads((workdir / "out" / "summary.json").read_text())
    words = sum(len(t.split()) for t, _ in rows)
    assert summary["unknown_token_share"] == pytest.approx(len(rows) / words)
    assert "zorblax" in (workdir / "out" / "report.html").read_text()


# ---- output folder: failures, interrupts, --force ---------------------------------------------------


def _boom(exc):
    def section(ctx):
        (ctx.out / "results" / "partial.csv").write_text("a\n1\n")
        raise exc

    return section


@pytest.mark.parametrize("exc, code", [(KeyboardInterrupt(), 130), (RuntimeError("bug"), None)])
def test_failed_or_interrupted_run_leaves_nothing_and_a_rerun_works(exc, code, workdir, model_dir, monkeypatch, capsys):
    from icl_heads import cli
    from icl_heads._cli_output import Terminated

    (workdir / "d.csv").write_text(GOOD)
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "new/out", *FAST]
    monkeypatch.setattr(cli, "SECTIONS", [*cli.SECTIONS, AnalysisSection("boom", _boom(exc), 1)])
    if code is None:
        with pytest.raises(RuntimeError, match="bug"):
            main(argv)
    else:
        assert main(argv) == code
        assert "no results written" in capsys.readouterr().err
    assert sorted(p.name for p in workdir.iterdir()) == ["d.csv"]  # not even the parent folder it created
    monkeypatch.setattr(
        cli, "SECTIONS", [*cli.SECTIONS[:-1], AnalysisSection("boom", _boom(Terminated("terminated by SIGTERM")), 1)]
    )
    assert main(argv) == 143 and not (workdir / "new").exists()
    monkeypatch.setattr(cli, "SECTIONS", cli.SECTIONS[:-1])
    assert main(argv) == 0 and (workdir / "new" / "out" / "summary.json").exists()


def test_sigterm_is_turned_into_cleanup(workdir, model_dir, monkeypatch):
    import os
    import signal

    from icl_heads import cli

    def killed(ctx):
        (ctx.out / "results" / "partial.csv").write_text("a\n1\n")
        os.kill(os.getpid(), signal.SIGTERM)

    (workdir / "d.csv").write_text(GOOD)
    monkeypatch.setattr(cli, "SECTIONS", [*cli.SECTIONS, AnalysisSection("killed", killed, 1)])
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]
    assert main(argv) == 143
    assert sorted(p.name for p in workdir.iterdir()) == ["d.csv"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_killed_run_leaves_a_marked_incomplete_folder_that_a_rerun_replaces(workdir, model_dir):
    (workdir / "d.csv").write_text(GOOD)
    stale = workdir / "out.incomplete"
    (stale / "results").mkdir(parents=True)
    (stale / "INCOMPLETE").write_text("999999999\nAn icl-heads run is writing here\n")  # no such process
    (stale / "results" / "accuracy.csv").write_text("stale")
    assert main(["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST]) == 0
    assert not stale.exists() and (workdir / "out" / "results" / "accuracy.csv").read_text() != "stale"


def test_force_replaces_only_an_earlier_runs_files(workdir, model_dir, capsys, monkeypatch):
    (workdir / "d.csv").write_text(GOOD)
    base = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", "--n-prompts", "8", "--quiet"]
    assert main([*base, "--skip", "mechanism,bias,components,corrections"]) == 0
    out = workdir / "out"
    assert (out / "results" / "head_scores.csv").exists()
    (out / "notes.txt").write_text("mine")
    (out / "results" / "my_plot.csv").write_text("mine")
    with monkeypatch.context() as m:
        code, err = _refused([*base, "--skip", "heads,mechanism,bias,components,corrections"], capsys, m)
        assert code == 2 and "not empty (it holds the results of an earlier run)" in err
        code, err = _refused([*base, "--skip", "heads,mechanism,bias,components,corrections", "--force"], capsys, m)
        assert code == 2 and "holds results/my_plot.csv, which no earlier icl-heads run wrote" in err
    (out / "results" / "my_plot.csv").rename(out / "my_plot.csv")
    assert main([*base, "--skip", "heads,mechanism,bias,components,corrections", "--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "my_plot.csv").read_text() == "mine"
    assert not (out / "results" / "head_scores.csv").exists()  # stale results of the earlier run are gone
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["manifest.json", "report.html", "results/accuracy.csv", "summary.json"]


def test_force_never_overwrites_a_users_file_named_like_a_result(workdir, model_dir, capsys, monkeypatch):
    (workdir / "d.csv").write_text(GOOD)
    (workdir / "out").mkdir()
    (workdir / "out" / "report.html").write_text("my own report")
    argv = ["analyze", "--model", str(model_dir), "--data", "d.csv", "--out", "out", *FAST, "--force"]
    code, err = _refused(argv, capsys, monkeypatch)
    assert code == 2 and "holds report.html, which no earlier icl-heads run wrote" in err
    assert (workdir / "out" / "report.html").read_text() == "my own report"
    assert sorted(p.name for p in workdir.iterdir()) == ["d.csv", "out"]


def test_out_that_is_a_file(workdir, capsys, monkeypatch):
    (workdir / "out").write_text("x")
    code, err = _refused(["analyze", "--out", "out"], capsys, monkeypatch)
    assert code == 2 and "--out out is a file" in err


def test_the_largest_seed_keeps_every_derived_seed_in_32_bits(capsys):
    from icl_heads._cli_inputs import MAX_SEED
    from icl_heads.cli import _seeds

    # + 1: the corrections' positional prior draws with their tuning seed + 1
    assert max(_seeds(MAX_SEED).values()) + 1 == 2**32 - 1
    assert (
        main(["analyze", "--model", "organism", "--task", "organism", "--seed", str(MAX_SEED + 1), "--out", "x"]) == 2
    )
    assert f"--seed must be at most {MAX_SEED}" in capsys.readouterr().err
