"""Head definitions side by side: function-vector heads, induction heads and in-context heads.

Three ways the field names the heads that carry in-context learning, each a score for every
head ``(layer, head)`` with its cost in forward passes (as the cost ledger counts them):

* ``function_vector`` (Todd et al., ICLR 2024): the average indirect effect (AIE) of a head's
  mean output. ``z̄`` is the head's ``hook_z`` at the final position averaged over clean
  few-shot prompts; it is patched at the final position into the same prompts with their
  demonstration labels shuffled, and ``AIE = mean_prompts [P_patched(gold) - P_corrupted(gold)]``.
  One pass per batch runs the clean and the shuffled prompts together (the means and the
  corrupted baseline), then one pass per head: ``n_batches × (1 + L·H)`` passes.
* ``induction`` (Olsson et al., 2022): prefix matching on sequences of random tokens repeated
  twice: the attention from each token of the second copy to the token right after that
  token's first occurrence, averaged. One pass per batch of sequences.
* ``in_context`` (Yu & Ananiadou, 2024): the package's own score
  (:func:`~icl_heads.scoring.score_heads`, ``logprob_increase`` by default), one pass per batch.

:func:`compare_head_definitions` scores all three on one task, compares their top-``k`` sets
(Jaccard) and full rankings (Spearman), and ablates each top set against random sets of the
same size on held-out prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from itertools import combinations
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.stats import spearmanr
from torch import Tensor

from icl_heads._checks import check_int
from icl_heads.access import Capture, Head, ModelAccess, batches
from icl_heads.accuracy import predict
from icl_heads.engine import count_cost
from icl_heads.faithfulness import faithful_access
from icl_heads.heads import accuracy_row, random_head_sets
from icl_heads.interventions import HeadAblation
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompt, ICLPrompts, ICLTask, PromptBatch, TokenizedPrompts
from icl_heads.records import UNSET, Provenance, Record, check_choice
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.scoring import METHODS, n_selected, score_heads, top_heads
from icl_heads.stats import empirical_p, from_samples

DEFINITIONS = ("in_context", "function_vector", "induction")
#: what the AIE's probabilities are normalised over: the task's label words, or the whole vocabulary
PROBS = ("labels", "vocab")


def shuffled_labels(prompts: ICLPrompts, seed: int = 0) -> ICLPrompts:
    """The same prompts with each prompt's demonstration labels permuted at random (texts, query and gold kept)."""
    rng = np.random.default_rng(seed)
    out = []
    for p in prompts.prompts:
        labels = rng.permutation([y for _, y in p.demos])
        out.append(ICLPrompt(tuple((t, int(y)) for (t, _), y in zip(p.demos, labels, strict=True)), p.query, p.gold))
    return replace(prompts, prompts=tuple(out), config=prompts.config.updated(condition="shuffled labels"))


def _stack(a: PromptBatch, b: PromptBatch) -> PromptBatch:
    """The rows of ``a`` then those of ``b`` in one batch (both padded to the same width)."""
    names = [f.name for f in fields(a) if isinstance(getattr(a, f.name), Tensor)]
    return replace(a, **{k: torch.cat([getattr(a, k), getattr(b, k)]) for k in names})


def _p_gold(logits: Tensor, label_ids: Tensor, golds: Tensor, probs: str) -> Tensor:
    rows = torch.arange(len(golds))
    if probs == "labels":
        return logits[:, label_ids].softmax(-1)[rows, golds]
    return logits.softmax(-1)[rows, label_ids[golds]]


def _fv(access: ModelAccess, clean: TokenizedPrompts, corrupt: TokenizedPrompts, probs: str, options: RunOptions,
        into: dict | None = None) -> Tensor:  # fmt: skip
    """Per-prompt ``P_patched - P_corrupted`` ``[prompt, layer, head]``; mean ``P(gold)`` clean and shuffled ``into``."""
    L, H = access.n_layers, access.n_heads
    label_ids, n = torch.tensor(clean.label_token_ids), len(clean)
    parts = list(batches(access, corrupt, options, desc="function-vector heads"))
    total, p_clean, p_corrupt = torch.zeros(L, H, access.d_head), torch.zeros(n), torch.zeros(n)
    caps = [Capture(access.hook(layer, "z")) for layer in range(L)]
    for batch in parts:  # one pass: the clean prompts (for the means) above the shuffled ones (the baseline)
        twin = PromptBatch.build(clean, batch.index.tolist(), batch.padding_side, access.pad_id())
        if twin.tokens.shape != batch.tokens.shape:
            raise ValueError("a prompt tokenizes to another length once its labels are shuffled; use one-token labels")
        logits, got = access.run(_stack(twin, batch), capture=caps)
        b = len(batch.index)
        for layer in range(L):
            total[layer] += got[caps[layer].name][:b].cpu().sum(0)
        p = _p_gold(logits.cpu(), label_ids, torch.cat([twin.golds, batch.golds]), probs)
        p_clean[batch.index], p_corrupt[batch.index] = p[:b], p[b:]
    means = total / n
    aie = torch.zeros(n, L, H)
    for batch in parts:  # one pass per head, each resumed at the head's layer from the batch's clean residuals
        for layer in range(L):
            for head in range(H):
                patch = HeadAblation(((layer, head),), how="mean", where="final", means=means)
                logits, _ = access.run(batch, hooks=patch)
                p = _p_gold(logits.cpu(), label_ids, batch.golds, probs)
                aie[batch.index, layer, head] = p - p_corrupt[batch.index]
    if into is not None:
        into.update(clean=float(p_clean.mean()), shuffled=float(p_corrupt.mean()))
    return aie


def function_vector_scores(
    model: Any, prompts: ICLPrompts, *, seed: int = 0, probs: str = "labels", options: RunOptions | None = None
) -> Float[Tensor, "prompt layer head"]:
    """Each head's indirect effect on each prompt (Todd et al., 2024); the mean over prompts is the AIE.

    The head's mean ``hook_z`` at the final position over ``prompts`` replaces its output at
    the final position of the same prompts with their demonstration labels shuffled
    (:func:`shuffled_labels`); the effect is ``P_patched(gold) - P_corrupted(gold)``. With
    ``probs="labels"`` (default) probabilities are a softmax over the task's label words;
    ``probs="vocab"`` takes the softmax over the whole vocabulary, as the reference code
    (``ericwtodd/function_vectors``, ``compute_indirect_effect``) does for open-ended outputs.
    Cost: ``n_batches × (1 + L·H)`` passes.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts, each with at least two demonstrations.
        seed: seed of the label shuffle.
        probs: ``"labels"`` or ``"vocab"``.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        ``[prompt, layer, head]`` effects.

    Raises:
        ValueError: an unknown ``probs``, prompts with fewer than two demonstrations, or label
            words that are not one token (:class:`~icl_heads.prompts.LabelTokenError`).
        TypeError: an unsupported model or prompts object.
    """
    options = run_options(options)
    access, clean, corrupt = _fv_inputs(model, prompts, seed, probs)
    return _fv(faithful_access(access, "function_vector_scores"), clean, corrupt, probs, options)


def _fv_inputs(model: Any, prompts: ICLPrompts, seed: int, probs: str) -> tuple[ModelAccess, Any, Any]:
    if probs not in PROBS:
        raise ValueError(f"probs must be one of {PROBS}, got {probs!r}")
    if not isinstance(prompts, ICLPrompts):
        raise TypeError(f"expected prompts from task.prompts(...), got {type(prompts).__name__}")
    few = [i for i, p in enumerate(prompts.prompts) if len(p.demos) < 2]
    if few:
        raise ValueError(f"prompt {few[0]} has fewer than 2 demonstrations: shuffling its labels changes nothing")
    access, seed = ModelAccess(model), check_int("seed", seed, minimum=0)
    return access, access.tokenize(prompts), access.tokenize(shuffled_labels(prompts, seed))


def repeated_random_tokens(model: Any, n: int, length: int | None = None, seed: int = 0) -> tuple[Tensor, int]:
    """``n`` sequences of ``length`` distinct random non-special tokens, repeated twice (after a BOS if the model adds one).

    Returns:
        ``[n, bos + 2 * length]`` token ids and the position of the first copy's first token.

    Raises:
        ValueError: ``length`` below 2, or too long for the model's context or vocabulary.
    """
    access = ModelAccess(model)
    tok = access.tokenizer
    special = set(tok.all_special_ids)
    pool = torch.tensor([i for i in range(min(int(access.W_U.shape[1]), len(tok))) if i not in special])
    bos = int(bool(getattr(access.cfg, "default_prepend_bos", True)) and tok.bos_token_id is not None)
    most = min(len(pool), (access.n_ctx - bos) // 2)
    length = min(32, most) if length is None else check_int("length", length)
    if not 2 <= length <= most:
        raise ValueError(f"length must be between 2 and {most} (the context and the non-special tokens), got {length}")
    gen = torch.Generator().manual_seed(seed)
    rand = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:length]] for _ in range(n)])
    first = torch.full((n, bos), tok.bos_token_id or 0, dtype=torch.long)
    return torch.cat([first, rand, rand], 1), bos


def induction_scores(
    model: Any, *, n_seqs: int = 16, length: int | None = None, seed: int = 0, options: RunOptions | None = None
) -> Float[Tensor, "seq layer head"]:
    """Prefix-matching scores (Olsson et al., 2022) on repeated random tokens (:func:`repeated_random_tokens`).

    For each sequence and head: the mean over the second copy's positions ``d`` of the attention
    from ``d`` to the token right after the first occurrence of ``d``'s token. One pass per
    ``options.batch_size`` sequences.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        n_seqs: random sequences.
        length: tokens per copy (default 32, or fewer if the context or vocabulary is smaller).
        seed: seed of the tokens.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`; sequences have no padding).

    Returns:
        ``[seq, layer, head]`` scores in [0, 1].

    Raises:
        ValueError: ``n_seqs < 1`` or a bad ``length``.
    """
    options = run_options(options)
    check_int("n_seqs", n_seqs, minimum=1)
    access = ModelAccess(model)
    tokens, start = repeated_random_tokens(access, n_seqs, length, seed)
    T = (tokens.shape[1] - start) // 2
    n, width = tokens.shape
    caps = [Capture(access.hook(layer, "pattern"), "all") for layer in range(access.n_layers)]
    dest = torch.arange(start + T, start + 2 * T)
    out = torch.zeros(n, access.n_layers, access.n_heads)
    for lo in range(0, n, options.batch_size):
        rows = torch.arange(lo, min(n, lo + options.batch_size))
        none = torch.zeros(len(rows), 0, dtype=torch.long)
        batch = PromptBatch(rows, tokens[rows], torch.ones(len(rows), width, dtype=torch.long),
                            torch.full((len(rows),), width - 1), none, none, torch.zeros(len(rows), dtype=torch.long),
                            "right")  # fmt: skip
        _, got = access.run(batch, capture=caps)
        for layer, cap in enumerate(caps):
            out[rows, layer] = got[cap.name][:, :, dest, dest - T + 1].mean(-1).cpu()
    return out


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class HeadDefinitionsConfig(Record):
    """Arguments of :func:`~icl_heads.head_definitions.compare_head_definitions`."""

    n: int = UNSET
    shots: int = UNSET
    n_trials: int = UNSET
    n_seqs: int = UNSET
    k: int = UNSET
    method: str = UNSET
    probs: str = UNSET
    n_random: int = UNSET
    seed: int = UNSET

    def __post_init__(self) -> None:
        check_choice(self, "probs", PROBS)


@dataclass(frozen=True, repr=False)
class HeadDefinitions(Result):
    """Function-vector, induction and in-context head scores of one model, side by side.

    Attributes:
        scores: ``{definition: [layer, head]}`` mean scores (:data:`DEFINITIONS`).
        top: ``{definition: heads}``, each definition's top ``k`` heads, best first.
        k: the size of the top sets: the in-context heads' top set (top 1%, at least one) unless given.
        df: one row per definition and head: ``definition, layer, head, name, score, rank, top``.
        overlap: one row per pair of definitions: ``a, b, jaccard`` (of the top sets),
            ``spearman, spearman_p`` (of all heads' scores, ``scipy.stats.spearmanr``).
        ablation: held-out accuracy with no ablation and with each top set zero-ablated
            (Wilson 95% over prompts, ``n`` prompts), against ``n_random`` random sets of the
            same size that exclude it (mean and central 95% of the sets), with ``rank_p``.
        cost: forward passes (and prompt rows) each definition made in this run, with its formula.
        fv_baseline: mean ``P(gold)`` of the AIE's prompts, ``clean`` and with labels ``shuffled``
            (the gap the patched heads can restore).
        warnings: plain statements of where a comparison is undefined.
        config, provenance: arguments and origin.
    """

    scores: dict
    top: dict
    k: int
    df: pd.DataFrame
    overlap: pd.DataFrame
    ablation: pd.DataFrame
    cost: pd.DataFrame
    fv_baseline: dict = field(default_factory=dict)
    warnings: tuple = ()
    config: HeadDefinitionsConfig = field(default_factory=HeadDefinitionsConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Head definitions side by side"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self._warning_summary(), "k (top-set size)": self.k}
        for d in DEFINITIONS:
            out[f"top {d} heads"] = ", ".join(f"L{a}H{b}" for a, b in self.top[d])
        for row in self.overlap.itertuples():
            out[f"{row.a} vs {row.b}: Jaccard / Spearman"] = f"{row.jaccard:.2f} / {row.spearman:.2f}"
        abl = self.ablation.set_index("condition")
        for d in DEFINITIONS:
            r = abl.loc[d]
            out[f"accuracy, top {d} ablated / random"] = f"{r.accuracy:.3f} / {r.random_accuracy:.3f}"
        fv = self.fv_baseline
        out["FV prompts: P(gold) clean / shuffled"] = f"{fv['clean']:.3f} / {fv['shuffled']:.3f}"
        out["passes"] = ", ".join(f"{r.definition} {r.passes}" for r in self.cost.itertuples())
        return out

    def plot(self) -> Figure:
        """The three scores as layer x head heatmaps (top sets outlined) and the rank correlations between them."""
        return self._draw("plot")

    def plot_ablation(self) -> Figure:
        """Accuracy with each definition's top set ablated against random sets of the same size."""
        return self._draw("plot_ablation")


def _tidy(scores: dict[str, Tensor], top: dict[str, tuple[Head, ...]]) -> pd.DataFrame:
    rows = []
    for d, table in scores.items():
        order = top_heads(table, table.numel())
        for rank, (layer, head) in enumerate(order, 1):
            rows.append({"definition": d, "layer": layer, "head": head, "name": f"L{layer}H{head}",
                         "score": float(table[layer, head]), "rank": rank, "top": (layer, head) in top[d]})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["definition", "layer", "head"], ignore_index=True)


def _ablation(access, held, top, n_random, seed, options) -> pd.DataFrame:
    base = predict(access, held, options=options)
    rows = [accuracy_row("none", base, n=len(held))]
    for d, heads in top.items():
        found = predict(access, held, hooks=HeadAblation(heads), options=options)
        sets = random_head_sets(access.n_layers, access.n_heads, len(heads), n_random, seed, exclude=heads)
        rand = np.array([float(predict(access, held, hooks=HeadAblation(s), options=options).correct.float().mean())
                         for s in sets])  # fmt: skip
        r = from_samples(float(rand.mean()), rand)
        acc = float(found.correct.float().mean())
        rows.append(accuracy_row(d, found, n=len(held), heads=", ".join(f"L{a}H{b}" for a, b in heads),
                                 random_accuracy=r.value, random_ci_low=r.low, random_ci_high=r.high,
                                 n_sets=n_random, rank_p=empirical_p(acc, rand)))  # fmt: skip
    return pd.DataFrame(rows)


def compare_head_definitions(
    model: Any, task: ICLTask, *, n: int = 64, shots: int = 4, n_trials: int = 32, n_seqs: int = 16,
    k: int | None = None, method: str = "logprob_increase", probs: str = "labels", n_random: int = 20,
    seed: int = 0, options: RunOptions | None = None,
) -> HeadDefinitions:  # fmt: skip
    """Score every head by the three definitions, compare their top sets and rankings, ablate each top set.

    The in-context score is computed on ``task.prompts(n, shots, seed)``, the function-vector
    AIE on ``task.prompts(n_trials, shots, seed)`` (the "trials") with shuffled labels, the
    induction score on ``n_seqs`` repeated random sequences, and every ablation on
    ``task.prompts(n, shots, seed + 1)`` (held out): the prompts ``icl-heads analyze`` scores
    and checks with ``--n-prompts n --seed seed``, so its ablations are read back there.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        task: the task (its label words must be one token each for the model).
        n: prompts for the in-context score, and held-out prompts for the ablations.
        shots: demonstrations per prompt (at least 2: the AIE shuffles them).
        n_trials: prompts for the function-vector AIE (``n_batches × (1 + L·H)`` passes).
        n_seqs: random sequences for the induction score.
        k: size of every top set (default: the in-context heads' top 1%, at least one).
        method: the in-context score (one of :data:`~icl_heads.scoring.METHODS`).
        probs: the AIE's probabilities: over the ``"labels"`` (default) or the ``"vocab"``.
        n_random: random head sets per top set (at least 2).
        seed: seed of the prompts, the label shuffle, the random tokens and the random sets.
        options: how prompts are run: batch size, padding side, progress bar; does not
            change the result (a :class:`~icl_heads.options.RunOptions`).

    Returns:
        A :class:`HeadDefinitions`.

    Raises:
        ValueError: ``n``, ``n_trials`` or ``n_seqs`` below 1, ``shots`` below 2, ``k`` outside
            ``1..L·H``, an unknown ``method`` or ``probs``, ``n_random`` below 2, or label words
            that are not one token for this model; all before any forward pass.
        TypeError: an unsupported model, or ``task`` not an ``ICLTask``.
    """
    options = run_options(options)
    for name, value, low in (("n", n, 1), ("n_trials", n_trials, 1), ("n_seqs", n_seqs, 1), ("shots", shots, 2),
                             ("n_random", n_random, 2), ("seed", seed, 0)):  # fmt: skip
        check_int(name, value, minimum=low)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    if probs not in PROBS:
        raise ValueError(f"probs must be one of {PROBS}, got {probs!r}")
    if not isinstance(task, ICLTask):
        raise TypeError(f"task must be an ICLTask (e.g. ih.organism_task()), got {type(task).__name__}")
    access = ModelAccess(model)
    k = n_selected(access.n_layers * access.n_heads, 0.01 if k is None else None, k)
    scored, held = access.tokenize(task.prompts(n, shots, seed)), access.tokenize(task.prompts(n, shots, seed + 1))
    _, clean, corrupt = _fv_inputs(access, task.prompts(n_trials, shots, seed), seed, probs)
    access = faithful_access(access, "compare_head_definitions")
    quiet, L, H = run_options(options, progress=False), access.n_layers, access.n_heads
    scores, cost, fv = {}, [], {}
    runs = {
        "in_context": lambda: score_heads(access, scored, methods=(method,), options=quiet)[method],
        "function_vector": lambda: _fv(access, clean, corrupt, probs, quiet, fv),
        "induction": lambda: induction_scores(access, n_seqs=n_seqs, seed=seed, options=quiet),
    }
    nb = {d: -(-m // options.batch_size) for d, m in zip(DEFINITIONS, (n, n_trials, n_seqs), strict=True)}
    formula = {
        "in_context": "{} batches",
        "function_vector": f"{{}} batches x (1 + {L}x{H})",
        "induction": "{} batches",
    }
    for d, run in runs.items():
        with count_cost() as ledger:
            scores[d] = run().mean(0)
        c = ledger.total
        cost.append({"definition": d, "passes": c.passes, "rows": c.rows, "layer_tokens": c.layer_tokens,
                     "formula": formula[d].format(nb[d])})  # fmt: skip
    top = {d: top_heads(s, k) for d, s in scores.items()}
    with count_cost() as ledger:
        ablation = _ablation(access, held, top, n_random, seed, quiet)
    cost.append({"definition": "ablation checks", "passes": ledger.total.passes, "rows": ledger.total.rows,
                 "layer_tokens": ledger.total.layer_tokens, "formula": f"{nb['in_context']} batches x (1 + 3 x (1 + {n_random})), less reused ones"})  # fmt: skip
    pairs, warnings = [], []
    for a, b in combinations(DEFINITIONS, 2):
        sa, sb = set(top[a]), set(top[b])
        if scores[a].std() == 0 or scores[b].std() == 0:
            warnings.append(f"{a if scores[a].std() == 0 else b} scores every head the same: no rank correlation")
            rho = p = float("nan")
        else:
            rho, p = spearmanr(scores[a].flatten().numpy(), scores[b].flatten().numpy())
        pairs.append({"a": a, "b": b, "jaccard": len(sa & sb) / len(sa | sb), "spearman": float(rho),
                      "spearman_p": float(p)})  # fmt: skip
    config = HeadDefinitionsConfig(n=n, shots=shots, n_trials=n_trials, n_seqs=n_seqs, k=k, method=method,
                                   probs=probs, n_random=n_random, seed=seed)  # fmt: skip
    return HeadDefinitions(
        scores=scores, top=top, k=k, df=_tidy(scores, top), overlap=pd.DataFrame(pairs), ablation=ablation,
        cost=pd.DataFrame(cost), fv_baseline=fv, warnings=tuple(warnings), config=config, provenance=provenance(access.name, held),
    )  # fmt: skip
