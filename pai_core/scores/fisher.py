"""Gradient and empirical-Fisher scores: SNIP, the diagonal (OBD) score, Fisher–Taylor.

``diag`` and ``fisher_taylor`` square **per-example** gradients (never the square of the mean
gradient, which is not a Fisher); they come from one hooked backward pass per batch
(:mod:`pai_core.scores.hooks`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._base import ScoreCall, Scores, _grad_full, _num_batches, _scoring_state
from ._registry import register_score
from .hooks import _hooked_pass, _HookEngine


def _moments(c: ScoreCall, label: str, *, sums: bool) -> _HookEngine:
    """Per-example gradient moments of the scored parameters (``sq``; ``sum`` when ``sums``)."""
    with _scoring_state(c.model):
        eng = _hooked_pass(c, moments=True, kfac=False, sums=sums, label=f"{label}: per-example gradients")
    # The engine explains every parameter (sites, or torch.func for the ones they miss) or finds
    # it unreached; what it saw is what it stored.
    c.cover([n for n in c.named if n in eng.sq], eng.unreached)
    return eng


def _get(store: dict[str, Tensor], name: str, p: Tensor) -> Tensor:
    # Only a parameter with no path to the loss is absent (reported by compute): zero gradient.
    return store[name] if name in store else torch.zeros_like(p)


@register_score("diag", label="diagonal Hessian", data_driven=True, color="#56B4E9", order=1)
def diag_score(c: ScoreCall) -> Scores:
    """``S_j = θ_j² · (1/N) Σ_i (∂ℓ_i/∂θ_j)²``: Eq. (3) with the diagonal empirical Fisher
    (OBD; Occhiena et al., 2025, arXiv:2509.24066).

    The diagonal Hessian approximation of the transfer paper's Sec. 3.2 ("Diagonal"):
    ``[H⁻¹]_jj ≈ 1/H_jj`` (Optimal Brain Damage) with ``H_jj ≈ F̂_jj = E[(∇_j ℓ)²]`` from
    per-example gradients.

    References:
        Occhiena, Iurada & Tommasi, "A Second-Order Perspective on Pruning at Initialization and
        Knowledge Transfer", arXiv:2509.24066 (2025), Eq. (3).
        LeCun, Denker & Solla, "Optimal Brain Damage", NeurIPS (1989).
        Gollini Navarrete et al., "What Scalable Second-Order Information Knows for Pruning at
        Initialization", arXiv:2502.11450 (2025) (the empirical-Fisher diagonal at initialisation).
    """
    eng = _moments(c, "diag", sums=False)
    return {n: p.detach() ** 2 * _get(eng.sq, n, p) / eng.n for n, p in c.named.items()}


@register_score("fisher_taylor", label="Fisher–Taylor", data_driven=True, color="#999999", order=7)
def fisher_taylor_score(c: ScoreCall) -> Scores:
    """``S_j = |θ_j ḡ_j + ½ θ_j² F̂_jj|``, ``ḡ = ∇L``, ``F̂`` the diagonal empirical Fisher
    (Gollini Navarrete et al., 2025, arXiv:2502.11450).

    The "Fisher–Taylor sensitivity": a second-order Taylor expansion of the loss change when
    zeroing ``θ_j``, with ``F̂_jj = (1/N) Σ_i (∂ℓ_i/∂θ_j)²`` for the Hessian, as in the authors'
    code (github.com/Gollini/Scalable_Second_Order_PaI, ``fd_taylor``).  The exact Taylor change
    is ``−θg + ½θ²H``; the paper's ``+θg`` is kept for comparability.

    Reference:
        Gollini Navarrete et al., "What Scalable Second-Order Information Knows for Pruning at
        Initialization", arXiv:2502.11450 (2025).
    """
    eng = _moments(c, "fisher_taylor", sums=True)
    out = {}
    for n, p in c.named.items():
        th = p.detach()
        out[n] = (th * _get(eng.sum, n, p) / eng.n + 0.5 * th**2 * _get(eng.sq, n, p) / eng.n).abs()
    return out


@register_score("snip", label="SNIP", data_driven=True, color="#0072B2", order=3)
def snip_score(c: ScoreCall) -> Scores:
    """``S_j = |θ_j · ∂L/∂θ_j|``: connection sensitivity, Eq. (4) with F = L
    (Lee et al., 2019, arXiv:1810.02340).

    The gradient of the loss w.r.t. the mask ``c_j`` at ``c = 1`` (not ``|∂L/∂θ|``: the mask
    gradient carries the weight).

    Reference:
        Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection
        Sensitivity", ICLR (2019), arXiv:1810.02340.
    """
    with _scoring_state(c.model, c.named.values()):
        g, _ = _grad_full(c, "snip: gradient", total=_num_batches(c.batches))
    return {n: (p.detach() * gi).abs() for (n, p), gi in zip(c.named.items(), g)}
