"""A recency measure that does not cancel over query classes: the query's class block first vs last.

Averaging accuracy over query classes hides a bias toward whichever label came last: in
a prompt whose demonstrations come in label blocks, the query whose class forms the last
block is helped and the one whose class forms the first block is hurt, so the two cancel
in the mean accuracy of an order. Comparing, for the same query and demonstrations, the
order where the query's class block comes **last** with the order where it comes
**first** sees it: the *block gap* (accuracy when last minus when first; 0: no recency
bias; positive: the most recent label is favoured).

Also here: the other order statistics of :func:`~icl_heads.order_bias.recency_bias`
(the spread of accuracy over orders beyond sampling noise, its permutation p-value,
and the probability pull toward the last demonstration's label).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_heads.stats import bootstrap_mean


def block_gaps(
    label_logits: Float[Tensor, "order prompt label"],
    golds: Int[Tensor, " prompt"],
    demo_labels: Sequence[Sequence[int]],
    order_names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: correct when the query's class block is last minus when it is first.

    Args:
        label_logits: label logits of every order (must include ``"blocked"`` and
            ``"blocked_reversed"``, the label blocks in ascending and descending class order).
        golds: gold class per prompt.
        demo_labels: the classes of each prompt's demonstrations (any order).
        order_names: names of the orders, in the order of ``label_logits``.

    Returns:
        ``(gap, gold)``: the gap (-1, 0 or 1) of every prompt whose query class is the
        first or last block, and those prompts' gold classes.

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
        present = sorted(set(labels))
        if g == present[-1] and g != present[0]:  # last block in "blocked", first in reversed
            gaps.append(up[i] - down[i])
        elif g == present[0] and g != present[-1]:
            gaps.append(down[i] - up[i])
        else:
            continue
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
        if not sel.any():
            continue
        e = bootstrap_mean(gap[sel], n_boot=n_boot, seed=seed)
        rows.append({"query_label": word, "n": e.n, "block_gap": e.value, "ci_low": e.low, "ci_high": e.high})
    return pd.DataFrame(rows)


def order_spread(correct: np.ndarray) -> np.ndarray | np.floating:
    """Standard deviation of accuracy over orders with the sampling noise of the prompts removed.

    ``correct`` is ``[order, ..., prompt]`` (0/1). With ``a_o`` the accuracy of order
    ``o``, ``S2`` their variance over orders and ``s2_i`` the variance of prompt ``i``'s
    correctness over orders, ``(S2 - sum_i s2_i / n**2) / (1 - 1/n)`` is an unbiased
    estimate of the variance over orders of the expected accuracy (prompts drawn
    independently); the spread is its square root, clipped at 0. Reduces over the first
    and last axes.
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
    n_labels = probs.shape[-1]
    out = torch.zeros(probs.shape[1])
    used = torch.zeros(probs.shape[1])
    for c in range(n_labels):
        is_last = (last == c).float()
        n_last, n_not = is_last.sum(0), (1 - is_last).sum(0)
        ok = (n_last > 0) & (n_not > 0)
        p = probs[..., c]
        diff = (p * is_last).sum(0) / n_last.clamp(min=1) - (p * (1 - is_last)).sum(0) / n_not.clamp(min=1)
        out += torch.where(ok, diff, torch.zeros_like(diff))
        used += ok.float()
    return out / used.clamp(min=1)
