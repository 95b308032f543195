"""What in-context heads write (OV label features) and where they look (QK label attention).

DESIGN §2a. For head ``(l, h)``, a prompt with final position ``t`` and a source
position ``p``, the head's per-position value-output vector is ``v_p W_O^{l,h}``;
weighted by attention, ``A[t, p] v_p W_O^{l,h}``, these sum over ``p`` to the head's
output ``z_t W_O^{l,h}``.

* :func:`ov_label_features` (:mod:`.ov`): label logit differences, label ranks in the
  vocabulary and top tokens of the vectors at label positions and at control (non-label) positions.
* :func:`qk_label_attention` (:mod:`.qk`): attention and pre-softmax scores from ``t`` to
  each label position, by whether the demonstration's label is the gold label or the prediction.
* :func:`two_tower_test` (:mod:`.towers`): how well the score separates same-class
  demonstrations (ROC AUC) next to the cosine of the residual streams, and an optional
  low-rank bilinear probe.
* :func:`flip_analysis` (:mod:`.flips`): prompt pairs whose prediction flips; how much
  attention at each label's positions and how much the OV vectors change.

Pure tensor maths (AUCs, label metrics, the probe) lives in :mod:`._maths` and is tested
on hand-made tensors; :mod:`._run` holds the forward pass the analyses share.
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
