"""Measure the organism's model-card numbers: accuracy by shots and template, and its in-context heads.

Usage::

    python scripts/organism/evaluate.py [--model organism] [--n 500] [--out FILE.json]

Prompts are freshly sampled with fixed seeds, none used in training. The model card in
``docs/organism.md`` (the ``organism-card`` block) is written from this JSON by
``scripts/update_organism_card_docs.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import icl_heads as ih
from icl_heads.options import RunOptions, run_options
from icl_heads.organism import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, organism_task


def evaluate_organism(
    model: Any = "organism", *, n: int = 500, seed: int = 100, options: RunOptions | None = None
) -> dict[str, Any]:
    """The model-card measurements, as a JSON-ready dict.

    Args:
        model: ``"organism"``, a checkpoint folder or a loaded model.
        n: prompts per measurement.
        seed: seed of the prompts.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).
    """
    options = run_options(options)
    if isinstance(model, str):
        model = ih.load_model(model)
    task = organism_task(seed=seed)
    out: dict[str, Any] = {"n_prompts": n}

    def acc(prompts) -> dict[str, float]:
        r = ih.icl_accuracy(model, prompts, options=run_options(options, progress=False))
        lo, hi = r.ci
        return {"accuracy": r.accuracy, "ci_low": lo, "ci_high": hi, "strict_accuracy": r.strict_accuracy}

    out["by_shots"] = {shots: acc(task.prompts(n, shots, seed=seed + shots)) for shots in (0, 1, 2, 4, 8)}
    out["by_template"] = {
        t: {"held_out": t in HELDOUT_TEMPLATES, **acc(task.with_template(t).prompts(n, 4, seed=seed + 50))}
        for t in (*TRAIN_TEMPLATES, *HELDOUT_TEMPLATES)
    }
    scoring = task.prompts(n, 4, seed=seed + 60)
    held_out = task.prompts(n, 4, seed=seed + 61)
    found = ih.find_in_context_heads(
        model, scoring, also=("dla", "ablation"), verify_prompts=held_out, n_random=30, options=options
    )
    v = found.verification.set_index("condition")
    out["in_context_heads"] = {
        "heads": [f"L{a}H{b}" for a, b in found.heads],
        "heads_by_label": {w: [f"L{a}H{b}" for a, b in hs] for w, hs in found.heads_by_label.items()},
        "verification": found.verification.to_dict(orient="records"),
        "accuracy_found_ablated": float(v.loc["found heads", "accuracy"]),
        "accuracy_random_mean": float(v.loc["random heads", "accuracy"]),
        "random_95": [float(v.loc["random heads", "ci_low"]), float(v.loc["random heads", "ci_high"])],
    }
    from scipy.stats import spearmanr

    abl = found.scores["ablation"].flatten().numpy()
    out["spearman_vs_ablation"] = {
        m: float(spearmanr(found.scores[m].flatten().numpy(), abl).statistic) for m in ("logprob_increase", "dla")
    }
    curves = {
        m: ih.ablation_curve(model, held_out, found.scores[m], ks=(1, 2, 3, 4, 8), n_random=20).to_dict(
            orient="records"
        )
        for m in ("logprob_increase", "ablation")
    }
    out["ablation_curve"] = curves
    by_ablation = ih.find_in_context_heads(
        model, scoring, method="ablation", also=(), k=1, verify_prompts=held_out, n_random=30
    )
    out["bottleneck_head"] = {
        "heads": by_ablation.names,
        "verification": by_ablation.verification.to_dict(orient="records"),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure the organism's model-card numbers.")
    parser.add_argument("--model", default="organism", help="'organism' or a checkpoint folder")
    parser.add_argument("--n", type=int, default=500, help="prompts per measurement")
    parser.add_argument("--out", type=Path, help="write the JSON here (default: print it)")
    args = parser.parse_args(argv)
    result = json.dumps(
        evaluate_organism(args.model, n=args.n, options=RunOptions(progress=True)), indent=2, default=str
    )
    if args.out:
        if args.out.exists():
            parser.error(f"{args.out} exists; choose a new file so nothing is overwritten")
        args.out.write_text(result)
    else:
        print(result)


if __name__ == "__main__":
    main()
