"""Gradient and empirical-Fisher scores: SNIP, the diagonal (OBD) score, Fisher–Taylor.

``diag`` and ``fisher_taylor`` square **per-example** gradients (never the square of the mean
gradient, which is not a Fisher); they come from one hooked backward pass per batch
(:mod:`pai_core.scores.hooks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ._base import Batches, Named, Scores, _grad_full, _num_batches, _scoring_state
from ._registry import register_score
from .hooks import _hooked_pass

if TYPE_CHECKING:
    from ..results import Progress


def _get(store: dict[str, Tensor], name: str, p: Tensor) -> Tensor:
    # A parameter whose layer never reached the loss has zero gradient.
    return store[name] if name in store else torch.zeros_like(p)


@register_score(
    "diag",
    label="diagonal Hessian",
    description="θ² · (1/N) Σᵢ (∂ℓᵢ/∂θ)²: Eq. (3) with the diagonal empirical Fisher "
    "(OBD; Occhiena et al., 2025, arXiv:2509.24066)",
    data_driven=True,
    color="#56B4E9",
    order=1,
)
def diag_score(
    model: nn.Module, batches: Batches, named: Named, loss: str, progress: Progress | None
) -> Scores:
    """``S_j = θ_j² · F̂_jj`` with ``F̂_jj = (1/N) Σ_i (∂ℓ_i/∂θ_j)²``, the diagonal empirical Fisher.

    Eq. (3) of the transfer paper with the diagonal Hessian approximation of its Sec. 3.2
    ("Diagonal"): ``[H⁻¹]_jj ≈ 1/H_jj`` (Optimal Brain Damage), ``H_jj ≈ E[(∇_j ℓ)²]`` from
    per-example gradients.

    References:
        Occhiena, Iurada & Tommasi, "A Second-Order Perspective on Pruning at Initialization and
        Knowledge Transfer", arXiv:2509.24066 (2025), Eq. (3).
        LeCun, Denker & Solla, "Optimal Brain Damage", NeurIPS (1989).
        Gollini Navarrete et al., "What Scalable Second-Order Information Knows for Pruning at
        Initialization", arXiv:2502.11450 (2025) (empirical-Fisher diagonal at initialisation).
    """
    with _scoring_state(model):
        eng = _hooked_pass(
            model,
            batches,
            list(named),
            loss,
            moments=True,
            kfac=False,
            sums=False,
            progress=progress,
            label="diag: per-example gradients",
        )
    return {n: p.detach() ** 2 * _get(eng.sq, n, p) / eng.n for n, p in named.items()}


@register_score(
    "fisher_taylor",
    label="Fisher–Taylor",
    description="|θ ⊙ ∇L + ½ θ² ⊙ F̂|, F̂ the diagonal empirical Fisher "
    "(Gollini Navarrete et al., 2025, arXiv:2502.11450)",
    data_driven=True,
    color="#999999",
    order=7,
)
def fisher_taylor_score(
    model: nn.Module, batches: Batches, named: Named, loss: str, progress: Progress | None
) -> Scores:
    """``S_j = |θ_j ḡ_j + ½ θ_j² F̂_jj|`` with ``ḡ = ∇L`` and ``F̂_jj = (1/N) Σ_i (∂ℓ_i/∂θ_j)²``.

    The "Fisher–Taylor sensitivity": a second-order Taylor expansion of the loss change when
    zeroing ``θ_j``, with the empirical-Fisher diagonal for the Hessian, as in the authors' code
    (github.com/Gollini/Scalable_Second_Order_PaI, ``fd_taylor``).  The exact Taylor change is
    ``−θg + ½θ²H``; the paper's ``+θg`` is kept for comparability.

    Reference:
        Gollini Navarrete et al., "What Scalable Second-Order Information Knows for Pruning at
        Initialization", arXiv:2502.11450 (2025).
    """
    with _scoring_state(model):
        eng = _hooked_pass(
            model,
            batches,
            list(named),
            loss,
            moments=True,
            kfac=False,
            progress=progress,
            label="fisher_taylor: per-example gradients",
        )
    out = {}
    for n, p in named.items():
        th = p.detach()
        out[n] = (th * _get(eng.sum, n, p) / eng.n + 0.5 * th**2 * _get(eng.sq, n, p) / eng.n).abs()
    return out


@register_score(
    "snip",
    label="SNIP",
    description="|θ ⊙ ∂L/∂θ|: connection sensitivity, Eq. (4) with F = L (Lee et al., 2019, arXiv:1810.02340)",
    data_driven=True,
    color="#0072B2",
    order=3,
)
def snip_score(
    model: nn.Module, batches: Batches, named: Named, loss: str, progress: Progress | None
) -> Scores:
    """``S_j = |θ_j · ∂L/∂θ_j|``: the gradient of the loss w.r.t. the mask ``c_j`` at ``c = 1``.

    Eq. (4) of the transfer paper with ``F = L`` (not ``|∂L/∂θ|``: the mask gradient carries
    the weight).

    Reference:
        Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection
        Sensitivity", ICLR (2019), arXiv:1810.02340.
    """
    with _scoring_state(model, named.values()):
        g, _ = _grad_full(
            model, batches, named, loss, progress, "snip: gradient", total=_num_batches(batches)
        )
    return {n: (p.detach() * gi).abs() for (n, p), gi in zip(named.items(), g)}
