import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from pai_core import ridge


@pytest.mark.parametrize("n,h", [(40, 7), (6, 30)])  # primal (n >= h) and dual (n < h) branches
@pytest.mark.parametrize("alpha", [1.0, 0.01, 25.0])
def test_fit_matches_lstsq_and_sklearn(n, h, alpha):
    rng = np.random.default_rng(n + h)
    phi = rng.normal(size=(n, h))
    y = rng.integers(0, 4, size=n)
    xi = ridge.fit(torch.tensor(phi), torch.tensor(y), 4, alpha=alpha).double().numpy()
    onehot = np.eye(4)[y]
    # Ridge as an ordinary least-squares problem on the augmented system [Φ; √α I] ξ ≈ [Y; 0].
    aug_x = np.vstack([phi, np.sqrt(alpha) * np.eye(h)])
    aug_y = np.vstack([onehot, np.zeros((h, 4))])
    ref, *_ = np.linalg.lstsq(aug_x, aug_y, rcond=None)
    np.testing.assert_allclose(xi, ref, rtol=1e-4, atol=1e-5)
    sk = Ridge(alpha=alpha, fit_intercept=False).fit(phi, onehot).coef_.T
    np.testing.assert_allclose(xi, sk, rtol=1e-4, atol=1e-5)


def test_accuracy_and_predict():
    phi = torch.eye(3)
    xi = ridge.fit(phi, torch.tensor([0, 1, 2]), 3)
    assert ridge.accuracy(phi, torch.tensor([0, 1, 2]), xi) == 1.0
    assert ridge.accuracy(phi, torch.tensor([1, 1, 1]), xi) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "bad",
    [
        dict(alpha=0.0),
        dict(labels=torch.tensor([0, 5])),
        dict(features=torch.tensor([[float("nan")], [1.0]])),
        dict(features=torch.ones(3, 2)),
    ],
)
def test_bad_input_is_a_clear_error(bad):
    args = dict(features=torch.ones(2, 1), labels=torch.tensor([0, 1]), num_classes=2, alpha=1.0) | bad
    with pytest.raises(ValueError):
        ridge.fit(**args)


@pytest.mark.parametrize("n,h", [(40, 7), (6, 30)])
@pytest.mark.parametrize("alpha", [1.0, 0.05])
def test_intercept_with_balanced_weights_matches_the_authors_formula_and_sklearn(n, h, alpha):
    """ξ̃ = (Φ̃ᵀDΦ̃ + αI)⁻¹Φ̃ᵀDY, Φ̃ = [Φ, 1], D = diag(n / (C n_c)): the authors' RidgeClassificationHead
    (intercept penalised like the weights), against scikit-learn on the augmented features."""
    from sklearn.utils.class_weight import compute_sample_weight

    rng = np.random.default_rng(n * h)
    phi = rng.normal(size=(n, h)) + 0.5
    y = np.r_[np.zeros(n // 2, int), rng.integers(1, 4, size=n - n // 2)]  # unbalanced classes
    xi = ridge.fit(torch.tensor(phi), torch.tensor(y), 4, alpha=alpha, intercept=True).double().numpy()
    assert xi.shape == (h + 1, 4)
    w = compute_sample_weight("balanced", y)
    np.testing.assert_allclose(ridge.balanced_weights(torch.tensor(y), 4).numpy(), w, rtol=1e-12)
    aug = np.c_[phi, np.ones(n)]
    onehot = np.eye(4)[y]
    direct = np.linalg.solve(
        aug.T @ (w[:, None] * aug) + alpha * np.eye(h + 1), aug.T @ (w[:, None] * onehot)
    )
    np.testing.assert_allclose(xi, direct, rtol=1e-4, atol=1e-5)
    sk = Ridge(alpha=alpha, fit_intercept=False).fit(aug, onehot, sample_weight=w).coef_.T
    np.testing.assert_allclose(xi, sk, rtol=1e-4, atol=1e-5)
    # predictions use the intercept row; the frozen head module does the same
    from pai_core.evaluate import Heads

    pred = ridge.predict(torch.tensor(phi, dtype=torch.float32), torch.tensor(xi, dtype=torch.float32))
    np.testing.assert_array_equal(pred.numpy(), (aug @ xi).argmax(1))
    head = Heads([torch.tensor(xi, dtype=torch.float32)], False, 0, alpha, intercept=True).module(0)
    out = head(torch.tensor(phi, dtype=torch.float32))
    np.testing.assert_allclose(out.detach().numpy(), aug @ xi, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="rows"):
        ridge.predict(torch.ones(2, h + 3), torch.tensor(xi))
