"""The papers' tasks by name, from data sets built here in the hub's field layout and read from local files only."""

import sys
import time
from pathlib import Path

import datasets  # the extra icl-heads[datasets], which the dev extra installs
import pytest

import icl_heads as ih
from icl_heads.named_tasks import MEANINGLESS_WORDS, NAMED_TASKS, TaskDataError, load_task

datasets.disable_progress_bars()

V = datasets.Value
CL = datasets.ClassLabel

#: each data set's columns as the hub (or the original files, for the local-only ones) has them, with the
#: label column's type: written from the data sets' cards, independently of the registry
LAYOUT = {
    "sst2": {"sentence": V("string"), "label": CL(names=["negative", "positive"]), "idx": V("int32")},
    "agnews": {"text": V("string"), "label": CL(names=["World", "Sports", "Business", "Sci/Tech"])},
    "trec": {"text": V("string"), "coarse_label": CL(names=["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]),
             "fine_label": V("int32")},
    "rte": {"sentence1": V("string"), "sentence2": V("string"), "label": CL(names=["entailment", "not_entailment"]),
            "idx": V("int32")},
    "boolq": {"question": V("string"), "answer": V("bool"), "passage": V("string")},
    "qqp": {"question1": V("string"), "question2": V("string"), "label": CL(names=["not_duplicate", "duplicate"]),
            "idx": V("int32")},
    "wic": {"word": V("string"), "sentence1": V("string"), "sentence2": V("string"), "start1": V("int32"),
            "label": CL(names=["False", "True"]), "idx": V("int32")},
    "mnli": {"premise": V("string"), "hypothesis": V("string"),
             "label": CL(names=["entailment", "neutral", "contradiction"]), "idx": V("int32")},
    "arc_easy": {"id": V("string"), "question": V("string"),
                 "choices": {"text": datasets.Sequence(V("string")), "label": datasets.Sequence(V("string"))},
                 "answerKey": V("string")},
    "yelp": {"text": V("string"), "label": CL(names=["1", "2"])},
    "mednli": {"sentence1": V("string"), "sentence2": V("string"), "gold_label": V("string"), "pairID": V("string")},
    "boolq_contrast": {"question": V("string"), "answer": V("bool"), "passage": V("string")},
}  # fmt: skip
LAYOUT["arc_challenge"] = LAYOUT["arc_easy"]
N_PER_CLASS = 6


def _value(column, feature, i, c):
    if isinstance(feature, dict):  # ARC's choices
        return {"text": [f"option {k} of {i}" for k in "ABCD"], "label": list("ABCD")}
    if feature.dtype == "string":
        return f"{column} {i} of {c}\nnew line"  # a newline inside a text: joined into one line
    return i


def build(name, n_per_class=N_PER_CLASS):
    """A data set in ``name``'s layout: ``n_per_class`` rows of each of the registry's label values."""
    spec, layout = NAMED_TASKS[name], LAYOUT[name]
    rows = [(i, v) for v in spec.values for i in range(n_per_class)]
    columns = {col: [_value(col, f, i, v) for i, v in rows] for col, f in layout.items() if col != spec.label}
    columns[spec.label] = [v for _, v in rows]
    return datasets.Dataset.from_dict(columns, features=datasets.Features(layout))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Every named task saved as its split of a ``DatasetDict``, beside a train split."""
    root = tmp_path_factory.mktemp("data")
    for name, spec in NAMED_TASKS.items():
        ds = build(name)
        datasets.DatasetDict({spec.split: ds, "train": ds.select(range(2))}).save_to_disk(str(root / name))
    return root


@pytest.mark.parametrize("name", list(NAMED_TASKS))
def test_every_named_task_loads_with_its_fields_classes_and_templates(name, folder):
    spec = NAMED_TASKS[name]
    assert set(spec.fields) <= set(LAYOUT[name]), "the registry reads fields the data set does not have"
    task = load_task(name, folder=folder)
    assert task.name == name and task.classes == spec.classes and task.label_words == spec.label_words
    assert task.template == spec.templates[0] and len(spec.templates) == 3
    assert len(task.texts) == N_PER_CLASS * len(spec.classes)
    for text, y in zip(task.texts, task.labels, strict=True):
        assert "\n" not in text
        i = task.texts.index(text) % N_PER_CLASS
        for field in spec.fields:  # each field's value, in the registry's order, in one line
            if field != "choices":
                assert f"{field} {i} of {spec.values[y]} new line" in text
        if "choices" in spec.fields:
            assert f"A. option A of {i} B. option B of {i}" in text
        assert spec.classes[y] == spec.classes[spec.values.index(spec.values[y])]
    for k, template in enumerate(spec.templates):
        shown = load_task(name, folder=folder, template=k).prompts(n=2, shots=len(spec.classes), seed=0)
        for text, prompt in zip(shown.texts(), shown.prompts, strict=True):  # the demonstrations, then the query
            demos = "".join(template.format(text=t, label=spec.label_words[c]) for t, c in prompt.demos)
            assert text == demos + template.split("{label}")[0].format(text=prompt.query).rstrip(" ")


@pytest.mark.parametrize("name", ["rte", "wic", "boolq"])
def test_pairs_are_joined_in_the_registry_order(name, folder):
    text = load_task(name, folder=folder).texts[0]
    spec = NAMED_TASKS[name]
    at = [text.index(f"{field} 0 of {spec.values[0]}") for field in spec.fields]
    assert at == sorted(at) and len(spec.fields) >= 2


def test_labels_follow_the_rows(folder):
    """The class of a row is the class of its label value, not of its position."""
    ds = build("mnli").shuffle(seed=3)
    ds.to_parquet(str(folder / "mnli-shuffled.parquet"))
    task = load_task(folder / "mnli-shuffled.parquet", text_col="premise")
    names = ds.features["label"].names
    assert task.classes == tuple(names)
    assert [task.classes[y] for y in task.labels] == [names[y] for y in ds["label"]]
    assert task.label_words == MEANINGLESS_WORDS[:3]  # data that is not a named task: meaningless words


@pytest.mark.parametrize("suffix", ["parquet", "arrow", "jsonl"])
def test_a_named_task_reads_parquet_arrow_and_json_lines_files(tmp_path, suffix):
    ds = build("mednli")
    if suffix == "parquet":
        ds.to_parquet(str(tmp_path / "mednli.parquet"))
    elif suffix == "arrow":
        ds.save_to_disk(str(tmp_path / "saved"))
        (tmp_path / "saved" / "data-00000-of-00001.arrow").rename(tmp_path / "mednli.arrow")
    else:
        ds.to_json(str(tmp_path / "mednli.jsonl"))
    task = load_task("mednli", folder=tmp_path, label_words="meaningless")
    assert task.classes == ("entailment", "neutral", "contradiction")
    assert task.label_words == ("foo", "bar", "baz")
    assert (
        task.texts[0]
        == "sentence1 0 of entailment new line Question: sentence2 0 of entailment new line True, False or Neither?"
    )
    direct = load_task(tmp_path / f"mednli.{suffix}", text_col="sentence1", label_col="gold_label")
    assert sorted(direct.classes) == sorted(task.classes)


def test_hub_names_and_environment_folder_find_the_local_copy(folder, monkeypatch):
    monkeypatch.setenv("ICL_HEADS_DATA", str(folder))
    for ref in ("sst2", "SST2", "hf:glue/sst2", "hf:nyu-mll/glue:sst2"):
        assert ih.load_task(ref).classes == ("negative", "positive"), ref
    assert ih.load_task("hf:super_glue/wic").name == "wic"


def test_options_template_words_split_and_sample(folder):
    task = load_task("sst2", folder=folder, template="{text} => {label}\n", label_words=["bad", "good"], split="train")
    assert (task.template, task.label_words, len(task.texts)) == ("{text} => {label}\n", ("bad", "good"), 2)
    small = load_task("agnews", folder=folder, max_examples=10, seed=1)
    assert len(small.texts) == 10 and small.texts != load_task("agnews", folder=folder, max_examples=10, seed=2).texts
    with pytest.raises(ValueError, match="0 to 2 for sst2"):
        load_task("sst2", folder=folder, template=3)


def test_arc_keeps_four_choice_questions_and_reads_numbered_keys(tmp_path):
    ds = build("arc_easy", 2)
    rows = ds.to_list()
    rows[0]["answerKey"] = "2"  # some ARC questions number their choices
    rows[0]["choices"] = {"text": ["w", "x", "y", "z"], "label": ["1", "2", "3", "4"]}
    rows[1]["choices"] = {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}  # three choices: left out
    datasets.Dataset.from_list(rows, features=ds.features).to_parquet(str(tmp_path / "arc_easy.parquet"))
    task = load_task("arc_easy", folder=tmp_path)
    assert len(task.texts) == 7 and task.classes[task.labels[0]] == "B"
    assert task.texts[0].endswith("1. w 2. x 3. y 4. z")


def test_csv_files_still_read_without_datasets(tmp_path, monkeypatch):
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(8)))
    monkeypatch.setitem(sys.modules, "datasets", None)
    task = load_task(tmp_path / "d.csv", template="{text} {label}\n")
    assert task.classes == ("a", "b") and task.template == "{text} {label}\n"


def _fails_fast(match, **kw):
    start = time.perf_counter()
    with pytest.raises((TaskDataError, ImportError), match=match) as err:
        load_task(**kw)
    took = time.perf_counter() - start
    assert took < 2, f"the error took {took:.1f} s"
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_missing_data_set_says_where_to_put_it_in_under_two_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _fails_fast("offline", source="rte", folder=tmp_path)
    assert str(tmp_path / "rte") in message and "save_to_disk" in message and "validation split" in message
    message = _fails_fast("not on the Hugging Face hub", source="mednli", folder=tmp_path)
    assert "PhysioNet" in message and str(tmp_path / "mednli") in message
    _fails_fast("offline", source="hf:someone/reviews")
    _fails_fast("not a task name; named tasks: sst2", source="sst-2")


def test_a_missing_split_or_column_or_label_is_one_line(folder, tmp_path):
    _fails_fast("has no split 'test'; its splits: validation, train", source="sst2", folder=folder, split="test")
    build("sst2").remove_columns("sentence").to_parquet(str(tmp_path / "sst2.parquet"))
    _fails_fast("has no column 'sentence'; its columns: idx, label", source="sst2", folder=tmp_path)
    build("qqp").to_parquet(str(tmp_path / "rte.parquet"))  # another task's data under the name
    _fails_fast("has no column 'sentence1'", source="rte", folder=tmp_path)
    hidden = build("sst2").map(lambda r: {"label": -1}, features=datasets.Features(
        {**LAYOUT["sst2"], "label": V("int64")}))  # fmt: skip
    hidden.to_parquet(str(tmp_path / "hidden.parquet"))
    _fails_fast("every label is -1", source=tmp_path / "hidden.parquet", text_col="sentence")
    partly = build("sst2").map(lambda r, i: {"label": -1 if i == 2 else r["label"]}, with_indices=True)
    partly.to_parquet(str(tmp_path / "partly.parquet"))
    _fails_fast("1 rows have no label", source=tmp_path / "partly.parquet", text_col="sentence")


def test_without_the_datasets_package_the_message_says_what_to_install(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    _fails_fast(r"pip install 'icl-heads\[datasets\]'", source="sst2", folder=folder)


def test_the_docs_list_every_named_task_with_its_hub_path():
    page = (Path(__file__).resolve().parents[1] / "docs" / "reproducing.md").read_text()
    for name, spec in NAMED_TASKS.items():
        assert f"`{name}`" in page and (spec.hub is None or f"`{spec.hub}`" in page), name


def test_from_the_hub_a_named_task_asks_for_its_path_configuration_and_split(tmp_path, monkeypatch):
    """The hub branch, with the hub replaced by data built here: what ``datasets`` is asked for."""
    from icl_heads import named_tasks

    asked = []
    monkeypatch.setattr(named_tasks, "_probe_hub", lambda repo, what, fix: asked.append(repo))

    def load_dataset(path, config=None, split=None):
        asked.append((path, config, split))
        ds = build("mnli")
        return ds if split else datasets.DatasetDict(train=ds.select(range(3)), validation=ds)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert load_task("mnli", folder=tmp_path).classes == ("entailment", "neutral", "contradiction")
    assert asked == ["nyu-mll/glue", ("nyu-mll/glue", "mnli", "validation_matched")]
    task = load_task("hf:someone/nli:plain", text_col="premise")  # no split given: validation before train
    assert asked[-1] == ("someone/nli", "plain", None) and len(task.texts) == 18 and task.name == "someone/nli:plain"


def test_offline_a_copy_in_the_hugging_face_cache_is_read(tmp_path, monkeypatch):
    from icl_heads import named_tasks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(named_tasks, "_cached", lambda repo: repo == "google/boolq")
    monkeypatch.setattr(datasets, "load_dataset", lambda path, config=None, split=None: build("boolq"))
    assert load_task("boolq", folder=tmp_path).classes == ("false", "true")
    _fails_fast("offline", source="qqp", folder=tmp_path)


def test_a_copy_in_the_current_folder_is_named_in_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    build("sst2").save_to_disk("sst2")
    message = _fails_fast("offline", source="sst2", folder=tmp_path / "elsewhere")
    assert "'sst2' in the current folder" in message and "ICL_HEADS_DATA=." in message


def test_the_command_names_its_flags_not_the_api_keywords(tmp_path, monkeypatch, capsys):
    from icl_heads.cli import main

    monkeypatch.chdir(tmp_path)
    build("sst2").to_parquet("reviews.parquet")  # a plain data set whose text column is 'sentence'
    assert main(["analyze", "--model", "organism", "--data", "reviews.parquet", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert "--text-col" in err and "--label-col" in err and "text_col=" not in err
    datasets.DatasetDict({"validation": build("sst2")}).save_to_disk("reviews")
    argv = ["analyze", "--model", "organism", "--data", "reviews", "--split", "test", "--text-col", "sentence"]
    assert main([*argv, "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert "has no split 'test'" in err and "--split" in err and "split=" not in err
