"""The output calibrations against their papers' formulas written out here, on a tiny random model."""

import numpy as np
import pytest
import torch

from icl_heads.access import ModelAccess
from icl_heads.accuracy import predict
from icl_heads.calibration import (
    CONTENT_FREE,
    batch_calibration,
    contextual_calibration,
    contextual_prior,
    domain_context_calibration,
    domain_texts,
)
from icl_heads.engine import count_cost
from icl_heads.prompts import ICLPrompt, ICLPrompts


@pytest.fixture(scope="module")
def prompts(task):
    return task.prompts(6, 4, seed=3)


def _label_probs(model, prompts, query):
    """Label-set probabilities of each prompt's demonstrations then ``query``: one direct model call per prompt."""
    swapped = ICLPrompts(tuple(ICLPrompt(p.demos, query, p.gold) for p in prompts.prompts), prompts.task)
    label_ids = list(ModelAccess(model).tokenize(prompts).label_token_ids)
    tok = model.tokenizer
    out = []
    for text in swapped.texts():
        ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
        with torch.inference_mode():
            logits = model(ids)[0, -1].double()
        out.append(logits[label_ids].softmax(-1).numpy())
    return np.stack(out)


def _paper_calibration(model, prompts, queries):
    """Zhao et al. (2021): p_cf = mean over queries, normalised; q = W p with W = diag(p_cf)^-1, normalised."""
    p = np.stack([_label_probs(model, prompts[i : i + 1], prompts.prompts[i].query)[0] for i in range(len(prompts))])
    p_cf = np.mean([_label_probs(model, prompts, q) for q in queries], axis=0)
    p_cf = p_cf / p_cf.sum(-1, keepdims=True)
    out = []
    for i in range(len(prompts)):
        q = np.linalg.inv(np.diag(p_cf[i])) @ p[i]
        out.append(np.log(q / q.sum()))
    return np.stack(out)


def test_contextual_calibration_is_the_papers_formula(models, prompts):
    model = models["gpt2"]
    got = contextual_calibration(model, prompts).double().numpy()
    np.testing.assert_allclose(got, _paper_calibration(model, prompts, CONTENT_FREE), atol=1e-5)


def test_domain_context_calibration_is_the_papers_formula_with_random_in_domain_texts(models, prompts, task):
    model = models["gpt2"]
    texts = domain_texts(task, 5, seed=2)
    words = {w for t in task.texts for w in t.split()}
    length = round(sum(len(t.split()) for t in task.texts) / len(task.texts))
    assert len(texts) == 5 and all(len(t.split()) == length and set(t.split()) <= words for t in texts)
    got = domain_context_calibration(model, prompts, n_texts=5, seed=2).double().numpy()
    np.testing.assert_allclose(got, _paper_calibration(model, prompts, texts), atol=1e-5)


def test_batch_calibration_is_the_papers_formula_and_adds_no_pass(models, prompts):
    logits = predict(models["gpt2"], prompts).label_logits
    with count_cost() as ledger:
        got = batch_calibration(logits)
    assert ledger.total.passes == 0
    p = np.exp(logits.double().numpy()) / np.exp(logits.double().numpy()).sum(-1, keepdims=True)
    ratio = p / p.mean(0, keepdims=True)  # the paper: divide by the batch's mean label probabilities
    np.testing.assert_allclose(got.double().numpy(), np.log(ratio / ratio.sum(-1, keepdims=True)), atol=1e-5)
    # dividing by the batch mean: over the batch, every label's probability ratio averages exactly 1
    np.testing.assert_allclose(ratio.mean(0), 1.0, atol=1e-12)


def test_contextual_calibration_costs_one_pass_per_content_free_text(models, prompts):
    logits = predict(models["gpt2"], prompts).label_logits
    with count_cost() as ledger:
        contextual_calibration(models["gpt2"], prompts[:4], label_logits=logits[:4])
    assert ledger.total.rows == 4 * len(CONTENT_FREE)


def test_bad_input_raises_before_any_pass(models, prompts, task):
    with count_cost() as ledger:
        with pytest.raises(ValueError, match="2 or more prompts"):
            batch_calibration(torch.zeros(1, 2))
        with pytest.raises(ValueError, match="at least one query text"):
            contextual_prior(models["gpt2"], prompts, [])
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            domain_texts(task, 0)
        with pytest.raises(TypeError, match="ICLTask"):
            domain_texts("task")
    assert ledger.total.passes == 0
