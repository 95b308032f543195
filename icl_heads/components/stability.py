"""How stable component accuracies are across demonstration sets and templates (Chang, Thomason & Jia, 2024).

Every run decomposes one shared set of balanced queries behind one demonstration
set and template; :func:`component_stability` compares the runs that differ in one
factor by the Pearson correlation of their component accuracies and the overlap
(IoU) of their top components.
"""

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
        df: one row per pair of runs that differ in one factor: ``axis`` ("demo set"
            or "template"), ``fixed`` (the shared factor), ``a``, ``b``, ``pearson``
            (of component accuracies), ``top_iou`` (of the top components),
            ``full_accuracy_a``, ``full_accuracy_b``.
        runs: one row per (template, demo set): ``template, demo_set, full_accuracy,
            best_component, best_accuracy``.
        accuracies: ``[template, demo_set, component]`` accuracy of each component alone.
        names: component names.
        templates: the templates.
        config: the arguments that produced this result.
        provenance: model, versions.

    :meth:`summary` gives the mean Pearson and IoU per axis next to the standard
    deviation (``ddof=0``) of full-model and of component accuracies.
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
        for axis in ("demo set", "template"):
            part = self.df[self.df.axis == axis]
            if len(part):
                out[f"pearson across {axis}s"] = float(part.pearson.mean())
                out[f"top-{self.config.get('top', 5)} IoU across {axis}s"] = float(part.top_iou.mean())
        full = self.runs.pivot(index="template", columns="demo_set", values="full_accuracy")
        out["full-model accuracy (mean)"] = float(full.values.mean())
        out["full-model accuracy std across demo sets"] = float(full.std(axis=1, ddof=0).mean())
        out["component accuracy std across demo sets"] = float(self.accuracies.std(1, correction=0).mean())
        if len(full) > 1:
            out["full-model accuracy std across templates"] = float(full.std(axis=0, ddof=0).mean())
            out["component accuracy std across templates"] = float(self.accuracies.std(0, correction=0).mean())
        return out

    def plot(self, axis: str = "demo set", pair: int = 0) -> Figure:
        """Component accuracy in one run against another (one pair of ``axis``), names on hover."""
        return self._draw("plot", axis=axis, pair=pair)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        logger.warning("component accuracies are constant in one run; their correlation is undefined (NaN)")
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _top(acc: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-acc, kind="stable")[:k].tolist())


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

    Every run shares one set of ``n`` balanced queries; each demonstration set is
    ``shots`` balanced examples (disjoint from the queries) prepended to every query.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task (its template is used when ``templates`` is None).
        templates: templates to compare.
        n_demo_sets: demonstration sets per template (at least 2, or 1 with 2+ templates).
        shots: demonstrations per set.
        n: queries.
        top: size of the top-component sets compared by IoU.
        seed: seed of the queries and demonstration sets.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

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
    acc: dict[tuple[int, int], np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    names: tuple[str, ...] = ()
    steps = [(t, d) for t in range(len(templates)) for d in range(n_demo_sets)]
    for t, d in tqdm(steps, desc="component stability", disable=not options.progress):
        dec = decompose(
            model,
            fixed_demo_prompts(task.with_template(templates[t]), demo_sets[d], queries),
            options=run_options(options, progress=False),
        )
        names = dec.names
        acc[t, d] = dec.df.accuracy.to_numpy()
        best = dec.df.loc[dec.df.accuracy.idxmax()]
        rows.append(
            {"template": templates[t], "demo_set": d, "full_accuracy": dec.full_accuracy,
             "best_component": best.component, "best_accuracy": float(best.accuracy)}
        )  # fmt: skip
    a = np.stack([np.stack([acc[t, d] for d in range(n_demo_sets)]) for t in range(len(templates))])
    full = np.array([r["full_accuracy"] for r in rows]).reshape(len(templates), n_demo_sets)
    pairs = []
    for t in range(len(templates)):
        for d1, d2 in combinations(range(n_demo_sets), 2):
            pairs.append(_pair("demo set", templates[t], d1, d2, a[t, d1], a[t, d2], full[t, d1], full[t, d2], top))
    for d in range(n_demo_sets):
        for t1, t2 in combinations(range(len(templates)), 2):
            pairs.append(
                _pair("template", d, templates[t1], templates[t2], a[t1, d], a[t2, d], full[t1, d], full[t2, d], top)
            )
    access = faithful_access(model, "component_stability")
    return ComponentStability(
        df=pd.DataFrame(pairs),
        runs=pd.DataFrame(rows),
        accuracies=torch.tensor(a, dtype=torch.float32),
        names=tuple(names),
        templates=templates,
        config=ComponentStabilityConfig(n_demo_sets=n_demo_sets, shots=shots, n=n, top=top, seed=seed),
        provenance=provenance(access.name, None, task=task.name, n_queries=n),
    )


def _pair(axis: str, fixed: Any, a: Any, b: Any, x: np.ndarray, y: np.ndarray, fa: float, fb: float, top: int) -> dict:
    ta, tb = _top(x, top), _top(y, top)
    return {
        "axis": axis, "fixed": str(fixed), "a": str(a), "b": str(b), "pearson": _pearson(x, y),
        "top_iou": len(ta & tb) / len(ta | tb), "full_accuracy_a": float(fa), "full_accuracy_b": float(fb),
    }  # fmt: skip
