"""Write the organism's model-card numbers into docs/organism.md between the ``organism-card`` markers.

The numbers are generated from the JSON of ``python scripts/organism/evaluate.py``, never
copied by hand; ``tests/test_doc_numbers.py`` re-renders the block from the committed JSON.

Usage::

    python scripts/organism/evaluate.py --out docs/data/organism_card.json
    python scripts/update_organism_card_docs.py docs/data/organism_card.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _marked_block

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "organism.md"
SOURCE = ROOT / "docs" / "data" / "organism_card.json"
START, END = "<!-- organism-card:start -->", "<!-- organism-card:end -->"


def _acc(row: dict) -> str:
    return f"{row['accuracy']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def block(card: dict) -> str:
    """The Markdown tables and lines of the model card."""
    n = card["n_prompts"]
    lines = [f"Accuracy by number of shots ({n} prompts per row, 95% intervals):", ""]
    lines += ["| shots | accuracy (label set) [95% CI] | strict (whole vocabulary) |", "|---|---|---|"]
    lines += [f"| {s} | {_acc(r)} | {r['strict_accuracy']:.3f} |" for s, r in card["by_shots"].items()]
    lines += ["", "By template (4 shots):", ""]
    lines += ["| template | seen in training | accuracy [95% CI] |", "|---|---|---|"]
    for template, r in card["by_template"].items():
        shown = template.replace("\n", "\\n").replace("|", "\\|")
        lines.append(f"| `{shown}` | {'no' if r['held_out'] else 'yes'} | {_acc(r)} |")
    heads = card["in_context_heads"]
    rho = card["spearman_vs_ablation"]
    lines += [
        "",
        f"- In-context heads (`logprob_increase`, top 1%): {', '.join(heads['heads'])}; ablating them gives "
        f"{heads['accuracy_found_ablated']:.3f}, random sets of the same size {heads['accuracy_random_mean']:.3f} "
        f"(95% of sets in [{heads['random_95'][0]:.3f}, {heads['random_95'][1]:.3f}]).",
    ]
    bottleneck = {r["condition"]: r for r in card["bottleneck_head"]["verification"]}
    found = bottleneck.get("found heads")
    if found:
        golds = "; ".join(f"{k.split('=')[1]}-gold {v:.3f}" for k, v in found.items() if k.startswith("accuracy gold="))
        lines.append(
            f"- Top head by `ablation`: {', '.join(card['bottleneck_head']['heads'])}; ablating it alone takes "
            f"4-shot accuracy from {bottleneck['none']['accuracy']:.3f} to {_acc(found)} ({golds})."
        )
    lines.append(
        "- Spearman ρ with `ablation` over all heads: "
        + ", ".join(f"{rho[m]:.2f} (`{m}`)" for m in ("logprob_increase", "dla"))
        + "."
    )
    lines += ["", "| heads ablated | top by `logprob_increase` | top by `ablation` | random (mean [95% CI]) |"]
    lines.append("|---|---|---|---|")
    curves = card["ablation_curve"]
    ks = sorted({r["k"] for r in curves["logprob_increase"]})
    for k in ks:
        row = {m: {r["kind"]: r for r in curves[m] if r["k"] == k} for m in curves}
        lines.append(
            f"| {k} | {row['logprob_increase']['found']['accuracy']:.3f} | {row['ablation']['found']['accuracy']:.3f} "
            f"| {_acc(row['logprob_increase']['random'])} |"
        )
    return "\n".join(lines)


def current(text: str) -> str:
    """The block between the markers of the page's text."""
    return _marked_block.current(text, START, END)


def main(path: str) -> None:
    raw = Path(path).read_text(encoding="utf-8")
    text = DOC.read_text(encoding="utf-8")
    DOC.write_text(_marked_block.replace(text, START, END, block(json.loads(raw))), encoding="utf-8")
    if Path(path).resolve() != SOURCE:
        SOURCE.write_text(raw, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
