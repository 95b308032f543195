"""Compute only what changes: a pass whose first hook is at layer ℓ resumes the kept clean residual entering block ℓ.

Exact, and probed once per model (a model that fails the probe always runs in full); see docs/methods.md.
"""

from __future__ import annotations

import contextlib
import logging
import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from icl_heads.engine import digest, per_model, record_pass, state_cache

logger = logging.getLogger(__name__)

#: most bytes of kept residuals per model (least recently used are dropped first)
CACHE_BYTES = 1 << 30
_BLOCK = re.compile(r"blocks\.(\d+)\.")
_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "hook_tokens", "embed.", "pos_embed.")


def layer_of(name: str, n_layers: int) -> int:
    """The first block a hook named ``name`` needs to run (embeddings 0; final norm and unembedding the last)."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else 0 if name.startswith(_BEFORE_BLOCKS) else n_layers - 1


@dataclass(frozen=True)
class Support:
    """Whether this model can resume a pass at a layer, and skip the blocks before it (TransformerLens 4)."""

    resume: bool
    skip: bool
    tuple_output: bool = False
    reason: str = ""


_SUPPORT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_bridge(model: Any) -> bool:
    return hasattr(model, "adapter") or type(model).__name__ == "TransformerBridge"


@contextlib.contextmanager
def _skipping(model: Any, start: int, support: Support) -> Iterator[None]:
    """TransformerLens 4 runs blocks before ``start_at_layer`` and discards them: make them pass their input on."""
    if not (support.skip and _is_bridge(model)):
        yield
        return
    comps = [model.blocks[i].original_component for i in range(start)]

    def passthrough(*args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if support.tuple_output else hidden

    for c in comps:
        c.forward = passthrough
    try:
        yield
    finally:
        for c in comps:
            del c.forward


def _keep(put: Callable[[int, Tensor], None], layer: int) -> Callable[[Tensor, Any], None]:
    return lambda act, hook: put(layer, act.detach().clone())


def _probe(access: Any) -> Support:
    """Resume a padded probe batch at every layer and compare with the full pass."""
    model, n_layers = access.model, access.n_layers
    if n_layers < 2:
        return Support(False, False, reason="one layer: nothing to skip")
    high = max(2, min(int(access.W_U.shape[1]), 1000))
    tokens = torch.randint(1, high, (2, 10), generator=torch.Generator().manual_seed(0)).to(access.device)
    mask = torch.ones_like(tokens)
    mask[0, 7:] = 0
    kept: dict[int, Tensor] = {}
    out: dict[str, Any] = {}
    bridge = _is_bridge(model)
    handle = (
        model.blocks[0].original_component.register_forward_hook(lambda m, a, output: out.setdefault("block", output))
        if bridge
        else None
    )
    try:
        with torch.inference_mode():
            hooks = [(f"blocks.{la}.hook_resid_pre", _keep(kept.__setitem__, la)) for la in range(n_layers)]
            full = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks)
    finally:
        if handle is not None:
            handle.remove()
    block = out.get("block")
    several = isinstance(block, tuple) and len(block) != 1  # a block that returns more than its hidden states
    tuple_output = isinstance(block, tuple) and not several
    tol = {torch.float32: 1e-5, torch.float64: 1e-9}.get(full.dtype, 1e-2) * (float(full.abs().max()) or 1.0)

    def close(start: int, support: Support) -> bool:
        with torch.inference_mode(), _skipping(model, start, support):
            got = model(kept[start], start_at_layer=start, attention_mask=mask)
        return bool(((got - full).abs() * mask[..., None]).max() <= tol)

    try:
        if not all(close(s, Support(True, False)) for s in range(1, n_layers)):
            return Support(False, False, reason="resumed logits differ from the full pass")
    except Exception as err:
        return Support(False, False, reason=f"start_at_layer failed ({type(err).__name__}: {err})")
    skip_ok = bridge and not several
    if skip_ok:
        try:
            skip_ok = all(close(s, Support(True, True, tuple_output)) for s in range(1, n_layers))
        except Exception:
            skip_ok = False
    return Support(True, skip_ok, tuple_output)


def support(access: Any) -> Support:
    """Whether ``access``'s model resumes exactly (probed once per model and weights)."""

    def probe() -> Support:
        result = _probe(access)
        if not result.resume:
            logger.info("passes of %s always run in full: %s", access.name, result.reason)
        return result

    return per_model(_SUPPORT, access.model, probe)


def forward(access: Any, tokens: Tensor, fwd: list[tuple[str, Any]], kw: dict[str, Any]) -> Tensor:
    """The model's logits for ``tokens`` with hooks ``fwd``, resumed from kept clean residuals where possible."""
    model, n_layers = access.model, access.n_layers
    first = min((layer_of(name, n_layers) for name, _ in fwd), default=n_layers - 1)
    kept = state_cache(_CACHE, model, CACHE_BYTES, lambda t: t.numel() * t.element_size()) if first >= 1 else None
    sup = support(access) if kept is not None else None
    key = digest(tokens, kw.get("attention_mask")) if sup is not None and sup.resume else None
    resid = kept.get((key, first)) if kept is not None and key is not None else None
    rows, n_tokens = int(tokens.shape[0]), int(tokens.numel())
    if resid is not None and sup is not None:
        record_pass(rows, n_tokens, n_layers - first if sup.skip or not _is_bridge(model) else n_layers)
        with torch.inference_mode(), _skipping(model, first, sup):
            return model.run_with_hooks(resid, start_at_layer=first, fwd_hooks=fwd, **kw)
    record_pass(rows, n_tokens, n_layers)
    # hooks on a layer run in order: keep the residual before any intervention at that layer touches it
    put = None if kept is None or key is None else (lambda layer, value: kept.put((key, layer), value))
    hooks = [(f"blocks.{la}.hook_resid_pre", _keep(put, la)) for la in range(1, first + 1) if put] + fwd
    with torch.inference_mode():
        return model.run_with_hooks(tokens, fwd_hooks=hooks, **kw) if hooks else model(tokens, **kw)
