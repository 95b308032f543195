"""Read and replace the generated block between two HTML-comment markers of a Markdown page."""

from __future__ import annotations


def current(text: str, start: str, end: str) -> str:
    """The block between ``start`` and ``end`` in ``text``, without its surrounding newlines."""
    if start not in text or end not in text:
        raise SystemExit(f"the page has no {start} ... {end} block")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def replace(text: str, start: str, end: str, block: str) -> str:
    """``text`` with the block between ``start`` and ``end`` replaced by ``block``."""
    current(text, start, end)  # refuses a page without the markers
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{block}\n{end}{rest.split(end, 1)[1]}"
