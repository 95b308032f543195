"""Decompose the label logits into every head, MLP, the embeddings and the bias terms.

With the final norm's scale frozen from the real forward pass (``ln_final.hook_scale``
at the final position) the map from the residual stream to the logits is linear, so
the label logits at the final position are exactly the sum over components ``j`` of

``g_j = W_U[:, labels] . norm(c_j)``

where ``c_j`` is a head's output ``z W_O`` (from ``hook_z``), an MLP's output
(``hook_mlp_out``), the embeddings (``hook_embed`` plus ``hook_pos_embed`` for learned
positions) or the bias terms (every layer's ``b_O``; the final norm's bias and ``b_U``
are added to this component's logits). Both sides use the model's own ``W_U``, so
the identity is exact even for a centred unembedding (which shifts all of a
prompt's logits by one constant relative to the uncentred model, changing neither
the label-set argmax nor the label-set softmax). Each component alone is a classifier (argmax
of ``g_j``); :meth:`Decomposition.kinds` sorts them into good (better than the whole
model), bad (significantly below chance) and label-biased (almost always one label).
:func:`component_stability` compares component accuracies across demonstration sets
and templates (Chang, Thomason & Jia, 2024).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from scipy.stats import binom
from torch import Tensor
from tqdm.auto import tqdm

from icl_heads.engine import RunOptions, batches
from icl_heads.faithfulness import tolerance_for
from icl_heads.models import Capture, ModelAccess
from icl_heads.prompts import ICLPrompt, ICLPrompts, ICLTask, TokenizedPrompts
from icl_heads.results import Result, provenance

logger = logging.getLogger(__name__)

KINDS = ("label-biased", "good", "bad", "other")


def component_table(n_layers: int, n_heads: int) -> pd.DataFrame:
    """Names and places of all components, in decomposition order.

    Order: ``embed``, then for each layer its heads ``L{l}H{h}`` and ``MLP{l}``, then
    ``bias``. ``layer``/``head`` are ``-1`` where they do not apply.
    """
    rows = [{"component": "embed", "type": "embed", "layer": -1, "head": -1}]
    for layer in range(n_layers):
        rows += [{"component": f"L{layer}H{h}", "type": "head", "layer": layer, "head": h} for h in range(n_heads)]
        rows.append({"component": f"MLP{layer}", "type": "mlp", "layer": layer, "head": -1})
    rows.append({"component": "bias", "type": "bias", "layer": -1, "head": -1})
    return pd.DataFrame(rows)


def wilson_interval(k: np.ndarray, n: int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Wilson 95% interval of a proportion ``k / n`` (vectorised over ``k``)."""
    p = np.asarray(k, dtype=float) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def component_accuracy_table(
    logits: Float[Tensor, "prompt component label"], golds: Int[Tensor, " prompt"], meta: pd.DataFrame
) -> pd.DataFrame:
    """Accuracy of each component alone, its Wilson interval and its most predicted label.

    ``meta`` is the :func:`component_table` of the components, in the order of ``logits``.
    """
    pred = logits.argmax(-1)  # [prompt, component]
    n, _, n_labels = logits.shape
    correct = (pred == golds[:, None]).sum(0).numpy()
    counts = torch.stack([(pred == c).sum(0) for c in range(n_labels)], -1).numpy()  # [component, label]
    lo, hi = wilson_interval(correct, n)
    df = meta.copy()
    df["accuracy"] = correct / n
    df["ci_low"], df["ci_high"] = lo, hi
    df["top_label"] = counts.argmax(-1)
    df["top_label_share"] = counts.max(-1) / n
    df["n"] = n
    return df


@dataclass(frozen=True, repr=False)
class Decomposition(Result):
    """The label logits of every component at each prompt's final position.

    Attributes:
        logits: ``[prompt, component, label]`` logits ``g_j`` of each component.
        full_logits: ``[prompt, label]`` label logits of the whole model.
        golds: gold class per prompt.
        names: component names (``embed``, ``L{l}H{h}``, ``MLP{l}``, ``bias``).
        label_words: the label word of each class.
        n_layers: layers of the model.
        n_heads: heads per layer.
        reconstruction_error: largest ``|sum_j g_j - full_logits|`` over prompts and labels.
        df: one row per component: ``component, type, layer, head, accuracy, ci_low,
            ci_high, top_label, top_label_share, n``.
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    logits: Float[Tensor, "prompt component label"]
    full_logits: Float[Tensor, "prompt label"]
    golds: Int[Tensor, " prompt"]
    names: tuple[str, ...]
    label_words: tuple[str, ...]
    n_layers: int
    n_heads: int
    reconstruction_error: float
    df: pd.DataFrame
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _title: ClassVar[str] = "Component decomposition"

    @classmethod
    def from_tensors(
        cls,
        logits: Float[Tensor, "prompt component label"],
        full_logits: Float[Tensor, "prompt label"],
        golds: Int[Tensor, " prompt"],
        *,
        n_layers: int,
        n_heads: int,
        label_words: Sequence[str] | None = None,
        config: dict | None = None,
        provenance: dict | None = None,
    ) -> Decomposition:
        """Build a decomposition from component logits (in :func:`component_table` order).

        Raises:
            ValueError: shapes that do not agree with each other or with ``n_layers`` x ``n_heads``.
        """
        meta = component_table(n_layers, n_heads)
        logits, full_logits, golds = logits.detach().float().cpu(), full_logits.detach().float().cpu(), golds.cpu()
        n, c, k = logits.shape if logits.ndim == 3 else (0, 0, 0)
        if logits.ndim != 3 or c != len(meta) or full_logits.shape != (n, k) or golds.shape != (n,) or n == 0:
            raise ValueError(
                f"expected logits [prompt, {len(meta)} components, label], full_logits [prompt, label] and golds "
                f"[prompt] for {n_layers} layers x {n_heads} heads; got {tuple(logits.shape)}, "
                f"{tuple(full_logits.shape)}, {tuple(golds.shape)}"
            )
        return cls(
            logits=logits,
            full_logits=full_logits,
            golds=golds,
            names=tuple(meta.component),
            label_words=tuple(label_words) if label_words is not None else tuple(f"label{i}" for i in range(k)),
            n_layers=n_layers,
            n_heads=n_heads,
            reconstruction_error=float((logits.sum(1) - full_logits).abs().max()),
            df=component_accuracy_table(logits, golds, meta),
            config=dict(config or {}),
            provenance=dict(provenance or {}),
        )

    @property
    def n_prompts(self) -> int:
        return int(self.logits.shape[0])

    @property
    def n_labels(self) -> int:
        return int(self.logits.shape[2])

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly: ``1 / n_labels``."""
        return 1.0 / self.n_labels

    @property
    def full_accuracy(self) -> float:
        """Label-set accuracy of the whole model."""
        return int((self.full_logits.argmax(-1) == self.golds).sum()) / self.n_prompts

    def total(self) -> Float[Tensor, "prompt label"]:
        """Sum of all components: equals :attr:`full_logits` up to float error."""
        return self.logits.sum(1)

    def component(self, name: str) -> Float[Tensor, "prompt label"]:
        """Logits of one component by name.

        Raises:
            KeyError: an unknown name (lists a few valid ones).
        """
        if name not in self.names:
            raise KeyError(f"no component {name!r}; components are e.g. {list(self.names[:4])} ... {self.names[-1]!r}")
        return self.logits[:, self.names.index(name)]

    def accuracy(self) -> pd.DataFrame:
        """Accuracy of each component alone (argmax of its label logits), with a 95% Wilson interval."""
        return self.df.copy()

    def kinds(self, *, bias_threshold: float = 0.9, alpha: float = 0.05, correction: str = "none") -> pd.DataFrame:
        """Classify every component as good, bad, label-biased or other.

        * good: accuracy above the whole model's;
        * bad: accuracy significantly below chance (one-sided binomial test against
          ``1 / n_labels``, p < ``alpha``);
        * label-biased: predicts one label on at least ``bias_threshold`` of prompts.

        The ``kind`` column takes the first that applies in the order label-biased,
        good, bad, other; the boolean columns are independent.

        Args:
            bias_threshold: share of prompts on one label that makes a component label-biased.
            alpha: significance level of the binomial test.
            correction: ``"none"`` or ``"bonferroni"`` (multiply p-values by the number of components).

        Returns:
            :meth:`accuracy` plus ``p_below_chance, good, bad, label_biased, kind``.

        Raises:
            ValueError: a threshold or level outside (0, 1], or an unknown correction.
        """
        if not 0 < bias_threshold <= 1:
            raise ValueError(f"bias_threshold must be in (0, 1], got {bias_threshold}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if correction not in ("none", "bonferroni"):
            raise ValueError(f"correction must be 'none' or 'bonferroni', got {correction!r}")
        df = self.accuracy()
        n = self.n_prompts
        k = np.rint(df.accuracy.to_numpy() * n).astype(int)
        p = binom.cdf(k, n, self.chance)  # one-sided binomial test: P(X <= k) under chance
        if correction == "bonferroni":
            p = np.minimum(1.0, p * len(p))
        df["p_below_chance"] = p
        df["good"] = df.accuracy > self.full_accuracy
        df["bad"] = p < alpha
        df["label_biased"] = df.top_label_share >= bias_threshold
        df["kind"] = np.select([df.label_biased, df.good, df.bad], list(KINDS[:3]), default="other")
        return df

    def kind_summary(self, **kinds_kw: Any) -> pd.DataFrame:
        """How many components of each kind, by type, with their accuracy range and best examples.

        Args:
            **kinds_kw: passed to :meth:`kinds`.
        """
        df = self.kinds(**kinds_kw)
        rows = []
        for kind in KINDS:
            part = df[df.kind == kind].sort_values("accuracy", ascending=kind == "bad", kind="stable")
            rows.append(
                {
                    "kind": kind,
                    "n": len(part),
                    "heads": int((part.type == "head").sum()),
                    "mlps": int((part.type == "mlp").sum()),
                    "other_components": int(part.type.isin(["embed", "bias"]).sum()),
                    "min_accuracy": float(part.accuracy.min()) if len(part) else float("nan"),
                    "max_accuracy": float(part.accuracy.max()) if len(part) else float("nan"),
                    "examples": ", ".join(part.component.head(5)),
                }
            )
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        df = self.kinds()
        best, worst = df.loc[df.accuracy.idxmax()], df.loc[df.accuracy.idxmin()]
        return {
            "prompts": self.n_prompts,
            "components": len(self.names),
            "full-model accuracy": self.full_accuracy,
            "best component": f"{best.component} ({best.accuracy:.3f})",
            "worst component": f"{worst.component} ({worst.accuracy:.3f})",
            "good / bad / label-biased": f"{int(df.good.sum())} / {int(df.bad.sum())} / {int(df.label_biased.sum())}",
            "reconstruction error": self.reconstruction_error,
            **(
                {"logits": f"before the final soft cap at {self.config['logit_soft_cap']:g} (same predictions)"}
                if self.config.get("logit_soft_cap")
                else {}
            ),
        }

    def heatmap(self, **kinds_kw: Any) -> go.Figure:
        """Layer x head heatmap of each head's accuracy alone, centred at chance; good heads outlined."""
        from icl_heads.plots.components import accuracy_heatmap

        return accuracy_heatmap(self, **kinds_kw)

    def plot_accuracy(self, **kinds_kw: Any) -> go.Figure:
        """All components sorted by accuracy, coloured by kind, with the whole model and chance marked."""
        from icl_heads.plots.components import accuracy_bars

        return accuracy_bars(self, **kinds_kw)


def _readout(access: ModelAccess, label_ids: Tensor) -> tuple[Tensor, Tensor]:
    """The frozen final norm and unembedding at scale 1 as one matrix, and the constant logits.

    ``final_norm(x, s) @ W_U[:, labels] == (x @ readout) / s`` for any ``x`` (the norm is
    linear once its scale is frozen); ``const`` is the final norm's bias and ``b_U``.
    """
    W_UL = access.W_U[:, label_ids].float()
    eye = torch.eye(access.d_model, device=W_UL.device)
    readout = access.final_norm(eye, torch.ones(access.d_model, 1, device=W_UL.device)) @ W_UL
    const = access.final_norm_bias().to(W_UL.device) @ W_UL + access.b_U[label_ids].float()
    return readout, const


def _written_W_O(access: ModelAccess, layer: int) -> Float[Tensor, "head d_head d_model"]:
    """``W_O`` of layer ``layer`` times the weight of its post-attention norm, if it has one (scale 1)."""
    W = access.W_O(layer).float()
    norm = access.post_attn_norm(layer)
    return W if norm is None else norm.linear(W, torch.ones(1, device=W.device))


def _default_atol(dtype: torch.dtype, scale: float) -> float:
    return tolerance_for(dtype) * max(1.0, scale)


def decompose(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    batch_size: int = 32,
    padding_side: str = "right",
    atol: float | None = None,
    progress: bool = False,
) -> Decomposition:
    """Label logits of every head, MLP, the embeddings and the bias terms at each prompt's final position.

    One forward pass per batch keeps only ``hook_z`` and ``hook_mlp_out`` of every
    layer, the embeddings and ``ln_final.hook_scale``, at the final position.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: prompts from :meth:`~icl_heads.prompts.ICLTask.prompts` or :func:`fixed_demo_prompts`.
        batch_size: prompts per forward pass (does not change the result).
        padding_side: ``"right"`` or ``"left"`` (does not change the result).
        atol: largest accepted ``|sum_j g_j - model label logits|``; default the
            identities' tolerance for the model's dtype times ``max(1, |logits|)``
            (``1e-4`` in float32, ``1e-2`` in float16, ``5e-2`` in bfloat16; docs/models.md).
        progress: show a progress bar.

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
    access = ModelAccess(model, analysis="decompose")
    tp = access.tokenize(prompts)
    L, H = access.n_layers, access.n_heads
    meta = component_table(L, H)
    label_ids = torch.tensor(tp.label_token_ids, device=access.device)
    readout, const = _readout(access, label_ids)  # [d_model, label], [label]
    # each head's readout through its W_O (and a post-attention norm's weight): [head, d_head, label],
    # so z never expands to d_model
    head_readout = [torch.einsum("hdm,ml->hdl", _written_W_O(access, layer), readout) for layer in range(L)]
    caps = [Capture(access.hook(layer, name)) for layer in range(L) for name in ("z", "mlp_out")]
    caps += [Capture("blocks.0.hook_resid_pre"), Capture("ln_final.hook_scale")]
    caps += [Capture(name) for name in access.write_captures()]
    parts, fulls = [], []
    for batch in batches(access, tp, RunOptions(batch_size, padding_side, progress), desc="decomposing"):
        logits, got = access.run(batch, capture=caps)
        got = {k: v.to(readout.device) for k, v in got.items()}
        scale = got["ln_final.hook_scale"]  # [b, 1]
        g = torch.empty(len(batch.golds), len(meta), len(label_ids), device=readout.device)
        # the embeddings as they enter the first block (learned positions, embedding norms and scales included)
        g[:, 0] = got["blocks.0.hook_resid_pre"] @ readout / scale
        bias = torch.zeros(len(batch.golds), access.d_model, device=readout.device)
        for layer in range(L):
            start = 1 + layer * (H + 1)
            z = got[access.hook(layer, "z")]  # [b, head, d_head]
            heads = torch.einsum("bhd,hdl->bhl", z, head_readout[layer]) / scale[:, None]
            post = access.post_attn_scale(layer, got)
            g[:, start : start + H] = heads if post is None else heads / post[:, None]
            g[:, start + H] = got[access.hook(layer, "mlp_out")] @ readout / scale
            bias = bias + access.bias_write(layer, got).to(readout.device)
        g[:, -1] = bias @ readout / scale + const
        parts.append(g.cpu())
        fulls.append(access.uncap(logits[:, label_ids.to(logits.device)]).cpu())
    g_all, full = torch.cat(parts), torch.cat(fulls)
    error = float((g_all.sum(1) - full).abs().max())
    tol = atol if atol is not None else _default_atol(access.W_U.dtype, float(full.abs().max()))
    if error > tol:
        raise RuntimeError(
            f"decompose refuses: on this {access.architecture} model the components add up to the label logits only "
            f"within {error:.3g} (tolerance {tol:.3g}) on these prompts, although the identities hold on a random "
            "probe (ih.check_faithfulness(model)); the per-component numbers would be wrong. Check the prompts' "
            "padding and the model's dtype (half-precision tolerances are in docs/models.md)"
        )
    return Decomposition.from_tensors(
        g_all,
        full,
        torch.tensor(tp.golds),
        n_layers=L,
        n_heads=H,
        label_words=tp.prompts.task.label_words,
        config={"batch_size": batch_size, "padding_side": padding_side, "logit_soft_cap": access.logit_soft_cap},
        provenance=provenance(access.name, tp, architecture=access.architecture),
    )


def fixed_demo_prompts(
    task: ICLTask, demos: Sequence[int | np.integer] | np.ndarray, queries: Sequence[int | np.integer] | np.ndarray
) -> ICLPrompts:
    """Prompts that share one demonstration set: ``demos`` then each query, in order.

    Args:
        task: the task whose examples the indices refer to.
        demos: indices into ``task.texts`` of the demonstrations, in prompt order.
        queries: indices of the queries (one prompt each).

    Returns:
        One prompt per query.

    Raises:
        ValueError: no queries, an index out of range, or a query that is also a demonstration.
    """
    demos, queries = [int(i) for i in demos], [int(i) for i in queries]
    if not queries:
        raise ValueError("no queries given; pass at least one example index as a query")
    bad = [i for i in demos + queries if not 0 <= i < len(task.texts)]
    if bad:
        raise ValueError(f"example indices {bad[:5]} are outside the task's {len(task.texts)} examples")
    if set(demos) & set(queries):
        raise ValueError(f"examples {sorted(set(demos) & set(queries))[:5]} are both demonstrations and queries")
    shown = tuple((task.texts[i], task.labels[i]) for i in demos)
    out = tuple(ICLPrompt(demos=shown, query=task.texts[q], gold=task.labels[q]) for q in queries)
    config = {"n": len(queries), "shots": len(demos), "demos": demos, "fixed_demos": True}
    return ICLPrompts(prompts=out, task=task, config=config)


def balanced_sample(
    labels: np.ndarray, n: int, rng: np.random.Generator, exclude: Sequence[int | np.integer] | np.ndarray = ()
) -> np.ndarray:
    """``n`` example indices, as balanced over classes as possible, in random order.

    Raises:
        ValueError: a class has too few examples left.
    """
    k = int(labels.max()) + 1
    per = np.full(k, n // k)
    per[rng.choice(k, n % k, replace=False)] += 1
    free = np.setdiff1d(np.arange(len(labels)), np.asarray(exclude, dtype=int))
    picks = []
    for c in range(k):
        pool = free[labels[free] == c]
        if len(pool) < per[c]:
            raise ValueError(f"class {c} has {len(pool)} unused examples but {per[c]} are needed; use a larger task")
        picks.append(rng.choice(pool, per[c], replace=False))
    return rng.permutation(np.concatenate(picks))


@dataclass(frozen=True, repr=False)
class ComponentStability(Result):
    """How stable component accuracies are across demonstration sets and templates.

    Attributes:
        df: one row per pair of runs that differ in one factor: ``axis`` ("demo set"
            or "template"), ``fixed`` (the shared factor), ``a``, ``b``, ``pearson``
            (of component accuracies), ``top_iou`` (of the top components),
            ``full_accuracy_a``, ``full_accuracy_b``.
        runs: one row per (template, demo set): ``template, demo_set, full_accuracy,
            best_component, best_accuracy``.
        (:meth:`summary` gives mean Pearson and IoU per axis next to the standard
        deviation, ``ddof=0``, of full-model and of component accuracies.)
        accuracies: ``[template, demo_set, component]`` accuracy of each component alone.
        names: component names.
        templates: the templates.
        config: the arguments that produced this result.
        provenance: model, versions.
    """

    df: pd.DataFrame
    runs: pd.DataFrame
    accuracies: Float[Tensor, "template demo_set component"]
    names: tuple[str, ...]
    templates: tuple[str, ...]
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    _title: ClassVar[str] = "Component stability"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for axis in ("demo set", "template"):
            part = self.df[self.df.axis == axis]
            if len(part):
                out[f"pearson across {axis}s"] = float(part.pearson.mean())
                out[f"top-{self.config.get('top', 5)} IoU across {axis}s"] = float(part.top_iou.mean())
        full = self.runs.pivot(index="template", columns="demo_set", values="full_accuracy")
        out["full-model accuracy (mean)"] = float(full.values.mean())
        out["full-model accuracy std across demo sets"] = float(full.std(axis=1, ddof=0).mean())
        out["component accuracy std across demo sets"] = float(self.accuracies.std(1, correction=0).mean())
        if len(full) > 1:
            out["full-model accuracy std across templates"] = float(full.std(axis=0, ddof=0).mean())
            out["component accuracy std across templates"] = float(self.accuracies.std(0, correction=0).mean())
        return out

    def scatter(self, axis: str = "demo set", pair: int = 0) -> go.Figure:
        """Component accuracy in one run against another (one pair of ``axis``), names on hover."""
        from icl_heads.plots.components import stability_scatter

        return stability_scatter(self, axis=axis, pair=pair)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        logger.warning("component accuracies are constant in one run; their correlation is undefined (NaN)")
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _top(acc: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-acc, kind="stable")[:k].tolist())


def component_stability(
    model: Any,
    task: ICLTask,
    *,
    templates: Sequence[str] | None = None,
    n_demo_sets: int = 5,
    shots: int = 4,
    n: int = 200,
    top: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = False,
) -> ComponentStability:
    """Compare component accuracies across demonstration sets and templates.

    Every run shares one set of ``n`` balanced queries; each demonstration set is
    ``shots`` balanced examples (disjoint from the queries) prepended to every query.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task (its template is used when ``templates`` is None).
        templates: templates to compare.
        n_demo_sets: demonstration sets per template (at least 2, or 1 with 2+ templates).
        shots: demonstrations per set.
        n: queries.
        top: size of the top-component sets compared by IoU.
        seed: seed of the queries and demonstration sets.
        batch_size: prompts per forward pass.
        progress: show a progress bar.

    Returns:
        A :class:`ComponentStability` result.

    Raises:
        ValueError: fewer than two runs to compare along any axis, ``top < 1``, or too few examples.
    """
    templates = tuple(templates) if templates is not None else (task.template,)
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    if n_demo_sets < 1 or (n_demo_sets < 2 and len(templates) < 2):
        raise ValueError(f"need two demonstration sets or two templates to compare; got n_demo_sets={n_demo_sets}")
    labels = np.asarray(task.labels)
    queries = balanced_sample(labels, n, np.random.default_rng([seed, 0]))
    demo_sets = [
        balanced_sample(labels, shots, np.random.default_rng([seed, 1, d]), queries) for d in range(n_demo_sets)
    ]
    acc: dict[tuple[int, int], np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    names: tuple[str, ...] = ()
    steps = [(t, d) for t in range(len(templates)) for d in range(n_demo_sets)]
    for t, d in tqdm(steps, desc="component stability", disable=not progress):
        dec = decompose(
            model, fixed_demo_prompts(task.with_template(templates[t]), demo_sets[d], queries), batch_size=batch_size
        )
        names = dec.names
        acc[t, d] = dec.df.accuracy.to_numpy()
        best = dec.df.loc[dec.df.accuracy.idxmax()]
        rows.append(
            {"template": templates[t], "demo_set": d, "full_accuracy": dec.full_accuracy,
             "best_component": best.component, "best_accuracy": float(best.accuracy)}
        )  # fmt: skip
    a = np.stack([np.stack([acc[t, d] for d in range(n_demo_sets)]) for t in range(len(templates))])
    full = np.array([r["full_accuracy"] for r in rows]).reshape(len(templates), n_demo_sets)
    pairs = []
    for t in range(len(templates)):
        for d1, d2 in combinations(range(n_demo_sets), 2):
            pairs.append(_pair("demo set", templates[t], d1, d2, a[t, d1], a[t, d2], full[t, d1], full[t, d2], top))
    for d in range(n_demo_sets):
        for t1, t2 in combinations(range(len(templates)), 2):
            pairs.append(
                _pair("template", d, templates[t1], templates[t2], a[t1, d], a[t2, d], full[t1, d], full[t2, d], top)
            )
    access = ModelAccess(model, analysis="component_stability")
    return ComponentStability(
        df=pd.DataFrame(pairs),
        runs=pd.DataFrame(rows),
        accuracies=torch.tensor(a, dtype=torch.float32),
        names=tuple(names),
        templates=templates,
        config={"n_demo_sets": n_demo_sets, "shots": shots, "n": n, "top": top, "seed": seed},
        provenance=provenance(access.name, None, task=task.name, n_queries=n),
    )


def _pair(axis: str, fixed: Any, a: Any, b: Any, x: np.ndarray, y: np.ndarray, fa: float, fb: float, top: int) -> dict:
    ta, tb = _top(x, top), _top(y, top)
    return {
        "axis": axis, "fixed": str(fixed), "a": str(a), "b": str(b), "pearson": _pearson(x, y),
        "top_iou": len(ta & tb) / len(ta | tb), "full_accuracy_a": float(fa), "full_accuracy_b": float(fb),
    }  # fmt: skip
