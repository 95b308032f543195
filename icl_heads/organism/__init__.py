"""The bundled model organisms: ``load_model("organism")`` (layout ``{text} : {label}\n``) and ``"organism-slot"``.

:func:`organism_task` builds the topic-classification task they were trained for; see ``docs/organism.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from icl_heads._checks import check_sequence
from icl_heads.organism.vocab import (
    HELDOUT_SLOT_TEMPLATES,
    HELDOUT_TEMPLATES,
    LAYOUTS,
    SLOT_TEMPLATES,
    TOPICS,
    TRAIN_TEMPLATES,
    sample_sentence,
)
from icl_heads.prompts import ICLTask

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
CHECKPOINT_SLOT_DIR = Path(__file__).parent / "checkpoint_slot"
#: Bundled models by name (``load_model(name)``).
BUNDLED: dict[str, Path] = {"organism": CHECKPOINT_DIR, "organism-slot": CHECKPOINT_SLOT_DIR}

__all__ = [
    "BUNDLED",
    "CHECKPOINT_DIR",
    "CHECKPOINT_SLOT_DIR",
    "HELDOUT_SLOT_TEMPLATES",
    "HELDOUT_TEMPLATES",
    "SLOT_TEMPLATES",
    "TOPICS",
    "TRAIN_TEMPLATES",
    "organism_task",
]


def organism_task(
    topics: Sequence[str] = ("sport", "food"),
    *,
    n_per_class: int = 500,
    label_words: Sequence[str] = ("foo", "bar"),
    template: str | None = None,
    max_words: int = 5,
    noise_rate: float = 0.1,
    seed: int = 0,
    layout: str = "separator",
) -> ICLTask:
    """The organism's topic-classification task, with fresh sentences.

    Args:
        topics: the classes, as keys of :data:`TOPICS` (at least two).
        n_per_class: sentences generated per class.
        label_words: the word shown for each topic, in the order of ``topics``.
        template: a demonstration template (default: the layout's first training
            template); :data:`HELDOUT_TEMPLATES` (:data:`HELDOUT_SLOT_TEMPLATES`) were never
            seen in training.
        max_words: longest sentence, in words (shorter sentences are easier).
        noise_rate: probability that a word comes from another topic.
        seed: random seed for the sentences.
        layout: ``"separator"`` (``{text} : {label}\n``, the ``organism`` model) or
            ``"slot"`` (``{text} {label}\n``, the ``organism-slot`` model).

    Returns:
        An :class:`~icl_heads.prompts.ICLTask` with ``classes == tuple(topics)``.

    Raises:
        TypeError: ``topics`` is a string, not a sequence of topics.
        ValueError: an unknown or repeated topic, an unknown layout, or fewer than two topics.

    >>> task = organism_task()
    >>> task.classes, task.label_words, len(task.texts)
    (('sport', 'food'), ('foo', 'bar'), 1000)
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    template = LAYOUTS[layout][0] if template is None else template
    topics = check_sequence("topics", topics)
    if len(set(topics)) != len(topics):
        raise ValueError(f"topics {topics} repeat a topic; list each topic once")
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        raise ValueError(f"unknown topics {unknown}; choose from {sorted(TOPICS)}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    texts = [
        sample_sentence(rng, t, max_words=max_words, noise_rate=noise_rate) for _ in range(n_per_class) for t in topics
    ]
    return ICLTask.from_pairs(
        texts,
        list(topics) * n_per_class,
        label_words=label_words,
        template=template,
        classes=tuple(topics),
        name=("organism-slot:" if layout == "slot" else "organism:") + "-vs-".join(topics),
    )
