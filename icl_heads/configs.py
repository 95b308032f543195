"""The config of every analysis result: the arguments that produced it, as a typed :class:`Record`.

Each result's ``config`` field holds one of these. Their keys are the argument names
(``result.config["read_at"]``, ``result.config.get("top", 5)``); a key the analysis
did not record is absent (its field defaults to :data:`~icl_heads.records.UNSET`), and keys a class does
not name are kept in ``extra``. Values are validated where a wrong one would mislead.

>>> cfg = ReadingRolesConfig(n_boot=1000, seed=0)
>>> cfg["n_boot"], "seed" in cfg, ReadingRolesConfig.from_dict(cfg.to_dict()) == cfg
(1000, True, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from icl_heads.records import UNSET, Record, check_choice, check_positive
from icl_heads.results import json_type

#: where an analysis reads the demonstrations (see :func:`icl_heads.reading.resolve_read_at`)
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
        "read_at_requested", "read_at", "attention_by_role", "share_at_read_positions", "min_read_share"
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_choice(self, "read_at", READ_AT)
        check_choice(self, "read_at_requested", ("auto", *READ_AT))


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class InContextHeadsConfig(Record):
    """Arguments of :func:`~icl_heads.find_in_context_heads`."""

    method: str = UNSET
    fraction: float | None = UNSET
    k: int = UNSET
    also: list[str] | tuple[str, ...] = UNSET
    verify: bool = UNSET
    held_out_verification: bool = UNSET
    n_verify: int = UNSET
    n_random: int = UNSET
    seed: int = UNSET
    rescore: Any = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "k")
        if isinstance(self.fraction, float) and not 0 < self.fraction <= 1:
            raise ValueError(f"InContextHeadsConfig: fraction must be in (0, 1], got {self.fraction!r}")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class HeadCountConfig(Record):
    """Arguments of :func:`~icl_heads.head_count.heads_needed`."""

    margin: float = UNSET
    max_k: int | None = UNSET
    greedy: bool = UNSET
    n_random: int = UNSET
    random_for: str = UNSET
    seed: int = UNSET

    def __post_init__(self) -> None:
        check_choice(self, "random_for", ("every", "last"))


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class MajorityBiasConfig(Record):
    """Arguments of :func:`~icl_heads.majority_bias`."""

    shots: int = UNSET
    n: int = UNSET
    seed: int = UNSET
    skews: list[list[int]] = UNSET
    hooked: bool = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "shots", "n")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class RecencyBiasConfig(Record):
    """Arguments of :func:`~icl_heads.recency_bias`."""

    shots: int = UNSET
    n: int = UNSET
    seed: int = UNSET
    n_random_orders: int = UNSET
    hooked: bool = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "shots", "n")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class BiasCorrectionConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.correct_majority_bias` / :func:`~icl_heads.correct_recency_bias`."""

    headline: str = UNSET
    shots: int = UNSET
    n: int = UNSET
    seed: int = UNSET
    tune_n: int = UNSET
    tune_seed: int = UNSET
    max_accuracy_drop: float = UNSET
    grid: list[float] = UNSET
    skews: Any = UNSET
    n_random_orders: int = UNSET
    heads: Any = UNSET

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "shots", "n", "tune_n")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class OVLabelFeaturesConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.ov_label_features`, and where it read."""

    control_offset: int = UNSET
    top_k: int = UNSET
    top_rank: int = UNSET


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class QKLabelAttentionConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.qk_label_attention`, and where it read."""

    example: int = UNSET


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class FlipAnalysisConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.mechanism.flips.flip_analysis`, and where it read."""

    resample_demos: Any = UNSET
    seed: int = UNSET
    own_flipped_prompts: bool = UNSET


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class TwoTowerTestConfig(ReadingInfo):
    """Arguments of :func:`~icl_heads.two_tower_test`, and where it read."""

    probe_rank: int | None = UNSET
    probe_components: int = UNSET
    probe_ridge: float = UNSET
    seed: int = UNSET


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class ReadingRolesConfig(Record):
    """Arguments of :func:`~icl_heads.reading.reading_roles`."""

    n_boot: int = UNSET
    seed: int = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "n_boot")


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


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class ComponentStabilityConfig(Record):
    """Arguments of :func:`~icl_heads.component_stability`."""

    n_demo_sets: int = UNSET
    shots: int = UNSET
    n: int = UNSET
    top: int = UNSET
    seed: int = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "n_demo_sets", "shots", "n", "top")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class ReweightingComparisonConfig(Record):
    """Arguments of :func:`~icl_heads.compare_reweighting`; ``icl_k_skipped`` says why K-shot ICL did not run."""

    k: int = UNSET
    k_demo: int = UNSET
    seeds: list[int] = UNSET
    n_test: int = UNSET
    reweighting: dict[str, Any] = UNSET
    icl_k_skipped: str = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "k", "k_demo", "n_test")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class ScoreAgreementConfig(Record):
    """Arguments of :func:`~icl_heads.agreement.score_agreement`."""

    method: str = UNSET
    sample: int = UNSET
    seed: int = UNSET
    k: int = UNSET
    how: str = UNSET
    where: str = UNSET
    mean_reference: bool = UNSET
    rescore: Any = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "k")


@json_type
@dataclass(frozen=True, eq=False, repr=False)
class FaithfulnessConfig(Record):
    """The shape and seed of :func:`~icl_heads.faithfulness.check_faithfulness`'s probe."""

    n_prompts: int = UNSET
    n_tokens: int = UNSET
    seed: int = UNSET

    def __post_init__(self) -> None:
        check_positive(self, "n_prompts", "n_tokens")
