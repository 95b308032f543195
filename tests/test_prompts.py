"""Prompt building: sampling, balance and order, label positions for word-level and BPE tokenizers."""

import itertools
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icl_heads.organism import HELDOUT_TEMPLATES, TRAIN_TEMPLATES, organism_task
from icl_heads.organism.vocab import LABEL_WORDS, build_tokenizer
from icl_heads.prompts import ICLTask, LabelTokenError, render
from icl_heads.testing import bpe_tokenizer

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="session")
def tokenizers():
    return {"word": build_tokenizer(), "bpe": bpe_tokenizer()}


@pytest.fixture(scope="session")
def task3():
    return organism_task(("sport", "food", "music"), n_per_class=30, label_words=("foo", "bar", "baz"), seed=5)


def _class_of(task):
    """Text -> set of classes it appears with (texts can repeat across classes)."""
    out = {}
    for t, y in zip(task.texts, task.labels, strict=True):
        out.setdefault(t, set()).add(y)
    return out


def _expected_label_id(tokenizer, kind, word):
    """The label token, found independently of the package: the vocabulary entry of the word."""
    return tokenizer.convert_tokens_to_ids(word if kind == "word" else "Ġ" + word)


def assert_label_positions(tp, tokenizer, kind, *, spaced=True):
    """Every label position holds the label token of its demonstration and decodes back to the label.

    ``spaced``: the template has a space before ``{label}``, so the label token is known in advance.
    """
    task = tp.prompts.task
    if spaced:
        assert tp.label_token_ids == tuple(_expected_label_id(tokenizer, kind, w) for w in task.label_words)
    assert [tokenizer.decode([t]).strip() for t in tp.label_token_ids] == list(task.label_words)
    for i, p in enumerate(tp.prompts.prompts):
        tokens, positions, labels = tp.tokens[i], tp.label_positions[i], tp.demo_labels[i]
        assert tokens[0] == tokenizer.bos_token_id
        assert labels == tuple(y for _, y in p.demos)
        assert len(positions) == len(p.demos)
        assert list(positions) == sorted(set(positions))
        for pos, y in zip(positions, labels, strict=True):
            assert tokens[pos] == tp.label_token_ids[y]
        text, spans, _ = render(p, task)
        if kind == "bpe":  # byte-level BPE is lossless: the prefix up to a label decodes to the text up to it
            assert tokenizer.decode(tokens[1:]) == text
            for pos, (_, end) in zip(positions, spans, strict=True):
                assert tokenizer.decode(tokens[1 : pos + 1]) == text[:end]
        assert tp.final_positions[i] == len(tokens) - 1
        assert tp.golds[i] == p.gold


# ---- tasks from several sources --------------------------------------------------------------


def test_task_from_lists_dataframe_csv_jsonl_agree(tmp_path):
    texts = ["goal team", "soup", "bread cheese", "match", "rice cake", "coach"]
    labels = ["sport", "food", "food", "sport", "food", "sport"]
    from_lists = ICLTask.from_pairs(texts, labels, name="demo")
    df = pd.DataFrame({"sentence": texts, "topic": labels})
    from_df = ICLTask.from_dataframe(df, "sentence", "topic", name="demo")
    df.to_csv(tmp_path / "demo.csv", index=False)
    from_csv = ICLTask.from_file(tmp_path / "demo.csv", "sentence", "topic")
    (tmp_path / "demo.jsonl").write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in zip(texts, labels, strict=True))
    )
    from_jsonl = ICLTask.from_file(tmp_path / "demo.jsonl")
    for task in (from_df, from_csv, from_jsonl):
        assert task == from_lists
    assert from_lists.classes == ("sport", "food")  # order of first appearance
    assert from_lists.labels == (0, 1, 1, 0, 1, 0)
    assert from_csv.name == "demo"


def test_explicit_classes_fix_the_label_word_order():
    task = ICLTask.from_pairs(["a", "b", "c"], ["x", "y", "x"], classes=("y", "x"), label_words=("bar", "foo"))
    assert task.labels == (1, 0, 1)
    p = task.prompts(4, 0, seed=0, gold=0)
    assert all(prompt.query == "b" for prompt in p.prompts)


def test_with_label_words_and_template_keep_the_data(task):
    other = task.with_label_words(("baz", "qux")).with_template("{text} -> {label}\n")
    assert (other.texts, other.labels, other.classes) == (task.texts, task.labels, task.classes)
    assert other.prompts(3, 2, seed=4).texts()[0].count(" -> ") == 2


# ---- sampling: balance, order, gold, determinism ------------------------------------------------


@pytest.mark.parametrize(
    "order, counts, expected",
    [
        ("blocked", (3, 1), (0, 0, 0, 1)),
        ("blocked_reversed", (3, 1), (1, 0, 0, 0)),
        ("alternating", (2, 2), (0, 1, 0, 1)),
        ("alternating", (3, 1), (0, 1, 0, 0)),
        ((1, 1, 0, 1), None, (1, 1, 0, 1)),
        ((1, 0, 0, 1), (2, 2), (1, 0, 0, 1)),
    ],
)
def test_deterministic_orders(task, order, counts, expected):
    p = task.prompts(10, 4, seed=1, counts=counts, order=order)
    assert {tuple(y for _, y in prompt.demos) for prompt in p.prompts} == {expected}


def test_three_class_orders(task3):
    cases = {
        "blocked": (0, 0, 1, 2, 2),
        "blocked_reversed": (2, 2, 1, 0, 0),
        "alternating": (0, 1, 2, 0, 2),
    }
    for order, expected in cases.items():
        p = task3.prompts(6, 5, seed=2, counts=(2, 1, 2), order=order)
        assert {tuple(y for _, y in prompt.demos) for prompt in p.prompts} == {expected}


def test_random_order_keeps_counts_and_varies(task):
    p = task.prompts(40, 4, seed=3, counts=(3, 1))
    orders = Counter(tuple(y for _, y in prompt.demos) for prompt in p.prompts)
    assert all(Counter(o) == {0: 3, 1: 1} for o in orders)
    assert len(orders) == 4  # the single class-1 demonstration lands in every slot


def test_default_balance_and_gold(task):
    p = task.prompts(41, 5, seed=4)
    for prompt in p.prompts:
        c = Counter(y for _, y in prompt.demos)
        assert abs(c[0] - c[1]) == 1
    golds = Counter(prompt.gold for prompt in p.prompts)
    assert abs(golds[0] - golds[1]) <= 1
    torch.testing.assert_close(p.golds, torch.tensor([prompt.gold for prompt in p.prompts]))
    assert {prompt.gold for prompt in task.prompts(9, 2, seed=4, gold=1).prompts} == {1}


def test_same_seed_same_prompts_other_seed_other_prompts(task):
    a = task.prompts(12, 4, seed=7, counts=(2, 2))
    b = task.prompts(12, 4, seed=7, counts=(2, 2))
    c = task.prompts(12, 4, seed=8, counts=(2, 2))
    assert a.prompts == b.prompts and a.texts() == b.texts()
    assert a.prompts != c.prompts
    assert a.config == {"n": 12, "shots": 4, "seed": 7, "counts": (2, 2), "order": "random", "gold": None}


def test_demonstrations_and_query_are_distinct_examples_of_their_class():
    texts = [f"{w}" for w in ("goal", "team", "match", "coach", "soup", "bread", "rice", "cake")]
    task = ICLTask.from_pairs(texts, ["s"] * 4 + ["f"] * 4)
    for prompt in task.prompts(30, 6, seed=0, counts=(3, 3)).prompts:
        used = [t for t, _ in prompt.demos] + [prompt.query]
        assert len(set(used)) == len(used)
        assert all(task.labels[task.texts.index(t)] == y for t, y in prompt.demos)
        assert task.labels[task.texts.index(prompt.query)] == prompt.gold


def test_zero_shot_prompt_is_the_query(task, tokenizers):
    p = task.prompts(2, 0, seed=0)
    assert p.texts()[0] == p.prompts[0].query + " :"
    tp = p.tokenize(tokenizers["word"])
    assert tp.label_positions == ((), ())


def test_slicing_keeps_the_task(task):
    p = task.prompts(5, 2, seed=0)
    assert len(p[1:3]) == 2 and p[1:3].task is task and p[4].prompts == (p.prompts[4],)


# ---- tokenization ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["word", "bpe"])
@pytest.mark.parametrize("template", TRAIN_TEMPLATES + HELDOUT_TEMPLATES)
def test_label_positions_hold_label_tokens(kind, template, task, tokenizers):
    tok = tokenizers[kind]
    p = task.with_template(template).prompts(6, 5, seed=11)
    tp = p.tokenize(tok)
    assert_label_positions(tp, tok, kind)
    gold_words = [task.label_words[g] for g in tp.golds]
    texts = p.texts()
    for i, text in enumerate(texts):
        # the gold label is the token that continues the prompt
        cont = tok(text + " " + gold_words[i], add_special_tokens=False)["input_ids"]
        assert cont[len(tp.tokens[i]) - 1] == tp.label_token_ids[tp.golds[i]]


def test_word_level_prompt_reads_as_expected(tokenizers):
    task = ICLTask.from_pairs(["goal team", "soup", "bread"], ["sport", "food", "food"], classes=("sport", "food"))
    p = task.prompts(1, 2, seed=0, order=(1, 0), gold=1)
    tp = p.tokenize(tokenizers["word"])
    words = tokenizers["word"].convert_ids_to_tokens(list(tp.tokens[0]))
    query = p.prompts[0].query
    demo_food = p.prompts[0].demos[0][0]
    assert words == ["<bos>", demo_food, ":", "bar", "\n", "goal", "team", ":", "foo", "\n", query, ":"]
    assert tp.label_positions == ((3, 8),)
    assert tp.demo_labels == ((1, 0),)


def test_prepend_bos_false(task, tokenizers):
    p = task.prompts(3, 2, seed=0)
    with_bos, without = p.tokenize(tokenizers["bpe"]), p.tokenize(tokenizers["bpe"], prepend_bos=False)
    assert all(a[1:] == b for a, b in zip(with_bos.tokens, without.tokens, strict=True))
    assert all(
        tuple(x - 1 for x in a) == b for a, b in zip(with_bos.label_positions, without.label_positions, strict=True)
    )


@pytest.mark.parametrize("side", ["left", "right"])
def test_batches_shift_positions_with_padding(side, task, tokenizers):
    tp = task.prompts(9, 4, seed=2).tokenize(tokenizers["bpe"])
    seen = []
    for batch in tp.batches(4, side, pad_id=0):
        assert batch.padding_side == side
        for b, i in enumerate(batch.index.tolist()):
            seen.append(i)
            row, mask = batch.tokens[b], batch.attention_mask[b]
            assert row[mask.bool()].tolist() == list(tp.tokens[i])
            assert mask[batch.final_positions[b]] == 1
            if side == "left":
                assert batch.final_positions[b] == batch.tokens.shape[1] - 1
            else:
                assert batch.final_positions[b] == len(tp.tokens[i]) - 1
            ids = torch.tensor(tp.label_token_ids)[batch.demo_labels[b]]
            assert row[batch.label_positions[b]].tolist() == ids.tolist()
        assert batch.golds.tolist() == [tp.golds[i] for i in batch.index.tolist()]
    assert seen == list(range(9))


def test_batch_pads_demonstrations_of_unequal_prompts(task, tokenizers):
    a = task.prompts(2, 3, seed=0)
    b = task.prompts(1, 1, seed=1)
    mixed = type(a)(prompts=a.prompts + b.prompts, task=task)
    tp = mixed.tokenize(tokenizers["word"])
    batch = next(tp.batches(3))
    assert batch.label_positions.shape == (3, 3)
    assert batch.label_positions[2, 1:].tolist() == [-1, -1]
    assert batch.demo_labels[2, 1:].tolist() == [-1, -1]


def test_first_token_uses_the_first_piece_of_a_long_label(task, tokenizers):
    tok = tokenizers["bpe"]
    p = task.with_label_words(("football", "bar")).prompts(4, 4, seed=0, counts=(2, 2))
    with pytest.raises(LabelTokenError, match="'football' is 4 tokens"):
        p.tokenize(tok)
    tp = p.tokenize(tok, first_token=True)
    assert tp.label_token_ids == (tok.convert_tokens_to_ids("Ġfoo"), tok.convert_tokens_to_ids("Ġbar"))
    for i in range(len(tp)):
        for pos, y in zip(tp.label_positions[i], tp.demo_labels[i], strict=True):
            assert tp.tokens[i][pos] == tp.label_token_ids[y]
            if y == 0:
                assert tok.decode(tp.tokens[i][pos : pos + 4]) == " football"


# ---- properties -------------------------------------------------------------------------------

COUNTS = st.integers(0, 6).flatmap(lambda a: st.tuples(st.just(a), st.integers(0, 6)))
ORDERS = st.sampled_from(["random", "blocked", "blocked_reversed", "alternating"])


@PROPERTY
@given(counts=COUNTS, order=ORDERS, seed=st.integers(0, 2**16), n=st.integers(1, 6))
def test_property_counts_and_order(task, counts, order, seed, n):
    shots = sum(counts)
    p = task.prompts(n, shots, seed=seed, counts=counts, order=order)
    assert len(p) == n
    cls = _class_of(task)
    for prompt in p.prompts:
        seq = [y for _, y in prompt.demos]
        assert Counter(seq) == Counter({c: k for c, k in enumerate(counts) if k})
        if order == "blocked":
            assert seq == sorted(seq)
        elif order == "blocked_reversed":
            assert seq == sorted(seq, reverse=True)
        elif order == "alternating":
            # round robin over the classes until each has its count
            assert all(a != b for a, b in list(itertools.pairwise(seq))[: max(0, 2 * min(counts) - 1)])
            assert seq[: 2 * min(counts)] == [0, 1] * min(counts)
            assert set(seq[2 * min(counts) :]) <= {int(counts[1] > counts[0])}
        assert all(y in cls[t] for t, y in prompt.demos)
        assert prompt.gold in cls[prompt.query]
    assert task.prompts(n, shots, seed=seed, counts=counts, order=order).prompts == p.prompts


@PROPERTY
@given(order=st.lists(st.integers(0, 2), min_size=0, max_size=7), seed=st.integers(0, 1000))
def test_property_explicit_order(task3, order, seed):
    p = task3.prompts(3, len(order), seed=seed, order=order)
    assert all([y for _, y in prompt.demos] == order for prompt in p.prompts)


@PROPERTY
@given(
    kind=st.sampled_from(["word", "bpe"]),
    words=st.lists(st.sampled_from(LABEL_WORDS), min_size=2, max_size=2, unique=True),
    template=st.sampled_from(TRAIN_TEMPLATES + HELDOUT_TEMPLATES),
    shots=st.integers(0, 6),
    seed=st.integers(0, 1000),
)
def test_property_known_words_and_templates_tokenize(task, tokenizers, kind, words, template, shots, seed):
    p = task.with_label_words(words).with_template(template).prompts(3, shots, seed=seed)
    assert_label_positions(p.tokenize(tokenizers[kind]), tokenizers[kind], kind)


PIECE = st.sampled_from(["", " ", "\n", "input ", " output ", " : ", ":", " -> ", "->", " =", " | ", "x", ", "])


@PROPERTY
@given(
    kind=st.sampled_from(["word", "bpe"]),
    pre=PIECE,
    sep=PIECE,
    post=PIECE,
    words=st.lists(st.sampled_from(LABEL_WORDS), min_size=2, max_size=2, unique=True),
    seed=st.integers(0, 1000),
)
def test_property_any_template_tokenizes_right_or_refuses(task, tokenizers, kind, pre, sep, post, words, seed):
    """Odd templates either raise a LabelTokenError or put every label at its position, never silently wrong."""
    template = pre + "{text}" + sep + "{label}" + post
    p = task.with_label_words(words).with_template(template).prompts(3, 3, seed=seed)
    tok = tokenizers[kind]
    try:
        tp = p.tokenize(tok)
    except LabelTokenError as err:
        assert "label" in str(err)
        return
    assert_label_positions(tp, tok, kind, spaced=kind == "word" or sep.endswith(" "))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(st.text(alphabet="abcdefgh :\n->", min_size=1, max_size=12), min_size=6, max_size=12),
    seed=st.integers(0, 1000),
)
def test_property_arbitrary_texts_bpe(tokenizers, texts, seed):
    """Texts containing spaces and colons never shift a label position; one holding a separator is refused."""
    from icl_heads.prompts.text import SeparatorInTextError

    labels = [i % 2 for i in range(len(texts))]
    try:
        task = ICLTask.from_pairs(texts, labels)
    except SeparatorInTextError as err:
        assert err.separator in (" : ", "\n") and err.separator in texts[err.index]
        assert not any(err.separator in t for t in texts[: err.index])  # the first such text is named
        return
    assert not any(" : " in t or "\n" in t for t in texts)
    tp = task.prompts(2, 2, seed=seed, counts=(1, 1)).tokenize(tokenizers["bpe"])
    assert_label_positions(tp, tokenizers["bpe"], "bpe")


def test_arbitrary_text_ending_in_space_still_tokenizes(tokenizers):
    task = ICLTask.from_pairs(["ab ", "cd  ", "ef :", "gh"], [0, 1, 0, 1])
    tp = task.prompts(2, 2, seed=0, counts=(1, 1)).tokenize(tokenizers["bpe"])
    assert_label_positions(tp, tokenizers["bpe"], "bpe")
    assert np.all(np.diff(tp.label_positions[0]) > 0)


@PROPERTY
@given(
    words=st.lists(st.text(alphabet="abfortuxyz", min_size=1, max_size=8), min_size=2, max_size=2, unique=True),
    first_token=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_arbitrary_label_words_bpe(task, tokenizers, words, first_token, seed):
    """A label word of several tokens is refused (or cut to its first token on request), never misplaced."""
    tok = tokenizers["bpe"]
    pieces = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    p = task.with_label_words(words).prompts(3, 3, seed=seed)
    try:
        tp = p.tokenize(tok, first_token=first_token)
    except LabelTokenError as err:
        if first_token:
            blank = [tok.decode(ids[:1]).strip() == "" for ids in pieces]
            assert (pieces[0][0] == pieces[1][0] and "share the first token" in str(err)) or (
                any(blank) and "starts with the whitespace token" in str(err)
            )
        else:
            assert any(len(ids) > 1 for ids in pieces) and "first_token=True" in str(err)
        return
    assert tp.label_token_ids == (pieces[0][0], pieces[1][0])
    assert first_token or all(len(ids) == 1 for ids in pieces)
    for i in range(len(tp)):
        for pos, y in zip(tp.label_positions[i], tp.demo_labels[i], strict=True):
            assert tp.tokens[i][pos] == tp.label_token_ids[y]
            assert tp.tokens[i][pos : pos + len(pieces[y])] == tuple(pieces[y])
