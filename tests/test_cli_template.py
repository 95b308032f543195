"""The prompt format is the user's: ``--template`` reproduces the API on a model trained with it; at chance, the run says so."""

import json
from html import escape

import pytest

import icl_heads as ih
from icl_heads.cli import main
from icl_heads.organism import SLOT_TEMPLATES, organism_task
from icl_heads.prompts import ICLTask

N = 48
ONLY_ACCURACY = ["--n-prompts", str(N), "--shots", "4", "--quiet", "--threads", "1"]
ONLY_ACCURACY += ["--skip", "heads,mechanism,bias,components"]


@pytest.fixture(scope="module")
def slot_csv(tmp_path_factory):
    """The slot organism's task (trained on ``{text} {label}\\n``) exported as a user's CSV file."""
    task = organism_task(layout="slot", n_per_class=60)
    path = tmp_path_factory.mktemp("slot") / "topics.csv"
    rows = "".join(f"{t},{task.classes[y]}\n" for t, y in zip(task.texts, task.labels, strict=True))
    path.write_text("text,label\n" + rows)
    return path


def _run(tmp_path, capsys, *args, model="organism-slot"):
    out = tmp_path / "run"
    assert main(["analyze", "--model", model, *args, *ONLY_ACCURACY, "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text()), (out / "report.html").read_text(), capsys.readouterr().out


def test_the_command_with_the_training_template_gives_the_api_accuracy(slot_csv, tmp_path, capsys):
    assert SLOT_TEMPLATES[0] == "{text} {label}\n"
    summary, html, printed = _run(tmp_path, capsys, "--data", str(slot_csv), "--template", "{text} {label}\\n")
    task = ICLTask.from_file(slot_csv, template=SLOT_TEMPLATES[0])
    api = ih.icl_accuracy(ih.load_model("organism-slot"), task.prompts(N, 4, seed=1))  # the run's held-out prompts
    assert summary["accuracy"] == pytest.approx(float(api.accuracy), abs=0) and summary["accuracy"] > 0.9
    assert summary["template"] == "{text} {label}\n" == summary["provenance"]["task"]["template"]
    assert escape("'{text} {label}\\n'") in html[: html.index("id='verdicts'")]  # in the header, above the verdicts
    assert "warning" not in printed and "does not learn" not in html


def test_a_run_at_chance_says_so_at_the_top_and_in_the_final_message(tmp_path, capsys):
    """A template that puts a word of each topic between the text and its label leaves the organism at chance."""
    task = organism_task(n_per_class=60)
    data = tmp_path / "topics.csv"
    data.write_text(
        "text,label\n" + "".join(f"{t},{task.classes[y]}\n" for t, y in zip(task.texts, task.labels, strict=True))
    )
    wrong = "{text} goal bread {label}\\n"
    summary, html, printed = _run(tmp_path, capsys, "--data", str(data), "--template", wrong, model="organism")
    icl = next(v for v in summary["verdicts"] if v["key"] == "icl")
    assert icl["state"] != "holds" and icl["low"] <= 0 <= icl["high"], icl
    top = html[: html.index("<h2>", html.index("id='verdicts'") + 30)]
    assert "does not learn this task in context" in top and "template" in top and "label words" in top
    first = printed.splitlines()[0]
    assert first.startswith("warning: the model does not learn this task in context")
    assert "--template" in first and "'{text} goal bread {label}\\n'" in first


def test_template_escapes_and_bad_templates_are_checked_before_the_model(tmp_path, capsys, slot_csv):
    from icl_heads._cli_inputs import template_of

    assert template_of("{text} -> {label}\\n") == "{text} -> {label}\n" and template_of("2") == 2
    for bad, says in (("{label} {text}", "before"), ("{text} only", "exactly once"), ("1", "named task")):
        code = main(["analyze", "--data", str(slot_csv), "--template", bad, "--out", str(tmp_path / "x")])
        assert code == 2 and says in capsys.readouterr().err


def test_named_task_errors_reach_the_command_line_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ICL_HEADS_DATA", str(tmp_path))
    assert main(["analyze", "--data", "sst2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("icl-heads: error: --data sst2: sst2 is not in") and "\n" not in err
    assert str(tmp_path / "sst2") in err
    assert main(["analyze", "--data", "sst2", "--classes", "a,b", "--out", str(tmp_path / "x")]) == 2
    assert "--classes" in capsys.readouterr().err


def test_a_template_given_for_the_organism_is_used_by_every_section():
    import argparse

    from icl_heads._cli_sections import task_variant

    task = organism_task(template="{text} -> {label}\n")
    args = argparse.Namespace(data=None, task="organism", seed=0, template="{text} -> {label}\n")
    assert task_variant(args, task, "bias") == (task, None)
    assert task_variant(argparse.Namespace(**{**vars(args), "template": None}), task, "bias")[0] != task


def test_meaningless_label_words_on_the_command_line(tmp_path):
    import argparse

    from icl_heads._cli_inputs import load_task

    data = tmp_path / "three.csv"
    data.write_text("text,label\n" + "".join(f"t{i},{'abc'[i % 3]}\n" for i in range(12)))
    keys = {"data": str(data), "text_col": "text", "label_col": "label", "dropna": False, "classes": None,
            "template": None, "split": None, "task": "organism", "seed": 0}  # fmt: skip
    task, _ = load_task(argparse.Namespace(**keys, label_words="meaningless"))
    assert task.label_words == ("foo", "bar", "baz")


def test_a_named_task_on_the_command_line_is_the_api_task(tmp_path, capsys, monkeypatch):
    """``--data sst2`` reads the local copy of SST-2 (here the organism's sentences in SST-2's layout)."""
    import datasets

    task = organism_task(n_per_class=60)
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])})  # fmt: skip
    rows = {"sentence": list(task.texts), "label": list(task.labels)}
    datasets.DatasetDict(validation=datasets.Dataset.from_dict(rows, features=features)).save_to_disk(tmp_path / "sst2")
    monkeypatch.setenv("ICL_HEADS_DATA", str(tmp_path))
    args = ["--data", "sst2", "--label-words", "foo,bar", "--template", "{text} : {label}\\n"]
    summary, _, _ = _run(tmp_path, capsys, *args, model="organism")
    api = ih.load_task("sst2", label_words=["foo", "bar"], template="{text} : {label}\n")
    acc = ih.icl_accuracy(ih.load_model("organism"), api.prompts(N, 4, seed=1))
    assert summary["accuracy"] == float(acc.accuracy) > 0.9 and summary["task"] == "sst2"
    assert summary["classes"] == [
        {"class": "negative", "label_word": "foo", "examples": 60},
        {"class": "positive", "label_word": "bar", "examples": 60},
    ]
