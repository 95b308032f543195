"""A prompt in text: the template's rules, one prompt, and its rendering with the label spans."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TEMPLATE = "{text} : {label}\n"


def check_template(template: str) -> None:
    """Refuse a template without exactly one ``{text}`` before one ``{label}``, or with other braces."""
    if not isinstance(template, str) or template.count("{text}") != 1 or template.count("{label}") != 1:
        raise ValueError(
            f"template must contain '{{text}}' and '{{label}}' exactly once each, got {template!r}; "
            f"for example {DEFAULT_TEMPLATE!r}"
        )
    if template.index("{text}") > template.index("{label}"):
        raise ValueError(f"template must put '{{text}}' before '{{label}}', got {template!r}")
    try:
        template.format(text="x", label="y")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"template {template!r} has braces other than {{text}} and {{label}} ({err}); double them as '{{{{'"
        ) from None


def template_separators(template: str) -> tuple[str, ...]:
    """The parts of the template after ``{text}`` and after ``{label}`` that end a text in a prompt.

    A part with a newline counts as the newline itself; a part of whitespace only is no separator.
    """
    parts = template.split("{text}")[1].split("{label}")
    return tuple(dict.fromkeys("\n" if "\n" in part else part for part in parts if part.strip() or "\n" in part))


class SeparatorInTextError(ValueError):
    """A text contains a separator of the template; ``index`` is the text's position in the task."""

    def __init__(self, message: str, index: int, separator: str):
        super().__init__(message)
        self.index = index
        self.separator = separator


def check_separators(texts: tuple[str, ...], template: str) -> None:
    """Raise :class:`SeparatorInTextError` for the first text that contains one of the template's separators."""
    for sep in template_separators(template):
        at = next((i for i, t in enumerate(texts) if sep in t), None)
        if at is not None:
            raise SeparatorInTextError(
                f"text {at} ({texts[at][:40]!r}) contains {sep!r}, which the template {template!r} uses to separate "
                "a text from its label and the demonstrations from each other, so the prompt would not read as "
                "intended; remove it from the texts (e.g. replace newlines by spaces) or use another template",
                at,
                sep,
            )


@dataclass(frozen=True)
class ICLPrompt:
    """One prompt in text: demonstrations ``(text, class)`` then a query."""

    demos: tuple[tuple[str, int], ...]
    query: str
    gold: int


def render(prompt: ICLPrompt, task: Any) -> tuple[str, list[tuple[int, int]], str]:
    """The prompt string, the character span of every demonstration label, the query prefix."""
    before, after = task.template.split("{label}")
    text, spans = "", []
    for demo, y in prompt.demos:
        head, word = text + before.format(text=demo), task.label_words[y]
        spans.append((len(head), len(head) + len(word)))
        text = head + word + after
    query = before.format(text=prompt.query).rstrip(" ")
    return text + query, spans, query
