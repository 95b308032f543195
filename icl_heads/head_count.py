"""How many heads carry in-context learning: the smallest set whose ablation brings accuracy near chance.

Two searches (top-``k`` in score order, and greedy), each set compared with random sets of its size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Any, ClassVar

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads.access import Head
from icl_heads.accuracy import Predictions, interval_columns, predict
from icl_heads.faithfulness import faithful_access
from icl_heads.heads import accuracy_row, random_accuracies
from icl_heads.interventions import HeadAblation, check_heads
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.records import UNSET, Provenance, Record, check_choice
from icl_heads.results import Result, json_type, provenance
from icl_heads.scoring import head_names, n_selected, top_heads
from icl_heads.stats import from_samples, wilson


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class HeadCountConfig(Record):
    """Arguments of :func:`~icl_heads.head_count.heads_needed`."""

    margin: float = UNSET
    max_k: int | None = UNSET
    greedy: bool = UNSET
    n_random: int = UNSET
    random_for: str = UNSET
    seed: int = UNSET

    def __post_init__(self) -> None:
        check_choice(self, "random_for", ("every", "last"))


@dataclass(frozen=True, repr=False)
class HeadCount(Result):
    """The smallest head sets whose ablation brings accuracy to within ``margin`` of chance.

    Attributes:
        df: one row per search (``"score order"``, ``"greedy"``) and size ``k``: ``search, k, heads,
            accuracy, ci_low, ci_high`` (Wilson over prompts) and ``random_accuracy, random_ci_low,
            random_ci_high`` (random sets of the same size).
        k_score: smallest ``k`` in score order reaching the target (None: not within ``max_k``).
        k_greedy: the same for the greedy search.
        greedy_heads: the greedy set, in the order chosen.
        chance: chance accuracy (the most frequent gold label's share).
        target: ``chance + margin``.
        warnings: when a search never reached the target.
        config, provenance: arguments and origin.
    """

    df: pd.DataFrame
    k_score: int | None
    k_greedy: int | None
    greedy_heads: tuple
    chance: float
    target: float
    config: HeadCountConfig = field(default_factory=HeadCountConfig)
    provenance: Provenance = field(default_factory=Provenance)
    warnings: tuple = ()
    _title: ClassVar[str] = "How many heads carry in-context learning"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self._warning_summary(), "chance": self.chance, "target accuracy": self.target}
        for search, k in (("score order", self.k_score), ("greedy", self.k_greedy)):
            if not (self.df.search == search).any():
                continue  # the search did not run: no row
            out[f"heads needed ({search})"] = k if k is not None else f"> {self.config.get('max_k')}"
            if k is not None:
                row = self.df[(self.df.search == search) & (self.df.k == k)].iloc[0]
                out[f"{search}: ablated / random accuracy"] = f"{row.accuracy:.3g} / {row.random_accuracy:.3g}"
                out[f"{search}: random 95% CI"] = (float(row.random_ci_low), float(row.random_ci_high))
        return out


def heads_needed(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    scores: Float[Tensor, "layer head"] | Any,
    *,
    margin: float = 0.05,
    max_k: int | None = None,
    greedy: bool = True,
    n_random: int = 20,
    random_for: str = "every",
    seed: int = 0,
    options: RunOptions | None = None,
) -> HeadCount:
    """The smallest head sets (score order and greedy) whose ablation brings accuracy within ``margin`` of chance.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: held-out prompts (not those the scores were computed on).
        scores: ``[layer, head]`` scores, or an ``InContextHeads`` result (its main score).
        margin: accuracy within this of chance counts as "collapsed".
        max_k: largest set tried (default: every head in score order, at most 16 greedy steps).
        greedy: also run the greedy search (``n_heads`` ablations per step).
        n_random: random sets per size.
        random_for: compare ``"every"`` set tried with random sets of its size, or only each search's
            ``"last"`` (the answer; fewer passes when an ablation curve already has the other sizes).
        seed: seed of the random sets.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        A :class:`HeadCount`.

    Raises:
        ValueError: ``margin`` outside (0, 1), scores of the wrong shape, or ``max_k`` below 1.
    """
    options = run_options(options)
    access = faithful_access(model, "heads_needed")
    tp = access.tokenize(prompts)
    scores = torch.as_tensor(scores.score_table() if hasattr(scores, "score_table") else scores, dtype=torch.float32)
    total = access.n_layers * access.n_heads
    if scores.shape != (access.n_layers, access.n_heads):
        raise ValueError(
            f"scores must be [layer, head] = {(access.n_layers, access.n_heads)}, got {tuple(scores.shape)}"
        )
    if not 0 < margin < 1:
        raise ValueError(f"margin must be in (0, 1), got {margin}")
    max_k = total if max_k is None else int(max_k)
    if max_k < 1:
        raise ValueError(f"max_k must be at least 1, got {max_k}")
    if random_for not in ("every", "last"):
        raise ValueError(f"random_for must be 'every' or 'last', got {random_for!r}")
    golds = torch.tensor(tp.golds)
    chance = float(torch.bincount(golds).max()) / len(golds)
    target, quiet = chance + margin, run_options(options, progress=False)
    rows: list[dict[str, Any]] = []
    row_heads: list[tuple[Head, ...]] = []  # the heads of each row, excluded from its random sets

    def run(heads: tuple[Head, ...]) -> Predictions:
        return predict(access, tp, hooks=HeadAblation(heads) if heads else (), options=quiet)

    def with_random(i: int) -> None:
        # drawn as ablation_curve and verify_heads draw them (one seed for every size): with the same seed and
        # prompts, the sets they share are run once (the first n_random of a larger draw are the same sets)
        rand = random_accuracies(access, tp, row_heads[i], n_random, seed, options=quiet).numpy()
        r = from_samples(float(rand.mean()), rand)
        rows[i].update(interval_columns(r, "random_"))

    def record(search: str, heads: tuple[Head, ...], pred: Predictions) -> bool:
        """Add the row of ``heads``; True when their ablation reaches the target."""
        correct = pred.correct.float().numpy()
        acc = wilson(int(correct.sum()), int(correct.size))
        row = {"search": search, "k": len(heads), "heads": ",".join(head_names(heads)), **interval_columns(acc)}
        rows.append(row | dict.fromkeys(("random_accuracy", "random_ci_low", "random_ci_high"), float("nan")))
        row_heads.append(heads)
        if random_for == "every":
            with_random(len(rows) - 1)
        return bool(correct.mean() <= target)

    def close(search: str) -> None:
        if random_for == "last" and rows and rows[-1]["search"] == search:
            with_random(len(rows) - 1)

    order = top_heads(scores, total)
    k_score = None
    for k in tqdm(range(1, min(max_k, total) + 1), desc="score order", disable=not options.progress):
        if record("score order", order[:k], run(order[:k])):
            k_score = k
            break
    close("score order")
    chosen: list[Head] = []
    k_greedy = None
    if greedy:
        all_heads = list(product(range(access.n_layers), range(access.n_heads)))
        for _ in tqdm(range(min(max_k, 16, total)), desc="greedy", disable=not options.progress):
            trials = {h: run((*chosen, h)) for h in all_heads if h not in chosen}
            # accuracy ties (backup heads: each sufficient alone) go to the head whose loss most lowers the gold
            # label's probability, so a redundant pair is found rather than the first head by index
            chosen.append(min(trials, key=lambda h: (*_damage(trials[h]), all_heads.index(h))))
            if record("greedy", tuple(chosen), trials[chosen[-1]]):
                k_greedy = len(chosen)
                break
        close("greedy")
    warnings = tuple(
        f"NOT REACHED: ablating up to {max_k if s == 'score order' else min(max_k, 16, total)} heads in {s} never "
        f"brought accuracy within {margin:g} of chance ({chance:.3g}); more heads (or other components) carry it"
        for s, k in (("score order", k_score), ("greedy", k_greedy if greedy else 0))
        if k is None
    )
    config = HeadCountConfig(
        margin=margin, max_k=max_k, greedy=greedy, n_random=n_random, random_for=random_for, seed=seed
    )
    return HeadCount(
        df=pd.DataFrame(rows),
        k_score=k_score,
        k_greedy=k_greedy,
        greedy_heads=tuple(chosen),
        chance=chance,
        target=target,
        config=config,
        provenance=provenance(access.name, tp),
        warnings=warnings,
    )


def _damage(pred: Any) -> tuple[float, float]:
    """Accuracy, then mean gold log-probability over the label set: lower is more damage."""
    return float(pred.correct.float().mean()), float(pred.gold_logprob.mean())


def ablation_curve(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    scores: Tensor,
    *,
    ks: tuple[int, ...] = (1, 2, 4, 8),
    n_random: int = 20,
    seed: int = 0,
    options: RunOptions | None = None,
) -> pd.DataFrame:
    """Accuracy after ablating the top-``k`` heads by ``scores`` vs ``k`` random heads, for each ``k``.

    The random sets are drawn as :func:`~icl_heads.heads.verify_heads` draws them: with the same
    ``seed``, ``n_random`` and prompts, the curve at ``k`` = the number of found heads repeats the
    verification's random sets.

    Args:
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        Rows ``k, kind ("found"|"random"), accuracy, ci_low, ci_high``.

    Raises:
        ValueError: a ``k`` larger than the number of heads.
    """
    options = run_options(options)
    access = faithful_access(model, "ablation_curve")
    tp = access.tokenize(prompts)
    rows, quiet = [], run_options(options, progress=False)
    for k in tqdm(ks, desc="ablation curve", disable=not options.progress):
        n_selected(access.n_layers * access.n_heads, None, k)
        heads = check_heads(access, top_heads(scores, k))
        rows.append(
            accuracy_row("found", predict(access, tp, hooks=HeadAblation(heads), options=quiet))
            | {"k": k, "kind": "found"}
        )
        rand = random_accuracies(access, tp, heads, n_random, seed, options=quiet).double().numpy()
        r = from_samples(float(rand.mean()), rand)
        rows.append({"condition": "random", "k": k, "kind": "random", **interval_columns(r)})
    return pd.DataFrame(rows)
