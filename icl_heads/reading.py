"""Where heads read: final-position attention by token role (:data:`~icl_heads.slots.ROLES`), with
bootstrap intervals; :func:`resolve_read_at` picks the reading position for a set of heads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from icl_heads.access import Capture, Head, ModelAccess, batches
from icl_heads.faithfulness import faithful_access
from icl_heads.options import RunOptions, run_options
from icl_heads.prompts import ICLPrompts, TokenizedPrompts
from icl_heads.records import UNSET, Provenance, Record, check_choice, check_positive
from icl_heads.results import Figure, Result, json_type, provenance
from icl_heads.slots import AFTER_LABEL, BOS, LABEL, ROLES, check_read_at
from icl_heads.stats import bootstrap_ci

logger = logging.getLogger(__name__)

#: below this share of a head's attention (outside the first token) on the positions read, a warning
MIN_READ_SHARE = 0.2
#: ``read_at="auto"`` picks a role holding this share of the label + after-label attention, else ``"slot"``
AUTO_DOMINANCE = 0.8
#: where an analysis reads the demonstrations (see :func:`resolve_read_at`)
READ_AT = ("label", "after_label", "slot")


@dataclass(frozen=True, eq=False, repr=False)
class ReadingInfo(Record):
    """Where an analysis read the demonstrations, and how much its heads attend there.

    Attributes:
        read_at_requested: the ``read_at`` argument (``"auto"`` or a position).
        read_at: the position used: ``"label"``, ``"after_label"`` or ``"slot"``.
        attention_by_role: the heads' mean attention by position role.
        share_at_read_positions: each head's attention share at the positions read.
        min_read_share: the share below which a head is reported as not reading there.
    """

    read_at_requested: str = UNSET
    read_at: str = UNSET
    attention_by_role: dict[str, float] = UNSET
    share_at_read_positions: dict[str, float] = UNSET
    min_read_share: float = UNSET

    _last: ClassVar[tuple[str, ...]] = (
        "read_at_requested",
        "read_at",
        "attention_by_role",
        "share_at_read_positions",
        "min_read_share",
    )

    def __post_init__(self) -> None:
        check_choice(self, "read_at", READ_AT)
        check_choice(self, "read_at_requested", ("auto", *READ_AT))


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class ReadingRolesConfig(Record):
    """Arguments of :func:`~icl_heads.reading.reading_roles`."""

    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "n_boot")


def role_shares(
    pattern_final: Float[Tensor, "batch head key"], roles: Tensor, n_roles: int = len(ROLES)
) -> Float[Tensor, "batch head role"]:
    """Attention summed over the keys of each role (``roles [batch, key]``, ``-1`` padding)."""
    onehot = torch.nn.functional.one_hot(roles.clamp(min=0), n_roles).float() * (roles >= 0)[..., None]
    return torch.einsum("bhk,bkr->bhr", pattern_final.float(), onehot.to(pattern_final.device)).cpu()


@dataclass(frozen=True, repr=False)
class ReadingRoles(Result):
    """Final-position attention of every head, by token role.

    Attributes:
        shares: ``[prompt, layer, head, role]`` attention summed over each role's tokens.
        df: one row per head and role: ``layer, head, name, role, attention`` (mean over
            prompts), ``ci_low, ci_high`` (bootstrap over prompts) and
            ``share_outside_bos`` (the mean as a share of the attention not on the first token).
        config: the arguments that produced this result.
        provenance: model, prompts, versions.
    """

    shares: Tensor
    df: pd.DataFrame
    config: ReadingRolesConfig = field(default_factory=ReadingRolesConfig)
    provenance: Provenance = field(default_factory=Provenance)
    _title: ClassVar[str] = "Where heads read (final-position attention by token role)"

    def table(self, role: str) -> Float[Tensor, "layer head"]:
        """Mean attention on ``role`` per head.

        Raises:
            ValueError: an unknown role.
        """
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        return self.shares[..., ROLES.index(role)].mean(0)

    def reads(self, heads: Any = None) -> pd.DataFrame:
        """Per head: the role it reads most (outside the first token) and the reading position to analyse.

        Args:
            heads: ``(layer, head)`` pairs or a result with ``.heads``; None for every head.

        Returns:
            One row per head: ``layer, head, name, role`` (largest mean attention outside the first
            token), ``role_share`` (its share of the attention outside the first token), ``label``,
            ``after_label`` (mean attention), ``read_at`` (by :data:`AUTO_DOMINANCE`) and ``slot_share``
            (share of the attention outside the first token on label and after-label tokens).
        """
        mean, rows = self.shares.mean(0), []
        every = product(range(mean.shape[0]), range(mean.shape[1]))
        for layer, h in every if heads is None else [(int(a), int(b)) for a, b in getattr(heads, "heads", heads)]:
            m = mean[layer, h]
            outside, r, lab, after = (
                float(m.sum() - m[BOS]) or 1e-12,
                _top_role(m),
                float(m[LABEL]),
                float(m[AFTER_LABEL]),
            )
            row = {
                "layer": layer,
                "head": h,
                "name": f"L{layer}H{h}",
                "role": ROLES[r],
                "role_share": float(m[r]) / outside,
            }
            slot = float(m[LABEL] + m[AFTER_LABEL]) / outside
            rows.append(
                row | {"label": lab, "after_label": after, "read_at": pick_read_at(lab, after), "slot_share": slot}
            )
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        counts = self.reads().role.value_counts().items()
        return {"prompts": int(self.shares.shape[0])} | {f"heads reading mostly {r}": int(n) for r, n in counts}

    def plot(self) -> Figure:
        """Heads (rows) by roles (columns): mean final-position attention, intervals on hover."""
        return self._draw("plot")


def _top_role(shares: Tensor) -> int:
    """The role (index) with the most attention outside the first token."""
    no_bos = shares.clone()
    no_bos[BOS] = -1
    return int(no_bos.argmax())


def pick_read_at(label: float, after_label: float) -> str:
    """``"label"``, ``"after_label"`` or ``"slot"`` from the attention on each (see :data:`AUTO_DOMINANCE`)."""
    total = label + after_label
    if total <= 0 or label >= AUTO_DOMINANCE * total:
        return "label"
    if after_label >= AUTO_DOMINANCE * total:
        return "after_label"
    return "slot"


@torch.inference_mode()
def reading_roles(
    model: Any,
    prompts: ICLPrompts | TokenizedPrompts,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    options: RunOptions | None = None,
) -> ReadingRoles:
    """Measure where every head reads from the final position, by token role.

    Args:
        model: a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        prompts: few-shot prompts.
        n_boot: bootstrap resamples of the prompts for the intervals.
        seed: seed of the bootstrap.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        A :class:`ReadingRoles` result.

    Raises:
        ValueError: no prompts, prompts without token roles, or the checks of
            :class:`~icl_heads.access.ModelAccess`.
        TypeError: an unsupported model.

    >>> import icl_heads as ih
    >>> model = ih.load_model("organism")
    >>> rr = reading_roles(model, ih.organism_task().prompts(n=16, shots=4))
    >>> rr.reads([(1, 7)]).read_at.item()
    'label'
    """
    options = run_options(options)
    access = faithful_access(model, "reading_roles")
    tp = access.tokenize(prompts)
    shares = _shares(access, tp, range(access.n_layers), options)
    return ReadingRoles(
        shares=shares,
        df=_tidy(shares, n_boot, seed),
        config=ReadingRolesConfig(n_boot=n_boot, seed=seed),
        provenance=provenance(access.name, tp),
    )


def _shares(access: ModelAccess, tp: TokenizedPrompts, layers, options: RunOptions | None):
    if len(tp.roles) != len(tp):
        raise ValueError("these prompts carry no token roles; tokenize them with ICLPrompts.tokenize")
    layers = list(layers)
    caps = [Capture(access.hook(ly, "pattern"), "pattern_final") for ly in layers]
    out = torch.zeros(len(tp), access.n_layers, access.n_heads, len(ROLES))
    for batch in batches(access, tp, options, desc="reading roles"):
        _, got = access.run(batch, capture=caps)
        for ly in layers:
            out[batch.index, ly] = role_shares(got[access.hook(ly, "pattern")], batch.roles)
    return out


def _tidy(shares: Tensor, n_boot: int, seed: int) -> pd.DataFrame:
    x, rows = shares.numpy(), []
    outside = x.sum(-1) - x[..., BOS]
    for layer, h, (r, role) in product(range(x.shape[1]), range(x.shape[2]), enumerate(ROLES)):
        v = x[:, layer, h, r]
        lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
        share = float(v.mean()) / max(float(outside[:, layer, h].mean()), 1e-12) if role != "bos" else np.nan
        row = {"layer": layer, "head": h, "name": f"L{layer}H{h}", "role": role, "attention": float(v.mean())}
        rows.append(row | {"ci_low": lo, "ci_high": hi, "share_outside_bos": share})
    return pd.DataFrame(rows)


def resolve_read_at(
    access: ModelAccess,
    tp: TokenizedPrompts,
    heads: list[Head],
    read_at: str,
    *,
    min_share: float = MIN_READ_SHARE,
    n_prompts: int = 64,
    options: RunOptions | None = None,
) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """The reading position to use for ``heads``, what was measured, and warnings.

    ``"auto"`` picks where the pooled heads attend; a head with less than ``min_share`` of its
    attention (outside the first token) there gets a warning, also logged.

    Args:
        access: the model.
        tp: tokenized prompts (the first ``n_prompts`` are measured).
        heads: the heads, pooled.
        read_at: ``"label"``, ``"after_label"``, ``"slot"`` or ``"auto"``.
        min_share: below this share of attention outside the first token, a warning.
        n_prompts: prompts measured.
        options: how prompts are run (a :class:`~icl_heads.options.RunOptions`); does not change the result.

    Returns:
        ``(read_at, info, warnings)``: the position, a JSON-ready dict (requested position,
        attention per role and the share at the position used) and warning strings.

    Raises:
        ValueError: an unknown ``read_at``.
    """
    options = run_options(options)
    check_read_at(read_at)
    sub = _subset(tp, n_prompts)
    shares = _shares(access, sub, sorted({a for a, _ in heads}), run_options(options, progress=False))
    per_head = torch.stack([shares[:, a, b] for a, b in heads], 1).mean(0)  # [head, role]
    pooled = per_head.mean(0)
    used = pick_read_at(float(pooled[LABEL]), float(pooled[AFTER_LABEL])) if read_at == "auto" else read_at
    roles = {"label": (LABEL,), "after_label": (AFTER_LABEL,), "slot": (LABEL, AFTER_LABEL)}[used]
    outside = (per_head.sum(-1) - per_head[:, BOS]).clamp(min=1e-12)
    at = per_head[:, list(roles)].sum(-1) / outside
    names = [f"L{a}H{b}" for a, b in heads]
    info = {
        "read_at_requested": read_at,
        "read_at": used,
        "attention_by_role": {r: float(pooled[i]) for i, r in enumerate(ROLES)},
        "share_at_read_positions": {n: float(s) for n, s in zip(names, at, strict=True)},
        "min_read_share": min_share,
    }
    warnings = []
    low = [i for i, s in enumerate(at) if s < min_share]
    if low:
        # where each of these heads reads, from its own attention by role (never the pool of every head)
        best = [ROLES[_top_role(per_head[i])] for i in low]
        where = "; ".join(
            f"{names[i]} {float(at[i]):.3g} here, mostly on '{b}' ({float(per_head[i, ROLES.index(b)]):.3g})"
            for i, b in zip(low, best, strict=True)
        )
        label_readers = sorted({b for b in best if b in ("label", "after_label")})
        hint = (
            f"pass read_at='{label_readers[0]}'" + ("" if read_at == "auto" else " or 'auto'") + " for those"
            if label_readers
            else "they do not read the demonstrations' labels, so this analysis does not describe them"
        )
        warnings.append(
            f"NOT READ by {', '.join(names[i] for i in low)}: these heads put less than {min_share:.0%} of their "
            f"attention (outside the first token) on the '{used}' positions this result reads ({where}); its numbers "
            f"for them describe positions they do not read (the other heads are unaffected); {hint}"
        )
        logger.warning(warnings[-1])
    return used, info, tuple(warnings)


def _subset(tp: TokenizedPrompts, n: int) -> TokenizedPrompts:
    keys = ("tokens", "label_positions", "demo_labels", "golds", "roles", "demo_index")
    return tp if len(tp) <= n else replace(tp, **{k: getattr(tp, k)[:n] for k in keys})
