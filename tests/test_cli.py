import json

import pytest
import torch

from icl_heads.cli import main
from icl_heads.options import RunOptions
from icl_heads.testing import tiny_llama_dir, toy_task


@pytest.fixture(scope="module")
def data_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    task = toy_task(n_per_class=30)
    lines = [
        json.dumps({"sentence": t, "topic": task.classes[y]}) for t, y in zip(task.texts, task.labels, strict=True)
    ]
    (root / "data.jsonl").write_text("\n".join(lines))
    return root / "data.jsonl", tiny_llama_dir(root / "model")


def test_help_is_clear(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--model",
        "--task",
        "--data",
        "--text-col",
        "--label-col",
        "--shots",
        "--n-prompts",
        "--device",
        "--seed",
        "--force",
    ):
        assert flag in out


def test_analyze_writes_report_tables_and_summary(data_and_model, tmp_path):
    data, model = data_and_model
    out = tmp_path / "run"
    args = ["analyze", "--model", str(model), "--data", str(data), "--text-col", "sentence", "--label-col", "topic"]
    args += [
        "--n-prompts",
        "16",
        "--shots",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--skip",
        "mechanism,bias,components,corrections",
    ]
    before = torch.get_num_threads()
    try:
        assert main([*args, "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_prompts"] == 16 and 0 <= summary["accuracy"] <= 1
    assert len(summary["in_context_heads"]) == 1
    html = (out / "report.html").read_text()
    assert html.count("Plotly.newPlot") == summary["n_figures"] > 0
    assert "<script src=" not in html and "<script type='text/javascript'>" in html
    assert {p.name for p in (out / "results").iterdir()} >= {
        "accuracy.csv",
        "head_scores.csv",
        "head_verification.csv",
        "ablation_curve.csv",
        "ablation_curve_by_ablation_score.csv",
        "head_definitions.csv",
    }
    assert "top heads by ablation" in html
    # verdicts first (faithfulness check, in-context learning, then the heads; skipped sections are "not applicable")
    verdicts = summary["verdicts"]
    assert verdicts[0]["claim"] == "the linear identities hold" and verdicts[0]["state"] == "holds"
    assert verdicts[1]["claim"] == "the model learns the task in context" and verdicts[1]["low"] is not None
    assert verdicts[2]["claim"] == "a few heads carry ICL"
    assert {v["state"] for v in verdicts[3:]} == {"not applicable"}
    assert html.index("id='verdicts'") < html.index("<h2>Task and data</h2>") < html.index("id='provenance'")
    prov = summary["provenance"]
    assert prov["command"].startswith("icl-heads analyze --model ") and "--threads 2" in prov["command"]
    assert set(prov["versions"]) >= {"python", "torch", "transformer-lens", "transformers", "icl_heads"}
    assert prov["model"]["device"] == "cpu" and prov["model"]["dtype"] == "float32"
    assert prov["task"]["data_sha256"]
    assert set(prov["cost"]["seconds per section"]) == {"accuracy", "heads", "head_definitions"}
    # the cost ledger: every section's model work, adding up to the total, also in the report
    cost = summary["cost"]
    assert set(cost) == {"accuracy", "heads", "head_definitions", "total"}
    assert cost["accuracy"]["rows"] == 16 and cost["accuracy"]["passes"] >= 1
    for key in ("passes", "rows", "tokens", "layer_tokens"):
        assert cost["total"][key] == cost["accuracy"][key] + cost["heads"][key] + cost["head_definitions"][key]
    # the tiny model has two layers; passes resumed at layer 1 run one of them
    assert cost["total"]["tokens"] < cost["total"]["layer_tokens"] <= cost["total"]["tokens"] * 2
    assert prov["cost"]["forward passes"] == cost["total"]["passes"]
    assert html.index("id='provenance'") < html.index("id='cost'")


def test_bad_dtype_is_a_clear_error(tmp_path, capsys):
    assert main(["analyze", "--dtype", "float12", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and "bfloat16" in err and not (tmp_path / "x").exists()


def test_refuses_to_overwrite_without_force(data_and_model, tmp_path, capsys):
    data, model = data_and_model
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    base = ["analyze", "--model", str(model), "--data", str(data), "--text-col", "sentence", "--label-col", "topic"]
    assert main([*base, "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me"


def test_bad_thread_count_is_a_clear_error(tmp_path, capsys):
    assert main(["analyze", "--threads", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_unknown_task_is_a_clear_error(tmp_path, capsys):
    assert main(["analyze", "--task", "imdb", "--out", str(tmp_path / "x")]) == 2
    assert "unknown --task" in capsys.readouterr().err


def test_organism_sections_use_the_harder_setting_and_user_tasks_stay_as_given(tmp_path):
    import argparse

    from icl_heads._cli_sections import Context, task_variant
    from icl_heads.organism import HELDOUT_TEMPLATES, organism_task

    task = organism_task()
    args = argparse.Namespace(data=None, task="organism", seed=3, template=None)
    ctx = Context(
        args=args, model=None, task=task, prompts=None, held_out=None, out=tmp_path, summary={}, options=RunOptions()
    )
    for kind, template in (("bias", HELDOUT_TEMPLATES[1]), ("components", HELDOUT_TEMPLATES[0])):
        harder, note = task_variant(ctx.args, ctx.task, kind)
        assert harder.template == template and template not in task.template and repr(template) in note
        assert harder.label_words == task.label_words and harder.classes == task.classes
    ctx.args = argparse.Namespace(data=tmp_path / "mine.csv", task="organism", seed=3, template=None)
    assert task_variant(ctx.args, ctx.task, "bias") == (task, None)


def test_one_writer_renders_sections_and_refuses_clashes(tmp_path):
    import pandas as pd
    import plotly.graph_objects as go

    from icl_heads._cli_output import write_sections
    from icl_heads.report import Report, Section

    (tmp_path / "results").mkdir()
    first = Section("First")
    first.text("hello")
    first.figure(go.Figure(go.Bar(y=[1, 2])))
    first.table(pd.DataFrame({"a": [1, 2]}))
    first.csv["table_a"] = pd.DataFrame({"a": [1, 2]})
    first.summary["a"] = 1
    first.results["a"] = "result"
    assert not any((tmp_path / "results").iterdir())  # building a section writes nothing
    report, summary, results = Report(title="t"), {}, {}
    write_sections([first], report, tmp_path, summary, results)
    assert [h for h, _ in report.sections] == ["First"] and report.n_figures == 1
    assert "<p>hello</p>" in report.sections[0][1][0] and "<table" in report.sections[0][1][2]
    assert pd.read_csv(tmp_path / "results" / "table_a.csv").a.tolist() == [1, 2]
    assert summary == {"a": 1} and results == {"a": "result"}
    again = Section("Again")
    again.csv["table_a"] = pd.DataFrame({"b": [0]})
    with pytest.raises(ValueError, match="two sections write the table table_a.csv"):
        write_sections([again], report, tmp_path, summary, results)
    clash = Section("Clash")
    clash.summary["a"] = 2
    with pytest.raises(ValueError, match=r"summary entries another section wrote: \['a'\]"):
        write_sections([clash], report, tmp_path, summary, results)
