"""The bundled model organism: a small Llama-style model trained here to learn in context.

``load_model("organism")`` loads its checkpoint (shipped in this folder);
:func:`organism_task` builds the topic-classification task it was trained for.
See ``docs/organism.md`` for the model card and :mod:`icl_heads.organism.train`
for the training recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from icl_heads.organism.vocab import HELDOUT_TEMPLATES, TOPICS, TRAIN_TEMPLATES, sample_sentence
from icl_heads.prompts import ICLTask

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"

__all__ = ["CHECKPOINT_DIR", "HELDOUT_TEMPLATES", "TOPICS", "TRAIN_TEMPLATES", "organism_task"]


def organism_task(
    topics: Sequence[str] = ("sport", "food"),
    *,
    n_per_class: int = 500,
    label_words: Sequence[str] = ("foo", "bar"),
    template: str = TRAIN_TEMPLATES[0],
    max_words: int = 5,
    noise_rate: float = 0.1,
    seed: int = 0,
) -> ICLTask:
    """The organism's topic-classification task, with fresh sentences.

    Args:
        topics: the classes, as keys of :data:`TOPICS` (at least two).
        n_per_class: sentences generated per class.
        label_words: the word shown for each topic, in the order of ``topics``.
        template: a demonstration template; :data:`HELDOUT_TEMPLATES` were never
            seen in training.
        max_words: longest sentence, in words (shorter sentences are easier).
        noise_rate: probability that a word comes from another topic.
        seed: random seed for the sentences.

    Returns:
        An :class:`~icl_heads.prompts.ICLTask` with ``classes == tuple(topics)``.

    Raises:
        ValueError: an unknown topic, or fewer than two topics.

    >>> task = organism_task()
    >>> task.classes, task.label_words, len(task.texts)
    (('sport', 'food'), ('foo', 'bar'), 1000)
    """
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        raise ValueError(f"unknown topics {unknown}; choose from {sorted(TOPICS)}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n_per_class):
        for topic in topics:
            texts.append(sample_sentence(rng, topic, max_words=max_words, noise_rate=noise_rate))
            labels.append(topic)
    return ICLTask.from_pairs(
        texts,
        labels,
        label_words=label_words,
        template=template,
        classes=tuple(topics),
        name="organism:" + "-vs-".join(topics),
    )
