"""Recency bias: the same balanced demonstrations in several orders, and the maths of its measures.

The headline, the *block gap*, is accuracy when the query's class block comes last minus first (same query and
demonstrations); unlike the mean accuracy of an order, it does not cancel over query classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads._checks import check_int
from icl_heads.access import Capture, Head, ModelAccess, batches
from icl_heads.accuracy import predict
from icl_heads.bias import check_heads_choice, check_task, resolve_heads, with_demos
from icl_heads.correction_methods import RECENCY_SHOTS
from icl_heads.engine import Hooks, content_key, digest, intervention_key, memoised
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, ICLTask
from icl_heads.records import Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.stats import Estimate, bootstrap_ci, bootstrap_mean, from_samples, resamples, wilson


def block_gaps(
    label_logits: Float[Tensor, "order prompt label"],
    golds: Int[Tensor, " prompt"],
    demo_labels: Sequence[Sequence[int]],
    order_names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: correct when the query's class block is last minus when it is first.

    Args:
        label_logits: of every order, including ``"blocked"`` and ``"blocked_reversed"`` (classes up, down).
        golds: gold class per prompt.
        demo_labels: the classes of each prompt's demonstrations (any order).
        order_names: names of the orders, in the order of ``label_logits``.

    Returns:
        ``(gap, gold)``: the gap (-1, 0 or 1) of each prompt whose query class is a first or last block, its gold.

    Raises:
        ValueError: the two blocked orders are missing.
    """
    names = list(order_names)
    if "blocked" not in names or "blocked_reversed" not in names:
        raise ValueError(f"the block gap needs the orders 'blocked' and 'blocked_reversed', got {names}")
    correct = (label_logits.argmax(-1) == golds[None]).float().numpy()
    up, down = correct[names.index("blocked")], correct[names.index("blocked_reversed")]
    gaps, kept = [], []
    for i, (g, labels) in enumerate(zip(golds.tolist(), demo_labels, strict=True)):
        first, last = min(labels), max(labels)
        if first != last and g in (first, last):  # the last block in "blocked" or the first
            gaps.append(up[i] - down[i] if g == last else down[i] - up[i])
            kept.append(g)
    return np.asarray(gaps, dtype=float), np.asarray(kept, dtype=int)


def block_table(
    gap: np.ndarray, gold: np.ndarray, words: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Block gap per query class and over all prompts, with bootstrap intervals.

    Raises:
        ValueError: no prompt whose query class is a first or last block.
    """
    if gap.size == 0:
        raise ValueError("no prompt has its query's class as the first or last block; use 2 or more classes")
    rows = []
    for c, word in [*enumerate(words), (-1, "all")]:
        sel = gold == c if c >= 0 else np.ones_like(gold, dtype=bool)
        if sel.any():
            e = bootstrap_mean(gap[sel], n_boot=n_boot, seed=seed)
            rows.append({"query_label": word, "n": e.n, "block_gap": e.value, "ci_low": e.low, "ci_high": e.high})
    return pd.DataFrame(rows)


def order_spread(correct: np.ndarray) -> np.ndarray | np.floating:
    """Standard deviation of accuracy over orders with the sampling noise of the prompts removed.

    ``correct`` is ``[order, ..., prompt]`` (0/1); with ``S2`` the variance of accuracy over orders and
    ``s2_i`` that of prompt ``i``'s correctness: ``sqrt((S2 - sum_i s2_i / n**2) / (1 - 1/n))``, clipped at 0.

    Raises:
        ValueError: fewer than 2 orders or 2 prompts.
    """
    c = np.asarray(correct, dtype=float)
    n = c.shape[-1]
    if c.shape[0] < 2 or n < 2:
        raise ValueError(f"the spread over orders needs at least 2 orders and 2 prompts, got {c.shape[0]} and {n}")
    total = c.mean(-1).var(0, ddof=1)
    noise = c.var(0, ddof=1).sum(-1) / n**2
    return np.sqrt(np.clip((total - noise) / (1 - 1 / n), 0, None))


def order_permutation_p(correct: np.ndarray, *, n_perm: int = 1000, seed: int = 0) -> float:
    """P-value of the std of accuracy over orders when each prompt's ``[order, prompt]`` results are shuffled over orders."""
    c = np.asarray(correct, dtype=float)
    observed = c.mean(-1).std(ddof=1)
    keys = np.random.default_rng(seed).random((n_perm, *c.shape)).argsort(1)
    null = np.take_along_axis(np.broadcast_to(c, keys.shape), keys, 1).mean(-1).std(1, ddof=1)
    return float((1 + (null >= observed - 1e-12).sum()) / (1 + n_perm))


def last_label_prob_pull(
    probs: Float[Tensor, "order prompt label"], last: Int[Tensor, "order prompt"]
) -> Float[Tensor, " prompt"]:
    """Per prompt: mean over labels of p(label | it is last) - p(label | it is not), over that prompt's orders."""
    out, used = torch.zeros(probs.shape[1]), torch.zeros(probs.shape[1])
    for c in range(probs.shape[-1]):
        is_last = (last == c).float()
        n_last, n_not = is_last.sum(0), (1 - is_last).sum(0)
        ok = (n_last > 0) & (n_not > 0)
        p = probs[..., c]
        diff = (p * is_last).sum(0) / n_last.clamp(min=1) - (p * (1 - is_last)).sum(0) / n_not.clamp(min=1)
        out += torch.where(ok, diff, torch.zeros_like(diff))
        used += ok.float()
    return out / used.clamp(min=1)


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
    out = {
        "original": idx,
        "reversed": idx[::-1],
        "blocked": sorted(idx, key=lambda i: (labels[i], i)),
        "blocked_reversed": sorted(idx, key=lambda i: (-labels[i], i)),
    }
    return out | {f"random_{r}": [int(i) for i in rng.permutation(len(idx))] for r in range(n_random)}


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
        name: with_demos(base, [[p.demos[i] for i in o[name]] for p, o in zip(base.prompts, perms, strict=True)], name)
        for name in perms[0]
    }


def _gaps(logits: Tensor, orders: dict[str, ICLPrompts], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    base = orders["original"]
    return block_gaps(logits, base.golds, [[y for _, y in p.demos] for p in base.prompts], names)


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
    """``recency_bias(...).block_gap`` from the two blocked orders alone (a quarter of the passes): for tuning.

    Args:
        model: the model.
        task: the task to sample prompts from.
        shots, n, seed, n_random_orders: as for :func:`recency_bias`.
        hooks: forward hooks applied in both orders (e.g. a correction).
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Raises:
        TypeError, ValueError: see :func:`recency_prompts`.
    """
    options = run_options(options)
    orders = recency_prompts(task, shots=shots, n=n, seed=seed, n_random_orders=n_random_orders)
    names = ["blocked", "blocked_reversed"]
    logits = torch.stack([predict(model, orders[k], hooks=hooks, options=options).label_logits for k in names])
    return float(_gaps(logits, orders, names)[0].mean())


@dataclass(frozen=True, repr=False)
class RecencyBias(Result):
    """Recency bias: the same demonstrations in several orders.

    Every headline number is an :class:`~icl_heads.stats.Estimate` with its 95% bootstrap interval over prompts.

    Attributes:
        df: one row per order: ``order, accuracy, ci_low, ci_high`` (Wilson), ``last_label_rate``
            (the last demonstration's label predicted) and ``last_label_gold`` (it is gold).
        attention: one row per in-context head and demonstration slot: ``layer, head, name, slot,
            attention`` (mean attention from the final position to the slot's label token) with its
            interval, and ``share`` (of the head's attention on all label tokens).
        bias: the spread of accuracy over orders beyond chance (:func:`order_spread`; 0: none).
        order_std: the raw standard deviation of accuracy over orders; ``order_p`` its
            permutation p-value against shuffling each prompt's results over orders.
        last_label_excess: rate of predicting the last demonstration's label minus its gold rate.
        last_label_pull: a label's probability when it is last minus when it is not, averaged.
        sensitivity: mean over prompts of the standard deviation over orders of p(gold).
        block_gap: accuracy when the query's class block is last minus first: the headline
            corrections are tuned and judged on (it does not cancel over query classes);
            ``block_gaps`` per prompt, ``blocks`` per query label (``query_label, n, block_gap, ci_low, ci_high``).
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
    block_gap: Estimate
    block_gaps: Tensor
    blocks: pd.DataFrame
    heads: tuple = ()
    config: RecencyBiasConfig = field(default_factory=RecencyBiasConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Recency bias"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, ci, e in (
            ("block gap (accuracy, query's class block last minus first)", "block gap 95% CI", self.block_gap),
            ("recency bias (accuracy spread over orders beyond chance)", "95% CI", self.bias),
            ("accuracy std over orders", "std 95% CI", self.order_std),
            ("order permutation p", None, self.order_p),
            ("excess last-label predictions", "last-label 95% CI", self.last_label_excess),
            ("last-label probability pull", "pull 95% CI", self.last_label_pull),
        ):
            out |= {name: e} if ci is None else {name: e, ci: e.ci}
        return out | {"n prompts": len(self.golds)}

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
        shots: demonstrations per prompt (balanced counts; the default is the recency correction's).
        n: number of prompts.
        seed: seed of the prompts and of the random orders.
        n_random_orders: random orders besides original, reversed and the two label blocks.
        heads: heads whose attention per slot is reported: ``"found"`` (default: found on the original
            order), ``(layer, head)`` pairs, or an ``InContextHeads``; ``None`` (every head elsewhere) is refused.
        hooks: forward hooks applied in every order (e.g. a correction).
        n_boot: bootstrap resamples for the intervals.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

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
    key = ("recency_bias", content_key(task), shots, n, seed, n_random_orders, digest(heads), intervention_key(hooks))
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
    quiet = run_options(options, progress=False)
    heads = resolve_heads(access, heads, base, options=quiet)
    logits, lasts = [], []
    slot_att = torch.zeros(len(orders), n, len(heads), shots)
    for o, prompts in enumerate(tqdm(orders.values(), desc="recency orders", disable=not options.progress)):
        lasts.append(torch.tensor([p.demos[-1][1] for p in prompts.prompts]))
        tp = access.tokenize(prompts)
        label_ids = torch.tensor(tp.label_token_ids)
        logits.append(torch.zeros(len(tp), len(label_ids)))
        for batch in batches(access, tp, quiet, by_length=True):
            caps = [Capture(access.hook(ly, "pattern"), "pattern_final") for ly in sorted({ly for ly, _ in heads})]
            final, got = access.run(batch, hooks=hooks, capture=caps)
            logits[-1][batch.index] = final[:, label_ids.to(final.device)].cpu()
            for j, (layer, h) in enumerate(heads):
                pat = got[access.hook(layer, "pattern")][:, h].cpu()  # [batch, key]
                slot_att[o, batch.index, j] = pat.gather(1, batch.label_positions)
    names, label_logits, last_labels, golds = list(orders), torch.stack(logits), torch.stack(lasts), base.golds
    pred = label_logits.argmax(-1)
    correct = (pred == golds[None]).float()
    per_prompt = ((pred == last_labels).float() - (golds[None] == last_labels).float()).mean(0)
    per_prompt_prob = last_label_prob_pull(label_logits.softmax(-1), last_labels)
    accs = correct.mean(1)
    resampled = correct.numpy()[:, resamples(n, n_boot=n_boot, seed=seed)]  # [order, boot, prompt]
    per_prompt_sens = label_logits.softmax(-1).gather(2, golds[None, :, None].expand(len(names), -1, 1))[..., 0].std(0)
    cis = [wilson(int(c.sum()), int(c.numel())).ci for c in correct]  # a proportion: never zero width
    df = pd.DataFrame(
        {
            "order": names,
            "accuracy": accs.tolist(),
            "ci_low": [c[0] for c in cis],
            "ci_high": [c[1] for c in cis],
            "last_label_rate": (pred == last_labels).float().mean(1).tolist(),
            "last_label_gold": (golds[None] == last_labels).float().mean(1).tolist(),
        }
    )
    config = RecencyBiasConfig(shots=shots, n=n, seed=seed, n_random_orders=n_random_orders, hooked=bool(hooks))
    gaps, gap_gold = _gaps(label_logits, orders, names)

    def mean(x: Any) -> Estimate:
        return bootstrap_mean(np.asarray(x), n_boot=n_boot, seed=seed, value=float(x.mean()))

    return RecencyBias(
        block_gap=mean(gaps),
        block_gaps=torch.as_tensor(gaps, dtype=torch.float32),
        blocks=block_table(gaps, gap_gold, base.task.label_words, n_boot=n_boot, seed=seed),
        df=df,
        attention=_slot_table(slot_att, heads, n_boot, seed),
        bias=from_samples(float(order_spread(correct.numpy())), order_spread(resampled), n=n, method="bootstrap"),
        order_std=from_samples(float(accs.std()), resampled.mean(-1).std(0, ddof=1), n=n, method="bootstrap"),
        order_p=order_permutation_p(correct.numpy(), n_perm=n_boot, seed=seed),
        last_label_excess=mean(per_prompt),
        last_label_pull=mean(per_prompt_prob),
        sensitivity=mean(per_prompt_sens),
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
            att = float(per_prompt[:, j, s].mean())
            rows.append(
                {"layer": layer, "head": h, "name": f"L{layer}H{h}", "slot": s, "attention": att, "ci_low": lo}
                | {"ci_high": hi, "share": float(share[j, s])}
            )
    return pd.DataFrame(rows)
