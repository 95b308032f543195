"""The papers' protocols as one call each: their tables, statistics and prompt designs."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps

import icl_heads as ih
from icl_heads import protocols as P
from icl_heads.components.protocol import reweighting_split
from icl_heads.prompts import last_two_differ


@pytest.fixture(scope="module")
def model():
    return ih.load_model("organism")


@pytest.fixture(scope="module")
def tasks():
    return [replace(ih.organism_task(), name="a"), replace(ih.organism_task(max_words=6, noise_rate=0.2), name="b")]


@pytest.mark.parametrize("seed", range(20))
def test_last_two_demonstrations_differ_in_label_and_keep_the_set(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 50)
    demos = rng.choice(50, 6, replace=False)
    if len(set(labels[demos])) < 2:
        with pytest.raises(ValueError, match="two demonstrations of different classes"):
            last_two_differ(demos, labels)
        return
    out = last_two_differ(demos, labels)
    assert labels[out[-1]] != labels[out[-2]] and sorted(out) == sorted(demos)
    if labels[demos[-1]] != labels[demos[-2]]:
        assert list(out) == list(demos)


def test_split_is_balanced_disjoint_and_ends_on_two_labels():
    labels = np.repeat([0, 1, 2], 40)
    test, labelled, demos, train = reweighting_split(labels, k=24, k_demo=3, n_test=30, seed=3)
    assert not set(test) & set(labelled) and set(demos) | set(train) == set(labelled)
    assert np.bincount(labels[demos]).tolist() == [1, 1, 1] and np.bincount(labels[test]).tolist() == [10, 10, 10]
    assert labels[demos[-1]] != labels[demos[-2]]


def test_demo_shots_follow_the_paper():
    assert [P.demo_shots(k) for k in (2, 3, 4)] == [4, 3, 4]


def _hand_table(values):
    rows = [{"task": t, "method": m, "seed": s, "template": f, "value": v}
            for (t, m, s, f), v in values.items()]  # fmt: skip
    return P._table("m", rows, "paper", "Table X", "accuracy")


def test_table_gives_mean_sd_and_t_interval_over_runs_and_an_average_over_tasks():
    rng = np.random.default_rng(0)
    values = {(t, m, s, f): float(rng.random()) for t in "ab" for m in ("x", "y") for s in range(3) for f in "pq"}
    result = _hand_table(values)
    table = result.table()
    x = np.array([values["a", "x", s, f] for s in range(3) for f in "pq"])
    row = table[(table.task == "a") & (table.method == "x")].iloc[0]
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert row.n == 6 and np.isclose(row["mean"], x.mean()) and np.isclose(row.sd, x.std(ddof=1))
    assert np.isclose(row.ci_low, lo) and np.isclose(row.ci_high, hi)
    avg = table[(table.task == P.AVERAGE) & (table.method == "y")].iloc[0]
    per_run = [np.mean([values[t, "y", s, f] for t in "ab"]) for s in range(3) for f in "pq"]
    assert avg.n == 6 and np.isclose(avg.sd, np.std(per_run, ddof=1))
    diff = result.paired("x", "y")
    d = np.array([values["b", "x", s, f] - values["b", "y", s, f] for s in range(3) for f in "pq"])
    b = diff[diff.task == "b"].iloc[0]
    assert b.n == 6 and np.isclose(b["mean"], d.mean())
    assert np.allclose([b.ci_low, b.ci_high], sps.t.interval(0.95, 5, loc=d.mean(), scale=sps.sem(d)))
    avg_d = [np.mean([values[t, "x", s, f] - values[t, "y", s, f] for t in "ab"]) for s in range(3) for f in "pq"]
    assert np.isclose(diff[diff.task == P.AVERAGE].iloc[0]["mean"], np.mean(avg_d))
    with pytest.raises(KeyError, match="no method 'z'"):
        result.paired("z", "x")


def test_runs_that_could_not_be_made_are_counted_and_explained_never_averaged():
    result = _hand_table({("a", "x", 0, "p"): 0.5, ("a", "x", 1, "p"): 0.7, ("a", "x", 2, "p"): None})
    result.df.loc[result.df.value.isna(), "note"] = "no bias to reduce"
    row = result.table().iloc[0]
    assert row.n == 2 and np.isclose(row["mean"], 0.6) and row.note == "1 run(s) not made: no bias to reduce"


def test_reweighting_table_is_compare_reweightings_runs_under_the_papers_names(model, tasks, tmp_path):
    result = P.chang_reweighting(model, tasks, seeds=(0, 1), k=8, n_test=12)
    table = result.table()
    assert set(table.method) == {"Standard 3,4", "Standard 8", "Calib+ 8", "CompRW 8"}
    assert list(dict.fromkeys(table.task)) == ["a", "b", P.AVERAGE] and (table.n == 2).all()
    direct = ih.compare_reweighting(model, tasks[1], k=8, k_demo=4, seeds=(0, 1), n_test=12)
    mine = result.df[(result.df.task == "b") & (result.df.method == "CompRW 8")].value.to_numpy()
    assert np.allclose(mine, direct.df[direct.df.method == "reweighting"].accuracy.to_numpy())
    back = ih.load_result(result.save(tmp_path / "table"))
    pd.testing.assert_frame_equal(back.table(), table)


def test_components_and_transfer_tables(model, tasks):
    comp = P.chang_components(model, tasks[:1], seeds=(0, 1), k=8, n_test=12).table().set_index("method")
    assert comp.loc["Oracle-B1", "mean"] <= comp.loc["Full", "mean"] <= comp.loc["Oracle-T1", "mean"] + 1e-9
    tr = P.chang_transfer(model, [(tasks[0], tasks[1])], seeds=(0, 1), k=8, n_test=12).table().set_index("method")
    assert set(tr.index) == {"Full", "Transfer-1", "Oracle-1", "CompRW transfer 8"} and (tr.task == "b").all()
    assert tr.loc["Transfer-1", "mean"] <= tr.loc["Oracle-1", "mean"] + 1e-9


def test_a_transfer_pair_needs_the_same_classes(tasks):
    three = ih.ICLTask.from_pairs(["x", "y", "z"], ["p", "q", "r"], label_words=("foo", "bar", "baz"), name="c")
    with pytest.raises(ValueError, match="same classes in the same order"):
        P.paired_task(tasks[0], three, tasks[0].template)
    both, offset = P.paired_task(tasks[0], tasks[1], "{text} -> {label}\n")
    assert offset == len(tasks[0].texts) and both.texts[offset] == tasks[1].texts[0]
    assert both.label_words == tasks[0].label_words and both.template == "{text} -> {label}\n"


def test_meaningless_labels_keep_two_classes_with_foo_and_bar():
    task = ih.ICLTask.from_pairs(list("abcdefgh"), [0, 1, 2, 3] * 2, label_words=("w", "x", "y", "z"), name="four")
    two = P.meaningless_labels(task)
    assert two.label_words == ("foo", "bar") and two.classes == (0, 1) and len(two.texts) == 4


def test_yu_heads_table_reads_the_head_finder():
    from icl_heads.validation import validation_task

    sparse = ih.load_model("validation:sparse")  # one head of 64 carries the task
    table = P.yu_heads(sparse, [validation_task("sparse")], seeds=(0, 1), n=24, n_random=3).table()
    table = table.set_index("method")
    assert set(table.index) == {"ICL", "in-context heads ablated", "random heads ablated"} and (table.n == 2).all()
    assert table.loc["in-context heads ablated", "mean"] < table.loc["random heads ablated", "mean"]
    assert table.loc["in-context heads ablated", "mean"] < table.loc["ICL", "mean"]


@pytest.mark.slow
def test_yu_bias_gives_a_reduction_only_where_the_bias_interval_excludes_0(model):
    from icl_heads.debias import correct_bias
    from icl_heads.organism import HELDOUT_TEMPLATES

    task = replace(ih.organism_task(template=HELDOUT_TEMPLATES[1], max_words=6, noise_rate=0.3), name="hard")
    df = P.yu_bias(model, [task], seeds=(3,), n=8, tune_n=20).df.set_index("method")
    seen = set()
    for bias in ("majority", "recency"):
        # run 3 draws its test prompts with seed 9 and its tuning prompts with seed 10
        fix = correct_bias(model, P.meaningless_labels(task), bias=bias, n=8, seed=9, tune_n=20, tune_seed=10)
        b, reduction = fix.df.set_index("metric").loc["bias"], df.loc[f"{bias} bias reduction (%)"]
        assert df.loc[f"{bias} bias", "value"] == pytest.approx(b.before) and b.before != 0
        assert df.loc[f"{bias} bias corrected", "value"] == pytest.approx(b.after)
        if b.before_ci_low <= 0 <= b.before_ci_high:  # a bias not told apart from 0 has nothing to reduce
            assert (
                np.isnan(reduction.value)
                and reduction.note == f"no {bias} bias to reduce (its interval before includes 0)"
            )
            seen.add("interval includes 0")
        else:
            assert reduction.value == pytest.approx(float(fix.reduction)) and reduction.note == ""
            seen.add("reduced")
    assert seen == {"interval includes 0", "reduced"}  # both rules are exercised by this run
