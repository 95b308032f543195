"""Write the bias-correction numbers of the reading cards into docs/organism.md between markers.

The numbers are generated from the JSON of ``python scripts/organism/reading_card.py``,
never copied by hand. Each card fills the block between
``<!-- reading-card:MODEL:start -->`` and ``<!-- reading-card:MODEL:end -->``.

Usage::

    python scripts/organism/reading_card.py --model organism --out docs/data/reading_card_organism.json
    python scripts/organism/reading_card.py --model organism-slot --out docs/data/reading_card_organism-slot.json
    python scripts/update_reading_card_docs.py docs/data/reading_card_organism.json docs/data/reading_card_organism-slot.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _marked_block

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "organism.md"
#: The paper's average reductions (Yu & Ananiadou 2024), the must-hold thresholds.
PAPER = {"majority": 22.0, "recency": 17.0}
MEASURE = {"majority": "excess majority-label predictions", "recency": "block gap (query's class block last − first)"}


def _ci(ci, fmt: str = "{:.3f}") -> str:
    return "[" + ", ".join(fmt.format(c) for c in ci) + "]"


def _screening(card: dict) -> list[str]:
    lines = ["| bias | setting (screened in order) | template | shots | bias on selection prompts [95% CI] |"]
    lines.append("|---|---|---|---|---|")
    for kind, sel in card["settings"].items():
        for row in sel["screened"]:
            chosen = " **(chosen)**" if row["setting"] == sel["chosen"] else ""
            lines.append(
                f"| {kind} | {row['setting']}{chosen} | {row['template']}, ≤ {row['max_words']} words, noise "
                f"{row['noise_rate']} | {row['shots']} | {row['bias']:.3f} {_ci(row['ci'])} |"
            )
        if sel["chosen"] is None:
            lines.append(f"| {kind} | none of the candidates shows the bias: not applicable | | | |")
    return lines


def _flags(entry: dict) -> str:
    warns = [v for k, v in entry.items() if k.startswith("WARNING")]
    return ", ".join(w.split(":", 1)[0] for w in warns) or "—"


def _at_grid_edge(entry: dict) -> bool:
    """Whether the tuned value is the largest of its grid (a larger one might have done more)."""
    tuning = entry.get("tuning") or []
    chosen = [r["value"] for r in tuning if r["chosen"]]
    return bool(chosen) and chosen[0] > 0 and chosen[0] == max(r["value"] for r in tuning)


def _corrections(card: dict) -> list[str]:
    lines = [
        "| bias | correction (tuned value) | read at | bias before [95% CI] | after [95% CI] | reduction [95% CI] "
        "| balanced accuracy (change [95% CI]) | warnings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, e in card["corrections"].items():
        kind = key.split(":")[0]
        if "not applicable" in e:
            lines.append(f"| {kind} | {key.split(':')[1]}: not applicable ({e['not applicable']}) | | | | | | |")
            continue
        edge = " (the largest searched)" if _at_grid_edge(e) else ""
        lines.append(
            f"| {kind} ({e['setting']}) | {e['correction']}{edge} | {e['read at']} | {e['bias before']:.3f} "
            f"{_ci(e['before 95% CI'])} | {e['bias after']:.3f} {_ci(e['after 95% CI'])} | **{e['reduction %']:.0f}%** "
            f"{_ci(e['reduction 95% CI'], '{:.0f}')} | {e['balanced accuracy before']:.3f} → "
            f"{e['balanced accuracy after']:.3f} ({_ci(e['accuracy change 95% CI'])}) | {_flags(e)} |"
        )
    return lines


def _must_hold(card: dict) -> list[str]:
    lines = []
    for kind, paper in PAPER.items():
        rows = {
            k: e
            for k, e in card["corrections"].items()
            if k.startswith(kind + ":") and "read_at=" not in k and "not applicable" not in e
        }
        if not rows:
            lines.append(f"- **{kind} ≥ {paper:.0f}%: not applicable** (no candidate setting shows a {kind} bias).")
            continue
        parts = []
        for k, e in rows.items():
            drop_ok = e["balanced accuracy after"] - e["balanced accuracy before"] >= -0.01
            low, high = e["reduction 95% CI"]
            state = (
                "met, interval above it" if low >= paper and drop_ok
                else "met (point estimate; the interval reaches below it)" if e["reduction %"] >= paper and drop_ok
                else "not met"
            )  # fmt: skip
            parts.append(f"{k.split(':')[1]} {e['reduction %']:.0f}% [{low:.0f}, {high:.0f}]: {state}")
        lines.append(f"- **{kind} ≥ {paper:.0f}%** (the paper's figure): " + "; ".join(parts) + ".")
    return lines


def block(card: dict) -> str:
    """The Markdown of one card: setting screening, corrections, and the must-hold check."""
    first = next(iter(card["corrections"].values()), {})
    acc = card["accuracy_4shot"]
    lines = [
        f"4-shot accuracy on {card['n']} clean prompts: {acc['accuracy']:.3f} {_ci(acc['ci'])}. "
        f"Heads corrected: {first.get('heads', '—')} (the in-context heads found on clean prompts). "
        f"Test prompts: {card['n']} (seed 0); tuning prompts: {card['tune_n']} (seed 1; the positional prior "
        "is fitted on seed 2); selection prompts: 300 (seeds 50 and 51). Balanced accuracy may drop ≤ 1 point "
        "while tuning.",
        "",
        *_screening(card),
        "",
        *_corrections(card),
        "",
        *_must_hold(card),
    ]
    return "\n".join(lines)


def main(paths: list[str]) -> None:
    text = DOC.read_text(encoding="utf-8")
    for path in paths:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
        start, end = f"<!-- reading-card:{card['model']}:start -->", f"<!-- reading-card:{card['model']}:end -->"
        text = _marked_block.replace(text, start, end, block(card))
    DOC.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
