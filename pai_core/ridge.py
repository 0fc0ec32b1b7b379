"""Closed-form ridge classifiers ξ, one per task (the paper's Eq. 6-7).

ξ* = argmin ‖Y − Φξ‖² + α‖ξ‖² = (ΦᵀΦ + αI)⁻¹ΦᵀY with one-hot Y.  Solved in
float64 by a Cholesky factorisation, never an explicit inverse; when there are
fewer examples than features the equivalent dual form Φᵀ(ΦΦᵀ + αI)⁻¹Y is used
(same solution, an n x n system instead of h x h).  No intercept, as in the paper's text.

``intercept=True`` is the authors' code instead (``RidgeClassificationHead`` of
github.com/iurada/px-ntk-pruning): features augmented with a column of ones, class-balanced
sample weights ``w_i = n / (C · n_{y_i})`` (scikit-learn's ``class_weight="balanced"``), and
ξ̃ = (Φ̃ᵀDΦ̃ + αI)⁻¹Φ̃ᵀDY with Φ̃ = [Φ, 1], D = diag(w).  The intercept (the last row of ξ̃) is
penalised like every weight, as in that code (scikit-learn leaves it unpenalised); the code's
extra jitter ``10⁻⁶ I`` is left out (the system is positive definite for α > 0).

Example:
    >>> import torch
    >>> phi = torch.eye(3); xi = fit(phi, torch.tensor([0, 1, 2]), 3, alpha=1.0)
    >>> torch.allclose(xi, 0.5 * torch.eye(3, dtype=xi.dtype))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fit", "predict", "accuracy", "one_hot", "balanced_weights"]


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """One-hot targets ``[n, C]``; raises ValueError for labels outside ``0..C-1``."""
    labels = torch.as_tensor(labels).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return torch.nn.functional.one_hot(labels, num_classes).to(dtype)


def balanced_weights(labels: Tensor, num_classes: int) -> Tensor:
    """Class-balanced sample weights ``n / (C · n_c)`` of each example's class (float64).

    Example:
        >>> balanced_weights(torch.tensor([0, 0, 0, 1]), 2).tolist()
        [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    labels = torch.as_tensor(labels).long().cpu()
    counts = torch.bincount(labels, minlength=num_classes).double()
    return (len(labels) / (num_classes * counts))[labels]


def fit(
    features: Tensor, labels: Tensor, num_classes: int, alpha: float = 1.0, *, intercept: bool = False
) -> Tensor:
    """Ridge regression onto one-hot targets (Eq. 7), or the authors' code's variant.

    Args:
        features: Φ, ``[n, h]``.
        labels: Integer labels ``[n]`` in ``0..num_classes-1``.
        num_classes: C.
        alpha: α > 0 (the paper uses 1).
        intercept: Fit an intercept with class-balanced sample weights (the authors' code; see
            the module docstring).

    Returns:
        ξ, ``[h, C]`` float32; with ``intercept``, ``[h + 1, C]`` whose last row is the intercept.

    Raises:
        ValueError: Shapes disagree, α ≤ 0, or non-finite features.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if features.ndim != 2 or features.shape[0] != len(labels):
        raise ValueError(
            f"features must be [n, h] with n = len(labels); got {tuple(features.shape)}, {len(labels)}"
        )
    phi = features.detach().to(torch.float64).cpu()
    if not torch.isfinite(phi).all():
        raise ValueError("features contain NaN or inf")
    y = one_hot(torch.as_tensor(labels).cpu(), num_classes)
    if intercept:
        root = balanced_weights(labels, num_classes).sqrt()[:, None]
        phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype)], 1) * root
        y = y * root
    n, h = phi.shape
    if n >= h:
        gram = phi.T @ phi
        gram.diagonal().add_(alpha)
        xi = torch.cholesky_solve(phi.T @ y, torch.linalg.cholesky(gram))
    else:
        gram = phi @ phi.T
        gram.diagonal().add_(alpha)
        xi = phi.T @ torch.cholesky_solve(y, torch.linalg.cholesky(gram))
    return xi.float()


def predict(features: Tensor, xi: Tensor) -> Tensor:
    """Predicted class per row: argmax over φᵀξ (plus the intercept row when ξ has ``h + 1`` rows)."""
    h = features.shape[1]
    if xi.shape[0] not in (h, h + 1):
        raise ValueError(
            f"ξ has {xi.shape[0]} rows for {h} features (expected {h}, or {h + 1} with an intercept)"
        )
    xi = xi.to(features.device)
    out = features.to(xi.dtype) @ xi[:h]
    if xi.shape[0] == h + 1:
        out = out + xi[-1]
    return out.argmax(dim=1)


def accuracy(features: Tensor, labels: Tensor, xi: Tensor) -> float:
    """Fraction of rows whose prediction equals the label."""
    return float((predict(features, xi).cpu() == torch.as_tensor(labels).cpu()).double().mean())
