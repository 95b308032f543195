"""``find_in_context_heads``: score, select the top heads, and prove it by ablation against random heads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads._checks import check_int
from icl_heads.access import Head
from icl_heads.accuracy import Predictions, interval_columns, predict
from icl_heads.faithfulness import faithful_access
from icl_heads.interventions import HeadAblation
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.reading import reading_roles
from icl_heads.records import UNSET, Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, n_prompts, provenance
from icl_heads.scoring import METHODS, head_names, n_selected, score_heads, top_heads
from icl_heads.stats import Estimate, empirical_p, from_samples, wilson


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class InContextHeadsConfig(Record):
    """Arguments of :func:`~icl_heads.find_in_context_heads`."""

    method: str = UNSET
    fraction: float | None = UNSET
    k: int = UNSET
    also: list[str] | tuple[str, ...] = UNSET
    verify: bool = UNSET
    held_out_verification: bool = UNSET
    n_verify: int = UNSET
    n_random: int = UNSET
    seed: int = UNSET
    rescore: Any = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "k")
        if isinstance(self.fraction, float) and not 0 < self.fraction <= 1:
            raise ValueError(f"InContextHeadsConfig: fraction must be in (0, 1], got {self.fraction!r}")


class NotVerifiedError(ValueError, AttributeError):
    """The heads were found with ``verify=False``, so there is no verification to read (``hasattr`` is False)."""


@dataclass(frozen=True, repr=False)
class InContextHeads(Result):
    """The in-context heads of a model on a set of prompts, with the evidence.

    Attributes:
        heads: the selected heads, best first, as ``(layer, head)``.
        heads_by_label: the top heads scored on prompts of each gold label (foo heads, bar heads).
        scores: ``[layer, head]`` mean scores, keyed ``"{method}"`` and ``"{method}:{label_word}"`` (that gold).
        df: tidy scores: ``layer, head, name, method, label, score, rank, selected``.
        verification: accuracy before/after ablation (``condition`` rows), or None.
        random_accuracies: label-set accuracy after ablating each random head set.
        reading: where every head reads (see :func:`~icl_heads.reading.reading_roles`), or None.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.

    ``accuracy``, ``ablated_accuracy`` and ``random_ablated_accuracy`` read the verification
    (each an :class:`~icl_heads.stats.Estimate` whose ``n`` counts its prompts or random sets);
    they raise :class:`NotVerifiedError` (which ``hasattr`` treats as absent) when ``verify=False``.
    """

    heads: tuple[Head, ...]
    heads_by_label: dict
    scores: dict
    df: pd.DataFrame
    verification: pd.DataFrame | None = None
    random_accuracies: Tensor | None = None
    reading: pd.DataFrame | None = None
    config: InContextHeadsConfig = field(default_factory=InContextHeadsConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "In-context heads"

    def _verified(self, condition: str) -> Estimate:
        if self.verification is None:
            raise NotVerifiedError("the heads were not verified; run find_in_context_heads with verify=True")
        row = self.verification.set_index("condition").loc[condition]
        if condition == "random heads":
            return Estimate(row.accuracy, row.ci_low, row.ci_high, int(row.n_sets), "samples")
        n = self.config.get("n_verify")  # the prompts the verification ran on
        return Estimate(row.accuracy, row.ci_low, row.ci_high, n_prompts(self.provenance) if n is None else n, "wilson")

    @property
    def accuracy(self) -> Estimate:
        """Label-set accuracy without ablation, with its 95% Wilson interval over prompts.

        Raises:
            NotVerifiedError: the heads were not verified (a ``ValueError``).
        """
        return self._verified("none")

    @property
    def ablated_accuracy(self) -> Estimate:
        """Accuracy with the found heads ablated, with its 95% Wilson interval over prompts.

        Raises:
            NotVerifiedError: the heads were not verified (a ``ValueError``).
        """
        return self._verified("found heads")

    @property
    def random_ablated_accuracy(self) -> Estimate:
        """Mean accuracy with random head sets of the same size ablated; the interval holds 95% of the sets.

        Raises:
            NotVerifiedError: the heads were not verified (a ``ValueError``).
        """
        return self._verified("random heads")

    @property
    def method(self) -> str:
        return self.config.get("method", "logprob_increase")

    @property
    def names(self) -> list[str]:
        return head_names(self.heads)

    def score_table(self, method: str | None = None, label: str = "all") -> Tensor:
        """The ``[layer, head]`` scores of one method and label (``"all"`` or a label word).

        Raises:
            KeyError: the method or label was not computed (lists what was).
        """
        key = method or self.method
        key = key if label == "all" else f"{key}:{label}"
        if key not in self.scores:
            raise KeyError(f"no scores for {key!r}; available: {sorted(self.scores)}")
        return self.scores[key]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"heads": ", ".join(self.names), "method": self.method}
        out |= {f"{label} heads": ", ".join(head_names(hs)) for label, hs in self.heads_by_label.items()}
        if self.verification is not None:
            out["accuracy"], out["accuracy, found heads ablated"] = float(self.accuracy), float(self.ablated_accuracy)
            out["accuracy, random heads ablated (mean)"] = float(self.random_ablated_accuracy)
            out["random 95% interval"] = self.random_ablated_accuracy.ci
            out["rank p"] = float(self.verification.set_index("condition").loc["found heads", "rank_p"])
        if self.reading is not None:
            r = self.reading[self.reading.name.isin(self.names) & (self.reading.role != "bos")]
            top = r.loc[r.groupby("name").attention.idxmax()].set_index("name")
            out["found heads read at"] = ", ".join(f"{n}: {top.loc[n, 'role']}" for n in self.names if n in top.index)
        return out

    def heatmap(self, method: str | None = None, label: str = "all") -> Figure:
        """Layer x head heatmap of one score; selected heads outlined; hover shows name, score, rank."""
        return self._draw("heatmap", method=method, label=label)

    def plot(self, method: str | None = None, label: str = "all") -> Figure:
        """The main figure: the layer x head heatmap of :meth:`heatmap`."""
        return self.heatmap(method=method, label=label)

    def plot_verification(self) -> Figure:
        """Accuracy with no ablation, the found heads ablated, and random head sets ablated."""
        return self._draw("plot_verification")


def _tidy(scores: dict[str, Tensor], heads: tuple[Head, ...]) -> pd.DataFrame:
    rows = []
    for key, table in scores.items():
        method, _, label = key.partition(":")
        flat = table.flatten()
        rank = torch.empty_like(flat, dtype=torch.long)
        rank[torch.argsort(-flat, stable=True)] = torch.arange(1, flat.numel() + 1)
        for i, value in enumerate(flat.tolist()):
            layer, head = divmod(i, table.shape[1])
            row = {"layer": layer, "head": head, "name": f"L{layer}H{head}", "method": method, "label": label or "all"}
            rows.append(row | {"score": value, "rank": int(rank[i]), "selected": (layer, head) in heads})
    return pd.DataFrame(rows)


def random_head_sets(
    n_layers: int, n_heads: int, size: int, n_sets: int, seed: int, exclude: Sequence[Head] = ()
) -> list[tuple[Head, ...]]:
    """``n_sets`` random sets of ``size`` distinct heads, none of them in ``exclude``.

    Sets are drawn with ``seed`` from all heads (analyses testing other heads share most of them); a set
    meeting ``exclude`` is drawn again from the others (or holds them all, topped up from ``exclude``).
    """
    rng = np.random.default_rng(seed)
    draws = [rng.choice(n_layers * n_heads, size, replace=False) for _ in range(n_sets)]
    skip = {layer * n_heads + head for layer, head in exclude}
    pool = np.array([i for i in range(n_layers * n_heads) if i not in skip], dtype=np.int64)
    tested = np.array(sorted(skip), dtype=np.int64)
    again = np.random.default_rng([seed, 1])  # its own stream: the other sets stay as drawn
    for k, d in enumerate(draws):
        if skip.isdisjoint(d.tolist()):
            continue
        if pool.size >= size:
            draws[k] = again.choice(pool, size, replace=False)
        else:
            draws[k] = np.concatenate([pool, again.choice(tested, size - pool.size, replace=False)])
    return [tuple(divmod(int(i), n_heads) for i in d) for d in draws]


def random_accuracies(
    access: Any,
    tp: TokenizedPrompts,
    heads: tuple[Head, ...],
    n_random: int,
    seed: int,
    *,
    options: RunOptions | None = None,
) -> Tensor:
    """Label-set accuracy with each of ``n_random`` random sets of ``len(heads)`` other heads ablated.

    Args:
        access: the model.
        tp: the prompts.
        heads: the heads tested: the size of the sets, and excluded from them.
        n_random: random sets.
        seed: seed of the sets (see :func:`random_head_sets`).
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.
    """
    options = run_options(options)
    sets = random_head_sets(access.n_layers, access.n_heads, len(heads), n_random, seed, exclude=heads)
    quiet = run_options(options, progress=False)
    return torch.tensor(
        [
            float(predict(access, tp, hooks=HeadAblation(s), options=quiet).correct.float().mean())
            for s in tqdm(sets, desc="random head sets", disable=not options.progress)
        ]
    )


def accuracy_row(condition: str, pred: Predictions, **extra: Any) -> dict[str, Any]:
    """A ``condition`` row: label-set accuracy with its Wilson interval, strict accuracy, and ``extra``."""
    acc = wilson(int(pred.correct.sum()), len(pred.correct))
    return {
        "condition": condition,
        **interval_columns(acc),
        "strict_accuracy": float(pred.strict_correct.float().mean()),
    } | extra


def verify_heads(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: tuple[Head, ...],
    heads_by_label: dict[str, tuple[Head, ...]],
    *,
    n_random: int = 20,
    seed: int = 0,
    options: RunOptions | None = None,
) -> tuple[pd.DataFrame, Tensor]:
    """Accuracy before and after ablating ``heads``, random head sets, and each label's heads.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: the prompts to verify on.
        heads: the heads tested.
        heads_by_label: each label's heads, also ablated.
        n_random: random head sets.
        seed: seed of the random sets.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        A table with rows ``none``, ``found heads``, ``random heads`` (mean and 95%
        interval over sets), and ``{label} heads`` (with per-gold-label accuracy
        columns), and the accuracies of the random sets.
    """
    options = run_options(options)
    access = faithful_access(model, "verify_heads")
    tp = access.tokenize(prompts)
    words = tp.prompts.task.label_words

    def row(condition: str, heads: tuple[Head, ...] = (), rand: Tensor | None = None) -> dict[str, Any]:
        pred = predict(
            access, tp, hooks=HeadAblation(heads) if heads else (), options=run_options(options, progress=False)
        )
        extra = {} if rand is None else {"rank_p": empirical_p(float(pred.correct.float().mean()), rand.numpy())}
        per_gold = {
            f"accuracy gold={w}": float(pred.correct[pred.golds == i].float().mean())
            for i, w in enumerate(words)
            if (pred.golds == i).any()
        }
        return accuracy_row(condition, pred, **extra, **per_gold)

    rand = random_accuracies(access, tp, heads, n_random, seed, options=options)
    r = from_samples(float(rand.mean()), rand.numpy())
    rows = [row("none"), row("found heads", heads, rand)]
    rows.append({"condition": "random heads", **interval_columns(r), "n_sets": n_random})
    rows += [row(f"{label} heads", hs) for label, hs in heads_by_label.items()]
    return pd.DataFrame(rows), rand


def find_in_context_heads(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    method: str = "logprob_increase",
    fraction: float | None = 0.01,
    k: int | None = None,
    also: tuple[str, ...] = ("dla",),
    verify: bool = True,
    verify_prompts: ICLPrompts | TokenizedPrompts | None = None,
    n_random: int = 20,
    seed: int = 0,
    rescore: int | None = None,
    options: RunOptions | None = None,
) -> InContextHeads:
    """Find the heads that carry in-context learning, and check them causally.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts (e.g. ``task.prompts(n=200, shots=4)``).
        method: the score that selects heads: ``"logprob_increase"`` (default), ``"dla"``,
            ``"ablation"`` (exact, one pass per head) or ``"attribution"`` (its first-order estimate).
        fraction: share of all heads to select (default 1%, at least one head).
        k: number of heads to select instead of ``fraction``.
        also: other scores to compute for comparison.
        verify: ablate the found heads, ``n_random`` random sets of their size and each label's heads.
        verify_prompts: held-out prompts for the verification (default: ``prompts``).
        n_random: number of random head sets.
        seed: seed of the random head sets.
        rescore: for ``"attribution"``, the heads with the largest ``|estimate|`` that are
            re-scored exactly (default: four times the number selected, at least 4).
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        An :class:`InContextHeads` result.

    Raises:
        ValueError: an unknown method, a bad ``fraction``/``k``, ``n_random < 2`` (with ``verify``),
            or bad prompts (0-shot prompts included: the heads are found from the demonstrations).
        TypeError: an unsupported model.

    >>> import icl_heads as ih
    >>> prompts = ih.organism_task().prompts(n=64, shots=4, seed=0)
    >>> found = find_in_context_heads(ih.load_model("organism"), prompts, verify=False)
    >>> found.heads, found.names
    (((1, 1),), ['L1H1'])
    """
    options = run_options(options)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    fraction = None if k is not None else fraction
    if verify:
        check_int("n_random", n_random, minimum=2)  # the random-heads interval needs two sets or more
        if check_int("seed", seed, minimum=0) >= 2**63:  # torch's generator of the random head sets takes 64 bits
            raise ValueError(f"seed must be below 2**63, got {seed}")
    access = faithful_access(model, "find_in_context_heads")
    tp = access.tokenize(prompts)
    zero_shot = [i for i, p in enumerate(tp.prompts.prompts) if not p.demos]
    if zero_shot:
        raise ValueError(
            f"prompt {zero_shot[0]} (and {len(zero_shot) - 1} more) has no demonstrations; in-context heads are found "
            "from what the model reads in the demonstrations: give few-shot prompts (shots >= 1)"
        )
    n = n_selected(access.n_layers * access.n_heads, fraction, k)
    methods = tuple(dict.fromkeys((method, *also)))
    rescore = max(4, 4 * n) if rescore is None and "attribution" in methods else rescore or 0
    golds = torch.tensor(tp.golds)
    scores: dict[str, Tensor] = {}
    for m, values in score_heads(access, tp, methods=methods, rescore=rescore, options=options).items():
        scores[m] = values.mean(0)
        scores |= {
            f"{m}:{w}": values[golds == i].mean(0)
            for i, w in enumerate(tp.prompts.task.label_words)
            if (golds == i).any()
        }
    heads = top_heads(scores[method], n)
    by_label = {
        key.partition(":")[2]: top_heads(table, n) for key, table in scores.items() if key.startswith(f"{method}:")
    }
    reading = reading_roles(access, tp, options=run_options(options, progress=False)).df
    checked = verify_prompts if verify_prompts is not None else tp
    verification, rand = (
        verify_heads(access, checked, heads, by_label, n_random=n_random, seed=seed, options=options)
        if verify
        else (None, None)
    )
    config = InContextHeadsConfig(
        method=method,
        fraction=fraction,
        k=n,
        also=list(also),
        verify=verify,
        held_out_verification=verify_prompts is not None,
        n_random=n_random,
        seed=seed,
        rescore=rescore,
        **({"n_verify": len(checked)} if verify else {}),
    )
    return InContextHeads(
        heads=heads,
        heads_by_label=by_label,
        scores=scores,
        df=_tidy(scores, heads),
        verification=verification,
        random_accuracies=rand,
        reading=reading,
        config=config,
        provenance=provenance(access.name, tp),
    )
