"""Tests for pai_core/toy.py: every closed form is checked against hand calculation or brute force."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from pai_core import toy


def _random_spd(rng: np.random.Generator) -> np.ndarray:
    """A random 2x2 SPD matrix with genuine cross-terms and a condition number up to ~100."""
    lam = rng.uniform(0.05, 5.0, size=2)
    return toy.hessian_from_eig(lam, rng.uniform(-90.0, 90.0))


CASES = [
    (toy.hessian_from_eig((4.0, 0.5), 30.0), np.array([1.0, 1.5])),
    (np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([1.0, -2.0])),
    (np.diag([4.0, 0.5]), np.array([-0.7, 0.3])),
] + [(_random_spd(np.random.default_rng(s)), np.random.default_rng(100 + s).normal(size=2)) for s in range(6)]


def _brute_force_line_min(H: np.ndarray, theta0: np.ndarray, j: int) -> tuple[np.ndarray, float]:
    """Minimise L over the line θⱼ = 0 numerically (no closed form involved)."""
    k = 1 - j

    def f(t: float) -> float:
        theta = np.zeros(2)
        theta[k] = t
        return toy.quadratic_loss(H, theta0, theta)

    res = minimize_scalar(f, bracket=(-10.0, 10.0), options={"xtol": 1e-12})
    theta = np.zeros(2)
    theta[k] = res.x
    return theta, float(res.fun)


# ----------------------------------------------------------------------------------------------
# Hessians and the loss convention
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 17.0, 45.0, 90.0, -60.0, 135.0])
def test_hessian_from_eig_has_requested_eigenstructure(angle: float) -> None:
    H = toy.hessian_from_eig((3.0, 0.5), angle)
    assert np.array_equal(H, H.T)
    np.testing.assert_allclose(np.linalg.eigvalsh(H), [0.5, 3.0], rtol=1e-12)
    a = np.deg2rad(angle)
    v1 = np.array([np.cos(a), np.sin(a)])
    np.testing.assert_allclose(H @ v1, 3.0 * v1, atol=1e-12)  # λ₁'s eigenvector is (cos α, sin α)


def test_hessian_from_eig_axis_cases() -> None:
    np.testing.assert_allclose(toy.hessian_from_eig((3.0, 0.5), 0.0), np.diag([3.0, 0.5]))
    np.testing.assert_allclose(toy.hessian_from_eig((3.0, 0.5), 90.0), np.diag([0.5, 3.0]), atol=1e-12)
    H = toy.hessian_from_eig((3.0, 0.5), 30.0)
    assert H[0, 1] == pytest.approx((3.0 - 0.5) * np.cos(np.pi / 6) * np.sin(np.pi / 6))


def test_loss_convention_has_no_half() -> None:
    """Eq. (2) without ½: the true Hessian of L is 2H (checked by central finite differences)."""
    H = np.array([[2.0, 0.7], [0.7, 1.0]])
    theta0 = np.array([0.3, -0.4])
    assert toy.quadratic_loss(H, theta0, theta0 + np.array([1.0, 0.0])) == pytest.approx(2.0)
    h = 1e-3
    fd = np.empty((2, 2))
    e = np.eye(2)
    x = np.array([0.1, 0.2])
    for a in range(2):
        for b in range(2):
            fd[a, b] = (
                toy.quadratic_loss(H, theta0, x + h * e[a] + h * e[b])
                - toy.quadratic_loss(H, theta0, x + h * e[a] - h * e[b])
                - toy.quadratic_loss(H, theta0, x - h * e[a] + h * e[b])
                + toy.quadratic_loss(H, theta0, x - h * e[a] - h * e[b])
            ) / (4 * h * h)
    np.testing.assert_allclose(fd, 2.0 * H, rtol=1e-6)


def test_quadratic_loss_batches() -> None:
    H, theta0 = CASES[1]
    pts = np.random.default_rng(0).normal(size=(3, 4, 2))
    batch = toy.quadratic_loss(H, theta0, pts)
    assert batch.shape == (3, 4)
    assert batch[2, 1] == pytest.approx(toy.quadratic_loss(H, theta0, pts[2, 1]))
    assert isinstance(toy.quadratic_loss(H, theta0, pts[0, 0]), float)


def test_loss_grid_layout_rows_follow_y() -> None:
    H, theta0 = CASES[1]
    xs = np.linspace(-1, 2, 5)
    ys = np.linspace(-3, 1, 3)  # nx != ny, so a transposed layout would fail on shape
    Z = toy.loss_grid(H, theta0, xs, ys)
    assert Z.shape == (3, 5)
    for i, y in enumerate(ys):
        for k, x in enumerate(xs):
            assert Z[i, k] == pytest.approx(toy.quadratic_loss(H, theta0, np.array([x, y])))
    assert Z.min() >= 0.0


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def test_scores_match_hand_computation() -> None:
    # H = [[2, 1], [1, 3]], det 5, H⁻¹ = [[3, -1], [-1, 2]] / 5, θ = (1, -2).
    s = toy.pruning_scores(np.array([[2.0, 1.0], [1.0, 3.0]]), np.array([1.0, -2.0]))
    assert set(s) == {"magnitude", "diagonal", "block"}
    np.testing.assert_allclose(s["magnitude"], [1.0, 4.0])
    np.testing.assert_allclose(s["diagonal"], [1.0 * 2.0, 4.0 * 3.0])
    np.testing.assert_allclose(s["block"], [1.0 / (3 / 5), 4.0 / (2 / 5)])


@pytest.mark.parametrize(("H", "theta0"), CASES)
def test_block_never_exceeds_diagonal_and_ranks_alike_in_2d(H: np.ndarray, theta0: np.ndarray) -> None:
    s = toy.pruning_scores(H, theta0)
    assert np.all(s["block"] <= s["diagonal"] * (1 + 1e-12))
    # With two weights the two are proportional: ε_block = ε_diag · det H / (H₀₀ H₁₁).
    np.testing.assert_allclose(s["block"], s["diagonal"] * np.linalg.det(H) / (H[0, 0] * H[1, 1]))


def test_block_equals_diagonal_without_cross_terms() -> None:
    s = toy.pruning_scores(np.diag([4.0, 0.5]), np.array([1.0, 1.5]))
    np.testing.assert_allclose(s["block"], s["diagonal"])


def test_which_weight_each_score_removes() -> None:
    H, theta0 = np.diag([4.0, 0.5]), np.array([1.0, 1.5])
    # magnitude: 1 < 2.25 -> θ[1]; diagonal: 4 > 1.125 -> θ[2].
    assert toy.removed_weights(H, theta0) == {"magnitude": 0, "diagonal": 1, "block": 1}
    assert toy.weight_to_prune(H, theta0, "magnitude") == 0
    assert toy.weight_to_prune(H, theta0, toy.Score.BLOCK) == 1
    # Ties go to the lower index.
    assert toy.weight_to_prune(np.eye(2), np.array([1.0, -1.0]), "block") == 0


# ----------------------------------------------------------------------------------------------
# OBS update (Eq. 3) and retraining
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("j", [0, 1])
@pytest.mark.parametrize(("H", "theta0"), CASES)
def test_obs_update_is_the_constrained_minimum(H: np.ndarray, theta0: np.ndarray, j: int) -> None:
    theta = toy.obs_update(H, theta0, j)
    assert theta[j] == 0.0
    brute, brute_loss = _brute_force_line_min(H, theta0, j)
    np.testing.assert_allclose(theta, brute, atol=1e-6)
    increase = toy.quadratic_loss(H, theta0, theta) - toy.quadratic_loss(H, theta0, theta0)
    assert increase == pytest.approx(toy.pruning_scores(H, theta0)["block"][j], rel=1e-12)
    assert increase == pytest.approx(brute_loss, rel=1e-9)
    # Same point by an independent route (solve on the free coordinate, not Eq. 3).
    np.testing.assert_allclose(toy.retrained_point(H, theta0, j), theta, atol=1e-12)


@pytest.mark.parametrize("j", [0, 1])
@pytest.mark.parametrize(("H", "theta0"), CASES)
def test_plain_removal_costs_the_diagonal_score(H: np.ndarray, theta0: np.ndarray, j: int) -> None:
    pruned = toy.pruned_point(theta0, j)
    assert pruned[j] == 0.0 and pruned[1 - j] == theta0[1 - j]
    increase = toy.quadratic_loss(H, theta0, pruned)
    assert increase == pytest.approx(toy.pruning_scores(H, theta0)["diagonal"][j], rel=1e-12)
    assert toy.quadratic_loss(H, theta0, toy.obs_update(H, theta0, j)) <= increase * (1 + 1e-12)


def test_obs_update_hand_example() -> None:
    # H⁻¹ = [[2, -1], [-1, 2]] / 3, j = 0: δ = -1 / (2/3) · (2/3, -1/3) = (-1, 0.5).
    np.testing.assert_allclose(toy.obs_update(np.array([[2.0, 1.0], [1.0, 2.0]]), [1.0, 2.0], 0), [0.0, 2.5])


@pytest.mark.parametrize("j", [0, 1])
@pytest.mark.parametrize(("H", "theta0"), CASES)
def test_retrain_path_converges_monotonically(H: np.ndarray, theta0: np.ndarray, j: int) -> None:
    path = toy.retrain_path(H, theta0, j, steps=400)
    assert path.shape == (401, 2)
    np.testing.assert_array_equal(path[0], toy.pruned_point(theta0, j))
    assert np.all(path[:, j] == 0.0)  # the pruned weight stays pruned
    np.testing.assert_allclose(path[-1], toy.retrained_point(H, theta0, j), atol=1e-9)
    losses = toy.quadratic_loss(H, theta0, path)
    assert np.all(np.diff(losses) <= 1e-12 * (1 + losses[:-1]))


def test_retrain_path_first_step_is_masked_gradient_descent() -> None:
    """One step by hand: θ₁ = θ̃₀ − lr · m ⊙ 2H(θ̃₀ − θ₀), with m zeroing the pruned coordinate."""
    H = np.array([[2.0, 1.0], [1.0, 3.0]])
    theta0 = np.array([1.0, -2.0])
    path = toy.retrain_path(H, theta0, 1, lr=0.1, steps=1)
    # θ̃₀ = (1, 0); θ̃₀ − θ₀ = (0, 2); 2H(0, 2) = (4, 12); masked: (4, 0).
    np.testing.assert_allclose(path, [[1.0, 0.0], [1.0 - 0.1 * 4.0, 0.0]])


def test_retrain_path_default_steps_reach_the_end_and_lr_is_checked() -> None:
    H, theta0 = CASES[0]
    path = toy.retrain_path(H, theta0, 1)
    np.testing.assert_allclose(path[-1], toy.retrained_point(H, theta0, 1), atol=1e-9)
    # A small custom step still converges, only more slowly.
    slow = toy.retrain_path(H, theta0, 1, lr=0.01, steps=10)
    assert np.linalg.norm(slow[-1] - path[-1]) > np.linalg.norm(path[10] - path[-1])
    # A start elsewhere: its pruned entry is zeroed, then it goes to the same end.
    other = toy.retrain_path(H, theta0, 1, start=np.array([-2.0, 5.0]), steps=200)
    np.testing.assert_array_equal(other[0], [-2.0, 0.0])
    np.testing.assert_allclose(other[-1], path[-1], atol=1e-9)
    free_curv = H[0, 0]
    for bad in (0.0, -0.1, 1.0 / free_curv, 10.0):
        with pytest.raises(ValueError, match="lr must lie"):
            toy.retrain_path(H, theta0, 1, lr=bad)
    with pytest.raises(ValueError, match="steps"):
        toy.retrain_path(H, theta0, 1, steps=-1)


# ----------------------------------------------------------------------------------------------
# Scenarios: Fig. 1's aligned and orthogonal tasks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", ["magnitude", "diagonal", "block"])
def test_rotation_zero_makes_tasks_identical(score: str) -> None:
    spec = toy.ToySpec(eigvals=(4.0, 0.5), tilt_deg=30.0, rotation_deg=0.0, theta0=(1.0, 1.5), score=score)
    np.testing.assert_array_equal(spec.source_hessian(), spec.transfer_hessian())
    r = toy.scenario_from_spec(spec)
    for row in r.losses:
        assert row.transfer == row.source
    # Aligned tasks: retraining on the source helps the transfer task as much (P2).
    assert r.loss("retrained").transfer <= r.loss("pruned").transfer


def test_transfer_axes_are_rotated_by_rotation_deg() -> None:
    spec = toy.ToySpec(eigvals=(3.0, 1.0), tilt_deg=20.0, rotation_deg=45.0)
    np.testing.assert_allclose(spec.source_hessian(), toy.hessian_from_eig((3.0, 1.0), 20.0))
    np.testing.assert_allclose(spec.transfer_hessian(), toy.hessian_from_eig((3.0, 1.0), 65.0))


@pytest.mark.parametrize("tilt", [10.0, 30.0, 60.0, 80.0, -35.0, 120.0])
@pytest.mark.parametrize("theta0", [(1.0, 1.5), (-0.8, 0.4), (2.0, -1.0)])
@pytest.mark.parametrize("score", ["magnitude", "block"])
def test_orthogonal_tasks_retraining_does_not_help_transfer(
    tilt: float, theta0: tuple[float, float], score: str
) -> None:
    spec = toy.ToySpec(eigvals=(4.0, 0.5), tilt_deg=tilt, rotation_deg=90.0, theta0=theta0, score=score)
    r = toy.scenario_from_spec(spec)
    assert r.loss("retrained").source < r.loss("pruned").source  # it does help the source...
    assert r.loss("retrained").transfer > r.loss("pruned").transfer  # ...and hurts the transfer task
    transfer_along = toy.quadratic_loss(r.transfer_hessian, r.theta0, r.retrain_path)
    assert np.all(np.diff(transfer_along) >= -1e-12)


def test_orthogonal_axis_aligned_tasks_retraining_changes_nothing() -> None:
    r = toy.scenario_from_spec(toy.ToySpec(eigvals=(4.0, 0.5), tilt_deg=0.0, rotation_deg=90.0))
    np.testing.assert_allclose(r.retrained, r.pruned, atol=1e-12)
    assert r.loss("retrained").transfer == pytest.approx(r.loss("pruned").transfer)


def test_scenario_contents_are_consistent() -> None:
    Hs = toy.hessian_from_eig((4.0, 0.5), 30.0)
    Ht = toy.hessian_from_eig((4.0, 0.5), 75.0)
    theta0 = np.array([1.0, 1.5])
    r = toy.scenario(Hs, Ht, theta0, "magnitude", steps=80)
    assert r.score == "magnitude" and r.pruned_index == 0
    np.testing.assert_array_equal(r.pruned, [0.0, 1.5])
    np.testing.assert_allclose(r.obs, toy.obs_update(Hs, theta0, 0))
    np.testing.assert_allclose(r.retrained, r.obs, atol=1e-12)
    np.testing.assert_allclose(r.retrain_path[-1], r.retrained, atol=1e-9)
    assert r.retrain_path.shape == (81, 2)
    assert [row.name for row in r.losses] == ["theta0", "pruned", "obs", "retrained"]
    assert r.loss("theta0").source == 0.0 and r.loss("theta0").transfer == 0.0
    assert r.loss("pruned").source == pytest.approx(r.scores["diagonal"][0])
    assert r.loss("obs").source == pytest.approx(r.scores["block"][0])
    assert r.loss("pruned").transfer == pytest.approx(toy.quadratic_loss(Ht, theta0, r.pruned))
    rows = r.table_rows()
    assert len(rows) == 4 and set(rows[0]) == {"point", "θ[1]", "θ[2]", "source loss", "transfer loss"}
    with pytest.raises(ValueError, match="unknown point"):
        r.loss("nowhere")


def test_result_is_immutable() -> None:
    r = toy.scenario_from_spec(toy.preset("tilted"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.pruned_index = 1  # type: ignore[misc]
    for arr in (r.theta0, r.pruned, r.obs, r.retrain_path, r.retrained, r.source_hessian, r.scores["block"]):
        with pytest.raises(ValueError):
            arr[0] = 42.0


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------


def test_hessian_presets_have_requested_eigenstructure() -> None:
    assert toy.available_hessian_presets() == ["isotropic", "diagonal", "tilted"]
    iso = toy.hessian_preset("isotropic")
    np.testing.assert_allclose(iso, iso[0, 0] * np.eye(2))
    diag = toy.hessian_preset("diagonal")
    assert diag[0, 1] == 0.0 and diag[1, 0] == 0.0 and diag[0, 0] != diag[1, 1]
    tilted = toy.hessian_preset("tilted")
    assert abs(tilted[0, 1]) > 0.1
    # "tilted" differs from "diagonal" only by the rotation: same spectrum.
    np.testing.assert_allclose(np.linalg.eigvalsh(tilted), np.linalg.eigvalsh(diag))
    with pytest.raises(ValueError, match="valid: isotropic, diagonal, tilted"):
        toy.hessian_preset("spherical")


def test_scenario_presets() -> None:
    assert toy.available_presets() == ["aligned", "misaligned", "isotropic", "diagonal", "tilted"]
    assert toy.preset("aligned").rotation_deg == 0.0
    assert toy.preset("misaligned").rotation_deg == 90.0
    for name in ("isotropic", "diagonal", "tilted"):
        np.testing.assert_allclose(toy.preset(name).source_hessian(), toy.hessian_preset(name))
    # Fig. 2's message: scores agree on the isotropic landscape but not on the anisotropic ones...
    for name, agree in (("isotropic", True), ("diagonal", False), ("tilted", False)):
        spec = toy.preset(name)
        removed = toy.removed_weights(spec.source_hessian(), np.array(spec.theta0))
        assert (len(set(removed.values())) == 1) is agree
    # ...and retraining only moves on the tilted one.
    for name, moves in (("isotropic", False), ("diagonal", False), ("tilted", True)):
        r = toy.scenario_from_spec(toy.preset(name))
        assert bool(np.linalg.norm(r.retrained - r.pruned) > 0.1) is moves
    # Fig. 1's message: aligned retraining helps transfer, misaligned retraining hurts it.
    al = toy.scenario_from_spec(toy.preset("aligned"))
    mis = toy.scenario_from_spec(toy.preset("misaligned"))
    assert al.loss("retrained").transfer < al.loss("pruned").transfer
    assert mis.loss("retrained").transfer > mis.loss("pruned").transfer
    with pytest.raises(ValueError, match="valid: aligned, misaligned"):
        toy.preset("Fig. 3")


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("H", "match"),
    [
        (np.eye(3), "2x2"),
        (np.ones(2), "2x2"),
        (np.array([[1.0, 0.5], [0.2, 1.0]]), "symmetric"),
        (np.array([[1.0, 2.0], [2.0, 1.0]]), "positive definite"),  # indefinite
        (np.array([[1.0, 1.0], [1.0, 1.0]]), "positive definite"),  # semi-definite: no H⁻¹
        (-np.eye(2), "positive definite"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "finite"),
    ],
)
def test_bad_hessian_raises(H: np.ndarray, match: str) -> None:
    theta = np.array([1.0, 1.0])
    for call in (
        lambda: toy.pruning_scores(H, theta),
        lambda: toy.obs_update(H, theta, 0),
        lambda: toy.quadratic_loss(H, theta, theta),
        lambda: toy.scenario(H, np.eye(2), theta),
        lambda: toy.scenario(np.eye(2), H, theta),
    ):
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.parametrize("j", [2, -1, 1.0, True, "0", None])
def test_bad_index_raises(j: object) -> None:
    with pytest.raises(ValueError, match="weight index"):
        toy.obs_update(np.eye(2), np.array([1.0, 1.0]), j)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight index"):
        toy.pruned_point(np.array([1.0, 1.0]), j)  # type: ignore[arg-type]


def test_numpy_integer_index_is_accepted() -> None:
    np.testing.assert_array_equal(toy.pruned_point(np.array([1.0, 2.0]), np.int64(1)), [1.0, 0.0])


def test_other_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="2 weights"):
        toy.pruning_scores(np.eye(2), np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        toy.pruning_scores(np.eye(2), np.array([np.inf, 1.0]))
    with pytest.raises(ValueError, match="> 0"):
        toy.hessian_from_eig((1.0, 0.0))
    with pytest.raises(ValueError, match="two numbers"):
        toy.hessian_from_eig((1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="valid: magnitude, diagonal, block"):
        toy.weight_to_prune(np.eye(2), np.ones(2), "snip")
    with pytest.raises(ValueError, match="valid: magnitude"):
        toy.ToySpec(score="obs")
    with pytest.raises(ValueError, match="> 0"):
        toy.ToySpec(eigvals=(1.0, -1.0))
    with pytest.raises(ValueError, match="1-D"):
        toy.loss_grid(np.eye(2), np.zeros(2), np.zeros((2, 2)), np.zeros(2))


def test_fig1_presets_differ_from_fig2s_tilted_and_show_p1_and_p2() -> None:
    al, mis, tilted = (toy.preset(n) for n in ("aligned", "misaligned", "tilted"))
    assert al != tilted and not np.allclose(al.source_hessian(), tilted.source_hessian())
    # Fig. 1's pair differs only by the rotation between the tasks.
    assert (al.eigvals, al.tilt_deg, al.theta0, al.score) == (
        mis.eigvals,
        mis.tilt_deg,
        mis.theta0,
        mis.score,
    )
    ra, rm = toy.scenario_from_spec(al), toy.scenario_from_spec(mis)
    # P1 picture: aligned, the transfer task's score removes the same weight; misaligned, the other one.
    assert toy.transfer_choice(ra) == ra.pruned_index
    assert toy.transfer_choice(rm) != rm.pruned_index


def test_explain_claims_only_what_the_numbers_show() -> None:
    for name in toy.available_presets():
        r = toy.scenario_from_spec(toy.preset(name))
        text = " ".join(toy.explain(r))
        moves = bool(abs(r.obs[1 - r.pruned_index] - r.pruned[1 - r.pruned_index]) > 1e-9)
        assert ("does not move" in text) is (not moves), name
        assert ("moves θ" in text) is moves, name
        if moves:
            up = bool(r.loss("retrained").transfer > r.loss("pruned").transfer)
            assert ("**raises**" in text) is up and ("**lowers**" in text) is (not up), name
    assert "**P1** holds" in " ".join(toy.explain(toy.scenario_from_spec(toy.preset("aligned"))))
    mis = " ".join(toy.explain(toy.scenario_from_spec(toy.preset("misaligned"))))
    assert "**P1** fails" in mis and "**P2** fails" in mis
    iso = " ".join(toy.explain(toy.scenario_from_spec(toy.preset("isotropic"))))
    assert "retraining" in iso and "lowers" not in iso and "raises the source" in iso
