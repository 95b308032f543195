"""Old names kept working: a function or method under its old name warns and calls the new one."""

from __future__ import annotations

import functools
import warnings
from typing import Any


def renamed(function: Any, old: str, why: str = "") -> Any:
    """``function`` under its old name ``old``: the same result, with a ``DeprecationWarning`` naming the new one.

    Works for functions and for methods (assign it in the class body; the warning then
    names the class). ``why`` is added to the warning.
    """
    owner = function.__qualname__.rsplit(".", 1)[0] + "." if "." in function.__qualname__ else ""

    @functools.wraps(function)
    def old_name(*args: Any, **kwargs: Any) -> Any:
        note = f" ({why})" if why else ""
        warnings.warn(f"{owner}{old} is now {owner}{function.__name__}{note}", DeprecationWarning, stacklevel=2)
        return function(*args, **kwargs)

    old_name.__name__ = old_name.__qualname__ = old
    old_name.__doc__ = f"Deprecated: the old name of ``{function.__name__}``."
    return old_name
