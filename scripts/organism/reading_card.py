"""Measure where the organisms read, how many heads carry ICL, and what the bias corrections achieve.

Usage::

    python scripts/organism/reading_card.py --model organism-slot --out FILE.json
    python scripts/update_reading_card_docs.py FILE.json ...   # writes the numbers into docs/organism.md

The bias corrections are measured in a setting where the bias exists, chosen by a rule
fixed before any correction was run (:data:`SETTINGS`, :func:`choose_setting`): the
candidate settings are screened in a declared order on *selection* prompts (their own
seeds), and each bias uses the first setting whose 95% interval lies above zero. Only
then are the corrections tuned (``tune_seed``) and measured (``seed``) on other prompts.
Correction results never feed back into the choice. Fixed seeds throughout.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import icl_heads as ih
from icl_heads.organism import HELDOUT_SLOT_TEMPLATES, HELDOUT_TEMPLATES, organism_task

#: Corrections measured: (kind, method, grid), grids fixed before any run of this setting.
CORRECTIONS = (
    ("majority", "count", (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)),
    ("majority", "ov", (0.0, 0.3, 1.0, 3.0, 10.0)),
    ("recency", "prior", (0.0, 1.0, 2.0, 4.0, 8.0)),
    ("recency", "unrotated", (0.0, 0.25, 0.5, 0.75, 1.0)),
)
#: Candidate settings in the declared screening order: (name, template, max_words, noise_rate,
#: {bias: shots}). ``"heldout"`` is the command line's bias setting (its held-out template;
#: for the slot layout the held-out slot template of the same form), then more
#: demonstrations (blocks of 5), then noisier sentences, then the training template.
SETTINGS = (
    ("heldout", "heldout", 6, 0.3, {"majority": 4, "recency": 8}),
    ("heldout-10", "heldout", 6, 0.3, {"majority": 4, "recency": 10}),
    ("heldout-noise0.4", "heldout", 6, 0.4, {"majority": 4, "recency": 8}),
    ("train", "train", 6, 0.3, {"majority": 4, "recency": 8}),
)
#: Seeds: sentences of the task, selection prompts (majority, recency), test and tuning prompts.
TASK_SEED, SELECT_SEEDS, TEST_SEED, TUNE_SEED = 3, {"majority": 50, "recency": 51}, 0, 1


def setting_task(layout: str, template: str, max_words: int, noise_rate: float) -> Any:
    """The task of one candidate setting (``template``: ``"heldout"`` or ``"train"``)."""
    held = HELDOUT_SLOT_TEMPLATES[0] if layout == "slot" else HELDOUT_TEMPLATES[1]
    chosen = held if template == "heldout" else None
    return organism_task(layout=layout, template=chosen, max_words=max_words, noise_rate=noise_rate, seed=TASK_SEED)


def choose_setting(model: Any, layout: str, kind: str, *, n: int = 300) -> dict[str, Any]:
    """Screen :data:`SETTINGS` in order for ``kind`` ("majority" or "recency") on selection prompts.

    Returns:
        ``{"chosen": name or None, "screened": [...]}``: each screened setting's bias (the
        excess majority predictions, or the block gap) with its 95% interval; the first
        whose interval lies above zero is chosen (None: the bias shows in no candidate).
    """
    screened, chosen = [], None
    for name, template, max_words, noise, shots in SETTINGS:
        task = setting_task(layout, template, max_words, noise)
        seed = SELECT_SEEDS[kind]
        if kind == "majority":
            res = ih.majority_bias(model, task, shots=shots[kind], n=n, seed=seed)
            bias, ci = res.bias, res.bias.ci
        else:
            res = ih.recency_bias(model, task, shots=shots[kind], n=n, seed=seed)
            bias, ci = res.block_gap, res.block_gap.ci
        row = {"setting": name, "template": template, "max_words": max_words, "noise_rate": noise}
        screened.append({**row, "shots": shots[kind], "bias": float(bias), "ci": [float(c) for c in ci]})
        if float(ci[0]) > 0:
            chosen = name
            break
    return {"chosen": chosen, "n": n, "seed": SELECT_SEEDS[kind], "screened": screened}


def _corrections(model: Any, layout: str, heads, choice: dict, n: int, tune_n: int, methods) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, method, grid in CORRECTIONS:
        if methods is not None and method not in methods:
            continue
        if choice[kind]["chosen"] is None:
            out[f"{kind}:{method}"] = {"not applicable": f"no candidate setting shows a {kind} bias"}
            continue
        name, template, max_words, noise, shots = next(s for s in SETTINGS if s[0] == choice[kind]["chosen"])
        task = setting_task(layout, template, max_words, noise)
        fn = ih.correct_majority_bias if kind == "majority" else ih.correct_recency_bias
        kw = dict(heads=heads, shots=shots[kind], n=n, tune_n=tune_n, grid=grid, seed=TEST_SEED, tune_seed=TUNE_SEED)
        res = fn(model, task, method=method, **kw)
        out[f"{kind}:{method}"] = {
            "setting": name,
            **res.summary(),
            "df": res.df.to_dict(orient="records"),
            "tuning": res.tuning.to_dict(orient="records"),
        }
        if kind == "majority" and method == "count" and layout == "slot":
            forced = fn(model, task, method=method, read_at="label", **kw)
            out[f"{kind}:{method}:read_at=label"] = {"setting": name, **forced.summary()}
    return out


def reading_card(model: Any = "organism", *, n: int = 500, tune_n: int = 300, methods=None) -> dict[str, Any]:
    """The measurements as a JSON-ready dict (see the module docstring)."""
    name = model if isinstance(model, str) else getattr(model, "name", "model")
    layout = "slot" if model == "organism-slot" else "separator"
    if isinstance(model, str):
        model = ih.load_model(model)
    clean = organism_task(layout=layout, seed=100)
    out: dict[str, Any] = {"model": name, "layout": layout, "n": n, "tune_n": tune_n}
    acc = ih.icl_accuracy(model, clean.prompts(n, 4, seed=104))
    out["accuracy_4shot"] = {"accuracy": acc.accuracy, "ci": list(acc.ci)}
    found = ih.find_in_context_heads(
        model, clean.prompts(200, 4, seed=160), verify_prompts=clean.prompts(200, 4, seed=161), n_random=10
    )
    out["in_context_heads"] = found.names
    rr = ih.reading_roles(model, clean.prompts(200, 4, seed=162))
    out["reads"] = rr.reads().to_dict(orient="records")
    out["reading_df"] = rr.df.to_dict(orient="records")
    count = ih.heads_needed(model, clean.prompts(100, 4, seed=163), found, margin=0.05, max_k=10, n_random=10)
    out["heads_needed"] = {**dict(count.summary().items()), "df": count.df.to_dict(orient="records")}
    out["settings"] = {kind: choose_setting(model, layout, kind) for kind in ("majority", "recency")}
    out["corrections"] = _corrections(model, layout, found.heads, out["settings"], n, tune_n, methods)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure where the organisms read and the bias corrections.")
    parser.add_argument("--model", default="organism", help="'organism', 'organism-slot' or a checkpoint folder")
    parser.add_argument("--n", type=int, default=500, help="test prompts per measurement")
    parser.add_argument("--tune-n", type=int, default=300, help="tuning prompts per correction")
    parser.add_argument("--methods", nargs="*", help="only these corrections (count, ov, prior, unrotated)")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
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
