"""Redraw the figures in ``docs/figures/`` from the bundled organism.

Run from the repository root (needs ``pip install -e '.[export]'``, which installs kaleido,
and a Chrome or Chromium on the PATH for the PNG export)::

    python scripts/make_doc_figures.py [--n 300] [--only heads,mechanism,bias,components]

The settings match ``docs/organism.md`` with fewer prompts, so the figures show the
same effects; the numbers quoted in the text come from the larger runs described
there. Existing figures are replaced (they are generated files).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import icl_heads as ih
from icl_heads.organism import HELDOUT_TEMPLATES
from icl_heads.plots.heads import plot_ablation_curve
from icl_heads.plots.mechanism import plot_auc_heatmap

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"


def save(fig, name: str, result=None) -> None:
    """Write ``fig`` as ``docs/figures/{name}.png``; print ``result``'s summary (the numbers the figure shows)."""
    fig.write_image(
        OUT / f"{name}.png", width=900, height=fig.layout.height or 520, scale=1.5
    )  # short heatmaps stay short
    print(f"  wrote docs/figures/{name}.png")
    if result is not None:
        for key, value in result.summary().items():
            print(f"    {key}: {value}")


def show(result, name: str):
    """Save ``result.plot()`` as ``name`` and print its summary; returns ``result``."""
    save(result.plot(), name, result)
    return result


def heads(model, n: int) -> tuple:
    task = ih.organism_task()
    prompts, held_out = task.prompts(n, 4, seed=0), task.prompts(n, 4, seed=1)
    found = ih.find_in_context_heads(model, prompts, also=("dla", "ablation"), verify_prompts=held_out)
    save(found.heatmap(), "heads_logprob_increase", found)
    save(found.heatmap(method="ablation"), "heads_ablation")
    save(found.plot_verification(), "heads_verification")
    curve = ih.ablation_curve(model, held_out, found.score_table("ablation"), ks=(1, 2, 4, 8), n_random=10)
    save(plot_ablation_curve(curve), "heads_ablation_curve")
    print(curve.to_string(index=False))
    return found, held_out


def mechanism(model, found, held_out) -> None:
    show(ih.ov_label_features(model, held_out, found.heads), "mechanism_ov")
    show(ih.qk_label_attention(model, held_out, found.heads), "mechanism_qk")
    towers = ih.two_tower_test(model, held_out)
    save(plot_auc_heatmap(towers), "mechanism_two_tower_auc", towers)
    show(ih.flip_analysis(model, held_out, heads=found.heads, resample_demos=True), "mechanism_flip")


def bias(model) -> None:
    """The settings of docs/organism.md: 1,000 test prompts, 400 tuning prompts (the recency spread needs them)."""
    task = ih.organism_task(template=HELDOUT_TEMPLATES[1], max_words=6, noise_rate=0.3)
    show(ih.majority_bias(model, task, n=1000, seed=100), "bias_majority")
    show(ih.recency_bias(model, task, shots=8, n=1000, seed=100), "bias_recency")
    kw = {"n": 1000, "seed": 100, "tune_n": 400, "tune_seed": 200}
    show(ih.correct_majority_bias(model, task, method="count", **kw), "bias_majority_corrected")
    show(ih.correct_majority_bias(model, task, method="ov", **kw), "bias_majority_ov")
    show(ih.correct_recency_bias(model, task, method="prior", **kw), "bias_recency_corrected")
    show(ih.correct_recency_bias(model, task, method="unrotated", **kw), "bias_recency_unrotated")


def components(model, n: int) -> None:
    task = ih.organism_task(max_words=6, noise_rate=0.2, seed=1000).with_template(HELDOUT_TEMPLATES[0])
    dec = ih.decompose(model, task.prompts(n, 4, seed=1000))
    save(dec.heatmap(), "components_heatmap", dec)
    save(dec.plot_accuracy(), "components_accuracy")
    stability = ih.component_stability(model, task, templates=HELDOUT_TEMPLATES, n=n // 2)
    save(stability.plot("template"), "components_stability", stability)
    show(ih.compare_reweighting(model, task, seeds=(1000, 1001, 1002), n_test=n // 2), "components_reweighting")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300, help="prompts per measurement (default: 300)")
    parser.add_argument("--only", default="heads,mechanism,bias,components", help="comma-separated parts")
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",")}
    torch.manual_seed(0)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    model = ih.load_model("organism")
    start = time.time()
    if parts & {"heads", "mechanism"}:
        found, held_out = heads(model, args.n)
        if "mechanism" in parts:
            mechanism(model, found, held_out)
    if "bias" in parts:
        bias(model)
    if "components" in parts:
        components(model, args.n)
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
