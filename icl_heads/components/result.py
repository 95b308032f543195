"""The result of a decomposition: each component's label logits, its accuracy alone (Wilson interval) and its kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.stats import binom
from torch import Tensor

from icl_heads.records import UNSET, Provenance, Record, check_choice, check_positive
from icl_heads.results import Figure, Result, json_type
from icl_heads.stats import Estimate, wilson

KINDS = ("label-biased", "good", "bad", "other")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class DecompositionConfig(Record):
    """How :func:`~icl_heads.decompose` ran, and the final-logit soft cap it decomposed before."""

    batch_size: int = UNSET
    padding_side: str = UNSET
    logit_soft_cap: float | None = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "batch_size")
        check_choice(self, "padding_side", ("left", "right"))


def component_table(n_layers: int, n_heads: int) -> pd.DataFrame:
    """Names and places of all components, in decomposition order.

    Order: ``embed``, then for each layer its heads ``L{l}H{h}`` and ``MLP{l}``, then ``bias``. ``layer``/``head`` are
    ``-1`` where they do not apply.
    """
    rows = [("embed", "embed", -1, -1)]
    for layer in range(n_layers):
        rows += [(f"L{layer}H{h}", "head", layer, h) for h in range(n_heads)] + [(f"MLP{layer}", "mlp", layer, -1)]
    return pd.DataFrame([*rows, ("bias", "bias", -1, -1)], columns=["component", "type", "layer", "head"])


def component_accuracy_table(
    logits: Float[Tensor, "prompt component label"],
    golds: Int[Tensor, " prompt"],
    meta: pd.DataFrame,
    label_words: Sequence[str],
) -> pd.DataFrame:
    """Accuracy of each component alone, its Wilson interval and its most predicted label (a label word).

    ``meta`` is the :func:`component_table` of the components, in the order of ``logits``.
    """
    pred, n = logits.argmax(-1), len(logits)  # [prompt, component]
    correct = (pred == golds[:, None]).sum(0).numpy()
    counts = torch.stack([(pred == c).sum(0) for c in range(logits.shape[2])], -1).numpy()  # [component, label]
    df = meta.assign(accuracy=correct / n)
    df["ci_low"], df["ci_high"] = zip(*(wilson(int(c), n).ci for c in correct), strict=True)
    return df.assign(top_label=[label_words[i] for i in counts.argmax(-1)], top_label_share=counts.max(-1) / n, n=n)


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
        df: one row per component: ``component, type, layer, head, accuracy, ci_low, ci_high, top_label,
            top_label_share, n``.
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
    config: DecompositionConfig = field(default_factory=DecompositionConfig)
    provenance: Provenance = field(default_factory=Provenance)
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
        config: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
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
        words = tuple(label_words) if label_words is not None else tuple(f"label{i}" for i in range(k))
        error = float((logits.sum(1) - full_logits).abs().max())
        df = component_accuracy_table(logits, golds, meta, words)
        cfg, prov = DecompositionConfig.from_dict(config or {}), Provenance.from_dict(provenance or {})
        return cls(logits, full_logits, golds, tuple(meta.component), words, n_layers, n_heads, error, df, cfg, prov)

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
    def full_accuracy(self) -> Estimate:
        """Label-set accuracy of the whole model, with its 95% Wilson interval."""
        return wilson(int((self.full_logits.argmax(-1) == self.golds).sum()), self.n_prompts)

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
        * bad: accuracy significantly below chance (one-sided binomial test against ``1 / n_labels``, p < ``alpha``);
        * label-biased: predicts one label on at least ``bias_threshold`` of prompts.

        The ``kind`` column takes the first that applies in the order label-biased, good, bad, other; the boolean
        columns are independent.

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
        # one-sided binomial test: P(X <= k) under chance
        p = binom.cdf(np.rint(df.accuracy.to_numpy() * self.n_prompts).astype(int), self.n_prompts, self.chance)
        df["p_below_chance"] = np.minimum(1.0, p * len(p)) if correction == "bonferroni" else p
        df["good"], df["bad"] = df.accuracy > self.full_accuracy, df.p_below_chance < alpha
        df["label_biased"] = df.top_label_share >= bias_threshold
        df["kind"] = np.select([df.label_biased, df.good, df.bad], list(KINDS[:3]), default="other")
        return df

    def kind_summary(self, **kinds_kw: Any) -> pd.DataFrame:
        """How many components of each kind, by type, with their accuracy range and best examples.

        Args:
            **kinds_kw: passed to :meth:`kinds`.
        """
        df, rows = self.kinds(**kinds_kw), []
        for kind in KINDS:
            part = df[df.kind == kind].sort_values("accuracy", ascending=kind == "bad", kind="stable")
            t, acc = part.type, part.accuracy  # min and max are NaN when no component is of this kind
            n_types = [int((t == "head").sum()), int((t == "mlp").sum()), int(t.isin(["embed", "bias"]).sum())]
            rows.append([kind, len(part), *n_types, acc.min(), acc.max(), ", ".join(part.component.head(5))])
        columns = ["kind", "n", "heads", "mlps", "other_components", "min_accuracy", "max_accuracy", "examples"]
        return pd.DataFrame(rows, columns=columns)

    def summary(self) -> dict[str, Any]:
        df = self.kinds()
        best, worst = df.loc[df.accuracy.idxmax()], df.loc[df.accuracy.idxmin()]
        cap = self.config.get("logit_soft_cap")
        return {
            "prompts": self.n_prompts,
            "components": len(self.names),
            "full-model accuracy": self.full_accuracy,
            "best component": f"{best.component} ({best.accuracy:.3f})",
            "worst component": f"{worst.component} ({worst.accuracy:.3f})",
            "good / bad / label-biased": f"{int(df.good.sum())} / {int(df.bad.sum())} / {int(df.label_biased.sum())}",
            "reconstruction error": self.reconstruction_error,
            **({"logits": f"before the final soft cap at {cap:g} (same predictions)"} if cap else {}),
        }

    def heatmap(self, **kinds_kw: Any) -> Figure:
        """Layer x head heatmap of each head's accuracy alone, centred at chance; good heads outlined."""
        return self._draw("heatmap", **kinds_kw)

    def plot(self, **kinds_kw: Any) -> Figure:
        """The main figure: the layer x head heatmap of :meth:`heatmap`."""
        return self.heatmap(**kinds_kw)

    def plot_accuracy(self, **kinds_kw: Any) -> Figure:
        """All components sorted by accuracy, coloured by kind, with the whole model and chance marked."""
        return self._draw("plot_accuracy", **kinds_kw)
