"""Attribution patching (Nanda 2023; AtP, Kramár et al. 2024): every head's ablation effect from one backward pass.

Gradients are taken only at each layer's ``hook_z``; ``rescore=k`` re-scores the ``k`` largest
estimates exactly. Its limits on the organisms are in docs/methods.md; check it with
:func:`~icl_heads.compare_head_scores`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_heads.access import Head, ModelAccess
from icl_heads.engine import record_pass
from icl_heads.prompts import PromptBatch


class _Stop(Exception):
    """Raised from a hook to end the forward pass after the last block."""


def head_estimates(
    z: Float[Tensor, "batch pos head d_head"],
    grad: Float[Tensor, "batch pos head d_head"],
    replacement: Float[Tensor, "head d_head"] | None,
    mask: Int[Tensor, "batch pos"],
    final_positions: Int[Tensor, " batch"],
    where: str,
) -> Float[Tensor, "batch head"]:
    """First-order ablation effect of each head: ``grad . (z - replacement)``, summed over the ablated positions.

    Args:
        z: one layer's ``hook_z`` in the clean pass.
        grad: ``dM/dz`` at the clean pass.
        replacement: the value that replaces ``z`` (``None``: zero).
        mask: 1 at real tokens, 0 at padding.
        final_positions: each row's final position.
        where: ``"all"`` positions or only the ``"final"`` one.

    Returns:
        The estimated drop of ``M`` when each head alone is ablated.
    """
    delta = z.float() if replacement is None else z.float() - replacement.float().to(z.device)
    contrib = (grad.float() * delta).sum(-1)  # [batch, pos, head]
    if where == "final":
        return contrib[torch.arange(len(contrib), device=contrib.device), final_positions.to(contrib.device)]
    return (contrib * mask.to(contrib.device, contrib.dtype)[..., None]).sum(1)


@contextmanager
def frozen_parameters(model: Any) -> Iterator[None]:
    """Parameters stop requiring grad for the block (the graph starts at ``hook_z``), then are restored."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _final_logits(access: ModelAccess, resid: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_vocab"]:
    """The model's own final norm and unembedding applied to the final-position residual stream."""
    model = access.model
    logits = model.unembed(model.ln_final(resid[:, None]))[:, 0].float()
    cap = float(getattr(access.cfg, "output_logits_soft_cap", 0.0) or 0.0)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def _check_rebuilt_logits(access: ModelAccess, batch: PromptBatch, rebuilt: Tensor) -> None:
    """Refuse when the rebuilt final-position logits differ from the model's (first prompt of the batch)."""
    real, _ = access.run(batch.rows(0, 1))
    err = float((real[0] - rebuilt[0].detach()).abs().max())
    if err > 1e-3 * max(1.0, float(real[0].abs().max())):
        raise ValueError(
            f"attribution rebuilds the final logits as unembed(ln_final(last residual stream)), but on this model "
            f"they differ from the model's logits by {err:.3g}; the estimate would not be of the model's own "
            "log-probability. Use the exact score (method='ablation') for this model."
        )


def per_prompt_attribution(
    access: ModelAccess,
    batch: PromptBatch,
    label_ids: Tensor,
    *,
    how: str = "zero",
    where: str = "all",
    means: Tensor | None = None,
    check: bool = False,
    rows_per_pass: int = 4,
) -> Float[Tensor, "batch layer head"]:
    """Per-prompt attribution estimate of every head's ablation effect, from one forward and one backward pass.

    The batch runs ``rows_per_pass`` prompts at a time to bound the peak memory of the
    backward pass (on a GPT-2-small shape, 16 prompts take ~7x a forward pass's peak; 4 under 2x).

    Raises:
        ValueError: with ``check``, the rebuilt final logits do not match the model's.
    """
    if len(batch.golds) > rows_per_pass:
        kw = {"how": how, "where": where, "means": means, "rows_per_pass": rows_per_pass}
        return torch.cat(
            [
                per_prompt_attribution(
                    access, batch.rows(i, i + rows_per_pass), label_ids, check=check and i == 0, **kw
                )
                for i in range(0, len(batch.golds), rows_per_pass)
            ]
        )
    model, n_layers = access.model, access.n_layers
    with torch.inference_mode(False):  # index tensors that autograd may save: never inference tensors
        rows = torch.arange(len(batch.golds))
        finals = batch.final_positions.clone()
        gold = label_ids[batch.golds].clone()
        tokens, mask = batch.tokens.clone().to(access.device), batch.attention_mask.clone().to(access.device)
    leaves: dict[int, tuple[Tensor, Tensor]] = {}
    got: dict[str, Tensor] = {}

    def leaf(z: Tensor, hook: Any, layer: int) -> Tensor:
        zero = torch.zeros_like(z, requires_grad=True)  # added, not swapped in: the graph through z stays
        leaves[layer] = (zero, z.detach())
        return z + zero

    def stop(resid: Tensor, hook: Any) -> None:
        got["resid"] = resid[rows.to(resid.device), finals.to(resid.device)]
        raise _Stop

    hooks = [(access.hook(layer, "z"), partial(leaf, layer=layer)) for layer in range(n_layers)]
    hooks.append((access.hook(n_layers - 1, "resid_post"), stop))
    pad: dict[str, Any] = {"attention_mask": mask} if batch.has_padding else {}
    # a backward pass costs about two forward passes: the ledger counts the work of three
    record_pass(len(rows), int(tokens.numel()), 3 * n_layers)
    with torch.inference_mode(False), torch.enable_grad(), frozen_parameters(model):
        with suppress(_Stop):
            model.run_with_hooks(tokens, fwd_hooks=hooks, **pad)
        if "resid" not in got or len(leaves) != n_layers:
            raise RuntimeError("the forward pass did not reach every hook_z and the last block's hook_resid_post")
        logits = _final_logits(access, got.pop("resid"))
        metric = logits.log_softmax(-1)[rows.to(logits.device), gold.to(logits.device)].sum()
        grads = torch.autograd.grad(metric, [leaves[layer][0] for layer in range(n_layers)])
    if check:
        _check_rebuilt_logits(access, batch, logits)
    reps = [None if how == "zero" else means[layer] for layer in range(n_layers)]  # type: ignore[index]
    mask = batch.attention_mask
    return torch.stack(
        [head_estimates(leaves[la][1], grads[la], reps[la], mask, finals, where) for la in range(n_layers)], 1
    ).cpu()


def largest_heads(mean_scores: Float[Tensor, "layer head"], k: int) -> tuple[Head, ...]:
    """The ``k`` heads with the largest ``|score|`` (the candidates worth re-scoring exactly)."""
    return tuple(
        divmod(int(i), mean_scores.shape[1]) for i in torch.argsort(-mean_scores.abs().flatten(), stable=True)[:k]
    )
