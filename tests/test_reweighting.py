import numpy as np
import pytest
import torch

from icl_heads.components.decompose import decompose
from icl_heads.components.estimators import CalibPlus, ComponentReweighting, NotFittedError, loss_and_grad
from icl_heads.components.protocol import ReweightingComparison, compare_reweighting
from icl_heads.components.result import Decomposition
from icl_heads.organism import HELDOUT_TEMPLATES, organism_task


def _synthetic(n: int, seed: int, n_noise: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Component 0 is a weak but right signal; components 1-2 are strongly wrong; the rest noise.

    The plain sum of components (every weight 1) is mostly wrong.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = np.where(y == 1, 1.0, -1.0)
    X = np.zeros((n, 3 + n_noise, 2))
    X[:, 0, 1] = 1.0 * sign + 0.3 * rng.normal(size=n)
    X[:, 1, 1] = -0.8 * sign
    X[:, 2, 1] = -0.6 * sign
    X[:, 3:, 1] = 0.3 * rng.normal(size=(n, n_noise))
    return X, y


def test_gradient_matches_autograd():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 5, 3))
    y = rng.integers(0, 3, 7)
    w = np.array([-0.2, 0.0, 0.4, 1.0, 1.3])
    loss, grad = loss_and_grad(w, np.ascontiguousarray(X.transpose(0, 2, 1)), np.eye(3)[y], 0.01)
    wt = torch.tensor(w, requires_grad=True)
    wc = wt.clamp(0, 1)
    logits = torch.einsum("ncl,c->nl", torch.tensor(X), wc)
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(y)) + 0.01 * wc.abs().sum()
    ref.backward()
    assert loss == pytest.approx(ref.item(), abs=1e-12)
    np.testing.assert_allclose(grad, wt.grad.numpy(), atol=1e-12)


def test_reweighting_beats_the_plain_sum_and_drops_harmful_components():
    X, y = _synthetic(24, seed=0)
    Xt, yt = _synthetic(400, seed=1)
    plain = (X.sum(1).argmax(-1) == y).mean()
    rw = ComponentReweighting(random_state=0).fit(X, y)
    assert plain < 0.5 < 0.9 < rw.score(Xt, yt)
    assert rw.weights_.shape == (9,) and ((rw.weights_ >= 0) & (rw.weights_ <= 1)).all()
    assert rw.weights_[0] > 0.9 and rw.weights_[1] == 0 and rw.weights_[2] == 0
    assert rw.kept_components_[0] == "c0" and "c1" not in rw.kept_components_
    proba = rw.predict_proba(Xt)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(proba.argmax(1), rw.predict(Xt))
    assert rw.loss_curve_[-1] < rw.loss_curve_[0] and 1 <= rw.n_epochs_ <= 2000


def test_early_stopping_and_epoch_limit():
    X, y = _synthetic(24, seed=0)
    short = ComponentReweighting(max_epochs=5).fit(X, y)
    assert short.n_epochs_ == 5 and len(short.loss_curve_) == 5
    patient = ComponentReweighting(tol=10.0, n_iter_no_change=3).fit(X, y)
    # no epoch improves the loss by 10: stop after the first one plus three without improvement
    assert patient.n_epochs_ == 4
    np.testing.assert_array_equal(patient.weights_, np.ones(9))


def test_deterministic_under_random_state():
    X, y = _synthetic(30, seed=2)
    a = ComponentReweighting(validation_fraction=0.25, random_state=3).fit(X, y)
    b = ComponentReweighting(validation_fraction=0.25, random_state=3).fit(X, y)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    np.testing.assert_array_equal(a.loss_curve_, b.loss_curve_)
    curves = {ComponentReweighting(validation_fraction=0.25, random_state=s).fit(X, y).loss_curve_[0] for s in range(6)}
    assert len(curves) > 1  # the seed does choose the validation split


def test_input_validation():
    X, y = _synthetic(10, seed=0)
    rw = ComponentReweighting()
    with pytest.raises(NotFittedError, match="fit"):
        rw.predict(X)
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    with pytest.raises(ValueError, match=r"\[example, component, label\]"):
        rw.fit(X[:, :, 0], y)
    with pytest.raises(ValueError, match="10 class indices"):
        rw.fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        rw.fit(X, y + 1)
    with pytest.raises(ValueError, match="integer"):
        rw.fit(X, y + 0.5)
    with pytest.raises(ValueError, match="NaN"):
        rw.fit(np.where(X.max() == X, np.nan, X), y)
    with pytest.raises(ValueError, match="y is required"):
        rw.fit(X)
    with pytest.raises(TypeError, match="numeric"):
        rw.fit([["a"]], y)
    with pytest.raises(ValueError, match="learning_rate"):
        ComponentReweighting(learning_rate=0).fit(X, y)
    with pytest.raises(ValueError, match="validation_fraction"):
        ComponentReweighting(validation_fraction=1.5).fit(X, y)
    rw.fit(torch.tensor(X), torch.tensor(y))  # tensors are accepted
    with pytest.raises(ValueError, match="fitted on 9"):
        rw.predict(X[:, :4])
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        rw.set_params(lambda_=1)
    assert rw.set_params(l1=0.1).get_params()["l1"] == 0.1
    assert "l1=0.1" in repr(rw)


def test_fit_on_a_decomposition_uses_its_names_and_golds():
    X, y = _synthetic(40, seed=4, n_noise=5)  # 8 components: embed, 2 layers x (2 heads + MLP), bias
    logits = torch.tensor(X, dtype=torch.float32)
    dec = Decomposition.from_tensors(logits, logits.sum(1), torch.tensor(y), n_layers=2, n_heads=2)
    rw = ComponentReweighting().fit(dec)
    assert rw.component_names_ == dec.names
    assert rw.score(dec) == rw.score(X, y)
    assert dec.names[1] not in rw.kept_components_  # the strongly wrong component


def test_calib_plus_corrects_a_label_bias():
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    # the model leans to label 0: the right label gets only a small boost
    logits = np.stack([np.full(n, 1.0), np.zeros(n)], 1) + 0.8 * np.eye(2)[y] + 0.1 * rng.normal(size=(n, 2))
    assert (logits.argmax(1) == y).mean() < 0.6
    cal = CalibPlus().fit(logits[:24], y[:24])
    assert cal.score(logits[24:], y[24:]) > 0.95
    assert cal.weights_.shape == (2,) and cal.bias_.shape == (2,)
    np.testing.assert_allclose(cal.predict_proba(logits).sum(1), 1.0)
    with pytest.raises(NotFittedError):
        CalibPlus().predict(logits)
    with pytest.raises(ValueError, match=r"\[example, label\]"):
        CalibPlus().fit(logits[:, None], y)
    with pytest.raises(ValueError, match="fitted on 2"):
        cal.predict(np.zeros((3, 3)))


def test_compare_reweighting_on_tiny_model(models, task, tmp_path):
    res = compare_reweighting(models["gpt2"], task, k=6, k_demo=2, seeds=(0, 1), n_test=10)
    table = res.table().set_index("method")
    assert list(table.index) == ["ICL-2", "ICL-6", "Calib+", "reweighting"]
    assert (table.runs == 2).all() and table["mean"].between(0, 1).all()
    assert res.weights.shape == (2, len(res.names))
    m, s = res.margin()
    summary = res.summary()
    assert {"reweighting - ICL-6", "reweighting - ICL-2", "reweighting - Calib+"} <= set(summary)
    assert summary["reweighting - ICL-6"] == f"{m:+.3f} ± {s:.3f}"
    wide = res.df.pivot_table(index="seed", columns="method", values="accuracy")
    assert m == pytest.approx((wide["reweighting"] - wide["ICL-6"]).mean())
    assert s == pytest.approx((wide["reweighting"] - wide["ICL-6"]).std(ddof=1))
    back = ReweightingComparison.load(res.save(tmp_path / "cmp"))
    assert back.table().equals(res.table()) or np.allclose(back.table()["mean"], table["mean"].to_numpy())
    fig = res.plot()
    assert list(fig.data[0].x) == list(table.index) and "K=6" in fig.layout.title.text
    with pytest.raises(ValueError, match="k_demo"):
        compare_reweighting(models["gpt2"], task, k=4, k_demo=4)


def test_compare_reweighting_when_k_shot_prompts_do_not_fit(models, task):
    from icl_heads.prompts import PromptTooLongError

    with pytest.raises(PromptTooLongError):
        compare_reweighting(models["gpt2"], task, k=40, k_demo=2, seeds=(0,), n_test=6)
    for icl_k in (None, False):
        res = compare_reweighting(models["gpt2"], task, k=40, k_demo=2, seeds=(0, 1), n_test=6, icl_k=icl_k)
        assert list(res.table().method) == ["ICL-2", "Calib+", "reweighting"]
        assert res.baseline == "ICL-2"
        summary = res.summary()
        assert summary["ICL-40"].startswith("not run") and "reweighting - ICL-2" in summary
        assert ("context" if icl_k is None else "icl_k=False") in res.config["icl_k_skipped"]


@pytest.mark.slow
def test_organism_reweighting_beats_24_shot_icl(organism):
    task = organism_task(max_words=6, noise_rate=0.2, seed=31)
    res = compare_reweighting(organism, task, k=24, seeds=(31, 32), templates=HELDOUT_TEMPLATES[:1], n_test=100)
    table = res.table().set_index("method")
    assert table.loc["reweighting", "mean"] > table.loc["ICL-24", "mean"]
    assert res.margin()[0] > 0
    dec = decompose(organism, task.with_template(HELDOUT_TEMPLATES[0]).prompts(32, 4, seed=31))
    rw = ComponentReweighting(random_state=0).fit(dec)
    assert set(rw.kept_components_) <= set(dec.names)
