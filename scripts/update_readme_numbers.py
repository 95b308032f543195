"""Write the verdicts of a run into README.md and docs/reproducing.md between the ``verdicts`` markers.

The numbers are generated from a run's ``summary.json``, never copied by hand. A copy of that
``summary.json`` is kept in ``docs/data/summary_organism.json``, so ``tests/test_doc_numbers.py`` can
re-render the blocks from it and fail when a block is stale.

Usage::

    icl-heads analyze --model organism --task organism --out results/organism --threads 1
    python scripts/update_readme_numbers.py results/organism/summary.json
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _marked_block

ROOT = Path(__file__).resolve().parent.parent
FILES = (ROOT / "README.md", ROOT / "docs" / "reproducing.md")
SOURCE = ROOT / "docs" / "data" / "summary_organism.json"
START, END = "<!-- verdicts:start -->", "<!-- verdicts:end -->"


def block(summary: dict) -> str:
    """The Markdown list of verdicts, with the command and versions that produced them."""
    prov = summary.get("provenance", {})
    lines = [f"- **{v['claim']}**: {v['state']} ({v['detail']})" for v in summary["verdicts"]]
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
    cost = prov.get("cost", {}).get("total seconds")
    lines.append("")
    words = shlex.split(prov.get("command", "icl-heads analyze"))
    if "--out" in words:  # the run's own folder says nothing to a reader
        words[words.index("--out") + 1] = "OUT"
    lines.append(f"From `{shlex.join(words)}` ({versions}; {cost} s on 2 busy CPU cores).")
    work = summary.get("cost", {}).get("total")
    if work:
        lines.append(
            f"Model work (the cost ledger in `summary.json`): {work['passes']:,} forward passes over "
            f"{work['rows']:,} prompt rows, {work['layer_tokens']:,} layer×token evaluations."
        )
    return "\n".join(lines)


def current(text: str) -> str:
    """The block between the markers of a page's text."""
    return _marked_block.current(text, START, END)


def main(path: str) -> None:
    raw = Path(path).read_text(encoding="utf-8")
    summary = json.loads(raw)
    for file in FILES:
        text = file.read_text(encoding="utf-8")
        file.write_text(_marked_block.replace(text, START, END, block(summary)), encoding="utf-8")
    if Path(path).resolve() != SOURCE:
        SOURCE.write_text(raw, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
