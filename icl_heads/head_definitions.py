"""Head definitions side by side: function-vector (Todd et al., 2024), induction (Olsson et al., 2022)
and in-context heads (Yu & Ananiadou, 2024), each a score per head with its cost in passes (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import combinations, product
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.stats import spearmanr
from torch import Tensor

from icl_heads._checks import check_int
from icl_heads.access import Capture, Head, ModelAccess, batches
from icl_heads.accuracy import interval_columns, predict
from icl_heads.engine import count_cost
from icl_heads.faithfulness import faithful_access
from icl_heads.heads import accuracy_row, random_accuracies
from icl_heads.interventions import HeadAblation
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompt, ICLPrompts, ICLTask, PromptBatch, TokenizedPrompts
from icl_heads.records import UNSET, Provenance, Record, check_choice
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.scoring import METHODS, head_names, n_selected, score_heads, stack_batches, top_heads
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


def _p_gold(logits: Tensor, label_ids: Tensor, golds: Tensor, probs: str) -> Tensor:
    rows = torch.arange(len(golds))
    if probs == "labels":
        return logits[:, label_ids].softmax(-1)[rows, golds]
    return logits.softmax(-1)[rows, label_ids[golds]]


def _fv(
    access: ModelAccess, clean: TokenizedPrompts, corrupt: TokenizedPrompts, probs: str, options: RunOptions, into: dict
) -> Tensor:
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
        logits, got = access.run(stack_batches(twin, batch), capture=caps)
        b = len(batch.index)
        total += torch.stack([got[cap.name][:b].cpu().sum(0) for cap in caps])
        p = _p_gold(logits.cpu(), label_ids, torch.cat([twin.golds, batch.golds]), probs)
        p_clean[batch.index], p_corrupt[batch.index] = p[:b], p[b:]
    means = total / n
    aie = torch.zeros(n, L, H)
    for batch, (layer, head) in product(parts, product(range(L), range(H))):  # one pass per head
        logits, _ = access.run(batch, hooks=HeadAblation(((layer, head),), how="mean", where="final", means=means))
        aie[batch.index, layer, head] = _p_gold(logits.cpu(), label_ids, batch.golds, probs) - p_corrupt[batch.index]
    into.update(clean=float(p_clean.mean()), shuffled=float(p_corrupt.mean()))
    return aie


def function_vector_scores(
    model: Any, prompts: ICLPrompts, *, seed: int = 0, probs: str = "labels", options: RunOptions | None = None
) -> Float[Tensor, "prompt layer head"]:
    """Each head's indirect effect on each prompt (Todd et al., 2024); the mean over prompts is the AIE.

    The head's mean final-position ``hook_z`` over ``prompts`` is patched into the same prompts
    with shuffled labels (:func:`shuffled_labels`): ``P_patched(gold) - P_corrupted(gold)``.
    Cost: ``n_batches × (1 + L·H)`` passes.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts, each with at least two demonstrations.
        seed: seed of the label shuffle.
        probs: softmax over the task's ``"labels"`` or the whole ``"vocab"`` (as ``ericwtodd/function_vectors``).
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        ``[prompt, layer, head]`` effects.

    Raises:
        ValueError: an unknown ``probs``, prompts with fewer than two demonstrations, or label
            words that are not one token (:class:`~icl_heads.prompts.LabelTokenError`).
        TypeError: an unsupported model or prompts object.
    """
    options = run_options(options)
    access, clean, corrupt = _fv_inputs(model, prompts, seed, probs)
    return _fv(faithful_access(access, "function_vector_scores"), clean, corrupt, probs, options, {})


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

    Per sequence and head: the mean attention from each position of the second copy to the token
    after that token's first occurrence. One pass per ``options.batch_size`` sequences.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        n_seqs: random sequences.
        length: tokens per copy (default 32, or fewer if the context or vocabulary is smaller).
        seed: seed of the tokens.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`; sequences have no padding).

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
        none, ones = torch.zeros(len(rows), 0, dtype=torch.long), torch.ones(len(rows), width, dtype=torch.long)
        finals, golds = torch.full((len(rows),), width - 1), torch.zeros(len(rows), dtype=torch.long)
        _, got = access.run(PromptBatch(rows, tokens[rows], ones, finals, none, none, golds, "right"), capture=caps)
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
        overlap: per pair of definitions: ``a, b, jaccard`` (top sets), ``spearman, spearman_p`` (all heads).
        ablation: held-out accuracy with no ablation and each top set zero-ablated (Wilson over ``n``
            prompts), against ``n_random`` random sets of its size (mean, central 95%), with ``rank_p``.
        cost: forward passes (and prompt rows) each definition made in this run, with its formula.
        fv_baseline: mean ``P(gold)`` of the AIE's prompts, ``clean`` and with labels ``shuffled``.
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
        out |= {f"top {d} heads": ", ".join(head_names(self.top[d])) for d in DEFINITIONS}
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
    rows = [
        {"definition": d, "layer": la, "head": h, "name": f"L{la}H{h}", "score": float(table[la, h]), "rank": rank}
        | {"top": (la, h) in top[d]}
        for d, table in scores.items()
        for rank, (la, h) in enumerate(top_heads(table, table.numel()), 1)
    ]
    return pd.DataFrame(rows).sort_values(["definition", "layer", "head"], ignore_index=True)


def _ablation(access, held, top, n_random, seed, options) -> pd.DataFrame:
    rows = [accuracy_row("none", predict(access, held, options=options), n=len(held))]
    for d, heads in top.items():
        found = predict(access, held, hooks=HeadAblation(heads), options=options)
        rand = random_accuracies(access, held, heads, n_random, seed, options=options).double().numpy()
        r, p = from_samples(float(rand.mean()), rand), empirical_p(float(found.correct.float().mean()), rand)
        randoms = interval_columns(r, "random_") | {"n_sets": n_random}
        rows.append(accuracy_row(d, found, n=len(held), heads=", ".join(head_names(heads)), **randoms, rank_p=p))
    return pd.DataFrame(rows)


def _cost_row(definition: str, ledger: Any, formula: str) -> dict[str, Any]:
    t = ledger.total
    return dict(definition=definition, passes=t.passes, rows=t.rows, layer_tokens=t.layer_tokens, formula=formula)


def compare_head_definitions(
    model: Any,
    task: ICLTask,
    *,
    n: int = 64,
    shots: int = 4,
    n_trials: int = 32,
    n_seqs: int = 16,
    k: int | None = None,
    method: str = "logprob_increase",
    probs: str = "labels",
    n_random: int = 20,
    seed: int = 0,
    options: RunOptions | None = None,
) -> HeadDefinitions:
    """Score every head by the three definitions, compare their top sets and rankings, ablate each top set.

    Prompts: ``task.prompts(n, shots, seed)`` for the in-context score, ``task.prompts(n_trials, shots,
    seed)`` for the AIE, ``task.prompts(n, shots, seed + 1)`` (held out) for every ablation: those of
    ``icl-heads analyze --n-prompts n --seed seed``, so its ablations are read back there.

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
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        A :class:`HeadDefinitions`.

    Raises:
        ValueError: ``n``, ``n_trials`` or ``n_seqs`` below 1, ``shots`` below 2, ``k`` outside
            ``1..L·H``, an unknown ``method`` or ``probs``, ``n_random`` below 2, or label words
            that are not one token for this model; all before any forward pass.
        TypeError: an unsupported model, or ``task`` not an ``ICLTask``.
    """
    options = run_options(options)
    names = ("n", "n_trials", "n_seqs", "shots", "n_random", "seed")
    for name, value, low in zip(names, (n, n_trials, n_seqs, shots, n_random, seed), (1, 1, 1, 2, 2, 0), strict=True):
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
    nb = {d: -(-m // options.batch_size) for d, m in zip(DEFINITIONS, (n, n_trials, n_seqs), strict=True)}
    runs = {
        "in_context": (lambda: score_heads(access, scored, methods=(method,), options=quiet)[method], "{} batches"),
        "function_vector": (lambda: _fv(access, clean, corrupt, probs, quiet, fv), f"{{}} batches x (1 + {L}x{H})"),
        "induction": (lambda: induction_scores(access, n_seqs=n_seqs, seed=seed, options=quiet), "{} batches"),
    }
    for d, (run, formula) in runs.items():
        with count_cost() as ledger:
            scores[d] = run().mean(0)
        cost.append(_cost_row(d, ledger, formula.format(nb[d])))
    top = {d: top_heads(s, k) for d, s in scores.items()}
    with count_cost() as ledger:
        ablation = _ablation(access, held, top, n_random, seed, quiet)
    checks_formula = f"{nb['in_context']} batches x (1 + 3 x (1 + {n_random})), less reused ones"
    cost.append(_cost_row("ablation checks", ledger, checks_formula))
    pairs, warnings = [], []
    for a, b in combinations(DEFINITIONS, 2):
        if scores[a].std() == 0 or scores[b].std() == 0:
            warnings.append(f"{a if scores[a].std() == 0 else b} scores every head the same: no rank correlation")
            rho = p = float("nan")
        else:
            rho, p = spearmanr(scores[a].flatten().numpy(), scores[b].flatten().numpy())
        jaccard = len(set(top[a]) & set(top[b])) / len(set(top[a]) | set(top[b]))
        pairs.append({"a": a, "b": b, "jaccard": jaccard, "spearman": float(rho), "spearman_p": float(p)})
    config = HeadDefinitionsConfig(
        n=n,
        shots=shots,
        n_trials=n_trials,
        n_seqs=n_seqs,
        k=k,
        method=method,
        probs=probs,
        n_random=n_random,
        seed=seed,
    )
    return HeadDefinitions(
        scores=scores,
        top=top,
        k=k,
        df=_tidy(scores, top),
        overlap=pd.DataFrame(pairs),
        ablation=ablation,
        cost=pd.DataFrame(cost),
        fv_baseline=fv,
        warnings=tuple(warnings),
        config=config,
        provenance=provenance(access.name, held),
    )
