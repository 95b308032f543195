"""Score every attention head for in-context learning (DESIGN §2a, docs/methods.md).

Scores per head ``(layer, head)`` at the final position: ``logprob_increase`` and ``dla``
(one forward pass per batch), ``ablation`` (exact) and ``attribution`` (its estimate).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from functools import partial
from itertools import product
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from icl_heads.access import Capture, Head, ModelAccess, batches
from icl_heads.attribution import largest_heads, per_prompt_attribution
from icl_heads.engine import digest, memo_get, memo_put
from icl_heads.faithfulness import faithful_access
from icl_heads.interventions import HOWS, WHERE, head_means
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, PromptBatch, TokenizedPrompts

METHODS = ("logprob_increase", "dla", "ablation", "attribution")


def stack_batches(*parts: PromptBatch) -> PromptBatch:
    """The rows of every batch in turn, in one batch (all padded to the same width)."""
    names = [f.name for f in fields(parts[0]) if isinstance(getattr(parts[0], f.name), Tensor)]
    return replace(parts[0], **{k: torch.cat([getattr(p, k) for p in parts]) for k in names})


def _per_prompt_fast(
    access: ModelAccess, batch: PromptBatch, label_ids: Tensor, logprob: bool = True
) -> tuple[Float[Tensor, "batch layer head"] | None, Float[Tensor, "batch layer head"]]:
    """Per-prompt ``logprob_increase`` (if ``logprob``) and ``dla`` of every head, from one forward pass."""
    L = access.n_layers
    caps = [Capture(access.hook(layer, "z")) for layer in range(L)]
    caps += [Capture(access.hook(layer, "resid_pre")) for layer in range(L) if logprob]
    caps += [Capture(name) for name in ("ln_final.hook_scale", *access.write_captures())]
    _, got = access.run(batch, capture=caps)
    scale = got["ln_final.hook_scale"].to(access.device)
    lab = label_ids.to(access.device)
    golds = batch.golds.to(access.device)
    gold = lab[golds]
    rows = torch.arange(len(gold), device=access.device)
    bias = access.unembed(access.final_norm_bias()) + access.b_U.float() if logprob else None
    lpi = torch.zeros(len(gold), L, access.n_heads)
    dla = torch.zeros(len(gold), L, access.n_heads)
    for layer in range(L):
        z = got[access.hook(layer, "z")].to(access.device)
        # what each head adds to the residual stream (through a post-attention norm where there is one)
        written = access.head_write(layer, torch.einsum("bhd,hdm->bhm", z, access.W_O(layer).float()), got, expand=1)
        o = access.final_norm(written, scale[:, None])
        if logprob:
            x = got[access.hook(layer, "resid_pre")].to(access.device)
            u_x = access.unembed(access.final_norm(x, scale.to(x.device))) + bias
            u_o = access.unembed(o)  # [b, head, vocab]
            # p(. | v) applies the model's final soft cap, if any, like the real forward pass
            base = access.cap(u_x).log_softmax(-1)[rows, gold]
            with_o = access.cap(u_x[:, None] + u_o).log_softmax(-1)[rows, :, gold]
            lpi[:, layer] = (with_o - base[:, None]).cpu()
            u_lab = u_o[:, :, lab.to(u_o.device)]
        else:
            u_lab = access.unembed(o, lab)  # [b, head, label]
        dla[:, layer] = (u_lab[rows, :, golds.to(u_lab.device)] - u_lab.mean(-1)).cpu()
    return (lpi if logprob else None), dla


def per_prompt_ablation(
    access: ModelAccess,
    batch: PromptBatch,
    label_ids: Tensor,
    heads_per_pass: int,
    *,
    heads: Sequence[Head] | None = None,
    how: str = "zero",
    where: str = "all",
    means: Tensor | None = None,
) -> Float[Tensor, "batch layer head"]:
    """Per-prompt drop in gold log-probability when each head alone is ablated (only ``heads`` if given; NaN elsewhere).

    Drops computed before for the same batch and ablation are read back from the model's memo.
    """
    b, gold = len(batch.golds), label_ids[batch.golds]
    out = torch.full((b, access.n_layers, access.n_heads), float("nan") if heads is not None else 0.0)
    key = ("ablation_drop", digest(batch.tokens, batch.attention_mask, gold), how, where, digest(means))
    todo = []
    for layer, h in product(range(access.n_layers), range(access.n_heads)) if heads is None else heads:
        hit = memo_get(access.model, (*key, layer, h))
        if hit is None:
            todo.append((layer, h))
        else:
            out[:, layer, h] = hit
    if not todo:
        return out
    base_logits, _ = access.run(batch)
    base = base_logits.log_softmax(-1)[torch.arange(b), gold.to(base_logits.device)].cpu()
    step = max(1, heads_per_pass)

    def fn(z: Tensor, hook: Any, layer: int, chunk: list[Head]) -> Tensor:
        z = z.clone()
        at = (slice(None), slice(None)) if where == "all" else (torch.arange(b), batch.final_positions.to(z.device))
        for i, (lay, h) in enumerate(chunk):
            if lay == layer:
                z[i * b : (i + 1) * b][(*at, h)] = 0.0 if how == "zero" else means[layer, h].to(z.device, z.dtype)  # type: ignore[index]
        return z

    for chunk in (todo[i : i + step] for i in range(0, len(todo), step)):
        hooks = [(access.hook(la, "z"), partial(fn, layer=la, chunk=chunk)) for la in sorted({la for la, _ in chunk})]
        logits, _ = access.run(stack_batches(*[batch] * len(chunk)), hooks=hooks)
        gold_m = gold.repeat(len(chunk)).to(logits.device)
        lp = logits.log_softmax(-1)[torch.arange(len(chunk) * b), gold_m].cpu().view(len(chunk), b)
        for i, (layer, h) in enumerate(chunk):
            out[:, layer, h] = base - lp[i]
            memo_put(access.model, (*key, layer, h), out[:, layer, h].clone())
    return out


def score_heads(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    methods: Sequence[str] = ("logprob_increase", "dla"),
    heads_per_pass: int = 8,
    how: str = "zero",
    where: str = "all",
    reference: ICLPrompts | TokenizedPrompts | None = None,
    rescore: int = 0,
    options: RunOptions | None = None,
) -> dict[str, Float[Tensor, "prompt layer head"]]:
    """Per-prompt scores of every head, for each requested method.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: prompts from :meth:`~icl_heads.prompts.ICLTask.prompts`.
        methods: any of ``"logprob_increase"``, ``"dla"``, ``"ablation"``, ``"attribution"``.
        heads_per_pass: heads ablated per forward pass for ``"ablation"`` (copies of the batch stacked).
        how: ``"ablation"`` and ``"attribution"`` replace the head by ``"zero"`` or by its ``"mean"``.
        where: ... at ``"all"`` positions or only the ``"final"`` one.
        reference: prompts whose mean ``hook_z`` replaces the head for ``how="mean"`` (default: ``prompts``).
        rescore: for ``"attribution"``, re-score exactly this many heads with the largest ``|estimate|``.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        ``{method: [prompt, layer, head]}`` tensors.

    Raises:
        ValueError: an unknown method, or the checks of :class:`~icl_heads.access.ModelAccess`.
    """
    options = run_options(options)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown scoring methods {unknown or list(methods)}; choose from {METHODS}")
    check_ablation_args(how, where, rescore)
    access = faithful_access(model, "score_heads")
    tp = access.tokenize(prompts)
    label_ids = torch.tensor(tp.label_token_ids)
    means = ablation_means(access, tp, how, where, reference) if {"ablation", "attribution"} & set(methods) else None
    out = {m: torch.zeros(len(tp), access.n_layers, access.n_heads) for m in methods}
    ablate = {"how": how, "where": where, "means": means}
    for i, batch in enumerate(batches(access, tp, options, desc="scoring heads", by_length=True)):
        got: dict[str, Tensor | None] = {}
        if "logprob_increase" in methods or "dla" in methods:
            fast = _per_prompt_fast(access, batch, label_ids, logprob="logprob_increase" in methods)
            got |= dict(zip(("logprob_increase", "dla"), fast, strict=True))
        if "ablation" in methods:
            got["ablation"] = per_prompt_ablation(access, batch, label_ids, heads_per_pass, **ablate)
        if "attribution" in methods:
            got["attribution"] = per_prompt_attribution(access, batch, label_ids, **ablate, check=i == 0)
        for m in methods:  # batches come grouped by length: each prompt's scores go to its own row
            out[m][batch.index] = got[m]
    if "attribution" in methods and rescore:
        chosen = largest_heads(out["attribution"].mean(0), min(rescore, access.n_layers * access.n_heads))
        exact = torch.zeros_like(out["attribution"])
        for batch in batches(access, tp, run_options(options, progress=False), by_length=True):
            exact[batch.index] = per_prompt_ablation(access, batch, label_ids, heads_per_pass, heads=chosen, **ablate)
        for layer, h in chosen:
            out["attribution"][:, layer, h] = exact[:, layer, h]
    return out


def check_ablation_args(how: str, where: str, rescore: int = 0) -> None:
    """Refuse an unknown ablation (``how``/``where``) or a negative ``rescore`` before any work.

    Raises:
        ValueError: naming the valid choices.
    """
    if how not in HOWS:
        raise ValueError(f"how must be one of {HOWS}, got {how!r}")
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    if isinstance(rescore, bool) or not isinstance(rescore, int) or rescore < 0:
        raise ValueError(f"rescore must be a number of heads >= 0, got {rescore!r}")


def ablation_means(
    access: ModelAccess, tp: TokenizedPrompts, how: str, where: str, reference: ICLPrompts | TokenizedPrompts | None
) -> Tensor | None:
    """The ``[layer, head, d_head]`` means that replace heads for ``how="mean"`` (None for zero-ablation)."""
    if how != "mean":
        return None
    return head_means(access, reference if reference is not None else tp, where=where)


def head_names(heads: Sequence[Head]) -> list[str]:
    """The heads as ``"L{layer}H{head}"``."""
    return [f"L{layer}H{h}" for layer, h in heads]


def top_heads(scores: Float[Tensor, "layer head"], k: int) -> tuple[Head, ...]:
    """The ``k`` highest-scoring heads, best first (ties broken by position)."""
    return tuple(divmod(int(i), scores.shape[1]) for i in torch.argsort(-scores.flatten(), stable=True)[:k])


def n_selected(n_total: int, fraction: float | None, k: int | None) -> int:
    """How many heads ``fraction`` or ``k`` selects (at least one).

    Raises:
        ValueError: both or neither given, or out of range.
    """
    if (fraction is None) == (k is None):
        raise ValueError("give exactly one of fraction= (e.g. 0.01) or k= (a number of heads)")
    if k is not None and not 1 <= k <= n_total:
        raise ValueError(f"k must be between 1 and the number of heads ({n_total}), got {k}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return int(k) if k is not None else max(1, round(fraction * n_total))  # type: ignore[operator]
