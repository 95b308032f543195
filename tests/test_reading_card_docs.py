"""docs/organism.md's bias-correction numbers are generated from the reading cards and follow the declared rule."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "docs" / "data").glob("reading_card_*.json"))


def _load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script():
    return _load("scripts/update_reading_card_docs.py")


_card = _load("scripts/organism/reading_card.py")
CORRECTIONS, SETTINGS = _card.CORRECTIONS, _card.SETTINGS


def test_both_organisms_have_a_card():
    assert {json.loads(p.read_text())["model"] for p in CARDS} == {"organism", "organism-slot"}


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_docs_block_is_generated_from_the_card(path):
    card = json.loads(path.read_text())
    doc = (ROOT / "docs" / "organism.md").read_text()
    start, end = f"<!-- reading-card:{card['model']}:start -->", f"<!-- reading-card:{card['model']}:end -->"
    assert _load("scripts/_marked_block.py").current(doc, start, end) == _script().block(card), (
        "docs/organism.md is out of step with the card; run scripts/update_reading_card_docs.py"
    )


@pytest.mark.parametrize("path", CARDS, ids=lambda p: p.stem)
def test_setting_is_the_first_screened_one_with_the_bias(path):
    card = json.loads(path.read_text())
    order = [s[0] for s in SETTINGS]
    for kind, sel in card["settings"].items():
        names = [row["setting"] for row in sel["screened"]]
        assert names == order[: len(names)], "screened out of the declared order"
        shows = [row["ci"][0] > 0 for row in sel["screened"]]
        if sel["chosen"] is None:
            assert not any(shows) and len(names) == len(order)
        else:
            assert shows[-1] and not any(shows[:-1]) and names[-1] == sel["chosen"]
        # every correction of this bias ran on the chosen setting, tuned and tested on other prompts
        for method in (m for k, m, _ in CORRECTIONS if k == kind):
            entry = card["corrections"][f"{kind}:{method}"]
            assert entry.get("setting") == sel["chosen"] or "not applicable" in entry
