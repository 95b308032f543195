"""Anchor re-weighting (Wang et al., EMNLP 2023, "Label Words are Anchors"): a learned scale on attention to label words.

The final row's attention to each label word is scaled by ``exp(beta[l, h, slot])`` after the softmax, without
renormalising (as the authors' ``AttentionAdapter``); ``docs/methods.md`` describes the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads._checks import check_int, check_real
from icl_heads.access import ModelAccess, batches, require_pattern_edits
from icl_heads.attribution import frozen_parameters
from icl_heads.engine import HookFn, Intervention, record_pass
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, ICLTask, PromptBatch


def anchor_slots(label_positions: Tensor, n_slots: int) -> Tensor:
    """Each demonstration's slot (counted back from the query so the last one is ``n_slots - 1``); -1 at padding.

    Raises:
        ValueError: a prompt with more demonstrations than ``n_slots``.
    """
    n = (valid := label_positions >= 0).sum(1, keepdim=True)
    if n.numel() and int(n.max()) > n_slots:
        raise ValueError(
            f"a prompt has {int(n.max())} demonstrations but the re-weighting was fitted for at most {n_slots}; "
            f"fit it with shots >= {int(n.max())}"
        )
    return torch.where(valid, torch.arange(label_positions.shape[1])[None] + n_slots - n, -1)


def anchor_hooks(beta: Float[Tensor, "layer head slot"], batch: PromptBatch) -> list[tuple[str, HookFn]]:
    """``hook_pattern`` hooks scaling final-row attention to each label word by ``exp(beta[l, :, slot])``."""
    valid = (slots := anchor_slots(batch.label_positions, beta.shape[-1])) >= 0
    rows = torch.arange(len(slots))[:, None].expand_as(slots)[valid]
    pos, slot, finals = batch.label_positions[valid], slots[valid], batch.final_positions

    def hook(layer: int) -> HookFn:
        def fn(pattern: Tensor, hook: Any) -> Tensor:
            dev = pattern.device
            b, h, q, k = pattern.shape
            w = beta[layer].to(dev).exp()  # [head, slot]
            scale = torch.ones(b, k, h, device=dev, dtype=w.dtype).index_put(
                (rows.to(dev), pos.to(dev)), w[:, slot.to(dev)].T
            )  # [batch, key, head]
            r, f = torch.arange(b, device=dev), finals.to(dev) % q
            out = pattern.clone()  # only the final rows change: no full-size multiplier
            out[r, :, f] = pattern[r, :, f] * scale.transpose(1, 2).to(pattern.dtype)
            return out

        return fn

    return [(ModelAccess.hook(layer, "pattern"), hook(layer)) for layer in range(beta.shape[0])]


@dataclass(frozen=True, eq=False)
class AnchorReweighting(Intervention):
    """Scale the final position's attention to each demonstration's label word by ``exp(beta[l, h, slot])``.

    Attributes:
        beta: ``[layer, head, slot]`` log-scales (zeros: no change); see :func:`anchor_slots`.

    Raises:
        ValueError: ``beta`` that is not three-dimensional or not finite.
    """

    beta: Tensor
    edits_pattern: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not isinstance(self.beta, Tensor) or self.beta.ndim != 3 or not bool(torch.isfinite(self.beta).all()):
            raise ValueError("beta must be a finite [layer, head, slot] tensor (from fit_anchor_reweighting)")
        object.__setattr__(self, "beta", self.beta.detach().float().cpu())

    def hooks_for(self, batch: PromptBatch) -> list[tuple[str, HookFn]]:
        return anchor_hooks(self.beta, batch)


@dataclass(frozen=True, eq=False)
class AnchorReweightingFit:
    """What :func:`fit_anchor_reweighting` learned.

    Attributes:
        intervention: the fitted :class:`AnchorReweighting` (``hooks=`` of any analysis).
        losses: the mean training cross-entropy before each step (``losses[0]``: the model unchanged).
        n_train: labelled prompts trained on; passes: forward-and-backward passes over them (one per step).
    """

    intervention: AnchorReweighting
    losses: tuple[float, ...] = field(repr=False)
    n_train: int = 0
    passes: int = 0


def fit_anchor_reweighting(
    model: Any,
    task: ICLTask,
    *,
    n_train: int = 32,
    shots: int = 4,
    seed: int = 0,
    steps: int = 50,
    lr: float = 0.05,
    prompts: ICLPrompts | None = None,
    options: RunOptions | None = None,
) -> AnchorReweightingFit:
    """Learn anchor re-weighting (one scale per head and demonstration slot) on a few labelled prompts.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task the training prompts come from.
        n_train: labelled training prompts when ``prompts`` is not given.
        shots: demonstrations per training prompt (the number of slots).
        seed: seed of the training prompts (keep it apart from the test prompts' seed).
        steps: full-batch Adam steps.
        lr: Adam's learning rate.
        prompts: the training prompts themselves (from ``task``), instead of ``n_train/shots/seed``.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        An :class:`AnchorReweightingFit`; its ``.intervention`` applies to prompts with at most as many
        demonstrations as the training prompts (slots count back from the query). The cost ledger counts
        each batch of a step as one pass with three passes' layer work.

    Raises:
        TypeError: ``task`` is not an ICLTask; bad numbers.
        ValueError: bad ``n_train``/``steps``/``lr``, prompts from another task or without demonstrations.
        UnfaithfulModelError: a model that discards edits of attention patterns.
    """
    options = run_options(options)
    if not isinstance(task, ICLTask):
        raise TypeError(f"expected an ICLTask, got {type(task).__name__}; e.g. icl_heads.organism_task()")
    steps = check_int("steps", steps, minimum=1)
    lr = check_real("lr", lr, limits=(1e-12, math.inf))
    if prompts is None:
        prompts = task.prompts(check_int("n_train", n_train, minimum=1), shots=shots, seed=seed)
    if not isinstance(prompts, ICLPrompts):
        raise TypeError(f"prompts must be ICLPrompts from task.prompts(n, shots, seed), got {type(prompts).__name__}")
    if prompts.task != task:
        raise ValueError("the training prompts come from another task; sample them with task.prompts(n, shots, seed)")
    access = ModelAccess(model)
    require_pattern_edits(access, "anchor re-weighting")
    tp = access.tokenize(prompts)
    n_slots = max(map(len, tp.label_positions))
    if n_slots == 0:
        raise ValueError("the training prompts have no demonstrations; sample them with shots >= 1")
    label_ids = torch.tensor(tp.label_token_ids)
    parts = list(batches(access, tp, run_options(options, progress=False)))
    with torch.inference_mode(False):
        beta = torch.zeros(access.n_layers, access.n_heads, n_slots, requires_grad=True)
    opt = torch.optim.Adam([beta], lr=lr)
    losses: list[float] = []
    for _ in tqdm(range(steps), desc="anchor re-weighting", disable=not options.progress):
        opt.zero_grad()
        total = sum(_batch_loss(access, beta, batch, label_ids) for batch in parts)
        losses.append(total / len(tp))
        opt.step()
    return AnchorReweightingFit(AnchorReweighting(beta.detach()), tuple(losses), len(tp), steps)


def _batch_loss(access: ModelAccess, beta: Tensor, batch: PromptBatch, label_ids: Tensor) -> float:
    """Summed label-word cross-entropy of one batch under ``beta``; its gradient accumulates in ``beta.grad``."""
    with torch.inference_mode(False):  # index tensors autograd may save: never inference tensors
        batch = replace(batch, **{f.name: getattr(batch, f.name).clone() for f in fields(batch)
                                  if isinstance(getattr(batch, f.name), Tensor)})  # fmt: skip
    kw: dict[str, Any] = {"attention_mask": batch.attention_mask.to(access.device)} if batch.has_padding else {}
    tokens = batch.tokens.to(access.device)
    record_pass(len(batch.golds), int(tokens.numel()), 3 * access.n_layers)
    with torch.inference_mode(False), torch.enable_grad(), frozen_parameters(access.model):
        logits = access.model.run_with_hooks(tokens, fwd_hooks=anchor_hooks(beta, batch), **kw)
        rows = torch.arange(len(batch.golds), device=logits.device)
        label_logits = logits[rows, batch.final_positions.to(logits.device)][:, label_ids.to(logits.device)].float()
        loss = torch.nn.functional.cross_entropy(label_logits, batch.golds.to(logits.device), reduction="sum")
        loss.backward()
    return float(loss.detach())
