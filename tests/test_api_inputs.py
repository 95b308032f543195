"""The API refuses bad tasks, prompts and heads with a message naming the problem, instead of guessing."""

import logging
import math

import pytest
import torch

import icl_heads as ih
from icl_heads.data import DataError
from icl_heads.prompts import ICLTask

TEXTS = ["goal", "team", "match", "soup", "bread", "rice"]
LABELS = ["sport", "sport", "sport", "food", "food", "food"]


@pytest.mark.parametrize(
    "texts, labels, kwargs, error, match",
    [
        (["goal", None, "x", "y"], ["a", "b", "a", "b"], {}, ValueError, r"texts at indices 1 are missing"),
        (["goal", math.nan, "x", "y"], ["a", "b", "a", "b"], {}, ValueError, r"texts at indices 1 are missing"),
        (["goal", "", "x", "y"], ["a", "b", "a", "b"], {}, ValueError, r"texts at indices 1 are empty"),
        (["goal", 5, "x", "y"], ["a", "b", "a", "b"], {}, TypeError, r"texts\[1\] is 5 \(int\), not a string"),
        ("goal", ["a"], {}, TypeError, r"texts must be a sequence, got the string 'goal'"),
        (TEXTS, "sport", {}, TypeError, r"labels must be a sequence, got the string 'sport'"),
        (TEXTS, [*LABELS[:5], None], {}, ValueError, r"labels at indices 5 are missing"),
        (TEXTS, [*LABELS[:5], math.nan], {}, ValueError, r"labels at indices 5 are missing"),
        (
            TEXTS,
            [1, 1, 1, "1", 2, 2],
            {},
            ValueError,
            r"labels mix kinds: 1 \(number, index 0\), '1' \(string, index 3\)",
        ),
        (TEXTS, LABELS, {"label_words": "foo"}, TypeError, r"label_words must be a sequence, got the string 'foo'"),
        (TEXTS, LABELS, {"classes": "sport"}, TypeError, r"classes must be a sequence, got the string"),
        (set(TEXTS), LABELS, {}, TypeError, r"texts must be an ordered sequence"),
    ],
)
def test_bad_tasks(texts, labels, kwargs, error, match):
    from icl_heads import _checks

    # the message users get (the checks themselves take any input) ...
    with pytest.raises(error, match=match):
        _checks.check_texts(texts)
        _checks.check_labels(labels)
        for name, value in kwargs.items():
            _checks.check_sequence(name, value)
    # ... and through the API, where the test suite's runtime type checks may speak first
    with pytest.raises((error, TypeError), match=match + "|Type-check error whilst checking the parameters"):
        ICLTask.from_pairs(texts, labels, **kwargs)


def test_natural_class_order():
    assert ICLTask.from_pairs(TEXTS, [10, 2, 10, 2, 10, 2]).classes == (2, 10)
    assert ICLTask.from_pairs(TEXTS, [1.5, 0.5, 1.5, 0.5, 1.5, 0.5]).classes == (0.5, 1.5)
    assert ICLTask.from_pairs(TEXTS, LABELS).classes == ("sport", "food")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n": 2.5, "shots": 2}, TypeError, r"n must be an integer, got 2\.5 \(float\)"),
        ({"n": 2, "shots": 2.0}, TypeError, r"shots must be an integer"),
        ({"n": 2, "shots": 2, "seed": -1}, ValueError, r"seed must be an integer >= 0, got -1"),
        ({"n": True, "shots": 2}, TypeError, r"n must be an integer, got True"),
        ({"n": 2, "shots": 2, "counts": (1.5, 0.5)}, TypeError, r"counts\[i\] must be an integer"),
        ({"n": 2, "shots": 2, "order": (0.7, 1)}, TypeError, r"order\[i\] must be an integer"),
        ({"n": 2, "shots": 2, "gold": 0.0}, TypeError, r"gold must be an integer"),
    ],
)
def test_bad_sampling_types(kwargs, error, match):
    if error is TypeError:  # our message, or under the test suite's runtime type checks the checker's
        match += "|typechecking parameter '" + match.split()[0].split("\\")[0] + "'|Type-check error"
    with pytest.raises(error, match=match):
        ICLTask.from_pairs(TEXTS, LABELS).prompts(**kwargs)


def test_integer_check_accepts_numpy_and_torch_integers_only():
    import numpy as np

    from icl_heads._checks import check_int

    assert [check_int("n", v) for v in (3, np.int64(3), torch.tensor(3), np.array(3))] == [3, 3, 3, 3]
    for bad in (2.5, 3.0, True, "3", torch.tensor(3.0), None):
        with pytest.raises(TypeError, match="n must be an integer"):
            check_int("n", bad)


@pytest.mark.parametrize(
    "heads, match",
    [
        ([(1.7, 1)], r"non-negative integers, got \(1\.7, 1\)|parameters of icl_heads.interventions.ablat"),
        ([(0, -1)], r"non-negative integers, got \(0, -1\)"),
        ([(0, 1, 2)], r"heads must be \(layer, head\) pairs, got \(0, 1, 2\)"),
        ([], r"no heads to ablate"),
        ([(0, 9)], r"head \(0, 9\) is outside the model"),
    ],
)
def test_bad_heads_to_ablate(models, heads, match):
    # the test suite's runtime type checks may speak first
    checker = "|typechecking parameter 'heads'|Type-check error"
    with pytest.raises((ValueError, TypeError), match=match + checker), ih.ablate(models["llama"], heads):
        pass


@pytest.mark.parametrize(
    "heads, match",
    [(((1.7, 1),), "non-negative integers"), ((), "no heads to ablate"), (((0, "a"),), "non-negative integers")],
)
def test_head_ablation_built_directly_checks_heads(heads, match):
    checker = "|parameter 'heads'|HeadAblation.__init__"  # the test suite's runtime type checks may speak first
    with pytest.raises((ValueError, TypeError), match=match + checker):
        ih.interventions.HeadAblation(heads)


def test_head_ablation_beyond_the_models_heads_fails_when_it_runs(models, task):
    abl = ih.interventions.HeadAblation(((0, 9),))
    with pytest.raises(ValueError, match=r"head \(0, 9\) is outside the model: it has 4 heads per layer"):
        ih.icl_accuracy(models["llama"], task.prompts(2, 2), hooks=abl)


# ---- files ----------------------------------------------------------------------------------------


def test_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "goal", "label": "a"}\n\n{"text": "soup", "label": b}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: line 3 is not valid JSON"):
        ICLTask.from_file(bad)
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"e\.csv is empty"):
        ICLTask.from_file(empty)
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        ICLTask.from_file(tmp_path / "nope.csv")
    assert issubclass(DataError, ValueError)


def test_file_format_from_content_and_dropna(tmp_path, caplog):
    upper = tmp_path / "D.CSV"
    upper.write_text("text,label\ngoal,1\nsoup,2\n,1\nteam,1\nrice,2\n")
    with pytest.raises(DataError, match=r"1 rows have a missing text or label \(line 4\).*dropna=True"):
        ICLTask.from_file(upper)
    with caplog.at_level(logging.WARNING, logger="icl_heads"):
        task = ICLTask.from_file(upper, dropna=True)
    assert "dropped 1 rows" in caplog.text and task.classes == (1, 2) and len(task.texts) == 4
    jsonl_named_csv = tmp_path / "j.csv"
    jsonl_named_csv.write_text('{"text": "goal", "label": "a"}\n{"text": "soup", "label": "b"}\n')
    assert ICLTask.from_file(jsonl_named_csv).classes == ("a", "b")
    words = tmp_path / "w.csv"
    words.write_text("text,label\nNA,null\nsoup,None\n")  # words that pandas would read as missing
    assert ICLTask.from_file(words).texts == ("NA", "soup")


def test_label_token_hint_names_the_api_option(task):
    from icl_heads.prompts import LabelTokenError
    from icl_heads.testing import bpe_tokenizer

    with pytest.raises(LabelTokenError, match="first_token=True"):
        task.with_label_words(("football", "bar")).prompts(2, 2).tokenize(bpe_tokenizer())


def test_heads_errors_say_what_to_pass():
    # run outside the suite's runtime type checker, which would answer first: this is what a user reads
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from icl_heads.interventions import head_pairs\n"
        "for bad in ('found', (1, 1)):\n"
        "    try:\n"
        "        head_pairs(bad)\n"
        "    except (TypeError, ValueError) as err:\n"
        "        print(err)\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert "'found' is accepted by the bias measurements and corrections only" in out
    assert "for one head pass [(layer, head)]" in out
