"""What in-context heads write (OV label features) and where they look (QK label attention).

DESIGN §2a. For head ``(l, h)``, a prompt with final position ``t`` and a source
position ``p``, the head's per-position value-output vector is ``v_p W_O^{l,h}``
(``v`` from ``hook_v``; with grouped-query attention head ``h`` reads key/value head
``h // (n_heads / n_kv)``). Weighted by attention, ``A[t, p] v_p W_O^{l,h}``, these sum
over ``p`` to the head's output ``z_t W_O^{l,h}``. Projected through the final norm
(its scale frozen at ``t``) and the unembedding, the vector at a demonstration's label
position shows which label the head would copy from there.

* :func:`ov_label_features`: label logit differences, label ranks in the vocabulary and
  top tokens of the vectors at label positions and at control (non-label) positions.
* :func:`qk_label_attention`: attention and pre-softmax scores from ``t`` to each label
  position, by whether the demonstration's label is the gold label or the prediction.
* :func:`flip_analysis`: prompt pairs whose prediction flips; how much attention at
  each label's positions and how much the OV vectors change.
* :func:`two_tower_test`: how well the score separates same-class demonstrations (ROC
  AUC) next to the cosine of the residual streams, and an optional low-rank bilinear probe.

Pure tensor maths (AUCs, label metrics, the probe) comes first and is tested on
hand-made tensors; the functions that run the model follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from scipy.stats import rankdata
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads.interventions import check_heads
from icl_heads.models import Capture, Head, ModelAccess
from icl_heads.prompts import ICLPrompt, ICLPrompts, PromptBatch, TokenizedPrompts
from icl_heads.results import Result, provenance

# ---- pure maths ------------------------------------------------------------------------


def roc_auc(values, positive) -> float:
    """ROC AUC of ``values`` for telling ``positive`` from the rest (Mann-Whitney, ties count 1/2).

    Raises:
        ValueError: lengths differ, or one of the two groups is empty.
    """
    x = np.asarray(values, dtype=float).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    if x.shape != y.shape:
        raise ValueError(f"values ({x.size}) and positive ({y.size}) must have the same length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC AUC needs both groups, got {n_pos} positives and {n_neg} negatives; "
            "use prompts whose demonstrations include both the query's class and another class"
        )
    ranks = rankdata(x)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired_auc(values, positive, groups) -> float:
    """Within-group AUC: over all (positive, negative) pairs from the same group, P(pos > neg) + P(tie)/2.

    Attention is a softmax over one prompt's keys, so only scores within a prompt compete;
    this AUC ignores any per-prompt offset of the scores.

    Raises:
        ValueError: lengths differ, or no group has both a positive and a negative.
    """
    x = np.asarray(values, dtype=float).ravel()
    y = np.asarray(positive, dtype=bool).ravel()
    g = np.asarray(groups).ravel()
    if not x.shape == y.shape == g.shape:
        raise ValueError("values, positive and groups must have the same length")
    wins, pairs = 0.0, 0
    order = np.argsort(g, kind="stable")
    x, y, g = x[order], y[order], g[order]
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

    ``q'``, ``k'`` are the top ``n_components`` principal components of each side (the
    linear terms carry what centring moves out of the bilinear form, like a key bias).
    Groups (prompts) are split in half: the PCA, the ridge fit of the full bilinear form,
    its truncation to ``rank`` (by SVD) and the refit of the linear terms use one half;
    the R² is measured on the other.

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
    ones = torch.ones(len(y), 1, dtype=qp.dtype)
    linear = torch.cat([qp, kp, ones], 1)
    x = torch.cat([torch.einsum("ni,nj->nij", qp, kp).flatten(1), linear], 1)

    def ridge_fit(x: Tensor, y: Tensor) -> Tensor:
        return torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)

    w = ridge_fit(x[train], y[train])
    u, s, vh = torch.linalg.svd(w[: qp.shape[1] * kp.shape[1]].view(qp.shape[1], kp.shape[1]))
    bilinear = torch.einsum("ni,ij,nj->n", qp, (u[:, :rank] * s[:rank]) @ vh[:rank], kp)
    # refit the linear terms and the constant around the truncated bilinear form
    fit = bilinear + linear @ ridge_fit(linear[train], (y - bilinear)[train])
    test = ~train
    resid = y[test] - fit[test]
    total = y[test] - y[test].mean()
    if float(total.pow(2).sum()) == 0.0:
        raise ValueError("the scores are constant on the held-out prompts; R² is undefined")
    return float(1 - resid.pow(2).sum() / total.pow(2).sum())


# ---- running the model -----------------------------------------------------------------


def _heads(access: ModelAccess, heads: Any) -> tuple[Head, ...]:
    """``None``: every head; an object with ``.heads`` (e.g. InContextHeads); or (layer, head) pairs."""
    if heads is None:
        return tuple((layer, h) for layer in range(access.n_layers) for h in range(access.n_heads))
    heads = getattr(heads, "heads", heads)
    out = check_heads(access, heads)
    if not out:
        raise ValueError("no heads given; pass (layer, head) pairs, found.heads, or None for every head")
    return out


def _rows_at(act: Tensor, positions: Tensor) -> Tensor:
    """``act[b, positions[b, i]]`` for an activation ``[batch, pos, ...]``."""
    dev = act.device
    rows = torch.arange(act.shape[0], device=dev)[:, None]
    return act[rows, positions.clamp(min=0).to(dev)].detach().float()


def _gather(
    access: ModelAccess,
    batch: PromptBatch,
    layers: Sequence[int],
    positions: Tensor,
    *,
    values: bool = False,
    scores: bool = False,
    resid: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One forward pass keeping, per layer, the final row of the pattern (and scores), and ``v``/``resid_pre`` at ``positions``."""
    store: dict[str, Tensor] = {}

    def at(key: str):
        def fn(act: Tensor, hook: Any) -> None:
            store[key] = _rows_at(act, positions)

        return fn

    hooks, caps = [], [Capture("ln_final.hook_scale")]
    for layer in layers:
        caps.append(Capture(access.hook(layer, "pattern"), "pattern_final"))
        if scores:
            caps.append(Capture(access.hook(layer, "attn_scores"), "pattern_final"))
        if values:
            hooks.append((access.hook(layer, "v"), at(access.hook(layer, "v"))))
        if resid:
            hooks.append((access.hook(layer, "resid_pre"), at(access.hook(layer, "resid_pre"))))
            caps.append(Capture(access.hook(layer, "resid_pre"), "final"))
    logits, got = access.run(batch, hooks=hooks, capture=caps)
    out = dict(got)
    for key, v in store.items():
        out["at:" + key] = v
    return logits, out


def _at_keys(row: Float[Tensor, "batch head key"], positions: Tensor) -> Float[Tensor, "batch head n"]:
    idx = positions.clamp(min=0).to(row.device)[:, None, :].expand(-1, row.shape[1], -1)
    return row.gather(2, idx)


def per_position_ov(
    model: Any, batch: PromptBatch, heads: Sequence[Head], positions: Int[Tensor, "batch n"]
) -> tuple[Float[Tensor, "batch head n d_model"], Float[Tensor, "batch head n"], Float[Tensor, "batch 1"]]:
    """Per-position value-output vectors ``v_p W_O`` of ``heads`` and the attention ``A[t, p]`` from the final position.

    Args:
        model: a TransformerLens model or :class:`~icl_heads.models.ModelAccess`.
        batch: one batch from ``access.batches(...)``.
        heads: ``(layer, head)`` pairs.
        positions: source positions per prompt (in the batch's padded coordinates).

    Returns:
        The unweighted vectors, the attention weights (``weights[..., None] * vectors``
        summed over all positions ``p <= t`` is ``z_t W_O``) and the final norm's scale
        at the final position.

    Raises:
        ValueError: heads outside the model.
    """
    access = ModelAccess(model)
    heads = check_heads(access, heads)
    layers = sorted({layer for layer, _ in heads})
    _, got = _gather(access, batch, layers, positions, values=True)
    vecs, attn = [], []
    for layer, h in heads:
        v = got["at:" + access.hook(layer, "v")]  # [b, n, kv, d_head]
        kv = h // (access.n_heads // v.shape[2])
        w_o = access.W_O(layer)[h].float().to(v.device)
        vecs.append(v[:, :, kv] @ w_o)
        attn.append(_at_keys(got[access.hook(layer, "pattern")], positions)[:, h])
    return torch.stack(vecs, 1), torch.stack(attn, 1), got["ln_final.hook_scale"]


def _label_and_control(batch: PromptBatch, offset: int) -> tuple[Tensor, Tensor, Tensor]:
    """Positions ``[b, 2*demo]`` (labels, then label + offset), their kind (0 label, 1 control) and validity."""
    lp = batch.label_positions
    ctrl = lp + offset
    mask = batch.attention_mask.bool()
    real = torch.zeros_like(ctrl, dtype=torch.bool)
    inside = (lp >= 0) & (ctrl >= 0) & (ctrl <= batch.final_positions[:, None])
    real[inside] = mask[torch.arange(len(lp))[:, None].expand_as(ctrl)[inside], ctrl[inside]]
    is_label = (ctrl[:, :, None] == lp[:, None, :]).any(-1)
    valid = torch.cat([lp >= 0, real & ~is_label], 1)
    kind = torch.cat([torch.zeros_like(lp), torch.ones_like(lp)], 1)
    return torch.cat([lp, ctrl], 1), kind, valid


def _shift(batch: PromptBatch) -> Tensor:
    """Left-padding offset of each prompt (0 for right padding)."""
    return batch.attention_mask.argmax(1)


def _token_str(tokenizer, i: int) -> str:
    return tokenizer.decode([i]) or str(tokenizer.convert_ids_to_tokens(i))


def _decode(tokenizer, ids) -> dict[int, str]:
    return {int(i): _token_str(tokenizer, int(i)) for i in np.unique(np.asarray(ids))}


def _label_word_columns(words: Sequence[str], values: Tensor, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{w}": values[:, i].cpu().numpy() for i, w in enumerate(words)}


# ---- OV label features ---------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class OVLabelFeatures(Result):
    """What each head's value-output vector at label (and control) positions promotes.

    Attributes:
        heads: the analysed heads.
        df: one row per head, position ``kind`` (``"label"``, ``"control"``) and
            ``label`` (each label word, and ``"all"``): ``n``, ``share_promoting``
            (share of positions whose vector ranks its own label above every other label),
            ``mean_logit_diff`` and ``mean_logprob_diff`` (own label vs the rest; for the
            unweighted vector ``v_p W_O``), their ``weighted_`` versions (for
            ``A[t, p] v_p W_O``), ``median_own_rank`` (own label's rank in the whole
            vocabulary, 1 = top), ``top_rank_share`` (share with rank <= ``top_rank``),
            ``mean_attention`` and ``top_tokens`` (of the mean projected vector).
        positions: one row per prompt, demonstration, kind and head, with the position,
            its token, ``attention``, ``logit_{word}`` and ``rank_{word}`` for each label
            word, the differences, ``promotes``, ``own_rank`` and ``top_tokens``. Ranks and
            top tokens do not depend on the attention weight, which only scales the vector.
        label_words: the task's label words.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    heads: tuple
    df: pd.DataFrame
    positions: pd.DataFrame
    label_words: tuple
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _title: ClassVar[str] = "OV label features"

    def share(self, kind: str = "label") -> pd.Series:
        """Share of positions of ``kind`` whose vector promotes its own label, per head name."""
        rows = self.df[(self.df.kind == kind) & (self.df.label == "all")]
        return rows.set_index("name")["share_promoting"]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        label, control = self.share("label"), self.share("control")
        for name in list(label.index)[:4]:
            out[f"{name}: label positions promoting their label"] = float(label[name])
            if name in control.index:
                out[f"{name}: control positions promoting their demo's label"] = float(control[name])
            rank = self.df[(self.df.name == name) & (self.df.kind == "label") & (self.df.label == "all")]
            out[f"{name}: median rank of the label in the vocabulary"] = float(rank.median_own_rank.iloc[0])
        if len(label) > 4:
            out[f"mean over {len(label)} heads: label positions promoting their label"] = float(label.mean())
        return out

    def plot(self, head: Head | None = None) -> go.Figure:
        """Label logit difference of the OV vector at each demonstration slot, by the label there."""
        from icl_heads.plots.mechanism import plot_ov_logit_diff

        return plot_ov_logit_diff(self, head)


def ov_label_features(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: Any = None,
    *,
    control_offset: int = -1,
    top_k: int = 5,
    top_rank: int = 5,
    batch_size: int = 32,
    padding_side: str = "right",
    progress: bool = False,
) -> OVLabelFeatures:
    """Project each head's per-position value-output vectors at label positions onto the vocabulary.

    For every prompt, demonstration and head, the vector ``v_p W_O`` at the label
    position ``p`` (and at the control position ``p + control_offset``, e.g. the
    separator just before the label) goes through the final norm with the scale of the
    final position frozen, and the unembedding (no biases: it is a component's
    contribution). The result says whether the vector promotes the label shown at ``p``.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every
            head (one vocabulary projection per head and position: pick heads on big models).
        control_offset: where the control position sits relative to each label position.
        top_k: how many top tokens to list.
        top_rank: a label "ranks in the top" when its rank is at most this.
        batch_size: prompts per forward pass (does not change the result).
        padding_side: ``"right"`` or ``"left"`` (does not change the result).
        progress: show a progress bar.

    Returns:
        An :class:`OVLabelFeatures` result.

    Raises:
        ValueError: ``control_offset == 0``, ``top_k``/``top_rank`` below 1, bad heads or prompts.
        TypeError: an unsupported model.

    >>> ov = ov_label_features(model, prompts, found.heads)  # doctest: +SKIP
    >>> ov.share("label")  # doctest: +SKIP
    """
    if control_offset == 0:
        raise ValueError("control_offset must not be 0 (that is the label position); use e.g. -1 for the separator")
    if top_k < 1 or top_rank < 1:
        raise ValueError(f"top_k and top_rank must be at least 1, got {top_k} and {top_rank}")
    access = ModelAccess(model)
    tp = access.tokenize(prompts)
    heads = _heads(access, heads)
    words = tuple(tp.prompts.task.label_words)
    label_ids = torch.tensor(tp.label_token_ids)
    layers = sorted({layer for layer, _ in heads})
    n_vocab = access.W_U.shape[1]
    sums = torch.zeros(len(heads), 2, len(words), n_vocab)
    counts = torch.zeros(len(heads), 2, len(words))
    frames = []
    for batch in tqdm(list(access.batches(tp, batch_size, padding_side)), desc="OV features", disable=not progress):
        positions, kind, valid = _label_and_control(batch, control_offset)
        own = batch.demo_labels.repeat(1, 2)
        _, got = _gather(access, batch, layers, positions, values=True)
        scale = got["ln_final.hook_scale"]
        bi, ni = valid.nonzero(as_tuple=True)
        tok_ids = batch.tokens[bi, positions[bi, ni]]
        strings = _decode(access.tokenizer, tok_ids)
        base = {
            "prompt": batch.index[bi].numpy(),
            "demo": (ni % batch.label_positions.shape[1]).numpy(),
            "position": (positions[bi, ni] - _shift(batch)[bi]).numpy(),
            "kind": np.where(kind[bi, ni].numpy() == 0, "label", "control"),
            "label": np.asarray(words, dtype=object)[own[bi, ni].numpy()],
            "token": [strings[int(i)] for i in tok_ids],
        }
        for i, (layer, h) in enumerate(heads):
            v = got["at:" + access.hook(layer, "v")]
            kv = h // (access.n_heads // v.shape[2])
            vec = v[:, :, kv] @ access.W_O(layer)[h].float().to(v.device)
            attn = _at_keys(got[access.hook(layer, "pattern")], positions)[:, h]
            logits = access.unembed(access.final_norm(vec, scale.to(vec.device)[:, None, :])).cpu()
            m = label_metrics(logits, label_ids, own)
            w = own_vs_rest(attn.cpu()[..., None] * m["label_logits"], own)
            for kd in (0, 1):
                for c in range(len(words)):
                    sel = valid & (kind == kd) & (own == c)
                    sums[i, kd, c] += logits[sel].sum(0)
                    counts[i, kd, c] += int(sel.sum())
            top = logits[bi, ni].topk(min(top_k, n_vocab), -1).indices
            top_str = _decode(access.tokenizer, top)
            ranks = m["ranks"][bi, ni]
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        "layer": layer,
                        "head": h,
                        "name": f"L{layer}H{h}",
                        "attention": attn.cpu()[bi, ni].numpy(),
                        **_label_word_columns(words, m["label_logits"][bi, ni], "logit_"),
                        "logit_diff": m["logit_diff"][bi, ni].numpy(),
                        "logprob_diff": m["logprob_diff"][bi, ni].numpy(),
                        "weighted_logit_diff": w["logit_diff"][bi, ni].numpy(),
                        "weighted_logprob_diff": w["logprob_diff"][bi, ni].numpy(),
                        "promotes": m["promotes"][bi, ni].numpy(),
                        **_label_word_columns(words, ranks, "rank_"),
                        "own_rank": ranks.gather(1, own[bi, ni][:, None])[:, 0].numpy(),
                        "top_tokens": ["|".join(top_str[int(t)] for t in row) for row in top],
                    }
                )
            )
    positions_df = pd.concat(frames, ignore_index=True).sort_values(
        ["layer", "head", "prompt", "kind", "demo"], kind="stable", ignore_index=True
    )
    df = _aggregate_ov(positions_df, sums, counts, heads, words, top_k, top_rank, access.tokenizer)
    config = {"control_offset": control_offset, "top_k": top_k, "top_rank": top_rank}
    return OVLabelFeatures(
        heads=heads,
        df=df,
        positions=positions_df,
        label_words=words,
        config=config,
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
    )


def _aggregate_ov(pos, sums, counts, heads, words, top_k, top_rank, tokenizer) -> pd.DataFrame:
    pos = pos.assign(in_top=pos.own_rank <= top_rank)
    agg = {
        "n": ("prompt", "size"),
        "share_promoting": ("promotes", "mean"),
        "mean_logit_diff": ("logit_diff", "mean"),
        "mean_logprob_diff": ("logprob_diff", "mean"),
        "weighted_mean_logit_diff": ("weighted_logit_diff", "mean"),
        "weighted_mean_logprob_diff": ("weighted_logprob_diff", "mean"),
        "median_own_rank": ("own_rank", "median"),
        "top_rank_share": ("in_top", "mean"),
        "mean_attention": ("attention", "mean"),
    }
    keys = ["layer", "head", "name", "kind"]
    by_label = pos.groupby([*keys, "label"], sort=False).agg(**agg).reset_index()
    overall = pos.groupby(keys, sort=False).agg(**agg).reset_index().assign(label="all")
    df = pd.concat([by_label, overall], ignore_index=True)
    index = {h: i for i, h in enumerate(heads)}
    word_index = {w: c for c, w in enumerate(words)}
    tops = []
    for row in df.itertuples():
        i, kd = index[(row.layer, row.head)], 0 if row.kind == "label" else 1
        if row.label == "all":
            total, n = sums[i, kd].sum(0), counts[i, kd].sum()
        else:
            c = word_index[row.label]
            total, n = sums[i, kd, c], counts[i, kd, c]
        ids = (total / n).topk(min(top_k, total.numel())).indices
        tops.append("|".join(_token_str(tokenizer, int(t)) for t in ids))
    df["top_tokens"] = tops
    order = {"label": 0, "control": 1}
    rank = {w: c for c, w in enumerate((*words, "all"))}
    return (
        df.assign(_k=df.kind.map(order), _l=df.label.map(rank))
        .sort_values(["layer", "head", "_k", "_l"], kind="stable")
        .drop(columns=["_k", "_l"])
        .reset_index(drop=True)
    )


# ---- QK label attention ----------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class QKLabelAttention(Result):
    """Where each head looks from the final position: attention and scores at label positions.

    Attributes:
        heads: the analysed heads.
        df: one row per head: mean ``attention_same``/``attention_other`` (label
            positions whose demonstration has / has not the gold label), ``score_same``/
            ``score_other`` (pre-softmax scores), the same split by the model's prediction
            (``attention_predicted``/``attention_not_predicted``, ``score_...``),
            ``label_share`` (mean attention summed over label positions), ``uniform_share``
            (what uniform attention would give), ``auc_attention`` and ``auc_score``
            (same vs other class, pooled over prompts), ``auc_score_within`` (within
            prompts only) and ``n_prompts``.
        positions: one row per prompt, demonstration and head.
        example_pattern: ``[head, pos]`` attention from the final position of the
            example prompt, over its tokens.
        example_tokens: the example prompt's tokens.
        example: index, gold, prediction, label positions and demonstration labels of the example.
        label_words: the task's label words.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    heads: tuple
    df: pd.DataFrame
    positions: pd.DataFrame
    example_pattern: Tensor
    example_tokens: tuple
    example: dict
    label_words: tuple
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _title: ClassVar[str] = "QK label attention"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for row in self.df.head(4).itertuples():
            out[f"{row.name}: attention same / other class"] = f"{row.attention_same:.3g} / {row.attention_other:.3g}"
            out[f"{row.name}: score AUC (pooled, within prompts)"] = f"{row.auc_score:.3g}, {row.auc_score_within:.3g}"
            out[f"{row.name}: attention on label positions"] = float(row.label_share)
        return out

    def plot(self, heads: Sequence[Head] | None = None) -> go.Figure:
        """Attention from the final position of the example prompt to every token, per head."""
        from icl_heads.plots.mechanism import plot_label_attention

        return plot_label_attention(self, heads)


def _predictions(logits: Tensor, label_ids: Tensor) -> Tensor:
    return logits[:, label_ids.to(logits.device)].argmax(-1).cpu()


def qk_label_attention(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: Any = None,
    *,
    example: int = 0,
    batch_size: int = 32,
    padding_side: str = "right",
    progress: bool = False,
) -> QKLabelAttention:
    """Attention and pre-softmax scores from the final position to every demonstration's label.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts with demonstrations of several classes.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        example: index of the prompt whose full attention row is kept for plotting.
        batch_size: prompts per forward pass (does not change the result).
        padding_side: ``"right"`` or ``"left"`` (does not change the result).
        progress: show a progress bar.

    Returns:
        A :class:`QKLabelAttention` result.

    Raises:
        ValueError: ``example`` out of range; no demonstrations of the query's class or no
            others (the comparisons need both); bad heads or prompts.
        TypeError: an unsupported model.
    """
    access = ModelAccess(model)
    tp = access.tokenize(prompts)
    heads = _heads(access, heads)
    if not 0 <= example < len(tp):
        raise ValueError(f"example must index a prompt in [0, {len(tp)}), got {example}")
    words = tuple(tp.prompts.task.label_words)
    label_ids = torch.tensor(tp.label_token_ids)
    layers = sorted({layer for layer, _ in heads})
    frames, ex_pattern, ex_pred = [], None, None
    for batch in tqdm(list(access.batches(tp, batch_size, padding_side)), desc="QK attention", disable=not progress):
        lp = batch.label_positions
        logits, got = _gather(access, batch, layers, lp, scores=True)
        pred = _predictions(logits, label_ids)
        shift = _shift(batch)
        bi, di = (lp >= 0).nonzero(as_tuple=True)
        n_real = (batch.final_positions - shift + 1).float()
        dl, gold = batch.demo_labels[bi, di], batch.golds[bi]
        base = {
            "prompt": batch.index[bi].numpy(),
            "demo": di.numpy(),
            "position": (lp[bi, di] - shift[bi]).numpy(),
            "label": np.asarray(words, dtype=object)[dl.numpy()],
            "gold": np.asarray(words, dtype=object)[gold.numpy()],
            "prediction": np.asarray(words, dtype=object)[pred[bi].numpy()],
            "same_as_gold": (dl == gold).numpy(),
            "same_as_prediction": (dl == pred[bi]).numpy(),
            "uniform_share": ((lp >= 0).sum(1) / n_real)[bi].numpy(),
        }
        for layer, h in heads:
            row = got[access.hook(layer, "pattern")]
            attn = _at_keys(row, lp)[:, h].cpu()
            score = _at_keys(got[access.hook(layer, "attn_scores")], lp)[:, h].cpu()
            share = (attn * (lp >= 0)).sum(1)
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        "layer": layer,
                        "head": h,
                        "name": f"L{layer}H{h}",
                        "attention": attn[bi, di].numpy(),
                        "score": score[bi, di].numpy(),
                        "label_share": share[bi].numpy(),
                    }
                )
            )
        hit = (batch.index == example).nonzero()
        if len(hit):
            j = int(hit[0, 0])
            span = slice(int(shift[j]), int(batch.final_positions[j]) + 1)
            ex_pattern = torch.stack([got[access.hook(layer, "pattern")][j, h, span].cpu() for layer, h in heads])
            ex_pred = int(pred[j])
    pos = pd.concat(frames, ignore_index=True).sort_values(["layer", "head", "prompt", "demo"], ignore_index=True)
    df = _aggregate_qk(pos)
    assert ex_pattern is not None
    ids = tp.tokens[example]
    ex = {
        "index": example,
        "gold": words[tp.golds[example]],
        "prediction": words[ex_pred],
        "label_positions": list(tp.label_positions[example]),
        "demo_labels": [words[c] for c in tp.demo_labels[example]],
    }
    return QKLabelAttention(
        heads=heads,
        df=df,
        positions=pos,
        example_pattern=ex_pattern,
        example_tokens=tuple(_token_str(access.tokenizer, i) for i in ids),
        example=ex,
        label_words=words,
        config={"example": example},
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
    )


def _mean(values: pd.Series, mask: np.ndarray, what: str) -> float:
    if not mask.any():
        raise ValueError(
            f"no demonstration {what} in any prompt, so that mean is undefined; "
            "use prompts with demonstrations of several classes"
        )
    return float(values[mask].mean())


def _aggregate_qk(pos: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (layer, head, name), part in pos.groupby(["layer", "head", "name"], sort=True):
        same, pred = part.same_as_gold.to_numpy(), part.same_as_prediction.to_numpy()
        per_prompt = part.drop_duplicates("prompt")
        rows.append(
            {
                "layer": layer,
                "head": head,
                "name": name,
                "attention_same": _mean(part.attention, same, "with the gold label"),
                "attention_other": _mean(part.attention, ~same, "without the gold label"),
                "score_same": _mean(part.score, same, "with the gold label"),
                "score_other": _mean(part.score, ~same, "without the gold label"),
                "attention_predicted": _mean(part.attention, pred, "with the predicted label"),
                "attention_not_predicted": _mean(part.attention, ~pred, "without the predicted label"),
                "score_predicted": _mean(part.score, pred, "with the predicted label"),
                "score_not_predicted": _mean(part.score, ~pred, "without the predicted label"),
                "label_share": per_prompt.label_share.mean(),
                "uniform_share": per_prompt.uniform_share.mean(),
                "auc_attention": roc_auc(part.attention, same),
                "auc_score": roc_auc(part.score, same),
                "auc_score_within": paired_auc(part.score, same, part.prompt),
                "n_prompts": len(per_prompt),
            }
        )
    return pd.DataFrame(rows)


# ---- two towers ------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class TwoTowerTest(Result):
    """Does a head's QK score act as a learned similarity between the query and each demonstration?

    Attributes:
        heads: the analysed heads.
        df: one row per head: ``auc_score`` (ROC AUC of the pre-softmax score at label
            positions for "this demonstration has the query's class", pooled over prompts),
            ``auc_score_within`` (within prompts), the same for the baseline similarity
            ``auc_cosine``/``auc_cosine_within`` (cosine of the residual streams entering
            the head's layer at the final and the label position), ``score_same``,
            ``score_other``, and ``probe_r2`` (held-out R² of a low-rank bilinear probe of
            the score) when a probe was fitted (NaN for a head whose scores are all
            equal, e.g. one with zero query weights: there is nothing to explain).
        positions: one row per prompt, demonstration and head: ``same_class``, ``score``, ``cosine``.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    heads: tuple
    df: pd.DataFrame
    positions: pd.DataFrame
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _title: ClassVar[str] = "Two-tower test of QK scores"

    def summary(self) -> dict[str, Any]:
        best = self.df.sort_values("auc_score", ascending=False).head(4)
        out: dict[str, Any] = {}
        for row in best.itertuples():
            out[f"{row.name}: AUC score / cosine"] = f"{row.auc_score:.3g} / {row.auc_cosine:.3g}"
            if "probe_r2" in self.df:
                out[f"{row.name}: probe R²"] = float(row.probe_r2)
        return out

    def table(self, column: str = "auc_score", n_layers: int | None = None, n_heads: int | None = None) -> np.ndarray:
        """``[layer, head]`` array of one column (NaN for heads not analysed).

        Raises:
            KeyError: an unknown column (lists the available ones).
        """
        if column not in self.df:
            raise KeyError(f"no column {column!r}; available: {list(self.df.columns)}")
        n_layers = n_layers or int(self.df.layer.max()) + 1
        n_heads = n_heads or int(self.df["head"].max()) + 1
        out = np.full((n_layers, n_heads), np.nan)
        out[self.df.layer.to_numpy(), self.df["head"].to_numpy()] = self.df[column].to_numpy()
        return out

    def heatmap(self, column: str = "auc_score") -> go.Figure:
        """Layer x head heatmap of an AUC column, centred at 0.5 (chance)."""
        from icl_heads.plots.mechanism import plot_auc_heatmap

        return plot_auc_heatmap(self, column)


def two_tower_test(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    heads: Any = None,
    *,
    probe_rank: int | None = None,
    probe_components: int = 16,
    probe_ridge: float = 1e-3,
    seed: int = 0,
    batch_size: int = 32,
    padding_side: str = "right",
    progress: bool = False,
) -> TwoTowerTest:
    """Score each head's QK score as a classifier of "same class as the query" at label positions.

    Hypothesis (DESIGN §2a): queries (final position) and keys (label positions) are two
    towers of a metric-learning model, so the score is high where the demonstration has the
    query's class. The ROC AUC measures it; the cosine of the residual streams at the two
    positions is the untrained baseline. With ``probe_rank``, a bilinear form of rank
    ``probe_rank`` between the (unit-normalised) residual streams is fitted to each head's
    scores on half the prompts, and its R² is measured on the other half.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts with demonstrations of several classes.
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        probe_rank: rank of the bilinear probe, or None for no probe.
        probe_components: principal components of each side the probe uses.
        probe_ridge: ridge penalty of the probe's least squares.
        seed: seed of the probe's train/test split of prompts.
        batch_size: prompts per forward pass (does not change the result).
        padding_side: ``"right"`` or ``"left"`` (does not change the result).
        progress: show a progress bar.

    Returns:
        A :class:`TwoTowerTest` result.

    Raises:
        ValueError: no demonstrations of the query's class or no others; a bad probe
            setting or fewer than 4 prompts for the probe; bad heads or prompts.
        TypeError: an unsupported model.
    """
    access = ModelAccess(model)
    tp = access.tokenize(prompts)
    heads = _heads(access, heads)
    layers = sorted({layer for layer, _ in heads})
    frames, feats = [], {layer: ([], []) for layer in layers}
    groups = []
    for batch in tqdm(list(access.batches(tp, batch_size, padding_side)), desc="two towers", disable=not progress):
        lp = batch.label_positions
        _, got = _gather(access, batch, layers, lp, scores=True, resid=True)
        bi, di = (lp >= 0).nonzero(as_tuple=True)
        base = {
            "prompt": batch.index[bi].numpy(),
            "demo": di.numpy(),
            "same_class": (batch.demo_labels[bi, di] == batch.golds[bi]).numpy(),
        }
        groups.append(batch.index[bi])
        cos = {}
        for layer in layers:
            q = unit_features(got[access.hook(layer, "resid_pre")].cpu(), access.centred_norm)[bi]
            k = unit_features(got["at:" + access.hook(layer, "resid_pre")].cpu(), access.centred_norm)[bi, di]
            cos[layer] = (q * k).sum(-1).numpy()
            if probe_rank is not None:
                feats[layer][0].append(q)
                feats[layer][1].append(k)
        for layer, h in heads:
            score = _at_keys(got[access.hook(layer, "attn_scores")], lp)[:, h].cpu()
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        "layer": layer,
                        "head": h,
                        "name": f"L{layer}H{h}",
                        "score": score[bi, di].numpy(),
                        "cosine": cos[layer],
                    }
                )
            )
    pos = pd.concat(frames, ignore_index=True).sort_values(["layer", "head", "prompt", "demo"], ignore_index=True)
    rows = []
    for (layer, head, name), part in pos.groupby(["layer", "head", "name"], sort=True):
        same = part.same_class.to_numpy()
        rows.append(
            {
                "layer": layer,
                "head": head,
                "name": name,
                "auc_score": roc_auc(part.score, same),
                "auc_score_within": paired_auc(part.score, same, part.prompt),
                "auc_cosine": roc_auc(part.cosine, same),
                "auc_cosine_within": paired_auc(part.cosine, same, part.prompt),
                "score_same": _mean(part.score, same, "with the gold label"),
                "score_other": _mean(part.score, ~same, "without the gold label"),
            }
        )
    df = pd.DataFrame(rows)
    if probe_rank is not None:
        g = torch.cat(groups)
        r2 = []
        for row in df.itertuples():
            q, k = (torch.cat(x) for x in feats[row.layer])
            part = pos[(pos.layer == row.layer) & (pos["head"] == row.head)]
            # rows of `part` are sorted by prompt and demo; the features are in batch order, which is the same
            y = torch.tensor(part.score.to_numpy())
            if float(y.max() - y.min()) == 0.0:  # e.g. zero query weights: nothing to explain
                r2.append(float("nan"))
                continue
            r2.append(
                bilinear_probe_r2(
                    q, k, y, g, rank=probe_rank, n_components=probe_components, ridge=probe_ridge, seed=seed
                )
            )
        df["probe_r2"] = r2
    config = {"probe_rank": probe_rank, "probe_components": probe_components, "probe_ridge": probe_ridge, "seed": seed}
    return TwoTowerTest(
        heads=heads,
        df=df,
        positions=pos,
        config=config,
        provenance=provenance(access.name, tp, heads=[list(h) for h in heads]),
    )


# ---- flips -----------------------------------------------------------------------------


def flip_prompts(prompts: ICLPrompts | TokenizedPrompts, *, resample_demos: bool = False, seed: int = 0) -> ICLPrompts:
    """A twin of every prompt whose query has another class, so the prediction should flip.

    Args:
        prompts: the original prompts.
        resample_demos: also replace every demonstration's text by another text of the
            same class (the label sequence stays). With ``False`` the demonstrations are
            identical, so by causality the vectors ``v_p W_O`` at label positions cannot
            change; with ``True`` they can.
        seed: random seed.

    Returns:
        Prompts aligned with ``prompts`` (same demonstration labels, new query and gold).

    Raises:
        TypeError: ``prompts`` is not a prompt set.
        ValueError: a class has too few unused texts to draw from.
    """
    if isinstance(prompts, TokenizedPrompts):
        prompts = prompts.prompts
    if not isinstance(prompts, ICLPrompts):
        raise TypeError(f"expected prompts from ICLTask.prompts(...), got {type(prompts).__name__}")
    task = prompts.task
    by_class = [[t for t, y in zip(task.texts, task.labels, strict=True) if y == c] for c in range(len(task.classes))]
    rng = np.random.default_rng(seed)
    out = []
    for p in prompts.prompts:
        used = {p.query, *(t for t, _ in p.demos)}
        others = [c for c in range(len(task.classes)) if c != p.gold]
        gold = others[int(rng.integers(len(others)))]
        demos = tuple((_draw(rng, by_class, y, used, task), y) for _, y in p.demos) if resample_demos else p.demos
        out.append(ICLPrompt(demos=demos, query=_draw(rng, by_class, gold, used, task), gold=gold))
    config = {**prompts.config, "flipped": {"resample_demos": resample_demos, "seed": seed}}
    return ICLPrompts(prompts=tuple(out), task=task, config=config)


def _draw(rng: np.random.Generator, by_class: list[list[str]], c: int, used: set[str], task: Any) -> str:
    """A random text of class ``c`` not in ``used`` (then added to it)."""
    free = [t for t in by_class[c] if t not in used]
    if not free:
        raise ValueError(
            f"class {task.classes[c]!r} has no unused text left for a flipped prompt; "
            "add examples to the task or use fewer shots"
        )
    pick = free[int(rng.integers(len(free)))]
    used.add(pick)
    return pick


@dataclass(frozen=True, repr=False)
class FlipAnalysis(Result):
    """Across prompt pairs whose prediction flips, how much each head's attention and OV vectors change.

    "Old" is the label predicted before the flip, "new" the label predicted after.

    Attributes:
        heads: the analysed heads.
        df: one row per head: ``n_pairs``; mean attention summed over the old label's
            positions before/after (``old_label_before``, ``old_label_after``) and over the
            new label's (``new_label_before``, ``new_label_after``); ``attention_rel_change``
            (``sum ||a_after - a_before|| / sum ||a_before||`` over pairs, ``a`` the
            attention at label positions), ``ov_rel_change`` (the same for the vectors
            ``v_p W_O`` at label positions, Frobenius norms) and ``weighted_ov_rel_change``
            (for ``A[t, p] v_p W_O``). 0/0 counts as no change.
        per_pair: one row per flipped pair and head with the quantities before summing.
        pairs: every pair: ``prompt``, gold and prediction before and after, ``flipped``.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    heads: tuple
    df: pd.DataFrame
    per_pair: pd.DataFrame
    pairs: pd.DataFrame
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _title: ClassVar[str] = "Attention and OV change across prediction flips"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"flipped pairs": int(self.pairs.flipped.sum()), "pairs": len(self.pairs)}
        for row in self.df.head(4).itertuples():
            out[f"{row.name}: relative change attention / OV"] = (
                f"{row.attention_rel_change:.3g} / {row.ov_rel_change:.3g}"
            )
        return out

    def plot(self, heads: Sequence[Head] | None = None) -> go.Figure:
        """Attention on the old and new label's positions before and after the flip, per head."""
        from icl_heads.plots.mechanism import plot_flip

        return plot_flip(self, heads)


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return num / den


def flip_analysis(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    flipped: ICLPrompts | TokenizedPrompts | None = None,
    heads: Any = None,
    *,
    resample_demos: bool = False,
    seed: int = 0,
    batch_size: int = 32,
    padding_side: str = "right",
    progress: bool = False,
) -> FlipAnalysis:
    """Compare attention and OV vectors at label positions across pairs whose prediction flips.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: the prompts before the flip.
        flipped: prompts aligned with ``prompts`` (same number of demonstrations with the
            same labels); default :func:`flip_prompts` (a query of another class).
        heads: ``(layer, head)`` pairs, an ``InContextHeads`` result, or None for every head.
        resample_demos: passed to :func:`flip_prompts` when ``flipped`` is None.
        seed: passed to :func:`flip_prompts` when ``flipped`` is None.
        batch_size: prompts per forward pass (does not change the result).
        padding_side: ``"right"`` or ``"left"`` (does not change the result).
        progress: show a progress bar.

    Returns:
        A :class:`FlipAnalysis` result (only pairs whose predicted label differs are analysed).

    Raises:
        ValueError: misaligned prompt sets, or no pair whose prediction flips.
        TypeError: an unsupported model.
    """
    access = ModelAccess(model)
    tp_a = access.tokenize(prompts)
    own_flipped = flipped is not None
    if flipped is None:
        flipped = flip_prompts(tp_a.prompts, resample_demos=resample_demos, seed=seed)
    tp_b = access.tokenize(flipped)
    if len(tp_a) != len(tp_b) or any(a != b for a, b in zip(tp_a.demo_labels, tp_b.demo_labels, strict=True)):
        raise ValueError(
            "flipped must align with prompts: the same number of prompts, each with the same demonstration labels; "
            "build it with flip_prompts(prompts)"
        )
    heads = _heads(access, heads)
    words = tuple(tp_a.prompts.task.label_words)
    label_ids = torch.tensor(tp_a.label_token_ids)
    layers = sorted({layer for layer, _ in heads})
    frames, pair_frames = [], []
    pairs = zip(
        access.batches(tp_a, batch_size, padding_side), access.batches(tp_b, batch_size, padding_side), strict=True
    )
    for ba, bb in tqdm(list(pairs), desc="flips", disable=not progress):
        runs = []
        for batch in (ba, bb):
            logits, got = _gather(access, batch, layers, batch.label_positions, values=True)
            runs.append((_predictions(logits, label_ids), got))
        (pa, ga), (pb, gb) = runs
        flip = pa != pb
        pair_frames.append(
            pd.DataFrame(
                {
                    "prompt": ba.index.numpy(),
                    "gold_before": np.asarray(words, dtype=object)[ba.golds.numpy()],
                    "gold_after": np.asarray(words, dtype=object)[bb.golds.numpy()],
                    "prediction_before": np.asarray(words, dtype=object)[pa.numpy()],
                    "prediction_after": np.asarray(words, dtype=object)[pb.numpy()],
                    "flipped": flip.numpy(),
                }
            )
        )
        if not flip.any():
            continue
        valid = (ba.label_positions >= 0).float()
        dl = ba.demo_labels
        old, new = (dl == pa[:, None]).float() * valid, (dl == pb[:, None]).float() * valid
        for layer, h in heads:
            attn, ov = [], []
            for batch, got in ((ba, ga), (bb, gb)):
                v = got["at:" + access.hook(layer, "v")]
                kv = h // (access.n_heads // v.shape[2])
                ov.append((v[:, :, kv] @ access.W_O(layer)[h].float().to(v.device)).cpu() * valid[..., None])
                attn.append(_at_keys(got[access.hook(layer, "pattern")], batch.label_positions)[:, h].cpu() * valid)
            w = [a[..., None] * o for a, o in zip(attn, ov, strict=True)]
            frames.append(
                pd.DataFrame(
                    {
                        "prompt": ba.index[flip].numpy(),
                        "layer": layer,
                        "head": h,
                        "name": f"L{layer}H{h}",
                        "old_label": np.asarray(words, dtype=object)[pa[flip].numpy()],
                        "new_label": np.asarray(words, dtype=object)[pb[flip].numpy()],
                        "old_label_before": (attn[0] * old).sum(1)[flip].numpy(),
                        "old_label_after": (attn[1] * old).sum(1)[flip].numpy(),
                        "new_label_before": (attn[0] * new).sum(1)[flip].numpy(),
                        "new_label_after": (attn[1] * new).sum(1)[flip].numpy(),
                        "attention_change": (attn[1] - attn[0]).norm(dim=1)[flip].numpy(),
                        "attention_norm": attn[0].norm(dim=1)[flip].numpy(),
                        "ov_change": (ov[1] - ov[0]).flatten(1).norm(dim=1)[flip].numpy(),
                        "ov_norm": ov[0].flatten(1).norm(dim=1)[flip].numpy(),
                        "weighted_ov_change": (w[1] - w[0]).flatten(1).norm(dim=1)[flip].numpy(),
                        "weighted_ov_norm": w[0].flatten(1).norm(dim=1)[flip].numpy(),
                    }
                )
            )
    pairs_df = pd.concat(pair_frames, ignore_index=True)
    if not frames:
        raise ValueError(
            f"no prediction flipped in {len(pairs_df)} pairs, so there is nothing to compare; "
            "use prompts the model solves (more shots) or pass your own flipped prompts"
        )
    per_pair = pd.concat(frames, ignore_index=True).sort_values(["layer", "head", "prompt"], ignore_index=True)
    rows = []
    for (layer, head, name), part in per_pair.groupby(["layer", "head", "name"], sort=True):
        rows.append(
            {
                "layer": layer,
                "head": head,
                "name": name,
                "n_pairs": len(part),
                **{
                    c: float(part[c].mean())
                    for c in ("old_label_before", "old_label_after", "new_label_before", "new_label_after")
                },
                "attention_rel_change": _ratio(part.attention_change.sum(), part.attention_norm.sum()),
                "ov_rel_change": _ratio(part.ov_change.sum(), part.ov_norm.sum()),
                "weighted_ov_rel_change": _ratio(part.weighted_ov_change.sum(), part.weighted_ov_norm.sum()),
            }
        )
    config = {"resample_demos": resample_demos, "seed": seed, "own_flipped_prompts": own_flipped}
    return FlipAnalysis(
        heads=heads,
        df=pd.DataFrame(rows),
        per_pair=per_pair,
        pairs=pairs_df,
        config=config,
        provenance=provenance(access.name, tp_a, heads=[list(h) for h in heads]),
    )
