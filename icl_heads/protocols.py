"""The two papers' protocols, one call each, each returning a :class:`PaperTable` laid out as the paper's table.

Chang, Thomason & Jia (2024, arXiv 2406.13131), Tables 4, 1, 3; Yu & Ananiadou (2024, arXiv 2402.02872), heads and bias.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from icl_heads.components.decompose import decompose
from icl_heads.components.estimators import ComponentReweighting
from icl_heads.components.protocol import compare_reweighting, reweighting_split
from icl_heads.debias import correct_bias
from icl_heads.faithfulness import faithful_access
from icl_heads.heads import find_in_context_heads
from icl_heads.named_tasks import MEANINGLESS_WORDS
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLTask, balanced_sample, fixed_demo_prompts
from icl_heads.records import UNSET, Provenance, Record
from icl_heads.results import Result, json_type, provenance
from icl_heads.stats import t_interval
from icl_heads.tuning import no_bias_to_reduce

logger = logging.getLogger("icl_heads")

AVERAGE = "Avg."
CHANG, YU = "Chang, Thomason & Jia 2024 (arXiv 2406.13131)", "Yu & Ananiadou 2024 (arXiv 2402.02872)"


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class PaperTableConfig(Record):
    """Which paper and table a :class:`PaperTable` reproduces, and the settings of its runs."""

    paper: str = UNSET
    table: str = UNSET
    metric: str = UNSET
    settings: dict[str, Any] = UNSET


@dataclass(frozen=True, repr=False)
class PaperTable(Result):
    """A paper's table reproduced: one row per run.

    Attributes:
        df: one row per task, method and run: ``task, method, seed, template, value, note`` (``value`` empty and
            ``note`` saying why when a run could not be made).
        config: the paper, the table, what ``value`` measures and the run settings.
        provenance: model and versions.
    """

    df: pd.DataFrame
    config: PaperTableConfig = field(default_factory=PaperTableConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Paper table"

    def table(self) -> pd.DataFrame:
        """``task, method, mean, sd, n, ci_low, ci_high, note``, tasks in run order then ``Avg.``.

        ``sd`` is over runs (``ddof=1``, the spread the papers report as ±); the interval is a 95% t interval of the
        mean over the ``n`` seed × format runs. ``Avg.`` averages each run over the tasks that have it (a run is one
        seed and format), then takes the same statistics over those runs. ``note`` counts the runs that could not be
        made, and says why.
        """
        groups = self.df.groupby(["task", "method"], sort=False)
        rows = [_stats(t, m, g.value.dropna(), _missing(g)) for (t, m), g in groups]
        if self.df.task.nunique() > 1:
            for m, g in self.df.groupby("method", sort=False):
                per_run = g.dropna(subset=["value"]).groupby(["seed", "template"]).value.mean()
                rows.append(_stats(AVERAGE, m, per_run, _missing(g)))
        return pd.DataFrame(rows, columns=["task", "method", "mean", "sd", "n", "ci_low", "ci_high", "note"])

    def paired(self, method: str, baseline: str) -> pd.DataFrame:
        """``task, mean, sd, n, ci_low, ci_high`` of ``method - baseline`` over runs both have (paired t interval),
        tasks then ``Avg.`` (each run's difference averaged over its tasks).

        Raises:
            KeyError: a method that is not in the table.
        """
        if missing := [m for m in (method, baseline) if m not in set(self.df.method)]:
            raise KeyError(f"no method {missing[0]!r}; methods are {sorted(set(self.df.method))}")
        wide = self.df.pivot_table(index=["task", "seed", "template"], columns="method", values="value")
        diff = (wide[method] - wide[baseline]).dropna().rename("value").reset_index()
        rows = [_stats(t, "", g.value) for t, g in diff.groupby("task", sort=False)]
        if diff.task.nunique() > 1:
            rows.append(_stats(AVERAGE, "", diff.groupby(["seed", "template"]).value.mean()))
        return pd.DataFrame(rows).drop(columns=["method", "note"])

    def summary(self) -> dict[str, Any]:
        t = self.table()
        shown = t[t.task == AVERAGE] if (t.task == AVERAGE).any() else t
        return {f"{r.task} {r.method}": f"{r.mean:.3f} ± {r.sd:.3f} (n={r.n})" for r in shown.itertuples() if r.n}


def _missing(group: pd.DataFrame) -> str:
    """'k runs not made: why' for the runs of ``group`` without a value ('' when none)."""
    gone = group[group.value.isna()]
    return f"{len(gone)} run(s) not made: {gone.note.iloc[0]}" if len(gone) else ""


def _stats(task: str, method: str, values: Any, note: str = "") -> dict[str, Any]:
    x = np.asarray(values, dtype=float)
    mean, lo, hi = t_interval(x) if x.size else (float("nan"),) * 3
    sd = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    return dict(task=task, method=method, mean=mean, sd=sd, n=int(x.size), ci_low=lo, ci_high=hi, note=note)


def _table(model_name: str, rows: list[dict], paper: str, table: str, metric: str, **settings: Any) -> PaperTable:
    df = pd.DataFrame(rows, columns=["task", "method", "seed", "template", "value", "note"])
    df["value"], df["note"] = df.value.astype(float), df.note.fillna("").astype(str)
    config = PaperTableConfig(paper=paper, table=table, metric=metric, settings=settings)
    return PaperTable(df=df, config=config, provenance=provenance(model_name, None, tasks=list(dict.fromkeys(df.task))))


def _rows(task: str, seed: int, template: str, values: Mapping[str, Any], note: str = "") -> list[dict[str, Any]]:
    """One run's rows: the value of each method, by method name (None for a run not made, ``note`` saying why)."""
    values = {m: None if v is None else float(v) for m, v in values.items()}
    return [dict(task=task, seed=seed, template=template, method=m, value=v, note=note) for m, v in values.items()]


def _check_tasks(tasks: Sequence[ICLTask]) -> list[ICLTask]:
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, ICLTask) for t in tasks):
        raise TypeError(f"tasks must be a non-empty sequence of ICLTask, got {tasks!r:.200}")
    if len({t.name for t in tasks}) != len(tasks):
        raise ValueError(f"task names {[t.name for t in tasks]} repeat; give each its own (ICLTask(name=...))")
    return tasks


def demo_shots(n_classes: int, shots: int = 4) -> int:
    """Chang et al.'s demonstration count: ``shots``, or one per class when ``shots`` is not a multiple
    of the classes but the class count is below it (3 for three-class NLI)."""
    return shots if shots % n_classes == 0 or n_classes > shots else n_classes


def _component_accuracy(dec: Any) -> pd.Series:
    """Accuracy of each head and MLP alone (the paper's components), by name."""
    correct = (dec.logits.argmax(-1) == dec.golds[:, None]).float().mean(0).numpy()
    return pd.Series(correct, index=list(dec.names))[dec.df.type.isin(["head", "mlp"]).to_numpy()]


def _chang(
    analysis: str,
    model: Any,
    tasks: Sequence[ICLTask],
    templates: Mapping[str, Sequence[str]] | None,
    seeds: Sequence[int],
    k: int,
    n_test: int,
    options: RunOptions | None,
) -> PaperTable:
    """Table 4 (``analysis="chang_reweighting"``) or Table 1 (``"chang_components"``), on the same prompts."""
    tasks, options = _check_tasks(tasks), run_options(options)
    access, rows = faithful_access(model, analysis), []
    for task in tasks:
        k_demo, formats = demo_shots(len(task.classes)), tuple((templates or {}).get(task.name, (task.template,)))
        if analysis == "chang_reweighting":
            kw = {"seeds": seeds, "templates": formats, "n_test": n_test, "options": options}
            res = compare_reweighting(access, task, k=k, k_demo=k_demo, icl_k=None, **kw)
            names = {f"ICL-{k_demo}": "Standard 3,4", f"ICL-{k}": f"Standard {k}", "Calib+": f"Calib+ {k}"}
            for r in res.df.itertuples():
                rows += _rows(task.name, r.seed, r.template, {names.get(r.method, f"CompRW {k}"): r.accuracy})
            if skipped := res.config.get("icl_k_skipped"):
                rows.append({"task": task.name, "method": f"Standard {k}", "value": None, "note": skipped})
            continue
        for seed in seeds:
            test, _, demos, _ = reweighting_split(np.asarray(task.labels), k=k, k_demo=k_demo, n_test=n_test, seed=seed)
            for template in formats:
                dec = decompose(access, fixed_demo_prompts(task.with_template(template), demos, test), options=options)
                acc = _component_accuracy(dec)
                values = {"Full": dec.full_accuracy, "Oracle-T1": acc.max(), "Oracle-B1": acc.min()}
                rows += _rows(task.name, seed, template, values)
    table = "Table 4" if analysis == "chang_reweighting" else "Table 1"
    return _table(access.name, rows, CHANG, table, "accuracy", seeds=list(seeds), k=k, n_test=n_test)


def chang_reweighting(
    model: Any,
    tasks: Sequence[ICLTask],
    *,
    templates: Mapping[str, Sequence[str]] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    k: int = 24,
    n_test: int = 200,
    options: RunOptions | None = None,
) -> PaperTable:
    """Chang et al.'s Table 4: ``Standard 3,4``, ``Standard 24``, ``Calib+ 24`` and ``CompRW 24`` per task.

    ``K'``-shot ICL against 24-shot ICL, Calib+ and component reweighting with the same 24 labelled examples, through
    :func:`~icl_heads.components.protocol.compare_reweighting`.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        tasks: the tasks (their names label the rows).
        templates: the prompt formats of each task, by task name (default: the task's own template).
        seeds: one run per seed and format, each with its own labelled examples and test queries.
        k: labelled examples per run (the 24 of the paper).
        n_test: test queries per run.
        options: how prompts are run (batch size, padding side, progress bar); does not change the result.

    Returns:
        A :class:`PaperTable` of test accuracies. ``Standard 24`` prompts longer than the
        model's context are skipped with a note (the other methods still run).

    Raises:
        TypeError: ``tasks`` are not ICLTasks.
        ValueError: repeated task names, or a task with too few examples per class.
    """
    return _chang("chang_reweighting", model, tasks, templates, seeds, k, n_test, options)


def chang_components(
    model: Any,
    tasks: Sequence[ICLTask],
    *,
    templates: Mapping[str, Sequence[str]] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    k: int = 24,
    n_test: int = 200,
    options: RunOptions | None = None,
) -> PaperTable:
    """Chang et al.'s Table 1: ``Full`` against the best (``Oracle-T1``) and worst (``Oracle-B1``) single component.

    The prompts are those of :func:`chang_reweighting` (same seeds, demonstrations and test queries). Both oracles are
    chosen on the test queries themselves, as in the paper (a best-of-many selection: an upper bound, not a held-out
    accuracy).

    Args:
        model, tasks, templates, seeds, k, n_test: as :func:`chang_reweighting`.
        options: how prompts are run (batch size, padding side, progress bar); does not change the result.

    Returns:
        A :class:`PaperTable` of test accuracies.

    Raises:
        TypeError: ``tasks`` are not ICLTasks.
        ValueError: repeated task names, or a task with too few examples per class.
    """
    return _chang("chang_components", model, tasks, templates, seeds, k, n_test, options)


def paired_task(source: ICLTask, target: ICLTask, template: str) -> tuple[ICLTask, int]:
    """One task holding ``source``'s examples then ``target``'s (offset returned), shown as ``source`` is.

    Raises:
        ValueError: the two tasks have different numbers of classes.
    """
    if len(source.classes) != len(target.classes):
        raise ValueError(
            f"{target.name} has classes {list(target.classes)} but {source.name} has {list(source.classes)}; "
            "a transfer pair needs the same classes in the same order"
        )
    texts, labels, name = source.texts + target.texts, source.labels + target.labels, f"{source.name}->{target.name}"
    return replace(source, texts=texts, labels=labels, template=template, name=name), len(source.texts)


def chang_transfer(
    model: Any,
    pairs: Sequence[tuple[ICLTask, ICLTask]],
    *,
    templates: Mapping[str, Sequence[str]] | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    k: int = 24,
    n_test: int = 200,
    reweighting: dict[str, Any] | None = None,
    options: RunOptions | None = None,
) -> PaperTable:
    """Chang et al.'s Table 3: out-of-distribution transfer from each source task to its target.

    Per seed and format of the source: demonstrations and labelled examples from the source (as
    :func:`chang_reweighting` draws them), test queries from the source and the target. ``Full``: the model on the
    target queries; ``Transfer-1``: the single component most accurate on the source queries, on the target;
    ``Oracle-1``: the best component on the target itself (selected on its test queries, as in the paper); ``CompRW
    transfer 24``: a component reweighting fitted on the source's ``k - k'`` training examples, on the target.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        pairs: ``(source, target)`` tasks with the same classes in the same order (the target is shown with the
            source's label words and formats).
        templates: the formats of each source task, by name (default: its own template).
        seeds, k, n_test: as :func:`chang_reweighting`.
        reweighting: hyperparameters of :class:`~icl_heads.components.estimators.ComponentReweighting`.
        options: how prompts are run (batch size, padding side, progress bar); does not change the result.

    Returns:
        A :class:`PaperTable` of target accuracies, rows named by the target task.

    Raises:
        TypeError: pairs that are not ICLTasks.
        ValueError: a pair with different class counts, or too few examples.
    """
    options = run_options(options)
    access, rows = faithful_access(model, "chang_transfer"), []
    for source, target in pairs:
        _check_tasks([source, target])
        k_demo, src_labels = demo_shots(len(source.classes)), np.asarray(source.labels)
        for seed in seeds:
            test, _, demos, train = reweighting_split(src_labels, k=k, k_demo=k_demo, n_test=n_test, seed=seed)
            tgt = balanced_sample(np.asarray(target.labels), n_test, np.random.default_rng(seed))
            for template in tuple((templates or {}).get(source.name, (source.template,))):
                both, offset = paired_task(source, target, template)
                dec_src, dec_tgt, dec_train = (
                    decompose(access, fixed_demo_prompts(both, demos, q), options=options)
                    for q in (test, tgt + offset, train)
                )
                src_acc, tgt_acc = _component_accuracy(dec_src), _component_accuracy(dec_tgt)
                rw = ComponentReweighting(**{"random_state": seed, **(reweighting or {})}).fit(dec_train)
                values = {"Full": dec_tgt.full_accuracy, "Transfer-1": tgt_acc[src_acc.idxmax()]}
                values |= {"Oracle-1": tgt_acc.max(), f"CompRW transfer {k}": rw.score(dec_tgt)}
                rows += _rows(target.name, seed, template, values)
    return _table(access.name, rows, CHANG, "Table 3", "accuracy", seeds=list(seeds), k=k, n_test=n_test)


def meaningless_labels(task: ICLTask, words: Sequence[str] = MEANINGLESS_WORDS[:2]) -> ICLTask:
    """``task`` with label words that carry no meaning; a task with more classes keeps its first ``len(words)``.

    Raises:
        ValueError: fewer than two words, or a kept class without examples.
    """
    if len(words) < 2:
        raise ValueError(f"give at least two label words, got {list(words)}")
    keep = [i for i, y in enumerate(task.labels) if y < len(words)]
    n = min(len(words), len(task.classes))
    texts, classes = [task.texts[i] for i in keep], [task.classes[task.labels[i]] for i in keep]
    kw = {"label_words": tuple(words[:n]), "template": task.template, "classes": task.classes[:n], "name": task.name}
    return ICLTask.from_pairs(texts, classes, **kw)


def yu_heads(
    model: Any,
    tasks: Sequence[ICLTask],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    n: int = 200,
    shots: int = 4,
    n_random: int = 20,
    options: RunOptions | None = None,
) -> PaperTable:
    """Yu & Ananiadou's in-context heads with meaningless labels: ICL accuracy, and with the heads ablated.

    Per task and seed: the heads are found on ``n`` prompts and verified on ``n`` other prompts (``ICL``, ``in-context
    heads ablated``, ``random heads ablated``: the mean of ``n_random`` random sets of the same size), all with
    ``foo``/``bar`` labels (:func:`meaningless_labels`).

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        tasks: the tasks (their first two classes are kept).
        seeds: one run per seed (its prompts, verification prompts and random head sets).
        n: prompts to find the heads on, and as many to verify them on.
        shots: demonstrations per prompt.
        n_random: random head sets per run.
        options: how prompts are run (batch size, padding side, progress bar); does not change the result.

    Returns:
        A :class:`PaperTable` of accuracies on the held-out prompts.

    Raises:
        TypeError, ValueError: as :func:`~icl_heads.heads.find_in_context_heads`.
    """
    options, rows = run_options(options), []
    methods = ("ICL", "in-context heads ablated", "random heads ablated")
    for task in map(meaningless_labels, _check_tasks(tasks)):
        for seed in seeds:
            prompts, verify = task.prompts(n, shots, seed=2 * seed), task.prompts(n, shots, seed=2 * seed + 1)
            found = find_in_context_heads(
                model, prompts, n_random=n_random, seed=seed, verify_prompts=verify, options=options
            )
            accuracies = (found.accuracy, found.ablated_accuracy, found.random_ablated_accuracy)
            rows += _rows(task.name, seed, task.template, dict(zip(methods, accuracies, strict=True)))
    name = faithful_access(model, "yu_heads").name
    return _table(name, rows, YU, "in-context heads", "accuracy", seeds=list(seeds), n=n, shots=shots)


def yu_bias(
    model: Any,
    tasks: Sequence[ICLTask],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    n: int = 200,
    tune_n: int = 100,
    options: RunOptions | None = None,
) -> PaperTable:
    """Yu & Ananiadou's bias conditions with meaningless labels: majority and recency bias, corrected.

    Per task, seed and bias: :func:`~icl_heads.debias.correct_bias` with its default method and heads found on the
    tuning prompts; rows ``{bias} bias``, ``{bias} bias corrected`` (the headline bias before and after, same test
    prompts) and ``{bias} bias reduction (%)``. A run whose bias before correction has a 95% interval that includes 0
    has no reduction (the rule of :func:`~icl_heads.compare_corrections`), and its note says so.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        tasks: the tasks (their first two classes are kept).
        seeds: one run per seed (its test and tuning prompts).
        n: test prompts per run.
        tune_n: tuning prompts per run.
        options: how prompts are run (batch size, padding side, progress bar); does not change the result.

    Returns:
        A :class:`PaperTable` of bias sizes and reductions.

    Raises:
        TypeError, ValueError: as :func:`~icl_heads.debias.correct_bias` (other than "no bias to reduce").
    """
    options, rows = run_options(options), []
    for task in map(meaningless_labels, _check_tasks(tasks)):
        for seed, bias in product(seeds, ("majority", "recency")):
            kw = {"n": n, "seed": 3 * seed, "tune_n": tune_n, "tune_seed": 3 * seed + 1, "options": options}
            methods = (f"{bias} bias", f"{bias} bias corrected", f"{bias} bias reduction (%)")
            try:
                fix = correct_bias(model, task, bias=bias, **kw)
            except ValueError as err:
                if "bias to reduce" not in str(err):
                    raise
                logger.warning("%s bias on %s (seed %d): %s", bias, task.name, seed, err)
                rows += _rows(task.name, seed, task.template, {methods[2]: None}, note=str(err))
                continue
            b = fix.df.set_index("metric").loc["bias"]
            rows += _rows(task.name, seed, task.template, {methods[0]: b.before, methods[1]: b.after})
            note = no_bias_to_reduce(bias, b.before_ci_low, b.before_ci_high) or ""
            rows += _rows(task.name, seed, task.template, {methods[2]: None if note else fix.reduction}, note=note)
    name = faithful_access(model, "yu_bias").name
    return _table(name, rows, YU, "bias corrections", "bias", seeds=list(seeds), n=n, tune_n=tune_n)
