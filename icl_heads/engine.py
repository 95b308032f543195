"""The batch engine: how prompts are run (``RunOptions``), the one loop over batches, and the cost ledger.

Every analysis runs the model through :meth:`icl_heads.models.ModelAccess.run`, and
every pass is recorded in the active :class:`CostLedger`s: forward passes, prompt
rows, padded tokens and layer×token evaluations (the work a pass does: its padded
tokens times the layers it runs). Open a ledger with :func:`count_cost`::

    with count_cost() as ledger:
        ih.find_in_context_heads(model, prompts)
    ledger.df            # one row per section (here "total")
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from icl_heads.models import ModelAccess
    from icl_heads.prompts import PromptBatch, TokenizedPrompts

PADDING_SIDES = ("right", "left")


@dataclass(frozen=True)
class RunOptions:
    """How prompts are run: batch size, padding side and a progress bar.

    Results do not depend on these (tested): they trade memory for speed.

    Raises:
        ValueError: ``batch_size`` is not a positive integer or ``padding_side`` is unknown.
    """

    batch_size: int = 32
    padding_side: str = "right"
    progress: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}, got {self.padding_side!r}")


def run_options(options: RunOptions | None = None, **overrides: Any) -> RunOptions:
    """``options`` (default :class:`RunOptions`) with the given fields replaced (``None`` values ignored)."""
    options = options or RunOptions()
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(options, **changes) if changes else options


def batches(
    access: ModelAccess, tp: TokenizedPrompts, options: RunOptions | None = None, *, desc: str = "running"
) -> Iterator[PromptBatch]:
    """The batches of ``tp`` under ``options``, with a progress bar named ``desc`` when asked for.

    This is the one loop over prompts: analyses map their per-batch work over it.
    """
    options = options or RunOptions()
    parts = list(access.batches(tp, options.batch_size, options.padding_side))
    yield from tqdm(parts, desc=desc, disable=not options.progress)


# ---- the cost ledger --------------------------------------------------------------------------


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
        out = {k: c.as_dict() for k, c in self.sections.items()}
        out["total"] = self.total.as_dict()
        return out


_ACTIVE: contextvars.ContextVar[tuple[CostLedger, ...]] = contextvars.ContextVar("icl_heads_ledgers", default=())


@contextlib.contextmanager
def count_cost(ledger: CostLedger | None = None) -> Iterator[CostLedger]:
    """Count the model work done inside the block (ledgers nest: an outer one sees the inner ones' work)."""
    ledger = ledger or CostLedger()
    token = _ACTIVE.set((*_ACTIVE.get(), ledger))
    try:
        yield ledger
    finally:
        _ACTIVE.reset(token)


def record_pass(rows: int, tokens: int, layers: int) -> None:
    """Record one forward pass of ``rows`` prompts over ``tokens`` padded tokens through ``layers`` layers."""
    ledgers = _ACTIVE.get()
    if not ledgers:
        return
    cost = Cost(passes=1, rows=rows, tokens=tokens, layer_tokens=tokens * layers)
    for ledger in ledgers:
        ledger.record(cost)
