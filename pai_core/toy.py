"""Two-parameter quadratic landscapes: the OBD/OBS teaching core behind the paper's Fig. 1 and Fig. 2.

Everything here is exact, closed-form numpy on 2x2 matrices, so the toy page can recompute it on
every slider move and the tests can check it against brute force.

Convention (the paper's Eq. (2), *without* the usual 1/2)::

    L(θ) = (θ − θ₀)ᵀ H (θ − θ₀),      ∇L(θ) = 2 H (θ − θ₀),      ∇²L = 2 H.

θ₀ is the pre-trained minimum (L(θ₀) = 0; the constant L(D, θ₀) of Eq. (2) is dropped because
only differences matter). We keep calling H "the Hessian" as the paper does; strictly it is half of
it. With this convention the paper's Eq. (3) holds *exactly*, with no factor 2 anywhere: pruning
weight j (forcing θⱼ = 0) and then applying the optimal correction

    δ = −θⱼ / [H⁻¹]ⱼⱼ · H⁻¹[:, j]

raises the loss by exactly ε_block = θⱼ² / [H⁻¹]ⱼⱼ, while plain removal (δ = −θⱼ eⱼ) raises it by
ε_diag = θⱼ² Hⱼⱼ. (With the textbook L = ½ …, both would carry a ½.)

Indices are 0-based in code (j ∈ {0, 1}); the UI labels them θ[1], θ[2] as the paper does.

Example:
    >>> import numpy as np
    >>> H = hessian_from_eig((4.0, 0.5), 30.0)
    >>> theta0 = np.array([1.0, 1.5])
    >>> r = scenario(H, H, theta0, "block")
    >>> bool(np.isclose(quadratic_loss(H, theta0, r.obs), r.scores["block"][r.pruned_index]))
    True
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

__all__ = [
    # Hessians and losses
    "hessian_from_eig",
    "HESSIAN_PRESETS",
    "hessian_preset",
    "available_hessian_presets",
    "quadratic_loss",
    "loss_grid",
    # Scores and pruning
    "Score",
    "available_scores",
    "pruning_scores",
    "weight_to_prune",
    "removed_weights",
    "pruned_point",
    "obs_update",
    # Retraining
    "retrain_path",
    "retrained_point",
    # Scenarios
    "PointLoss",
    "ToyResult",
    "scenario",
    "ToySpec",
    "scenario_from_spec",
    "PRESETS",
    "available_presets",
    "preset",
    "transfer_choice",
    "explain",
]

# Relative tolerance for "symmetric": sliders produce Hessians through cos/sin, so exact equality
# of H[0, 1] and H[1, 0] cannot be demanded, but anything beyond round-off is a caller's bug.
_SYM_RTOL = 1e-10


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_hessian(H: np.ndarray, name: str = "H") -> np.ndarray:
    """Return H as a float64 2x2 array, or raise ValueError saying what is wrong with it."""
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (2, 2):
        raise ValueError(f"{name} must be a 2x2 matrix (two parameters), got shape {H.shape}")
    if not np.all(np.isfinite(H)):
        raise ValueError(f"{name} must be finite, got {H.tolist()}")
    scale = max(float(np.abs(H).max()), 1.0)
    if abs(H[0, 1] - H[1, 0]) > _SYM_RTOL * scale:
        raise ValueError(f"{name} must be symmetric, got H[0,1]={H[0, 1]!r} != H[1,0]={H[1, 0]!r}")
    # Symmetrise away round-off so that eigvalsh and the closed forms see the same matrix.
    H = 0.5 * (H + H.T)
    lam_min = float(np.linalg.eigvalsh(H)[0])
    if lam_min <= 0.0:
        # Positive definiteness is what makes θ₀ a strict minimum and H invertible (Eq. 3 needs H⁻¹).
        raise ValueError(f"{name} must be positive definite, its smallest eigenvalue is {lam_min:.3g}")
    return H


def _check_theta(theta: np.ndarray, name: str = "theta") -> np.ndarray:
    """Return theta as a float64 vector of length 2, or raise ValueError."""
    theta = np.asarray(theta, dtype=np.float64)
    if theta.shape != (2,):
        raise ValueError(f"{name} must be a vector of 2 weights, got shape {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError(f"{name} must be finite, got {theta.tolist()}")
    return theta


def _check_index(j: int) -> int:
    """Return j as a Python int in {0, 1}, or raise ValueError."""
    if isinstance(j, bool):  # bool is an int subclass; True as "weight 1" is almost surely a bug
        raise ValueError(f"weight index must be 0 or 1, got {j!r}")
    try:
        j = operator.index(j)
    except TypeError:
        raise ValueError(f"weight index must be an integer 0 or 1, got {j!r}") from None
    if j not in (0, 1):
        raise ValueError(f"weight index must be 0 or 1 (two parameters), got {j}")
    return j


def _frozen(a: np.ndarray) -> np.ndarray:
    """A read-only float64 copy: results live in frozen dataclasses and may be cached by the UI."""
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


# --------------------------------------------------------------------------------------------------
# Hessians and losses
# --------------------------------------------------------------------------------------------------


def hessian_from_eig(eigvals: tuple[float, float] | np.ndarray, angle_deg: float = 0.0) -> np.ndarray:
    """Build a 2x2 symmetric positive-definite Hessian from its eigenvalues and a tilt angle.

    H = R(α) diag(λ₁, λ₂) R(α)ᵀ with R(α) the counter-clockwise rotation by α, so the eigenvector of
    λ₁ is (cos α, sin α). α = 0 gives the axis-aligned diag(λ₁, λ₂); any other α (not a multiple of
    90°) with λ₁ ≠ λ₂ gives non-zero cross-terms H₀₁ = (λ₁ − λ₂) cos α sin α — the "tilted" case of
    Fig. 2. Rotating by 90° swaps the roles of the two eigen-directions (orthogonal tasks, Fig. 1).

    Args:
        eigvals: (λ₁, λ₂), both > 0.
        angle_deg: tilt α of the first principal axis from θ[1], in degrees.

    Returns:
        The 2x2 float64 Hessian.

    Raises:
        ValueError: if there are not exactly two finite, strictly positive eigenvalues.

    Example:
        >>> hessian_from_eig((2.0, 1.0), 90.0).round(12)
        array([[1., 0.],
               [0., 2.]])
    """
    lam = np.asarray(eigvals, dtype=np.float64)
    if lam.shape != (2,):
        raise ValueError(f"eigvals must be two numbers (λ1, λ2), got shape {lam.shape}")
    if not np.all(np.isfinite(lam)) or np.any(lam <= 0.0):
        raise ValueError(
            f"eigvals must be finite and > 0 for a positive-definite Hessian, got {lam.tolist()}"
        )
    if not np.isfinite(angle_deg):
        raise ValueError(f"angle_deg must be finite, got {angle_deg!r}")
    a = np.deg2rad(angle_deg)
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    H = R @ np.diag(lam) @ R.T
    return 0.5 * (H + H.T)  # exact symmetry, not just up to round-off


# Fig. 2's three eigenstructures: (eigenvalues, tilt in degrees). The anisotropic ones share
# eigenvalues so that the only difference between "diagonal" and "tilted" is the cross-term.
HESSIAN_PRESETS: dict[str, tuple[tuple[float, float], float]] = {
    "isotropic": ((1.0, 1.0), 0.0),
    "diagonal": ((4.0, 0.5), 0.0),
    "tilted": ((4.0, 0.5), 30.0),
}


def available_hessian_presets() -> list[str]:
    """Names accepted by `hessian_preset`, in display order (Fig. 2 left to right)."""
    return list(HESSIAN_PRESETS)


def hessian_preset(name: str) -> np.ndarray:
    """The Hessian of one of Fig. 2's eigenstructures.

    Args:
        name: "isotropic" (H ∝ I), "diagonal" (anisotropic, axis-aligned) or "tilted" (cross-terms).

    Returns:
        The 2x2 Hessian.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    Example:
        >>> hessian_preset("diagonal")
        array([[4. , 0. ],
               [0. , 0.5]])
    """
    if name not in HESSIAN_PRESETS:
        raise ValueError(f"unknown Hessian preset {name!r}; valid: {', '.join(HESSIAN_PRESETS)}")
    eigvals, angle = HESSIAN_PRESETS[name]
    return hessian_from_eig(eigvals, angle)


def quadratic_loss(H: np.ndarray, theta0: np.ndarray, theta: np.ndarray) -> np.ndarray | float:
    """L(θ) = (θ − θ₀)ᵀ H (θ − θ₀), Eq. (2) without the constant and without a ½.

    Args:
        H: 2x2 symmetric positive-definite Hessian.
        theta0: the minimum θ₀, shape (2,).
        theta: one point, shape (2,), or a batch, shape (..., 2).

    Returns:
        A float for one point, else an array of shape `theta.shape[:-1]`.

    Raises:
        ValueError: for a bad H or theta0, or if theta's last axis is not 2.

    Example:
        >>> quadratic_loss(np.diag([2.0, 1.0]), np.zeros(2), np.array([1.0, 1.0]))
        3.0
    """
    H = _check_hessian(H)
    theta0 = _check_theta(theta0, "theta0")
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim == 0 or theta.shape[-1] != 2:
        raise ValueError(f"theta must have a last axis of length 2, got shape {theta.shape}")
    d = theta - theta0
    out = np.einsum("...i,ij,...j->...", d, H, d)
    return float(out) if out.ndim == 0 else out


def loss_grid(H: np.ndarray, theta0: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The loss on a rectangular grid, laid out for contour plots.

    Args:
        H: 2x2 Hessian.
        theta0: the minimum θ₀.
        xs: values of θ[1] (shape (nx,)).
        ys: values of θ[2] (shape (ny,)).

    Returns:
        Z of shape (ny, nx) with Z[i, k] = L((xs[k], ys[i])): row index follows y, as plotly's
        `go.Contour(x=xs, y=ys, z=Z)` and matplotlib's `contour(xs, ys, Z)` expect.

    Raises:
        ValueError: for bad H/theta0 or if xs/ys are not 1-D.

    Example:
        >>> loss_grid(np.eye(2), np.zeros(2), np.array([0.0, 1.0]), np.array([0.0, 2.0]))
        array([[0., 1.],
               [4., 5.]])
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if xs.ndim != 1 or ys.ndim != 1:
        raise ValueError(f"xs and ys must be 1-D, got shapes {xs.shape} and {ys.shape}")
    X, Y = np.meshgrid(xs, ys)  # default "xy" indexing gives the (ny, nx) layout promised above
    pts = np.stack([X, Y], axis=-1)
    return np.asarray(quadratic_loss(H, theta0, pts))


# --------------------------------------------------------------------------------------------------
# Scores and pruning (Sec. 3.1-3.2)
# --------------------------------------------------------------------------------------------------


class Score(StrEnum):
    """The three Hessian approximations of Sec. 3.2, named as in the paper's ε^mag, ε^diag, ε^block."""

    MAGNITUDE = "magnitude"  # H ≈ I
    DIAGONAL = "diagonal"  # H ≈ diag(H)
    BLOCK = "block"  # H ≈ per-layer block; with two parameters in one layer that is H itself (= OBS)


def available_scores() -> list[str]:
    """Score names for widgets, cheapest approximation first."""
    return [s.value for s in Score]


def _check_score(score: str) -> Score:
    try:
        return Score(score)
    except ValueError:
        raise ValueError(f"unknown score {score!r}; valid: {', '.join(available_scores())}") from None


def pruning_scores(H: np.ndarray, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Saliency of each weight under the three approximations of Sec. 3.2 (lower = prune first).

    With L = (θ − θ₀)ᵀH(θ − θ₀) each score is a loss increase caused by zeroing weight j:

    * magnitude:  ε_mag[j]   = θⱼ²               (H ≈ I)
    * diagonal:   ε_diag[j]  = θⱼ² · Hⱼⱼ         (exact increase of *plain* removal, no correction)
    * block:      ε_block[j] = θⱼ² / [H⁻¹]ⱼⱼ     (Eq. 3: exact increase *after* the OBS correction)

    Since [H⁻¹]ⱼⱼ ≥ 1/Hⱼⱼ (equality iff H has no cross-terms in row j), ε_block ≤ ε_diag always:
    the OBS correction never hurts.

    With exactly two weights, [H⁻¹]ⱼⱼ = H_kk / det H (k ≠ j), so ε_block = ε_diag · det H / (H₀₀H₁₁):
    the two are proportional and always remove the *same* weight. What the full Hessian buys here
    is not a different choice but a smaller loss, through the correction δ (see `obs_update`).

    Args:
        H: 2x2 symmetric positive-definite Hessian (the *source* task's in the paper).
        theta: the weights being scored (θ₀ in the paper), shape (2,).

    Returns:
        {"magnitude": array(2), "diagonal": array(2), "block": array(2)}.

    Raises:
        ValueError: for a bad H or theta.

    Example:
        >>> s = pruning_scores(np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([1.0, 2.0]))
        >>> s["magnitude"], s["diagonal"], s["block"]
        (array([1., 4.]), array([2., 8.]), array([1.5, 6. ]))
    """
    H = _check_hessian(H)
    theta = _check_theta(theta)
    sq = theta**2
    return {
        Score.MAGNITUDE.value: sq,
        Score.DIAGONAL.value: sq * np.diag(H),
        Score.BLOCK.value: sq / np.diag(np.linalg.inv(H)),
    }


def weight_to_prune(H: np.ndarray, theta: np.ndarray, score: str) -> int:
    """Index of the weight that `score` removes: the one with the lowest score.

    Ties go to the lower index (np.argmin), so e.g. an isotropic H with θ = (1, 1) prunes weight 0.

    Args:
        H: 2x2 Hessian.
        theta: the weights, shape (2,).
        score: "magnitude", "diagonal" or "block".

    Returns:
        0 or 1.

    Raises:
        ValueError: for bad inputs or an unknown score.

    Example:
        >>> weight_to_prune(np.diag([4.0, 0.5]), np.array([1.0, 1.5]), "diagonal")
        1
    """
    score = _check_score(score)
    return int(np.argmin(pruning_scores(H, theta)[score.value]))


def removed_weights(H: np.ndarray, theta: np.ndarray) -> dict[str, int]:
    """Which weight each score removes, e.g. to show that the approximations disagree.

    Example:
        >>> removed_weights(np.diag([4.0, 0.5]), np.array([1.0, 1.5]))
        {'magnitude': 0, 'diagonal': 1, 'block': 1}
    """
    return {name: int(np.argmin(s)) for name, s in pruning_scores(H, theta).items()}


def pruned_point(theta: np.ndarray, j: int) -> np.ndarray:
    """θ with weight j set to zero and nothing else changed (θ̃₀ in Fig. 1, θ̂₀ in Fig. 2).

    Example:
        >>> pruned_point(np.array([1.0, 1.5]), 0)
        array([0. , 1.5])
    """
    theta = _check_theta(theta).copy()
    theta[_check_index(j)] = 0.0
    return theta


def obs_update(H: np.ndarray, theta: np.ndarray, j: int) -> np.ndarray:
    """Optimal Brain Surgeon: remove weight j and move the others to the best point left (Eq. 3).

    Returns θ + δ with δ = −θⱼ / [H⁻¹]ⱼⱼ · H⁻¹[:, j]. This is the minimiser of L over the line
    θⱼ = 0 when θ = θ₀ is the minimum of L, so (with this module's convention, no ½)

        (θ + δ)ⱼ = 0   and   L(θ + δ) − L(θ) = θⱼ² / [H⁻¹]ⱼⱼ = ε_block[j].

    Args:
        H: 2x2 symmetric positive-definite Hessian.
        theta: the weights (θ₀), shape (2,).
        j: the weight to remove, 0 or 1.

    Returns:
        The corrected weights, shape (2,); entry j is exactly 0.0.

    Raises:
        ValueError: for a bad H, theta or j.

    Example:
        >>> obs_update(np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([1.0, 2.0]), 0)
        array([0. , 2.5])
    """
    H = _check_hessian(H)
    theta = _check_theta(theta)
    j = _check_index(j)
    Hinv = np.linalg.inv(H)
    delta = -theta[j] / Hinv[j, j] * Hinv[:, j]
    out = theta + delta
    out[j] = 0.0  # it is θⱼ − θⱼ in exact arithmetic; remove the round-off so "pruned" means zero
    return out


# --------------------------------------------------------------------------------------------------
# Retraining with the pruned weight held at zero
# --------------------------------------------------------------------------------------------------


def retrained_point(H: np.ndarray, theta0: np.ndarray, j: int) -> np.ndarray:
    """Closed-form end of retraining: argmin of L(θ) subject to θⱼ = 0 (θ̃ₛ* in Fig. 1).

    Solves the stationarity condition on the free coordinates f = {k ≠ j} directly,
    H_ff (θ_f − θ₀_f) = −H_fj (0 − θ₀ⱼ), rather than through Eq. (3). The two agree (that is
    the point of OBS), and the tests use this independent route to check it.

    Args:
        H: 2x2 Hessian of the loss being retrained on (the source task's).
        theta0: the minimum θ₀.
        j: the pruned weight, held at zero.

    Returns:
        The constrained minimiser, shape (2,).

    Raises:
        ValueError: for a bad H, theta0 or j.

    Example:
        >>> retrained_point(np.array([[2.0, 1.0], [1.0, 2.0]]), np.array([1.0, 2.0]), 0)
        array([0. , 2.5])
    """
    H = _check_hessian(H)
    theta0 = _check_theta(theta0, "theta0")
    j = _check_index(j)
    free = [k for k in range(2) if k != j]
    out = np.zeros(2)
    out[free] = theta0[free] + np.linalg.solve(H[np.ix_(free, free)], H[free, j] * theta0[j])
    return out


def retrain_path(
    H: np.ndarray,
    theta0: np.ndarray,
    j: int,
    *,
    start: np.ndarray | None = None,
    lr: float | None = None,
    steps: int = 60,
) -> np.ndarray:
    """Gradient-descent iterates of retraining on L with weight j held at zero (red dashed line, Fig. 1).

    θ ← θ − lr · m ⊙ ∇L(θ),  ∇L(θ) = 2H(θ − θ₀),  m = 1 − eⱼ (the pruning mask: the gradient of a
    pruned weight is discarded, as in PaI retraining). On the free coordinates this is plain GD on a
    convex quadratic with curvature 2·H_ff, so for 0 < lr < 1/λ_max(H_ff) it converges to
    `retrained_point` and the loss decreases monotonically.

    Args:
        H: 2x2 Hessian of the loss retrained on.
        theta0: the minimum θ₀ of that loss.
        j: the pruned weight.
        start: first iterate; default the pruned point (θ₀ with entry j zeroed). Its entry j is
            zeroed in any case, since the mask keeps it fixed.
        lr: step size; default 0.25/λ_max(H_ff), which halves the error of the stiffest free
            direction every step, so the default 60 steps reach the end to ~1e-18 relative error on
            it while still drawing a visible path.
        steps: number of GD steps (≥ 0).

    Returns:
        The iterates, shape (steps + 1, 2), starting with `start`.

    Raises:
        ValueError: for bad H/theta0/j/start, steps < 0, or lr outside (0, 1/λ_max(H_ff)), where GD
            would oscillate or diverge instead of retraining.

    Example:
        >>> H = np.array([[2.0, 1.0], [1.0, 2.0]])
        >>> retrain_path(H, np.array([1.0, 2.0]), 0, steps=60)[-1].round(9)
        array([0. , 2.5])
    """
    H = _check_hessian(H)
    theta0 = _check_theta(theta0, "theta0")
    j = _check_index(j)
    if isinstance(steps, bool) or operator.index(steps) < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    steps = operator.index(steps)
    free = [k for k in range(2) if k != j]
    lam_max = float(np.linalg.eigvalsh(H[np.ix_(free, free)])[-1])
    if lr is None:
        lr = 0.25 / lam_max
    elif not (0.0 < lr < 1.0 / lam_max):
        raise ValueError(
            f"lr must lie in (0, 1/λ_max(H_free)) = (0, {1.0 / lam_max:.4g}) for GD to converge, got {lr!r}"
        )
    theta = pruned_point(theta0, j) if start is None else pruned_point(_check_theta(start, "start"), j)
    mask = np.ones(2)
    mask[j] = 0.0
    path = np.empty((steps + 1, 2))
    path[0] = theta
    for t in range(steps):
        theta = theta - lr * mask * (2.0 * H @ (theta - theta0))
        path[t + 1] = theta
    return path


# --------------------------------------------------------------------------------------------------
# Scenarios (what the toy page shows)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointLoss:
    """One row of the scenario table: a named point and both tasks' losses there."""

    name: str  # stable key: "theta0", "pruned", "obs", "retrained"
    label: str  # what the UI shows
    theta: tuple[float, float]
    source: float
    transfer: float


# eq=False: the fields hold numpy arrays, for which the generated __eq__ would be ambiguous.
@dataclass(frozen=True, eq=False)
class ToyResult:
    """Everything the toy figure and table need for one source/transfer pair.

    Attributes:
        theta0: the shared pre-trained minimum θ₀.
        source_hessian: H_s, used for scoring, the OBS correction and retraining.
        transfer_hessian: H_t, never seen by pruning or retraining; only evaluated.
        score: the score that chose the weight to prune.
        scores: all three scores of θ₀ under H_s (see `pruning_scores`).
        pruned_index: j, the weight removed (0-based).
        pruned: θ̃₀, θ₀ with entry j zeroed (plain removal).
        obs: θ₀ + δ, the OBS-corrected point under H_s (Eq. 3).
        retrain_path: GD iterates on the source loss with θⱼ held at 0, from `pruned`.
        retrained: θ̃ₛ*, the closed-form end of that retraining (equal to `obs` in a quadratic).
        losses: source/transfer loss at θ₀, θ̃₀, θ₀ + δ and θ̃ₛ*, in that order.
    """

    theta0: np.ndarray
    source_hessian: np.ndarray
    transfer_hessian: np.ndarray
    score: str
    scores: dict[str, np.ndarray]
    pruned_index: int
    pruned: np.ndarray
    obs: np.ndarray
    retrain_path: np.ndarray
    retrained: np.ndarray
    losses: tuple[PointLoss, ...] = field(default=())

    def loss(self, name: str) -> PointLoss:
        """The table row for "theta0", "pruned", "obs" or "retrained"."""
        for row in self.losses:
            if row.name == name:
                return row
        raise ValueError(f"unknown point {name!r}; valid: {', '.join(r.name for r in self.losses)}")

    def table_rows(self) -> list[dict[str, str | float]]:
        """The loss table as records (one per point), ready for `pandas.DataFrame` / `st.dataframe`."""
        return [
            {
                "point": r.label,
                "θ[1]": r.theta[0],
                "θ[2]": r.theta[1],
                "source loss": r.source,
                "transfer loss": r.transfer,
            }
            for r in self.losses
        ]


def scenario(
    source_H: np.ndarray,
    transfer_H: np.ndarray,
    theta0: np.ndarray,
    score: str = "block",
    *,
    lr: float | None = None,
    steps: int = 60,
) -> ToyResult:
    """Prune one of two weights using the source task only, retrain on it, and evaluate both tasks.

    This is Fig. 1's experiment: both losses share the minimum θ₀; `score` (computed with H_s) picks
    j; θ̃₀ zeroes θⱼ; retraining runs GD on L_s with θⱼ held at zero; and the transfer loss L_t is
    only ever evaluated. In a quadratic, retraining ends exactly at the OBS point θ₀ + δ of Eq. (3)
    under H_s, so `obs` and `retrained` coincide: δ is the one-shot version of retraining.

    Args:
        source_H: 2x2 Hessian of the source task.
        transfer_H: 2x2 Hessian of the transfer task.
        theta0: shared minimum θ₀, shape (2,).
        score: "magnitude", "diagonal" or "block".
        lr: GD step size for the retrain path (see `retrain_path`).
        steps: number of GD steps.

    Returns:
        A frozen `ToyResult` (its arrays are read-only).

    Raises:
        ValueError: for any bad Hessian, θ₀, score, lr or steps.

    Example:
        >>> Hs = hessian_from_eig((4.0, 0.5), 30.0)
        >>> Ht = hessian_from_eig((4.0, 0.5), 120.0)  # orthogonal task
        >>> r = scenario(Hs, Ht, np.array([1.0, 1.5]), "block")
        >>> r.loss("retrained").transfer >= r.loss("pruned").transfer
        True
    """
    source_H = _check_hessian(source_H, "source_H")
    transfer_H = _check_hessian(transfer_H, "transfer_H")
    theta0 = _check_theta(theta0, "theta0")
    score_name = _check_score(score).value

    scores = pruning_scores(source_H, theta0)
    j = int(np.argmin(scores[score_name]))
    pruned = pruned_point(theta0, j)
    obs = obs_update(source_H, theta0, j)
    path = retrain_path(source_H, theta0, j, lr=lr, steps=steps)
    retrained = retrained_point(source_H, theta0, j)

    def row(name: str, label: str, theta: np.ndarray) -> PointLoss:
        return PointLoss(
            name=name,
            label=label,
            theta=(float(theta[0]), float(theta[1])),
            source=float(quadratic_loss(source_H, theta0, theta)),
            transfer=float(quadratic_loss(transfer_H, theta0, theta)),
        )

    losses = (
        row("theta0", "θ₀ (pre-trained)", theta0),
        row("pruned", f"θ̃₀ (θ[{j + 1}] removed)", pruned),
        row("obs", "θ₀ + δ (OBS correction, Eq. 3)", obs),
        row("retrained", "θ̃ₛ* (retrained on source)", retrained),
    )
    return ToyResult(
        theta0=_frozen(theta0),
        source_hessian=_frozen(source_H),
        transfer_hessian=_frozen(transfer_H),
        score=score_name,
        scores={k: _frozen(v) for k, v in scores.items()},
        pruned_index=j,
        pruned=_frozen(pruned),
        obs=_frozen(obs),
        retrain_path=_frozen(path),
        retrained=_frozen(retrained),
        losses=losses,
    )


@dataclass(frozen=True)
class ToySpec:
    """The toy page's settings: everything `scenario_from_spec` needs, as plain hashable values.

    The source Hessian is `hessian_from_eig(eigvals, tilt_deg)`; the transfer task has the same
    eigenvalues with its principal axes rotated by a further `rotation_deg` (0 = aligned tasks,
    90 = orthogonal tasks), as in Fig. 1.

    Raises:
        ValueError: on construction, for non-positive eigenvalues, a bad θ₀ or an unknown score.
    """

    eigvals: tuple[float, float] = (4.0, 0.5)
    tilt_deg: float = 30.0
    rotation_deg: float = 0.0
    theta0: tuple[float, float] = (1.0, 1.5)
    score: str = "block"

    def __post_init__(self) -> None:
        # Fail at construction, where the bad value is visible, not deep inside a figure callback.
        hessian_from_eig(self.eigvals, self.tilt_deg + self.rotation_deg)
        _check_theta(np.asarray(self.theta0), "theta0")
        _check_score(self.score)

    def source_hessian(self) -> np.ndarray:
        """H_s = R(tilt) diag(λ₁, λ₂) R(tilt)ᵀ."""
        return hessian_from_eig(self.eigvals, self.tilt_deg)

    def transfer_hessian(self) -> np.ndarray:
        """H_t = R(tilt + rotation) diag(λ₁, λ₂) R(tilt + rotation)ᵀ."""
        return hessian_from_eig(self.eigvals, self.tilt_deg + self.rotation_deg)


def scenario_from_spec(spec: ToySpec, *, lr: float | None = None, steps: int = 60) -> ToyResult:
    """Run `scenario` for the Hessians and θ₀ described by `spec`.

    Example:
        >>> scenario_from_spec(preset("diagonal")).pruned_index
        1
    """
    return scenario(
        spec.source_hessian(),
        spec.transfer_hessian(),
        np.asarray(spec.theta0),
        spec.score,
        lr=lr,
        steps=steps,
    )


# Fig. 1 (aligned / misaligned tasks) and Fig. 2 (isotropic / diagonal / tilted Hessians). θ₀ is
# chosen so that magnitude and the curvature-aware scores disagree on the anisotropic presets
# (magnitude removes θ[1], diagonal/block remove θ[2]), which is the point Fig. 2 makes; the 30°
# tilt keeps H₀₀ ≠ H₁₁ (at 45° magnitude and diagonal would rank alike).
#
# Fig. 1's pair shares everything but the rotation between the tasks, and differs from Fig. 2's
# "tilted" (its own spectrum, tilt and θ₀): aligned, the transfer task's score removes the same
# weight as the source's and retraining on the source lowers the transfer loss (1.05 → 0.51);
# rotated by 90°, the transfer task would remove the other weight and retraining raises its loss
# (2.35 → 3.67).
PRESETS: dict[str, ToySpec] = {
    "aligned": ToySpec(
        eigvals=(3.0, 0.4), tilt_deg=-30.0, rotation_deg=0.0, theta0=(1.2, 1.0), score="block"
    ),
    "misaligned": ToySpec(
        eigvals=(3.0, 0.4), tilt_deg=-30.0, rotation_deg=90.0, theta0=(1.2, 1.0), score="block"
    ),
    "isotropic": ToySpec(
        eigvals=HESSIAN_PRESETS["isotropic"][0],
        tilt_deg=HESSIAN_PRESETS["isotropic"][1],
        rotation_deg=0.0,
        theta0=(1.0, 1.5),
        score="magnitude",
    ),
    "diagonal": ToySpec(
        eigvals=HESSIAN_PRESETS["diagonal"][0],
        tilt_deg=HESSIAN_PRESETS["diagonal"][1],
        rotation_deg=0.0,
        theta0=(1.0, 1.5),
        score="diagonal",
    ),
    "tilted": ToySpec(
        eigvals=HESSIAN_PRESETS["tilted"][0],
        tilt_deg=HESSIAN_PRESETS["tilted"][1],
        rotation_deg=0.0,
        theta0=(1.0, 1.5),
        score="block",
    ),
}


def available_presets() -> list[str]:
    """Scenario preset names for widgets: Fig. 1's two, then Fig. 2's three."""
    return list(PRESETS)


def preset(name: str) -> ToySpec:
    """The `ToySpec` of a named preset.

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    Example:
        >>> preset("misaligned").rotation_deg
        90.0
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


# --------------------------------------------------------------------------------------------------
# What the toy page says
# --------------------------------------------------------------------------------------------------

# Below this, a coordinate or a loss "does not move" (sliders give values on a 0.1 grid; round-off
# of the closed forms is ~1e-15).
_MOVE_TOL = 1e-9


def transfer_choice(result: ToyResult) -> int:
    """The weight the same score would remove if it were computed on the *transfer* task (P1 picture).

    Example:
        >>> transfer_choice(scenario_from_spec(preset("misaligned"))), scenario_from_spec(preset("misaligned")).pruned_index
        (0, 1)
    """
    return weight_to_prune(result.transfer_hessian, result.theta0, result.score)


def explain(result: ToyResult) -> list[str]:
    """The page's sentences (Markdown) about one scenario, each true of *these* numbers.

    What the score removes (and what the other two would), which weight the same score computed on
    the transfer task would remove (Fig. 1's picture of P1), what plain removal costs, whether the
    OBS correction and retraining move the other weight at all (they do not without cross-terms),
    and what retraining on the source does to the transfer loss (P2).

    Example:
        >>> explain(scenario_from_spec(preset("diagonal")))[3][:49]
        'The OBS correction does not move θ[1] here: the s'
    """
    j = result.pruned_index
    k = 1 - j
    removed = removed_weights(result.source_hessian, result.theta0)
    rows = {r.name: r for r in result.losses}
    others = ", ".join(f"{name} θ[{idx + 1}]" for name, idx in removed.items())
    lines = [f"The *{result.score}* score, computed on the source, removes **θ[{j + 1}]** ({others})."]
    t = transfer_choice(result)
    if t == j:
        lines.append(
            f"Computed on the transfer task, the same score would remove the **same weight** θ[{t + 1}]: what "
            "the source does not need, the transfer task does not need either (**P1** holds here)."
        )
    else:
        lines.append(
            f"Computed on the transfer task, the same score would remove **θ[{t + 1}]** instead: pruning for "
            f"the source removes θ[{j + 1}], which the transfer task needs more (**P1** fails here)."
        )
    lines.append(
        f"Plain removal raises the source loss from 0 to **{rows['pruned'].source:.3f}** and the transfer loss "
        f"to **{rows['pruned'].transfer:.3f}**."
    )
    if abs(result.obs[k] - result.pruned[k]) > _MOVE_TOL:
        lines.append(
            f"The OBS correction moves θ[{k + 1}] from {result.pruned[k]:.3f} to {result.obs[k]:.3f} and brings the "
            f"source loss down to **{rows['obs'].source:.3f}**, exactly where retraining on the source ends."
        )
    else:
        lines.append(
            f"The OBS correction does not move θ[{k + 1}] here: the source Hessian has no cross-term between the "
            "two weights, so the best value of the one left does not depend on the one removed, and retraining "
            "on the source does not move either."
        )
        return lines
    before, after = rows["pruned"].transfer, rows["retrained"].transfer
    if abs(after - before) <= _MOVE_TOL * max(1.0, abs(before)):
        lines.append(f"On the unseen transfer task, retraining leaves the loss at {before:.3f}.")
    elif after < before:
        lines.append(
            f"On the unseen transfer task, retraining on the source **lowers** the loss: {before:.3f} → "
            f"{after:.3f} (**P2** holds here)."
        )
    else:
        lines.append(
            f"On the unseen transfer task, retraining on the source **raises** the loss: {before:.3f} → "
            f"{after:.3f} (**P2** fails here)."
        )
    return lines
