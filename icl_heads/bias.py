"""Majority-label bias on paired prompts (DESIGN §2a), and what it shares with recency bias.

:func:`majority_bias`'s conditions are nested subsets of one pool of demonstrations per prompt, so they differ
only in label counts; its bias is the excess rate of predicting a majority label over the balanced prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads._checks import check_int
from icl_heads.access import Head
from icl_heads.accuracy import predict
from icl_heads.engine import Hooks
from icl_heads.faithfulness import faithful_access
from icl_heads.interventions import check_heads
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompt, ICLPrompts, ICLTask
from icl_heads.records import Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.stats import Estimate, bootstrap_ci, bootstrap_mean

#: ``heads="found"``: run the head finder on the prompts and use its heads (the bias functions' default).
FOUND = "found"


def check_heads_choice(heads: Any) -> Any:
    """Refuse ``heads=None`` and unknown strings before any work (the bias and correction functions).

    Raises:
        ValueError: ``None`` (which means every head elsewhere) or a string other than ``"found"``.
    """
    if heads is None:
        raise ValueError(
            "heads=None means every head elsewhere in icl_heads, but this measurement or correction acts on the "
            'in-context heads: pass heads="found" (run find_in_context_heads on the prompts, the default), '
            "a list of (layer, head) pairs, or an InContextHeads result"
        )
    if isinstance(heads, str) and heads != FOUND:
        raise ValueError(f'heads must be "found", (layer, head) pairs or an InContextHeads result, got {heads!r}')
    return heads


def default_heads(model: Any, prompts: ICLPrompts, *, options: RunOptions | None = None) -> tuple[Head, ...]:
    """The in-context heads on ``prompts``: the union of ``find_in_context_heads``'s heads and heads by label.

    Args:
        model: the model.
        prompts: the prompts the heads are found on.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).
    """
    from icl_heads.heads import find_in_context_heads

    found = find_in_context_heads(model, prompts, verify=False, options=run_options(options))
    return tuple(dict.fromkeys([*found.heads, *(h for hs in found.heads_by_label.values() for h in hs)]))


def resolve_heads(
    model: Any, heads: Any, prompts: ICLPrompts, *, options: RunOptions | None = None
) -> tuple[Head, ...]:
    """``heads`` (``"found"``, ``(layer, head)`` pairs or a result with ``.heads``) checked against the model.

    Args:
        model: the model.
        heads: the heads; ``"found"`` is :func:`default_heads` on ``prompts``.
        prompts: the prompts the heads are found on.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Raises:
        ValueError: ``None`` or an unknown string, a head outside the model, or an empty list of heads.
    """
    if isinstance(check_heads_choice(heads), str):
        return default_heads(model, prompts, options=options)
    out = check_heads(faithful_access(model, "resolve_heads"), heads)
    if not out:
        raise ValueError('heads is empty; pass (layer, head) pairs or "found" to find the in-context heads')
    return out


def check_task(task: Any) -> ICLTask:
    if not isinstance(task, ICLTask):
        raise TypeError(
            f"expected an ICLTask (the measurement samples its own prompt conditions), got {type(task).__name__}; "
            "build one with icl_heads.ICLTask.from_pairs(texts, labels) or icl_heads.organism_task()"
        )
    return task


def with_demos(base: ICLPrompts, demos: Sequence[Sequence[tuple[str, int]]], name: str) -> ICLPrompts:
    """``base`` with each prompt's demonstrations replaced (queries and golds kept)."""
    prompts = tuple(ICLPrompt(tuple(d), p.query, p.gold) for p, d in zip(base.prompts, demos, strict=True))
    return replace(base, prompts=prompts, config=base.config.updated(condition=name))


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
    pairs = [(b, b - 1)] if b > 1 else []
    for skew in skews:
        major, minor = (int(v) for v in skew)
        if not major > minor >= 1:
            raise ValueError(f"a skew is (majority count, minority count) with majority > minority >= 1, got {skew}")
        pairs.append((minor, major))
    out = [(b,) * n_classes]
    out += [tuple(a if j == c else o for j in range(n_classes)) for o, a in pairs for c in range(n_classes)]
    return list(dict.fromkeys(out))


def majority_excess(
    pred: Int[Tensor, "condition prompt"], counts: Int[Tensor, "condition label"]
) -> Float[Tensor, "imbalanced prompt"]:
    """Per imbalanced condition and prompt: a majority label predicted, minus on the balanced prompts.

    Its mean over conditions is :func:`majority_bias`'s ``per_prompt``.

    Args:
        pred: predicted labels, the balanced condition (0) first.
        counts: demonstrations per label of each condition.

    Returns:
        ``[imbalanced condition, prompt]`` values in -1, 0, 1.

    Raises:
        ValueError: no imbalanced condition.
    """
    major = counts == counts.max(-1, keepdim=True).values  # [condition, label]
    if major.all():
        raise ValueError("no imbalanced condition to measure; use shots >= 2 per class or give skews")
    in_major = major.gather(1, pred).float() - major.gather(1, pred[:1].expand_as(pred)).float()
    return in_major[~major.all(-1)]


@dataclass(frozen=True, repr=False)
class MajorityBias(Result):
    """Majority-label bias: accuracy and predictions under balanced and imbalanced label counts.

    Attributes:
        df: one row per condition and gold label (``"all"`` or a label word): ``condition, counts,
            majority, gold, n, accuracy, shift, shift_ci_low, shift_ci_high`` (``shift``: accuracy
            minus that on the balanced prompts with the same queries).
        conditions: one row per imbalanced condition: ``majority_rate`` (a majority label predicted
            when gold is a minority label), ``majority_rate_balanced`` (the same queries, balanced),
            ``excess`` (more majority predictions, all queries) with its interval.
        bias: the excess rate of predicting a majority label, averaged over imbalanced conditions
            (0: no bias), an :class:`~icl_heads.stats.Estimate` with its 95% bootstrap interval over prompts.
        prob_bias: the same in label-set probability of the majority labels, with its interval.
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


def majority_prompts(
    task: ICLTask, *, shots: int = 4, n: int = 200, seed: int = 0, skews: Sequence[tuple[int, int]] = ((3, 1), (5, 1))
) -> dict[str, ICLPrompts]:
    """The paired prompt sets of :func:`majority_bias`, by condition name (``"balanced"`` first).

    Every set has the same queries; each prompt keeps the first ``count`` demonstrations of each
    label from one shared pool, in pool order (``config["counts"]``: the counts per label).

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: bad ``shots``/``skews``, or too few examples per class.
    """
    k = len(check_task(task).classes)
    conds = majority_conditions(k, shots, skews)
    pool = max(max(c) for c in conds)
    base = task.prompts(n, shots=pool * k, seed=seed, counts=(pool,) * k, order="random")
    out = {}
    for counts in conds:  # each label's first counts[label] demonstrations of the pool
        demos = [
            [d for i, d in enumerate(p.demos) if [y for _, y in p.demos[:i]].count(d[1]) < counts[d[1]]]
            for p in base.prompts
        ]
        name = "balanced" if len(set(counts)) == 1 else f"{':'.join(map(str, counts))} ({'/'.join(task.label_words)})"
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

    Conditions (:func:`majority_prompts`): balanced, minus one of each label in turn, and each
    skew ``(a, b)`` with each label in turn having ``a`` and the others ``b``.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task to sample prompts from.
        shots: demonstrations of the balanced prompts (a multiple of the number of classes).
        n: number of prompts (queries).
        seed: prompt seed.
        skews: ``(majority count, minority count)`` pairs.
        hooks: forward hooks applied in every condition (e.g. a correction).
        n_boot: bootstrap resamples for the intervals.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

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
    label_logits = torch.stack(
        [
            predict(access, prompts, hooks=hooks, options=run_options(options, progress=False)).label_logits
            for prompts in tqdm(conditions.values(), desc="majority-bias conditions", disable=not options.progress)
        ]
    )  # [condition, prompt, label]
    base = next(iter(conditions.values()))
    counts = torch.tensor([[int(v) for v in p.config["counts"]] for p in conditions.values()])
    df, cond_df, per_prompt, per_prompt_prob = _majority_tables(
        label_logits, counts, base.golds, list(conditions), task.label_words, n_boot, seed
    )
    config = MajorityBiasConfig(shots=shots, n=n, seed=seed, skews=[list(s) for s in skews], hooked=bool(hooks))
    return MajorityBias(
        df=df,
        conditions=cond_df,
        bias=bootstrap_mean(per_prompt.numpy(), n_boot=n_boot, seed=seed, value=float(per_prompt.mean())),
        prob_bias=bootstrap_mean(
            per_prompt_prob.numpy(), n_boot=n_boot, seed=seed, value=float(per_prompt_prob.mean())
        ),
        label_logits=label_logits,
        counts=counts,
        golds=base.golds,
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
    correct = (pred == golds[None]).float()
    excess = majority_excess(pred, counts)
    rows, cond_rows, excess_p = [], [], []
    scopes = [("all", torch.ones_like(golds, dtype=torch.bool)), *((w, golds == i) for i, w in enumerate(words))]
    for c, name in enumerate(names):
        major = counts[c] == counts[c].max()
        is_bal = bool(major.all())
        row = {
            "condition": name,
            "counts": ":".join(map(str, counts[c].tolist())),
            "majority": "-" if is_bal else "/".join(w for w, m in zip(words, major.tolist(), strict=True) if m),
        }
        for gold, mask in scopes:
            if mask.any():
                diff = (correct[c, mask] - correct[0, mask]).numpy()
                lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
                acc = float(correct[c, mask].mean())
                rows.append(
                    {**row, "gold": gold, "n": int(mask.sum()), "accuracy": acc, "shift": float(diff.mean())}
                    | {"shift_ci_low": lo, "shift_ci_high": hi}
                )
        if is_bal:
            continue
        in_major = major[pred].float()  # [condition, prompt]: predicted label is a majority label
        p_major = label_logits.softmax(-1)[:, :, major].sum(-1)
        ex = excess[len(cond_rows)]
        excess_p.append(p_major[c] - p_major[0])
        minority_gold = ~major[golds]
        lo, hi = bootstrap_ci(ex.numpy(), n_boot=n_boot, seed=seed)
        cond_rows.append(
            {**row, "n_minority_gold": int(minority_gold.sum())}
            | {"majority_rate": float(in_major[c, minority_gold].mean())}
            | {"majority_rate_balanced": float(in_major[0, minority_gold].mean()), "excess": float(ex.mean())}
            | {"excess_ci_low": lo, "excess_ci_high": hi, "prob_excess": float(excess_p[-1].mean())}
        )
    return pd.DataFrame(rows), pd.DataFrame(cond_rows), excess.mean(0), torch.stack(excess_p).mean(0)
