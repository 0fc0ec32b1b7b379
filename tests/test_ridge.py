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
