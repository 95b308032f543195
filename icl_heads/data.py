"""Read labelled texts from a CSV, TSV, JSON-lines or JSON file, with errors that name the file and the line.

The format comes from the content (``{``: JSON lines, ``[``: a JSON array, else CSV), the encoding is UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icl_heads._checks import is_missing, kind_of, listed

logger = logging.getLogger(__name__)

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
SUFFIXES = tuple(_FORMATS)
_INT = re.compile(r"^[+-]?\d+$")
_KEYS = "\x00keys"  # where a JSON object with a repeated key keeps the list of its keys, until it is checked
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class DataError(ValueError):
    """A data file that cannot be read as labelled texts; the message names the file and the line."""


@dataclass(frozen=True)
class LabelledData:
    """Texts and labels read from a file.

    Attributes:
        texts: the texts, in file order.
        labels: the labels (numbers when every label in the file is a number, else strings).
        lines: the file line of each example (1-based; for CSV the header is line 1).
        dropped: lines dropped for a missing text or label (only with ``dropna``).
        format: ``"csv"``, ``"tsv"``, ``"jsonl"`` or ``"json"``.
    """

    texts: tuple[str, ...]
    labels: tuple[Any, ...]
    lines: tuple[int, ...]
    dropped: tuple[int, ...]
    format: str


def _lines(lines: list[int]) -> str:
    return ("line " if len(lines) == 1 else "lines ") + listed(lines, 8)


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def _sniff(path: Path, text: str) -> str:
    first = text.lstrip()[:1]
    fmt = "jsonl" if first == "{" else "json" if first == "[" else "tsv" if path.suffix.lower() == ".tsv" else "csv"
    expected = _FORMATS[path.suffix.lower()]
    if {fmt, expected} - {"json", "jsonl"} and fmt != expected:
        logger.warning("%s holds %s, not what its suffix says; reading it as %s", path, fmt.upper(), fmt.upper())
    return fmt


def _pairs_kept(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object as a dict that remembers every key, so that a repeated key can be refused."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        obj[_KEYS] = [k for k, _ in pairs]
    return obj


def _checked_object(path: Path, obj: Any, line: int, wanted: tuple[str, ...]) -> Any:
    if isinstance(obj, dict) and _KEYS in obj:
        _check_unique(path, obj.pop(_KEYS), line, wanted, what="object")
    return obj


def _read_jsonl(path: Path, text: str, wanted: tuple[str, ...]) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = _checked_object(path, json.loads(line, object_pairs_hook=_pairs_kept), number, wanted)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f'{path}: line {number} is a JSON {type(obj).__name__}, not an object like {{"text": ...}}')
        rows.append((number, obj))
    return rows


def _read_json(path: Path, text: str, wanted: tuple[str, ...]) -> list[tuple[int, dict]]:
    try:
        objs = json.loads(text, object_pairs_hook=_pairs_kept)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {err.lineno} is not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise DataError(f'{path}: a .json file must hold a list of objects like [{{"text": ...}}]; use JSON lines')
    return [(i, _checked_object(path, o, i, wanted)) for i, o in enumerate(objs, 1)]  # item numbers, not lines


def _check_unique(path: Path, names: list[str], line: int, wanted: tuple[str, ...], what: str = "header") -> None:
    """Refuse a repeated column name among the columns the caller reads (``wanted``): which one is meant is unclear."""
    for name in wanted:
        at = [i + 1 for i, n in enumerate(names) if n == name]
        if len(at) > 1:
            raise DataError(
                f"{path}: line {line}: the {what} names {name!r} twice ({'columns' if what == 'header' else 'keys'} "
                f"{at[0]} and {at[1]}); rename one of them so that the column to read is unambiguous"
            )


def _read_csv(path: Path, text: str, wanted: tuple[str, ...], delimiter: str) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        if header is None:
            raise DataError(f"{path} is empty: it has no header line and no rows")
        _check_unique(path, header, reader.line_num, wanted)
        rows, start = [], reader.line_num + 1
        for cells in reader:
            if any(cell.strip() for cell in cells):
                if len(cells) != len(header):
                    raise DataError(
                        f"{path}: line {start} has {len(cells)} fields but the header has {len(header)}; "
                        "quote texts that contain the delimiter"
                    )
                rows.append((start, dict(zip(header, cells, strict=True))))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num} cannot be read as CSV ({err})") from None
    return rows


def _typed_labels(values: list[str]) -> list[Any]:
    """CSV cells hold text: labels become numbers when every one of them is a number."""
    for pattern, number in ((_INT, int), (_FLOAT, float)):
        if all(pattern.match(v.strip()) for v in values):
            return [number(v) for v in values]
    return values


def read_labelled_file(
    path: str | Path,
    text_col: str = "text",
    label_col: str = "label",
    *,
    dropna: bool = False,
    options: tuple[str, str, str] = ("text_col=", "label_col=", "dropna=True"),
) -> LabelledData:
    """Read texts and labels from a ``.csv``/``.tsv`` or ``.jsonl``/``.json`` file.

    Args:
        path: the file (any case of the suffix).
        text_col: the column (key) holding the texts.
        label_col: the column (key) holding the labels.
        dropna: drop rows whose text or label is missing (logged with their lines) instead of refusing them.
        options: how the caller names the text column, label column and drop options, for the error messages.

    Returns:
        The texts, labels and the line of each.

    Raises:
        DataError: the file is missing, unreadable, empty, not UTF-8, malformed (the line is named), lacks a
            column, names a column it reads twice, reads texts and labels from one column, has missing cells
            (without ``dropna``), non-string texts or labels of mixed kinds.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a .csv or .jsonl file")
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"cannot read {path}: use a .csv or .jsonl file (got suffix {path.suffix!r})")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path} cannot be read: {err.strerror or err}") from None
    text = _decode(path, raw)
    if not text.strip():
        raise DataError(f"{path} is empty")
    if text_col == label_col:
        raise DataError(
            f"{path}: the text and the label would both be read from the column {text_col!r} (the label would leak "
            f"into the prompt); give different columns with {options[0]} and {options[1]}"
        )
    fmt = _sniff(path, text)
    wanted = (text_col, label_col)
    if fmt in ("csv", "tsv"):
        rows = _read_csv(path, text, wanted, "\t" if fmt == "tsv" else ",")
    else:
        rows = (_read_jsonl if fmt == "jsonl" else _read_json)(path, text, wanted)
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    columns = list(dict.fromkeys(k for _, row in rows for k in row))
    if missing_cols := [c for c in (text_col, label_col) if c not in columns]:
        raise DataError(
            f"{path} has no column {', '.join(map(repr, missing_cols))}; its columns are {columns}. "
            f"Choose them with {options[0]} and {options[1]}"
        )

    def blank(v: Any) -> bool:
        return is_missing(v) or (isinstance(v, str) and not v.strip())

    bad = [n for n, row in rows if blank(row.get(text_col)) or blank(row.get(label_col))]
    if bad and not dropna:
        raise DataError(
            f"{path}: {len(bad)} rows have a missing text or label ({_lines(bad)}); fill them in, "
            f"or drop them with {options[2]}"
        )
    if bad:
        logger.warning("dropped %d rows with a missing text or label from %s (%s)", len(bad), path, _lines(bad))
        rows = [(n, row) for n, row in rows if n not in set(bad)]
        if not rows:
            raise DataError(f"{path}: every row has a missing text or label")
    lines, texts = [n for n, _ in rows], [row[text_col] for _, row in rows]
    if not_text := [n for n, t in zip(lines, texts, strict=True) if not isinstance(t, str)]:
        raise DataError(f"{path}: the {text_col!r} of {_lines(not_text)} is not a string (quote it in the file)")
    labels = [row[label_col] for _, row in rows]
    labels = _typed_labels(labels) if fmt in ("csv", "tsv") else labels
    first: dict[str, int] = {}
    for n, y in zip(lines, labels, strict=True):
        if isinstance(y, (dict, list)):
            raise DataError(
                f"{path}: the {label_col!r} of line {n} is a JSON {type(y).__name__}; use a string or number"
            )
        first.setdefault(kind_of(y), n)
    if len(first) > 1:
        kinds = ", ".join(f"{kind}s (line {n})" for kind, n in first.items())
        raise DataError(
            f'{path}: the {label_col!r} column mixes {kinds}; a label 1 and a label "1" would be two classes. '
            "Write every label the same way"
        )
    return LabelledData(tuple(texts), tuple(labels), tuple(lines), tuple(bad if dropna else ()), fmt)
