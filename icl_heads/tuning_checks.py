"""Checks around tuning a bias correction: where its heads read, and why it chose "no change"."""

from __future__ import annotations

from typing import Any

import pandas as pd

from icl_heads.faithfulness import faithful_access
from icl_heads.reading import resolve_read_at


def read_at_for(model: Any, prompts: Any, heads, read_at: str, min_read_share: float) -> tuple:
    """``(read_at, info, warnings)`` for the corrected heads on the tuning prompts (see :func:`resolve_read_at`)."""
    access = faithful_access(model, "read_at_for")
    return resolve_read_at(access, access.tokenize(prompts), list(heads), read_at, min_share=min_read_share)


def no_change_reason(
    tuning: pd.DataFrame, value: float, parameter: str, max_drop: float, read_warnings
) -> tuple[str, ...]:
    """Why the tuning chose the no-op value (0), or nothing when it chose a real correction."""
    if value != 0:
        return ()
    base = tuning[tuning.value == 0]
    others = tuning[tuning.value != 0]
    if base.empty or others.empty:
        return (f"NO CHANGE: {parameter}=0 was chosen because the grid holds no other value to try",)
    b0 = float(base.bias.abs().iloc[0])
    allowed = others[others.allowed]
    if allowed.empty:
        best = others.loc[others.accuracy_drop.idxmin()]
        why = (
            f"every other value lowered balanced accuracy on the tuning prompts by more than {max_drop:g} "
            f"(the smallest drop is {best.accuracy_drop:.3g} at {parameter}={best.value:g})"
        )
    else:
        best = allowed.loc[allowed.bias.abs().idxmin()]
        why = (
            f"no allowed value reduced the bias on the tuning prompts (|bias| {b0:.3g} uncorrected, "
            f"{abs(best.bias):.3g} at best, {parameter}={best.value:g})"
        )
    if read_warnings:
        why += "; the corrected heads do not read the positions it changes (see the other warning)"
    return (f"NO CHANGE: the correction was tuned to {parameter}=0 (no correction) because {why}",)
