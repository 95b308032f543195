"""icl_heads: find, explain and use the components that carry in-context learning.

>>> import icl_heads as ih
>>> task = ih.organism_task()
>>> prompts = task.prompts(n=8, shots=4, seed=0)
>>> len(prompts)
8
"""

from icl_heads import testing
from icl_heads._version import __version__
from icl_heads.accuracy import AccuracyResult, icl_accuracy
from icl_heads.agreement import ScoreAgreement, compare_head_scores
from icl_heads.bias import MajorityBias, RecencyBias, majority_bias, recency_bias
from icl_heads.corrections import (
    correcting,
    count_normalisation,
    ov_compensation,
    positional_prior,
    unrotated_attention,
)
from icl_heads.debias import BiasCorrection, correct_majority_bias, correct_recency_bias, tune_correction
from icl_heads.decomposition import (
    ComponentStability,
    Decomposition,
    component_stability,
    decompose,
    fixed_demo_prompts,
)
from icl_heads.faithfulness import Faithfulness, UnfaithfulModelError, check_faithfulness
from icl_heads.head_count import HeadCount, heads_needed
from icl_heads.heads import InContextHeads, ablation_curve, find_in_context_heads
from icl_heads.interventions import HeadAblation, ablate, ablation, combine, intervening
from icl_heads.mechanism import (
    FlipAnalysis,
    OVLabelFeatures,
    QKLabelAttention,
    TwoTowerTest,
    flip_analysis,
    flip_prompts,
    ov_label_features,
    qk_label_attention,
    two_tower_test,
)
from icl_heads.models import ModelAccess, load_model
from icl_heads.organism import organism_task
from icl_heads.prompts import ICLPrompts, ICLTask, LabelTokenError, PromptTooLongError, TokenizedPrompts
from icl_heads.reading import ReadingRoles, reading_roles
from icl_heads.reweighting import (
    CalibPlus,
    ComponentReweighting,
    NotFittedError,
    ReweightingComparison,
    compare_reweighting,
)
from icl_heads.scoring import score_heads

__all__ = [
    "AccuracyResult",
    "BiasCorrection",
    "CalibPlus",
    "ComponentReweighting",
    "ComponentStability",
    "Decomposition",
    "Faithfulness",
    "FlipAnalysis",
    "HeadAblation",
    "HeadCount",
    "ICLPrompts",
    "ICLTask",
    "InContextHeads",
    "LabelTokenError",
    "MajorityBias",
    "ModelAccess",
    "NotFittedError",
    "OVLabelFeatures",
    "PromptTooLongError",
    "QKLabelAttention",
    "ReadingRoles",
    "RecencyBias",
    "ReweightingComparison",
    "ScoreAgreement",
    "TokenizedPrompts",
    "TwoTowerTest",
    "UnfaithfulModelError",
    "__version__",
    "ablate",
    "ablation",
    "ablation_curve",
    "check_faithfulness",
    "combine",
    "compare_head_scores",
    "compare_reweighting",
    "component_stability",
    "correct_majority_bias",
    "correct_recency_bias",
    "correcting",
    "count_normalisation",
    "decompose",
    "find_in_context_heads",
    "fixed_demo_prompts",
    "flip_analysis",
    "flip_prompts",
    "heads_needed",
    "icl_accuracy",
    "intervening",
    "load_model",
    "majority_bias",
    "organism_task",
    "ov_compensation",
    "ov_label_features",
    "positional_prior",
    "qk_label_attention",
    "reading_roles",
    "recency_bias",
    "score_heads",
    "testing",
    "tune_correction",
    "two_tower_test",
    "unrotated_attention",
]
