"""Component reweighting and Calib+ (Chang, Thomason & Jia, 2024): estimators fitted on a decomposition.

Both follow scikit-learn's contract (``fit`` returns ``self``, learned state ends in ``_``, :class:`NotFittedError`
before ``fit``) without depending on scikit-learn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import log_softmax

from icl_heads.components.result import Decomposition


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before :meth:`fit`."""


class _Estimator:
    """``get_params``/``set_params`` from the dataclass fields, and what every estimator derives from its logits."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyperparameters, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def set_params(self, **params: Any):
        """Set hyperparameters; returns ``self``.

        Raises:
            ValueError: an unknown hyperparameter (lists the valid ones).
        """
        valid = self.get_params()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"unknown hyperparameter {name!r} for {type(self).__name__}; valid: {sorted(valid)}")
            setattr(self, name, value)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[example, label]`` class probabilities (softmax of :meth:`decision_function`)."""
        return np.exp(log_softmax(self.decision_function(X), axis=-1))  # type: ignore[attr-defined]

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class index per example."""
        return self.decision_function(X).argmax(-1)  # type: ignore[attr-defined]

    def score(self, X: Any, y: Any = None) -> float:
        """Accuracy on ``(X, y)`` (``y`` defaults to a Decomposition's gold labels).

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: bad shapes or labels.
        """
        pred = self.predict(X)
        return float((pred == _check_y(X, y, len(pred), self.n_labels_)).mean())  # type: ignore[attr-defined]


def _as_array(X: Any, what: str) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a numeric array or tensor, got {type(X).__name__}") from None
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite values; check the inputs")
    return arr


def _check_y(X: Any, y: Any, n: int, n_labels: int) -> np.ndarray:
    """``y``, or the gold labels of a Decomposition ``X``, checked as ``n`` class indices."""
    if y is None and isinstance(X, Decomposition):
        y = X.golds
    if y is None:
        raise ValueError("y is required (class indices, one per example) unless X is a Decomposition")
    y = np.asarray(y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must be a 1-D array of {n} class indices (one per example), got shape {y.shape}")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= n_labels):
        raise ValueError(f"y must hold class indices in [0, {n_labels}), got values in [{y.min()}, {y.max()}]")
    return y


def loss_and_grad(w: np.ndarray, A: np.ndarray, Y: np.ndarray, l1: float) -> tuple[float, np.ndarray]:
    """Cross-entropy of ``softmax(sum_j clip(w_j) g_j)`` plus ``l1 * ||clip(w)||_1``, and its gradient in ``w``.

    ``A`` is ``[example, label, component]`` (contiguous, so both products are matrix-vector products); ``Y`` is
    one-hot ``[example, label]``. The clip to ``[0, 1]`` passes gradient where ``0 <= w <= 1`` (as ``torch.clamp``).
    """
    wc = np.clip(w, 0.0, 1.0)
    logp = log_softmax(A @ wc, axis=-1)
    loss = -(logp * Y).sum() / len(A) + l1 * wc.sum()
    grad = np.tensordot(np.exp(logp) - Y, A, axes=([0, 1], [0, 1])) / len(A) + l1 * (wc > 0)
    return float(loss), grad * ((w >= 0) & (w <= 1))


@dataclass(kw_only=True, eq=False)
class ComponentReweighting(_Estimator):
    """Reweight the components of a decomposition to classify better than the whole model.

    ``logits = sum_j clip(w_j, 0, 1) g_j``; ``w`` starts at 1 (the whole model) and is trained by full-batch gradient
    descent on cross-entropy ``+ l1 * ||w||_1``, stopping when the monitored loss has not improved by ``tol`` for
    ``n_iter_no_change`` epochs (the weights with the best monitored loss are kept).

    Args:
        l1: L1 penalty on the weights (λ).
        learning_rate: gradient-descent step size.
        max_epochs: most full-batch epochs.
        tol: smallest improvement of the monitored loss that resets early stopping.
        n_iter_no_change: epochs without improvement before stopping.
        validation_fraction: share of the training examples held out to monitor (cross-entropy) for early stopping;
            None monitors the training loss.
        random_state: seed of the validation split (the fit is otherwise deterministic).

    Attributes:
        weights_: ``[component]`` learned weights, clipped to ``[0, 1]``.
        component_names_: names of the components (from a Decomposition, else ``c{j}``).
        n_components_in_: components seen in fit.
        n_labels_: number of classes.
        n_epochs_: epochs run.
        loss_curve_: training loss per epoch.

    >>> import icl_heads as ih
    >>> model, task = ih.load_model("organism"), ih.organism_task(max_words=6, noise_rate=0.2)
    >>> dec_train, dec_test = ih.decompose(model, task.prompts(20, 4, seed=1)), ih.decompose(model, task.prompts(60, 4, seed=2))
    >>> rw = ComponentReweighting(random_state=0).fit(dec_train)
    >>> accuracy, kept = rw.score(dec_test), rw.kept_components_
    >>> 0 <= accuracy <= 1 and set(kept) <= set(dec_test.names)
    True
    """

    l1: float = 0.01
    learning_rate: float = 0.05
    max_epochs: int = 2000
    tol: float = 1e-4
    n_iter_no_change: int = 50
    validation_fraction: float | None = None
    random_state: int | None = None

    def _validate_params(self) -> None:
        if not self.l1 >= 0:
            raise ValueError(f"l1 must be >= 0, got {self.l1}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if int(self.max_epochs) < 1 or int(self.n_iter_no_change) < 1:
            got = f"{self.max_epochs}, {self.n_iter_no_change}"
            raise ValueError(f"max_epochs and n_iter_no_change must be >= 1, got {got}")
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be None or in (0, 1), got {self.validation_fraction}")

    def _X(self, X: Any, fitting: bool = False) -> np.ndarray:
        arr = _as_array(X.logits if isinstance(X, Decomposition) else X, "X")
        if arr.ndim != 3:
            raise ValueError(
                f"X must be [example, component, label] component logits (e.g. decompose(...).logits), got shape {arr.shape}"
            )
        if fitting and (arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 2):
            raise ValueError(f"X needs at least 1 example, 1 component and 2 labels, got shape {arr.shape}")
        if not fitting:
            self._check_fitted()
            if arr.shape[1:] != (self.n_components_in_, self.n_labels_):
                raise ValueError(
                    f"X has {arr.shape[1]} components and {arr.shape[2]} labels but the estimator was fitted on "
                    f"{self.n_components_in_} and {self.n_labels_}; decompose the same model with the same label words"
                )
        return arr

    def fit(self, X: Any, y: Any = None) -> ComponentReweighting:
        """Learn the component weights.

        Args:
            X: ``[example, component, label]`` component logits (array, tensor or a :class:`Decomposition`).
            y: class index per example (default: the Decomposition's gold labels).

        Returns:
            ``self``.

        Raises:
            ValueError: bad shapes, labels out of range, non-finite values or bad hyperparameters.
            TypeError: ``X`` is not numeric.
        """
        self._validate_params()
        arr = self._X(X, fitting=True)
        n, C, L = arr.shape
        Y = np.eye(L)[_check_y(X, y, n, L)]
        A = np.ascontiguousarray(arr.transpose(0, 2, 1))
        train, val = np.arange(n), None
        if self.validation_fraction is not None:
            n_val = round(self.validation_fraction * n)
            if not 1 <= n_val < n:
                raise ValueError(
                    f"validation_fraction={self.validation_fraction} of {n} examples leaves no train or validation set"
                )
            perm = np.random.default_rng(self.random_state).permutation(n)
            train, val = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        A_train, Y_train, w = A[train], Y[train], np.ones(C)
        best, best_w, stale, curve, epoch = np.inf, w.copy(), 0, [], 0
        for epoch in range(1, int(self.max_epochs) + 1):  # noqa: B007
            loss, grad = loss_and_grad(w, A_train, Y_train, self.l1)
            curve.append(loss)
            monitor = loss if val is None else loss_and_grad(w, A[val], Y[val], 0.0)[0]
            if monitor < best - self.tol:
                best, best_w, stale = monitor, w.copy(), 0
            elif (stale := stale + 1) >= self.n_iter_no_change:
                break
            w = w - self.learning_rate * grad
        self.weights_, self.n_epochs_, self.loss_curve_ = np.clip(best_w, 0.0, 1.0), epoch, np.asarray(curve)
        names = X.names if isinstance(X, Decomposition) else [f"c{j}" for j in range(C)]
        self.component_names_, self.n_components_in_, self.n_labels_, self.classes_ = tuple(names), C, L, np.arange(L)
        return self

    @property
    def kept_components_(self) -> list[str]:
        """Names of the components with a non-zero weight, heaviest first."""
        self._check_fitted()
        order = np.argsort(-self.weights_, kind="stable")
        return [self.component_names_[j] for j in order if self.weights_[j] > 0]

    def decision_function(self, X: Any) -> np.ndarray:
        """``[example, label]`` reweighted logits ``sum_j w_j g_j``.

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: a shape that does not match the fit.
        """
        return np.einsum("ncl,c->nl", self._X(X), self.weights_)


@dataclass(kw_only=True, eq=False)
class CalibPlus(_Estimator):
    """Learned calibration of the model's label probabilities: ``logits = W * p + b`` per class.

    ``p`` is the softmax of the model's label logits; ``W`` (initialised to 1) and ``b`` (to 0) are fitted by L-BFGS
    on cross-entropy plus ``l2 * (||W - 1||^2 + ||b||^2)``.

    Args:
        l2: pull of the weights toward the identity calibration.
        max_iter: most L-BFGS iterations.

    Attributes:
        weights_: ``[label]`` per-class weights.
        bias_: ``[label]`` per-class biases.
        n_labels_: number of classes.
    """

    l2: float = 1e-3
    max_iter: int = 500

    def _X(self, X: Any, fitting: bool = False) -> np.ndarray:
        arr = _as_array(X.full_logits if isinstance(X, Decomposition) else X, "X")
        if arr.ndim != 2 or (fitting and (arr.shape[0] < 1 or arr.shape[1] < 2)):
            raise ValueError(f"X must be [example, label] label logits with 2+ labels, got shape {arr.shape}")
        if not fitting:
            self._check_fitted()
            if arr.shape[1] != self.n_labels_:
                raise ValueError(f"X has {arr.shape[1]} labels but the estimator was fitted on {self.n_labels_}")
        return np.exp(log_softmax(arr, axis=-1))

    def fit(self, X: Any, y: Any = None) -> CalibPlus:
        """Fit the per-class weights and biases.

        Args:
            X: ``[example, label]`` label logits of the model (or a Decomposition: its ``full_logits``).
            y: class index per example (default: the Decomposition's gold labels).

        Returns:
            ``self``.

        Raises:
            ValueError: bad shapes, labels or hyperparameters.
        """
        if not self.l2 >= 0 or int(self.max_iter) < 1:
            raise ValueError(f"l2 must be >= 0 and max_iter >= 1, got {self.l2}, {self.max_iter}")
        P = self._X(X, fitting=True)
        n, L = P.shape
        Y = np.eye(L)[_check_y(X, y, n, L)]

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W, b = theta[:L], theta[L:]
            logp = log_softmax(P * W + b, axis=-1)
            d = (np.exp(logp) - Y) / n
            loss = -(logp * Y).sum() / n + self.l2 * (((W - 1) ** 2).sum() + (b**2).sum())
            return float(loss), np.concatenate([(d * P).sum(0) + 2 * self.l2 * (W - 1), d.sum(0) + 2 * self.l2 * b])

        theta = np.concatenate([np.ones(L), np.zeros(L)])
        res = minimize(objective, theta, jac=True, method="L-BFGS-B", options={"maxiter": int(self.max_iter)})
        self.weights_, self.bias_, self.n_labels_, self.classes_ = res.x[:L], res.x[L:], L, np.arange(L)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """``[example, label]`` calibrated logits ``W * p + b``."""
        return self._X(X) * self.weights_ + self.bias_
