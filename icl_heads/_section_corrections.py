"""The report section that compares every bias correction and calibration (:func:`~icl_heads.compare_corrections.compare_corrections`)."""

from __future__ import annotations

from icl_heads._cli_inputs import Plan
from icl_heads._cli_sections import AnalysisSection, Context, majority_prompts_drawn, records, task_variant
from icl_heads.report import Section

#: the table's columns shown in the report (the CSV keeps them all)
SHOWN = [
    "method", "family", "setting", "labelled", "extra_passes_per_prompt", "majority_reduction",
    "recency_reduction", "balanced_accuracy_change", "imbalanced_accuracy_change", "note",
]  # fmt: skip


def section_corrections(ctx: Context) -> list[Section]:
    """Every registered correction and calibration, tuned and tested on disjoint prompts of the bias section's task."""
    from icl_heads.compare_corrections import compare_corrections

    task, note = task_variant(ctx.args, ctx.task, "bias")
    n, seed = max(ctx.args.n_prompts // 4, 10), ctx.args.seed  # a quarter: the comparison runs eleven methods
    heads = ctx.found.heads if ctx.found is not None else "found"
    result = compare_corrections(
        ctx.model, task, heads=heads, shots=ctx.args.shots, n=n, seed=seed + 16, tune_n=n, tune_seed=seed + 17,
        options=ctx.options,
    )  # fmt: skip
    sec = Section(f"Every correction and calibration compared ({n} test prompts per condition)")
    if note:
        sec.text(note)
    sec.text(
        "Each method is fitted or tuned on its own tuning prompts and measured on the same test prompts (disjoint "
        "from the tuning ones): the reduction of the majority bias (excess majority-label predictions) and of the "
        "recency bias (block gap), and the change of accuracy on balanced and on imbalanced prompts, each with a 95% "
        "paired bootstrap interval over prompts; 'labelled' counts the labelled queries its fit used besides the "
        "demonstrations, 'extra passes' the forward passes per test prompt beyond the plain one. Batch Calibration "
        "takes the prompts of one condition (the same label counts, or the same order of label blocks) as its batch. "
        "Every method's own passes are in the cost ledger under 'corrections: <method>'."
    )
    sec.numbers({f"{r.metric} (no correction)": r.value for r in result.baseline.itertuples()})
    sec.figure(result.plot())
    sec.table(result.df[SHOWN])
    sec.results["corrections"] = result
    sec.csv["corrections"] = result.df
    sec.summary["corrections"] = {"baseline": records(result.baseline), "methods": records(result.df[SHOWN])}
    return [sec]


def _check(plan: Plan) -> None:
    """Before the model loads: the section's test prompts can be drawn (shots a multiple of the classes)."""
    majority_prompts_drawn(plan, "corrections", max(plan.args.n_prompts // 4, 10), plan.args.seed + 16)


CORRECTIONS = AnalysisSection("corrections", section_corrections, reference_passes=24850, check=_check)
