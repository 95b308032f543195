"""Bad input gets a specific error that names the problem and the fix."""

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

import icl_heads as ih
from icl_heads.organism.vocab import build_tokenizer
from icl_heads.prompts import ICLTask, LabelTokenError, PromptTooLongError
from icl_heads.testing import bpe_tokenizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TEXTS = ["goal", "team", "match", "soup", "bread", "rice"]
LABELS = ["sport", "sport", "sport", "food", "food", "food"]


@pytest.fixture(scope="module")
def word_tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def bpe_tok():
    return bpe_tokenizer()


# ---- label words --------------------------------------------------------------------------------


def test_multi_token_label_word_is_refused_with_the_opt_in_named(task, bpe_tok):
    prompts = task.with_label_words(("football", "bar")).prompts(2, 2)
    with pytest.raises(LabelTokenError, match=r"'football' is 4 tokens \['Ġfoo', 't', 'b', 'all'\].*first_token=True"):
        prompts.tokenize(bpe_tok)
    assert prompts.tokenize(bpe_tok, first_token=True).label_token_ids[0] == bpe_tok.convert_tokens_to_ids("Ġfoo")


def test_multi_token_label_word_through_icl_accuracy(models, task):
    prompts = task.with_label_words(("foo", "barbecue")).prompts(2, 2)
    with pytest.raises(LabelTokenError, match=r"'barbecue' is .* tokens"):
        ih.icl_accuracy(models["gpt2"], prompts)


def test_label_word_split_from_its_space(task, bpe_tok):
    prompts = task.with_label_words(("u", "bar")).prompts(2, 2)  # " u" is the tokens 'Ġ' then 'u'
    with pytest.raises(LabelTokenError, match=r"'u' is 2 tokens \['Ġ', 'u'\]"):
        prompts.tokenize(bpe_tok)
    with pytest.raises(LabelTokenError, match="starts with the whitespace token 'Ġ'"):
        prompts.tokenize(bpe_tok, first_token=True)


def test_label_words_sharing_a_first_token(task, bpe_tok):
    prompts = task.with_label_words(("foo", "football")).prompts(2, 2)
    with pytest.raises(LabelTokenError, match="share the first token"):
        prompts.tokenize(bpe_tok, first_token=True)


def test_unknown_label_word_for_a_word_level_tokenizer(task, word_tok):
    for first_token in (False, True):
        with pytest.raises(LabelTokenError, match="'football' is not in the tokenizer's vocabulary"):
            task.with_label_words(("football", "bar")).prompts(2, 2).tokenize(word_tok, first_token=first_token)


def test_label_word_glued_to_the_template(task, word_tok):
    glued = task.with_template("{text} ->{label}\n").prompts(2, 2)
    for first_token in (False, True):
        with pytest.raises(LabelTokenError, match="merges with the template"):
            glued.tokenize(word_tok, first_token=first_token)


def test_label_word_glued_to_the_next_demonstration(bpe_tok):
    task = ICLTask.from_pairs(TEXTS, LABELS, template="{text} : {label}")
    with pytest.raises(LabelTokenError, match="inside the prompt"):
        task.prompts(3, 4, seed=0, counts=(2, 2)).tokenize(bpe_tok)


@pytest.mark.parametrize(
    "words, match",
    [
        (("foo",), "has 1 words for 2 classes"),
        (("foo", "foo"), "distinct non-empty"),
        (("foo", " "), "distinct non-empty"),
        ((" foo", "bar"), "start or end with whitespace"),
    ],
)
def test_bad_label_words(words, match):
    with pytest.raises(ValueError, match=match):
        ICLTask.from_pairs(TEXTS, LABELS, label_words=words)


# ---- templates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, match",
    [
        ("{text} :\n", r"must contain '\{text\}' and '\{label\}' exactly once"),
        ("review : {label}\n", r"must contain '\{text\}' and '\{label\}' exactly once"),
        ("{text} {text} : {label}\n", "exactly once"),
        ("{label} : {text}\n", r"must put '\{text\}' before '\{label\}'"),
        ("{text} {mood} : {label}\n", "braces other than"),
        ("{text} } : {label}\n", "braces other than"),
    ],
)
def test_bad_templates(template, match):
    with pytest.raises(ValueError, match=match):
        ICLTask.from_pairs(TEXTS, LABELS, template=template)
    task = ICLTask.from_pairs(TEXTS, LABELS)
    with pytest.raises(ValueError, match=match):
        task.with_template(template)


# ---- data ---------------------------------------------------------------------------------------


def test_empty_and_mismatched_data():
    with pytest.raises(ValueError, match="the task has no examples"):
        ICLTask.from_pairs([], [])
    with pytest.raises(ValueError, match="got 3 texts but 2 labels"):
        ICLTask.from_pairs(["a", "b", "c"], ["x", "y"])
    with pytest.raises(ValueError, match="at least 2 classes"):
        ICLTask.from_pairs(["a", "b"], ["x", "x"], label_words=("foo",))


def test_labels_outside_the_task():
    with pytest.raises(ValueError, match=r"labels \['weather'\] are not among the task's classes \['sport', 'food'\]"):
        ICLTask.from_pairs(["a", "b", "c"], ["sport", "food", "weather"], classes=("sport", "food"))
    with pytest.raises(ValueError, match=r"labels \[2\] are not class indices in \[0, 2\).*from_pairs"):
        ICLTask(texts=("a", "b", "c"), labels=(0, 1, 2), classes=("x", "y"))
    # our message, or under the test suite's runtime type checks the checker's, naming the parameter
    with pytest.raises((ValueError, TypeError), match=r"labels \['y'\] are not class indices|ICLTask.__init__"):
        ICLTask(texts=("a", "b"), labels=(0, "y"), classes=("x", "y"))


def test_missing_columns_and_unknown_files(tmp_path):
    df = pd.DataFrame({"sentence": TEXTS, "label": LABELS})
    with pytest.raises(ValueError, match=r"columns \['text'\] not in the data; it has \['sentence', 'label'\]"):
        ICLTask.from_dataframe(df)
    path = tmp_path / "data.parquet"
    path.write_text("")
    with pytest.raises(ValueError, match=r"use a \.csv or \.jsonl file"):
        ICLTask.from_file(path)


# ---- sampling -----------------------------------------------------------------------------------


def test_fewer_examples_than_shots():
    task = ICLTask.from_pairs(TEXTS, LABELS)
    with pytest.raises(ValueError, match=r"class 'sport' has 3 examples but a prompt needs 4.*lower shots"):
        task.prompts(2, 6, counts=(3, 3), gold=0)
    with pytest.raises(ValueError, match="has 3 examples but a prompt needs"):
        task.prompts(2, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0, "shots": 2}, "n must be at least 1, got 0"),
        ({"n": 2, "shots": -1}, "shots must be >= 0, got -1"),
        ({"n": 2, "shots": 4, "counts": (1, 1)}, r"counts \(1, 1\) must give one non-negative count per class"),
        ({"n": 2, "shots": 2, "counts": (1, 1, 0)}, "summing to shots=2"),
        ({"n": 2, "shots": 2, "counts": (3, -1)}, "non-negative"),
        ({"n": 2, "shots": 2, "order": "shuffled"}, r"order must be one of \('random', 'blocked'"),
        ({"n": 2, "shots": 2, "order": (0, 2)}, r"explicit order \(0, 2\) must list 2 class indices in \[0, 2\)"),
        ({"n": 2, "shots": 3, "order": (0, 1)}, "must list 3 class indices"),
        ({"n": 2, "shots": 2, "order": (0, 0), "counts": (1, 1)}, r"has \(2, 0\) demonstrations per class but counts"),
        ({"n": 2, "shots": 2, "gold": 2}, r"gold must be a class index in \[0, 2\), got 2"),
    ],
)
def test_bad_sampling_arguments(kwargs, match):
    task = ICLTask.from_pairs(TEXTS, LABELS)
    with pytest.raises(ValueError, match=match):
        task.prompts(**kwargs)


# ---- models and evaluation ----------------------------------------------------------------------


def test_prompt_longer_than_the_context(models, task):
    prompts = task.prompts(2, 40, seed=0)
    with pytest.raises(
        PromptTooLongError, match=r"a prompt has \d+ tokens but the model's context is 128.*fewer shots"
    ):
        ih.icl_accuracy(models["gpt2"], prompts)
    assert issubclass(PromptTooLongError, ValueError)


def test_empty_prompt_set(models, task):
    with pytest.raises(ValueError, match="no prompts given"):
        ih.icl_accuracy(models["llama"], task.prompts(3, 2)[0:0])


@pytest.mark.parametrize("bad", ["gpt2", None, 3.0])
def test_unsupported_model_objects(bad, task):
    with pytest.raises(TypeError, match=rf"expected a TransformerLens model .*got {type(bad).__name__}.*load_model"):
        ih.icl_accuracy(bad, task.prompts(2, 2))


def test_hugging_face_model_is_not_a_transformer_lens_model(model_dirs, task):
    hf = AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"])
    with pytest.raises(TypeError, match=r"got GPT2LMHeadModel; load one with icl_heads.load_model"):
        ih.icl_accuracy(hf, task.prompts(2, 2))


def test_prompts_of_the_wrong_type(models):
    # our message, or under the test suite's runtime type checks the checker's, naming the expected types
    with pytest.raises(
        TypeError, match=r"expected prompts from ICLTask.prompts.*got list|ICLPrompts \| \S*TokenizedPrompts"
    ):
        ih.icl_accuracy(models["llama"], ["goal : foo\nsoup :"])


@pytest.mark.parametrize("kwargs, match", [({"batch_size": 0}, "batch_size must be at least 1"),
                                           ({"padding_side": "middle"}, "padding_side must be 'left' or 'right'")])  # fmt: skip
def test_bad_batching(models, task, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ih.icl_accuracy(models["llama"], task.prompts(2, 2), options=ih.RunOptions(**kwargs))


def test_slow_tokenizer_is_refused(task):
    class SlowTokenizer:
        is_fast = False
        bos_token_id = 0

    with pytest.raises(TypeError, match=r"SlowTokenizer is not a fast tokenizer.*use_fast=True"):
        task.prompts(2, 2).tokenize(SlowTokenizer())
