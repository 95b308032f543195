"""What in-context heads write (:mod:`.ov`), where they look (:mod:`.qk`), whether QK scores act as a learned
similarity (:mod:`.towers`) and how both change when a prediction flips (:mod:`.flips`); DESIGN §2a.

Pure tensor maths lives in :mod:`._maths`; :mod:`._run` holds the forward pass the analyses share.
"""

from icl_heads.mechanism._maths import (
    bilinear_probe_r2,
    label_metrics,
    own_vs_rest,
    paired_auc,
    roc_auc,
    unit_features,
)
from icl_heads.mechanism.flips import FlipAnalysis, flip_analysis, flip_prompts
from icl_heads.mechanism.ov import OVLabelFeatures, ov_label_features, per_position_ov
from icl_heads.mechanism.qk import QKLabelAttention, qk_label_attention
from icl_heads.mechanism.towers import TwoTowerTest, two_tower_test

__all__ = [
    "FlipAnalysis",
    "OVLabelFeatures",
    "QKLabelAttention",
    "TwoTowerTest",
    "bilinear_probe_r2",
    "flip_analysis",
    "flip_prompts",
    "label_metrics",
    "ov_label_features",
    "own_vs_rest",
    "paired_auc",
    "per_position_ov",
    "qk_label_attention",
    "roc_auc",
    "two_tower_test",
    "unit_features",
]
