"""The ``icl-heads`` command: run the whole analysis and write an HTML report, CSV tables and a JSON summary.

Examples::

    icl-heads analyze --model organism --task organism --out results/organism
    icl-heads analyze --model gpt2 --data reviews.csv --text-col text --label-col label --out results/gpt2

Every input is checked before the model loads; a bad one ends the command with a one-line message and exit code 2
(``--debug`` shows the traceback). A section is an :class:`~icl_heads._cli_sections.AnalysisSection` listed in
:data:`SECTIONS`; results are written beside ``--out`` and moved into place only when the run succeeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from icl_heads._cli_inputs import Plan, UsageError, validate
from icl_heads._cli_output import (
    OutputFolder,
    Terminated,
    ignore_interrupts,
    restore_interrupts,
    sigterm_raises,
    write_sections,
)
from icl_heads._cli_progress import LONG_RUN, ProgressLedger, estimate, seconds_per_pass
from icl_heads._cli_sections import ACCURACY, BIAS, COMPONENTS, HEADS, MECHANISM, AnalysisSection, Context
from icl_heads._section_corrections import CORRECTIONS
from icl_heads._section_head_definitions import HEAD_DEFINITIONS
from icl_heads._version import __version__
from icl_heads.engine import count_cost
from icl_heads.options import RunOptions
from icl_heads.report import Section

logger = logging.getLogger("icl_heads")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2, like every other bad input of the command."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="icl-heads",
        description="Find, explain and use the components that carry in-context learning in a language model.",
    )
    parser.add_argument("--version", action="version", version=f"icl-heads {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    a = sub.add_parser(
        "analyze",
        help="run the whole analysis and write report.html, results/*.csv and summary.json",
        description=(
            "Run the whole pipeline on a model and task: in-context heads with ablation against random heads, "
            "OV/QK mechanism, majority and recency bias with corrections, component decomposition and "
            "component reweighting. Writes DIR/report.html (self-contained), DIR/results/*.csv and DIR/summary.json."
        ),
    )
    a.add_argument("--model", default="organism", help="'organism' (bundled, offline), a hub name, or a local folder")
    a.add_argument(
        "--task",
        default="organism",
        help="'organism' (the organism's topic task) or 'validation:NAME' (the task of a validation model); "
        "ignored with --data",
    )
    a.add_argument(
        "--data",
        help="labelled texts (instead of --task): a .csv or .jsonl file; one of the papers' tasks by name (sst2, "
        "agnews, trec, rte, boolq, qqp, wic, mnli, arc_easy, arc_challenge, yelp, mednli, boolq_contrast: local "
        "copy in $ICL_HEADS_DATA, else the hub); hf:PATH[:CONFIG] (a hub data set); or a datasets folder "
        "(save_to_disk), .parquet or .arrow file. Named tasks and hub data need icl-heads[datasets]",
    )
    a.add_argument(
        "--template",
        help="how one demonstration is written, with {text} then {label}, e.g. '{text} -> {label}\\n' (\\n is a "
        "newline); where the label goes is part of it. For a named task, 0, 1 or 2 picks one of its three formats "
        "(default: its first; for files '{text} : {label}\\n'; the organism's own)",
    )
    a.add_argument("--split", help="split of a named task or data set (default: the task's)")
    a.add_argument("--text-col", default="text", help="text column of --data (default: text)")
    a.add_argument("--label-col", default="label", help="label column of --data (default: label)")
    a.add_argument(
        "--label-words",
        help="comma-separated label words, one per class in class order, or 'meaningless' (foo,bar,...) (default: "
        "a named task's words; foo,bar for 2 classes)",
    )
    a.add_argument(
        "--classes",
        help="comma-separated class order (default: numeric order for numbers, else order of first appearance; "
        "with --task organism: the topics)",
    )
    a.add_argument(
        "--dropna", action="store_true", help="drop rows of --data with a missing text or label (default: refuse them)"
    )
    a.add_argument(
        "--shots",
        type=int,
        help="demonstrations per prompt (default: the smallest multiple of the number of classes >= 4)",
    )
    a.add_argument("--n-prompts", type=int, default=200, help="prompts per measurement (default: 200)")
    a.add_argument("--device", help="e.g. cpu or cuda (default: cpu)")
    a.add_argument(
        "--dtype",
        help="weights' dtype: float32, bfloat16, float16, ... (default: the checkpoint's; bfloat16 halves a "
        "large model's memory on a GPU)",
    )
    a.add_argument("--seed", type=int, default=0, help="random seed for prompts and baselines (default: 0)")
    a.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's choice; 1 is fastest for the small organism on a busy machine)",
    )
    a.add_argument("--out", type=Path, required=True, help="output folder (must be empty or new, unless --force)")
    a.add_argument(
        "--force",
        action="store_true",
        help="replace the results of an earlier run in --out (the files listed in its manifest.json; "
        "your own files are never touched)",
    )
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.add_argument("--debug", action="store_true", help="show the traceback of an error")
    a.add_argument("--skip", default="", help="comma-separated sections to skip: " + ",".join(s.name for s in SECTIONS))
    return parser


#: the sections of the report, in order: one line registers a section (see docs/contributing.md)
SECTIONS: list[AnalysisSection] = [ACCURACY, HEADS, HEAD_DEFINITIONS, MECHANISM, BIAS, COMPONENTS, CORRECTIONS]


def _intro(plan: Plan) -> str:
    mapping = ", ".join(f"{row['class']} → {row['label_word']}" for row in plan.classes)
    return (
        f"{plan.shots}-shot prompts in the template {plan.task.template!r}; classes and their label words: "
        f"{mapping}. Heads are scored on {plan.args.n_prompts} prompts and every check runs on {plan.args.n_prompts} "
        "other prompts."
    )


def _data_section(plan: Plan) -> Section:
    import pandas as pd

    sec = Section("Task and data")
    sec.text(f"Task {plan.task.name}: template {plan.task.template!r}.")
    sec.table(pd.DataFrame(plan.classes))
    for note in plan.notes:
        sec.text(f"Note: {note}")
    return sec


def _seeds(seed: int) -> dict[str, int]:
    """The seed of every random draw of a run, derived from ``--seed``."""
    return {
        "--seed (scored prompts, random heads, torch)": seed,
        "held-out prompts": seed + 1,
        "majority bias and its correction's test prompts": seed + 12,
        "majority correction tuning prompts": seed + 13,
        "recency bias and its correction's test prompts": seed + 14,
        "recency correction tuning prompts": seed + 15,
        "corrections compared: test prompts": seed + 16,
        "corrections compared: tuning prompts (and + 1)": seed + 17,
    }


def run(plan: Plan, argv: list[str], folder: OutputFolder) -> dict:
    """Load the model and run every section into ``folder`` (``OUT.incomplete``), moved to ``--out`` on success."""
    import torch

    import icl_heads as ih
    from icl_heads._provenance import run_provenance
    from icl_heads.report import Report
    from icl_heads.verdicts import collect_verdicts, verdict_table

    args = plan.args
    args.shots = plan.shots
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()
    try:
        model = ih.load_model(plan.model, device=plan.device, dtype=args.dtype)
    except (OSError, ValueError) as err:
        raise UsageError(f"--model {args.model}: cannot load it ({str(err).splitlines()[0]})") from None
    faithfulness = ih.check_faithfulness(model)
    summary = {
        "model": args.model,
        "task": plan.task.name,
        "shots": plan.shots,
        "n_prompts": args.n_prompts,
        "classes": json.loads(json.dumps(plan.classes, default=str)),
        "label_words": dict(zip(map(str, plan.task.classes), plan.task.label_words, strict=True)),
        "template": plan.task.template,
        "unknown_token_share": plan.unknown_token_share,
        "notes": plan.notes,
    }
    # one bar per section, in prompt passes (:class:`ProgressLedger`), instead of batch bars
    options = RunOptions(progress=False)
    ctx = Context(args, model, plan.task, plan.prompts, plan.held_out, folder.tmp, summary, options)
    ctx.results.update(faithfulness=faithfulness, n_labels=len(plan.task.classes))
    prov = run_provenance(
        argv=argv, model=model, reference=args.model, architecture=faithfulness.architecture, task=plan.task,
        data=args.data,
        seeds=_seeds(args.seed), threads=args.threads,
    )  # fmt: skip
    report = Report(title=f"icl-heads report: {args.model} on {plan.task.name}", intro=_intro(plan))
    report.add(_data_section(plan))
    run_sections = [s for s in SECTIONS if s.name not in plan.skip]
    expected = _announce(plan, model, run_sections)
    ledger = ProgressLedger(show=not args.quiet)
    for section in run_sections:
        t = time.time()
        logger.info("section %s", section.name)
        with count_cost(ledger), ledger.progress(section.name, expected[section.name]):
            write_sections(section.run(ctx), report, ctx.out, summary, ctx.results)
        summary.setdefault("seconds", {})[section.name] = round(time.time() - t, 2)
    summary.update(total_seconds=round(time.time() - start, 2), icl_heads_version=ih.__version__)
    verdicts = collect_verdicts(ctx.results) + [v for s in run_sections if s.verdicts for v in s.verdicts(ctx.results)]
    cost = {
        "seconds per section": summary.get("seconds", {}),
        "total seconds": summary["total_seconds"],
        "forward passes": ledger.total.passes,
        "layer x token evaluations": ledger.total.layer_tokens,
    }
    summary = {"verdicts": verdict_table(verdicts), **summary, "cost": ledger.as_dict()}
    summary.update(provenance={**prov.to_dict(), "cost": cost}, faithfulness=faithfulness.summary())
    report.verdicts, report.provenance, report.cost = verdicts, summary["provenance"], ledger.df
    summary["n_figures"] = report.n_figures
    report.write(folder.tmp / "report.html")
    (folder.tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    folder.commit()
    return summary


def _announce(plan: Plan, model: object, sections: list[AnalysisSection]) -> dict[str, int]:
    """Log an estimate of the whole run before its first section; the prompt passes expected of each section."""
    from icl_heads.access import ModelAccess
    from icl_heads.engine import no_reuse

    access = ModelAccess(model)
    with no_reuse():  # the timing pass is neither kept nor counted
        per_pass = seconds_per_pass(model, plan.prompts)
    expected, text = estimate(sections, plan.args.n_prompts, access.n_layers * access.n_heads, per_pass)
    total = sum(expected.values()) * per_pass
    logger.log(logging.WARNING if total > LONG_RUN else logging.INFO, "%s", text)
    return expected


#: what the report (at its top) and the final message say when the model's accuracy does not beat chance
AT_CHANCE = "the model does not learn this task in context: its accuracy's 95% interval reaches chance"
CHECK_PROMPTS = "check the label words (--label-words) and the template (--template), which was"


def headline(summary: dict, out: Path) -> list[str]:
    """The lines printed at the end of a run: where the report is and the headline numbers."""
    lines = [f"report: {out / 'report.html'}", f"tables: {out / 'results'}/ and {out / 'summary.json'}"]
    icl = next((v for v in summary.get("verdicts", []) if v.get("key") == "icl"), None)
    if icl is not None and icl["state"] not in ("holds", "not applicable"):
        lines.insert(0, f"warning: {AT_CHANCE} ({icl['detail']}); {CHECK_PROMPTS} {summary.get('template')!r}")
    lines += [f"{v['claim']}: {v['state']} ({v['detail']})" for v in summary.get("verdicts", [])]
    if "accuracy" in summary:
        lo, hi = summary["accuracy_95ci"]
        lines.append(f"{summary['shots']}-shot accuracy: {summary['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    if "in_context_heads" in summary:
        lines.append(f"in-context heads: {', '.join(summary['in_context_heads'])}")
    if summary.get("unknown_token_share"):
        lines.append(f"warning: {summary['unknown_token_share']:.1%} of the data's tokens are unknown to the tokenizer")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (0 success, 2 bad input, 130/143 interrupted)."""
    from_command = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        folder = OutputFolder(args.out, ["icl-heads", *argv])
        with sigterm_raises(), folder:  # the lock on --out comes first: two runs on one --out never race
            plan = validate(args, [s.name for s in SECTIONS], {s.name: s.check for s in SECTIONS if s.check})
            summary = run(plan, argv, folder)
    except (UsageError, KeyboardInterrupt, Terminated) as err:
        if args.debug:
            raise
        if isinstance(err, UsageError):
            print(f"icl-heads: error: {err}", file=sys.stderr)
            return 2
        previous = ignore_interrupts()  # a second Ctrl-C while we say so must not print a traceback
        why = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
        print(f"icl-heads: {why}; no results written ({args.out} is unchanged)", file=sys.stderr)
        if not from_command:  # called from Python: give Ctrl-C back; the command keeps ignoring it until it exits
            restore_interrupts(previous)
        return 130 if isinstance(err, KeyboardInterrupt) else 143
    print("\n".join(headline(summary, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
