"""The affine part of a normalisation layer (``centre(x) / scale * weight + bias``), read off the layer itself.

Layers store ``weight`` differently (Gemma's ``1 + w``, folded or parameter-free norms), so :func:`fit_norm` measures it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn


@dataclass(frozen=True)
class NormMap:
    """``out = centre(x) / scale * weight + bias``, the affine map of one norm layer.

    Attributes:
        weight: ``[d_model]`` float32 weight the layer applies (e.g. ``1 + w`` for Gemma).
        bias: ``[d_model]`` float32 additive bias (zeros for RMSNorm).
        centred: whether the layer subtracts the mean first (LayerNorm).
    """

    weight: Float[Tensor, " d_model"]
    bias: Float[Tensor, " d_model"]
    centred: bool

    def linear(self, x: Float[Tensor, "... d_model"], scale: Float[Tensor, "... 1"]) -> Float[Tensor, "... d_model"]:
        """The linear part ``centre(x) / scale * weight`` (no bias) in float32, on ``x``'s device."""
        x = x.float()
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        return x / scale.float().to(x.device) * self.weight.to(x.device)


def fit_norm(module: nn.Module, d_model: int, *, centred: bool, device: torch.device, dtype: torch.dtype) -> NormMap:
    """Fit ``out = n * weight + bias`` per coordinate (``n = centre(x) / scale``) on 16 probe vectors by least squares.

    Raises:
        ValueError: the module has no ``hook_scale`` to read its scale from.
    """
    hook = getattr(module, "hook_scale", None)
    if hook is None:
        raise ValueError(f"{type(module).__name__} has no hook_scale; cannot read the scale it divides by")
    p = next(iter(module.parameters()), None)
    if p is not None:
        device, dtype = p.device, p.dtype
    x = torch.randn(16, d_model, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    got: dict[str, Tensor] = {}
    handle = hook.register_forward_hook(lambda _m, _i, out: got.__setitem__("scale", out))
    try:
        with torch.inference_mode():
            out = module(x[None])[0].float()
    finally:
        handle.remove()
    scale = got["scale"].reshape(16, -1)[:, :1].float()
    n = (x.float() - x.float().mean(-1, keepdim=True) if centred else x.float()) / scale
    n_c, out_c = n - n.mean(0), out - out.mean(0)
    weight = (n_c * out_c).sum(0) / (n_c * n_c).sum(0).clamp_min(1e-12)
    return NormMap(weight=weight.detach(), bias=(out.mean(0) - weight * n.mean(0)).detach(), centred=centred)
