import os
from pathlib import Path

import pytest
import torch

import icl_heads as ih
from icl_heads.organism import CHECKPOINT_DIR, HELDOUT_TEMPLATES, organism_task


def test_checkpoint_ships_with_the_package_and_is_small():
    files = {p.name for p in CHECKPOINT_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert sum(p.stat().st_size for p in CHECKPOINT_DIR.iterdir()) < 20 * 2**20
    if os.environ.get("ICL_HEADS_EXPECT_INSTALLED"):
        # CI installs a built wheel (not editable): the checkpoint must come from site-packages
        assert "site-packages" in Path(ih.__file__).parts, ih.__file__


def test_organism_loads_in_plain_transformers():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(CHECKPOINT_DIR)
    tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    ids = tok("goal team : foo\nsoup bread : bar\nmatch :", return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id and tok.unk_token_id not in ids
    with torch.inference_mode():
        logits = hf(ids).logits
    assert torch.isfinite(logits).all()


def test_organism_task_is_readable_and_seeded():
    a, b = organism_task(seed=3), organism_task(seed=3)
    assert a.texts == b.texts and a.classes == ("sport", "food")
    assert all(1 <= len(t.split()) <= 5 for t in a.texts)
    with pytest.raises(ValueError, match="unknown topics"):
        organism_task(topics=("sport", "politics"))


@pytest.mark.slow
def test_organism_learns_in_context(organism):
    task = organism_task(seed=11)
    four = ih.icl_accuracy(organism, task.prompts(300, 4, seed=12))
    assert four.accuracy >= 0.95 and four.strict_accuracy >= 0.90
    zero = ih.icl_accuracy(organism, task.prompts(300, 0, seed=13))
    assert 0.4 <= zero.accuracy <= 0.6  # the label words are arbitrary: no demonstrations, no answer
    held_out = ih.icl_accuracy(organism, task.with_template(HELDOUT_TEMPLATES[2]).prompts(300, 4, seed=14))
    assert held_out.accuracy < four.accuracy - 0.03
