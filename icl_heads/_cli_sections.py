"""The sections of the ``icl-heads analyze`` report, each an :class:`AnalysisSection` that runs its analyses and
returns what they produced as :class:`~icl_heads.report.Section` data (listed once in :data:`icl_heads.cli.SECTIONS`).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_heads._cli_inputs import Plan, UsageError
from icl_heads.options import RunOptions
from icl_heads.report import Section
from icl_heads.verdict_rules import Verdict

logger = logging.getLogger("icl_heads")


MAX_HEADS_FOR_ABLATION = 512


@dataclass
class Context:
    """Everything the analysis sections share."""

    args: argparse.Namespace
    model: Any
    task: Any
    prompts: Any
    held_out: Any
    out: Path
    summary: dict
    #: how every analysis runs its prompts (the ``--quiet`` flag turns the progress bars off)
    options: RunOptions
    found: Any = None
    #: result objects by name, read by :func:`icl_heads.verdicts.collect_verdicts`
    results: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AnalysisSection:
    """One section of the report, declared beside the function that runs it.

    Attributes:
        name: its name (``--skip NAME``, its section of the cost ledger, ``seconds`` in the summary).
        run: ``run(ctx) -> list[Section]``: runs its analyses and returns what they produced.
        reference_passes: its prompt passes in the reference run (the organism, ``--n-prompts 200``, 24 heads).
        per_head: its work grows with the number of heads (one ablation pass per head).
        predict: ``predict(n_prompts, n_heads) -> prompt passes``, replacing the scaling of ``reference_passes``.
        check: ``check(plan)``, run before the model loads: raises :class:`UsageError` (with the fix).
        verdicts: ``verdicts(results) -> list[Verdict]``: claims of its own, judged with
            :func:`icl_heads.verdict_rules.judge` from the run's result objects.
    """

    name: str
    run: Callable[[Context], list[Section]]
    reference_passes: int
    per_head: bool = False
    predict: Callable[[int, int], int] | None = None
    check: Callable[[Plan], None] | None = None
    verdicts: Callable[[Mapping[str, object]], list[Verdict]] | None = None


def records(df) -> list[dict]:
    """DataFrame rows as JSON-ready dicts, leaving out missing (NaN) cells."""
    return [{k: v for k, v in row.items() if v == v} for row in df.to_dict(orient="records")]


def task_variant(args: argparse.Namespace, task: Any, kind: str) -> tuple[Any, str | None]:
    """The task a section runs on and a note: the user's as given; on the organism's default task (nearly solved and
    unbiased), a held-out template with longer, noisier sentences, where the effect shows (docs/organism.md)."""
    if args.data is not None or args.task != "organism" or args.template is not None:
        return task, None
    from icl_heads.organism import HELDOUT_TEMPLATES, organism_task

    template, noise = (HELDOUT_TEMPLATES[1], 0.3) if kind == "bias" else (HELDOUT_TEMPLATES[0], 0.2)
    task = organism_task(
        task.classes, label_words=task.label_words, template=template, max_words=6, noise_rate=noise, seed=args.seed
    )
    return task, (
        f"On the organism this section uses a harder setting than the rest of the report, so that the effect "
        f"shows: the held-out template {template!r} (never seen in training), sentences of up to 6 words with "
        f"{noise:.0%} noise words."
    )


def section_accuracy(ctx: Context) -> list[Section]:
    import icl_heads as ih

    sec = Section(f"ICL accuracy ({ctx.args.shots}-shot prompts)")
    acc = ih.icl_accuracy(ctx.model, ctx.held_out, options=ctx.options)
    sec.results.update(accuracy=acc, shots=ctx.args.shots)
    sec.text(f"{ctx.args.shots}-shot accuracy on {len(ctx.held_out)} held-out prompts.")
    sec.table(acc.df)
    sec.csv["accuracy"] = acc.df
    sec.summary.update(accuracy=acc.accuracy, accuracy_95ci=list(acc.ci), strict_accuracy=acc.strict_accuracy)
    return [sec]


def section_heads(ctx: Context) -> list[Section]:
    import icl_heads as ih
    from icl_heads.plots.heads import plot_ablation_curve, plot_head_score_selector

    sec = Section(f"In-context heads ({ctx.args.shots}-shot prompts)")
    access = ih.access.ModelAccess(ctx.model)
    total = access.n_layers * access.n_heads
    # the ablation score costs one forward pass per head: the ground truth on small models, optional on large ones
    also = ("dla", "ablation") if total <= MAX_HEADS_FOR_ABLATION else ("dla",)
    found = ih.find_in_context_heads(
        ctx.model, ctx.prompts, also=also, verify_prompts=ctx.held_out, seed=ctx.args.seed, options=ctx.options
    )
    ctx.found = found
    sec.results["heads"] = found
    sec.text(
        f"Setting: the default task, heads scored on {len(ctx.prompts)} prompts, every ablation measured on "
        f"{len(ctx.held_out)} other prompts."
    )
    sec.numbers(found.summary())
    sec.figure(plot_head_score_selector(found))
    sec.figure(found.plot_verification())
    sec.table(found.verification)
    # the verification's random sets, so that k = len(heads) repeats them
    kw = {"ks": tuple(k for k in (1, 2, 4, 8) if k <= total), "n_random": found.config.get("n_random", 20)}
    curve = ih.ablation_curve(ctx.model, ctx.held_out, found.score_table(), seed=ctx.args.seed, **kw)
    sec.text(f"Ablating the top heads by {found.method} against random heads of the same number:")
    sec.figure(plot_ablation_curve(curve, by=found.method))
    if "ablation" in found.scores:
        sec.text(
            "The ablation score (the drop in the gold label's log-probability when one head is zeroed) finds the "
            "heads the model cannot do without; where the label writers are redundant these differ from the heads "
            "with the largest direct effect:"
        )
        by_ablation = ih.ablation_curve(
            ctx.model, ctx.held_out, found.score_table("ablation"), seed=ctx.args.seed, **kw
        )
        sec.figure(plot_ablation_curve(by_ablation, by="ablation"))
        sec.csv["ablation_curve_by_ablation_score"] = by_ablation
    else:
        sec.text(
            f"Ablation scores skipped: the model has {total} heads (more than {MAX_HEADS_FOR_ABLATION}) and they "
            "cost one forward pass per head; compute them with find_in_context_heads(..., also=('ablation',))."
        )
    # where the heads read (token roles at the final position) and how many heads it takes to collapse ICL
    reading = ih.reading_roles(ctx.model, ctx.held_out)
    sec.text(
        "Where each head reads: its final-position attention by token role (mean over prompts). In the table, "
        "'read_at' is the reading position every analysis of this report names the same way ('label', "
        "'after_label' or 'slot', both tokens of a demonstration's label slot); 'most attended role' is the single "
        "token role with the most attention."
    )
    sec.figure(reading.plot())
    sec.table(reading.reads(found.heads).rename(columns={"role": "most attended role"}))
    count = ih.heads_needed(
        ctx.model, ctx.held_out, found, greedy=False, n_random=10, max_k=min(total, 16), seed=ctx.args.seed,
        random_for="last",  # the random sets of other sizes are on the ablation curve above
    )  # fmt: skip
    sec.text(
        f"How many heads carry ICL: the smallest set, in {found.method} order, whose ablation brings accuracy to "
        "within the margin of chance, against random sets of the same size."
    )
    sec.result(count)
    # the one-backward-pass estimate of the ablation score against the exact score on a sample of heads, on the
    # prompts the heads were scored on (the exact ablation score computed there is read back)
    agreement = ih.compare_head_scores(ctx.model, ctx.prompts, sample=min(total, 40), seed=ctx.args.seed)
    sec.csv.update(reading_roles=reading.df, heads_needed=count.df, attribution_agreement=agreement.df)
    sec.csv.update(head_scores=found.df, head_verification=found.verification, ablation_curve=curve)
    sec.summary.update(
        heads_needed=count.summary(),
        attribution_agreement=agreement.summary(),
        in_context_heads=found.names,
        heads_by_label={w: [f"L{a}H{b}" for a, b in hs] for w, hs in found.heads_by_label.items()},
        head_verification=records(found.verification),
    )
    return [sec, agreement_part(agreement)]


def agreement_part(agreement: Any) -> Section:
    """The section showing how a cheap head score (:func:`icl_heads.compare_head_scores`) agrees with the exact
    ablation score on a sample of heads."""
    sec = Section(f"{agreement.method} score vs exact ablation ({len(agreement.heads)} heads)")
    sec.text(
        f"The {agreement.method} score against the exact ablation effect (the drop in the gold label's "
        f"log-probability when one head is ablated) on {len(agreement.heads)} heads. A Spearman correlation "
        "well below 0.9 or a different top head means the cheap score should not replace the exact one here."
    )
    sec.result(agreement, agreement.plot())
    return sec


def section_mechanism(ctx: Context) -> list[Section]:
    import icl_heads as ih
    from icl_heads.plots.mechanism import plot_auc_heatmap

    sec = Section(f"Mechanism: OV label features and QK two towers ({ctx.args.shots}-shot prompts)")
    heads = ctx.found.heads if ctx.found is not None else None
    ov = ih.ov_label_features(ctx.model, ctx.held_out, heads, options=ctx.options)
    qk = ih.qk_label_attention(ctx.model, ctx.held_out, heads, options=ctx.options)
    # every head, read where the in-context heads read (heads that read elsewhere are named in its warning)
    towers = ih.two_tower_test(ctx.model, ctx.held_out, read_at=qk.config["read_at"], options=ctx.options)
    try:
        flip = ih.flip_analysis(ctx.model, ctx.held_out, heads=heads, resample_demos=True, seed=ctx.args.seed)
    except ValueError as err:  # e.g. no prediction flips: the model does not learn in context
        flip = None
        logger.warning("flip analysis skipped: %s", err)
    sec.text(f"Setting: the default task, the {len(ctx.held_out)} held-out prompts, the in-context heads found above.")
    sec.text("OV: what each in-context head writes from every demonstration's label position.")
    sec.result(ov, ov.plot())
    sec.text("QK: attention from the final position to label positions of the query's class and the other class.")
    sec.result(qk, qk.plot())
    sec.text(
        f"Two towers: every head's QK score at the '{towers.config['read_at']}' positions as a "
        "classifier of same-class demonstrations (ROC AUC; 0.5 = chance)."
    )
    sec.warnings(towers)
    sec.figure(plot_auc_heatmap(towers))
    if flip is None:
        sec.text("Flip analysis: no prediction flipped when the query's class changed, so there is nothing to compare.")
    else:
        sec.text("Flip: prompts with a query of the other class; how much attention and OV vectors change.")
        sec.result(flip, flip.plot())
    sec.results.update(ov=ov, qk=qk)
    results = {"ov_label_features": ov, "qk_label_attention": qk, "two_tower": towers, "flip": flip}
    sec.csv.update({name: r.df for name, r in results.items() if r is not None})
    sec.summary["mechanism"] = {name: r.summary() for name, r in results.items() if r is not None}
    return [sec]


def section_bias(ctx: Context) -> list[Section]:
    from icl_heads.bias import majority_bias
    from icl_heads.debias import correct_majority_bias, correct_recency_bias
    from icl_heads.order_bias import recency_bias

    task, note = task_variant(ctx.args, ctx.task, "bias")
    n, seed = ctx.args.n_prompts, ctx.args.seed
    # the organism's recency bias shows with 8 demonstrations and needs more tuning prompts to measure
    recency_shots, recency_tune = (8, max(n, 400)) if note else (ctx.args.shots, n // 2)
    shots = (
        f"{ctx.args.shots}-shot prompts" if recency_shots == ctx.args.shots
        else f"majority {ctx.args.shots}-shot, recency {recency_shots}-shot prompts"
    )  # fmt: skip
    sec = Section(f"Majority-label and recency bias, and their corrections ({shots})")
    if note:
        sec.text(note)
    heads = ctx.found.heads if ctx.found is not None else "found"
    # measured on the corrections' test prompts (their seeds), so that "bias before" is this very number
    major = majority_bias(ctx.model, task, shots=ctx.args.shots, n=n, seed=seed + 12, options=ctx.options)
    recent = recency_bias(ctx.model, task, shots=recency_shots, n=n, seed=seed + 14, heads=heads, options=ctx.options)
    sec.results.update(majority=major, recency=recent)
    sec.numbers(major.summary())
    sec.figure(major.plot())
    sec.numbers(recent.summary())
    sec.figure(recent.plot())

    skipped: dict[str, str] = {}
    fixes: dict[str, Any] = {}
    for name, correct, k, at, tune_n in (
        ("majority (count normalisation)", correct_majority_bias, ctx.args.shots, seed + 12, n // 2),
        ("recency (positional prior)", correct_recency_bias, recency_shots, seed + 14, recency_tune),
    ):
        try:
            fixes[name] = correct(ctx.model, task, heads=heads, shots=k, n=n, seed=at, tune_n=tune_n, tune_seed=at + 1)
        except ValueError as err:  # e.g. no bias to reduce on these prompts
            logger.warning("%s skipped: %s", name, err)
            skipped[name], fixes[name] = str(err), None
    sec.text(
        "Corrections: hyperparameters tuned on held-out prompts, measured on the same test prompts as the biases "
        "above (so 'bias before' repeats them). Their 'balanced accuracy' is measured on balanced prompts drawn "
        "for the correction, a different sample from the majority measurement's balanced condition; count "
        "normalisation leaves balanced prompts unchanged by construction, so the majority correction is judged by "
        "its accuracy on imbalanced prompts. Each correction's 'read at' is resolved from the corrected heads' "
        "attention on its own prompts (this section's setting), so it can differ from the mechanism section's."
    )
    keys = ("majority_correction", "recency_correction")
    for key, (name, fix), k in zip(keys, fixes.items(), (ctx.args.shots, recency_shots), strict=True):
        sec.results[key] = fix if fix is not None else skipped.get(name)
        sec.text(f"{name}, {k}-shot prompts")
        if fix is None:
            sec.text(f"Not applicable on these prompts: {skipped[name]}.")
            continue
        sec.result(fix, fix.plot())
    sec.csv.update(majority_bias=major.df, recency_bias=recent.df)
    sec.csv.update({key: fix.df for key, fix in zip(keys, fixes.values(), strict=True) if fix is not None})
    sec.summary["bias"] = {
        "majority": major.summary(),
        "recency": recent.summary(),
        **{name: fix.summary() for name, fix in fixes.items() if fix is not None},
        **({"corrections_skipped": skipped} if skipped else {}),
    }
    return [sec]


def section_components(ctx: Context) -> list[Section]:
    from icl_heads.components.decompose import decompose
    from icl_heads.components.protocol import compare_reweighting
    from icl_heads.components.stability import component_stability

    sec = Section(f"Components: decomposition, component kinds, stability, reweighting ({ctx.args.shots}-shot prompts)")
    task, note = task_variant(ctx.args, ctx.task, "components")
    if note:
        sec.text(note)
    held_out = task.prompts(ctx.args.n_prompts, ctx.args.shots, seed=ctx.args.seed + 1) if note else ctx.held_out
    dec = decompose(ctx.model, held_out, options=ctx.options)
    sec.numbers(dec.summary())
    sec.figure(dec.heatmap())
    sec.figure(dec.plot_accuracy())
    kinds = dec.kinds()
    sec.table(kinds.sort_values("accuracy", ascending=False), max_rows=15)
    sec.results["decomposition"] = dec
    n_test = max(ctx.args.n_prompts // 2, 8)
    stability = component_stability(ctx.model, task, n_demo_sets=3, n=n_test, seed=ctx.args.seed)
    sec.numbers(stability.summary())
    sec.figure(stability.plot("demo set"))
    # five runs: the verdict's t interval over runs has 4 degrees of freedom (3 runs would leave 2)
    comparison = compare_reweighting(ctx.model, task, seeds=(0, 1, 2, 3, 4), n_test=n_test, icl_k=None)
    sec.text(
        f"Reweighting against its baselines over {comparison.df.groupby(['seed', 'template']).ngroups} runs "
        f"(seeds x templates; {comparison.df.template.nunique()} template), each with its own demonstrations, "
        "training examples and test prompts; the verdict compares the methods run by run (paired) with a t "
        "interval over runs."
    )
    sec.results["reweighting"] = comparison
    sec.numbers(comparison.summary())
    sec.figure(comparison.plot())
    sec.table(comparison.df)
    sec.csv.update(components=kinds, component_stability=stability.df, reweighting=comparison.df)
    sec.summary["components"] = {
        "decomposition": dec.summary(),
        "stability": stability.summary(),
        "reweighting": comparison.summary(),
    }
    return [sec]


def majority_prompts_drawn(plan: Plan, section: str, n: int, seed: int) -> None:
    """Before the model loads: ``section`` can draw its ``n`` majority-bias prompts (on the bias section's task)."""
    from icl_heads.bias import majority_prompts

    try:
        majority_prompts(task_variant(plan.args, plan.task, "bias")[0], shots=plan.shots, n=n, seed=seed)
    except ValueError as err:
        msg = f"--shots {plan.shots}: the {section} section cannot draw its prompts ({err}); or --skip {section}"
        raise UsageError(msg) from None


def _check_bias(plan: Plan) -> None:
    """Before the model loads: the bias section's balanced and skewed prompts can be drawn."""
    k = len(plan.task.classes)
    if plan.shots % k:
        raise UsageError(
            f"--shots {plan.shots} is not a multiple of the {k} classes, which the bias section needs for balanced "
            f"prompts; use --shots {k * math.ceil(plan.shots / k)} or --skip bias"
        )
    majority_prompts_drawn(plan, "bias", plan.args.n_prompts, plan.args.seed + 12)


def _check_components(plan: Plan) -> None:
    """Before the model loads: each class has the examples the reweighting protocol draws (test queries + 24)."""
    task, _ = task_variant(plan.args, plan.task, "components")
    k, n_test, labelled = len(task.classes), max(plan.args.n_prompts // 2, 8), 24
    need = math.ceil(n_test / k) + math.ceil(labelled / k)
    for c, word in enumerate(task.classes):
        have = task.labels.count(c)
        if have < need:
            raise UsageError(
                f"the components section needs {need} examples of each class ({n_test} test queries and {labelled} "
                f"labelled examples for reweighting) but class {word!r} has {have}; add examples, lower --n-prompts "
                "or --skip components"
            )


ACCURACY = AnalysisSection("accuracy", section_accuracy, reference_passes=200)
HEADS = AnalysisSection("heads", section_heads, reference_passes=32401, per_head=True)
MECHANISM = AnalysisSection("mechanism", section_mechanism, reference_passes=1256)
BIAS = AnalysisSection("bias", section_bias, reference_passes=20928, check=_check_bias)
COMPONENTS = AnalysisSection("components", section_components, reference_passes=1600, check=_check_components)
