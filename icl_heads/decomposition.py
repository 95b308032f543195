"""Decompose the label logits into every head, MLP, the embeddings and the bias terms.

The code lives in :mod:`icl_heads.components` (:mod:`~icl_heads.components.result`,
:mod:`~icl_heads.components.decompose`, :mod:`~icl_heads.components.stability`) and the
prompt designs in :mod:`icl_heads.prompts.designs`; this module keeps every name
importable from its old path.
"""

from icl_heads.components.decompose import decompose
from icl_heads.components.result import (
    KINDS,
    Decomposition,
    component_accuracy_table,
    component_table,
    wilson_interval,
)
from icl_heads.components.stability import ComponentStability, component_stability
from icl_heads.prompts.designs import balanced_sample, fixed_demo_prompts

__all__ = [
    "KINDS",
    "ComponentStability",
    "Decomposition",
    "balanced_sample",
    "component_accuracy_table",
    "component_stability",
    "component_table",
    "decompose",
    "fixed_demo_prompts",
    "wilson_interval",
]
