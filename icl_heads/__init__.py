"""icl_heads: find, explain and use the components that carry in-context learning.

The namespace holds the workflow; results, interventions, corrections and plots live in their modules.

>>> import icl_heads as ih
>>> task = ih.organism_task()
>>> prompts = task.prompts(n=8, shots=4, seed=0)
>>> len(prompts)
8
"""

from icl_heads import plots, testing  # noqa: F401 - plots registers the figures that result.plot() draws
from icl_heads._version import __version__
from icl_heads.access import UnfaithfulModelError
from icl_heads.accuracy import icl_accuracy
from icl_heads.agreement import compare_head_scores
from icl_heads.bias import majority_bias
from icl_heads.compare_corrections import compare_corrections
from icl_heads.components.decompose import decompose
from icl_heads.components.estimators import CalibPlus, ComponentReweighting, NotFittedError
from icl_heads.components.protocol import compare_reweighting
from icl_heads.components.stability import component_stability
from icl_heads.debias import correct_majority_bias, correct_recency_bias
from icl_heads.faithfulness import check_faithfulness
from icl_heads.head_count import ablation_curve, heads_needed
from icl_heads.heads import find_in_context_heads
from icl_heads.interventions import ablate, intervening
from icl_heads.mechanism import flip_analysis, ov_label_features, qk_label_attention, two_tower_test
from icl_heads.models import load_model
from icl_heads.named_tasks import load_task
from icl_heads.options import RunOptions
from icl_heads.order_bias import recency_bias
from icl_heads.organism import organism_task
from icl_heads.prompts import ICLPrompts, ICLTask, LabelTokenError, PromptTooLongError
from icl_heads.reading import reading_roles
from icl_heads.results import load_result
from icl_heads.scoring import score_heads
from icl_heads.stats import Estimate

__all__ = [  # noqa: RUF022 - grouped by step of the workflow
    # models, tasks and prompts
    "load_model",
    "organism_task",
    "load_task",
    "ICLTask",
    "ICLPrompts",
    "RunOptions",
    # in-context heads: find, count, check
    "find_in_context_heads",
    "score_heads",
    "ablation_curve",
    "heads_needed",
    "compare_head_scores",
    "reading_roles",
    "icl_accuracy",
    "check_faithfulness",
    # interventions
    "ablate",
    "intervening",
    # mechanism
    "ov_label_features",
    "qk_label_attention",
    "two_tower_test",
    "flip_analysis",
    # biases and their corrections
    "majority_bias",
    "recency_bias",
    "correct_majority_bias",
    "correct_recency_bias",
    "compare_corrections",
    # components
    "decompose",
    "component_stability",
    "ComponentReweighting",
    "CalibPlus",
    "compare_reweighting",
    # results and numbers
    "Estimate",
    "load_result",
    # errors
    "LabelTokenError",
    "PromptTooLongError",
    "NotFittedError",
    "UnfaithfulModelError",
    "testing",
    "__version__",
]
