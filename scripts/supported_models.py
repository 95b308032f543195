"""Regenerate the supported-models table in docs/models.md from the architecture matrix.

Usage::

    python scripts/supported_models.py            # rewrites the table between the markers

For every family of :mod:`icl_heads.testing` it builds the tiny random checkpoint
the tests use, loads it with ``load_model`` and records the faithfulness check: the
largest relative error of the identities, and what is modelled specially.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.models import transformer_lens_major
from icl_heads.testing import FAMILIES, QUIRKS, tiny_family_dir

DOC = Path(__file__).resolve().parents[1] / "docs" / "models.md"
BEGIN, END = "<!-- supported-models:begin -->", "<!-- supported-models:end -->"


def row(family: str, root: Path) -> str:
    path = tiny_family_dir(family, root / family)
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    model = ih.load_model(path)
    tokens = torch.randint(0, 500, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logit_err = float((hf(tokens).logits - model(tokens)).abs().max())
    report = ih.check_faithfulness(model)
    access = ModelAccess(model)
    worst = float(report.df.relative_error.max())
    notes = "; ".join(report.notes) or "—"
    status = "exact" if report.passed else "refused"
    return (
        f"| {family} | {access.architecture} | {QUIRKS[family]} | {status} | {logit_err:.1e} | {worst:.1e} | {notes} |"
    )


def main() -> int:
    torch.set_num_threads(1)
    if transformer_lens_major() < 4:
        print("run this with TransformerLens 4 (the full matrix)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row(f, Path(tmp)) for f in FAMILIES]
    table = "\n".join(
        [
            "| family | architecture | exercises | analyses | logit error vs Hugging Face | worst identity error "
            "(relative) | modelled specially |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = DOC.read_text()
    new = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), BEGIN + "\n" + table + "\n" + END, text, flags=re.S)
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
