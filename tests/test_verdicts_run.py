"""Verdicts of a whole run: each state follows from its own interval, the intervals from the tables, no proportion
has a zero-width interval, and a model at chance gets no verdict on how in-context learning works.

The checks take a run folder. They run on one small run of the command on a tiny random
model (a model at chance), and on the organism's main job: run once here, or the folder
``ICL_HEADS_MAIN_RUN`` names (``icl-heads analyze --model organism --task organism --out DIR``).
"""

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from icl_heads.cli import main
from icl_heads.stats import wilson
from icl_heads.testing import tiny_llama_dir
from icl_heads.verdict_rules import HOLDS, ICL_CLAIMS, NOT_APPLICABLE, judge, ov_verdict, reweighting_verdict
from icl_heads.verdicts import collect_verdicts, ov_units


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One run of the command on a tiny random model: it does not learn the task in context."""
    tmp = tmp_path_factory.mktemp("verdict_run")
    out = tmp / "report"
    model = tiny_llama_dir(tmp / "model")
    argv = ["analyze", "--model", str(model), "--n-prompts", "16", "--shots", "2", "--out", str(out), "--quiet"]
    assert main([*argv, "--threads", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> Path:
    """The organism's main job (the README's command): the folder ``ICL_HEADS_MAIN_RUN`` names, or one run here."""
    path = os.environ.get("ICL_HEADS_MAIN_RUN")
    if path:
        return Path(path)
    out = tmp_path_factory.mktemp("main_job") / "run"
    argv = ["analyze", "--model", "organism", "--task", "organism", "--threads", "1", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    return out


def check_states_follow_intervals(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    verdicts = {v["key"]: v for v in summary["verdicts"]}
    for v in summary["verdicts"]:
        if v["state"] != NOT_APPLICABLE and v["low"] is not None:
            assert judge(v["low"], v["high"], v["margin"]) == v["state"], v
            assert v["low"] <= v["effect"] <= v["high"] or v["key"] == "qk", v
    # the intervals come from the tables
    results = run / "results"
    acc = pd.read_csv(results / "accuracy.csv").set_index("scope").loc["all"]
    n_labels = len(summary["label_words"])
    icl = verdicts["icl"]
    w = wilson(round(acc.accuracy * acc.n), int(acc.n))
    assert icl["low"] == pytest.approx(w.low - 1 / n_labels) and icl["high"] == pytest.approx(w.high - 1 / n_labels)
    assert summary["accuracy_95ci"] == pytest.approx(list(w.ci))
    if (results / "ov_label_features.csv").exists() and verdicts["ov"]["state"] != NOT_APPLICABLE:
        ov = pd.read_csv(results / "ov_label_features.csv")
        rows = ov[ov.label == "all"].set_index("kind")
        if len(ov[ov.label == "all"]) == 2:  # one head: its shares and demonstration counts give the verdict
            again = ov_verdict(
                rows.loc["label", "share_promoting"], int(rows.loc["label", "n"]),
                rows.loc["control", "share_promoting"], int(rows.loc["control", "n"]), n_labels,
            )  # fmt: skip
            assert (again.low, again.high, again.state) == pytest.approx(
                (verdicts["ov"]["low"], verdicts["ov"]["high"], verdicts["ov"]["state"])
            )
    if (results / "reweighting.csv").exists():
        rw = pd.read_csv(results / "reweighting.csv")
        wide = rw.pivot_table(index=["seed", "template"], columns="method", values="accuracy")
        again = reweighting_verdict({m: wide[m].to_numpy() for m in wide.columns}, chance=1 / n_labels)
        assert again.state == verdicts["reweighting"]["state"]
        if again.state != NOT_APPLICABLE:
            assert (again.low, again.high) == pytest.approx(
                (verdicts["reweighting"]["low"], verdicts["reweighting"]["high"])
            )
    bias = summary.get("bias", {})
    if "majority" in bias and verdicts["majority"]["low"] is not None:
        assert [verdicts["majority"]["low"], verdicts["majority"]["high"]] == pytest.approx(bias["majority"]["95% CI"])


def check_no_zero_width_proportion(run: Path) -> None:
    results = run / "results"
    summary = json.loads((run / "summary.json").read_text())
    lo, hi = summary["accuracy_95ci"]
    assert hi > lo
    for name, cols in {
        "accuracy.csv": ("ci_low", "ci_high"),
        "head_verification.csv": ("ci_low", "ci_high"),
        "heads_needed.csv": ("ci_low", "ci_high"),
        "components.csv": ("ci_low", "ci_high"),
        "ov_label_features.csv": ("share_ci_low", "share_ci_high"),
        "ablation_curve.csv": ("ci_low", "ci_high"),
        "recency_bias.csv": ("ci_low", "ci_high"),
    }.items():
        if not (results / name).exists():
            continue
        df = pd.read_csv(results / name)
        if "condition" in df:  # the random sets' rows are the spread of sets, not an interval of one proportion
            df = df[~df.condition.isin(["random heads", "random"])]
        if cols[0] not in df:
            continue
        width = (df[cols[1]] - df[cols[0]]).dropna()
        assert (width > 0).all(), (name, df[width <= 0])
    for row in summary.get("head_verification", []):
        if row["condition"] != "random heads":
            assert row["ci_high"] > row["ci_low"], row


def check_counts(run: Path) -> None:
    """n counts independent units: OV's n is demonstrations (prompts x shots), never tokens."""
    summary = json.loads((run / "summary.json").read_text())
    ov_path = run / "results" / "ov_label_features.csv"
    if ov_path.exists():
        ov = pd.read_csv(ov_path)
        demos = summary["n_prompts"] * summary["shots"]
        assert (ov[ov.label == "all"].n <= demos).all() and (ov.n <= ov.n_positions).all()


def test_tiny_run_states_intervals_and_counts(tiny_run):
    check_states_follow_intervals(tiny_run)
    check_no_zero_width_proportion(tiny_run)
    check_counts(tiny_run)


def test_a_model_at_chance_gets_no_verdict_on_how_icl_works(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    verdicts = {v["key"]: v for v in summary["verdicts"]}
    assert verdicts["icl"]["state"] != HOLDS, verdicts["icl"]  # a random model: accuracy's interval reaches chance
    for key in ICL_CLAIMS:
        assert verdicts[key]["state"] == NOT_APPLICABLE and "does not learn the task" in verdicts[key]["detail"]
    html = (tiny_run / "report.html").read_text()
    first = html.index("does not learn this task in context")
    assert first < html.index("a few heads carry ICL")  # said before any claim


@pytest.mark.slow
def test_organism_main_job_states_intervals_and_counts(main_run):
    run = main_run
    check_states_follow_intervals(run)
    check_no_zero_width_proportion(run)
    check_counts(run)
    verdicts = {v["key"]: v for v in json.loads((run / "summary.json").read_text())["verdicts"]}
    assert "over 5 runs" in verdicts["reweighting"]["detail"]


@pytest.mark.slow
def test_each_sections_reference_passes_are_the_main_jobs(main_run):
    """The run's estimate scales each section's reference passes: they must be this job's ledger rows."""
    from icl_heads.cli import SECTIONS

    cost = json.loads((main_run / "summary.json").read_text())["cost"]
    rows = {
        name: sum(c["rows"] for key, c in cost.items() if key == name or key.startswith(f"{name}: ")) for name in cost
    }
    assert {s.name: s.reference_passes for s in SECTIONS} == {s.name: rows[s.name] for s in SECTIONS}
    assert all(s.predict(200, 24) == s.reference_passes for s in SECTIONS if s.predict)


def _ov_like(label_promotes: float, control_promotes: float, n_prompts: int = 200, shots: int = 4, seed: int = 0):
    """An OV result's positions: slots of two tokens (label, newline) and one control position per demonstration."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for d in range(shots):
            slot = rng.random() < label_promotes
            rows += [dict(layer=1, head=1, prompt=p, demo=d, kind="label", promotes=slot)] * 2
            rows.append(
                dict(layer=1, head=1, prompt=p, demo=d, kind="control", promotes=rng.random() < control_promotes)
            )
    return SimpleNamespace(positions=pd.DataFrame(rows), label_words=("foo", "bar"), heads=((1, 1),))


def test_ov_counts_demonstrations_and_a_promoter_from_anywhere_is_no_label_reader():
    reader = _ov_like(1.0, 0.46)
    units = ov_units(reader)
    assert units["label"][1] == 800 and units["control"][1] == 800  # 200 prompts x 4 demonstrations, not 1600 tokens
    results = {"ov": reader, "n_labels": 2}
    (ov,) = [v for v in collect_verdicts(results) if v.key == "ov"]
    assert ov.state == HOLDS and "of 800 demonstrations" in ov.detail
    promoter = _ov_like(1.0, 1.0)  # the control positions promote the demonstration's label as often
    (ov,) = [v for v in collect_verdicts({"ov": promoter, "n_labels": 2}) if v.key == "ov"]
    assert ov.state != HOLDS


def test_a_model_at_chance_makes_every_icl_claim_not_applicable_from_synthetic_results():
    # accuracy 0.48 on 100 prompts (the user model) with a perfect-looking OV result
    golds = np.arange(100) % 2
    logits = np.zeros((100, 2))
    logits[np.arange(100), np.where(np.arange(100) < 48, golds, 1 - golds)] = 1.0
    import torch

    acc = SimpleNamespace(label_logits=torch.tensor(logits), golds=torch.tensor(golds))
    out = {v.key: v for v in collect_verdicts({"accuracy": acc, "ov": _ov_like(0.95, 0.4), "n_labels": 2, "shots": 4})}
    assert out["icl"].state != HOLDS and "4-shot accuracy 0.480" in out["icl"].detail
    for key in ICL_CLAIMS:
        assert out[key].state == NOT_APPLICABLE
    assert "label slots promote" in out["ov"].detail  # what was measured stays in the text
