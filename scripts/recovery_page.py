"""Write docs/validation.md ("What the methods recover") from one run of icl_heads.recovery.recovery_table.

Usage::

    python scripts/recovery_page.py [--out docs/validation.md] [--seeds 20]

Every number on the page comes from the run this script makes.
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

import torch

from icl_heads import __version__
from icl_heads.recovery import recovery_table
from icl_heads.validation import MODELS, WEAK_STRENGTH, ground_truth

INTRO = """# What the methods recover

Every analysis in icl_heads is exact on any model (the faithfulness identities hold to
1e-7), but exact is not right. This page scores the methods against models whose
in-context mechanism is **known by construction**: small GPT-2-style transformers with
hand-set weights (`icl_heads.validation`), loaded like any model with
`ih.load_model("validation:NAME")`, so the faithfulness check and every analysis run on
them unchanged. Their ground truth is data (`icl_heads.validation.ground_truth(name)`) and is
checked in `tests/test_validation.py` with raw TransformerLens hooks and explicit loops,
apart from the analyses judged here.

## How the models are built

The task (`icl_heads.validation.validation_task()`): one-word texts, ten sport and ten
food words, labels `foo`/`bar` in the template `{text} : {label}\\n`. The residual stream
is a set of named, mean-zero, orthonormal directions; every token has the same norm, so
layer norm only rescales. A word embeds its class (`cls_k`, and `cls_q` with a per-word
strength); no weight maps a class to a label, so the model must copy labels from the
demonstrations (swap the label words and it stays perfect). MLPs and every head not
named below write exactly zero.

* **Layer 0, movers** (L0H0, L0H1, identical, each half the signal): attend to the most
  recent word (a key for "is a word" plus a linear recency key) and copy its class to
  every position. Ablating one leaves the other enough, so no single mover matters.
* **The in-context head**: from the last position it attends to the label tokens whose
  moved class matches the query's (a large key for "is a label", a match term for the
  class) and writes its label's polarity to an `answer` direction that the unembedding
  reads as `foo` minus `bar`. Ablated, `foo` and `bar` tie: chance.
* **redundant**: two copies of that head, each writing the whole answer: either alone
  is enough. (`heads_needed`'s greedy search breaks accuracy ties by the gold label's
  probability, so it finds such a pair instead of the first head by index.)
* **after_label**: two more movers (L0H2, L0H3) copy the previous label's polarity to
  the newline after it; the in-context head's key is "is a newline" instead of "is a
  label", and its value reads the moved polarity there.
* **deep**: the in-context head L1H12 writes the label it found to a `relay` direction
  that no unembedding row reads; L2H3 uses it as its query and attends to the labels of
  that polarity, writing the answer. Layer 0 cannot hold the in-context head itself
  (a label and its text meet only after a mover), so the deep head sits in layer 1,
  one attention layer before the output.
* **majority**, **recency**: the sparse model with 4 of the 10 words of each class
  *weak* on the query side. For a weak query the class match barely moves the attention,
  so it follows the label counts (majority) or, in `recency`, a linear positional prior of
  0.1 per token added to the head's scores.

| model | planted heads | mechanism |
| --- | --- | --- |
"""

NOTES = """
## Reading the tables

* **Head scores**: each method of `ih.score_heads` (mean over {n} prompts) ranked against
  the planted heads: AUROC (planted against all other heads) and precision at the planted
  set's size, with the planted heads it recovers and misses, as InterpBench
  (arXiv 2407.14494) scores circuit discovery. A miss is a property of the method on that
  mechanism, not noise: the models are deterministic.
* **Head definitions**: the three scores of `compare_head_definitions` (the in-context
  score `logprob_increase`, the function-vector AIE on 32 prompts with shuffled labels,
  prefix matching on repeated random tokens), ranked against the planted heads the same
  way (the method column names the definition). Read them with the construction in mind.
  Every head that is not planted has no query or key weights and attends uniformly, so any
  head with peaked attention ranks first by prefix matching: a planted head does because it
  attends to the few label and class tokens a random sequence holds, not because it matches
  prefixes (no head is built to). The planted heads copy the label of the matching
  demonstration, a per-query answer: their mean output at the final position carries
  little, so their function-vector AIE is small (hundredths of probability at most), and
  where two heads each carry the whole answer, patching one into shuffled prompts restores
  almost nothing and the movers rank first. On `deep` the AIE, an intervention on the
  forward pass rather than a direct effect, finds L1H12, which the in-context score misses.
* **deep** is the case first-order methods cannot see: L1H12 writes nothing the
  unembedding reads (its direct effect is 0, so `logprob_increase` and `dla` miss it),
  and it acts through the query of L2H3, whose softmax is saturated, so attribution
  patching's gradient is about 0 too. Only exact ablation recovers it. Trust
  attribution and the direct scores for heads that write the answer, not for heads that
  steer later attention.
* **top-1% verdict**: "a few heads carry ICL" for the finder's top 1% (one head of 64 or
  96) against {n_random} random sets of one head, drawn from the heads outside the tested set
  (a random set drawn from all heads would be the planted head itself about a quarter of
  the time with 20 sets, and hide an effect that is there).
* **heads_needed (greedy)**: the greedy search's set must be as small as the truth
  (`needed`: two for the redundant pair, else one) and made of planted heads.
* **reading role / OV / QK**: `ih.reading_roles(...).reads(...)` and the `read at` of
  `ih.ov_label_features` / `ih.qk_label_attention` with `read_at="auto"`.
* **Planted biases**: the true bias follows from the construction (4 of 10 words per
  class are weak: `cls_q` strength {weak}). A weak query barely sees its class, so the
  in-context head's attention follows the label counts (majority: the weak minority
  queries flip in every imbalanced condition, true `bias` = 0.5 x 0.4 = 0.2) or its
  linear positional prior (recency: the weak queries follow the last block, true
  `block_gap` = 0.4). Coverage counts the seeds whose 95% interval contains the truth;
  the correction is the one that inverts the planted mechanism (`count` normalisation
  for label counts, the `prior` for the positional prior) on the planted head.
"""


def _md(rows, cols) -> str:
    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in rows:
        out.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(out) + "\n"


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/validation.md")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = recovery_table(n=args.n, seeds=args.seeds)
    page = [INTRO]
    for name in MODELS:
        t = ground_truth(name)
        page.append(f"| `{name}` | {', '.join(f'L{a}H{b}' for a, b in t.heads)} | {t.description} |\n")
    page.append(NOTES.format(n=args.n, n_random=20, weak=WEAK_STRENGTH))
    for check, heading in (("head scores", "Head scores"), ("head definitions", "Head definitions")):
        scores = table[table.check == check].copy()
        for key in ("precision", "recovered", "missed"):
            scores[key] = scores.detail.str.extract(rf"{key} ([^;]+)")[0]
        scores["AUROC"] = scores.value.map(_fmt)
        page.append(f"\n## {heading} against the planted heads\n\n")
        page.append(_md(scores.to_dict("records"), ["model", "method", "AUROC", "precision", "recovered", "missed"]))
    other = table[~table.check.isin(["head scores", "head definitions"]) & ~table.check.str.contains("bias|correction")]
    other = other.copy()
    other["value"] = other.value.map(_fmt)
    page.append("\n## Head counts, verdicts and reading positions\n\n")
    page.append(_md(other.to_dict("records"), ["model", "check", "value", "truth", "ok"]))
    bias = table[table.check.str.contains("bias|correction")].copy()
    bias["value"] = bias.value.map(_fmt)
    page.append("\n## Planted biases\n\n")
    page.append(_md(bias.to_dict("records"), ["model", "check", "method", "value", "truth", "ok", "detail"]))
    page.append(
        f"\nMade by `python scripts/recovery_page.py --n {args.n} --seeds {args.seeds}` with icl_heads "
        f"{__version__}, TransformerLens {version('transformer-lens')}, torch {torch.__version__}.\n"
    )
    Path(args.out).write_text("".join(page))


if __name__ == "__main__":
    main()
