"""Old names kept working: a function or method under its old name warns and calls the new one."""

from __future__ import annotations

import functools
import warnings
from typing import Any


def renamed(function: Any, old: str) -> Any:
    """``function`` under its old name ``old``: the same result, with a ``DeprecationWarning`` naming the new one.

    Works for functions and for methods (assign it in the class body).
    """

    @functools.wraps(function)
    def old_name(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"{old} is now {function.__name__}", DeprecationWarning, stacklevel=2)
        return function(*args, **kwargs)

    old_name.__name__ = old_name.__qualname__ = old
    old_name.__doc__ = f"Deprecated: the old name of ``{function.__name__}``."
    return old_name
