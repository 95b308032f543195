"""The base of every result object: a frozen dataclass saved as a folder and reloaded, refused if damaged.

``save(path)`` writes tensors to ``tensors.safetensors``, each DataFrame to ``<field>.csv`` and the rest to
``meta.json``, which records the format version (:data:`FORMAT`), each file's row count and checksum and its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import html
import json
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, TypeVar

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from icl_heads._format import fmt, show
from icl_heads._version import __version__
from icl_heads.records import Provenance, plain
from icl_heads.stats import Estimate

if TYPE_CHECKING:
    import plotly.graph_objects

#: what figure methods return, named here so that results never import plotly (:mod:`icl_heads.plots` draws)
Figure: TypeAlias = "plotly.graph_objects.Figure"

R = TypeVar("R", bound="Result")
T = TypeVar("T")

#: the version of the saved format; a result saved in another format is refused (re-run the analysis)
FORMAT = 2
TENSORS = "tensors.safetensors"

#: typed values kept in ``meta.json`` as ``{"__type__": name, "data": value.to_dict()}``, rebuilt with ``from_dict``
JSON_TYPES: dict[str, Any] = {"Estimate": Estimate, "Provenance": Provenance}
#: every result class by name, so that :func:`load_result` can rebuild any saved result
RESULT_TYPES: dict[str, type[Result]] = {}
#: the figures of every result class, ``(class, view) -> function``; filled by :mod:`icl_heads.plots`
FIGURES: dict[tuple[type, str], Callable[..., Figure]] = {}


def json_type(cls: type[T]) -> type[T]:
    """Class decorator: instances of ``cls`` (with ``to_dict``/``from_dict``) are saved and loaded typed."""
    JSON_TYPES[cls.__name__] = cls
    return cls


def provenance(model_name: str, prompts: Any = None, **extra: Any) -> Provenance:
    """Where a result came from: model, prompts, versions and time (keyword extras are kept too)."""
    try:
        tl = version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover
        tl = "unknown"
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out: dict[str, Any] = dict(
        model=model_name, icl_heads=__version__, transformer_lens=tl, torch=torch.__version__, created=created
    )
    if prompts is not None:
        inner = getattr(prompts, "prompts", prompts)
        task = getattr(inner, "task", None)
        out.update(n_prompts=len(prompts), prompt_config=_jsonable(dict(getattr(inner, "config", {}) or {})))
        if task is not None:
            classes = {str(c): w for c, w in zip(task.classes, task.label_words, strict=True)}
            out.update(task=task.name, label_words=list(task.label_words), template=task.template, classes=classes)
    return Provenance.from_dict({**out, **_jsonable(extra)})


def _jsonable(x: Any) -> Any:
    """``x`` JSON-ready, with the values of :data:`JSON_TYPES` tagged so that :func:`_decode` rebuilds them."""

    def tagged(x: Any) -> dict[str, Any] | None:
        if type(x).__name__ in JSON_TYPES and hasattr(x, "to_dict"):
            return {"__type__": type(x).__name__, "data": _jsonable(x.to_dict())}
        return None

    return plain(x, tagged)


def _decode(x: Any, tuples: bool = False) -> Any:
    """Rebuild the typed values :func:`_jsonable` tagged (see :data:`JSON_TYPES`); lists as tuples if ``tuples``."""
    if isinstance(x, dict):
        if set(x) == {"__type__", "data"} and x["__type__"] in JSON_TYPES:
            return JSON_TYPES[x["__type__"]].from_dict(_decode(x["data"]))
        return {k: _decode(v, tuples) for k, v in x.items()}
    if isinstance(x, list):
        return (tuple if tuples else list)(_decode(v, tuples) for v in x)
    return x


def load_result(path: str | Path) -> Result:
    """Read any result written by ``save``, whatever its kind (the folder records its class).

    Raises:
        FileNotFoundError: no saved result at ``path``.
        ValueError: the folder names a result class this version does not know, or is corrupt.
    """
    path = Path(path)
    name = _read_meta(path).get("__class__")
    if name not in RESULT_TYPES:
        raise ValueError(
            f"{path} holds a {name!r}, which is not a result of this version of icl_heads; known results: "
            f"{sorted(RESULT_TYPES)}"
        )
    return RESULT_TYPES[name].load(path)


def draws(cls: type[Result], *views: str) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
    """Decorator for a figure function of :mod:`icl_heads.plots`: it draws ``views`` (default ``"plot"``) of ``cls``.

    A result never imports its figures: ``result.plot()`` looks its function up in :data:`FIGURES`.
    """

    def register(fn: Callable[..., Figure]) -> Callable[..., Figure]:
        FIGURES.update({(cls, view): fn for view in views or ("plot",)})
        return fn

    return register


class Result:
    """Mixin for frozen dataclass results: ``save``, ``load`` and a notebook repr."""

    _title: ClassVar[str] = "Result"
    _main_table: ClassVar[str] = "df"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            RESULT_TYPES[cls.__name__] = cls

    def summary(self) -> dict[str, Any]:
        """A few headline numbers (overridden by each result)."""
        return self._warning_summary()

    def _warning_summary(self) -> dict[str, Any]:
        """``{"WARNING": ...}`` entries for the result's ``warnings`` field (empty without warnings)."""
        warns = tuple(getattr(self, "warnings", ()) or ())
        if warns and all(w.startswith("NOT READ by ") for w in warns):  # scoped to the heads it names
            return {key: text.strip() for key, text in (w.split(":", 1) for w in warns)}
        if len(warns) == 1:
            return {"WARNING": warns[0]}
        return {f"WARNING {i + 1}": w for i, w in enumerate(warns)}

    def _draw(self, view: str = "plot", /, *args: Any, **kwargs: Any) -> Figure:
        """The figure ``view`` of this result, drawn as the first class in its MRO that has one.

        Raises:
            ValueError: no figure of that name for this result.
        """
        for cls in type(self).__mro__:
            if (cls, view) in FIGURES:
                return FIGURES[cls, view](self, *args, **kwargs)
        known = sorted({v for c, v in FIGURES if isinstance(self, c)})
        raise ValueError(f"{type(self).__name__} has no figure {view!r}; its figures: {known}")

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the result to the folder ``path`` (DataFrames keep their columns and dtypes).

        Raises:
            FileExistsError: ``path`` exists and is not empty, unless ``overwrite``.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} is a file, not a folder; choose a folder to save the result in")
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True or choose a new folder")
        path.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"__class__": type(self).__name__, "format": FORMAT, "fields": {}, "tables": {}}
        files: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                tensors[f.name] = value.detach().cpu().contiguous()
            elif isinstance(value, pd.DataFrame):
                value.to_csv(path / f"{f.name}.csv", index=False)
                meta["tables"][f.name] = {str(c): str(t) for c, t in value.dtypes.items()}
                files[f"{f.name}.csv"] = {"rows": len(value), "sha256": _sha256(path / f"{f.name}.csv")}
            elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                tensors.update({f"{f.name}::{k}": v.detach().cpu().contiguous() for k, v in value.items()})
            else:
                meta["fields"][f.name] = _jsonable(value)
        meta["tensors"] = sorted(tensors)
        if tensors:
            save_file(tensors, str(path / TENSORS))
            files[TENSORS] = {"sha256": _sha256(path / TENSORS)}
        meta["files"] = files
        meta["checksum"] = _meta_checksum(meta)
        (path / "meta.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a result written by :meth:`save`, refused if a file does not match what ``meta.json`` records.

        Raises:
            FileNotFoundError: no saved result at ``path``, or a file the result needs is missing (named).
            ValueError: the folder holds a different kind of result, was saved in another format
                (re-run the analysis), or a file is corrupt or does not match what was saved (the file is named).
        """
        path = Path(path)
        meta = _read_meta(path)
        if meta.get("__class__") != cls.__name__:
            raise ValueError(f"{path} holds a {meta.get('__class__')}, not a {cls.__name__}; load it with that class")
        try:
            return cls._load(path, meta)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as err:  # a damaged file can fail in many ways; name the folder either way
            raise ValueError(
                f"{path} does not hold a valid {cls.__name__} ({type(err).__name__}: {err}); save the result again"
            ) from None

    @classmethod
    def _load(cls: type[R], path: Path, meta: dict[str, Any]) -> R:
        files, tables = meta["files"], meta["tables"]
        tensors = _read_tensors(path, meta["tensors"], files)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            prefix = f"{f.name}::"
            if f.name in tensors:
                kwargs[f.name] = tensors[f.name]
            elif f.name in tables:
                kwargs[f.name] = _read_table(path / f"{f.name}.csv", tables[f.name], files)
            elif any(k.startswith(prefix) for k in tensors):
                kwargs[f.name] = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
            elif f.name in meta["fields"]:
                kwargs[f.name] = _decode(meta["fields"][f.name], tuples=f.name != "config")
        if missing := [f.name for f in dataclasses.fields(cls) if f.name not in kwargs]:  # type: ignore[arg-type]
            raise ValueError(
                f"{path / 'meta.json'}: {cls.__name__} needs {missing}, found in none of meta.json, "
                f"tensors.safetensors or {', '.join(m + '.csv' for m in missing)}; save the result again"
            )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, AttributeError, KeyError) as err:
            raise ValueError(f"{path} does not hold a valid {cls.__name__} ({err}); save the result again") from err

    def _shown(self) -> dict[str, Any]:
        """The summary as shown: an interval entry that repeats the ``Estimate`` before it is left out."""
        items = list(self.summary().items())
        before = [None] + [v for _, v in items[:-1]]
        return {
            k: v
            for (k, v), prev in zip(items, before, strict=True)
            if not (isinstance(prev, Estimate) and isinstance(v, (tuple, list)) and tuple(v) == prev.ci)
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(show(v))}</td></tr>" for k, v in self._shown().items()
        )
        table = getattr(self, self._main_table, None)
        body = table.head(12).to_html(index=False, float_format=fmt) if isinstance(table, pd.DataFrame) else ""
        warns = "".join(
            f'<p style="color:#b00020;font-weight:bold">&#9888; {html.escape(str(w))}</p>'
            for w in tuple(getattr(self, "warnings", ()) or ())
        )
        return f"<div><b>{html.escape(self._title)}</b>{warns}<table>{rows}</table>{body}</div>"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={show(v)}' for k, v in self._shown().items())})"


def n_prompts(prov: Any) -> int:
    """The number of prompts a provenance records (a dict or an object with ``n_prompts``), 0 when it records none."""
    n = prov.get("n_prompts") if isinstance(prov, dict) else getattr(prov, "n_prompts", None)
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


def _sha256(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _meta_checksum(meta: dict[str, Any]) -> str:
    """The checksum of ``meta.json``'s content (everything but the checksum itself)."""
    body = json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _read_meta(path: Path) -> dict[str, Any]:
    """``meta.json`` of a saved result, refused unless it is of this format and unchanged since it was saved."""
    file = path / "meta.json"
    if not file.is_file():
        raise FileNotFoundError(f"no saved result in {path} (meta.json missing)")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is corrupt ({err}); save the result again") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("fields"), dict):
        raise ValueError(f"{file} is not the metadata of a saved result; save the result again")
    saved = meta.get("format")
    if saved != FORMAT:
        when = "a newer" if isinstance(saved, int) and saved > FORMAT else "an older"
        raise ValueError(
            f"{file}: this result was saved in {when} format of icl_heads (format {saved}, this version reads "
            f"format {FORMAT}); re-run the analysis to get it in this format"
        )
    if meta.get("checksum") != _meta_checksum(meta):
        raise ValueError(f"{file} was changed after the result was saved (its content does not match its checksum)")
    if any(not isinstance(meta.get(k), t) for k, t in {"tables": dict, "tensors": list, "files": dict}.items()):
        raise ValueError(f"{file} is not the metadata of a saved result; save the result again")
    return meta


def _check_file(file: Path, files: dict[str, Any], rows: int | None = None) -> None:
    """Refuse ``file`` unless its row count and checksum are those recorded when it was saved."""
    saved = files.get(file.name)
    if not isinstance(saved, dict):
        raise ValueError(f"{file}: meta.json records no checksum for it; save the result again")
    if rows is not None and rows != saved.get("rows"):
        raise ValueError(
            f"{file} has {rows} rows but meta.json records {saved.get('rows')}: one of them was changed or replaced after "
            "the result was saved; save it again"
        )
    if _sha256(file) != saved.get("sha256"):
        raise ValueError(
            f"{file} was changed after the result was saved (its checksum is not the one meta.json records); "
            "save it again"
        )


def _read_tensors(path: Path, expected: list[str], files: dict[str, Any]) -> dict[str, torch.Tensor]:
    file = path / TENSORS
    if not expected:
        return {}
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing; meta.json records the tensors {expected} in it")
    try:
        tensors = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for a truncated or garbled file
        raise ValueError(f"{file} is corrupt ({type(err).__name__}: {err}); save the result again") from None
    if sorted(tensors) != sorted(expected):
        raise ValueError(
            f"{file} holds the tensors {sorted(tensors)}, not the {expected} meta.json records; save it again"
        )
    _check_file(file, files)
    return tensors


def _read_table(file: Path, dtypes: dict[str, str], files: dict[str, Any] | None = None) -> pd.DataFrame:
    """A DataFrame written by ``to_csv`` with the recorded columns and dtypes (and, given ``files``, checksum)."""
    if not file.exists():
        raise FileNotFoundError(f"{file} is missing; meta.json records the table {file.stem!r} of the result in it")
    if not isinstance(dtypes, dict):
        raise ValueError(f"{file.parent / 'meta.json'} does not record the columns of {file.name}; save it again")
    text = {c: str for c, t in dtypes.items() if t == "object"}
    try:
        df = pd.read_csv(file, dtype=text, keep_default_na=False, na_values={c: [""] for c in dtypes})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        if dtypes or not isinstance(err, pd.errors.EmptyDataError):
            raise ValueError(f"{file} cannot be read as CSV ({err}); save the result again") from None
        df = pd.DataFrame()
    if list(df.columns) != list(dtypes):
        raise ValueError(f"{file} has columns {list(df.columns)} but meta.json records {list(dtypes)}; save it again")
    for column, dtype in ((c, t) for c, t in dtypes.items() if str(df[c].dtype) != t):
        try:
            df[column] = df[column].astype(dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{file}: column {column!r} does not hold the {dtype} values meta.json records ({err}); save it again"
            ) from None
    if files is not None:
        _check_file(file, files, rows=len(df))
    return df
