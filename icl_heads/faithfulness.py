"""The linear identities every analysis rests on (final norm, heads sum to attention output, residual stream
adds up, components sum to logits), measured on a short random probe once per model; see docs/models.md.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import Tensor

from icl_heads.access import ModelAccess, UnfaithfulModelError, pattern_edits_apply, probe_tokens
from icl_heads.engine import per_model
from icl_heads.records import Provenance, Record, check_positive
from icl_heads.results import Result, json_type, provenance

__all__ = ["Faithfulness", "check_faithfulness", "faithful_access", "require_faithful", "tolerance_for"]

_EXPLAIN = {
    "final norm": "the final norm applied by hand does not reproduce the model's logits",
    "heads sum to attention output": "the heads' outputs (z W_O plus biases) do not add up to what the attention "
    "layer writes into the residual stream",
    "residual stream adds up": "the residual stream holds terms other than the embeddings, attention and MLP outputs",
    "components sum to logits": "the components read through the final norm and unembedding do not add up to the "
    "logits",
}
IDENTITIES = tuple(_EXPLAIN)
#: relative tolerance of every identity, by the dtype of the model's weights
TOLERANCES = {torch.float64: 1e-6, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class FaithfulnessConfig(Record):
    """The shape and seed of :func:`~icl_heads.faithfulness.check_faithfulness`'s probe."""

    n_prompts: int = 2
    n_tokens: int = 24
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "n_prompts", "n_tokens")


def tolerance_for(dtype: torch.dtype) -> float:
    """Relative tolerance of the identities for weights of ``dtype`` (documented in docs/models.md)."""
    return TOLERANCES.get(dtype, 1e-4)


@dataclass(frozen=True, repr=False)
class Faithfulness(Result):
    """How well the identities the analyses rely on hold on one model.

    Attributes:
        df: one row per identity (and layer): ``identity, layer, error, scale, relative_error, tolerance, passed``.
        architecture: the model's architecture (e.g. ``Gemma2ForCausalLM``).
        notes: what the library models specially on this architecture (e.g. a post-attention norm).
        config: the probe's shape and seed.
        provenance: model and versions.
    """

    df: pd.DataFrame
    architecture: str
    notes: tuple[str, ...] = ()
    config: FaithfulnessConfig = field(default_factory=FaithfulnessConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Faithfulness of the linear identities"

    @property
    def passed(self) -> bool:
        """Whether every identity holds within its tolerance."""
        return bool(self.df.passed.all())

    def worst(self) -> pd.Series:
        """The row of the identity that fails by most (relative to its tolerance)."""
        return self.df.loc[(self.df.relative_error / self.df.tolerance).idxmax()]

    def summary(self) -> dict[str, Any]:
        w = self.worst()
        return {
            "architecture": self.architecture,
            "passed": self.passed,
            "worst identity": w.identity + (f" (layer {int(w.layer)})" if w.layer >= 0 else ""),
            "worst relative error": float(w.relative_error),
            "notes": "; ".join(self.notes) or "none",
        }

    def raise_if_failed(self, analysis: str = "this analysis") -> None:
        """Raise :class:`UnfaithfulModelError` if an identity fails.

        Raises:
            UnfaithfulModelError: naming the architecture, the identity and its size.
        """
        if self.passed:
            return
        w = self.worst()
        where = f" at layer {int(w.layer)}" if w.layer >= 0 else ""
        raise UnfaithfulModelError(
            f"{analysis} refuses this {self.architecture} model: the identity '{w.identity}' fails{where} by "
            f"{w.relative_error:.3g} relative (tolerance {w.tolerance:.3g}): {_EXPLAIN[w.identity]}. Head scores, OV "
            "features and the decomposition would be wrong on it. ih.check_faithfulness(model).df lists every "
            "identity; if the model carries hooks of your own (model.add_hook), remove them with model.reset_hooks()"
        )


# model -> (weights key, report): the probe runs once per model until its weights change
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_faithfulness(model: Any, *, n_prompts: int = 2, n_tokens: int = 24, seed: int = 0) -> Faithfulness:
    """Measure the identities the analyses rely on, on a short random probe.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        n_prompts: probe sequences.
        n_tokens: tokens per probe sequence (capped at the model's context).
        seed: seed of the probe's random tokens.

    Returns:
        A :class:`Faithfulness` report: one row per identity and layer.

    Raises:
        TypeError: an unsupported model object.

    >>> import icl_heads as ih
    >>> ih.check_faithfulness(ih.load_model("organism")).passed
    True
    """
    access = model if isinstance(model, ModelAccess) else ModelAccess(model)
    L = access.n_layers
    tokens = probe_tokens(access, n_prompts, min(n_tokens, access.n_ctx), seed).to(access.device)
    names = {"blocks.0.hook_resid_pre", access.hook(L - 1, "resid_post"), "ln_final.hook_scale"}
    names |= {access.hook(ly, n) for ly in range(L) for n in ("z", "attn_out", "mlp_out")} | {*access.write_captures()}
    got: dict[str, Tensor] = {}

    def keep(name: str) -> Callable[[Tensor, Any], None]:
        return lambda act, hook: got.__setitem__(name, act.detach().float().to(access.device))

    with torch.inference_mode():
        logits = access.uncap(
            access.model.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in sorted(names)]).float()
        )
    rows: list[dict[str, Any]] = []
    tol = tolerance_for(access.W_U.dtype)

    def add(identity: str, layer: int, ours: Tensor, ref: Tensor) -> None:
        err, scale = float((ours.double() - ref.double()).abs().max()), max(1.0, float(ref.abs().max()))
        rows.append(dict(identity=identity, layer=layer, error=err, scale=scale, relative_error=err / scale,
                         tolerance=tol, passed=err / scale <= tol))  # fmt: skip

    const = access.unembed(access.final_norm_bias()) + access.b_U.float()

    def read(x: Tensor) -> Tensor:
        return access.unembed(access.final_norm(x, got["ln_final.hook_scale"])) + const

    resid = got[access.hook(L - 1, "resid_post")]
    add("final norm", -1, read(resid), logits)
    total = from_parts = got["blocks.0.hook_resid_pre"]
    for layer in range(L):
        heads = torch.einsum("bphd,hdm->bpm", got[access.hook(layer, "z")], access.W_O(layer).float().to(access.device))
        written = access.head_write(layer, heads, got) + access.bias_write(layer, got).to(access.device)
        attn_out, mlp = got[access.hook(layer, "attn_out")], got[access.hook(layer, "mlp_out")]
        add("heads sum to attention output", layer, written, attn_out)
        total, from_parts = total + attn_out + mlp, from_parts + written + mlp
    add("residual stream adds up", -1, total, resid)
    add("components sum to logits", -1, read(from_parts), logits)
    notes = []
    if any(access.post_attn_norm(layer) for layer in range(L)):
        notes.append("post-attention norm: a head writes w * z_h W_O^h / rms(attention output)")
    if access.logit_soft_cap:
        notes.append(f"final logits soft-capped at {access.logit_soft_cap:g}: logits are decomposed before the cap")
    if not pattern_edits_apply(access):
        notes.append(
            "attention is computed inside the Hugging Face module: edits of hook_pattern are discarded, so "
            "the bias corrections refuse this model"
        )
    w, raw = access.final_norm_map.weight, getattr(access.model.ln_final, "w", None)
    if isinstance(raw, Tensor) and raw.shape == w.shape and not torch.allclose(raw.float().to(w.device), w, atol=1e-3):
        notes.append("the final norm scales by a weight other than its stored parameter (e.g. Gemma's 1 + w)")
    return Faithfulness(
        df=pd.DataFrame(rows),
        architecture=access.architecture,
        notes=tuple(notes),
        config=FaithfulnessConfig(n_prompts=n_prompts, n_tokens=int(tokens.shape[1]), seed=seed),
        provenance=provenance(access.name, architecture=access.architecture),
    )


def require_faithful(access: Any, analysis: str = "this analysis") -> Faithfulness:
    """The cached :func:`check_faithfulness` report of ``access``'s model, raising if an identity fails.

    Raises:
        UnfaithfulModelError: an identity fails on this model.
    """
    report = per_model(_CACHE, access.model, lambda: check_faithfulness(access))
    report.raise_if_failed(analysis)
    return report


def faithful_access(model: Any, analysis: str = "this analysis") -> ModelAccess:
    """``model`` as a :class:`~icl_heads.access.ModelAccess`, once its identities are checked (once per model).

    Raises:
        TypeError: not a supported model.
        UnfaithfulModelError: the model breaks an identity (the message names ``analysis``).
    """
    access = model if isinstance(model, ModelAccess) else ModelAccess(model)
    require_faithful(access, analysis)
    return access
