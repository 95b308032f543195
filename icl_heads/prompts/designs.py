"""Prompt designs beyond random sampling: one fixed demonstration set for many queries, balanced samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from icl_heads.prompts.task import ICLPrompts, ICLTask, PromptConfig
from icl_heads.prompts.text import ICLPrompt


def fixed_demo_prompts(
    task: ICLTask, demos: Sequence[int | np.integer] | np.ndarray, queries: Sequence[int | np.integer] | np.ndarray
) -> ICLPrompts:
    """Prompts that share one demonstration set: ``demos`` then each query, in order.

    Args:
        task: the task whose examples the indices refer to.
        demos: indices into ``task.texts`` of the demonstrations, in prompt order.
        queries: indices of the queries (one prompt each).

    Returns:
        One prompt per query.

    Raises:
        ValueError: no queries, an index out of range, or a query that is also a demonstration.
    """
    demos, queries = [int(i) for i in demos], [int(i) for i in queries]
    if not queries:
        raise ValueError("no queries given; pass at least one example index as a query")
    if bad := [i for i in demos + queries if not 0 <= i < len(task.texts)]:
        raise ValueError(f"example indices {bad[:5]} are outside the task's {len(task.texts)} examples")
    if set(demos) & set(queries):
        raise ValueError(f"examples {sorted(set(demos) & set(queries))[:5]} are both demonstrations and queries")
    shown = tuple((task.texts[i], task.labels[i]) for i in demos)
    out = tuple(ICLPrompt(demos=shown, query=task.texts[q], gold=task.labels[q]) for q in queries)
    config = PromptConfig(n=len(queries), shots=len(demos), demos=demos, fixed_demos=True)
    return ICLPrompts(prompts=out, task=task, config=config)


def balanced_sample(
    labels: np.ndarray, n: int, rng: np.random.Generator, exclude: Sequence[int | np.integer] | np.ndarray = ()
) -> np.ndarray:
    """``n`` example indices, as balanced over classes as possible, in random order.

    Raises:
        ValueError: a class has too few examples left.
    """
    k = int(labels.max()) + 1
    per = np.full(k, n // k)
    per[rng.choice(k, n % k, replace=False)] += 1
    free = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude, dtype=int))
    picks = []
    for c in range(k):
        pool = free[labels[free] == c]
        if len(pool) < per[c]:
            raise ValueError(f"class {c} has {len(pool)} unused examples but {per[c]} are needed; use a larger task")
        picks.append(rng.choice(pool, per[c], replace=False))
    return rng.permutation(np.concatenate(picks))


def last_two_differ(demos: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``demos`` with the last two in different classes (Chang et al.'s guard against recency bias).

    If the last two share a class, the latest earlier demonstration of another class swaps into second-to-last.

    Raises:
        ValueError: fewer than two demonstrations or only one class among them.
    """
    demos = np.asarray(demos).copy()
    classes = np.asarray(labels)[demos]
    if len(demos) < 2 or len(set(classes.tolist())) < 2:
        raise ValueError(f"need two demonstrations of different classes to end on two labels, got classes {classes}")
    if classes[-1] == classes[-2]:
        j = int(np.flatnonzero(classes[:-2] != classes[-1])[-1])
        demos[[j, -2]] = demos[[-2, j]]
    return demos
