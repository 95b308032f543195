"""Few-shot classification tasks and how their prompts are sampled (counts, orders, gold labels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from icl_heads import _checks
from icl_heads.data import read_labelled_file
from icl_heads.prompts.batch import TokenizedPrompts
from icl_heads.prompts.text import DEFAULT_TEMPLATE, ICLPrompt, check_separators, check_template, render
from icl_heads.prompts.tokenization import tokenize_prompts
from icl_heads.records import UNSET, Record

ORDERS = ("random", "blocked", "blocked_reversed", "alternating")


@dataclass(frozen=True)
class ICLTask:
    """A sentence-classification task for in-context learning.

    Args:
        texts: the sentences.
        labels: the class index of each sentence, in ``[0, len(classes))``
            (:meth:`from_pairs` builds a task from label names).
        label_words: the word shown for each class, in the order of ``classes``.
        template: one demonstration, ``{text}`` then ``{label}``; the query is the template cut before
            ``{label}``, trailing spaces removed (so BPE tokenizers predict the label with its leading space).
        classes: the class names, in order.
        name: a name for reports.

    Raises:
        ValueError: empty data, a missing or empty text, texts and labels of different lengths, a bad template,
            label words that do not match the classes, or a text that contains a separator of the template
            (:class:`~icl_heads.prompts.text.SeparatorInTextError`).
        TypeError: a string where a sequence is expected, or a text that is not a string.

    >>> task = ICLTask.from_pairs(["goal", "soup", "team", "bread"], ["sport", "food", "sport", "food"])
    >>> task.classes, task.label_words
    (('sport', 'food'), ('foo', 'bar'))
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[Any, ...]
    label_words: tuple[str, ...] = ("foo", "bar")
    template: str = DEFAULT_TEMPLATE
    name: str = "task"

    def __post_init__(self) -> None:
        _checks.check_texts(self.texts)
        for name in ("labels", "classes", "label_words"):
            _checks.check_sequence(name, getattr(self, name))
        if len(self.texts) == 0:
            raise ValueError("the task has no examples; pass at least one (text, label) pair per class")
        if len(self.texts) != len(self.labels):
            raise ValueError(f"got {len(self.texts)} texts but {len(self.labels)} labels; they must pair up")
        if len(self.classes) < 2:
            raise ValueError(f"a classification task needs at least 2 classes, got {list(self.classes)}")
        if len(self.label_words) != len(self.classes):
            raise ValueError(
                f"label_words {self.label_words} has {len(self.label_words)} words for "
                f"{len(self.classes)} classes {list(self.classes)}; give one word per class"
            )
        if any(not isinstance(w, str) for w in self.label_words):
            raise TypeError(f"label_words must be strings, got {self.label_words}")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {list(self.classes)} repeat a class; list each class once")
        if len(set(self.label_words)) != len(self.label_words) or any(not w.strip() for w in self.label_words):
            raise ValueError(f"label_words must be distinct non-empty words, got {self.label_words}")
        if any(w != w.strip() for w in self.label_words):
            raise ValueError(
                f"label_words {self.label_words} start or end with whitespace; give bare words "
                "(the template supplies the spacing)"
            )
        if bad := [y for y in self.labels if not (isinstance(y, (int, np.integer)) and 0 <= y < len(self.classes))]:
            raise ValueError(
                f"labels {bad[:5]} are not class indices in [0, {len(self.classes)}); "
                "use ICLTask.from_pairs(texts, labels) to build a task from label names"
            )
        check_template(self.template)
        check_separators(self.texts, self.template)

    @classmethod
    def from_pairs(
        cls,
        texts: Sequence[str],
        labels: Sequence[Any],
        *,
        label_words: Sequence[str] = ("foo", "bar"),
        template: str = DEFAULT_TEMPLATE,
        classes: Sequence[Any] | None = None,
        name: str = "task",
    ) -> ICLTask:
        """Build a task from parallel lists of texts and labels.

        Args:
            texts: the sentences (strings).
            labels: the label of each sentence: hashable values of one kind (numbers, strings, ...).
            label_words: the word shown for each class, in the order of ``classes``.
            template: how one demonstration is rendered (see :class:`ICLTask`).
            classes: the class order; default numeric order for numbers, order of first appearance otherwise.
            name: a name for reports.

        Returns:
            The task.

        Raises:
            TypeError: a string where a sequence is expected, or a text that is not a string.
            ValueError: a missing (None/NaN) or empty text or label, labels of mixed kinds (``1`` and ``"1"``),
                a label outside ``classes``, or the checks of :class:`ICLTask`.
        """
        texts = _checks.check_texts(texts)
        labels = _checks.check_labels(labels)
        found = _checks.natural_order(labels)
        classes = tuple(_checks.check_sequence("classes", classes)) if classes is not None else found
        label_words = _checks.check_sequence("label_words", label_words)
        if unknown := [y for y in found if y not in classes]:
            raise ValueError(f"labels {unknown} are not among the task's classes {list(classes)}")
        index = {c: i for i, c in enumerate(classes)}
        labels = tuple(index[y] for y in labels)
        return cls(texts, labels, classes, label_words=tuple(label_words), template=template, name=name)

    @classmethod
    def from_dataframe(cls, df, text_col: str = "text", label_col: str = "label", **kw: Any) -> ICLTask:
        """Build a task from a pandas DataFrame's text and label columns.

        Raises:
            ValueError: a missing column, or the checks of :meth:`from_pairs`.
        """
        if missing := [c for c in (text_col, label_col) if c not in df.columns]:
            raise ValueError(f"columns {missing} not in the data; it has {list(df.columns)}")
        return cls.from_pairs(df[text_col].tolist(), df[label_col].tolist(), **kw)

    @classmethod
    def from_file(
        cls, path: str | Path, text_col: str = "text", label_col: str = "label", *, dropna: bool = False, **kw: Any
    ) -> ICLTask:
        """Build a task from a ``.csv`` or ``.jsonl`` file (the format is read from the content).

        Args:
            path: the file; see :func:`icl_heads.data.read_labelled_file`.
            text_col: the column holding the texts.
            label_col: the column holding the labels.
            dropna: drop rows with a missing text or label (logged with a count) instead of refusing them.
            **kw: passed to :meth:`from_pairs` (``label_words``, ``template``, ``classes``, ``name``).

        Returns:
            The task, named after the file unless ``name`` is given.

        Raises:
            icl_heads.data.DataError: a missing, unreadable, empty or malformed file, a missing column or cell,
                each naming the file and line (a ``ValueError``).
            ValueError: the checks of :meth:`from_pairs`.
        """
        data = read_labelled_file(path, text_col, label_col, dropna=dropna)
        kw.setdefault("name", Path(path).stem)
        return cls.from_pairs(data.texts, data.labels, **kw)

    def with_label_words(self, label_words: Sequence[str]) -> ICLTask:
        """The same task showing other label words.

        Raises:
            TypeError: a string instead of a sequence of words (it would split into letters).
            ValueError: the checks of :class:`ICLTask`.
        """
        return replace(self, label_words=tuple(_checks.check_sequence("label_words", label_words)))

    def with_template(self, template: str) -> ICLTask:
        """The same task rendered with another template."""
        return replace(self, template=template)

    def prompts(
        self,
        n: int,
        shots: int,
        seed: int = 0,
        counts: Sequence[int] | None = None,
        order: str | Sequence[int] = "random",
        gold: int | None = None,
    ) -> ICLPrompts:
        """Sample ``n`` prompts of ``shots`` demonstrations and one query each.

        Args:
            n: number of prompts.
            shots: demonstrations per prompt.
            seed: random seed; the same seed gives the same prompts.
            counts: demonstrations per class (sums to ``shots``); default balanced (a remainder to random classes).
            order: one of :data:`ORDERS` (``"blocked"``: class 0 first) or an explicit sequence of class indices.
            gold: fix every query's class; default alternates classes over prompts.

        Returns:
            The prompts, in text, with their task.

        Raises:
            TypeError: ``n``, ``shots``, ``seed``, ``gold``, counts or order that are not integers.
            ValueError: ``n < 1``, negative ``shots`` or ``seed``, counts that do not sum to ``shots``, too few
                examples of a class, or an unknown order.
        """
        n, shots = _checks.check_int("n", n), _checks.check_int("shots", shots)
        seed = _checks.check_int("seed", seed, minimum=0)
        gold = None if gold is None else _checks.check_int("gold", gold)
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if shots < 0:
            raise ValueError(f"shots must be >= 0, got {shots}")
        k = len(self.classes)
        if counts is not None:
            counts = tuple(_checks.check_int("counts[i]", c) for c in _checks.check_sequence("counts", counts))
            if len(counts) != k or sum(counts) != shots or min(counts) < 0:
                raise ValueError(
                    f"counts {counts} must give one non-negative count per class {list(self.classes)} summing to shots={shots}"
                )
        if isinstance(order, str) and order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS} or a sequence of class indices, got {order!r}")
        if not isinstance(order, str):
            order = tuple(_checks.check_int("order[i]", c) for c in _checks.check_sequence("order", order))
            if len(order) != shots or any(not 0 <= c < k for c in order):
                raise ValueError(f"explicit order {order} must list {shots} class indices in [0, {k})")
            in_order = tuple(int(c) for c in np.bincount(np.asarray(order, dtype=int), minlength=k))
            if counts is not None and in_order != counts:
                raise ValueError(
                    f"explicit order {order} has {in_order} demonstrations per class but counts={counts}; "
                    "drop counts or make them agree"
                )
        if gold is not None and not 0 <= gold < k:
            raise ValueError(f"gold must be a class index in [0, {k}), got {gold}")
        by_class = [np.flatnonzero(np.asarray(self.labels) == c) for c in range(k)]
        rng = np.random.default_rng(seed)
        golds = np.full(n, gold) if gold is not None else rng.permutation(np.arange(n) % k)
        out = []
        for q in golds:
            demo_classes = self._demo_classes(rng, shots, counts, order)
            need = np.bincount(np.append(demo_classes, q).astype(int), minlength=k)
            for c in range(k):
                if need[c] > len(by_class[c]):
                    raise ValueError(
                        f"class {self.classes[c]!r} has {len(by_class[c])} examples but a prompt needs {need[c]} "
                        f"(demonstrations plus query); add examples or lower shots"
                    )
            picks = {c: list(rng.choice(by_class[c], need[c], replace=False)) for c in range(k)}
            query = picks[int(q)].pop()
            demos = tuple((self.texts[picks[int(c)].pop()], int(c)) for c in demo_classes)
            out.append(ICLPrompt(demos=demos, query=self.texts[query], gold=int(q)))
        config = PromptConfig(n=n, shots=shots, seed=seed, counts=counts, order=order, gold=gold)
        return ICLPrompts(prompts=tuple(out), task=self, config=config)

    def _demo_classes(self, rng: np.random.Generator, shots: int, counts, order) -> np.ndarray:
        k = len(self.classes)
        if not isinstance(order, str):
            return np.asarray(order)
        if counts is None:
            base = np.full(k, shots // k)
            base[rng.choice(k, shots % k, replace=False)] += 1
        else:
            base = np.asarray(counts)
        classes = np.repeat(np.arange(k), base)
        if order == "random":
            rng.shuffle(classes)
        elif order == "blocked_reversed":
            classes = classes[::-1]
        elif order == "alternating":
            classes = np.array([c for i in range(max(base, default=0)) for c in range(k) if i < base[c]], dtype=int)
        return classes


@dataclass(frozen=True, eq=False, repr=False)
class PromptConfig(Record):
    """How a prompt set was drawn (``prompts.config["shots"]``); every key is optional, others go to ``extra``.

    :meth:`ICLTask.prompts` records ``n, shots, seed, counts, order, gold``; :func:`.fixed_demo_prompts`
    ``n, shots, demos, fixed_demos``; flipped queries add ``flipped``; a bias condition ``condition``.
    """

    n: int = UNSET
    shots: int = UNSET
    seed: int | None = UNSET
    counts: Any = UNSET
    order: Any = UNSET
    gold: Any = UNSET
    demos: Any = UNSET
    fixed_demos: bool = UNSET
    flipped: Any = UNSET
    condition: str = UNSET

    def updated(self, **changes: Any) -> PromptConfig:
        """A copy with ``changes`` set (existing keys keep their place)."""
        return PromptConfig.from_dict({**self, **changes})


@dataclass(frozen=True)
class ICLPrompts:
    """A set of prompts in text, tied to their task; ``config`` (a dict becomes a :class:`PromptConfig`) says how
    they were drawn. Tokenize with :meth:`tokenize`."""

    prompts: tuple[ICLPrompt, ...]
    task: ICLTask
    config: PromptConfig | Mapping[str, Any] = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.config, PromptConfig):
            if not isinstance(self.config, Mapping):
                raise TypeError(f"config must be a PromptConfig or a dict, got {type(self.config).__name__}")
            object.__setattr__(self, "config", PromptConfig.from_dict(self.config))

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, item: int | slice) -> ICLPrompts:
        picked = self.prompts[item] if isinstance(item, slice) else (self.prompts[item],)
        return replace(self, prompts=picked)

    def texts(self) -> list[str]:
        """The rendered prompt strings (without a beginning-of-sequence token)."""
        return [render(p, self.task)[0] for p in self.prompts]

    @property
    def golds(self) -> Int[Tensor, " prompt"]:
        """Gold class index of every prompt."""
        return torch.tensor([p.gold for p in self.prompts])

    def tokenize(self, tokenizer: Any, *, prepend_bos: bool = True, first_token: bool = False) -> TokenizedPrompts:
        """Token ids, label positions and final positions for ``tokenizer``.

        Args:
            tokenizer: a Hugging Face fast tokenizer (``model.tokenizer``).
            prepend_bos: put the tokenizer's beginning-of-sequence token first.
            first_token: accept label words of several tokens and use their first token.

        Raises:
            LabelTokenError: a label word is not one token in context.
            TypeError: the tokenizer cannot report character offsets.
        """
        return tokenize_prompts(self, tokenizer, prepend_bos=prepend_bos, first_token=first_token)
