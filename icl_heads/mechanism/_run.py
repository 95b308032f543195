"""Shared code that runs the model: one forward pass that keeps attention rows, values and residuals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from icl_heads.access import Capture, Head, ModelAccess
from icl_heads.interventions import check_heads
from icl_heads.prompts import PromptBatch


def heads_of(access: ModelAccess, heads: Any) -> tuple[Head, ...]:
    """``None``: every head; an object with ``.heads`` (e.g. InContextHeads); or (layer, head) pairs."""
    if heads is None:
        return tuple((layer, h) for layer in range(access.n_layers) for h in range(access.n_heads))
    out = check_heads(access, heads)
    if not out:
        raise ValueError("no heads given; pass (layer, head) pairs, found.heads, or None for every head")
    return out


def _rows_at(act: Tensor, positions: Tensor) -> Tensor:
    """``act[b, positions[b, i]]`` for an activation ``[batch, pos, ...]``."""
    dev = act.device
    rows = torch.arange(act.shape[0], device=dev)[:, None]
    return act[rows, positions.clamp(min=0).to(dev)].detach().float()


def gather_heads(
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

    hooks, caps = [], [Capture("ln_final.hook_scale"), *(Capture(name) for name in access.write_captures())]
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


def at_keys(row: Float[Tensor, "batch head key"], positions: Tensor) -> Float[Tensor, "batch head n"]:
    idx = positions.clamp(min=0).to(row.device)[:, None, :].expand(-1, row.shape[1], -1)
    return row.gather(2, idx)


def ov_at(access: ModelAccess, got: dict[str, Tensor], layer: int, h: int) -> Tensor:
    """Per-position value-output vectors ``v_p W_O`` of head ``(layer, h)`` from ``gather_heads(..., values=True)``.

    With grouped-query attention head ``h`` reads key/value head ``h // (n_heads / n_kv)``.
    Where the layer has a post-attention norm the vectors go through it with the final
    position's scale, so that ``sum_p A[t, p] vec_p`` is exactly what the head writes at ``t``.
    """
    v = got["at:" + access.hook(layer, "v")]  # [b, n, kv, d_head]
    kv = h // (access.n_heads // v.shape[2])
    return access.head_write(layer, v[:, :, kv] @ access.W_O(layer)[h].float().to(v.device), got, expand=1)


def label_and_control(batch: PromptBatch, offset: int, lp: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Positions ``[b, 2*n]`` (read positions ``lp``, default the labels, then each + offset), kind (0 read, 1 control), validity."""
    lp = batch.label_positions if lp is None else lp
    ctrl = lp + offset
    mask = batch.attention_mask.bool()
    real = torch.zeros_like(ctrl, dtype=torch.bool)
    inside = (lp >= 0) & (ctrl >= 0) & (ctrl <= batch.final_positions[:, None])
    real[inside] = mask[torch.arange(len(lp))[:, None].expand_as(ctrl)[inside], ctrl[inside]]
    is_label = (ctrl[:, :, None] == lp[:, None, :]).any(-1)
    valid = torch.cat([lp >= 0, real & ~is_label], 1)
    kind = torch.cat([torch.zeros_like(lp), torch.ones_like(lp)], 1)
    return torch.cat([lp, ctrl], 1), kind, valid


def reading_positions(
    access: ModelAccess, tp: Any, heads: Sequence[Head], read_at: str, min_read_share: float
) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """Resolve ``read_at`` for ``heads`` (see :func:`icl_heads.reading.resolve_read_at`)."""
    from icl_heads.reading import resolve_read_at

    return resolve_read_at(access, tp, list(heads), read_at, min_share=min_read_share)


def per_demo(values: Tensor, demo: Tensor, n_demo: int, how: str = "sum") -> Tensor:
    """Combine per-position ``values [b, h, n]`` into ``[b, h, demo]`` (``sum``, or ``lse`` for scores).

    ``demo [b, n]`` is each position's demonstration (``-1``: ignore). A demonstration with no
    position gets 0 (``sum``) or ``-inf`` (``lse``).
    """
    b, h, _ = values.shape
    onehot = torch.nn.functional.one_hot(demo.clamp(min=0), n_demo).bool() & (demo >= 0)[..., None]  # b n d
    onehot = onehot.to(values.device)[:, None].expand(b, h, -1, -1)
    v = values.float()[..., None].expand(-1, -1, -1, n_demo)
    if how == "sum":
        return torch.where(onehot, v, 0.0).sum(2)
    return torch.where(onehot, v, float("-inf")).logsumexp(2)


def label_shift(batch: PromptBatch) -> Tensor:
    """Left-padding offset of each prompt (0 for right padding)."""
    return batch.attention_mask.argmax(1)


def token_str(tokenizer, i: int) -> str:
    return tokenizer.decode([i]) or str(tokenizer.convert_ids_to_tokens(i))


def decode_ids(tokenizer, ids) -> dict[int, str]:
    return {int(i): token_str(tokenizer, int(i)) for i in np.unique(np.asarray(ids))}


def label_word_columns(words: Sequence[str], values: Tensor, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{w}": values[:, i].cpu().numpy() for i, w in enumerate(words)}


def predicted_labels(logits: Tensor, label_ids: Tensor) -> Tensor:
    return logits[:, label_ids.to(logits.device)].argmax(-1).cpu()
