"""Frozen ridge heads and zero-shot evaluation on every task of a suite (Sec. 3.3).

The heads ξ_k are fitted once on the *dense* encoder and then frozen; an encoder
(dense, pruned, or pruned and fine-tuned) is judged by the accuracy of
φ(x; W)ᵀ ξ_k on each task k.  Like the paper, heads are fitted and evaluated on
the same images by default; ``holdout=True`` fits on one stratified half and
evaluates on the other (a deviation from the paper, labelled as such in the UI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from . import ridge
from .features import dense_features, extract, task_inputs
from .models import Encoder
from .tasks import TaskSuite

if TYPE_CHECKING:
    from .results import Progress

__all__ = ["RIDGE_KINDS", "Heads", "split_indices", "fit_heads", "evaluate", "evaluate_dense"]


def split_indices(labels: Tensor | np.ndarray, holdout: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit, eval) row indices: all/all, or a stratified half/half split when ``holdout``."""
    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    if not holdout:
        return everything, everything
    rng = np.random.default_rng(seed)
    fit_idx, eval_idx = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:  # it would be evaluated on the image it was fitted on, and called held-out
            raise ValueError(
                f"held-out evaluation needs at least 2 images of each class; class {c} has {len(idx)}: "
                "use more images per class, or turn held-out evaluation off"
            )
        half = len(idx) // 2
        fit_idx.append(idx[:half])
        eval_idx.append(idx[half:])
    return np.sort(np.concatenate(fit_idx)), np.sort(np.concatenate(eval_idx))


#: ``ExperimentSpec.ridge`` values: the paper's closed form, or the authors' code's intercept with
#: class-balanced weights (:func:`pai_core.ridge.fit` with ``intercept=True``).
RIDGE_KINDS = ("closed-form", "intercept-balanced")


@dataclass(eq=False)
class Heads:
    """One frozen ridge head per task plus the split it was fitted on."""

    xi: list[Tensor]
    holdout: bool
    seed: int
    alpha: float
    #: Dense accuracy per task, measured while fitting (the features are at hand then).
    dense: list[float] = field(default_factory=list)
    #: Whether each ξ carries an intercept as its last row (``ridge="intercept-balanced"``).
    intercept: bool = False

    def module(self, task_index: int) -> nn.Module:
        """The head of one task as a frozen ``nn.Linear`` (h → C; with a bias for an intercept)."""
        xi = self.xi[task_index]
        w = xi[:-1] if self.intercept else xi
        lin = nn.Linear(w.shape[0], w.shape[1], bias=self.intercept)
        with torch.no_grad():
            lin.weight.copy_(w.T)
            if self.intercept:
                lin.bias.copy_(xi[-1])
        lin.requires_grad_(False)
        return lin


def fit_heads(
    encoder: Encoder,
    suite: TaskSuite,
    *,
    alpha: float = 1.0,
    holdout: bool = False,
    seed: int = 0,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    ridge_kind: str = "closed-form",
) -> Heads:
    """Fit ξ_k on the dense encoder's features for every task k (Eq. 7; ``ridge_kind`` one of
    :data:`RIDGE_KINDS`)."""
    if ridge_kind not in RIDGE_KINDS:
        raise ValueError(f"unknown ridge kind {ridge_kind!r}; valid: {', '.join(RIDGE_KINDS)}")
    intercept = ridge_kind == "intercept-balanced"
    xis, dense = [], []
    for k, task in enumerate(suite.tasks):
        phi, y = dense_features(encoder, suite, k, image_size=image_size, device=device, progress=progress)
        fit_idx, eval_idx = split_indices(y, holdout, seed)
        xis.append(ridge.fit(phi[fit_idx], y[fit_idx], task.num_classes, alpha=alpha, intercept=intercept))
        dense.append(ridge.accuracy(phi[eval_idx], y[eval_idx], xis[-1]))
    return Heads(xis, holdout, seed, alpha, dense, intercept)


def evaluate(
    model: nn.Module,
    encoder: Encoder,
    suite: TaskSuite,
    heads: Heads,
    *,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: Progress | None = None,
    tasks: list[int] | None = None,
) -> list[float]:
    """Accuracy of ``model`` (an encoder φ, possibly pruned) with the frozen heads on each task.

    Args:
        model: The feature extractor to judge (e.g. a pruned copy of ``encoder.model``).
        encoder: Supplies the preprocessing.
        suite: The tasks.
        heads: Frozen heads from :func:`fit_heads` (their split is reused).
        tasks: Indices to evaluate (default: all).

    Returns:
        Accuracy per evaluated task, in order.
    """
    accs = []
    model = model.to(device)
    for k in tasks if tasks is not None else range(len(suite.tasks)):
        x, y = task_inputs(suite.tasks[k], encoder, image_size, progress)
        _, eval_idx = split_indices(y, heads.holdout, heads.seed)
        phi = extract(
            model,
            x[eval_idx],
            batch_size=batch_size,
            device=device,
            progress=progress,
            message=f"evaluating on {suite.tasks[k].name}",
        )
        accs.append(ridge.accuracy(phi, y[eval_idx], heads.xi[k]))
    return accs


def evaluate_dense(
    encoder: Encoder,
    suite: TaskSuite,
    heads: Heads,
    *,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> list[float]:
    """Dense accuracy per task from the cached dense features (no forward pass on a cache hit)."""
    accs = []
    for k in range(len(suite.tasks)):
        phi, y = dense_features(encoder, suite, k, image_size=image_size, device=device, progress=progress)
        _, eval_idx = split_indices(y, heads.holdout, heads.seed)
        accs.append(ridge.accuracy(phi[eval_idx], y[eval_idx], heads.xi[k]))
    return accs
