"""Check a cheap head score against the exact ``ablation`` score on a sample of heads.

:func:`compare_head_scores` computes the cheap score for every head and the exact
ablation effect for a random sample of heads (one ablation per sampled head), and
reports their Spearman rank correlation and top-``k`` overlap over the sample, so a
user can see whether the cheap score can stand in for the exact one on their own model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from scipy.stats import spearmanr
from torch import Tensor

from icl_heads.engine import RunOptions, batches
from icl_heads.models import Head, ModelAccess
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.results import Result, provenance
from icl_heads.scoring import METHODS, _per_prompt_ablation, ablation_means, check_ablation_args, score_heads

CHEAP_METHODS = tuple(m for m in METHODS if m != "ablation")


@dataclass(frozen=True, repr=False)
class ScoreAgreement(Result):
    """How well a cheap head score agrees with the exact ``ablation`` score on a sample of heads.

    Attributes:
        method: the cheap score.
        heads: the sampled heads, as ``(layer, head)``.
        spearman: Spearman rank correlation of the two scores over the sample.
        top_k_overlap: share of the exact score's top ``k`` heads (in the sample) that the
            cheap score also ranks in its top ``k``.
        k: the ``k`` of ``top_k_overlap``.
        df: one row per sampled head: ``layer, head, name, estimate, exact, rank_estimate, rank_exact``.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    method: str
    heads: tuple[Head, ...]
    spearman: float
    top_k_overlap: float
    k: int
    df: pd.DataFrame
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _title: ClassVar[str] = "Agreement with the exact ablation score"

    @property
    def same_top_head(self) -> bool:
        """Whether both scores put the same head first in the sample."""
        return bool(
            self.df.loc[self.df.rank_estimate == 1, "name"].iloc[0]
            == self.df.loc[self.df.rank_exact == 1, "name"].iloc[0]
        )

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "heads compared": len(self.heads),
            "spearman": self.spearman,
            f"top-{self.k} overlap": self.top_k_overlap,
            "same top head": self.same_top_head,
        }

    def plot(self) -> go.Figure:
        """Scatter of the cheap score against the exact ablation effect, one point per sampled head."""
        fig = go.Figure(
            go.Scatter(
                x=self.df.exact, y=self.df.estimate, mode="markers", text=self.df.name,
                hovertemplate="%{text}<br>exact %{x:.4g}<br>estimate %{y:.4g}<extra></extra>",
            )
        )  # fmt: skip
        lo = float(min(self.df.exact.min(), self.df.estimate.min()))
        hi = float(max(self.df.exact.max(), self.df.estimate.max()))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot"}, name="y = x"))
        fig.update_layout(
            title=f"{self.method} vs exact ablation ({len(self.heads)} heads): Spearman {self.spearman:.3f}, "
            f"top-{self.k} overlap {self.top_k_overlap:.2f}",
            xaxis_title="exact ablation effect (drop in gold log-prob)",
            yaxis_title=self.method,
            showlegend=False,
        )
        return fig


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), dtype=int)
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


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
    batch_size: int = 32,
    heads_per_pass: int = 8,
    progress: bool = False,
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
        batch_size: prompts per forward pass.
        heads_per_pass: heads ablated per forward pass for the exact score.
        progress: show a progress bar.

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
    if method not in CHEAP_METHODS:
        raise ValueError(f"method must be a cheap score, one of {CHEAP_METHODS}; got {method!r}")
    check_ablation_args(how, where, rescore)
    access = ModelAccess(model, analysis="compare_head_scores")
    total = access.n_layers * access.n_heads
    n = total if sample is None else sample
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= total:
        raise ValueError(f"sample must be between 2 and the number of heads ({total}), got {sample!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the sample size ({n}), got {k}")
    tp = access.tokenize(prompts)
    rng = np.random.default_rng(seed)
    heads = tuple(divmod(int(i), access.n_heads) for i in np.sort(rng.choice(total, n, replace=False)))
    cheap = score_heads(
        access, tp, methods=(method,), batch_size=batch_size, how=how, where=where, reference=reference,
        rescore=rescore, heads_per_pass=heads_per_pass,
    )[method].mean(0)  # fmt: skip
    means = ablation_means(access, tp, how, where, reference)
    label_ids = torch.tensor(tp.label_token_ids)
    per_batch: list[Tensor] = []
    for batch in batches(access, tp, RunOptions(batch_size, progress=progress), desc="exact ablation"):
        per_batch.append(
            _per_prompt_ablation(
                access, batch, label_ids, heads_per_pass, heads=heads, how=how, where=where, means=means
            )
        )
    exact = torch.cat(per_batch).mean(0)
    est = np.array([float(cheap[layer, h]) for layer, h in heads])
    ex = np.array([float(exact[layer, h]) for layer, h in heads])
    rank_est, rank_ex = _ranks(est), _ranks(ex)
    rho = float(spearmanr(est, ex).statistic)
    if not np.isfinite(rho):
        raise ValueError(
            "the Spearman correlation is undefined because one score is constant over the sampled heads; "
            "sample more heads or use more prompts"
        )
    overlap = len(set(np.flatnonzero(rank_est <= k)) & set(np.flatnonzero(rank_ex <= k))) / k
    df = pd.DataFrame(
        {
            "layer": [layer for layer, _ in heads],
            "head": [h for _, h in heads],
            "name": [f"L{layer}H{h}" for layer, h in heads],
            "estimate": est,
            "exact": ex,
            "rank_estimate": rank_est,
            "rank_exact": rank_ex,
        }
    )
    config = {
        "method": method, "sample": n, "seed": seed, "k": k, "how": how, "where": where,
        "mean_reference": reference is not None, "rescore": rescore,
    }  # fmt: skip
    return ScoreAgreement(
        method=method, heads=heads, spearman=rho, top_k_overlap=overlap, k=k, df=df, config=config,
        provenance=provenance(access.name, tp),
    )  # fmt: skip
