"""Measure majority-label bias and recency bias of in-context learning (DESIGN §2a).

Both measurements are *paired*: every condition reuses the same queries and the
same demonstrations, so a difference between conditions is the effect of the label
counts (majority) or of the order (recency), not of different sentences.

* :func:`majority_bias` draws a pool of demonstrations per prompt and keeps nested
  subsets of it: balanced counts, balanced minus one of a label (that label becomes
  the minority), and skewed counts (e.g. 3:1 and 5:1, both ways round). Its bias
  number is the excess rate of predicting a majority label over the balanced prompts
  with the same queries.
* :func:`~icl_heads.order_bias.recency_bias` (in :mod:`icl_heads.order_bias`) shows the same demonstrations in several orders (original,
  reversed, label blocks AABB and BBAA, random). Its bias number is the spread of
  accuracy over orders beyond chance (:func:`~icl_heads.order_bias.order_spread`); it also reports the raw
  spread with a permutation test, the excess rate of predicting the last
  demonstration's label, and the attention each demonstration slot gets in the
  in-context heads.

Both take ``hooks=`` (e.g. a correction from :mod:`icl_heads.corrections`) so the
same measurement runs before and after an intervention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads._bias_common import check_task, with_demos
from icl_heads._checks import check_int
from icl_heads.accuracy import predict
from icl_heads.engine import Hooks
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, ICLTask
from icl_heads.records import Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.stats import Estimate, bootstrap_ci, bootstrap_mean


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class MajorityBiasConfig(Record):
    """Arguments of :func:`~icl_heads.majority_bias`."""

    shots: int = 4
    n: int = 200
    seed: int = 0
    skews: list[list[int]] = field(default_factory=lambda: [[3, 1], [5, 1]])
    hooked: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "shots", "n")


def majority_conditions(n_classes: int, shots: int, skews: Sequence[tuple[int, int]]) -> list[tuple[int, ...]]:
    """Label counts of every condition: balanced first, then minus-one and skewed, each label as majority.

    Raises:
        ValueError: ``shots`` not a positive multiple of the number of classes, or a bad skew.
    """
    if shots < n_classes or shots % n_classes:
        raise ValueError(
            f"shots={shots} must be a positive multiple of the {n_classes} classes so the balanced prompts are balanced"
        )
    b = shots // n_classes
    out: list[tuple[int, ...]] = [(b,) * n_classes]
    if b > 1:
        out += [tuple(b - 1 if j == c else b for j in range(n_classes)) for c in range(n_classes)]
    for skew in skews:
        major, minor = (int(v) for v in skew)
        if not major > minor >= 1:
            raise ValueError(f"a skew is (majority count, minority count) with majority > minority >= 1, got {skew}")
        out += [tuple(major if j == c else minor for j in range(n_classes)) for c in range(n_classes)]
    return list(dict.fromkeys(out))


@dataclass(frozen=True, repr=False)
class MajorityBias(Result):
    """Majority-label bias: accuracy and predictions under balanced and imbalanced label counts.

    Attributes:
        df: one row per condition and gold label (``gold`` is ``"all"`` or a label
            word): ``condition, counts, majority, gold, n, accuracy, shift,
            shift_ci_low, shift_ci_high`` (``shift`` = accuracy minus accuracy on the
            balanced prompts with the same queries).
        conditions: one row per imbalanced condition: ``majority_rate`` (how often a
            majority label is predicted when the gold label is a minority label),
            ``majority_rate_balanced`` (the same queries with balanced counts), and
            ``excess`` (increase in predicting a majority label, all queries) with its interval.
        bias: the excess rate of predicting a majority label, averaged over imbalanced
            conditions (0: no bias), an :class:`~icl_heads.stats.Estimate` with its 95%
            bootstrap interval over prompts (``bias.ci`` is ``(bias.low, bias.high)``).
        prob_bias: the same in label-set probability of the majority labels, with its
            interval (``prob_bias.ci``).
        label_logits: ``[condition, prompt, label]`` label logits.
        counts: ``[condition, label]`` demonstrations per label of each condition.
        golds: ``[prompt]`` gold labels.
        per_prompt: ``[prompt]`` each prompt's excess (the values ``bias`` averages).
        config, provenance: arguments and origin.
    """

    df: pd.DataFrame
    conditions: pd.DataFrame
    bias: Estimate
    prob_bias: Estimate
    label_logits: Tensor
    counts: Tensor
    golds: Tensor
    per_prompt: Tensor
    config: MajorityBiasConfig = field(default_factory=MajorityBiasConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Majority-label bias"

    def summary(self) -> dict[str, Any]:
        bal = self.df[(self.df.condition == "balanced") & (self.df.gold == "all")]
        return {
            "majority bias (excess majority predictions)": self.bias,
            "95% CI": self.bias.ci,
            "probability bias": self.prob_bias,
            "probability 95% CI": self.prob_bias.ci,
            "balanced accuracy": float(bal.accuracy.iloc[0]),
            "n prompts": len(self.golds),
        }

    def plot(self) -> Figure:
        """Accuracy shift per gold label in each condition, with 95% intervals."""
        return self._draw("plot")


def _condition_name(counts: Sequence[int], words: Sequence[str]) -> str:
    if len(set(counts)) == 1:
        return "balanced"
    return ":".join(str(c) for c in counts) + f" ({'/'.join(words)})"


def majority_prompts(
    task: ICLTask, *, shots: int = 4, n: int = 200, seed: int = 0, skews: Sequence[tuple[int, int]] = ((3, 1), (5, 1))
) -> dict[str, ICLPrompts]:
    """The paired prompt sets of :func:`majority_bias`, by condition name (``"balanced"`` first).

    Every set has the same queries; each prompt's demonstrations are the first
    ``count`` demonstrations of each label from one shared pool, in pool order. Each
    set's ``config["counts"]`` gives its counts per label.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: bad ``shots``/``skews``, or too few examples per class.
    """
    task = check_task(task)
    k = len(task.classes)
    conds = majority_conditions(k, shots, skews)
    pool = max(max(c) for c in conds)
    base = task.prompts(n, shots=pool * k, seed=seed, counts=(pool,) * k, order="random")
    out = {}
    for counts in conds:
        demos = []
        for p in base.prompts:
            rank = [sum(1 for _, y2 in p.demos[:i] if y2 == y) for i, (_, y) in enumerate(p.demos)]
            demos.append([d for d, r in zip(p.demos, rank, strict=True) if r < counts[d[1]]])
        name = _condition_name(counts, task.label_words)
        prompts = with_demos(base, demos, name)
        out[name] = replace(prompts, config=prompts.config.updated(shots=sum(counts), counts=list(counts)))
    return out


def majority_bias(
    model: Any,
    task: ICLTask,
    *,
    shots: int = 4,
    n: int = 200,
    seed: int = 0,
    skews: Sequence[tuple[int, int]] = ((3, 1), (5, 1)),
    hooks: Hooks = (),
    n_boot: int = 1000,
    options: RunOptions | None = None,
) -> MajorityBias:
    """Measure majority-label bias with paired balanced and imbalanced demonstrations.

    Each prompt gets a pool of demonstrations per label (in random order) and a query;
    every condition keeps the first ``count`` demonstrations of each label from that
    pool, in pool order. Conditions: balanced (``shots`` in all), balanced minus one
    demonstration of each label in turn, and each skew ``(a, b)`` with each label in
    turn having ``a`` and the others ``b``.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task to sample prompts from.
        shots: demonstrations of the balanced prompts (a multiple of the number of classes).
        n: number of prompts (queries).
        seed: prompt seed.
        skews: ``(majority count, minority count)`` pairs.
        hooks: forward hooks applied in every condition (e.g. a correction).
        n_boot: bootstrap resamples for the intervals.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`MajorityBias`.

    Raises:
        TypeError: ``task`` is not an :class:`~icl_heads.prompts.ICLTask`.
        ValueError: bad ``shots``/``skews``, ``n_boot < 10``, or too few examples per class.

    >>> import icl_heads as ih
    >>> mb = majority_bias(ih.load_model("organism"), ih.organism_task(), shots=4, n=40)
    >>> 0 <= mb.bias.ci[0] <= mb.bias.ci[1] <= 1
    True
    """
    options = run_options(options)
    task = check_task(task)
    check_int("n_boot", n_boot, minimum=10)
    if n < len(task.classes):
        raise ValueError(
            f"n={n} prompts cannot cover all {len(task.classes)} gold labels; use n >= {len(task.classes)}"
        )
    conditions = majority_prompts(task, shots=shots, n=n, seed=seed, skews=skews)
    access = faithful_access(model, "majority_bias")
    logits = [
        predict(access, prompts, hooks=hooks, options=run_options(options, progress=False)).label_logits
        for prompts in tqdm(conditions.values(), desc="majority-bias conditions", disable=not options.progress)
    ]
    base = next(iter(conditions.values()))
    names = list(conditions)
    conds = [tuple(int(v) for v in p.config["counts"]) for p in conditions.values()]
    label_logits = torch.stack(logits)  # [condition, prompt, label]
    golds = base.golds
    tables = _majority_tables(label_logits, torch.tensor(conds), golds, names, task.label_words, n_boot, seed)
    df, cond_df, per_prompt, per_prompt_prob = tables
    config = MajorityBiasConfig(shots=shots, n=n, seed=seed, skews=[list(s) for s in skews], hooked=bool(hooks))
    return MajorityBias(
        df=df,
        conditions=cond_df,
        bias=bootstrap_mean(per_prompt.numpy(), n_boot=n_boot, seed=seed, value=float(per_prompt.mean())),
        prob_bias=bootstrap_mean(
            per_prompt_prob.numpy(), n_boot=n_boot, seed=seed, value=float(per_prompt_prob.mean())
        ),
        label_logits=label_logits,
        counts=torch.tensor(conds),
        golds=golds,
        per_prompt=per_prompt,
        config=config,
        provenance=provenance(access.name, base, **config),
    )


def _majority_tables(
    label_logits: Float[Tensor, "condition prompt label"],
    counts: Tensor,
    golds: Tensor,
    names: list[str],
    words: Sequence[str],
    n_boot: int,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, Tensor, Tensor]:
    pred = label_logits.argmax(-1)  # [condition, prompt]
    probs = label_logits.softmax(-1)
    correct = (pred == golds[None]).float()
    rows, cond_rows, excess, excess_p = [], [], [], []
    for c, name in enumerate(names):
        major = counts[c] == counts[c].max()
        is_bal = bool(major.all())
        majority = "-" if is_bal else "/".join(w for w, m in zip(words, major.tolist(), strict=True) if m)
        scopes = [("all", torch.ones_like(golds, dtype=torch.bool))]
        scopes += [(w, golds == i) for i, w in enumerate(words)]
        for gold, mask in scopes:
            if not mask.any():
                continue
            diff = (correct[c, mask] - correct[0, mask]).numpy()
            lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "condition": name, "counts": ":".join(map(str, counts[c].tolist())), "majority": majority,
                    "gold": gold, "n": int(mask.sum()), "accuracy": float(correct[c, mask].mean()),
                    "shift": float(diff.mean()), "shift_ci_low": lo, "shift_ci_high": hi,
                }
            )  # fmt: skip
        if is_bal:
            continue
        in_major = major[pred].float()  # [condition, prompt]: predicted label is a majority label
        p_major = probs[:, :, major].sum(-1)
        ex = in_major[c] - in_major[0]
        ex_p = p_major[c] - p_major[0]
        excess.append(ex)
        excess_p.append(ex_p)
        minority_gold = ~major[golds]
        lo, hi = bootstrap_ci(ex.numpy(), n_boot=n_boot, seed=seed)
        cond_rows.append(
            {
                "condition": name, "counts": ":".join(map(str, counts[c].tolist())), "majority": majority,
                "n_minority_gold": int(minority_gold.sum()),
                "majority_rate": float(in_major[c, minority_gold].mean()),
                "majority_rate_balanced": float(in_major[0, minority_gold].mean()),
                "excess": float(ex.mean()), "excess_ci_low": lo, "excess_ci_high": hi,
                "prob_excess": float(ex_p.mean()),
            }
        )  # fmt: skip
    if not excess:
        raise ValueError("no imbalanced condition to measure; use shots >= 2 per class or give skews")
    return pd.DataFrame(rows), pd.DataFrame(cond_rows), torch.stack(excess).mean(0), torch.stack(excess_p).mean(0)


# ---- recency bias ---------------------------------------------------------------------------
