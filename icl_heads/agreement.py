"""Check a cheap head score against the exact ``ablation`` score on a sample of heads.

Reports rank agreement (Spearman, top-``k`` overlap) and the exact score's own reproducibility
(split-half self-agreement, heads resolved from zero): agreement beyond it is agreement with noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.stats import rankdata, spearmanr
from torch import Tensor

from icl_heads.access import Head, batches
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.records import UNSET, Provenance, Record, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.scoring import (
    METHODS,
    ablation_means,
    check_ablation_args,
    head_names,
    per_prompt_ablation,
    score_heads,
)

CHEAP_METHODS = tuple(m for m in METHODS if m != "ablation")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class ScoreAgreementConfig(Record):
    """Arguments of :func:`~icl_heads.agreement.compare_head_scores`."""

    method: str = UNSET
    sample: int = UNSET
    seed: int = UNSET
    k: int = UNSET
    how: str = UNSET
    where: str = UNSET
    mean_reference: bool = UNSET
    rescore: Any = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "k")


@dataclass(frozen=True, repr=False)
class ScoreAgreement(Result):
    """How well a cheap head score agrees with the exact ``ablation`` score on a sample of heads.

    Attributes:
        method: the cheap score.
        heads: the sampled heads, as ``(layer, head)``.
        spearman: Spearman rank correlation of the two scores over the sample.
        top_k_overlap: share of the exact score's top ``k`` heads (in the sample) in the cheap score's top ``k``.
        k: the ``k`` of ``top_k_overlap``.
        df: one row per sampled head: ``layer, head, name, estimate, exact, exact_se`` (standard
            error over prompts), ``resolved`` (``|exact| > 2 exact_se``), ``rank_estimate, rank_exact``.
        exact_self_spearman: the exact score's split-half self-agreement (NaN with fewer than 4 prompts).
        spearman_resolved: the Spearman correlation over the resolved heads (NaN when fewer than 3).
        warnings: plain statements of where the comparison is limited by noise.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    method: str
    heads: tuple[Head, ...]
    spearman: float
    top_k_overlap: float
    k: int
    df: pd.DataFrame
    exact_self_spearman: float = float("nan")
    spearman_resolved: float = float("nan")
    warnings: tuple[str, ...] = ()
    config: ScoreAgreementConfig = field(default_factory=ScoreAgreementConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Agreement with the exact ablation score"

    @property
    def same_top_head(self) -> bool:
        """Whether both scores put the same head first in the sample."""
        return bool(((self.df.rank_estimate == 1) & (self.df.rank_exact == 1)).any())

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "heads compared": len(self.heads),
            "spearman": self.spearman,
            f"top-{self.k} overlap": self.top_k_overlap,
            "same top head": self.same_top_head,
            "exact split-half self-agreement": self.exact_self_spearman,
            "heads resolved from zero": int(self.df.resolved.sum()),
            "spearman over resolved heads": self.spearman_resolved,
        }

    def plot(self) -> Figure:
        """Scatter of the cheap score against the exact ablation effect, one point per sampled head."""
        return self._draw("plot")


def split_half_spearman(per_prompt: Float[Tensor, "prompt head"], n_splits: int = 20, seed: int = 0) -> float:
    """The exact score's reproducibility: mean Spearman between the head means of two random halves of the prompts.

    Args:
        per_prompt: one score per prompt and head.
        n_splits: random splits averaged.
        seed: seed of the splits.

    Returns:
        The mean correlation (NaN with fewer than 4 prompts or when a half is constant).
    """
    values = per_prompt.double().cpu().numpy()
    n = len(values)
    if n < 4:
        return float("nan")
    rng = np.random.default_rng(seed)
    orders = [rng.permutation(n) for _ in range(n_splits)]
    return float(
        np.mean([spearmanr(values[o[: n // 2]].mean(0), values[o[n // 2 :]].mean(0)).statistic for o in orders])
    )


def resolved_from_zero(per_prompt: Float[Tensor, "prompt head"]) -> tuple[np.ndarray, np.ndarray]:
    """Standard error over prompts of each head's mean score, and whether the mean exceeds two of them.

    Args:
        per_prompt: one score per prompt and head (at least 2 prompts).

    Returns:
        ``(se, resolved)``, one entry per head.
    """
    values = per_prompt.double().cpu().numpy()
    se = values.std(0, ddof=1) / np.sqrt(len(values))
    return se, np.abs(values.mean(0)) > 2 * se


def _noise_warnings(self_rho: float, spearman: float, n_resolved: int, n_heads: int) -> tuple[str, ...]:
    notes = []
    if np.isfinite(self_rho) and self_rho < spearman:
        notes.append(
            f"the exact score agrees with itself at Spearman {self_rho:.2f} between halves of the prompts, below "
            f"the agreement measured ({spearman:.2f}): part of that agreement is with these prompts' sampling noise"
        )
    if n_resolved < n_heads:
        notes.append(
            f"only {n_resolved} of {n_heads} heads have an exact effect resolved from zero (> 2 standard errors); "
            "the others' ranks are sampling noise, so the Spearman over all heads is bounded by the exact score's "
            "self-agreement; read spearman_resolved and the top-k overlap, or use more prompts"
        )
    return tuple(notes)


def compare_head_scores(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    method: str = "attribution",
    sample: int | None = None,
    seed: int = 0,
    k: int = 5,
    how: str = "zero",
    where: str = "all",
    reference: ICLPrompts | TokenizedPrompts | None = None,
    rescore: int = 0,
    heads_per_pass: int = 8,
    options: RunOptions | None = None,
) -> ScoreAgreement:
    """Compare a cheap head score with the exact ``ablation`` score on a random sample of heads.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts (e.g. ``task.prompts(n=64, shots=4)``).
        method: the cheap score: ``"attribution"``, ``"logprob_increase"`` or ``"dla"``.
        sample: number of heads to ablate exactly (default: all heads).
        seed: seed of the sample.
        k: the ``k`` of the top-``k`` overlap (at most the sample size).
        how: ``"zero"`` or ``"mean"`` ablation (for the exact score, and for ``"attribution"``).
        where: ablate at ``"all"`` positions or the ``"final"`` one.
        reference: prompts for the means of ``how="mean"`` (default: ``prompts``).
        rescore: for ``"attribution"``, heads re-scored exactly (see :func:`~icl_heads.score_heads`).
        heads_per_pass: heads ablated per forward pass for the exact score.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        A :class:`ScoreAgreement`.

    Raises:
        ValueError: an unknown method, a bad ``sample``/``k``/``how``/``where``, or bad prompts.
        TypeError: an unsupported model.

    >>> import icl_heads as ih
    >>> prompts = ih.organism_task().prompts(n=16, shots=4, seed=0)
    >>> agreement = compare_head_scores(ih.load_model("organism"), prompts, sample=6, k=2)
    >>> len(agreement.df), -1 <= agreement.spearman <= 1
    (6, True)
    """
    options = run_options(options)
    if method not in CHEAP_METHODS:
        raise ValueError(f"method must be a cheap score, one of {CHEAP_METHODS}; got {method!r}")
    check_ablation_args(how, where, rescore)
    access = faithful_access(model, "compare_head_scores")
    total = access.n_layers * access.n_heads
    n = total if sample is None else sample
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= total:
        raise ValueError(f"sample must be between 2 and the number of heads ({total}), got {sample!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the sample size ({n}), got {k}")
    tp = access.tokenize(prompts)
    rng = np.random.default_rng(seed)
    heads = tuple(divmod(int(i), access.n_heads) for i in np.sort(rng.choice(total, n, replace=False)))
    quiet, ablate = run_options(options, progress=False), {"how": how, "where": where, "heads_per_pass": heads_per_pass}
    scored = score_heads(access, tp, methods=(method,), reference=reference, rescore=rescore, options=quiet, **ablate)
    cheap, means = scored[method].mean(0), ablation_means(access, tp, how, where, reference)
    label_ids = torch.tensor(tp.label_token_ids)
    drops = torch.zeros(len(tp), access.n_layers, access.n_heads)
    # batched by length as score_heads batches them, so drops it computed on these prompts are read back
    for batch in batches(access, tp, options, desc="exact ablation", by_length=True):
        drops[batch.index] = per_prompt_ablation(access, batch, label_ids, heads=heads, means=means, **ablate)
    layers, hs = [la for la, _ in heads], [h for _, h in heads]
    per_prompt = drops[:, layers, hs]  # [prompt, head]
    est = np.array([float(cheap[layer, h]) for layer, h in heads])
    ex = per_prompt.double().mean(0).numpy()
    se, resolved = resolved_from_zero(per_prompt) if len(per_prompt) > 1 else (np.full(n, np.nan), np.zeros(n, bool))
    self_rho = split_half_spearman(per_prompt, seed=seed)
    rank_est, rank_ex = rankdata(-est, method="ordinal"), rankdata(-ex, method="ordinal")
    rho = float(spearmanr(est, ex).statistic)
    if not np.isfinite(rho):
        raise ValueError(
            "the Spearman correlation is undefined because one score is constant over the sampled heads; "
            "sample more heads or use more prompts"
        )
    overlap = len(set(np.flatnonzero(rank_est <= k)) & set(np.flatnonzero(rank_ex <= k))) / k
    rho_resolved = float(spearmanr(est[resolved], ex[resolved]).statistic) if resolved.sum() >= 3 else float("nan")
    df = pd.DataFrame({"layer": layers, "head": hs, "name": head_names(heads)})
    df = df.assign(estimate=est, exact=ex, exact_se=se, resolved=resolved, rank_estimate=rank_est, rank_exact=rank_ex)
    config = ScoreAgreementConfig(
        method=method,
        sample=n,
        seed=seed,
        k=k,
        how=how,
        where=where,
        mean_reference=reference is not None,
        rescore=rescore,
    )
    return ScoreAgreement(
        method=method,
        heads=heads,
        spearman=rho,
        top_k_overlap=overlap,
        k=k,
        df=df,
        exact_self_spearman=self_rho,
        spearman_resolved=rho_resolved,
        warnings=_noise_warnings(self_rho, rho, int(resolved.sum()), n),
        config=config,
        provenance=provenance(access.name, tp),
    )
