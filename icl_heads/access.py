"""Model access: the one place that knows TransformerLens 3 ``HookedTransformer`` from 4 ``TransformerBridge``.

Every forward pass of every analysis goes through :meth:`ModelAccess.run`, so the cost ledger sees it.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads._norms import NormMap, fit_norm
from icl_heads.engine import HookFn, Hooks, as_intervention, per_model
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, PromptBatch, PromptTooLongError, TokenizedPrompts

Head = tuple[int, int]

# the scale of the norm a post-norm layer (Gemma-2/3, OLMo-2) applies to its attention output
_POST_ATTN_SCALE = "blocks.{layer}.ln1_post.hook_scale"


def _supported_classes() -> tuple[type, ...]:
    classes: list[type] = []
    for module, name in (
        ("transformer_lens", "HookedTransformer"),
        ("transformer_lens.model_bridge", "TransformerBridge"),
    ):
        with contextlib.suppress(ImportError):
            classes.append(getattr(importlib.import_module(module), name))
    return tuple(classes)


@dataclass(frozen=True)
class Capture:
    """A request to keep one hook's activation at each prompt's final position (or label positions)."""

    name: str
    where: str = "final"  # "final": act[b, final]; "pattern_final": pattern[b, :, final, :]; "all": whole act


class ModelAccess:
    """Uniform access to a TransformerLens 3 ``HookedTransformer`` or 4 ``TransformerBridge``.

    Args:
        model: the model (or another ``ModelAccess``), not checked for faithfulness here
            (see :func:`~icl_heads.faithfulness.faithful_access`).

    Raises:
        TypeError: the object is not a supported model.
        ValueError: a ``TransformerBridge`` without TransformerLens hook names (call
            ``enable_compatibility_mode()`` first).
    """

    def __init__(self, model: Any):
        if isinstance(model, ModelAccess):
            model = model.model
        classes = _supported_classes()
        if not isinstance(model, classes):
            names = ", ".join(c.__name__ for c in classes)
            raise TypeError(
                f"expected a TransformerLens model ({names}), got {type(model).__name__}; "
                "load one with icl_heads.load_model(name_or_path)"
            )
        if "blocks.0.attn.hook_z" not in model.hook_dict:
            raise ValueError(
                "this TransformerBridge has no TransformerLens hook names (blocks.0.attn.hook_z); "
                "call model.enable_compatibility_mode(center_unembed=False) first, or use icl_heads.load_model"
            )
        self.model = model
        self.cfg = cfg = model.cfg
        self.n_layers: int = cfg.n_layers
        self.n_heads: int = cfg.n_heads
        self.d_model: int = cfg.d_model
        self.d_head: int = cfg.d_head
        self.n_ctx: int = cfg.n_ctx
        self.rotary: bool = cfg.positional_embedding_type == "rotary"
        self.centred_norm: bool = str(cfg.normalization_type).startswith("LN")
        self.name: str = str(getattr(cfg, "model_name", None) or type(model).__name__)
        self.architecture: str = str(
            getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None) or type(model).__name__
        )
        self._norms: dict[str, NormMap] = {}
        # keyed by id(prompts); each entry holds its prompts so that the id cannot be reused while cached
        self._tok_cache: dict[tuple, tuple[ICLPrompts, TokenizedPrompts]] = {}

    @property
    def tokenizer(self):
        if self.model.tokenizer is None:
            raise ValueError("the model has no tokenizer; pass one when loading the model")
        return self.model.tokenizer

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.model.W_U.detach()

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        b = getattr(self.model, "b_U", None)
        return torch.zeros_like(self.W_U[0]) if b is None else b.detach()

    def W_O(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        return self.model.blocks[layer].attn.W_O.detach()

    def W_out(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:  # row n: neuron n's value vector
        return self.model.blocks[layer].mlp.W_out.detach()

    def b_O(self, layer: int) -> Float[Tensor, " d_model"]:
        b = getattr(self.model.blocks[layer].attn, "b_O", None)
        return torch.zeros_like(self.W_O(layer)[0, 0]) if b is None else b.detach()

    def _norm_map(self, key: str, module: Any, centred: bool) -> NormMap:
        if key not in self._norms:
            self._norms[key] = fit_norm(module, self.d_model, centred=centred, device=self.device, dtype=self.W_U.dtype)
        return self._norms[key]

    @property
    def final_norm_map(self) -> NormMap:
        """The final norm's affine map, read off the layer (Gemma's ``1 + w`` included)."""
        return self._norm_map("ln_final", self.model.ln_final, self.centred_norm)

    def final_norm(
        self, x: Float[Tensor, "... d_model"], scale: Float[Tensor, "... 1"]
    ) -> Float[Tensor, "... d_model"]:
        """The final norm's linear part with its scale frozen: ``center(x) / scale * w``."""
        return self.final_norm_map.linear(x, scale)

    def final_norm_bias(self) -> Float[Tensor, " d_model"]:
        """The final norm's additive bias (zeros for RMSNorm or folded norms)."""
        return self.final_norm_map.bias.to(self.W_U.device)

    def post_attn_norm(self, layer: int) -> NormMap | None:
        """The norm a layer applies to its attention output before the residual stream (Gemma-2/3, OLMo-2), if any."""
        if _POST_ATTN_SCALE.format(layer=layer) not in self.model.hook_dict:
            return None
        return self._norm_map(f"ln1_post.{layer}", self.model.blocks[layer].ln1_post, centred=False)

    def write_captures(self) -> list[str]:
        """Hooks whose values (at the positions analysed) turn ``z W_O`` into what each layer writes."""
        return [_POST_ATTN_SCALE.format(layer=layer) for layer in range(self.n_layers) if self.post_attn_norm(layer)]

    def post_attn_scale(self, layer: int, got: dict[str, Tensor]) -> Tensor | None:
        """The post-attention norm's scale of layer ``layer`` from captured activations (``None`` without one)."""
        return None if self.post_attn_norm(layer) is None else got[_POST_ATTN_SCALE.format(layer=layer)]

    def head_write(
        self, layer: int, out: Float[Tensor, "... d_model"], got: dict[str, Tensor], *, expand: int = 0
    ) -> Float[Tensor, "... d_model"]:
        """Turn head outputs ``z W_O`` of layer ``layer`` into what they add to the residual stream.

        With a post-attention norm that is ``w * (z_h W_O^h) / scale``, with the real sum's ``scale``
        from ``got`` (see :meth:`write_captures`); ``expand`` inserts that many axes after its batch axis.
        """
        norm, scale = self.post_attn_norm(layer), self.post_attn_scale(layer, got)
        if norm is None or scale is None:
            return out.float()
        scale = scale.to(out.device)
        return norm.linear(out, scale.reshape(scale.shape[0], *([1] * expand), *scale.shape[1:]))

    def bias_write(self, layer: int, got: dict[str, Tensor]) -> Float[Tensor, "*batch d_model"]:
        """What layer ``layer``'s attention bias ``b_O`` (and a post-attention norm's bias) adds to the residual stream."""
        b = self.b_O(layer).float()
        norm, scale = self.post_attn_norm(layer), self.post_attn_scale(layer, got)
        if norm is None or scale is None:
            return b
        scale = scale.to(b.device)
        return norm.linear(b.expand(*scale.shape[:-1], -1), scale) + norm.bias.to(b.device)

    @property
    def logit_soft_cap(self) -> float:
        """Final-logit soft cap ``c`` (logits are ``c tanh(x / c)``; Gemma-2), or 0 when there is none."""
        return max(float(getattr(self.cfg, "output_logits_soft_cap", None) or 0.0), 0.0)

    def uncap(self, logits: Float[Tensor, "... vocab"]) -> Float[Tensor, "... vocab"]:
        """The pre-cap logits ``c atanh(logits / c)`` (computed in float64); the logits themselves without a cap."""
        c = self.logit_soft_cap
        return (c * torch.atanh((logits.double() / c).clamp(-1 + 1e-15, 1 - 1e-15))).to(logits.dtype) if c else logits

    def cap(self, logits: Float[Tensor, "... vocab"]) -> Float[Tensor, "... vocab"]:
        """Apply the model's final-logit soft cap (identity without one)."""
        c = self.logit_soft_cap
        return c * torch.tanh(logits / c) if c else logits

    def unembed(self, x: Float[Tensor, "... d_model"], tokens: Tensor | None = None) -> Float[Tensor, "... d_vocab"]:
        """``x @ W_U`` in float32 on ``W_U``'s device (no bias); only the ``tokens`` columns if given."""
        w = self.W_U if tokens is None else self.W_U[:, tokens.to(self.W_U.device)]
        x = x.float().to(w.device).contiguous()  # a strided x makes the product several times slower on CPU
        return (x.reshape(-1, x.shape[-1]) @ w.float()).reshape(*x.shape[:-1], w.shape[-1])

    @staticmethod
    def hook(layer: int | None, name: str) -> str:
        if layer is None:
            return name
        if name in ("z", "pattern", "attn_scores", "q", "k", "v", "rot_q", "rot_k"):
            return f"blocks.{layer}.attn.hook_{name}"
        return f"blocks.{layer}.mlp.hook_post" if name == "mlp_post" else f"blocks.{layer}.hook_{name}"

    def tokenize(self, prompts: ICLPrompts | TokenizedPrompts, *, first_token: bool = False) -> TokenizedPrompts:
        """Tokenize (memoised) and check every prompt fits the context.

        Raises:
            TypeError: ``prompts`` is not a prompt set.
            ValueError: no prompts.
            PromptTooLongError: a prompt is longer than the model's context.
        """
        if isinstance(prompts, TokenizedPrompts):
            tp = prompts
            self._check_tokenizer(tp)
        elif isinstance(prompts, ICLPrompts):
            key = (id(prompts), first_token)
            if key not in self._tok_cache:
                prepend = bool(getattr(self.cfg, "default_prepend_bos", True))
                self._tok_cache[key] = (
                    prompts,
                    prompts.tokenize(self.tokenizer, prepend_bos=prepend, first_token=first_token),
                )
            tp = self._tok_cache[key][1]
        else:
            raise TypeError(
                f"expected prompts from ICLTask.prompts(...), got {type(prompts).__name__}; "
                "build them with icl_heads.ICLTask.from_pairs(texts, labels).prompts(n, shots)"
            )
        if len(tp) == 0:
            raise ValueError("no prompts given; sample some with task.prompts(n=..., shots=...)")
        longest = max(map(len, tp.tokens))
        if longest > self.n_ctx:
            raise PromptTooLongError(
                f"a prompt has {longest} tokens but the model's context is {self.n_ctx}; use fewer shots or shorter texts"
            )
        return tp

    def _check_tokenizer(self, tp: TokenizedPrompts) -> None:
        from icl_heads.prompts.tokenization import tokenizer_fingerprint

        ours = tokenizer_fingerprint(self.tokenizer)
        if tp.tokenizer_fingerprint and tp.tokenizer_fingerprint != ours:
            raise ValueError(
                f"these TokenizedPrompts were made by another tokenizer (fingerprint {tp.tokenizer_fingerprint}) than "
                f"this model's {type(self.tokenizer).__name__} ({ours}), so their token ids mean other words here; "
                "pass the text prompts (task.prompts(...)) and each model tokenizes them itself"
            )
        vocab = int(self.W_U.shape[1])
        top = max((max(t) for t in tp.tokens if t), default=0)
        if top >= vocab:
            raise ValueError(
                f"token id {top} is outside this model's vocabulary of {vocab}; these prompts were tokenized for "
                "another model: pass the text prompts (task.prompts(...)) instead"
            )

    def pad_id(self) -> int:
        tok = self.tokenizer
        return int(next((c for c in (tok.pad_token_id, tok.eos_token_id) if c is not None), 0))

    def batches(
        self, tp: TokenizedPrompts, batch_size: int, padding_side: str = "right", *, by_length: bool = False
    ) -> Iterable[PromptBatch]:
        return tp.batches(batch_size, padding_side, self.pad_id(), by_length=by_length)

    @property
    def device(self) -> torch.device:
        return self.W_U.device

    def run(
        self, batch: PromptBatch, *, hooks: Hooks = (), capture: Sequence[Capture] = ()
    ) -> tuple[Float[Tensor, "batch d_vocab"], dict[str, Tensor]]:
        """One forward pass: final-position logits (float32) and the captured activations.

        ``hooks`` (an :class:`~icl_heads.engine.Intervention` or ``(hook_name, fn)`` pairs) run before the captures.
        """
        from icl_heads._resume import forward

        intervention = as_intervention(hooks)
        if intervention.edits_pattern:
            require_pattern_edits(self, type(intervention).__name__)
        stored: dict[str, Tensor] = {}
        rows = torch.arange(len(batch.golds))
        finals = batch.final_positions

        def make(c: Capture) -> HookFn:
            def fn(act: Tensor, hook: Any) -> None:
                r, f = rows.to(act.device), finals.to(act.device)
                where = {"final": (r, f), "pattern_final": (r, slice(None), f)}.get(c.where, ...)
                stored[c.name] = act[where].detach().float()

            return fn

        fwd = [*intervention.hooks_for(batch), *((c.name, make(c)) for c in capture)]
        kw = {"attention_mask": batch.attention_mask.to(self.device)} if batch.has_padding else {}
        logits = forward(self, batch.tokens.to(self.device), fwd, kw)
        return logits[rows.to(logits.device), finals.to(logits.device)].float(), stored


def batches(
    access: ModelAccess,
    tp: TokenizedPrompts,
    options: RunOptions | None = None,
    *,
    desc: str = "running",
    by_length: bool = False,
) -> Iterator[PromptBatch]:
    """The batches of ``tp`` under ``options``, with a progress bar named ``desc`` when asked for.

    This is the one loop over prompts. ``by_length`` groups prompts of similar length (less padding, the
    same results); batches then come in length order, so place per-prompt results by ``batch.index``.
    """
    options = run_options(options)
    parts = list(access.batches(tp, options.batch_size, options.padding_side, by_length=by_length))
    yield from tqdm(parts, desc=desc, disable=not options.progress)


class UnfaithfulModelError(RuntimeError):
    """The model breaks an identity the analyses rely on, so they refuse to return numbers."""


_PATTERN_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def probe_tokens(access: Any, n_prompts: int, n_tokens: int, seed: int) -> Tensor:
    """Random probe tokens from the model's vocabulary, starting with BOS where the model prepends one."""
    tok = access.model.tokenizer
    vocab = int(access.W_U.shape[1]) if tok is None else min(int(access.W_U.shape[1]), len(tok))
    tokens = torch.randint(0, vocab, (n_prompts, n_tokens), generator=torch.Generator().manual_seed(seed))
    bos = getattr(tok, "bos_token_id", None)
    if bos is not None and getattr(access.cfg, "default_prepend_bos", True):
        tokens[:, 0] = bos
    return tokens


def pattern_edits_apply(access: Any) -> bool:
    """Whether editing ``hook_pattern`` changes what the heads read, measured on the first and last layer.

    TransformerLens 4 delegates attention to the Hugging Face module for some families (GPT-J,
    GPT-Neo, OPT) and discards edits of the pattern there.
    """
    return per_model(_PATTERN_CACHE, access.model, lambda: _probe_pattern_edits(access))


def _probe_pattern_edits(access: Any) -> bool:
    """Make every query attend to the first position only: ``z`` must then equal that position's value."""
    tokens = probe_tokens(access, 1, min(12, access.n_ctx), seed=1).to(access.device)
    ok, got = True, {}

    def keep(key: str) -> HookFn:
        return lambda act, hook: got.__setitem__(key, act.detach().float().clone())

    def first_only(pattern: Tensor, hook: Any) -> Tensor:
        return torch.zeros_like(pattern).index_fill_(-1, torch.tensor([0], device=pattern.device), 1)

    for layer in sorted({0, access.n_layers - 1}):
        got.clear()
        fwd = [(access.hook(layer, "v"), keep("v")), (access.hook(layer, "pattern"), first_only)]
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            access.model.run_with_hooks(tokens, fwd_hooks=[*fwd, (access.hook(layer, "z"), keep("z"))])
        v, z = got["v"], got["z"]  # [batch, pos, kv, d_head], [batch, pos, head, d_head]
        kv = torch.arange(z.shape[2], device=v.device) // (z.shape[2] // v.shape[2])
        ok = ok and torch.allclose(z, v[:, :1, kv].expand_as(z), atol=1e-4 * max(1.0, float(v.abs().max())), rtol=1e-3)
    return ok


def require_pattern_edits(access: Any, analysis: str = "this correction") -> None:
    """Refuse to build or run a correction that edits attention patterns on a model that discards such edits.

    Raises:
        UnfaithfulModelError: edits of ``hook_pattern`` do not change the heads' outputs.
    """
    if not pattern_edits_apply(access):
        raise UnfaithfulModelError(
            f"{analysis} refuses this {access.architecture} model: its attention is computed inside the Hugging Face "
            "module, which discards edits of hook_pattern, so a correction that rescales attention would silently "
            "change nothing. Use the OV-compensation correction (method='ov'), which edits hook_z and works here"
        )
