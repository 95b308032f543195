"""Pure maths of the mechanism analyses (AUCs, label metrics, the bilinear probe), testable on hand-made tensors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.stats import rankdata
from torch import Tensor


def roc_auc(values, positive) -> float:
    """ROC AUC of ``values`` for telling ``positive`` from the rest (Mann-Whitney, ties count 1/2).

    NaN values (positions the head cannot see, e.g. outside a sliding window) are left out.

    Raises:
        ValueError: lengths differ, or one of the two groups is empty.
    """
    x, y = _seen(values, positive)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC AUC needs both groups, got {n_pos} positives and {n_neg} negatives; "
            "use prompts whose demonstrations include both the query's class and another class"
        )
    ranks = rankdata(x)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _seen(values, positive, groups=None) -> tuple[np.ndarray, ...]:
    """Flat values, positives (and groups) where the value is not NaN."""
    x, y = np.asarray(values, dtype=float).ravel(), np.asarray(positive, dtype=bool).ravel()
    arrays = (x, y) if groups is None else (x, y, np.asarray(groups).ravel())
    if len({a.shape for a in arrays}) > 1:
        sizes = f"values ({x.size}), positive ({y.size})" + (
            f" and groups ({arrays[-1].size})" if groups is not None else ""
        )
        raise ValueError(f"{sizes} must have the same length")
    return tuple(a[~np.isnan(x)] for a in arrays)


def paired_auc(values, positive, groups) -> float:
    """Within-group AUC: over all (positive, negative) pairs from the same group, P(pos > neg) + P(tie)/2.

    Only scores within a prompt compete in its softmax; this AUC ignores any per-prompt offset.

    Raises:
        ValueError: lengths differ, or no group has both a positive and a negative.
    """
    x, y, g = _seen(values, positive, groups)
    order = np.argsort(g, kind="stable")
    x, y, g = x[order], y[order], g[order]
    wins, pairs = 0.0, 0
    bounds = np.flatnonzero(np.diff(g)) + 1
    for xs, ys in zip(np.split(x, bounds), np.split(y, bounds), strict=True):
        pos, neg = xs[ys], xs[~ys]
        if pos.size and neg.size:
            diff = pos[:, None] - neg[None, :]
            wins += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            pairs += diff.size
    if pairs == 0:
        raise ValueError(
            "no prompt has demonstrations of both the query's class and another class; "
            "sample prompts with more shots or balanced counts"
        )
    return wins / pairs


def label_metrics(
    logits: Float[Tensor, "*batch vocab"], label_ids: Int[Tensor, " label"], own: Int[Tensor, " *batch"]
) -> dict[str, Tensor]:
    """Label logits, ranks and own-label-vs-rest differences of projected vectors.

    Args:
        logits: projected vectors over the whole vocabulary.
        label_ids: the token of each label.
        own: the label each vector is scored for (index into ``label_ids``).

    Returns:
        ``label_logits [*batch, label]``; ``ranks [*batch, label]`` (1 = largest logit;
        ties count against the label, so a zero vector ranks last); ``logit_diff``
        (own minus the mean of the other labels); ``logprob_diff`` (``log p(own) - log
        sum_{other labels} p``, equal to ``logit_diff`` for two labels); ``promotes``
        (own logit above every other label's).
    """
    lab = logits[..., label_ids.to(logits.device)]
    ranks = torch.stack([(logits >= lab[..., i : i + 1]).sum(-1) for i in range(lab.shape[-1])], -1)
    return {"label_logits": lab, "ranks": ranks, **own_vs_rest(lab, own)}


def own_vs_rest(lab: Float[Tensor, "*batch label"], own: Int[Tensor, " *batch"]) -> dict[str, Tensor]:
    """``logit_diff``, ``logprob_diff`` and ``promotes`` of label logits for each vector's own label."""
    n = lab.shape[-1]
    own = own.clamp(min=0).to(lab.device)
    mine = lab.gather(-1, own[..., None])[..., 0]
    others = torch.nn.functional.one_hot(own, n) == 0
    rest = lab.masked_fill(~others, float("-inf"))
    return {
        "logit_diff": mine - (lab * others).sum(-1) / (n - 1),
        "logprob_diff": mine - rest.logsumexp(-1),
        "promotes": mine > rest.amax(-1),
    }


def unit_features(x: Float[Tensor, "... d_model"], centre: bool) -> Float[Tensor, "... d_model"]:
    """Residual streams as unit vectors (centred first for LayerNorm models), as the norm sees them."""
    x = x.float()
    if centre:
        x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def bilinear_probe_r2(
    q: Float[Tensor, "n d"],
    k: Float[Tensor, "n d"],
    y: Float[Tensor, " n"],
    groups: Int[Tensor, " n"],
    *,
    rank: int,
    n_components: int = 16,
    ridge: float = 1e-3,
    seed: int = 0,
) -> float:
    """Held-out R² of a rank-``rank`` bilinear model ``y ≈ q' M k' + a·q' + b·k' + c``.

    ``q'``, ``k'`` are the top ``n_components`` principal components of each side. Groups
    (prompts) are split in half: the PCA, the ridge fit, its truncation to ``rank`` (by SVD)
    and the refit of the linear terms use one half; the R² is measured on the other.

    Raises:
        ValueError: fewer than 4 groups, or a bad ``rank``/``n_components``.
    """
    if n_components < 1 or not 1 <= rank <= n_components:
        raise ValueError(f"need 1 <= rank <= n_components, got rank={rank}, n_components={n_components}")
    ids = torch.unique(groups)
    if len(ids) < 4:
        raise ValueError(f"the probe needs at least 4 prompts to split into train and test, got {len(ids)}")
    gen = torch.Generator().manual_seed(seed)
    train_ids = ids[torch.randperm(len(ids), generator=gen)[: len(ids) // 2]]
    train = torch.isin(groups, train_ids)
    q, k, y = q.double(), k.double(), y.double()

    def basis(x: Tensor) -> tuple[Tensor, Tensor]:
        mean = x[train].mean(0)
        _, _, vh = torch.linalg.svd(x[train] - mean, full_matrices=False)
        return mean, vh[: min(n_components, vh.shape[0])].T

    (mq, bq), (mk, bk) = basis(q), basis(k)
    qp, kp = (q - mq) @ bq, (k - mk) @ bk
    linear = torch.cat([qp, kp, torch.ones(len(y), 1, dtype=qp.dtype)], 1)
    x = torch.cat([torch.einsum("ni,nj->nij", qp, kp).flatten(1), linear], 1)

    def ridge_fit(x: Tensor, y: Tensor) -> Tensor:
        return torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)

    w = ridge_fit(x[train], y[train])
    u, s, vh = torch.linalg.svd(w[: qp.shape[1] * kp.shape[1]].view(qp.shape[1], kp.shape[1]))
    bilinear = torch.einsum("ni,ij,nj->n", qp, (u[:, :rank] * s[:rank]) @ vh[:rank], kp)
    # refit the linear terms and the constant around the truncated bilinear form
    fit = bilinear + linear @ ridge_fit(linear[train], (y - bilinear)[train])
    total = (y[~train] - y[~train].mean()).pow(2).sum()
    if float(total) == 0.0:
        raise ValueError("the scores are constant on the held-out prompts; R² is undefined")
    return float(1 - (y[~train] - fit[~train]).pow(2).sum() / total)


def masked_mean(values: pd.Series, mask: np.ndarray, what: str) -> float:
    if not mask.any():
        raise ValueError(
            f"no demonstration {what} in any prompt, so that mean is undefined; "
            "use prompts with demonstrations of several classes"
        )
    return float(values[mask].mean())  # pandas skips NaN: positions the head cannot see


def visible_scores(scores: Float[Tensor, "..."]) -> Float[Tensor, "..."]:
    """Attention scores with masked positions (``-inf`` or the dtype's minimum, e.g. outside a sliding window) as NaN."""
    return torch.where(torch.isfinite(scores) & (scores > -1e30), scores, torch.full_like(scores, float("nan")))


def safe_ratio(num: float | np.floating, den: float | np.floating) -> float:
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)
