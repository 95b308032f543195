"""Recency bias: the same balanced demonstrations in several orders (see :mod:`icl_heads.bias`).

:func:`recency_bias` shows the same demonstrations in several orders (original,
reversed, label blocks AABB and BBAA, random); :func:`recency_block_gap` measures
its headline, the block gap, alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads._bias_common import check_heads_choice, check_task, resolve_heads, with_demos
from icl_heads._checks import check_int
from icl_heads.access import Capture, Head, ModelAccess, batches
from icl_heads.accuracy import predict
from icl_heads.correction_methods import RECENCY_SHOTS
from icl_heads.engine import Hooks, content_key, digest, intervention_key, memoised
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, ICLTask
from icl_heads.recency import (
    block_gaps,
    block_table,
    last_label_prob_pull,
    order_permutation_p,
    order_spread,
)
from icl_heads.records import Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.stats import Estimate, bootstrap_ci, bootstrap_mean, from_samples, resamples, wilson

#: the block gap of a result saved before it was measured
_NO_GAP = Estimate(float("nan"))


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class RecencyBiasConfig(Record):
    """Arguments of :func:`~icl_heads.recency_bias`."""

    shots: int = RECENCY_SHOTS
    n: int = 200
    seed: int = 0
    n_random_orders: int = 4
    hooked: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "shots", "n")


def demo_orders(labels: Sequence[int], n_random: int, rng: np.random.Generator) -> dict[str, list[int]]:
    """Permutations of one prompt's demonstrations: original, reversed, label blocks both ways, random."""
    idx = list(range(len(labels)))
    blocked = sorted(idx, key=lambda i: (labels[i], i))
    out = {
        "original": idx,
        "reversed": idx[::-1],
        "blocked": blocked,
        "blocked_reversed": sorted(idx, key=lambda i: (-labels[i], i)),
    }
    for r in range(n_random):
        out[f"random_{r}"] = [int(i) for i in rng.permutation(len(idx))]
    return out


def recency_prompts(
    task: ICLTask, *, shots: int = 4, n: int = 200, seed: int = 0, n_random_orders: int = 4
) -> dict[str, ICLPrompts]:
    """The prompt sets of :func:`recency_bias`, by order name (``"original"`` first).

    Every set has the same queries and, per prompt, the same balanced demonstrations,
    permuted by :func:`demo_orders`.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: ``shots < 2`` or too few examples per class.
    """
    task = check_task(task)
    if shots < 2:
        raise ValueError(f"recency needs at least 2 demonstrations to reorder, got shots={shots}")
    base = task.prompts(n, shots=shots, seed=seed, order="random")
    rng = np.random.default_rng(seed)
    perms = [demo_orders([y for _, y in p.demos], n_random_orders, rng) for p in base.prompts]
    return {
        name: with_demos(
            base, [[p.demos[i] for i in perm[name]] for p, perm in zip(base.prompts, perms, strict=True)], name
        )
        for name in perms[0]
    }


def recency_block_gap(
    model: Any,
    task: ICLTask,
    *,
    shots: int = 4,
    n: int = 200,
    seed: int = 0,
    n_random_orders: int = 4,
    hooks: Hooks = (),
    options: RunOptions | None = None,
) -> float:
    """The block gap of :func:`recency_bias` alone, from the two blocked orders only.

    Equal to ``recency_bias(...).block_gap`` with the same arguments (the same prompts),
    at a quarter of its passes with the default four random orders: what tuning a
    correction needs for every value it tries.

    Args:
        model: the model.
        task: the task to sample prompts from.
        shots: as for :func:`recency_bias`.
        n: as for :func:`recency_bias`.
        seed: as for :func:`recency_bias`.
        n_random_orders: as for :func:`recency_bias`.
        hooks: forward hooks applied in both orders (e.g. a correction).
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Raises:
        TypeError, ValueError: see :func:`recency_prompts`.
    """
    options = run_options(options)
    orders = recency_prompts(task, shots=shots, n=n, seed=seed, n_random_orders=n_random_orders)
    names = ["blocked", "blocked_reversed"]
    logits = torch.stack([predict(model, orders[k], hooks=hooks, options=options).label_logits for k in names])
    base = orders["original"]
    gaps, _ = block_gaps(logits, base.golds, [[y for _, y in p.demos] for p in base.prompts], names)
    return float(gaps.mean())


@dataclass(frozen=True, repr=False)
class RecencyBias(Result):
    """Recency bias: the same demonstrations in several orders.

    Attributes:
        df: one row per order: ``order, accuracy, ci_low, ci_high`` (Wilson), ``last_label_rate``
            (how often the last demonstration's label is predicted) and ``last_label_gold``
            (how often it is gold).
        attention: one row per in-context head and demonstration slot: ``layer, head,
            name, slot, attention`` (mean attention from the final position to that
            slot's label token, over prompts and orders) with its interval, and
            ``share`` (its share of the head's attention on all label tokens).
        bias: the spread (standard deviation) of accuracy over orders beyond chance, with
            the prompts' sampling noise removed (see :func:`order_spread`; 0: accuracy
            does not depend on the order). The headline recency bias.
            Every headline number here is an :class:`~icl_heads.stats.Estimate` carrying
            its 95% bootstrap interval over prompts (``bias.low, bias.high``, ``bias.ci``).
        order_std: the raw standard deviation of accuracy over orders; ``order_p`` its
            permutation p-value against shuffling each prompt's results over orders
            (small: accuracy depends on the order).
        last_label_excess: excess rate of predicting the last demonstration's label
            (predicted minus gold rate, 0: none).
        last_label_pull: a label's probability when it is last minus when it is not
            (same query and demonstrations), averaged over labels and prompts.
        sensitivity: mean over prompts of the standard deviation over orders of the
            gold label's probability.
        block_gap: accuracy when the query's class forms the last block of
            demonstrations minus when it forms the first (same query and demonstrations;
            see :mod:`icl_heads.recency`). Unlike ``bias`` it does not cancel over query
            classes: the recency headline that corrections are tuned and judged on.
            ``block_gaps`` the per-prompt gaps, ``blocks``
            the gap per query label (``query_label, n, block_gap, ci_low, ci_high``).
        label_logits: ``[order, prompt, label]``; ``last_labels``: ``[order, prompt]``.
        golds: ``[prompt]`` gold labels.
        heads: the heads whose attention is reported.
        config, provenance: arguments and origin.
    """

    df: pd.DataFrame
    attention: pd.DataFrame
    bias: Estimate
    order_std: Estimate
    order_p: float
    last_label_excess: Estimate
    last_label_pull: Estimate
    sensitivity: Estimate
    label_logits: Tensor
    last_labels: Tensor
    golds: Tensor
    heads: tuple = ()
    config: RecencyBiasConfig = field(default_factory=RecencyBiasConfig)
    provenance: Provenance = field(default_factory=Provenance)
    block_gap: Estimate = _NO_GAP
    block_gaps: Tensor | None = None
    blocks: pd.DataFrame | None = None
    _title: ClassVar[str] = "Recency bias"

    def summary(self) -> dict[str, Any]:
        return {
            "block gap (accuracy, query's class block last minus first)": self.block_gap,
            "block gap 95% CI": self.block_gap.ci,
            "recency bias (accuracy spread over orders beyond chance)": self.bias,
            "95% CI": self.bias.ci,
            "accuracy std over orders": self.order_std,
            "std 95% CI": self.order_std.ci,
            "order permutation p": self.order_p,
            "excess last-label predictions": self.last_label_excess,
            "last-label 95% CI": self.last_label_excess.ci,
            "last-label probability pull": self.last_label_pull,
            "pull 95% CI": self.last_label_pull.ci,
            "n prompts": len(self.golds),
        }

    def plot(self) -> Figure:
        """Accuracy per order with intervals, and attention per demonstration slot."""
        return self._draw("plot")


def recency_bias(
    model: Any,
    task: ICLTask,
    *,
    shots: int = RECENCY_SHOTS,
    n: int = 200,
    seed: int = 0,
    n_random_orders: int = 4,
    heads: Any = "found",
    hooks: Hooks = (),
    n_boot: int = 1000,
    options: RunOptions | None = None,
) -> RecencyBias:
    """Measure recency bias: the same balanced demonstrations shown in different orders.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task to sample prompts from.
        shots: demonstrations per prompt (balanced counts); the default,
            :data:`~icl_heads.correction_methods.RECENCY_SHOTS`, is also the recency correction's.
        n: number of prompts.
        seed: seed of the prompts and of the random orders.
        n_random_orders: random orders besides original, reversed and the two label blocks.
        heads: heads whose attention per slot is reported: ``"found"`` (default: run
            :func:`~icl_heads.heads.find_in_context_heads` on the original-order prompts
            and use its heads), ``(layer, head)`` pairs, or an ``InContextHeads`` result
            (its ``heads``). ``None`` is refused: elsewhere it means every head.
        hooks: forward hooks applied in every order (e.g. a correction).
        n_boot: bootstrap resamples for the intervals.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`RecencyBias`.

    Raises:
        TypeError: ``task`` is not an :class:`~icl_heads.prompts.ICLTask`.
        ValueError: ``shots < 2``, ``n_boot < 10``, bad heads (``None`` included), or too few examples per class.
    """
    options = run_options(options)
    check_heads_choice(heads)
    check_int("n_boot", n_boot, minimum=10)
    access = faithful_access(model, "recency_bias")
    # the same measurement asked for again (e.g. the bias before a correction) is read back
    key = (
        "recency_bias",
        content_key(task),
        shots,
        n,
        seed,
        n_random_orders,
        digest(heads),
        intervention_key(hooks),
    )
    return memoised(
        access.model,
        (*key, n_boot),
        lambda: _recency_bias(access, task, shots, n, seed, n_random_orders, heads, hooks, n_boot, options),
    )


def _recency_bias(
    access: ModelAccess, task: ICLTask, shots: int, n: int, seed: int, n_random_orders: int,
    heads: Any, hooks: Hooks, n_boot: int, options: RunOptions,
) -> RecencyBias:  # fmt: skip
    orders = recency_prompts(task, shots=shots, n=n, seed=seed, n_random_orders=n_random_orders)
    base = orders["original"]
    heads = resolve_heads(access, heads, base, options=run_options(options, progress=False))
    layers = sorted({layer for layer, _ in heads})
    logits, lasts = [], []
    slot_att = torch.zeros(len(orders), n, len(heads), shots)
    for o, prompts in enumerate(tqdm(orders.values(), desc="recency orders", disable=not options.progress)):
        lasts.append(torch.tensor([p.demos[-1][1] for p in prompts.prompts]))
        tp = access.tokenize(prompts)
        label_ids = torch.tensor(tp.label_token_ids)
        part = torch.zeros(len(tp), len(label_ids))
        for batch in batches(access, tp, run_options(options, progress=False), by_length=True):
            caps = [Capture(access.hook(ly, "pattern"), "pattern_final") for ly in layers]
            final, got = access.run(batch, hooks=hooks, capture=caps)
            part[batch.index] = final[:, label_ids.to(final.device)].cpu()
            for j, (layer, h) in enumerate(heads):
                pat = got[access.hook(layer, "pattern")][:, h].cpu()  # [batch, key]
                slot_att[o, batch.index, j] = pat.gather(1, batch.label_positions)
        logits.append(part)
    order_names = list(orders)
    label_logits, last_labels, golds = torch.stack(logits), torch.stack(lasts), base.golds
    pred = label_logits.argmax(-1)
    correct = (pred == golds[None]).float()
    per_prompt = ((pred == last_labels).float() - (golds[None] == last_labels).float()).mean(0)
    per_prompt_prob = last_label_prob_pull(label_logits.softmax(-1), last_labels)
    accs = correct.mean(1)
    boot = resamples(n, n_boot=n_boot, seed=seed)
    resampled = correct.numpy()[:, boot]  # [order, boot, prompt]
    stds, spreads = resampled.mean(-1).std(0, ddof=1), order_spread(resampled)
    p_gold = label_logits.softmax(-1).gather(2, golds[None, :, None].expand(len(order_names), -1, 1))[..., 0]
    per_prompt_sens = p_gold.std(0)
    rows = []
    for o, name in enumerate(order_names):
        lo, hi = wilson(int(correct[o].sum()), int(correct[o].numel())).ci  # a proportion: never zero width
        rows.append(
            {
                "order": name, "accuracy": float(accs[o]), "ci_low": lo, "ci_high": hi,
                "last_label_rate": float((pred[o] == last_labels[o]).float().mean()),
                "last_label_gold": float((golds == last_labels[o]).float().mean()),
            }
        )  # fmt: skip
    config = RecencyBiasConfig(shots=shots, n=n, seed=seed, n_random_orders=n_random_orders, hooked=bool(hooks))
    gaps, gap_gold = block_gaps(label_logits, golds, [[y for _, y in p.demos] for p in base.prompts], order_names)
    blocks = block_table(gaps, gap_gold, base.task.label_words, n_boot=n_boot, seed=seed)
    return RecencyBias(
        block_gap=bootstrap_mean(gaps, n_boot=n_boot, seed=seed, value=float(gaps.mean())),
        block_gaps=torch.as_tensor(gaps, dtype=torch.float32),
        blocks=blocks,
        df=pd.DataFrame(rows),
        attention=_slot_table(slot_att, heads, n_boot, seed),
        bias=from_samples(float(order_spread(correct.numpy())), spreads, n=n, method="bootstrap"),
        order_std=from_samples(float(accs.std()), stds, n=n, method="bootstrap"),
        order_p=order_permutation_p(correct.numpy(), n_perm=n_boot, seed=seed),
        last_label_excess=bootstrap_mean(per_prompt.numpy(), n_boot=n_boot, seed=seed, value=float(per_prompt.mean())),
        last_label_pull=bootstrap_mean(
            per_prompt_prob.numpy(), n_boot=n_boot, seed=seed, value=float(per_prompt_prob.mean())
        ),
        sensitivity=bootstrap_mean(
            per_prompt_sens.numpy(), n_boot=n_boot, seed=seed, value=float(per_prompt_sens.mean())
        ),
        label_logits=label_logits,
        last_labels=last_labels,
        golds=golds,
        heads=heads,
        config=config,
        provenance=provenance(access.name, base, heads=[list(h) for h in heads], **config),
    )


def _slot_table(slot_att: Tensor, heads: tuple[Head, ...], n_boot: int, seed: int) -> pd.DataFrame:
    """Tidy attention per head and slot from ``[order, prompt, head, slot]``."""
    per_prompt = slot_att.mean(0)  # [prompt, head, slot]
    share = (slot_att / slot_att.sum(-1, keepdim=True).clamp(min=1e-12)).mean((0, 1))
    rows = []
    for j, (layer, h) in enumerate(heads):
        for s in range(slot_att.shape[-1]):
            lo, hi = bootstrap_ci(per_prompt[:, j, s].numpy(), n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "layer": layer, "head": h, "name": f"L{layer}H{h}", "slot": s,
                    "attention": float(per_prompt[:, j, s].mean()), "ci_low": lo, "ci_high": hi,
                    "share": float(share[j, s]),
                }
            )  # fmt: skip
    return pd.DataFrame(rows)
