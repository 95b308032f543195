"""Everything the command checks before it loads a model (only its tokenizer and configuration, never its weights):
:func:`validate` turns parsed arguments into a :class:`Plan` or raises a one-line :class:`UsageError` naming the fix.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_heads._cli_output import UsageError, check_out

logger = logging.getLogger("icl_heads")

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Plan:
    """A validated run: what to load, the task, the prompts, and what the report should say about the data."""

    args: argparse.Namespace
    model: str
    device: str
    task: Any
    prompts: Any
    held_out: Any
    shots: int
    skip: set[str]
    classes: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    unknown_token_share: float | None = None


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


#: the largest ``--seed``: the run derives seeds up to ``--seed + 18`` (the corrections' tuning seed + 1), and every
#: derived seed must fit in 32 bits
MAX_SEED = 2**32 - 1 - 18


def check_numbers(args: argparse.Namespace) -> None:
    for flag, value, low, high in (
        ("--n-prompts", args.n_prompts, 8, 10**6),
        ("--seed", args.seed, 0, MAX_SEED),
        ("--threads", args.threads, 1, 1024),
        ("--shots", args.shots, 1, 1000),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
        if value is not None and value > high:
            raise UsageError(f"{flag} must be at most {high}, got {value}")


def check_skip(value: str, sections: list[str]) -> set[str]:
    skip = set(_split(value))
    for name in sorted(skip - set(sections)):
        close = difflib.get_close_matches(name, sections, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UsageError(f"--skip: unknown section {name!r}; {hint}sections: {', '.join(sections)}")
    return skip


def check_device(device: str | None, dtype: str | None) -> str:
    """``--device`` (default cpu) as :func:`icl_heads.load_model` takes it; ``--dtype`` a floating dtype it accepts."""
    from icl_heads.models import resolve_device, resolve_dtype

    try:
        name = resolve_device(device or "cpu") or device or "cpu"
    except ValueError as err:
        raise UsageError(f"--device {err.args[0].removeprefix('device ')}") from None
    try:
        if dtype is not None:
            resolve_dtype(dtype)
    except ValueError as err:
        raise UsageError(f"--dtype: {err}") from None
    return name


def resolve_model(ref: str) -> tuple[str, Any, int | None]:
    """The model reference to load, its tokenizer and its context length, without loading weights.

    Raises:
        UsageError: a missing folder, one without ``config.json``, a malformed hub name, or a hub model that cannot
            be fetched (offline).
    """
    from transformers import AutoConfig, AutoTokenizer

    from icl_heads.organism import BUNDLED

    if ref in BUNDLED:
        folder: Path | None = BUNDLED[ref]
    elif ref.startswith("validation:"):
        from icl_heads.validation import validation_dir

        try:
            folder = validation_dir(ref)
        except ValueError as err:
            raise UsageError(f"--model {ref}: {err}") from None
    else:
        path = Path(ref).expanduser()
        path_like = ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1 or ref.endswith("/")
        folder = path if path.exists() or path_like else None
    if folder is not None:
        if not folder.exists():
            raise UsageError(
                f"--model {ref}: no such folder; give a local model folder (with config.json) or a hub name"
            )
        if not (folder / "config.json").is_file():
            raise UsageError(f"--model {ref}: the folder has no config.json; give a Hugging Face model folder")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            config = AutoConfig.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as err:
            raise UsageError(f"--model {ref}: cannot read its tokenizer or config ({_first_line(err)})") from None
        return str(folder) if ref not in BUNDLED else ref, tokenizer, _context(config)
    if not _HUB_NAME.match(ref):
        raise UsageError(f"--model {ref!r} is neither a local folder nor a hub name like 'gpt2' or 'org/name'")
    from icl_heads.models import check_hub_name, hub_offline

    try:
        check_hub_name(ref)  # offline or unknown: fails in a second or two, not after the hub client's retries
    except (OSError, ValueError) as err:
        raise UsageError(f"--model {ref}: {err}") from None
    offline = hub_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref, local_files_only=offline)
        config = AutoConfig.from_pretrained(ref, local_files_only=offline)
    except (OSError, ValueError) as err:
        why = "offline (HF_HUB_OFFLINE is set) and it is not in the local cache" if offline else _first_line(err)
        raise UsageError(
            f"--model {ref}: cannot fetch it from the Hugging Face hub: {why}; give a local folder"
        ) from None
    return ref, tokenizer, _context(config)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _context(config: Any) -> int | None:
    keys = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
    return next((v for k in keys if isinstance(v := getattr(config, k, None), int) and v > 0), None)


def template_of(value: str | None) -> str | int | None:
    """``--template`` as typed: ``\\n`` and ``\\t`` become a newline and a tab; ``0``-``9`` a format index.

    Raises:
        UsageError: a template without ``{text}`` then ``{label}`` (or with other braces).
    """
    from icl_heads.prompts.text import check_template

    if value is None or value.isdigit():
        return None if value is None else int(value)
    template = value.replace("\\n", "\n").replace("\\t", "\t")
    try:
        check_template(template)
    except ValueError as err:
        raise UsageError(f"--template: {err}") from None
    return template


def _named_task(args: argparse.Namespace, template: str | int | None) -> Any:
    """``--data`` that is not a .csv/.jsonl file: a named task, a hub data set or a local ``datasets`` file."""
    from icl_heads.named_tasks import load_task as load_data_set

    if args.classes is not None:
        raise UsageError(f"--classes: --data {args.data} has its own classes; --classes orders a file's labels")
    words = args.label_words if args.label_words in (None, "meaningless") else _split(args.label_words)
    try:
        return load_data_set(args.data, split=args.split, template=template, label_words=words,
                             text_col=args.text_col, label_col=args.label_col)  # fmt: skip
    except (ValueError, ImportError) as err:
        flags = {"text_col=": "--text-col", "label_col=": "--label-col", "split=": "--split"}
        message = str(err)
        for keyword, flag in flags.items():  # the API's keyword names are the command's flags here
            message = message.replace(f"with {keyword}", f"with {flag}").replace(f"and {keyword}", f"and {flag}")
        raise UsageError(f"--data {args.data}: {message}") from None


def load_task(args: argparse.Namespace) -> tuple[Any, list[str]]:
    """The task from ``--data`` (or the organism's), with its classes and label words checked."""
    from icl_heads._checks import natural_order
    from icl_heads.data import SUFFIXES, DataError, read_labelled_file
    from icl_heads.prompts import ICLTask
    from icl_heads.prompts.text import SeparatorInTextError

    notes: list[str] = []
    template = template_of(args.template)
    if args.data is not None and Path(args.data).suffix.lower() not in SUFFIXES:
        return _named_task(args, template), notes
    if isinstance(template, int):
        raise UsageError(f"--template {template}: a format number is for a named task (--data sst2); give a template")
    classes = _split(args.classes) or None
    twice = [c for i, c in enumerate(classes or []) if c in classes[:i]]
    if twice:
        raise UsageError(f"--classes {args.classes} lists {twice[0]!r} twice; list every class once")
    if args.data is None and args.task.startswith("validation:"):
        from icl_heads.validation import validation_task

        try:
            task = validation_task(args.task, label_words=_label_words(args.label_words, ["sport", "food"]))
            return (task if template is None else task.with_template(template)), notes
        except ValueError as err:
            raise UsageError(f"--task {args.task}: {err}") from None
    if args.data is None:
        if args.task != "organism":
            raise UsageError(
                f"unknown --task {args.task!r}; use 'organism', 'validation:NAME' or give --data FILE.csv|.jsonl"
            )
        from icl_heads.organism import TOPICS, organism_task

        topics = classes or ["sport", "food"]
        unknown = [t for t in topics if t not in TOPICS]
        if unknown:
            raise UsageError(
                f"--classes: the organism has no topic {unknown[0]!r}; topics: {', '.join(sorted(TOPICS))}"
            )
        words = _label_words(args.label_words, topics)
        try:
            return organism_task(tuple(topics), label_words=words, seed=args.seed, template=template), notes
        except (TypeError, ValueError) as err:
            raise UsageError(f"--classes {','.join(topics)}: {err}") from None
    try:
        flags = ("--text-col", "--label-col", "--dropna")
        data = read_labelled_file(args.data, args.text_col, args.label_col, dropna=args.dropna, options=flags)
    except DataError as err:
        raise UsageError(f"--data {err}") from None
    if data.dropped:
        notes.append(
            f"{len(data.dropped)} rows of {args.data} had a missing text or label and were dropped (--dropna)."
        )
    found = natural_order(data.labels)
    if classes is not None:
        by_name = {str(c): c for c in found}
        unknown = [c for c in classes if c not in by_name]
        if unknown:
            raise UsageError(
                f"--classes: {unknown[0]!r} is not a label in {args.data}; its labels: {', '.join(map(str, found))}"
            )
        left = [c for c in found if str(c) not in classes]
        if left:
            raise UsageError(f"--classes leaves out the label {left[0]!r} of {args.data}; list every class once")
        order = tuple(by_name[c] for c in classes)
    else:
        order = found
    if len(order) < 2:
        raise UsageError(
            f"--data {args.data}: every row has the label {order[0]!r}; a classification task needs 2+ classes"
        )
    words = _label_words(args.label_words, list(order))
    try:
        task = ICLTask.from_pairs(data.texts, data.labels, label_words=words, classes=order, name=Path(args.data).stem,
                                  **({} if template is None else {"template": template}))  # fmt: skip
    except SeparatorInTextError as err:
        raise UsageError(
            f"--data {args.data}: line {data.lines[err.index]}: the text contains {err.separator!r}, which the "
            "prompt template uses to end a text (before its label) or a demonstration, so the prompts would not "
            "read as intended; remove it from the texts (e.g. replace newlines by spaces)"
        ) from None
    except (TypeError, ValueError) as err:
        raise UsageError(f"--data {args.data}: {err}") from None
    return task, notes


def _label_words(value: str | None, classes: list[Any]) -> tuple[str, ...]:
    from icl_heads.named_tasks import MEANINGLESS_WORDS

    if value == "meaningless":
        value = ",".join(MEANINGLESS_WORDS[: len(classes)])
    words = _split(value) if value is not None else (["foo", "bar"] if len(classes) == 2 else [])
    if len(words) != len(classes):
        names = ", ".join(map(str, classes))
        given = f"{len(words)} ({', '.join(words)})" if words else "none (the default foo,bar is for 2 classes)"
        raise UsageError(f"--label-words: {len(classes)} classes ({names}) need one word each, got {given}")
    if len(set(words)) != len(words):
        raise UsageError(f"--label-words {value}: the words must differ")
    return tuple(words)


def check_prompts(plan: Plan, tokenizer: Any, n_ctx: int | None) -> None:
    """Tokenize the prompts with the model's tokenizer: label words, template, context length, unknown words."""
    from icl_heads.prompts import LabelTokenError

    for prompts in (plan.prompts, plan.held_out):
        try:
            tp = prompts.tokenize(tokenizer)
        except LabelTokenError as err:
            message = (
                str(err)
                .replace("or pass first_token=True to use the first token", "with --label-words")
                .replace("choose label words the tokenizer knows", "choose words it knows with --label-words")
            )
            raise UsageError(f"--label-words: {message}") from None
        longest = max(map(len, tp.tokens))
        if n_ctx is not None and longest > n_ctx:
            raise UsageError(
                f"--shots {plan.shots}: a prompt has {longest} tokens but the model's context is {n_ctx}; "
                "use fewer --shots or shorter texts"
            )
    share, words = unknown_tokens(plan.task.texts, tokenizer)
    plan.unknown_token_share = share
    if share:
        note = (
            f"{share:.1%} of the data's tokens are unknown to the model's tokenizer and reach the model as "
            f"{tokenizer.unk_token!r} (e.g. {', '.join(map(repr, words))}): those words carry no information."
        )
        logger.warning("warning: %s", note)
        plan.notes.append(note)


def unknown_tokens(texts: Any, tokenizer: Any, n_examples: int = 5) -> tuple[float, list[str]]:
    """Share of the texts' tokens that the tokenizer maps to its unknown token, and some such words."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return 0.0, []
    total, unknown, words = 0, 0, {}
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        total += len(enc["input_ids"])
        for tok, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            if tok == unk:
                unknown += 1
                if len(words) < n_examples:
                    words.setdefault(text[a:b], None)
    return (unknown / total if total else 0.0), list(words)


def validate(args: argparse.Namespace, sections: list[str], checks: dict[str, Callable[[Plan], None]]) -> Plan:
    """Check every input of ``analyze`` (``args``; ``sections`` by name, in order, and ``checks`` of some of them
    that raise :class:`UsageError` when the plan cannot run that section) without loading the model; the plan to run.

    Raises:
        UsageError: the first problem found, in one line naming the option.
    """
    check_numbers(args)
    skip = check_skip(args.skip, sections)
    check_out(args.out, args.force)
    device = check_device(args.device, getattr(args, "dtype", None))
    model, tokenizer, n_ctx = resolve_model(args.model)
    task, notes = load_task(args)
    k = len(task.classes)
    shots = args.shots if args.shots is not None else k * math.ceil(4 / k)  # the smallest multiple of k >= 4
    pairs = enumerate(zip(task.classes, task.label_words, strict=True))
    classes = [{"class": c, "label_word": w, "examples": task.labels.count(i)} for i, (c, w) in pairs]
    try:
        prompts = task.prompts(args.n_prompts, shots, seed=args.seed)
        held_out = task.prompts(args.n_prompts, shots, seed=args.seed + 1)
    except ValueError as err:
        raise UsageError(f"--shots {shots}: {err}") from None
    plan = Plan(args, model, device, task, prompts, held_out, shots, skip, classes, notes)
    for name in sections:
        if name not in skip and name in checks:
            checks[name](plan)
    check_prompts(plan, tokenizer, n_ctx)
    return plan
