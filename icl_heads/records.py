"""Typed records: the config and provenance of every result, as frozen dataclasses that read like read-only dicts.

A record's keys are its fields (one whose default is :data:`UNSET` only once set), then those of ``extra``.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True, eq=False, repr=False)
... class Demo(Record):
...     seed: int = 0
>>> r = Demo.from_dict({"seed": 3, "note": "kept"})
>>> r["seed"], r["note"], dict(r)
(3, 'kept', {'seed': 3, 'note': 'kept'})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

RecordT = TypeVar("RecordT", bound="Record")


class _Unset:
    """The default of an optional field: its key is absent (from the mapping and the JSON) until it is set."""

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


def plain(x: Any, encode: Callable[[Any], Any] | None = None) -> Any:
    """``x`` JSON-ready (records and mappings as dicts, tuples as lists, scalars as numbers); ``encode`` goes first."""
    if encode is not None and (known := encode(x)) is not None:
        return known
    if isinstance(x, Record):
        return x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): plain(v, encode) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v, encode) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x.item() if hasattr(x, "item") and callable(x.item) else x


@dataclass(frozen=True, eq=False, repr=False)
class Record(Mapping[str, Any]):
    """Base of typed config and provenance records: a frozen dataclass that reads like a read-only dict.

    Subclasses are ``@dataclass(frozen=True, eq=False, repr=False)`` (a record equals a dict with the same items).

    Attributes:
        extra: keys the class does not name (an analysis's extras).
    """

    extra: Mapping[str, Any] = field(default_factory=dict, kw_only=True)

    _nested: ClassVar[dict[str, type[Record]]] = {}  # field name -> record class, rebuilt from dicts by from_dict
    _last: ClassVar[tuple[str, ...]] = ()  # inherited fields whose keys come after the subclass's own

    def _fields(self) -> dict[str, Any]:
        fields = sorted(dataclasses.fields(self), key=lambda f: f.name in self._last)
        items = ((f.metadata.get("key", f.name), getattr(self, f.name)) for f in fields if f.name != "extra")
        return {k: v for k, v in items if v is not UNSET}

    def __getitem__(self, key: str) -> Any:
        fields = self._fields()
        return fields[key] if key in fields else self.extra[key]

    def __iter__(self) -> Iterator[str]:
        fields = self._fields()
        yield from fields
        yield from (k for k in self.extra if k not in fields)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict with the same keys (nested records become dicts)."""
        return {k: plain(v) for k, v in self.items()}

    @classmethod
    def from_dict(cls: type[RecordT], data: Mapping[str, Any]) -> RecordT:
        """Rebuild a record from :meth:`to_dict`'s output; unknown keys go to ``extra``, missing ones take defaults.

        Raises:
            TypeError: ``data`` is not a mapping.
            ValueError: a required key is missing, or a value fails the class's validation.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__}.from_dict needs a mapping of keys to values, got {type(data).__name__}")
        by_key = {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls) if f.name != "extra"}
        kwargs: dict[str, Any] = {}
        extra = dict(data.get("extra", {})) if "extra" not in by_key and isinstance(data.get("extra"), Mapping) else {}
        for key, value in data.items():
            if key in by_key:
                nested = cls._nested.get(by_key[key].name)
                is_dict = nested is not None and isinstance(value, Mapping) and not isinstance(value, Record)
                kwargs[by_key[key].name] = nested.from_dict(value) if is_dict else value  # type: ignore[union-attr]
            elif key != "extra":
                extra[key] = value
        missing = dataclasses.MISSING
        required = [
            k
            for k, f in by_key.items()
            if f.name not in kwargs and f.default is missing and f.default_factory is missing
        ]
        if required:
            raise ValueError(f"{cls.__name__}.from_dict: missing the keys {required}; give them (found {list(data)})")
        return cls(**kwargs, extra=extra)


def check_positive(record: Record, *names: str) -> None:
    """Raise a ``ValueError`` naming the first of ``names`` that is set to a number below 1."""
    for name in names:
        value = getattr(record, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"{type(record).__name__}: {name} must be at least 1, got {value!r}")


def check_choice(record: Record, name: str, choices: tuple[Any, ...]) -> None:
    """Raise a ``ValueError`` listing ``choices`` if the field ``name`` is set to another value."""
    value = getattr(record, name)
    if value is not UNSET and value not in choices:
        raise ValueError(f"{type(record).__name__}: {name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True, eq=False, repr=False)
class ModelIdentity(Record):
    """A loaded model: its reference, architecture, class (key ``"class"``), size, device and dtype."""

    reference: str
    architecture: str
    class_: str = field(metadata={"key": "class"})
    n_layers: int | None = None
    n_heads: int | None = None
    d_model: int | None = None
    parameters: int = 0
    device: str = "unknown"
    dtype: str = "unknown"


@dataclass(frozen=True, eq=False, repr=False)
class TaskIdentity(Record):
    """A task: name, template, classes, label words and size; its data file and SHA-256 if it came from one."""

    name: str
    template: str
    classes: list[str]
    label_words: list[str]
    examples: int
    data: str = UNSET
    data_sha256: str = UNSET


@dataclass(frozen=True, eq=False, repr=False)
class Provenance(Record):
    """Where numbers came from: the one provenance type, of a result and of a run; every key is optional.

    A result's is built by :func:`icl_heads.results.provenance`, a run's by
    :func:`icl_heads._provenance.run_provenance`; an analysis's own extras are kept in ``extra``.

    Attributes:
        command, versions, seeds, torch_threads, platform, python_executable, cost: of a run.
        model, task: the model's and task's names (a :class:`ModelIdentity`, :class:`TaskIdentity` for a run).
        icl_heads, transformer_lens, torch, created: package versions and the UTC time (ISO 8601).
        n_prompts, prompt_config: the number of prompts and how they were sampled.
        label_words, template, classes: the task's (``classes`` maps each class to its label word).
        heads, architecture: the heads looked at (``[layer, head]`` pairs) and the model's architecture.
        first_token, method: multi-token label words scored by their first token; the correction method.
    """

    command: str = UNSET
    versions: dict[str, str] = UNSET
    model: str | ModelIdentity = UNSET
    icl_heads: str = UNSET
    transformer_lens: str = UNSET
    torch: str = UNSET
    created: str = UNSET
    n_prompts: int = UNSET
    prompt_config: dict[str, Any] = UNSET
    task: str | TaskIdentity = UNSET
    label_words: list[str] = UNSET
    template: str = UNSET
    classes: dict[str, str] = UNSET
    heads: list[list[int]] = UNSET
    architecture: str | None = UNSET
    first_token: bool = UNSET
    method: str = UNSET
    seeds: dict[str, int] = UNSET
    torch_threads: Any = UNSET
    platform: str = UNSET
    python_executable: str = UNSET
    cost: dict[str, Any] = UNSET

    _nested: ClassVar[dict[str, type[Record]]] = {"model": ModelIdentity, "task": TaskIdentity}
