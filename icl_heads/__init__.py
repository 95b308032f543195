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
from icl_heads.heads import InContextHeads, ablation_curve, find_in_context_heads
from icl_heads.interventions import HeadAblation, ablate, ablation
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
from icl_heads.scoring import score_heads

__all__ = [
    "AccuracyResult",
    "FlipAnalysis",
    "HeadAblation",
    "ICLPrompts",
    "ICLTask",
    "InContextHeads",
    "LabelTokenError",
    "ModelAccess",
    "OVLabelFeatures",
    "PromptTooLongError",
    "QKLabelAttention",
    "TokenizedPrompts",
    "TwoTowerTest",
    "__version__",
    "ablate",
    "ablation",
    "ablation_curve",
    "find_in_context_heads",
    "flip_analysis",
    "flip_prompts",
    "icl_accuracy",
    "load_model",
    "organism_task",
    "ov_label_features",
    "qk_label_attention",
    "score_heads",
    "testing",
    "two_tower_test",
]
