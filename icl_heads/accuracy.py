"""ICL accuracy over the label set and over the whole vocabulary, with Wilson intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icl_heads.access import ModelAccess, batches
from icl_heads.engine import Hooks, intervention_key, memoised, prompt_key
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.records import Provenance
from icl_heads.results import Result, provenance
from icl_heads.stats import Estimate, wilson


@dataclass(frozen=True)
class Predictions:
    """Per-prompt outputs of one evaluation pass."""

    label_logits: Float[Tensor, "prompt label"]
    strict_correct: Int[Tensor, " prompt"]
    golds: Int[Tensor, " prompt"]

    @property
    def predicted(self) -> Int[Tensor, " prompt"]:
        return self.label_logits.argmax(-1)

    @property
    def correct(self) -> Int[Tensor, " prompt"]:
        return (self.predicted == self.golds).long()

    @property
    def gold_logprob(self) -> Float[Tensor, " prompt"]:
        """Log-probability of the gold label, normalised over the label set."""
        return self.label_logits.log_softmax(-1).gather(1, self.golds[:, None])[:, 0]


def predict(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    hooks: Hooks = (),
    options: RunOptions | None = None,
    first_token: bool = False,
) -> Predictions:
    """Label-set logits and whole-vocabulary correctness at every prompt's final position.

    The same prompts under the same intervention are run once (memoised on the model).

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: the prompts.
        hooks: forward hooks to apply (e.g. a head ablation or a correction).
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.
        first_token: score the first token of label words of several tokens.

    Raises:
        TypeError, ValueError: see :class:`~icl_heads.access.ModelAccess`.
    """
    options = run_options(options)
    access = ModelAccess(model)
    tp = access.tokenize(prompts, first_token=first_token)
    label_ids = torch.tensor(tp.label_token_ids)

    def compute() -> Predictions:
        logits = torch.zeros(len(tp), len(label_ids))
        strict = torch.zeros(len(tp), dtype=torch.long)
        for batch in batches(access, tp, options, desc="evaluating", by_length=True):
            final, _ = access.run(batch, hooks=hooks)
            logits[batch.index] = final[:, label_ids.to(final.device)].cpu()
            strict[batch.index] = (final.argmax(-1).cpu() == label_ids[batch.golds]).long()
        return Predictions(logits, strict, torch.tensor(tp.golds))

    return memoised(access.model, ("predict", prompt_key(tp), intervention_key(hooks)), compute)


@dataclass(frozen=True, repr=False)
class AccuracyResult(Result):
    """Accuracy of a model on ICL prompts.

    Attributes:
        df: one row per scope (``all``, each gold label): ``accuracy``, ``strict_accuracy``, Wilson 95%, ``n``.
        label_logits: ``[prompt, label]`` logits of the label tokens.
        golds: gold class per prompt.
        strict_correct: 1 where the whole-vocabulary argmax is the gold token.
    """

    df: pd.DataFrame
    label_logits: Tensor
    golds: Tensor
    strict_correct: Tensor
    provenance: Provenance = field(default_factory=Provenance)
    _title = "ICL accuracy"

    def _overall(self, prefix: str) -> Estimate:
        row = self.df.loc[self.df.scope == "all"].iloc[0]
        value = row[f"{prefix}accuracy"]
        return Estimate(value, row[f"{prefix}ci_low"], row[f"{prefix}ci_high"], int(row.n), "wilson")

    @property
    def accuracy(self) -> Estimate:
        """Label-set accuracy over all prompts, with its 95% Wilson interval."""
        return self._overall("")

    @property
    def strict_accuracy(self) -> Estimate:
        """Whole-vocabulary accuracy over all prompts, with its 95% Wilson interval."""
        return self._overall("strict_")

    @property
    def ci(self) -> tuple[float, float]:
        return self.accuracy.ci

    def summary(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "95% CI": self.ci,
            "strict_accuracy": self.strict_accuracy,
            "n": len(self.golds),
        }


def interval_columns(est: Estimate, prefix: str = "") -> dict[str, float]:
    """The columns ``{prefix}accuracy``, ``{prefix}ci_low`` and ``{prefix}ci_high`` of an estimate."""
    return {f"{prefix}accuracy": est.value, f"{prefix}ci_low": est.low, f"{prefix}ci_high": est.high}


def accuracy_table(pred: Predictions, label_words: Sequence[str]) -> pd.DataFrame:
    """Accuracy, strict accuracy and their Wilson intervals overall and per gold label."""
    rows = []
    golds = pred.golds
    scopes = [("all", torch.ones_like(golds, dtype=torch.bool))]
    for scope, mask in scopes + [(f"gold={w}", golds == i) for i, w in enumerate(label_words)]:
        if mask.any():
            row: dict[str, Any] = {"scope": scope}
            for prefix, hits in (("", pred.correct), ("strict_", pred.strict_correct)):
                row |= interval_columns(wilson(int(hits[mask].sum().item()), int(mask.sum())), prefix)
            rows.append(row | {"n": int(mask.sum())})
    return pd.DataFrame(rows)


def icl_accuracy(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    hooks: Hooks = (),
    options: RunOptions | None = None,
    first_token: bool = False,
) -> AccuracyResult:
    """ICL accuracy over the label set and strict accuracy over the whole vocabulary.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: prompts from :meth:`~icl_heads.prompts.ICLTask.prompts`.
        hooks: forward hooks to apply (e.g. from :func:`~icl_heads.interventions.ablate_hooks`).
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.
        first_token: score the first token of label words of several tokens (else ``LabelTokenError``).

    Returns:
        An :class:`AccuracyResult` with overall and per-gold-label rows.

    Raises:
        TypeError: an unsupported model or prompts object.
        ValueError: empty prompts, bad batch size or padding side.
        PromptTooLongError: a prompt longer than the model's context.
        LabelTokenError: a label word that is not one token (unless ``first_token``).
    """
    options = run_options(options)
    access = ModelAccess(model)
    tp = access.tokenize(prompts, first_token=first_token)
    pred = predict(access, tp, hooks=hooks, options=options)
    return AccuracyResult(
        df=accuracy_table(pred, tp.prompts.task.label_words),
        label_logits=pred.label_logits,
        golds=pred.golds,
        strict_correct=pred.strict_correct,
        provenance=provenance(access.name, tp, first_token=first_token),
    )
