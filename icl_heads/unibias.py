"""UniBias (Zhou et al., NeurIPS 2024): mask the heads and FFN neurons that push one label whatever the prompt.

The criteria, the grid search and the differences from the authors' code are in ``docs/methods.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_heads._checks import check_grid, check_int, check_real
from icl_heads.access import Capture, Head, ModelAccess, batches
from icl_heads.components.decompose import label_readout, written_W_O
from icl_heads.engine import HookFn, Intervention
from icl_heads.faithfulness import faithful_access
from icl_heads.interventions import HeadAblation, by_layer, check_heads
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, ICLTask, PromptBatch

Neuron = tuple[int, int]


@dataclass(frozen=True)
class ComponentMask(Intervention):
    """Zero chosen heads' outputs (``hook_z``) and FFN neurons (``hook_mlp_post``) at each prompt's final position.

    Attributes:
        heads: ``(layer, head)`` pairs.
        neurons: ``(layer, neuron)`` pairs.
    """

    heads: tuple[Head, ...] = ()
    neurons: tuple[Neuron, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(sorted((int(a), int(b)) for a, b in self.heads)))
        object.__setattr__(self, "neurons", tuple(sorted((int(a), int(b)) for a, b in self.neurons)))

    def hooks_for(self, batch: PromptBatch) -> list[tuple[str, HookFn]]:
        hooks = HeadAblation(self.heads, where="final").hooks_for(batch) if self.heads else []
        return hooks + [
            (ModelAccess.hook(layer, "mlp_post"), _zero_final(ns, batch.final_positions))
            for layer, ns in by_layer(self.neurons).items()
        ]


def _zero_final(neurons: list[int], finals: Tensor) -> HookFn:
    def fn(act: Tensor, hook: Any) -> Tensor:
        rows, act = torch.arange(act.shape[0], device=act.device), act.clone()
        idx = torch.tensor(neurons, device=act.device)
        act[rows[:, None], (finals.to(act.device) % act.shape[1])[:, None], idx] = 0
        return act

    return fn


@dataclass(frozen=True)
class UniBiasGrid:
    """The thresholds searched: every combination is one candidate set of components.

    Attributes:
        relatedness: minimum share of the model's centred label-logit scale.
        bias: minimum consistency of the push over prompts (0..1).
        cv: maximum coefficient of variation over prompts.
        min_label_mass: a candidate must keep this share of the label words' mean probability.
    """

    relatedness: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2)
    bias: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
    cv: tuple[float, ...] = (0.25, 0.5, 1.0)
    min_label_mass: float = 0.95

    def __post_init__(self) -> None:
        object.__setattr__(self, "relatedness", check_grid("relatedness", self.relatedness, limits=(0, math.inf)))
        object.__setattr__(self, "bias", check_grid("bias", self.bias, limits=(0, 1)))
        object.__setattr__(self, "cv", check_grid("cv", self.cv, limits=(0, math.inf)))
        check_real("min_label_mass", self.min_label_mass, limits=(0, 1))


@dataclass(frozen=True, eq=False)
class UniBias:
    """What :func:`fit_unibias` found.

    Attributes:
        intervention: the mask of the chosen components (an :class:`ComponentMask`).
        thresholds: ``(relatedness, bias, cv)`` of the chosen set (``None`` when no set beat "no change").
        components: one row per head and neuron: ``component, kind, layer, index, relatedness,
            bias, cv`` (the criteria on the tuning prompts).
        candidates: one row per distinct candidate set: ``n_heads, n_neurons, imbalance, label_mass,
            admissible, chosen`` and the first thresholds that select it.
        n_tune: labelled prompts used; passes: forward passes over all of them (``1 +`` the candidates).
    """

    intervention: ComponentMask
    thresholds: tuple[float, float, float] | None
    components: pd.DataFrame = field(repr=False)
    candidates: pd.DataFrame = field(repr=False)
    n_tune: int = 0
    passes: int = 0


def component_label_logits(
    model: Any, prompts: ICLPrompts, *, options: RunOptions | None = None
) -> tuple[Float[Tensor, "prompt head label"], Float[Tensor, "prompt neuron label"], Float[Tensor, "prompt label"]]:
    """Label logits of every head (``layer * n_heads + head``), every neuron (``layer * d_mlp + n``) and the model.

    Head and neuron logits go through the frozen final norm (no bias terms); one forward pass per batch.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: the prompts.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Raises:
        UnfaithfulModelError: the model breaks the linear identities; ValueError: a
            model with a norm after its MLP (Gemma-2/3, OLMo-2), whose neurons' writes are not linear.
    """
    options = run_options(options)
    access = faithful_access(model, "fit_unibias")
    if "blocks.0.ln2_post.hook_scale" in access.model.hook_dict:
        raise ValueError(f"UniBias refuses this {access.architecture} model: a norm after each MLP makes a neuron's "
                         "write depend on the others, so its label logits are not defined alone")  # fmt: skip
    tp = access.tokenize(prompts)
    label_ids = torch.tensor(tp.label_token_ids, device=access.device)
    readout, _ = label_readout(access, label_ids)
    layers = range(access.n_layers)
    head_ro = [torch.einsum("hdm,ml->hdl", written_W_O(access, layer), readout) for layer in layers]
    neuron_ro = [access.W_out(layer).float() @ readout for layer in layers]  # [d_mlp, label]
    caps = [Capture(access.hook(layer, n)) for layer in layers for n in ("z", "mlp_post")]
    caps += [Capture("ln_final.hook_scale"), *(Capture(n) for n in access.write_captures())]
    heads, neurons, full = [], [], []
    for batch in batches(access, tp, options, desc="UniBias projections"):
        logits, got = access.run(batch, capture=caps)
        scale = got["ln_final.hook_scale"].to(readout.device)
        hs, ns = [], []
        for layer in layers:
            h = torch.einsum("bhd,hdl->bhl", got[access.hook(layer, "z")].to(readout.device), head_ro[layer])
            post = access.post_attn_scale(layer, got)
            hs.append(h / scale[:, None] if post is None else h / scale[:, None] / post.to(h.device)[:, None])
            ns.append(
                got[access.hook(layer, "mlp_post")].to(readout.device)[:, :, None] * neuron_ro[layer] / scale[:, None]
            )
        heads.append(torch.cat(hs, 1).cpu())
        neurons.append(torch.cat(ns, 1).cpu())
        full.append(access.uncap(logits[:, label_ids.to(logits.device)]).cpu())
    return torch.cat(heads), torch.cat(neurons), torch.cat(full)


def unibias_criteria(
    g: Float[Tensor, "prompt component label"], full: Float[Tensor, "prompt label"]
) -> Float[Tensor, "component 3"]:
    """Relatedness, bias and coefficient of variation of each component (see ``docs/methods.md``)."""
    d = g - g.mean(-1, keepdim=True)
    D = full - full.mean(-1, keepdim=True)
    mag = d.abs().sum(-1).mean(0)
    mean_abs = d.mean(0).abs().sum(-1)
    sd = d.std(0).sum(-1) if len(d) > 1 else torch.zeros_like(mag)
    rel = mag / D.abs().sum(-1).mean(0).clamp(min=1e-30)
    bias = torch.where(mag > 0, mean_abs / mag.clamp(min=1e-30), torch.zeros_like(mag))
    cv = torch.where(mean_abs > 0, sd / mean_abs.clamp(min=1e-30), torch.full_like(mag, math.inf))
    return torch.stack([rel, bias, cv], -1)


def label_imbalance(label_probs: Float[Tensor, "prompt label"], golds: Tensor) -> tuple[float, float]:
    """``mean_c |log(pbar_c / sum pbar) - log(freq_c)|`` over labels with gold prompts, and ``sum pbar``."""
    pbar = label_probs.mean(0)
    freq = torch.bincount(golds, minlength=len(pbar)).double() / len(golds)
    share = pbar.double() / pbar.sum().double()
    ok = freq > 0
    return float((share[ok].log() - freq[ok].log()).abs().mean()), float(pbar.sum())


def fit_unibias(
    model: Any,
    task: ICLTask,
    *,
    n_tune: int = 64,
    shots: int = 4,
    tune_seed: int = 0,
    prompts: ICLPrompts | None = None,
    grid: UniBiasGrid | None = None,
    options: RunOptions | None = None,
) -> UniBias:
    """Find the biased heads and FFN neurons on labelled tuning prompts and mask them (UniBias).

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task the tuning prompts come from.
        n_tune: tuning prompts (labelled) when ``prompts`` is not given.
        shots: demonstrations per tuning prompt.
        tune_seed: seed of the tuning prompts (keep it apart from the test prompts' seed).
        prompts: the tuning prompts themselves (from ``task``), instead of ``n_tune/shots/tune_seed``.
        grid: the thresholds searched (default :class:`UniBiasGrid`).
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`UniBias`; ``.intervention`` goes to ``hooks=`` of any analysis. Ties between the best
        admissible candidate sets go to the smaller set; the empty set (no change) is always a candidate.

    Raises:
        TypeError: ``task`` is not an ICLTask, or a bad ``grid``.
        ValueError: fewer than two tuning prompts, prompts from another task, bad thresholds.
    """
    options = run_options(options)
    grid = UniBiasGrid() if grid is None else grid
    if not isinstance(grid, UniBiasGrid):
        raise TypeError(f"grid must be a UniBiasGrid, got {type(grid).__name__}")
    if not isinstance(task, ICLTask):
        raise TypeError(f"expected an ICLTask, got {type(task).__name__}; e.g. icl_heads.organism_task()")
    if prompts is None:
        prompts = task.prompts(check_int("n_tune", n_tune, minimum=2), shots=shots, seed=tune_seed)
    if not isinstance(prompts, ICLPrompts):
        raise TypeError(f"prompts must be ICLPrompts from task.prompts(n, shots, seed), got {type(prompts).__name__}")
    if prompts.task != task:
        raise ValueError("the tuning prompts come from another task; sample them with task.prompts(n, shots, seed)")
    if len(prompts) < 2:
        raise ValueError(f"UniBias needs at least 2 tuning prompts to measure variance, got {len(prompts)}")
    access = faithful_access(model, "fit_unibias")
    g_heads, g_neurons, full = component_label_logits(access, prompts, options=options)
    crit = unibias_criteria(torch.cat([g_heads, g_neurons], 1), full)
    n_h, n_n, d_mlp = g_heads.shape[1], g_neurons.shape[1], g_neurons.shape[1] // access.n_layers
    layer = [j // access.n_heads for j in range(n_h)] + [j // d_mlp for j in range(n_n)]
    index = [j % access.n_heads for j in range(n_h)] + [j % d_mlp for j in range(n_n)]
    kind = ["head"] * n_h + ["neuron"] * n_n
    table = pd.DataFrame(
        {"component": [f"L{a}{'H' if k == 'head' else 'N'}{b}" for a, b, k in zip(layer, index, kind, strict=True)],
         "kind": kind, "layer": layer, "index": index,
         "relatedness": crit[:, 0].numpy(), "bias": crit[:, 1].numpy(), "cv": crit[:, 2].numpy()}
    )  # fmt: skip
    sets: dict[tuple[int, ...], tuple[float, float, float] | None] = {(): None}
    for th in itertools.product(grid.relatedness, grid.bias, grid.cv):
        chosen = (crit[:, 0] >= th[0]) & (crit[:, 1] >= th[1]) & (crit[:, 2] <= th[2])
        sets.setdefault(tuple(torch.nonzero(chosen)[:, 0].tolist()), th)
    rows = []
    for members, th in sets.items():
        mask = _mask(access, table, members)
        imbalance, mass = label_imbalance(_label_probs(access, prompts, mask, options), prompts.golds)
        rows.append({"n_heads": len(mask.heads), "n_neurons": len(mask.neurons), "imbalance": imbalance,
                     "label_mass": mass, "thresholds": th, "mask": mask})  # fmt: skip
    for r in rows:
        r["admissible"] = r["label_mass"] >= grid.min_label_mass * rows[0]["label_mass"]
    best = min((r for r in rows if r["admissible"]), key=lambda r: (r["imbalance"], r["n_heads"] + r["n_neurons"]))
    for r in rows:
        r["chosen"] = r is best
    candidates = pd.DataFrame([{k: v for k, v in r.items() if k != "mask"} for r in rows])
    return UniBias(best["mask"], best["thresholds"], table, candidates, len(prompts), 1 + len(rows))


def _mask(access: ModelAccess, table: pd.DataFrame, members: Sequence[int]) -> ComponentMask:
    chosen = table.iloc[list(members)]
    heads = [(int(r.layer), int(r.index)) for r in chosen.itertuples() if r.kind == "head"]
    neurons = [(int(r.layer), int(r.index)) for r in chosen.itertuples() if r.kind == "neuron"]
    return ComponentMask(check_heads(access, heads), tuple(neurons))


def _label_probs(
    access: ModelAccess, prompts: ICLPrompts, mask: ComponentMask, options: RunOptions
) -> Float[Tensor, "prompt label"]:
    """Whole-vocabulary probabilities of the label words at the final position, under ``mask``."""
    ids = torch.tensor((tp := access.tokenize(prompts)).label_token_ids)
    out = torch.zeros(len(tp), len(ids))
    for batch in batches(access, tp, run_options(options, progress=False)):
        logits, _ = access.run(batch, hooks=mask)
        out[batch.index] = logits.log_softmax(-1)[:, ids.to(logits.device)].exp().cpu()
    return out
