"""The architecture matrix: every supported family, built tiny and random with O(1)-scale weights.

Norm weights away from 1, non-zero biases and large weights make any architectural
quirk the hand-written maths ignores (Gemma's ``1 + w``, post-attention norms,
soft-capped logits, ALiBi, partial rotary, one key-value head, a sliding window) show
as a large error. For each family: logits match Hugging Face, the decomposition is
exact against Hugging Face's (pre-cap) label logits, DLA head scores equal the
decomposition's per-head terms, each head's attention-weighted value-output vectors
add up to what it writes, no head score is silently zero, and the main analyses run.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import icl_heads as ih
from icl_heads.access import ModelAccess, pattern_edits_apply
from icl_heads.accuracy import predict
from icl_heads.corrections import count_normalisation, ov_compensation
from icl_heads.mechanism.ov import per_position_ov
from icl_heads.models import transformer_lens_major
from icl_heads.options import RunOptions
from icl_heads.scoring import score_heads
from icl_heads.testing import FAMILIES, tiny_family_dir

TL_MAJOR = transformer_lens_major()
# TransformerLens 3 loads local folders of these two families (hub names of many more)
MATRIX = FAMILIES if TL_MAJOR >= 4 else ("gpt2", "llama")
# TransformerLens 4 lets Hugging Face compute these families' attention and discards edits of the pattern
PATTERN_EDITS_DISCARDED = {"gpt_neo", "gptj", "opt"} if TL_MAJOR >= 4 else set()


@pytest.fixture(scope="module")
def family_root(tmp_path_factory):
    return tmp_path_factory.mktemp("families")


def _hf_label_logits(path, tp, label_ids) -> torch.Tensor:
    """Hugging Face's label logits at each prompt's final position, one unpadded prompt at a time."""
    hf = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    rows = []
    with torch.inference_mode():
        for tokens in tp.tokens:
            rows.append(hf(torch.tensor([tokens])).logits[0, -1, label_ids])
    return torch.stack(rows)


@pytest.mark.parametrize("family", MATRIX)
def test_family_is_analysed_exactly(family, family_root, task):
    path = tiny_family_dir(family, family_root / family)
    model = ih.load_model(path)
    access = ModelAccess(model)
    report = ih.check_faithfulness(model)
    assert report.passed, report.df
    prompts = task.prompts(8, 4, seed=1)
    tp = access.tokenize(prompts)
    assert max(map(len, tp.tokens)) > 20  # long enough for Mistral's window of 12 and GPT-Neo's local 16
    label_ids = list(tp.label_token_ids)

    # logits match Hugging Face's, padded batches included
    hf = _hf_label_logits(path, tp, label_ids)
    ours = predict(model, prompts, options=RunOptions(batch_size=3)).label_logits
    torch.testing.assert_close(ours, hf, atol=1e-4 * max(1.0, float(hf.abs().max())), rtol=0)

    # the decomposition is exact against Hugging Face's pre-cap label logits
    dec = ih.decompose(model, prompts, options=RunOptions(batch_size=3))
    torch.testing.assert_close(dec.total(), access.uncap(hf), atol=1e-4 * max(1.0, float(hf.abs().max())), rtol=0)

    # DLA head scores are the decomposition's per-head terms: g[gold] - mean over labels of g
    scores = score_heads(
        model, prompts, methods=("dla", "logprob_increase", "attribution"), options=RunOptions(batch_size=5)
    )
    dla = scores["dla"]  # [prompt, layer, head]
    L, H = access.n_layers, access.n_heads
    head_cols = [dec.names.index(f"L{layer}H{h}") for layer in range(L) for h in range(H)]
    g = dec.logits[:, head_cols]  # [prompt, head, label]
    from_dec = g[torch.arange(len(g)), :, dec.golds] - g.mean(-1)
    torch.testing.assert_close(dla.reshape(len(g), -1), from_dec, atol=1e-4, rtol=1e-4)
    # no head score is silently zero
    for name, score in scores.items():
        assert (score.abs().amax(0) > 1e-6).all(), (name, score.abs().amax(0))

    # sum over positions of A[t, p] * (what v_p W_O writes) is the head's contribution: its decomposition term
    batch = next(iter(access.batches(tp, 8)))
    positions = torch.arange(batch.tokens.shape[1]).expand(len(batch.golds), -1)
    heads = [(layer, h) for layer in range(L) for h in range(H)]
    vecs, attn, scale = per_position_ov(model, batch, heads, positions)
    written = (attn[..., None] * vecs).sum(2)  # [batch, head, d_model]
    logits = access.unembed(access.final_norm(written, scale[:, None]), torch.tensor(label_ids))
    torch.testing.assert_close(logits.cpu(), g, atol=1e-4, rtol=1e-4)

    # the analyses run and return finite numbers
    found = ih.find_in_context_heads(model, prompts, k=2, n_random=3, options=RunOptions(batch_size=4))
    assert len(found.heads) == 2 and torch.isfinite(torch.tensor(found.df.select_dtypes("number").to_numpy())).all()
    ov = ih.ov_label_features(model, prompts, found.heads, options=RunOptions(batch_size=4))
    assert len(ov.df) > 0
    qk = ih.qk_label_attention(model, prompts, found.heads, options=RunOptions(batch_size=4))
    assert len(qk.df) > 0
    bias = ih.majority_bias(model, task, n=16, shots=4, skews=((3, 1),), n_boot=50)
    assert 0 <= bias.summary()["balanced accuracy"] <= 1
    # a correction runs where attention edits take effect, and is refused (not silently a no-op) where they do not
    if family in PATTERN_EDITS_DISCARDED:
        assert not pattern_edits_apply(access)
        with pytest.raises(ih.UnfaithfulModelError, match="discards edits of hook_pattern"):
            count_normalisation(model, found.heads)
        with pytest.raises(ih.UnfaithfulModelError, match="OVCompensation cannot run"):
            ih.majority_bias(model, task, n=8, shots=4, n_boot=10, hooks=ov_compensation(model, found.heads))
        return
    assert pattern_edits_apply(access)
    for correction in (count_normalisation(model, found.heads), ov_compensation(model, found.heads, a_c=0.5)):
        corrected = ih.majority_bias(model, task, n=16, shots=4, skews=((3, 1),), n_boot=50, hooks=correction)
        assert 0 <= corrected.summary()["balanced accuracy"] <= 1
        # the correction acts: the corrected label logits differ from the uncorrected ones
        assert not torch.allclose(corrected.label_logits, bias.label_logits)


def test_docs_table_lists_every_family_as_exact():
    """docs/models.md is generated from this matrix (scripts/supported_models.py); it must not drift from it."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    table = doc.split("<!-- supported-models:begin -->")[1].split("<!-- supported-models:end -->")[0]
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in table.strip().splitlines()[2:]}
    assert rows == dict.fromkeys(FAMILIES, "exact")
