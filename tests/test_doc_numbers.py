"""One source for every number: pages quote this package's results only through generated text.

README.md, docs/*.md and the notebooks' markdown cells may show a decimal number or a
percentage only

- inside a generated block (``<!-- NAME:start -->`` ... ``<!-- NAME:end -->``, or ``begin``/``end``),
  written by a script from committed data and checked against it (``GENERATED_BLOCKS``),
- inside code (fenced blocks, inline code, a notebook's code cells and their printed output),
- in a page written whole by a script (``GENERATED_PAGES``),
- or when it matches ``ALLOWED``: figures that are not results of this package (the papers'
  published numbers, confidence levels, parameters and thresholds, versions, hardware).

Any other number is one somebody copied by hand from a run, and it goes stale when the run
changes: the test names its file and line.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Pages written whole by a script from one run; their numbers come from that run.
GENERATED_PAGES = {"docs/validation.md": "scripts/recovery_page.py"}

# Generated blocks, by marker name, and the test that re-renders each from its committed source.
GENERATED_BLOCKS = {
    "verdicts": "tests/test_doc_numbers.py (from docs/data/summary_organism.json)",
    "organism-card": "tests/test_doc_numbers.py (from docs/data/organism_card.json)",
    "reading-card:organism": "tests/test_reading_card_docs.py (from docs/data/reading_card_organism.json)",
    "reading-card:organism-slot": "tests/test_reading_card_docs.py (from docs/data/reading_card_organism-slot.json)",
    "supported-models": "tests/test_architectures.py (from the tiny checkpoints of every family)",
    "reproduce-estimate": "tests/test_reproduce.py (from docs/data/reproduce_estimate.json)",
}

# Pages that still quote hand-copied measurements. Their numbers are not yet generated;
# strict xfail keeps that visible and fails once a page is clean, so it must then leave
# this list.
PENDING: dict[str, str] = {}

# Numbers that are not results of this package, each with the words that make it so.
ALLOWED = [
    # the papers' published figures (Yu & Ananiadou 2024; Chang, Thomason & Jia 2024)
    r"\b(87\.6|24\.4|61\.2|66\.6|63\.8|67\.7|69\.8)%",
    r"−22% / −17%",
    r"reports 22% \(majority\) and 17% \(recency\)",
    r"\+6\.0 points on Llama-2-7B",
    # confidence levels and quantiles of intervals
    r"\b95%",
    r"\[5%, 95%\]",
    # the paper's head-selection parameter
    r"top[- ]1%",
    # thresholds, margins and hyperparameters the methods state
    r"within 0\.05 of chance",
    r"on at least 90% of prompts",
    r"\(0\.5 with two labels\)",
    # versions and hardware
    r"Python ≥ 3\.10",
    r"TransformerLens 3\.9",
    r"\b\d+(\.\d+)? GB",
]

# Per page: the organism's recipe (the data mix and optimiser settings of
# scripts/organism/train.py and the checkpoint's size) is a setting, not a measurement.
PAGE_ALLOWED = {
    "docs/organism.md": [
        r"\d+(\.\d+)? (M parameters|MB)",
        r"weight decay 0\.01",
        r"drawn from the topic \(50%\)",
        r"probability 10% \(0–20% in training\)",
        r"\(50%, then (75% after 40% of training|25%)\)",
        r"\(75%\) or 3 classes, balanced \(45%\), i\.i\.d\. \(40%\) or in label blocks \(15%\)",
        r"with 30% recall",
    ],
    # the methods' stated thresholds, margins (the verdict rules' constants) and hyperparameters
    "docs/methods.md": [
        r"^least 80% of it",
        r"less than\s+\(20%\) there",  # `min_read_share` (20%), inline code removed
        r"\(lr 0\.05",
        r"\| (0\.10|0\.05|10%) \|$",
        r"AUC minus 0\.5",
        r"level 1 − 0\.05/29",
        r"in at most 5% of them",
        r"^least 80%, and with no effect",
        r"Spearman ≥ 0\.9 over all heads",  # the attribution must-hold's threshold
    ],
}

NUMBER = re.compile(r"(?<![\w./])\d+\.\d+%?|(?<![\w./])\d+%")
MARKER = re.compile(r"<!-- ([\w:-]+):(start|begin|end) -->")


def _pages() -> list[tuple[str, list[tuple[str, str]]]]:
    """(name, [(where, text)]) for every page whose prose is checked."""
    pages = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        rel = path.relative_to(ROOT).as_posix()
        if rel not in GENERATED_PAGES:
            pages.append((rel, [(f"{rel}:{i}", line) for i, line in enumerate(path.read_text().splitlines(), 1)]))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        rel = path.relative_to(ROOT).as_posix()
        lines = []
        for c, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                text = "".join(cell["source"])
                lines += [(f"{rel} cell {c} line {i}", line) for i, line in enumerate(text.splitlines(), 1)]
        pages.append((rel, lines))
    return pages


def quoted_numbers(lines: list[tuple[str, str]], allowed: tuple[str, ...] = ()) -> list[str]:
    """'where: number | line' for every number in prose outside generated blocks, code, ALLOWED and ``allowed``."""
    found, fenced, block = [], False, None
    for where, line in lines:
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
            continue
        marker = MARKER.fullmatch(stripped)
        if marker and not fenced:
            name, kind = marker.groups()
            if kind == "end":
                assert block == name, f"{where}: end of block {name!r} without its start"
                block = None
            else:
                assert name in GENERATED_BLOCKS, f"{where}: block {name!r} is not in GENERATED_BLOCKS"
                block = name
            continue
        if fenced or block:
            continue
        prose = re.sub(r"`[^`]*`", "", line)  # inline code
        prose = re.sub(r"\]\([^)]*\)", "]", prose)  # link targets
        prose = re.sub(r"arXiv:\d+\.\d+", "", prose)
        prose = re.sub(r"\$[^$]*\$", "", prose) if "$" in prose else prose  # formulas state methods
        for pattern in (*ALLOWED, *allowed):
            prose = re.sub(pattern, "", prose)
        found += [f"{where}: {m.group()} | {stripped[:100]}" for m in NUMBER.finditer(prose)]
    assert block is None, f"block {block!r} is not closed"
    return found


PAGES = _pages()


@pytest.mark.parametrize("name,lines", PAGES, ids=[name for name, _ in PAGES])
def test_prose_quotes_no_hand_copied_number(name, lines):
    found = quoted_numbers(lines, tuple(PAGE_ALLOWED.get(name, ())))
    assert not found, (
        f"{name} quotes numbers no generated text produced; put them in a generated block, let a code "
        "cell print them, or point to where they are computed:\n" + "\n".join(found)
    )


def test_the_scan_finds_a_hand_copied_number():
    lines = [("a.md:1", "Reweighting reaches 0.873 against 0.804 (ICL-4), a 12% gain, -0.5 drop; see `0.5`, L1H1.")]
    found = [f.split(" |")[0] for f in quoted_numbers(lines)]
    assert found == ["a.md:1: 0.873", "a.md:1: 0.804", "a.md:1: 12%", "a.md:1: 0.5"]
    assert quoted_numbers(lines, (r"reaches 0\.873",))[0].startswith("a.md:1: 0.804")
    fenced = [("b.md:1", "```"), ("b.md:2", "x = 0.873"), ("b.md:3", "```"), ("b.md:4", "the 95% interval")]
    assert quoted_numbers(fenced) == []
    generated = [("c.md:1", "<!-- verdicts:start -->"), ("c.md:2", "0.873"), ("c.md:3", "<!-- verdicts:end -->")]
    assert quoted_numbers(generated) == []
    with pytest.raises(AssertionError, match="not in GENERATED_BLOCKS"):
        quoted_numbers([("d.md:1", "<!-- numbers:start -->"), ("d.md:2", "0.873"), ("d.md:3", "<!-- numbers:end -->")])


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_script():
    return _script("update_readme_numbers")


@pytest.mark.parametrize("page", ["README.md", "docs/reproducing.md"])
def test_verdict_blocks_are_rendered_from_the_committed_summary(page):
    script = _readme_script()
    assert (ROOT / page) in script.FILES
    summary = json.loads(script.SOURCE.read_text(encoding="utf-8"))
    assert script.current((ROOT / page).read_text(encoding="utf-8")) == script.block(summary), (
        f"{page}'s verdicts are stale: run scripts/update_readme_numbers.py on the run's summary.json"
    )


def test_organism_card_block_is_rendered_from_the_committed_card():
    script = _script("update_organism_card_docs")
    card = json.loads(script.SOURCE.read_text(encoding="utf-8"))
    assert script.current(script.DOC.read_text(encoding="utf-8")) == script.block(card), (
        "docs/organism.md's model card is stale: run scripts/update_organism_card_docs.py on evaluate.py's JSON"
    )


def test_a_changed_summary_changes_the_block():
    script = _readme_script()
    summary = json.loads(script.SOURCE.read_text(encoding="utf-8"))
    before = script.block(summary)
    summary["verdicts"][0]["detail"] += " (changed)"
    assert script.block(summary) != before


def test_generated_pages_name_their_script():
    for page, script in GENERATED_PAGES.items():
        assert (ROOT / script).exists(), script
        assert page in (ROOT / script).read_text(), f"{script} does not say it writes {page}"


def test_pending_and_page_allowed_pages_exist():
    assert set(PAGE_ALLOWED) <= {name for name, _ in PAGES}
