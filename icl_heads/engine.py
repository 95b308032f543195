"""The batch engine: the cost ledger, the :class:`Intervention` base and the reuse of identical passes.

Open a ledger with :func:`count_cost`: ``with count_cost() as ledger: ...``, then ``ledger.df`` (one row per section).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import hashlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pandas as pd
import torch

if TYPE_CHECKING:
    from icl_heads.prompts import PromptBatch, TokenizedPrompts

T = TypeVar("T")


@dataclass
class Cost:
    """Work done by the model: forward passes, prompt rows, padded tokens and layer×token evaluations."""

    passes: int = 0
    rows: int = 0
    tokens: int = 0
    layer_tokens: int = 0

    def add(self, other: Cost) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class CostLedger:
    """The model work of a run, by section (see :func:`count_cost`)."""

    def __init__(self) -> None:
        self.sections: dict[str, Cost] = {}
        self._stack: list[str] = ["total"]

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[CostLedger]:
        """Record the passes made inside the block under ``name``."""
        self._stack.append(name)
        try:
            yield self
        finally:
            self._stack.pop()

    def record(self, cost: Cost) -> None:
        self.sections.setdefault(self._stack[-1], Cost()).add(cost)

    @property
    def total(self) -> Cost:
        out = Cost()
        for c in self.sections.values():
            out.add(c)
        return out

    @property
    def df(self) -> pd.DataFrame:
        """One row per section and a ``total`` row: passes, rows, tokens, layer_tokens."""
        rows = [{"section": k, **c.as_dict()} for k, c in self.sections.items()]
        if len(rows) != 1 or rows[0]["section"] != "total":
            rows.append({"section": "total", **self.total.as_dict()})
        return pd.DataFrame(rows, columns=["section", "passes", "rows", "tokens", "layer_tokens"])

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {**{k: c.as_dict() for k, c in self.sections.items()}, "total": self.total.as_dict()}


_ACTIVE: contextvars.ContextVar[tuple[CostLedger, ...]] = contextvars.ContextVar("icl_heads_ledgers", default=())
_REUSE: contextvars.ContextVar[bool] = contextvars.ContextVar("icl_heads_reuse", default=True)


@contextlib.contextmanager
def _set(var: contextvars.ContextVar, value: Any) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


@contextlib.contextmanager
def count_cost(ledger: CostLedger | None = None) -> Iterator[CostLedger]:
    """Count the model work done inside the block (ledgers nest: an outer one sees the inner ones' work)."""
    ledger = ledger or CostLedger()
    with _set(_ACTIVE, (*_ACTIVE.get(), ledger)):
        yield ledger


@contextlib.contextmanager
def cost_section(name: str) -> Iterator[None]:
    """Record the passes made inside the block under ``name`` in every active ledger (e.g. one method of a comparison)."""
    with contextlib.ExitStack() as stack:
        for ledger in _ACTIVE.get():
            stack.enter_context(ledger.section(name))
        yield


def record_pass(rows: int, tokens: int, layers: int) -> None:
    """Record one forward pass of ``rows`` prompts over ``tokens`` padded tokens through ``layers`` layers."""
    for ledger in _ACTIVE.get():
        ledger.record(Cost(passes=1, rows=rows, tokens=tokens, layer_tokens=tokens * layers))


def _digest(value: Any, h: Any) -> None:
    """Feed ``value`` (tensors, numbers, strings, and containers of them) into the hash ``h``."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, Mapping):  # dicts and typed records
        h.update(b"{")
        for k in sorted(value, key=repr):
            _digest(k, h)
            _digest(value[k], h)
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"(")
        for v in value:
            _digest(v, h)
        h.update(b")")
    elif value is None or isinstance(value, (bool, int, float, str)):
        h.update(repr(value).encode() + b";")
    else:
        raise TypeError(type(value).__name__)


def digest(*values: Any) -> str | None:
    """A content hash of ``values``; ``None`` when one of them cannot be hashed by content."""
    h = hashlib.blake2b(digest_size=16)
    try:
        _digest(values, h)
    except TypeError:
        return None
    return h.hexdigest()


HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


def content_key(obj: Any) -> str | None:
    """A content key of a frozen dataclass (its type and fields); ``None`` for anything else."""
    params = getattr(obj, "__dataclass_params__", None)
    if params is None or not params.frozen:
        return None
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return digest(type(obj).__module__, type(obj).__qualname__, fields)


class Intervention:
    """The one form of intervention: an object whose :meth:`hooks_for` gives its forward hooks for one batch.

    Head ablation, every correction and ``combine(...)`` of them derive from it; plain
    ``(hook name, function)`` pairs are wrapped once where they enter, by :func:`as_intervention`.
    """

    #: whether it edits ``hook_pattern`` (refused on models that discard such edits)
    edits_pattern: ClassVar[bool] = False
    #: whether it leaves prompts with balanced label counts exactly unchanged (tuning skips measuring them)
    balanced_noop: ClassVar[bool] = False

    def hooks_for(self, batch: PromptBatch) -> list[tuple[str, HookFn]]:
        """The forward hooks for ``batch`` (its own final positions, label positions, ...)."""
        raise NotImplementedError(f"{type(self).__name__} must define hooks_for(batch)")

    def cache_key(self) -> str | None:
        """The content key under which identical passes are reused (frozen dataclasses: type and fields)."""
        return content_key(self)


class HookList(Intervention):
    """Plain ``(hook name, function)`` pairs, the same for every batch; never reused (functions have no content)."""

    def __init__(self, hooks: Sequence[tuple[str, HookFn]] = ()) -> None:
        self.hooks = tuple(hooks)

    def hooks_for(self, batch: PromptBatch) -> list[tuple[str, HookFn]]:
        return list(self.hooks)

    def cache_key(self) -> str | None:
        return None if self.hooks else "clean"


#: What ``hooks=`` takes: an intervention or plain ``(hook name, function)`` pairs.
Hooks = Intervention | Sequence[tuple[str, HookFn]]


def as_intervention(hooks: Hooks | None) -> Intervention:
    """``hooks`` as an :class:`Intervention` (plain hook pairs wrapped in a :class:`HookList`).

    Raises:
        TypeError: neither an intervention nor a list of ``(hook name, function)`` pairs.
    """
    if isinstance(hooks, Intervention):
        return hooks
    pairs = () if hooks is None else hooks
    if isinstance(pairs, (list, tuple)) and all(
        isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) and callable(h[1]) for h in pairs
    ):
        return HookList(pairs)
    raise TypeError(
        f"hooks must be an intervention (a HeadAblation, a correction, combine(...) of them) or a list of "
        f"(hook name, function) pairs, got {type(hooks).__name__}"
    )


def intervention_key(hooks: Hooks | None) -> str | None:
    """The content key of an intervention (``"clean"`` for none); ``None`` when its results are never reused."""
    return as_intervention(hooks).cache_key()


def _forward_hooks(model: Any) -> list[Any]:
    return [h for hp in getattr(model, "hook_dict", {}).values() for h in getattr(hp, "fwd_hooks", ())]


def weights_key(model: Any) -> tuple:
    """Changes when a weight is modified in place or a permanent hook is added or removed."""
    params = list(model.parameters())
    permanent = tuple(id(h) for h in _forward_hooks(model) if getattr(h, "is_permanent", False))
    return (len(params), sum(p._version for p in params), permanent)


def per_model(cache: weakref.WeakKeyDictionary, model: Any, compute: Callable[[], T]) -> T:
    """``compute()`` once per model, again only when its weights or permanent hooks change (see :func:`weights_key`)."""
    key = weights_key(model)
    hit = cache.get(model)
    if hit is None or hit[0] != key:
        hit = cache[model] = (key, compute())
    return hit[1]


_PROMPT_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prompt_key(tp: TokenizedPrompts) -> str | None:
    """A content key of tokenized prompts: their tokens and every position and label the analyses read."""
    with contextlib.suppress(KeyError, TypeError):
        return _PROMPT_KEYS[tp]
    key = digest(tp.tokens, tp.label_positions, tp.demo_labels, tp.golds, tp.label_token_ids, tp.roles, tp.demo_index)
    with contextlib.suppress(TypeError):
        _PROMPT_KEYS[tp] = key
    return key


@contextlib.contextmanager
def no_reuse() -> Iterator[None]:
    """Inside the block every result is computed afresh (nothing earlier is read back, nothing is kept)."""
    with _set(_REUSE, False):
        yield


class StateCache:
    """Least recently used entries for one model state, within ``budget`` (entry sizes from ``size``)."""

    def __init__(self, state: tuple, budget: int, size: Callable[[Any], int]) -> None:
        self.state, self.budget, self.size, self.used = state, budget, size, 0
        self.entries: collections.OrderedDict = collections.OrderedDict()

    def get(self, key: Any) -> Any:
        if key in self.entries:
            self.entries.move_to_end(key)
        return self.entries.get(key)

    def put(self, key: Any, value: Any) -> None:
        n = self.size(value)
        if n > self.budget or key in self.entries:
            return
        while self.used + n > self.budget and self.entries:
            self.used -= self.size(self.entries.popitem(last=False)[1])
        self.entries[key] = value
        self.used += n


def state_cache(
    tables: weakref.WeakKeyDictionary, model: Any, budget: int, size: Callable[[Any], int] = lambda v: 1
) -> StateCache | None:
    """``model``'s cache for its current state; ``None`` when reuse is off or temporary hooks are attached."""
    if not _REUSE.get() or any(not getattr(h, "is_permanent", False) for h in _forward_hooks(model)):
        return None
    state = weights_key(model)
    table = tables.get(model)
    if table is None or table.state != state:
        table = tables[model] = StateCache(state, budget, size)
    return table


_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
MEMO_ENTRIES = 4096


def _memo(model: Any, key: tuple) -> StateCache | None:
    return None if any(k is None for k in key) else state_cache(_MEMO, model, MEMO_ENTRIES)


def memo_get(model: Any, key: tuple) -> Any:
    """An earlier result stored under ``key`` for this model state (``None`` if there is none)."""
    table = _memo(model, key)
    return None if table is None else table.get(key)


def memo_put(model: Any, key: tuple, value: Any) -> None:
    """Store ``value`` under ``key`` for this model state (nothing is stored when reuse is ruled out)."""
    table = _memo(model, key)
    if table is not None:
        table.put(key, value)


def memoised(model: Any, key: tuple, compute: Callable[[], T]) -> T:
    """``compute()``, or its earlier value for the same model state and ``key`` (see docs/methods.md).

    Nothing is reused when a part of ``key`` is ``None`` or the model carries temporary hooks (e.g. in ``ablate``).
    """
    hit = memo_get(model, key)
    if hit is None:
        hit = compute()
        memo_put(model, key, hit)
    return hit
