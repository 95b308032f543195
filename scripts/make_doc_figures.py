"""Redraw the figures in ``docs/figures/`` from the bundled organism.

Run from the repository root (needs ``pip install kaleido`` and a Chrome or Chromium
on the PATH for the PNG export)::

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
from icl_heads.plots.heads import ablation_curve_figure
from icl_heads.plots.mechanism import plot_auc_heatmap

OUT = Path(__file__).resolve().parent.parent / "docs" / "figures"


def save(fig, name: str) -> None:
    fig.write_image(OUT / f"{name}.png", width=900, height=520, scale=1.5)
    print(f"  wrote docs/figures/{name}.png")


def heads(model, n: int) -> tuple:
    task = ih.organism_task()
    prompts, held_out = task.prompts(n, 4, seed=0), task.prompts(n, 4, seed=1)
    found = ih.find_in_context_heads(model, prompts, also=("dla", "ablation"), verify_prompts=held_out)
    save(found.heatmap(), "heads_logprob_increase")
    save(found.heatmap(method="ablation"), "heads_ablation")
    save(found.plot_verification(), "heads_verification")
    curve = ih.ablation_curve(model, held_out, found.score_table("ablation"), ks=(1, 2, 4, 8), n_random=10)
    save(ablation_curve_figure(curve), "heads_ablation_curve")
    return found, held_out


def mechanism(model, found, held_out) -> None:
    save(ih.ov_label_features(model, held_out, found.heads).plot(), "mechanism_ov")
    save(ih.qk_label_attention(model, held_out, found.heads).plot(), "mechanism_qk")
    save(plot_auc_heatmap(ih.two_tower_test(model, held_out)), "mechanism_two_tower_auc")
    save(ih.flip_analysis(model, held_out, heads=found.heads, resample_demos=True).plot(), "mechanism_flip")


def bias(model, n: int) -> None:
    task = ih.organism_task(template=HELDOUT_TEMPLATES[1], max_words=6, noise_rate=0.3)
    save(ih.majority_bias(model, task, n=n, seed=100).plot(), "bias_majority")
    save(ih.recency_bias(model, task, n=n, seed=101).plot(), "bias_recency")
    kw = {"n": n, "seed": 100, "tune_n": n // 2, "tune_seed": 200}
    save(ih.correct_majority_bias(model, task, method="count", **kw).plot(), "bias_majority_corrected")
    save(ih.correct_recency_bias(model, task, method="prior", **kw).plot(), "bias_recency_corrected")


def components(model, n: int) -> None:
    task = ih.organism_task(max_words=6, noise_rate=0.2, seed=1000).with_template(HELDOUT_TEMPLATES[0])
    dec = ih.decompose(model, task.prompts(n, 4, seed=1000))
    save(dec.heatmap(), "components_heatmap")
    save(dec.plot_accuracy(), "components_accuracy")
    stability = ih.component_stability(model, task, templates=HELDOUT_TEMPLATES, n=n // 2)
    save(stability.scatter("template"), "components_stability")
    cmp = ih.compare_reweighting(model, task, seeds=(1000, 1001, 1002), n_test=n // 2)
    save(cmp.plot(), "components_reweighting")


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
        bias(model, args.n)
    if "components" in parts:
        components(model, args.n)
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
