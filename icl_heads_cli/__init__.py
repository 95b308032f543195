"""The ``icl-heads`` command's entry point, outside ``icl_heads`` so that it runs before the package loads.

Importing ``icl_heads`` (torch, TransformerLens) takes seconds; a Ctrl-C in that time
would end in a traceback. This module imports nothing heavy: it loads the command
inside a ``try`` and ends an early Ctrl-C with one line and exit code 130, like a
Ctrl-C later in the run (:func:`icl_heads.cli.main`).
"""

from __future__ import annotations

import sys


def main() -> int:
    """Load and run ``icl-heads``; a Ctrl-C while it loads ends with one line and exit code 130."""
    try:
        from icl_heads.cli import main as command

        return command()
    except KeyboardInterrupt:  # while loading, or outside the run's own handling (which says more)
        if "--debug" in sys.argv:
            raise
        print("icl-heads: interrupted; no results written", file=sys.stderr)
        return 130
