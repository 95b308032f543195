"""A prompt in text: the template's rules, one prompt, and its rendering with the label spans."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TEMPLATE = "{text} : {label}\n"


def check_template(template: str) -> None:
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


@dataclass(frozen=True)
class ICLPrompt:
    """One prompt in text: demonstrations ``(text, class)`` then a query."""

    demos: tuple[tuple[str, int], ...]
    query: str
    gold: int


def render(prompt: ICLPrompt, task: Any) -> tuple[str, list[tuple[int, int]], str]:
    """The prompt string, the character span of every demonstration label, the query prefix."""
    before, after = task.template.split("{label}")
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    offset = 0
    for text, y in prompt.demos:
        head = before.format(text=text)
        word = task.label_words[y]
        spans.append((offset + len(head), offset + len(head) + len(word)))
        piece = head + word + after
        parts.append(piece)
        offset += len(piece)
    query = before.format(text=prompt.query).rstrip(" ")
    return "".join(parts) + query, spans, query
