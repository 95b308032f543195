"""How stable component accuracies are across demonstration sets and templates (Chang, Thomason & Jia, 2024)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads.components.decompose import decompose
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLTask, balanced_sample, fixed_demo_prompts
from icl_heads.records import Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance

logger = logging.getLogger(__name__)


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class ComponentStabilityConfig(Record):
    """Arguments of :func:`~icl_heads.component_stability`."""

    n_demo_sets: int = 5
    shots: int = 4
    n: int = 200
    top: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "n_demo_sets", "shots", "n", "top")


@dataclass(frozen=True, repr=False)
class ComponentStability(Result):
    """How stable component accuracies are across demonstration sets and templates.

    Attributes:
        df: one row per pair of runs that differ in one factor: ``axis`` ("demo set" or "template"), ``fixed`` (the
            shared factor), ``a``, ``b``, ``pearson`` (of component accuracies), ``top_iou`` (of the top components),
            ``full_accuracy_a``, ``full_accuracy_b``.
        runs: one row per (template, demo set): ``template, demo_set, full_accuracy, best_component, best_accuracy``.
        accuracies: ``[template, demo_set, component]`` accuracy of each component alone.
        names: component names.
        templates: the templates.
        config: the arguments that produced this result.
        provenance: model, versions.

    :meth:`summary` gives the mean Pearson and IoU per axis next to the standard deviation (``ddof=0``) of full-model
    and of component accuracies.
    """

    df: pd.DataFrame
    runs: pd.DataFrame
    accuracies: Float[Tensor, "template demo_set component"]
    names: tuple[str, ...]
    templates: tuple[str, ...]
    config: ComponentStabilityConfig = field(default_factory=ComponentStabilityConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Component stability"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for axis, part in self.df.groupby("axis", sort=False):
            out[f"pearson across {axis}s"] = float(part.pearson.mean())
            out[f"top-{self.config.get('top', 5)} IoU across {axis}s"] = float(part.top_iou.mean())
        full = self.runs.pivot(index="template", columns="demo_set", values="full_accuracy")
        out["full-model accuracy (mean)"] = float(full.values.mean())
        for axis, dim in [("demo sets", 1), ("templates", 0)][: 1 + (len(full) > 1)]:
            out[f"full-model accuracy std across {axis}"] = float(full.std(axis=dim, ddof=0).mean())
            out[f"component accuracy std across {axis}"] = float(self.accuracies.std(dim, correction=0).mean())
        return out

    def plot(self, axis: str = "demo set", pair: int = 0) -> Figure:
        """Component accuracy in one run against another (one pair of ``axis``), names on hover."""
        return self._draw("plot", axis=axis, pair=pair)


def _pair(axis: str, fixed: Any, a: Any, b: Any, x: np.ndarray, y: np.ndarray, fa: float, fb: float, top: int) -> tuple:
    """One row of :attr:`ComponentStability.df`: runs ``a`` and ``b`` (accuracies ``x``, ``y``) compared."""
    if constant := x.std() == 0 or y.std() == 0:
        logger.warning("component accuracies are constant in one run; their correlation is undefined (NaN)")
    ta, tb = (set(np.argsort(-acc, kind="stable")[:top].tolist()) for acc in (x, y))
    pearson = float("nan") if constant else float(np.corrcoef(x, y)[0, 1])
    return axis, str(fixed), str(a), str(b), pearson, len(ta & tb) / len(ta | tb), float(fa), float(fb)


def component_stability(
    model: Any,
    task: ICLTask,
    *,
    templates: Sequence[str] | None = None,
    n_demo_sets: int = 5,
    shots: int = 4,
    n: int = 200,
    top: int = 5,
    seed: int = 0,
    options: RunOptions | None = None,
) -> ComponentStability:
    """Compare component accuracies across demonstration sets and templates.

    Every run shares one set of ``n`` balanced queries; each demonstration set is ``shots`` balanced examples
    (disjoint from the queries) prepended to every query. Runs that differ in one factor are compared by the Pearson
    correlation of their component accuracies and the overlap (IoU) of their top components.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task (its template is used when ``templates`` is None).
        templates: templates to compare.
        n_demo_sets: demonstration sets per template (at least 2, or 1 with 2+ templates).
        shots: demonstrations per set.
        n: queries.
        top: size of the top-component sets compared by IoU.
        seed: seed of the queries and demonstration sets.
        options: how prompts are run (batch size, padding side, progress bar); does not change the result.

    Returns:
        A :class:`ComponentStability` result.

    Raises:
        ValueError: fewer than two runs to compare along any axis, ``top < 1``, or too few examples.
    """
    options = run_options(options)
    templates = tuple(templates) if templates is not None else (task.template,)
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if n_demo_sets < 1 or (n_demo_sets < 2 and len(templates) < 2):
        raise ValueError(f"need two demonstration sets or two templates to compare; got n_demo_sets={n_demo_sets}")
    labels = np.asarray(task.labels)
    queries = balanced_sample(labels, n, np.random.default_rng([seed, 0]))
    demo_sets = [
        balanced_sample(labels, shots, np.random.default_rng([seed, 1, d]), queries) for d in range(n_demo_sets)
    ]
    T, rows, acc = len(templates), [], []
    steps = [(t, d) for t in range(T) for d in range(n_demo_sets)]
    for t, d in tqdm(steps, desc="component stability", disable=not options.progress):
        prompts = fixed_demo_prompts(task.with_template(templates[t]), demo_sets[d], queries)
        dec = decompose(model, prompts, options=run_options(options, progress=False))
        acc.append(dec.df.accuracy.to_numpy())
        best = dec.df.loc[dec.df.accuracy.idxmax()]
        rows.append((templates[t], d, dec.full_accuracy, best.component, float(best.accuracy)))
    runs = pd.DataFrame(rows, columns=["template", "demo_set", "full_accuracy", "best_component", "best_accuracy"])
    a = np.stack(acc).reshape(T, n_demo_sets, -1)
    full = runs.full_accuracy.to_numpy().reshape(T, n_demo_sets)
    pairs = [
        _pair("demo set", templates[t], d1, d2, a[t, d1], a[t, d2], full[t, d1], full[t, d2], top)
        for t in range(T)
        for d1, d2 in combinations(range(n_demo_sets), 2)
    ]
    pairs += [
        _pair("template", d, templates[t1], templates[t2], a[t1, d], a[t2, d], full[t1, d], full[t2, d], top)
        for d in range(n_demo_sets)
        for t1, t2 in combinations(range(T), 2)
    ]
    return ComponentStability(
        df=pd.DataFrame(
            pairs, columns=["axis", "fixed", "a", "b", "pearson", "top_iou", "full_accuracy_a", "full_accuracy_b"]
        ),
        runs=runs,
        accuracies=torch.tensor(a, dtype=torch.float32),
        names=dec.names,
        templates=templates,
        config=ComponentStabilityConfig(n_demo_sets=n_demo_sets, shots=shots, n=n, top=top, seed=seed),
        provenance=provenance(faithful_access(model, "component_stability").name, None, task=task.name, n_queries=n),
    )
