"""Output calibrations of the label scores: contextual, domain-context and Batch Calibration.

Each maps test prompts' label logits to ``[prompt, label]`` calibrated log-probabilities whose argmax is the
prediction (Batch Calibration's are centred); docs/methods.md gives the formulas."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from icl_heads._checks import check_int, check_sequence
from icl_heads.accuracy import predict
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompt, ICLPrompts, ICLTask

#: the content-free queries of Zhao et al. (2021)
CONTENT_FREE = ("N/A", "", "[MASK]")


def divide_prior(
    label_logits: Float[Tensor, "prompt label"], prior: Float[Tensor, "prompt label"]
) -> Float[Tensor, "prompt label"]:
    """``log p - log prior``, renormalised: the log of ``W p`` with ``W = diag(prior)^-1`` per prompt.

    Args:
        label_logits: the label logits of the test prompts (``p`` is their softmax).
        prior: each prompt's estimated label prior (probabilities, one row per prompt).
    """
    return (label_logits.log_softmax(-1) - prior.log()).log_softmax(-1)


def batch_calibration(label_logits: Float[Tensor, "prompt label"]) -> Float[Tensor, "prompt label"]:
    """Batch Calibration (Zhou et al. 2023): ``log p - log pbar`` renormalised, ``pbar`` the batch's mean probabilities.

    Args:
        label_logits: the label logits of one batch of test prompts sharing a prompt format.

    Raises:
        ValueError: fewer than 2 prompts (the mean would remove each prompt's own scores).
    """
    if label_logits.ndim != 2 or len(label_logits) < 2:
        raise ValueError(
            f"Batch Calibration needs [prompt, label] scores of 2 or more prompts, got shape {tuple(label_logits.shape)}"
        )
    prior = label_logits.softmax(-1).mean(0, keepdim=True)
    return divide_prior(label_logits, prior.expand_as(label_logits))


def with_query(prompts: ICLPrompts, query: str) -> ICLPrompts:
    """``prompts`` with every query replaced by ``query`` (demonstrations and golds kept)."""
    out = tuple(ICLPrompt(demos=p.demos, query=query, gold=p.gold) for p in prompts.prompts)
    return replace(prompts, prompts=out, config=prompts.config.updated(condition=f"query={query!r}"))


def contextual_prior(
    model: Any, prompts: ICLPrompts, queries: Sequence[str], *, options: RunOptions | None = None
) -> Float[Tensor, "prompt label"]:
    """Each prompt's label probabilities with its query replaced by each of ``queries`` (one pass each), averaged.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: the prompts whose demonstrations are the contexts.
        queries: the query texts that replace each prompt's query.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Raises:
        ValueError: no query texts.
    """
    options = run_options(options)
    queries = [str(q) for q in check_sequence("queries", queries)]
    if not queries:
        raise ValueError("give at least one query text to estimate the label prior from")
    probs = [predict(model, with_query(prompts, q), options=options).label_logits.softmax(-1) for q in queries]
    prior = torch.stack(probs).mean(0)
    return prior / prior.sum(-1, keepdim=True)


def contextual_calibration(
    model: Any,
    prompts: ICLPrompts,
    *,
    label_logits: Float[Tensor, "prompt label"] | None = None,
    content_free: Sequence[str] = CONTENT_FREE,
    options: RunOptions | None = None,
) -> Float[Tensor, "prompt label"]:
    """Contextual calibration (Zhao et al. 2021): divide by the label prior of content-free queries.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: the test prompts; each prompt's demonstrations are its context.
        label_logits: their label logits when already computed (default: one pass).
        content_free: the content-free query texts (one extra pass each).
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        ``[prompt, label]`` calibrated log-probabilities.

    Raises:
        ValueError: no content-free texts.
    """
    options = run_options(options)
    prior = contextual_prior(model, prompts, content_free, options=options)
    if label_logits is None:
        label_logits = predict(model, prompts, options=options).label_logits
    return divide_prior(label_logits, prior)


def domain_texts(task: ICLTask, n: int = 20, seed: int = 0) -> tuple[str, ...]:
    """``n`` texts of random words from the task's texts, each of the task's average length in words.

    Raises:
        TypeError: ``task`` is not an ICLTask.
        ValueError: ``n < 1``.
    """
    if not isinstance(task, ICLTask):
        raise TypeError(f"expected an ICLTask, got {type(task).__name__}")
    n = check_int("n", n, minimum=1)
    words = [w for t in task.texts for w in t.split()]
    length, rng = max(1, round(len(words) / len(task.texts))), np.random.default_rng(seed)
    return tuple(" ".join(rng.choice(words, length)) for _ in range(n))


def domain_context_calibration(
    model: Any,
    prompts: ICLPrompts,
    *,
    label_logits: Float[Tensor, "prompt label"] | None = None,
    n_texts: int = 20,
    seed: int = 0,
    options: RunOptions | None = None,
) -> Float[Tensor, "prompt label"]:
    """Domain-context calibration (Fei et al. 2023): divide by the label prior of random in-domain texts.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: the test prompts; each prompt's demonstrations are its context.
        label_logits: their label logits when already computed (default: one pass).
        n_texts: random in-domain query texts (:func:`domain_texts`; one extra pass each).
        seed: seed of the random texts.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        ``[prompt, label]`` calibrated log-probabilities.

    Raises:
        ValueError: ``n_texts < 1``.
    """
    texts = domain_texts(prompts.task, n_texts, seed)
    return contextual_calibration(model, prompts, label_logits=label_logits, content_free=texts, options=options)
