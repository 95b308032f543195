"""The affine part of a normalisation layer, read off the layer itself.

Every norm the library applies by hand (the final norm, post-attention norms) is
``out = centre(x) / scale * weight + bias``, with ``scale`` taken from the real
forward pass (its ``hook_scale``). Architectures store ``weight`` differently
(Gemma multiplies by ``1 + w``, folded models by nothing, OLMo's norm has no
parameters), so instead of trusting a parameter's name, :func:`fit_norm` feeds the
layer a few probe vectors and solves for the ``weight`` and ``bias`` it actually
applies, then checks that they reproduce its output.
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
        fit_error: largest ``|out - map(x)|`` on the probe vectors, relative to ``max |out|``.
    """

    weight: Float[Tensor, " d_model"]
    bias: Float[Tensor, " d_model"]
    centred: bool
    fit_error: float

    def linear(self, x: Float[Tensor, "... d_model"], scale: Float[Tensor, "... 1"]) -> Float[Tensor, "... d_model"]:
        """The linear part ``centre(x) / scale * weight`` (no bias) in float32, on ``x``'s device."""
        x = x.float()
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        return x / scale.float().to(x.device) * self.weight.to(x.device)


def _module_param(module: nn.Module) -> Tensor | None:
    return next(iter(module.parameters()), None)


def fit_norm(module: nn.Module, d_model: int, *, centred: bool, device: torch.device, dtype: torch.dtype) -> NormMap:
    """Solve for the ``weight`` and ``bias`` that ``module`` applies after dividing by its ``hook_scale``.

    Runs the layer on 16 probe vectors, captures its scale through ``module.hook_scale``
    and fits ``out = n * weight + bias`` per coordinate by least squares, where
    ``n = centre(x) / scale``.

    Raises:
        ValueError: the module has no ``hook_scale`` to read its scale from.
    """
    hook = getattr(module, "hook_scale", None)
    if hook is None:
        raise ValueError(f"{type(module).__name__} has no hook_scale; cannot read the scale it divides by")
    p = _module_param(module)
    if p is not None:
        device, dtype = p.device, p.dtype
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, d_model, generator=gen).to(device=device, dtype=dtype)
    got: dict[str, Tensor] = {}
    handle = hook.register_forward_hook(lambda _m, _i, out: got.__setitem__("scale", out))
    try:
        with torch.inference_mode():
            out = module(x[None])[0].float()
    finally:
        handle.remove()
    scale = got["scale"].reshape(16, -1)[:, :1].float()
    xf = x.float()
    n = (xf - xf.mean(-1, keepdim=True) if centred else xf) / scale
    # per coordinate: out[:, i] = n[:, i] * w[i] + b[i]
    n_c, out_c = n - n.mean(0), out - out.mean(0)
    weight = (n_c * out_c).sum(0) / (n_c * n_c).sum(0).clamp_min(1e-12)
    bias = out.mean(0) - weight * n.mean(0)
    err = float((n * weight + bias - out).abs().max() / out.abs().max().clamp_min(1e-12))
    return NormMap(weight=weight.detach(), bias=bias.detach(), centred=centred, fit_error=err)
