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


def layers_of(heads: Sequence[Head]) -> list[int]:
    return sorted({layer for layer, _ in heads})


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
    """One forward pass keeping per layer the pattern's final row (and scores'), and ``v``/``resid_pre`` at positions."""
    store: dict[str, Tensor] = {}

    def keep(key: str):
        def fn(act: Tensor, hook: Any) -> None:
            rows = torch.arange(act.shape[0], device=act.device)[:, None]
            store["at:" + key] = act[rows, positions.clamp(min=0).to(act.device)].detach().float()

        return fn

    caps = [Capture("ln_final.hook_scale"), *(Capture(name) for name in access.write_captures())]
    hooks = []
    for layer in layers:
        caps.append(Capture(access.hook(layer, "pattern"), "pattern_final"))
        if scores:
            caps.append(Capture(access.hook(layer, "attn_scores"), "pattern_final"))
        if values:
            hooks.append((access.hook(layer, "v"), keep(access.hook(layer, "v"))))
        if resid:
            hooks.append((access.hook(layer, "resid_pre"), keep(access.hook(layer, "resid_pre"))))
            caps.append(Capture(access.hook(layer, "resid_pre"), "final"))
    logits, got = access.run(batch, hooks=hooks, capture=caps)
    return logits, {**got, **store}


def at_keys(row: Float[Tensor, "batch head key"], positions: Tensor) -> Float[Tensor, "batch head n"]:
    return row.gather(2, positions.clamp(min=0).to(row.device)[:, None, :].expand(-1, row.shape[1], -1))


def ov_at(access: ModelAccess, got: dict[str, Tensor], layer: int, h: int) -> Tensor:
    """Per-position vectors ``v_p W_O`` of head ``(layer, h)`` from ``gather_heads(..., values=True)``.

    With grouped-query attention head ``h`` reads key/value head ``h // (n_heads / n_kv)``; a
    post-attention norm is applied with the final position's scale, so ``sum_p A[t, p] vec_p``
    is exactly what the head writes at ``t``.
    """
    v = got["at:" + access.hook(layer, "v")]  # [b, n, kv, d_head]
    kv = h // (access.n_heads // v.shape[2])
    return access.head_write(layer, v[:, :, kv] @ access.W_O(layer)[h].float().to(v.device), got, expand=1)


def label_and_control(batch: PromptBatch, offset: int, lp: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Positions ``[b, 2*n]`` (read positions ``lp``, then each + offset), kind (0 read, 1 control), validity."""
    ctrl = lp + offset
    real = torch.zeros_like(ctrl, dtype=torch.bool)
    inside = (lp >= 0) & (ctrl >= 0) & (ctrl <= batch.final_positions[:, None])
    real[inside] = batch.attention_mask.bool()[torch.arange(len(lp))[:, None].expand_as(ctrl)[inside], ctrl[inside]]
    is_label = (ctrl[:, :, None] == lp[:, None, :]).any(-1)
    kind = torch.cat([torch.zeros_like(lp), torch.ones_like(lp)], 1)
    return torch.cat([lp, ctrl], 1), kind, torch.cat([lp >= 0, real & ~is_label], 1)


def per_demo(values: Tensor, demo: Tensor, n_demo: int, how: str = "sum") -> Tensor:
    """Combine per-position ``values [b, h, n]`` into ``[b, h, demo]`` by ``sum`` (0 if empty) or ``lse`` (-inf).

    ``demo [b, n]`` is each position's demonstration (``-1``: ignore).
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


def words_at(words: Sequence[str], index: Tensor) -> np.ndarray:
    return np.asarray(words, dtype=object)[index.numpy()]


def head_columns(layer: int, h: int) -> dict[str, Any]:
    return {"layer": layer, "head": h, "name": f"L{layer}H{h}"}


def predicted_labels(logits: Tensor, label_ids: Tensor) -> Tensor:
    return logits[:, label_ids.to(logits.device)].argmax(-1).cpu()
