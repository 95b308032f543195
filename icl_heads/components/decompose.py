"""Decompose the label logits into every head, MLP, the embeddings and the bias terms.

With the final norm's scale frozen from the real pass, the label logits are exactly the sum of each component's
``g_j = W_U[:, labels] . norm(c_j)`` (docs/methods.md); both sides use the model's own ``W_U``, so a centred
unembedding (one constant shift per prompt) changes neither the identity nor the label-set argmax and softmax.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from icl_heads.access import Capture, ModelAccess, batches
from icl_heads.components.result import Decomposition, DecompositionConfig
from icl_heads.faithfulness import faithful_access, tolerance_for
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.results import provenance


def label_readout(access: ModelAccess, label_ids: Tensor) -> tuple[Tensor, Tensor]:
    """The frozen final norm and unembedding at scale 1 as one matrix, and the constant logits.

    ``final_norm(x, s) @ W_U[:, labels] == (x @ readout) / s`` for any ``x``; ``const`` is the final norm's bias and
    ``b_U``.
    """
    W_UL = access.W_U[:, label_ids].float()
    eye = torch.eye(access.d_model, device=W_UL.device)
    readout = access.final_norm(eye, torch.ones(access.d_model, 1, device=W_UL.device)) @ W_UL
    return readout, access.final_norm_bias().to(W_UL.device) @ W_UL + access.b_U[label_ids].float()


def written_W_O(access: ModelAccess, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """``W_O`` of layer ``layer`` times the weight of its post-attention norm, if it has one (scale 1)."""
    W = access.W_O(layer).float()
    norm = access.post_attn_norm(layer)
    return W if norm is None else norm.linear(W, torch.ones(1, device=W.device))


def decompose(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    atol: float | None = None,
    options: RunOptions | None = None,
) -> Decomposition:
    """Label logits of every head, MLP, the embeddings and the bias terms at each prompt's final position.

    One forward pass per batch keeps only ``hook_z`` and ``hook_mlp_out`` of every layer, the embeddings and
    ``ln_final.hook_scale``, at the final position.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: prompts from :meth:`~icl_heads.prompts.ICLTask.prompts` or :func:`fixed_demo_prompts`.
        atol: largest accepted ``|sum_j g_j - model label logits|``; default the identities' tolerance for the model's
            dtype times ``max(1, |logits|)`` (``1e-4`` in float32, ``1e-2`` in float16, ``5e-2`` in bfloat16;
            docs/models.md).
        options: how prompts are run (batch size, padding side, progress bar); does not change the result.

    Returns:
        A :class:`Decomposition`.

    Raises:
        TypeError: an unsupported model or prompts object.
        ValueError: bad prompts, batch size or padding side.
        UnfaithfulModelError: the model breaks an identity the decomposition rests on
            (:func:`~icl_heads.faithfulness.check_faithfulness`).
        RuntimeError: the components do not add up to the model's logits on these prompts.

    >>> import icl_heads as ih
    >>> dec = decompose(ih.load_model("organism"), ih.organism_task().prompts(n=32, shots=4))
    >>> dec.names[:3], len(dec.names)
    (('embed', 'L0H0', 'L0H1'), 29)
    >>> better = dec.kinds().query("good").component.tolist()  # components that beat the whole model
    """
    options = run_options(options)
    access = faithful_access(model, "decompose")
    tp = access.tokenize(prompts)
    L, H = access.n_layers, access.n_heads
    label_ids = torch.tensor(tp.label_token_ids, device=access.device)
    readout, const = label_readout(access, label_ids)  # [d_model, label], [label]
    # each head's readout through its W_O: [head, d_head, label], so z never expands to d_model
    head_readout = [torch.einsum("hdm,ml->hdl", written_W_O(access, layer), readout) for layer in range(L)]
    caps = [Capture(access.hook(layer, name)) for layer in range(L) for name in ("z", "mlp_out")]
    caps += [Capture(name) for name in ("blocks.0.hook_resid_pre", "ln_final.hook_scale", *access.write_captures())]
    parts, fulls = [], []
    for batch in batches(access, tp, options, desc="decomposing"):
        logits, got = access.run(batch, capture=caps)
        got = {k: v.to(readout.device) for k, v in got.items()}
        scale = got["ln_final.hook_scale"]  # [b, 1]
        g = [got["blocks.0.hook_resid_pre"] @ readout / scale]  # embeddings as they enter the first block
        bias = torch.zeros(len(batch.golds), access.d_model, device=readout.device)
        for layer in range(L):
            heads = torch.einsum("bhd,hdl->bhl", got[access.hook(layer, "z")], head_readout[layer]) / scale[:, None]
            post = access.post_attn_scale(layer, got)
            g += [*(heads if post is None else heads / post[:, None]).unbind(1)]
            g.append(got[access.hook(layer, "mlp_out")] @ readout / scale)
            bias = bias + access.bias_write(layer, got).to(readout.device)
        parts.append(torch.stack([*g, bias @ readout / scale + const], 1).cpu())
        fulls.append(access.uncap(logits[:, label_ids.to(logits.device)]).cpu())
    g_all, full = torch.cat(parts), torch.cat(fulls)
    error = float((g_all.sum(1) - full).abs().max())
    tol = atol if atol is not None else tolerance_for(access.W_U.dtype) * max(1.0, float(full.abs().max()))
    if error > tol:
        raise RuntimeError(
            f"decompose refuses: on this {access.architecture} model the components add up to the label logits only "
            f"within {error:.3g} (tolerance {tol:.3g}) on these prompts, although the identities hold on a random "
            "probe (ih.check_faithfulness(model)); the per-component numbers would be wrong. Check the prompts' "
            "padding and the model's dtype (half-precision tolerances are in docs/models.md)"
        )
    config = DecompositionConfig(options.batch_size, options.padding_side, access.logit_soft_cap)
    return Decomposition.from_tensors(
        g_all,
        full,
        torch.tensor(tp.golds),
        n_layers=L,
        n_heads=H,
        label_words=tp.prompts.task.label_words,
        config=config,
        provenance=provenance(access.name, tp, architecture=access.architecture),
    )
