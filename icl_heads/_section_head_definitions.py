"""The report section comparing head definitions: function-vector, induction and in-context heads."""

from __future__ import annotations

from icl_heads._cli_sections import AnalysisSection, Context
from icl_heads.report import Section

#: prompts of the function-vector AIE in the report: one batch, so ``1 + L·H`` passes
N_TRIALS = 32
#: repeated random sequences of the induction score in the report
N_SEQS = 16


def section_head_definitions(ctx: Context) -> list[Section]:
    """Score every head three ways on the run's prompts; their overlap and each top set's ablation (read back)."""
    from icl_heads.head_definitions import compare_head_definitions

    shots = ctx.args.shots
    sec = Section(f"Head definitions side by side: function-vector, induction and in-context heads ({shots}-shot)")
    found = ctx.found
    if found is None or shots < 2:
        sec.text(
            "Skipped: this comparison sets its top sets to the size of the in-context heads' and reads back their "
            "ablations, so it runs with the heads section (without --skip heads)."
            if found is None
            else "Skipped: the function-vector score shuffles the demonstrations' labels, which needs 2 shots or more."
        )
        return [sec]
    result = compare_head_definitions(
        ctx.model, ctx.task, n=ctx.args.n_prompts, shots=shots, n_trials=min(N_TRIALS, ctx.args.n_prompts), n_seqs=N_SEQS,
        method=found.method, n_random=found.config.get("n_random", 20), seed=ctx.args.seed, options=ctx.options,
    )  # fmt: skip
    sec.text(
        f"Three definitions of the heads that matter, each scoring every head: in-context heads ({result.config['method']} "
        f"on the {ctx.args.n_prompts} scored prompts), function-vector heads (the average indirect effect of each head's "
        f"mean output at the final position over {result.config['n_trials']} prompts drawn like them, patched into "
        "the same prompts with their demonstration labels shuffled; probabilities over the label words) and induction heads (prefix-matching "
        f"attention on {result.config['n_seqs']} repeated random sequences). Top sets of {result.k} head(s), the size "
        "of the in-context top set; each ablated on the held-out prompts against random sets of the same size."
    )
    sec.result(result, result.plot(), result.plot_ablation())
    sec.table(result.overlap)
    sec.table(result.cost)
    sec.results["head_definitions"] = result
    sec.csv.update(head_definitions=result.df, head_definitions_overlap=result.overlap)
    sec.csv.update(head_definitions_ablation=result.ablation, head_definitions_cost=result.cost)
    sec.summary["head_definitions"] = result.summary()
    return [sec]


def _passes(n_prompts: int, n_heads: int) -> int:
    """Prompt passes: in-context scores (n), function vectors (clean, shuffled, one per head, on ``min(N_TRIALS, n)``
    trials) and induction sequences; the ablations are read back from the heads section."""
    return n_prompts + (2 + n_heads) * min(N_TRIALS, n_prompts) + N_SEQS


HEAD_DEFINITIONS = AnalysisSection(
    "head_definitions", section_head_definitions, reference_passes=1048, per_head=True, predict=_passes
)
