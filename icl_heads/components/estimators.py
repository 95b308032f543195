"""Component reweighting and Calib+: learn from a few labelled examples on top of a decomposition.

:class:`ComponentReweighting` learns one weight per component, ``logits = sum_j w_j g_j``
with ``w`` initialised to 1 and clipped to ``[0, 1]`` in the forward pass, by full-batch
gradient descent on cross-entropy plus ``l1 * ||w||_1`` (Chang, Thomason & Jia, 2024).
:class:`CalibPlus` learns per-class weights and biases on the model's label
probabilities. Both follow scikit-learn's estimator contract (``fit`` returns
``self``, learned state ends in ``_``, :class:`NotFittedError` before ``fit``) without
depending on scikit-learn. :func:`compare_reweighting` runs the whole protocol: ``K``
labelled examples become ``K'`` balanced demonstrations and ``K - K'`` training
examples, compared on a test set with ``K``-shot ICL and Calib+.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from icl_heads.components.result import Decomposition


class NotFittedError(ValueError, AttributeError):
    """An estimator was used before :meth:`fit`."""


class _Estimator:
    """``get_params``/``set_params`` from the keyword-only ``__init__`` signature, and a readable repr."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyperparameters, by name."""
        return {
            name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters if name != "self"
        }

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")


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


def _check_y(y: Any, n: int, n_labels: int) -> np.ndarray:
    if y is None:
        raise ValueError("y is required (class indices, one per example) unless X is a Decomposition")
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"y must be a 1-D array of {n} class indices (one per example), got shape {y.shape}")
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= n_labels):
        raise ValueError(f"y must hold class indices in [0, {n_labels}), got values in [{y.min()}, {y.max()}]")
    return y


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def loss_and_grad(w: np.ndarray, A: np.ndarray, Y: np.ndarray, l1: float) -> tuple[float, np.ndarray]:
    """Cross-entropy of ``softmax(sum_j clip(w_j) g_j)`` plus ``l1 * ||clip(w)||_1``, and its gradient in ``w``.

    ``A`` is ``[example, label, component]`` (the component logits with the last two
    axes swapped, contiguous, so both products are matrix-vector products); ``Y`` is
    one-hot ``[example, label]``. The clip to ``[0, 1]`` passes gradient where
    ``0 <= w <= 1`` (as ``torch.clamp`` does).
    """
    wc = np.clip(w, 0.0, 1.0)
    logp = _log_softmax(A @ wc)
    n = len(A)
    loss = -(logp * Y).sum() / n + l1 * wc.sum()
    grad = np.tensordot(np.exp(logp) - Y, A, axes=([0, 1], [0, 1])) / n + l1 * (wc > 0)
    return float(loss), grad * ((w >= 0) & (w <= 1))


class ComponentReweighting(_Estimator):
    """Reweight the components of a decomposition to classify better than the whole model.

    ``logits = sum_j clip(w_j, 0, 1) g_j``; ``w`` starts at 1 (the whole model) and is
    trained by full-batch gradient descent on cross-entropy ``+ l1 * ||w||_1``, stopping
    when the monitored loss has not improved by ``tol`` for ``n_iter_no_change`` epochs
    (the weights with the best monitored loss are kept).

    Args:
        l1: L1 penalty on the weights (λ).
        learning_rate: gradient-descent step size.
        max_epochs: most full-batch epochs.
        tol: smallest improvement of the monitored loss that resets early stopping.
        n_iter_no_change: epochs without improvement before stopping.
        validation_fraction: share of the training examples held out to monitor
            (cross-entropy) for early stopping; None monitors the training loss.
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

    def __init__(
        self,
        *,
        l1: float = 0.01,
        learning_rate: float = 0.05,
        max_epochs: int = 2000,
        tol: float = 1e-4,
        n_iter_no_change: int = 50,
        validation_fraction: float | None = None,
        random_state: int | None = None,
    ):
        self.l1 = l1
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def _validate_params(self) -> None:
        if not self.l1 >= 0:
            raise ValueError(f"l1 must be >= 0, got {self.l1}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if int(self.max_epochs) < 1 or int(self.n_iter_no_change) < 1:
            raise ValueError(
                f"max_epochs and n_iter_no_change must be >= 1, got {self.max_epochs}, {self.n_iter_no_change}"
            )
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be None or in (0, 1), got {self.validation_fraction}")

    def _X(self, X: Any, fitting: bool = False) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
        golds, names = None, None
        if isinstance(X, Decomposition):
            X, golds, names = X.logits, X.golds.numpy(), X.names
        arr = _as_array(X, "X")
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
        return arr, golds, names

    def fit(self, X: Any, y: Any = None) -> ComponentReweighting:
        """Learn the component weights.

        Args:
            X: ``[example, component, label]`` component logits (array, tensor or a
                :class:`~icl_heads.components.result.Decomposition`).
            y: class index per example (default: the Decomposition's gold labels).

        Returns:
            ``self``.

        Raises:
            ValueError: bad shapes, labels out of range, non-finite values or bad hyperparameters.
            TypeError: ``X`` is not numeric.
        """
        self._validate_params()
        X, golds, names = self._X(X, fitting=True)
        n, C, L = X.shape
        y = _check_y(golds if y is None else y, n, L)
        Y = np.eye(L)[y]
        A = np.ascontiguousarray(X.transpose(0, 2, 1))
        train, val = np.arange(n), None
        if self.validation_fraction is not None:
            n_val = round(self.validation_fraction * n)
            if not 1 <= n_val < n:
                raise ValueError(
                    f"validation_fraction={self.validation_fraction} of {n} examples leaves no train or validation set"
                )
            perm = np.random.default_rng(self.random_state).permutation(n)
            train, val = np.sort(perm[n_val:]), np.sort(perm[:n_val])
        A_train, Y_train = A[train], Y[train]
        w = np.ones(C)
        best, best_w, stale, curve = np.inf, w.copy(), 0, []
        epoch = 0
        for epoch in range(1, int(self.max_epochs) + 1):  # noqa: B007
            loss, grad = loss_and_grad(w, A_train, Y_train, self.l1)
            curve.append(loss)
            monitor = loss if val is None else loss_and_grad(w, A[val], Y[val], 0.0)[0]
            if monitor < best - self.tol:
                best, best_w, stale = monitor, w.copy(), 0
            else:
                stale += 1
                if stale >= self.n_iter_no_change:
                    break
            w = w - self.learning_rate * grad
        self.weights_ = np.clip(best_w, 0.0, 1.0)
        self.component_names_ = tuple(names) if names is not None else tuple(f"c{j}" for j in range(C))
        self.n_components_in_, self.n_labels_ = C, L
        self.classes_ = np.arange(L)
        self.n_epochs_ = epoch
        self.loss_curve_ = np.asarray(curve)
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
        arr, _, _ = self._X(X)
        return np.einsum("ncl,c->nl", arr, self.weights_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[example, label]`` class probabilities (softmax of :meth:`decision_function`)."""
        return np.exp(_log_softmax(self.decision_function(X)))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class index per example."""
        return self.decision_function(X).argmax(-1)

    def score(self, X: Any, y: Any = None) -> float:
        """Accuracy on ``(X, y)`` (``y`` defaults to a Decomposition's gold labels).

        Raises:
            NotFittedError: before :meth:`fit`.
            ValueError: bad shapes or labels.
        """
        arr, golds, _ = self._X(X)
        y = _check_y(golds if y is None else y, len(arr), self.n_labels_)
        return float((self.predict(arr) == y).mean())


class CalibPlus(_Estimator):
    """Learned calibration of the model's label probabilities: ``logits = W * p + b`` per class.

    ``p`` is the softmax of the model's label logits; ``W`` (initialised to 1) and ``b``
    (to 0) are fitted by L-BFGS on cross-entropy plus ``l2 * (||W - 1||^2 + ||b||^2)``.

    Args:
        l2: pull of the weights toward the identity calibration.
        max_iter: most L-BFGS iterations.

    Attributes:
        weights_: ``[label]`` per-class weights.
        bias_: ``[label]`` per-class biases.
        n_labels_: number of classes.
    """

    def __init__(self, *, l2: float = 1e-3, max_iter: int = 500):
        self.l2 = l2
        self.max_iter = max_iter

    def _X(self, X: Any, fitting: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        golds = None
        if isinstance(X, Decomposition):
            X, golds = X.full_logits, X.golds.numpy()
        arr = _as_array(X, "X")
        if arr.ndim != 2 or (fitting and (arr.shape[0] < 1 or arr.shape[1] < 2)):
            raise ValueError(f"X must be [example, label] label logits with 2+ labels, got shape {arr.shape}")
        if not fitting:
            self._check_fitted()
            if arr.shape[1] != self.n_labels_:
                raise ValueError(f"X has {arr.shape[1]} labels but the estimator was fitted on {self.n_labels_}")
        return np.exp(_log_softmax(arr)), golds

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
        P, golds = self._X(X, fitting=True)
        n, L = P.shape
        Y = np.eye(L)[_check_y(golds if y is None else y, n, L)]

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W, b = theta[:L], theta[L:]
            logp = _log_softmax(P * W + b)
            d = (np.exp(logp) - Y) / n
            loss = -(logp * Y).sum() / n + self.l2 * (((W - 1) ** 2).sum() + (b**2).sum())
            return float(loss), np.concatenate([(d * P).sum(0) + 2 * self.l2 * (W - 1), d.sum(0) + 2 * self.l2 * b])

        res = minimize(objective, np.concatenate([np.ones(L), np.zeros(L)]), jac=True, method="L-BFGS-B",
                       options={"maxiter": int(self.max_iter)})  # fmt: skip
        self.weights_, self.bias_, self.n_labels_ = res.x[:L], res.x[L:], L
        self.classes_ = np.arange(L)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """``[example, label]`` calibrated logits ``W * p + b``."""
        P, _ = self._X(X)
        return P * self.weights_ + self.bias_

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[example, label]`` calibrated probabilities."""
        return np.exp(_log_softmax(self.decision_function(X)))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class index per example."""
        return self.decision_function(X).argmax(-1)

    def score(self, X: Any, y: Any = None) -> float:
        """Accuracy on ``(X, y)`` (``y`` defaults to a Decomposition's gold labels)."""
        P, golds = self._X(X)
        return float((self.predict(X) == _check_y(golds if y is None else y, len(P), self.n_labels_)).mean())
