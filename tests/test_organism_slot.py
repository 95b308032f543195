"""The second bundled organism, trained on ``{text} {label}\\n``: it reads each demonstration after its label."""

from __future__ import annotations

import pytest

import icl_heads as ih
from icl_heads import mechanism as mech
from icl_heads.organism import CHECKPOINT_SLOT_DIR, HELDOUT_SLOT_TEMPLATES, SLOT_TEMPLATES, organism_task


@pytest.fixture(scope="module")
def slot_model():
    return ih.load_model("organism-slot")


@pytest.fixture(scope="module")
def slot_prompts():
    return organism_task(layout="slot", seed=21).prompts(48, 4, seed=22)


def test_slot_checkpoint_ships_and_is_small():
    files = {p.name for p in CHECKPOINT_SLOT_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json"} <= files
    assert sum(p.stat().st_size for p in CHECKPOINT_SLOT_DIR.iterdir()) < 20 * 2**20


def test_slot_task_uses_the_slot_layout():
    task = organism_task(layout="slot")
    assert task.template == SLOT_TEMPLATES[0] == "{text} {label}\n" and task.name.startswith("organism-slot")
    with pytest.raises(ValueError, match="layout"):
        organism_task(layout="nope")


def test_slot_organism_learns_in_context(slot_model):
    four = ih.icl_accuracy(slot_model, organism_task(layout="slot", seed=11).prompts(200, 4, seed=12))
    assert four.accuracy >= 0.9, four


def test_slot_organism_reads_after_the_label(slot_model, slot_prompts):
    rr = ih.reading_roles(slot_model, slot_prompts, n_boot=100)
    reads = rr.reads().set_index("name")
    writers = reads[reads.slot_share > 0.9].index
    assert len(writers) >= 2
    # every head that reads the slots reads its end (the newline), not the label token
    assert (reads.loc[writers, "after_label"] > 0.9).all() and (reads.loc[writers, "label"] < 0.05).all()
    assert (reads.loc[writers, "read_at"] == "after_label").all()


def test_analyses_follow_the_slot_organism_and_warn_at_the_label(slot_model, slot_prompts):
    heads = ih.find_in_context_heads(slot_model, slot_prompts, verify=False, also=()).heads
    auto = mech.ov_label_features(slot_model, slot_prompts, heads)
    assert auto.config["read_at"] == "after_label" and auto.warnings == ()
    # at the newline the heads read, the value-output vectors carry the demonstration's label
    assert auto.share("label").iloc[0] > 0.9
    forced = mech.ov_label_features(slot_model, slot_prompts, heads, read_at="label")
    assert forced.warnings and forced.warnings[0].startswith("NOT READ")
    assert "after_label" in forced.warnings[0]
    qk = mech.qk_label_attention(slot_model, slot_prompts, heads, read_at="label")
    assert qk.warnings and qk.df.label_share.max() < 0.05


def test_two_tower_test_follows_the_slot_organism(slot_model, slot_prompts):
    heads = ih.find_in_context_heads(slot_model, slot_prompts, verify=False, also=()).heads
    auto = mech.two_tower_test(slot_model, slot_prompts, heads)
    assert auto.config["read_at"] == "after_label" and auto.warnings == ()
    # at the newline the heads read, the score tells same-class demonstrations apart
    assert auto.df.auc_score_within.min() > 0.8, auto.df
    forced = mech.two_tower_test(slot_model, slot_prompts, heads, read_at="label")
    assert forced.warnings and forced.warnings[0].startswith("NOT READ") and "after_label" in forced.warnings[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind, method", [("majority", "ov"), ("recency", "prior"), ("recency", "unrotated")])
def test_slot_organism_corrections_warn_at_the_label(slot_model, kind, method):
    # the count correction is checked below (and where the heads do read, in the reading card)
    hard = organism_task(layout="slot", template=HELDOUT_SLOT_TEMPLATES[0], seed=3, max_words=6, noise_rate=0.3)
    fn = ih.correct_majority_bias if kind == "majority" else ih.correct_recency_bias
    shots = 4 if kind == "majority" else 8
    at_label = fn(slot_model, hard, method=method, n=60, tune_n=30, seed=0, tune_seed=1, shots=shots, grid=(0.0, 1.0),
                  read_at="label")  # fmt: skip
    assert at_label.config["read_at"] == "label" and max(at_label.config["share_at_read_positions"].values()) < 0.2
    assert any(w.startswith("NOT READ") for w in at_label.warnings), at_label.warnings
    assert "NOT READ" in at_label._repr_html_() and "NOT READ" in str(at_label.summary())


@pytest.mark.slow
def test_slot_organism_majority_correction_reads_where_the_heads_read(slot_model):
    # the reading card's majority setting (held-out template, noisy sentences), on fewer prompts
    hard = organism_task(layout="slot", template=HELDOUT_SLOT_TEMPLATES[0], seed=3, max_words=6, noise_rate=0.3)
    kw = dict(method="count", n=150, tune_n=80, grid=(0.0, 16.0), seed=0, tune_seed=1)
    res = ih.correct_majority_bias(slot_model, hard, **kw)
    assert res.config["read_at"] == "after_label" and not any(w.startswith("NOT READ") for w in res.warnings)
    assert res.value == 16.0 and res.reduction > 0 and res.accuracy_change >= -0.01, res.summary()
    at_label = ih.correct_majority_bias(slot_model, hard, **{**kw, "n": 60, "tune_n": 30}, read_at="label")
    assert any(w.startswith("NOT READ") for w in at_label.warnings)
