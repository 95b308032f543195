"""The command's progress: an estimate of the whole run before it starts, and one bar per section in prompt passes.

Each section's ``reference_passes`` (the cost ledger's rows in a reference run) is scaled to this run's prompts (and
heads, for work per head) and multiplied by the seconds one prompt pass takes on this model, timed outside the ledger.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

from icl_heads._cli_sections import AnalysisSection
from icl_heads.engine import Cost, CostLedger

logger = logging.getLogger("icl_heads")

#: the reference run behind every section's ``reference_passes`` (its cost ledger's ``rows``)
REFERENCE_PROMPTS = 200
REFERENCE_HEADS = 24
#: a run predicted to take longer than this many seconds gets its estimate shown even with --quiet
LONG_RUN = 600.0


def predicted_passes(section: AnalysisSection, n_prompts: int, n_heads: int) -> int:
    """The prompt passes ``section`` is expected to make on ``n_prompts`` prompts of a model with ``n_heads`` heads."""
    if section.predict is not None:
        return max(1, section.predict(n_prompts, n_heads))
    scale = n_prompts / REFERENCE_PROMPTS
    if section.per_head:
        scale *= n_heads / REFERENCE_HEADS
    return max(1, round(section.reference_passes * scale))


def seconds_per_pass(model: Any, prompts: Any, n: int = 16) -> float:
    """Seconds one prompt pass takes on ``model``, timed on the first ``n`` of ``prompts`` after one warm-up pass."""
    from icl_heads.accuracy import predict
    from icl_heads.options import RunOptions

    sample = prompts[: min(n, len(prompts))]
    quiet = RunOptions(progress=False)
    predict(model, sample[:1], options=quiet)
    start = time.perf_counter()
    predict(model, sample, options=quiet)
    return (time.perf_counter() - start) / len(sample)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def estimate(
    sections: list[AnalysisSection], n_prompts: int, n_heads: int, per_pass: float
) -> tuple[dict[str, int], str]:
    """The predicted passes of each section and a one-paragraph estimate of the whole run, with how to shrink it."""
    passes = {s.name: predicted_passes(s, n_prompts, n_heads) for s in sections}
    total = sum(passes.values()) * per_pass
    parts = ", ".join(f"{name} {n:,}" for name, n in passes.items())
    text = (
        f"estimate: about {_duration(total)} for {sum(passes.values()):,} prompt passes ({parts}) at "
        f"{per_pass * 1000:.1f} ms per prompt pass on this model"
    )
    if passes:
        longest = max(passes, key=passes.__getitem__)
        text += (
            f"; to shrink it, lower --n-prompts (the time scales with it; now {n_prompts}) or skip the longest "
            f"section with --skip {longest}; Ctrl-C stops the run and leaves --out unchanged"
        )
    return passes, text


class ProgressLedger(CostLedger):
    """A cost ledger that moves a progress bar by the prompt passes it records, one bar per section."""

    def __init__(self, show: bool = True) -> None:
        super().__init__()
        self.show, self.done = show, 0  # done: prompt passes recorded in the current section (what its bar shows)
        self._bar: Any = None

    @contextlib.contextmanager
    def progress(self, name: str, expected: int) -> Iterator[ProgressLedger]:
        """Record the block's passes under ``name``, with a bar of ``expected`` prompt passes."""
        bar = tqdm(total=expected, desc=name, unit=" passes", unit_scale=True, disable=not self.show, leave=False)
        self._bar, self.done = bar, 0
        try:
            with self.section(name):
                yield self
        finally:
            self._bar = None
            bar.close()

    def record(self, cost: Cost) -> None:
        super().record(cost)
        if self._bar is not None:
            self.done += cost.rows
            if self.done > self._bar.total:  # more work than predicted: the bar keeps moving
                self._bar.total = self.done
            self._bar.update(cost.rows)
