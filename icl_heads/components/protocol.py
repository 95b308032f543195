"""The reweighting protocol: component reweighting against K-shot ICL and Calib+ over seeds and templates."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from icl_heads.accuracy import predict
from icl_heads.components.decompose import decompose
from icl_heads.components.estimators import CalibPlus, ComponentReweighting
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLTask, PromptTooLongError, balanced_sample, fixed_demo_prompts, last_two_differ
from icl_heads.records import UNSET, Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance

logger = logging.getLogger("icl_heads")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class ReweightingComparisonConfig(Record):
    """Arguments of :func:`~icl_heads.compare_reweighting`; ``icl_k_skipped`` says why K-shot ICL did not run."""

    k: int = UNSET
    k_demo: int = UNSET
    seeds: list[int] = UNSET
    n_test: int = UNSET
    reweighting: dict[str, Any] = UNSET
    icl_k_skipped: str = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "k", "k_demo", "n_test")


@dataclass(frozen=True, repr=False)
class ReweightingComparison(Result):
    """Reweighting against K-shot ICL and Calib+ over seeds and templates.

    Attributes:
        df: one row per run and method: ``seed, template, method, accuracy`` (and ``kept`` components for
            reweighting).
        weights: ``[run, component]`` learned weights of each run (runs in ``df`` order).
        names: component names.
        label_words: the label words.
        config: the arguments that produced this result.
        provenance: model, versions.
    """

    df: pd.DataFrame
    weights: torch.Tensor
    names: tuple[str, ...]
    label_words: tuple[str, ...]
    config: ReweightingComparisonConfig = field(default_factory=ReweightingComparisonConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Component reweighting vs ICL and Calib+"

    def table(self) -> pd.DataFrame:
        """``method, mean, std, runs``: test accuracy over all runs (std with ``ddof=1``)."""
        g = self.df.groupby("method", sort=False).accuracy
        return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "runs": g.size()}).reset_index()

    def margin(self, method: str = "reweighting", baseline: str | None = None) -> tuple[float, float]:
        """Mean and std over runs of ``accuracy(method) - accuracy(baseline)`` (default baseline ``ICL-{k}``).

        Raises:
            KeyError: an unknown method.
        """
        baseline = baseline or self.baseline
        wide = self.df.pivot_table(index=["seed", "template"], columns="method", values="accuracy")
        if missing := [m for m in (method, baseline) if m not in wide]:
            raise KeyError(f"no method {missing[0]!r}; methods are {list(wide.columns)}")
        diff = (wide[method] - wide[baseline]).to_numpy()
        return float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0

    @property
    def baseline(self) -> str:
        """``ICL-{k}``, or ``ICL-{k_demo}`` when the ``k``-shot prompts did not fit the context."""
        k = self.config["k"] if f"ICL-{self.config['k']}" in set(self.df.method) else self.config["k_demo"]
        return f"ICL-{k}"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {r.method: f"{r.mean:.3f} ± {r.std:.3f}" for r in self.table().itertuples()}
        if skipped := self.config.get("icl_k_skipped"):
            out[f"ICL-{self.config['k']}"] = f"not run: {skipped}"
        methods = set(self.df.method)
        for baseline in dict.fromkeys((self.baseline, f"ICL-{self.config['k_demo']}", "Calib+")):
            if baseline in methods:
                m, s = self.margin(baseline=baseline)
                out[f"reweighting - {baseline}"] = f"{m:+.3f} ± {s:.3f}"
        return out

    def plot(self) -> Figure:
        """Bars of test accuracy per method, mean ± std."""
        return self._draw("plot")


def reweighting_split(
    labels: np.ndarray, *, k: int, k_demo: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One run's examples: ``test`` queries, ``k`` ``labelled`` ones, of which ``demos`` (ordered so the
    last two differ in label) and the ``train`` rest; every set balanced and drawn from ``seed``.

    Raises:
        ValueError: a class has too few examples.
    """
    rng = np.random.default_rng(seed)
    test = balanced_sample(labels, n_test, rng)
    labelled = balanced_sample(labels, k, rng, exclude=test)
    demos = balanced_sample(labels, k_demo, rng, exclude=np.setdiff1d(np.arange(len(labels)), labelled))
    demos = last_two_differ(demos, labels)
    return test, labelled, demos, np.setdiff1d(labelled, demos, assume_unique=True)  # keeps labelled's order


def compare_reweighting(
    model: Any,
    task: ICLTask,
    *,
    k: int = 24,
    k_demo: int = 4,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    templates: Sequence[str] | None = None,
    n_test: int = 200,
    reweighting: dict[str, Any] | None = None,
    icl_k: bool | None = True,
    options: RunOptions | None = None,
) -> ReweightingComparison:
    """Run the reweighting protocol and its baselines over seeds and templates.

    For each seed: ``n_test`` balanced test queries and ``k`` balanced labelled examples (disjoint); ``k_demo``
    balanced labelled examples become the demonstrations, ordered (as the ``k`` of ``ICL-{k}``) so the last two differ
    in label (:func:`~icl_heads.prompts.last_two_differ`, as Chang et al. do), and the other ``k - k_demo`` train the
    reweighting (and Calib+). For each template, the test accuracy of ``ICL-{k_demo}`` (the demonstrations alone),
    ``ICL-{k}`` (all ``k`` labelled examples as demonstrations), ``Calib+`` and ``reweighting``.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task (its template is used when ``templates`` is None).
        k: labelled examples per run.
        k_demo: of which demonstrations.
        seeds: one run per seed and template.
        templates: templates to run.
        n_test: test queries.
        reweighting: hyperparameters for :class:`ComponentReweighting` (``random_state`` defaults to the seed).
        icl_k: run the ``ICL-{k}`` baseline: True (its prompts must fit the context), False (skip it), or None (run it
            where its prompts fit the context; otherwise skip it, say why in ``config["icl_k_skipped"]`` and compare
            against ``ICL-{k_demo}``).
        options: how prompts are run (batch size, padding side, progress bar); does not change the result.

    Returns:
        A :class:`ReweightingComparison`.

    Raises:
        ValueError: ``k_demo`` not in ``[1, k)`` or too few examples.
        PromptTooLongError: ``k`` demonstrations do not fit the model's context and ``icl_k`` is True.
    """
    options = run_options(options)
    if not 1 <= k_demo < k:
        raise ValueError(f"need 1 <= k_demo < k to leave training examples, got k={k}, k_demo={k_demo}")
    if not seeds:
        raise ValueError("give at least one seed")
    templates = tuple(templates) if templates is not None else (task.template,)
    labels = np.asarray(task.labels)
    access = faithful_access(model, "compare_reweighting")
    rows, weights, skipped = [], [], "not requested (icl_k=False)" if icl_k is False else None
    quiet = run_options(options, progress=False)
    for seed in tqdm(list(seeds), desc="reweighting runs", disable=not options.progress):
        test, labelled, demos, train = reweighting_split(labels, k=k, k_demo=k_demo, n_test=n_test, seed=seed)
        for template in templates:
            t_task, base = task.with_template(template), {"seed": seed, "template": template}
            dec_train, dec_test = (
                decompose(access, fixed_demo_prompts(t_task, demos, q), options=quiet) for q in (train, test)
            )
            rw = ComponentReweighting(**{"random_state": seed, **(reweighting or {})}).fit(dec_train)
            rows.append({**base, "method": f"ICL-{k_demo}", "accuracy": dec_test.full_accuracy})
            if skipped is None:
                try:
                    prompts = fixed_demo_prompts(t_task, last_two_differ(labelled, labels), test)
                    many = predict(access, prompts, options=quiet)
                    rows.append({**base, "method": f"ICL-{k}", "accuracy": float(many.correct.float().mean())})
                except PromptTooLongError as err:
                    if icl_k:
                        raise
                    skipped = str(err)
                    logger.warning("ICL-%d baseline skipped: %s", k, err)
                    rows = [r for r in rows if r["method"] != f"ICL-{k}"]
            rows += [
                {**base, "method": "Calib+", "accuracy": CalibPlus().fit(dec_train).score(dec_test)},
                {**base, "method": "reweighting", "accuracy": rw.score(dec_test), "kept": len(rw.kept_components_)},
            ]
            weights.append(torch.tensor(rw.weights_, dtype=torch.float32))
    config = {"k": k, "k_demo": k_demo, "seeds": list(seeds), "n_test": n_test, "reweighting": reweighting or {}}
    return ReweightingComparison(
        df=pd.DataFrame(rows),
        weights=torch.stack(weights),
        names=dec_test.names,
        label_words=tuple(task.label_words),
        config=ReweightingComparisonConfig.from_dict({**config, **({"icl_k_skipped": skipped} if skipped else {})}),
        provenance=provenance(access.name, None, task=task.name, templates=list(templates)),
    )
