"""Label slots, token roles, where heads read, the block-gap recency measure and how many heads carry ICL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import icl_heads as ih
from icl_heads.access import ModelAccess
from icl_heads.options import RunOptions
from icl_heads.order_bias import block_gaps, block_table
from icl_heads.slots import ROLES, read_positions
from icl_heads.tuning import no_change_reason

TEMPLATES = ["{text} : {label}\n", "{text} {label}\n", "input {text} output {label}\n", "{text} ; {label} ,\n"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_slots_cover_the_label_and_the_template_after_it(any_model, task, template):
    access = ModelAccess(any_model)
    prompts = task.with_template(template).prompts(4, 3, seed=1)
    tp = access.tokenize(prompts)
    tok = access.tokenizer
    for ids, roles, index, labels, slots, demo_labels in zip(
        tp.tokens, tp.roles, tp.demo_index, tp.label_positions, tp.slot_positions, tp.demo_labels, strict=True
    ):
        assert len(roles) == len(ids) == len(index) and roles[0] == ROLES.index("bos")
        for d, (lp, slot) in enumerate(zip(labels, slots, strict=True)):
            assert slot[0] == lp and list(slot) == list(range(lp, slot[-1] + 1))
            text = tok.decode([ids[p] for p in slot])
            after = template.split("{label}")[1]
            assert tok.decode([ids[lp]]).strip() == prompts.task.label_words[demo_labels[d]]
            assert ROLES[roles[lp]] == "label" and all(ROLES[roles[p]] == "after_label" for p in slot[1:])
            assert text.replace(" ", "").endswith(after.replace(" ", "")), (text, after)
            # the next token starts the next demonstration (or the query)
            nxt = slot[-1] + 1
            assert index[nxt] == (d + 1 if d + 1 < len(labels) else -1)
        # the final position belongs to the query
        assert ROLES[roles[-1]] == "query" and index[-1] == -1


def test_read_positions_agree_across_padding(models, task):
    access = ModelAccess(models["gpt2"])
    tp = access.tokenize(task.with_template("{text} ; {label} ,\n").prompts(5, 3, seed=2))
    for read_at in ("label", "after_label", "slot"):
        right = next(tp.batches(5, "right"))
        left = next(tp.batches(5, "left"))
        pr, dr = read_positions(right, read_at)
        pl, dl = read_positions(left, read_at)
        shift = left.attention_mask.argmax(1)[:, None]
        assert torch.equal(dr, dl) and torch.equal(torch.where(pr >= 0, pr + shift, -1), pl)
        for b in range(5):
            slots = tp.slot_positions[b]
            got = [p for p in pr[b].tolist() if p >= 0]
            want = {
                "label": list(tp.label_positions[b]),
                "after_label": [s[-1] for s in slots],
                "slot": [p for s in slots for p in s],
            }[read_at]
            assert got == want


def test_reading_roles_match_attention_computed_directly(any_model, task):
    prompts = task.prompts(6, 3, seed=4)
    rr = ih.reading_roles(any_model, prompts, options=RunOptions(batch_size=4), n_boot=50)
    access = ModelAccess(any_model)
    tp = access.tokenize(prompts)
    for i in (0, 5):
        with torch.inference_mode():
            _, cache = any_model.run_with_cache(torch.tensor([tp.tokens[i]]))
        roles = np.asarray(tp.roles[i])
        for layer in range(access.n_layers):
            pattern = cache[access.hook(layer, "pattern")][0, :, -1].float().numpy()  # [head, key]
            for r in range(len(ROLES)):
                np.testing.assert_allclose(rr.shares[i, layer, :, r].numpy(), pattern[:, roles == r].sum(-1), atol=1e-5)
    torch.testing.assert_close(rr.shares.sum(-1), torch.ones(6, access.n_layers, access.n_heads), atol=1e-5, rtol=0)
    row = rr.df[(rr.df.name == "L0H0") & (rr.df.role == "label")].iloc[0]
    assert row.ci_low <= row.attention <= row.ci_high
    reads = rr.reads()
    assert set(reads.read_at) <= {"label", "after_label", "slot"} and len(reads) == access.n_layers * access.n_heads
    assert rr.plot().data[0].z.shape == (access.n_layers * access.n_heads, len(ROLES))


def test_reading_roles_of_the_organism(organism):
    rr = ih.reading_roles(organism, ih.organism_task().prompts(32, 4, seed=5), n_boot=100)
    reads = rr.reads().set_index("name")
    # the in-context heads of layer 1 read the demonstrations' slots, nothing else
    assert (reads.loc[[f"L1H{h}" for h in range(8)], "slot_share"] > 0.95).all()
    assert reads.loc["L1H7", "read_at"] == "label"


def test_block_gap_sees_recency_that_cancels_in_mean_accuracy():
    # orders: blocked (class 0 then 1), blocked_reversed; a model that always answers the last block's label
    golds = torch.tensor([0, 1, 0, 1])
    last = {"blocked": 1, "blocked_reversed": 0}
    logits = torch.zeros(2, 4, 2)
    for o, name in enumerate(last):
        logits[o, :, last[name]] = 1.0
    demos = [[0, 1, 0, 1]] * 4
    gap, gold = block_gaps(logits, golds, demos, list(last))
    # mean accuracy is 0.5 in both orders (the bias cancels), the block gap is 1
    assert (logits.argmax(-1) == golds).float().mean(1).tolist() == [0.5, 0.5]
    assert gap.tolist() == [1.0, 1.0, 1.0, 1.0] and gold.tolist() == [0, 1, 0, 1]
    table = block_table(gap, gold, ("foo", "bar"), n_boot=50)
    assert list(table.query_label) == ["foo", "bar", "all"] and (table.block_gap == 1.0).all()
    with pytest.raises(ValueError, match="blocked"):
        block_gaps(logits, golds, demos, ["original", "reversed"])


def test_recency_bias_reports_the_block_gap(models, task):
    res = ih.recency_bias(models["llama"], task, shots=4, n=12, n_random_orders=0, heads=[(0, 0)], n_boot=50)
    assert res.block_gaps is not None and len(res.block_gaps) == 12
    assert res.block_gap == pytest.approx(float(res.block_gaps.mean()))
    assert res.block_gap.ci[0] <= res.block_gap <= res.block_gap.ci[1]
    assert "block gap" in next(iter(res.summary()))


def test_no_change_says_why():
    def table(rows):
        t = pd.DataFrame(rows, columns=["value", "bias", "balanced_accuracy", "accuracy_drop"])
        t["allowed"] = t.accuracy_drop <= 0.01
        return t

    drop = table([(0.0, 0.2, 0.9, 0.0), (2.0, 0.0, 0.5, 0.4)])
    (msg,) = no_change_reason(drop, 0.0, "strength", 0.01, ())
    assert msg.startswith("NO CHANGE") and "lowered balanced accuracy" in msg and "0.4" in msg
    (msg,) = no_change_reason(table([(0.0, 0.2, 0.9, 0.0), (2.0, 0.3, 0.9, 0.0)]), 0.0, "a_c", 0.01, ("NOT READ",))
    assert "no allowed value reduced the bias" in msg and "do not read" in msg
    assert no_change_reason(drop, 2.0, "strength", 0.01, ()) == ()


def test_heads_needed_on_a_tiny_model(models, task):
    model = models["gpt2"]
    access = ModelAccess(model)
    prompts = task.prompts(16, 3, seed=7)
    scores = torch.arange(access.n_layers * access.n_heads, dtype=torch.float32).view(access.n_layers, access.n_heads)
    res = ih.heads_needed(model, prompts, scores, margin=0.6, max_k=3, n_random=3)
    # margin 0.6 puts the target above any accuracy: one head suffices both ways
    assert res.k_score == 1 and res.k_greedy == 1 and res.warnings == ()
    first = res.df[res.df.search == "score order"].iloc[0]
    assert first.heads == f"L{access.n_layers - 1}H{access.n_heads - 1}"
    # the greedy head is the single ablation that hurts most
    accs = {
        (a, b): ih.icl_accuracy(model, prompts, hooks=ih.interventions.HeadAblation(((a, b),))).accuracy
        for a in range(access.n_layers)
        for b in range(access.n_heads)
    }
    assert res.df[res.df.search == "greedy"].iloc[0].accuracy == pytest.approx(min(accs.values()))
    tight = ih.heads_needed(model, prompts, scores, margin=1e-6, max_k=2, greedy=False, n_random=2)
    if tight.k_score is None:
        assert tight.warnings and tight.warnings[0].startswith("NOT REACHED")
    # random sets only for the answer: the same numbers there, none elsewhere
    every = ih.heads_needed(model, prompts, scores, margin=1e-6, max_k=3, greedy=False, n_random=3)
    last = ih.heads_needed(model, prompts, scores, margin=1e-6, max_k=3, greedy=False, n_random=3, random_for="last")
    assert list(every.df.k) == list(last.df.k) and len(every.df) >= 2
    cols = ["random_accuracy", "random_ci_low", "random_ci_high"]
    assert every.df[cols].notna().all().all()
    assert last.df[cols].iloc[:-1].isna().all().all()
    pd.testing.assert_series_equal(last.df[cols].iloc[-1], every.df[cols].iloc[-1])
    with pytest.raises(ValueError, match="random_for"):
        ih.heads_needed(model, prompts, scores, random_for="some")
    with pytest.raises(ValueError, match="margin"):
        ih.heads_needed(model, prompts, scores, margin=0)


@pytest.mark.parametrize("name, layout", [("organism", "separator"), ("organism-slot", "slot")])
def test_reading_roles_of_both_organisms_match_attention_computed_directly(name, layout):
    model = ih.load_model(name)
    prompts = ih.organism_task(layout=layout).prompts(8, 4, seed=11)
    rr = ih.reading_roles(model, prompts, options=RunOptions(batch_size=3), n_boot=20)
    access = ModelAccess(model)
    tp = access.tokenize(prompts)
    for i in range(8):
        with torch.inference_mode():
            _, cache = model.run_with_cache(torch.tensor([tp.tokens[i]]))
        roles = np.asarray(tp.roles[i])
        for layer in range(access.n_layers):
            pattern = cache[access.hook(layer, "pattern")][0, :, -1].float().numpy()  # [head, key]
            direct = np.stack([pattern[:, roles == r].sum(-1) for r in range(len(ROLES))], -1)
            np.testing.assert_allclose(rr.shares[i, layer].numpy(), direct, atol=1e-5)
