"""Component reweighting and Calib+: learn from a few labelled examples on top of a decomposition.

The estimators live in :mod:`icl_heads.components.estimators` and the protocol that
compares them with K-shot ICL in :mod:`icl_heads.components.protocol`; this module
keeps every name importable from its old path.
"""

from icl_heads.components.estimators import CalibPlus, ComponentReweighting, NotFittedError, loss_and_grad
from icl_heads.components.protocol import ReweightingComparison, compare_reweighting

__all__ = [
    "CalibPlus",
    "ComponentReweighting",
    "NotFittedError",
    "ReweightingComparison",
    "compare_reweighting",
    "loss_and_grad",
]
