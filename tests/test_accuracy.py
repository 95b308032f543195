"""ICL accuracy: invariance to batching and padding, per-gold rows, intervals, strict accuracy."""

import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.accuracy import predict
from icl_heads.options import RunOptions
from icl_heads.organism import organism_task
from icl_heads.prompts import LabelTokenError
from icl_heads.testing import majority_copier_gpt2_dir


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def final_logits(model, tp, batch_size, padding_side):
    """Whole-vocabulary logits at every prompt's final position, in prompt order."""
    access = ModelAccess(model)
    return torch.cat([access.run(b)[0] for b in access.batches(tp, batch_size, padding_side)])


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    """A hand-built model that predicts the label most frequent among the demonstrations."""
    return ih.load_model(majority_copier_gpt2_dir(tmp_path_factory.mktemp("copier")))


def assert_same_result(a, b):
    pd.testing.assert_frame_equal(a.df, b.df)
    torch.testing.assert_close(a.label_logits, b.label_logits, atol=1e-5, rtol=0)
    assert torch.equal(a.strict_correct, b.strict_correct) and torch.equal(a.golds, b.golds)


def test_padding_and_batch_size_do_not_change_results(any_model, task, fresh):
    prompts = task.prompts(32, 5, seed=3)
    access = ModelAccess(any_model)
    tp = access.tokenize(prompts)
    assert len({len(t) for t in tp.tokens}) > 5  # prompts of many lengths, so padding is exercised
    # one prompt per batch has no padding, so its padding side is moot and it is run once
    assert not any(b.has_padding for side in ("left", "right") for b in access.batches(tp, 1, side))
    ref = ih.icl_accuracy(any_model, prompts, options=RunOptions(batch_size=32, padding_side="right"))
    ref_logits = final_logits(any_model, tp, 32, "right")
    assert ref_logits.std() > 1e-2  # the comparison below is not between constants
    for batch_size, side in [(1, "right"), (7, "left"), (7, "right"), (32, "left")]:
        got = ih.icl_accuracy(any_model, prompts, options=RunOptions(batch_size=batch_size, padding_side=side))
        assert_same_result(got, ref)
        torch.testing.assert_close(final_logits(any_model, tp, batch_size, side), ref_logits, atol=1e-5, rtol=0)


def test_label_logits_and_strict_accuracy_from_final_logits(any_model, task):
    prompts = task.prompts(24, 4, seed=5)
    access = ModelAccess(any_model)
    tp = access.tokenize(prompts)
    logits = final_logits(any_model, tp, 8, "left")
    label_ids = torch.tensor(tp.label_token_ids)
    golds = torch.tensor(tp.golds)
    result = ih.icl_accuracy(any_model, prompts, options=RunOptions(batch_size=8))
    torch.testing.assert_close(result.label_logits, logits[:, label_ids], atol=1e-5, rtol=0)
    correct = (logits[:, label_ids].argmax(-1) == golds).float()
    strict = (logits.argmax(-1) == label_ids[golds]).float()
    assert result.accuracy == pytest.approx(correct.mean().item())
    assert result.strict_accuracy == pytest.approx(strict.mean().item())
    assert torch.equal(result.strict_correct, strict.long())
    # a prompt right over the whole vocabulary is right over the label set
    assert bool((result.strict_correct <= (result.label_logits.argmax(-1) == result.golds).long()).all())
    assert (result.df.strict_accuracy <= result.df.accuracy + 1e-12).all()


def test_per_gold_rows_and_intervals(any_model, task):
    prompts = task.prompts(30, 4, seed=6)
    result = ih.icl_accuracy(any_model, prompts)
    df = result.df.set_index("scope")
    assert list(df.index) == ["all", "gold=foo", "gold=bar"]
    correct = (result.label_logits.argmax(-1) == result.golds).float()
    for i, word in enumerate(("foo", "bar")):
        mask = result.golds == i
        assert df.loc[f"gold={word}", "n"] == int(mask.sum()) == 15
        assert df.loc[f"gold={word}", "accuracy"] == pytest.approx(correct[mask].mean().item())
        assert df.loc[f"gold={word}", "strict_accuracy"] == pytest.approx(
            result.strict_correct[mask].float().mean().item()
        )
    assert df.loc["all", "n"] == 30
    assert df.loc["all", "accuracy"] == pytest.approx(
        (df.loc["gold=foo", "accuracy"] + df.loc["gold=bar", "accuracy"]) / 2
    )
    for _, row in result.df.iterrows():
        assert 0 <= row.ci_low <= row.accuracy <= row.ci_high <= 1
        assert 0 <= row.strict_ci_low <= row.strict_accuracy <= row.strict_ci_high <= 1
    assert result.ci == (df.loc["all", "ci_low"], df.loc["all", "ci_high"])
    assert set(result.summary()) == {"accuracy", "95% CI", "strict_accuracy", "n"}
    assert result.provenance["n_prompts"] == 30 and result.provenance["label_words"] == ["foo", "bar"]


def test_fixed_gold_gives_one_gold_row(models, task):
    result = ih.icl_accuracy(models["llama"], task.prompts(6, 2, seed=0, gold=1))
    assert list(result.df.scope) == ["all", "gold=bar"]


def test_tokenized_prompts_give_the_same_result(models, task):
    prompts = task.prompts(10, 3, seed=2)
    tp = ModelAccess(models["gpt2"]).tokenize(prompts)
    assert_same_result(ih.icl_accuracy(models["gpt2"], tp), ih.icl_accuracy(models["gpt2"], prompts))


def test_accuracy_follows_the_majority_label(copier, task):
    for counts, gold, expected in [((3, 1), 0, 1.0), ((3, 1), 1, 0.0), ((1, 3), 1, 1.0), ((1, 3), 0, 0.0)]:
        result = ih.icl_accuracy(copier, task.prompts(12, 4, seed=1, counts=counts, gold=gold))
        assert result.accuracy == expected
        lo, hi = result.ci  # Wilson: never zero width, even at 0 or 1 (12 prompts)
        assert lo <= expected <= hi and 0.2 < hi - lo < 0.3 and result.accuracy.method == "wilson"
    mixed = ih.icl_accuracy(copier, task.prompts(40, 4, seed=2, counts=(3, 1)))
    df = mixed.df.set_index("scope")
    assert df.loc["gold=foo", "accuracy"] == 1.0 and df.loc["gold=bar", "accuracy"] == 0.0
    assert df.loc["all", "accuracy"] == 0.5
    assert df.loc["all", "ci_low"] < 0.5 < df.loc["all", "ci_high"]
    assert df.loc["all", "ci_high"] - df.loc["all", "ci_low"] < 0.4


def test_hooks_reach_the_forward_pass(copier, task):
    prompts = task.prompts(8, 4, seed=1, counts=(3, 1), gold=0)

    def silence_copier(z, hook):
        z[:, :, 0] = 0.0
        return z

    pred = predict(copier, prompts, hooks=[("blocks.1.attn.hook_z", silence_copier)])
    plain = predict(copier, prompts)
    assert (plain.label_logits[:, 0] - plain.label_logits[:, 1] > 1).all()
    torch.testing.assert_close(pred.label_logits[:, 0], pred.label_logits[:, 1])
    assert (plain.gold_logprob > pred.gold_logprob).all() and (plain.gold_logprob <= 0).all()


def test_first_token_end_to_end(models, task):
    model = models["gpt2"]  # byte-level BPE: "football" is several tokens
    prompts = task.with_label_words(("football", "bar")).prompts(12, 4, seed=3)
    with pytest.raises(LabelTokenError, match="pass first_token=True"):
        ih.icl_accuracy(model, prompts)
    result = ih.icl_accuracy(model, prompts, first_token=True, options=RunOptions(batch_size=5, padding_side="left"))
    tok = ModelAccess(model).tokenizer
    ids = tok.convert_tokens_to_ids(["Ġfoo", "Ġbar"])
    tp = ModelAccess(model).tokenize(prompts, first_token=True)
    assert list(tp.label_token_ids) == ids
    torch.testing.assert_close(result.label_logits, final_logits(model, tp, 12, "right")[:, ids], atol=1e-5, rtol=0)
    assert result.provenance["first_token"] is True
    torch.testing.assert_close(predict(model, prompts, first_token=True).label_logits, result.label_logits)


def test_result_round_trips(models, task, tmp_path):
    result = ih.icl_accuracy(models["llama"], task.prompts(8, 2, seed=0))
    loaded = ih.accuracy.AccuracyResult.load(result.save(tmp_path / "acc"))
    pd.testing.assert_frame_equal(loaded.df, result.df)
    assert torch.equal(loaded.label_logits, result.label_logits)
    assert "ICL accuracy" in result._repr_html_()


@pytest.mark.slow
def test_organism_learns_in_context_and_is_batch_invariant(organism, fresh):
    prompts = organism_task(seed=2024).prompts(64, 4, seed=4049)
    ref = ih.icl_accuracy(organism, prompts)
    assert ref.accuracy >= 0.9 and ref.ci[0] >= 0.8
    assert ref.strict_accuracy >= 0.9
    for batch_size, side in [(1, "right"), (7, "left"), (32, "left")]:
        assert_same_result(
            ih.icl_accuracy(organism, prompts, options=RunOptions(batch_size=batch_size, padding_side=side)), ref
        )
    # with labels swapped the model follows the demonstrations, not a fixed mapping
    swapped = organism_task(seed=2024, label_words=("bar", "foo")).prompts(64, 4, seed=4049)
    assert ih.icl_accuracy(organism, swapped).accuracy >= 0.9
