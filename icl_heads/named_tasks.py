"""The papers' tasks by name, and labelled data sets from the Hugging Face hub or local files, as :class:`ICLTask`.

Named tasks are looked for first in the local data folder (:func:`data_dir`), then on the hub (one short
request, never the ``datasets`` library's retries); see docs/reproducing.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from icl_heads import _checks
from icl_heads.data import SUFFIXES as TEXT_SUFFIXES
from icl_heads.data import read_labelled_file
from icl_heads.models import HUB_TIMEOUT, hub_offline
from icl_heads.prompts import ICLTask
from icl_heads.prompts.text import DEFAULT_TEMPLATE

logger = logging.getLogger(__name__)

#: Yu & Ananiadou's meaningless label words, in class order (``label_words="meaningless"``)
MEANINGLESS_WORDS = ("foo", "bar", "baz", "qux", "quux", "corge")
#: the environment variable naming the local data folder
DATA_ENV = "ICL_HEADS_DATA"
#: file suffixes read through the ``datasets`` library
DATASET_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json")
_CHOICE_LETTERS = {"1": "A", "2": "B", "3": "C", "4": "D"}


class TaskDataError(ValueError):
    """A data set that cannot be found or read; the one-line message says what to do."""


def _formats(field: str, answer: str) -> tuple[str, ...]:
    return (
        f"{field}: {{text}}\n{answer}: {{label}}\n",
        f"{field}: {{text}} {answer}: {{label}}\n",
        "Input: {text}\nOutput: {label}\n",
    )


@dataclass(frozen=True)
class NamedTask:
    """One of the papers' tasks: where its data is, how a row becomes a text and a class, and its prompts.

    Attributes:
        name: the name :func:`load_task` takes.
        hub: the data set on the Hugging Face hub (``None``: local files only, see ``where``).
        config: its configuration (``None``: the default).
        split: the split the papers evaluate on (GLUE's test labels are hidden: its validation split).
        text: a format string of the row's fields making one text (``"{sentence1} Question: {sentence2}"``).
        label: the field holding the label.
        values: the label values in class order.
        classes: the class names, in that order.
        label_words: the word shown for each class.
        templates: three prompt formats, each with ``{text}`` and ``{label}``.
        transfer_from: for an out-of-distribution task, the task whose demonstrations it is tested with.
        where: how to get the data when it is not on the hub.

    >>> NAMED_TASKS["rte"].fields, NAMED_TASKS["yelp"].transfer_from
    (('sentence1', 'sentence2'), 'sst2')
    """

    name: str
    hub: str | None
    config: str | None
    split: str
    text: str
    label: str
    values: tuple[Any, ...]
    classes: tuple[str, ...]
    label_words: tuple[str, ...]
    templates: tuple[str, ...]
    transfer_from: str | None = None
    where: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        """The data set's fields that make the text."""
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.text) if f)


_SENTIMENT = {"values": (0, 1), "classes": ("negative", "positive"), "label_words": ("negative", "positive")}
_YES_NO = {"values": (False, True), "classes": ("false", "true"), "label_words": ("no", "yes")}
_NLI: dict[str, Any] = dict(values=(0, 1, 2), classes=("entailment", "neutral", "contradiction"))
_NLI.update(label_words=("yes", "maybe", "no"), templates=_formats("Premise", "Answer"))
_ABCD = ("A", "B", "C", "D")
_ARC: dict[str, Any] = dict(split="test", text="{question} {choices}", label="answerKey", values=_ABCD, classes=_ABCD)
_ARC.update(label_words=_ABCD, templates=_formats("Question", "Answer"))
_BOOLQ = dict(split="validation", text="{passage} Question: {question}?", label="answer", **_YES_NO)
_BOOLQ["templates"] = _formats("Passage", "Answer")

#: the papers' tasks by name (Chang et al.: the first nine and the out-of-distribution three; Yu & Ananiadou:
#: SST-2 and AGNews with meaningless labels)
NAMED_TASKS: dict[str, NamedTask] = {
    t.name: t
    for t in (
        NamedTask("sst2", "nyu-mll/glue", "sst2", "validation", "{sentence}", "label", **_SENTIMENT,
                  templates=_formats("Review", "Sentiment")),
        NamedTask("agnews", "fancyzhx/ag_news", None, "test", "{text}", "label", (0, 1, 2, 3),
                  ("World", "Sports", "Business", "Sci/Tech"), ("world", "sports", "business", "science"),
                  _formats("Article", "Topic")),
        NamedTask("trec", "CogComp/trec", None, "test", "{text}", "coarse_label", (0, 1, 2, 3, 4, 5),
                  ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"),
                  ("abbreviation", "entity", "description", "person", "location", "number"),
                  _formats("Question", "Answer type")),
        NamedTask("rte", "nyu-mll/glue", "rte", "validation", "{sentence1} Question: {sentence2} True or False?",
                  "label", (0, 1), ("entailment", "not_entailment"), ("true", "false"),
                  _formats("Premise", "Answer")),
        NamedTask("boolq", "google/boolq", None, **_BOOLQ),
        NamedTask("qqp", "nyu-mll/glue", "qqp", "validation", "Question 1: {question1} Question 2: {question2}",
                  "label", (0, 1), ("not_duplicate", "duplicate"), ("no", "yes"), _formats("Questions", "Duplicate")),
        NamedTask("wic", "aps/super_glue", "wic", "validation",
                  "Sentence 1: {sentence1} Sentence 2: {sentence2} Word: {word}", "label", (0, 1),
                  ("different", "same"), ("no", "yes"), _formats("Input", "Same meaning")),
        NamedTask("mnli", "nyu-mll/glue", "mnli", "validation_matched",
                  "{premise} Question: {hypothesis} True, False or Neither?", "label", **_NLI),
        NamedTask("arc_easy", "allenai/ai2_arc", "ARC-Easy", **_ARC),
        NamedTask("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", **_ARC),
        NamedTask("yelp", "fancyzhx/yelp_polarity", None, "test", "{text}", "label", **_SENTIMENT,
                  templates=_formats("Review", "Sentiment"), transfer_from="sst2"),
        NamedTask("mednli", None, None, "test", "{sentence1} Question: {sentence2} True, False or Neither?",
                  "gold_label", **{**_NLI, "values": ("entailment", "neutral", "contradiction")},
                  transfer_from="mnli",
                  where="get MedNLI from PhysioNet (credentialed access) and copy "
                        "mli_test_v1.jsonl (fields sentence1, sentence2, gold_label)"),
        NamedTask("boolq_contrast", None, None, **{**_BOOLQ, "split": "test"}, transfer_from="boolq",
                  where="get the BoolQ contrast set (Gardner et al. 2020) from github.com/allenai/contrast-sets "
                        "and write its perturbed questions as rows with fields question, passage, answer"),
    )
}  # fmt: skip


def data_dir(folder: str | Path | None = None) -> Path:
    """The local data folder: ``folder``, else ``$ICL_HEADS_DATA``, else ``~/.cache/icl_heads/data``."""
    return Path(folder or os.environ.get(DATA_ENV) or "~/.cache/icl_heads/data").expanduser()


def _datasets(load: bool = True) -> Any:
    """The ``datasets`` module; refused at once, without importing it (a second), when it is not installed."""
    try:
        found = importlib.util.find_spec("datasets") is not None
    except ValueError:  # imported before and removed
        found = False
    if not found:
        raise ImportError("reading data sets needs the datasets package: pip install 'icl-heads[datasets]'")
    return importlib.import_module("datasets") if load else None


def _local_copy(name: str, folder: Path) -> Path | None:
    candidates = [folder / name, *(folder / f"{name}{s}" for s in (".parquet", ".arrow", ".jsonl"))]
    return next((p for p in candidates if p.exists()), None)


def _where_to_put(spec: NamedTask, folder: Path) -> str:
    return (
        f"put its {spec.split} split at {folder / spec.name} (Dataset.save_to_disk) or {folder / spec.name}.parquet"
        f" (or .arrow, .jsonl), or set {DATA_ENV} to the folder that holds it"
    )


def _probe_hub(repo: str, what: str, fix: str, timeout: float = HUB_TIMEOUT) -> None:
    """One short request for ``repo``'s card (offline, a copy in the Hugging Face cache passes)."""
    if hub_offline():
        if _cached(repo):
            return
        raise TaskDataError(f"{what}: the hub is offline (HF_HUB_OFFLINE is set){fix}")
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo, "README.md", repo_type="dataset"), timeout=timeout, retry_on_errors=False)
    except (GatedRepoError, EntryNotFoundError):
        return  # it exists; the library says what access it needs
    except RepositoryNotFoundError:
        raise TaskDataError(f"{what}: the Hugging Face hub has no data set {repo!r}; check the name{fix}") from None
    except Exception as err:  # the HTTP client's own connection and timeout errors
        cache = "; a copy is in the Hugging Face cache: set HF_HUB_OFFLINE=1 to read it" if _cached(repo) else ""
        raise TaskDataError(f"{what}: cannot reach the Hugging Face hub ({type(err).__name__}){cache}{fix}") from None


def _named(source: str) -> NamedTask | None:
    """The registered task that ``source`` names: ``sst2``, or ``hf:`` with its hub path and configuration."""
    if not source.startswith("hf:"):
        return NAMED_TASKS.get(source.lower())
    ref = source[3:].replace(":", "/")
    for spec in NAMED_TASKS.values():
        if spec.hub and ref in {
            f"{h}/{spec.config}" if spec.config else h for h in (spec.hub, spec.hub.split("/")[-1])
        }:
            return spec
    return None


def _pick(names: list[str], split: str | None, source: str) -> str:
    """The requested split, else validation, test or train (the first that exists)."""
    pick = split or next((s for s in ("validation", "test", "train") if s in names), names[0])
    if pick not in names:
        raise TaskDataError(f"{source} has no split {pick!r}; its splits: {', '.join(names)}. Choose one with split=")
    return pick


def _read_local(path: Path, split: str | None, source: str) -> Any:
    if path.is_dir():
        listing = path / "dataset_dict.json"  # a DatasetDict lists its splits: pick one before reading anything
        if listing.is_file():
            path = path / _pick(json.loads(listing.read_text()).get("splits", []), split, source)
        elif not (path / "state.json").is_file():
            raise TaskDataError(
                f"{path} is a folder but not a data set saved with save_to_disk (it has no dataset_dict.json "
                "or state.json); give such a folder or a .parquet, .arrow, .jsonl or .csv file"
            )
        return _datasets().load_from_disk(str(path))
    if path.suffix.lower() not in DATASET_SUFFIXES:
        raise TaskDataError(
            f"cannot read {path}: use a .csv or .jsonl file (got suffix {path.suffix!r}), a .parquet or .arrow "
            "file, or a folder saved with save_to_disk"
        )
    ds = _datasets().Dataset
    read = {".parquet": ds.from_parquet, ".arrow": ds.from_file}.get(path.suffix.lower(), ds.from_json)
    return read(str(path))


def _text(spec: NamedTask | None, row: dict[str, Any], text_col: str) -> str:
    if spec is None:
        return row[text_col]
    values = {
        f: " ".join(f"{c}. {t}" for c, t in zip(v["label"], v["text"], strict=True)) if isinstance(v, dict) else v
        for f, v in ((f, row[f]) for f in spec.fields)
    }
    return spec.text.format(**values)


def _rows(data: Any, spec: NamedTask | None, text_col: str, label_col: str, source: str) -> tuple[list, list]:
    """Texts (whitespace collapsed: a newline would end a demonstration) and labels of every row."""
    wanted = [*(spec.fields if spec else (text_col,)), label_col]
    missing = [c for c in wanted if c not in data.column_names]
    if missing:
        raise TaskDataError(
            f"{source} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(data.column_names)}"
            + ("" if spec else ". Choose them with text_col= and label_col=")
        )
    texts, labels, dropped = [], [], 0
    for row in data.select_columns(wanted):
        if spec and "choices" in row and len(row["choices"]["label"]) != len(spec.values):
            dropped += 1  # ARC's questions with three or five choices
            continue
        texts.append(" ".join(str(_text(spec, row, text_col)).split()))
        y = row[label_col]
        labels.append(_CHOICE_LETTERS.get(y, y) if isinstance(y, str) else y)
    if dropped:
        logger.info("%s: left out %d questions without %d choices", source, dropped, len(spec.values))
    if labels and all(y == -1 for y in labels):
        raise TaskDataError(f"{source}: every label is -1 (a hidden test split); use split='validation'")
    if spec is None and hasattr(data.features.get(label_col), "names") and -1 in labels:  # a ClassLabel's "no label"
        raise TaskDataError(f"{source}: {labels.count(-1)} rows have no label (-1); drop them (Dataset.filter)")
    return texts, labels


def _template(template: int | str | None, spec: NamedTask | None) -> str:
    if isinstance(template, str):
        return template
    if template is None:
        return spec.templates[0] if spec else DEFAULT_TEMPLATE
    if spec is None or not 0 <= _checks.check_int("template", template) < len(spec.templates):
        formats = f"0 to {len(spec.templates) - 1} for {spec.name}" if spec else "only for a named task"
        raise ValueError(f"template={template}: a format index is {formats}; or give a template string")
    return spec.templates[template]


def _task(data: Any, spec: NamedTask | None, source: str, *, text_col: str, label_col: str, **opts: Any) -> ICLTask:
    texts, labels = _rows(data, spec, text_col, spec.label if spec else label_col, source)
    if spec is None:
        names = getattr(data.features.get(label_col), "names", None)  # a ClassLabel column
        name = source[3:] if source.startswith("hf:") else Path(source).stem
        return _build([names[y] for y in labels] if names else labels, texts, names, None, name, **opts)
    unknown = sorted({repr(y) for y in labels if y not in spec.values or type(y) is not type(spec.values[0])})
    if unknown:
        raise TaskDataError(
            f"{source}: labels {', '.join(unknown[:5])} are not among {spec.name}'s label values "
            f"{list(spec.values)} ({', '.join(spec.classes)}); is this the right data set?"
        )
    names = dict(zip(spec.values, spec.classes, strict=True))
    return _build([names[y] for y in labels], texts, spec.classes, spec, spec.name, **opts)


def _build(labels: list, texts: list, classes: Sequence[Any] | None, spec: NamedTask | None, name: str, *,
           template: int | str | None, label_words: Sequence[str] | str | None, max_examples: int | None,
           seed: int) -> ICLTask:  # fmt: skip
    if max_examples is not None and max_examples < len(texts):
        n = _checks.check_int("max_examples", max_examples, minimum=1)
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), n, replace=False))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    k, words = len(classes) if classes else len(set(labels)), spec.label_words if spec else ()
    if label_words == "meaningless" or (label_words is None and not words):
        if k > len(MEANINGLESS_WORDS):
            raise ValueError(f"{k} classes but {len(MEANINGLESS_WORDS)} meaningless label words; give label_words")
        label_words = MEANINGLESS_WORDS[:k]
    words, classes = words if label_words is None else label_words, None if classes is None else tuple(classes)
    return ICLTask.from_pairs(
        texts, labels, label_words=words, template=_template(template, spec), classes=classes, name=name
    )


def _cached(repo: str) -> bool:
    """``repo`` has files in the local Hugging Face cache (then ``datasets`` reads them offline)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "README.md", repo_type="dataset"), str)


def load_task(
    source: str | Path,
    *,
    split: str | None = None,
    template: int | str | None = None,
    label_words: Sequence[str] | str | None = None,
    text_col: str = "text",
    label_col: str = "label",
    folder: str | Path | None = None,
    max_examples: int | None = None,
    seed: int = 0,
) -> ICLTask:
    """A labelled data set as a task: one of the papers' tasks by name, a data set on the hub, or local files.

    Args:
        source: a name of :data:`NAMED_TASKS` (``"sst2"``, ...); ``"hf:PATH[:CONFIG]"``, a data set on the hub
            (``"hf:glue/sst2"`` is the named task); or a ``save_to_disk`` folder, ``.parquet``, ``.arrow``,
            ``.jsonl`` or ``.csv`` file (read by :meth:`ICLTask.from_file`).
        split: the split to read (default: the named task's; else validation, test or train, the first that exists).
        template: a named task's format index (``0``, ``1``, ``2``; default ``0``), or a template string with
            ``{text}`` and ``{label}`` (default for other data: the library's).
        label_words: one word per class, or ``"meaningless"`` (``foo``, ``bar``, ...; the default for other data).
        text_col: the text column of data that is not a named task.
        label_col: its label column (a ``ClassLabel`` column gives the class names).
        folder: where named tasks are stored locally, looked at before the hub (default :func:`data_dir`).
        max_examples: keep at most this many examples, drawn at random with ``seed`` (in the data's order).
        seed: the seed of that draw.

    Returns:
        The task, named after the named task or the file.

    Raises:
        TaskDataError: data neither local nor reachable on the hub (the message says where to put it), a missing
            split or column, or labels outside the named task's values (a ``ValueError``).
        ImportError: reading needs the ``datasets`` package, which is not installed (``icl-heads[datasets]``).
        ValueError: a bad template, format index or label words (and the checks of :class:`ICLTask`).
    """
    name = str(source)
    spec = _named(name)
    path = Path(name).expanduser()
    opts = {"template": template, "label_words": label_words, "max_examples": max_examples, "seed": seed}
    if spec is None and not name.startswith("hf:"):
        if not path.exists():
            raise TaskDataError(
                f"{name}: no such file or folder, and not a task name; named tasks: {', '.join(NAMED_TASKS)}; "
                "or hf:PATH[:CONFIG] for a data set on the Hugging Face hub"
            )
        if path.suffix.lower() in TEXT_SUFFIXES and path.suffix.lower() not in DATASET_SUFFIXES:  # .csv, .tsv
            data = read_labelled_file(path, text_col, label_col)
            return _build(list(data.labels), list(data.texts), None, None, path.stem, **opts)
    _datasets(load=False)
    where = data_dir(folder)
    local = _local_copy(spec.name, where) if spec else None if name.startswith("hf:") else path
    read = split or (spec.split if spec else None)
    if local is not None:
        data = _read_local(local, read, str(local))
        return _task(data, spec, str(local), text_col=text_col, label_col=label_col, **opts)
    if spec is not None and spec.hub is None:
        raise TaskDataError(f"{spec.name} is not on the Hugging Face hub and not in {where}: {spec.where}; "
                            f"{_where_to_put(spec, where)}")  # fmt: skip
    hub, config = (spec.hub, spec.config) if spec else tuple(name[3:].partition(":")[::2])
    what = f"{name} is not in {where} and cannot be downloaded" if spec else f"{name} cannot be downloaded"
    fix = f"; {_where_to_put(spec, where)}" if spec else "; save it with save_to_disk where the hub is reachable"
    if spec and Path(name).exists():  # a copy in the current folder is data, not the named task, unless moved there
        fix += f" (the {name!r} in the current folder counts once it is there: ICL_HEADS_DATA=. does that)"
    _probe_hub(hub, what, fix)
    data = _datasets().load_dataset(hub, config or None, split=read)
    data = data[_pick(list(data), None, name)] if read is None else data
    return _task(data, spec, name, text_col=text_col, label_col=label_col, **opts)
