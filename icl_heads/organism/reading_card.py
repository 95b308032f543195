"""Measure where the organisms read, how many heads carry ICL, and what the bias corrections achieve.

Usage::

    python -m icl_heads.organism.reading_card --model organism-slot [--out FILE.json]

Every number of the "Where heads read" and "Bias corrections" sections of
``docs/organism.md`` comes from this script (fixed seeds; tuning and test prompts disjoint).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import icl_heads as ih
from icl_heads.organism import organism_task

#: Corrections measured: (kind, method, grid).
CORRECTIONS = (
    ("majority", "count", (0.0, 1.0, 2.0, 4.0, 8.0)),
    ("majority", "ov", (0.0, 0.3, 1.0, 3.0)),
    ("recency", "prior", (0.0, 1.0, 2.0, 4.0)),
    ("recency", "unrotated", (0.0, 0.5, 1.0)),
)


def reading_card(model: Any = "organism", *, n: int = 300, tune_n: int = 150, methods=None) -> dict[str, Any]:
    """The measurements as a JSON-ready dict (see the module docstring)."""
    layout = "slot" if model == "organism-slot" else "separator"
    if isinstance(model, str):
        model = ih.load_model(model)
    clean = organism_task(layout=layout, seed=100)
    hard = organism_task(layout=layout, seed=3, max_words=6, noise_rate=0.3)
    out: dict[str, Any] = {"layout": layout}
    acc = ih.icl_accuracy(model, clean.prompts(n, 4, seed=104))
    out["accuracy_4shot"] = {"accuracy": acc.accuracy, "ci": list(acc.ci)}
    found = ih.find_in_context_heads(
        model, clean.prompts(200, 4, seed=160), verify_prompts=clean.prompts(200, 4, seed=161), n_random=10
    )
    out["in_context_heads"] = found.names
    rr = ih.reading_roles(model, clean.prompts(200, 4, seed=162))
    reads = rr.reads()
    out["reads"] = reads.to_dict(orient="records")
    out["reading_df"] = rr.df.to_dict(orient="records")
    count = ih.heads_needed(model, clean.prompts(100, 4, seed=163), found, margin=0.05, max_k=10, n_random=10)
    out["heads_needed"] = {**{k: v for k, v in count.summary().items()}, "df": count.df.to_dict(orient="records")}
    heads = found.heads
    out["corrections"] = {}
    for kind, method, grid in CORRECTIONS:
        if methods is not None and method not in methods:
            continue
        fn = ih.correct_majority_bias if kind == "majority" else ih.correct_recency_bias
        shots = 4 if kind == "majority" else 8
        res = fn(
            model, hard, method=method, heads=heads, shots=shots, n=n, tune_n=tune_n, grid=grid, seed=0, tune_seed=1
        )
        out["corrections"][f"{kind}:{method}"] = {
            **{k: v for k, v in res.summary().items()},
            "df": res.df.to_dict(orient="records"),
            "tuning": res.tuning.to_dict(orient="records"),
        }
        for read_at in ("label",) if kind == "majority" and method == "count" and layout == "slot" else ():
            forced = fn(
                model, hard, method=method, heads=heads, shots=shots, n=n, tune_n=tune_n, grid=grid, seed=0,
                tune_seed=1, read_at=read_at,
            )  # fmt: skip
            out["corrections"][f"{kind}:{method}:read_at={read_at}"] = dict(forced.summary().items())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure where the organisms read and the bias corrections.")
    parser.add_argument("--model", default="organism", help="'organism', 'organism-slot' or a checkpoint folder")
    parser.add_argument("--n", type=int, default=300, help="test prompts per measurement")
    parser.add_argument("--tune-n", type=int, default=150, help="tuning prompts per correction")
    parser.add_argument("--methods", nargs="*", help="only these corrections (count, ov, prior, unrotated)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = json.dumps(
        reading_card(args.model, n=args.n, tune_n=args.tune_n, methods=args.methods), indent=2, default=str
    )
    if args.out:
        if args.out.exists():
            parser.error(f"{args.out} exists; choose a new file so nothing is overwritten")
        args.out.write_text(result)
    else:
        print(result)


if __name__ == "__main__":
    main()
