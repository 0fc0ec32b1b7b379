"""Task alignment: principal angles against scipy in float64, identical tasks give 1, a constructed
misaligned pair scores lower on all three measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from pai_core import alignment as AL
from pai_core import masks as M
from pai_core import scores as S

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,p,q", [(7, 3, 3), (12, 2, 5), (30, 10, 10)])
def test_principal_cosines_match_scipy_subspace_angles(d, p, q):
    gen = torch.Generator().manual_seed(d)
    a = torch.randn(d, p, generator=gen, dtype=DT)
    b = torch.randn(d, q, generator=gen, dtype=DT)
    qa, _ = torch.linalg.qr(a)
    qb, _ = torch.linalg.qr(b)
    got = AL.principal_cosines(qa, qb).numpy()
    want = np.sort(np.cos(scipy.linalg.subspace_angles(a.numpy(), b.numpy())))[::-1]
    assert np.allclose(got, want, atol=1e-12)
    # overlap = mean squared cosine; 1 for a subspace with itself, also in another basis
    rot, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=DT))
    assert AL.subspace_overlap(qa, qa @ rot) == pytest.approx(1.0, abs=1e-12)
    assert AL.subspace_overlap(qa, qb) == pytest.approx(float(np.mean(want**2)), abs=1e-12)


def test_top_eigvecs_and_its_limits():
    x = torch.diag(torch.tensor([5.0, 1.0, 3.0, 0.5], dtype=DT))
    u = AL.top_eigvecs(x, 2)
    assert u.shape == (4, 2)
    assert torch.allclose(u.abs(), torch.eye(4, dtype=DT)[:, [0, 2]])
    assert AL.top_eigvecs(x, 10).shape == (4, 2)  # capped at d // 2
    assert AL.top_eigvecs(torch.ones(1, 1), 3) is None  # a 1-d factor has no informative subspace
    assert AL.top_eigvecs(torch.zeros(6, 6), 3) is None  # no curvature


def test_top_eigvecs_redoes_in_float64_when_float32_eigh_returns_nan(monkeypatch):
    # float32 eigh returned NaN without raising on a real EfficientNet-Lite0 1x1-conv factor
    # (digits 5-9, 64 px); the fallback must catch that as well as an exception.
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    x = (m @ m.T).float()
    real = torch.linalg.eigh
    seen = []

    def flaky(a):
        seen.append(a.dtype)
        w, v = real(a)
        return (w, torch.full_like(v, math.nan)) if a.dtype == torch.float32 else (w, v)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    u = AL.top_eigvecs(x, 3)
    assert seen == [torch.float32, torch.float64] and bool(torch.isfinite(u).all())
    monkeypatch.setattr(torch.linalg, "eigh", real)
    ref = AL.top_eigvecs(x.double(), 3)
    assert AL.subspace_overlap(u, ref) == pytest.approx(1.0, abs=1e-9)


def test_correlation_is_nan_where_undefined_and_skips_nan_entries():
    p, s, n = AL.correlation(torch.tensor([1.0, 2.0, 3.0, math.nan]), torch.tensor([2.0, 4.0, 7.0, 1.0]))
    assert n == 3 and p > 0.99 and s == pytest.approx(1.0)
    p, s, n = AL.correlation(torch.ones(5), torch.arange(5.0))
    assert math.isnan(p) and math.isnan(s) and n == 5
    assert math.isnan(AL.correlation(torch.tensor([1.0]), torch.tensor([2.0]))[0])
    # Spearman is Pearson of average ranks (scipy's definition, ties included)
    a = torch.tensor([1.0, 1.0, 2.0, 5.0, 3.0], dtype=DT)
    b = torch.tensor([0.5, 0.7, 0.7, 9.0, 1.0], dtype=DT)
    from scipy import stats

    assert AL.correlation(a, b)[1] == pytest.approx(stats.spearmanr(a.numpy(), b.numpy())[0], abs=1e-12)
    assert AL.correlation(a, b)[0] == pytest.approx(stats.pearsonr(a.numpy(), b.numpy())[0], abs=1e-12)


def test_fisher_from_diag_scores_inverts_the_score_and_marks_zero_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    with torch.no_grad():
        net[0].weight[0, 0] = 0.0
    data = [(torch.randn(12, 4, dtype=DT), torch.randint(0, 3, (12,)))]
    s = S.compute("diag", net, data)
    f = AL.fisher_from_diag_scores(s, dict(net.named_parameters()))
    assert math.isnan(float(f["0.weight"][0, 0]))
    # brute force: mean over examples of squared per-example gradients
    g2 = {n: torch.zeros_like(p) for n, p in net.named_parameters() if n in s}
    x, y = data[0]
    for i in range(12):
        net.zero_grad()
        S.per_example_loss(net(x[i : i + 1]), y[i : i + 1]).sum().backward()
        for n in g2:
            g2[n] += net.get_parameter(n).grad ** 2 / 12
    ok = ~torch.isnan(f["0.weight"])
    assert torch.allclose(f["0.weight"][ok], g2["0.weight"][ok], rtol=1e-10)
    assert torch.allclose(f["2.weight"], g2["2.weight"], rtol=1e-10)
    with pytest.raises(ValueError, match="no weights for the scored tensors"):
        AL.fisher_from_diag_scores(s, {"0.weight": net[0].weight})


# --------------------------------------------------------------------------------------
# Identical vs misaligned tasks on a tiny network
# --------------------------------------------------------------------------------------


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 10), nn.Tanh(), nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT)


def task_data(active: slice, seed: int) -> list:
    """Inputs that live on the coordinates ``active`` (the rest nearly zero), labels from them."""
    gen = torch.Generator().manual_seed(seed)
    x = 0.05 * torch.randn(64, 8, generator=gen, dtype=DT)
    x[:, active] = torch.randn(64, 4, generator=gen, dtype=DT) * torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=DT)
    y = (x[:, active].sum(1) > 0).long() + (x[:, active][:, 0] > 1).long()
    return [(x[:32], y[:32]), (x[32:], y[32:])]


def measurements(net, data, k=2, sparsity=0.5):
    fisher = AL.fisher_from_diag_scores(S.compute("diag", net, data), dict(net.named_parameters()))
    fisher = {n: v for n, v in fisher.items() if n.endswith("weight")}
    sub = AL.factor_subspaces(S.kfac_factors(net, data), k)
    mask = M.global_topk(S.compute("diag", net, data), sparsity)
    return fisher, sub, mask


def test_identical_tasks_are_perfectly_aligned():
    net = tiny_net()
    data = task_data(slice(0, 4), 0)
    f, s, m = measurements(net, data)
    res = AL.compare("t", "t", fisher=(f, f), subspaces=(s, s), masks=(m, m), k=2)
    for key, value in res.summary().items():
        if key.endswith("chance"):
            assert 0 < value < 1
        else:
            assert value == pytest.approx(1.0, abs=1e-12), key
    for lr in res.layers:
        assert lr.fisher_pearson == pytest.approx(1.0) and lr.mask_jaccard == 1.0
        assert lr.a_overlap == pytest.approx(1.0) and lr.b_overlap == pytest.approx(1.0)


def test_misaligned_pair_scores_lower_than_an_aligned_one():
    """Same inputs' subspace, fresh samples (aligned) vs inputs on the other half (misaligned)."""
    net = tiny_net()
    src = measurements(net, task_data(slice(0, 4), 0))
    aligned = measurements(net, task_data(slice(0, 4), 1))
    misaligned = measurements(net, task_data(slice(4, 8), 2))

    def pair(other):
        return AL.compare(
            "s", "t", fisher=(src[0], other[0]), subspaces=(src[1], other[1]), masks=(src[2], other[2]), k=2
        )

    a, b = pair(aligned), pair(misaligned)
    assert b.fisher_spearman < a.fisher_spearman and b.fisher_pearson < a.fisher_pearson
    assert b.mask_jaccard < a.mask_jaccard
    first = {lr.name: lr for lr in b.layers}["0.weight"]
    first_a = {lr.name: lr for lr in a.layers}["0.weight"]
    assert first.a_overlap < 0.1 < 0.9 < first_a.a_overlap  # input subspaces nearly orthogonal vs shared
    assert b.a_overlap < a.a_overlap


def test_compare_reports_what_it_could_not_measure():
    net = tiny_net()
    f, s, m = measurements(net, task_data(slice(0, 4), 0))
    res = AL.compare("s", "t", masks=(m, m))
    assert math.isnan(res.fisher_pearson) and math.isnan(res.a_overlap) and res.mask_jaccard == 1.0
    with pytest.raises(ValueError, match="different parameters"):
        AL.compare("s", "t", masks=(m, {n: v for n, v in list(m.items())[:1]}))
    again = AL.Alignment.from_dict(res.to_dict())
    assert again.layers == res.layers and again.mask_jaccard == res.mask_jaccard


def test_depthwise_b_overlap_is_undefined_and_noted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 3, 3, groups=3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)).to(DT)
    data = [(torch.randn(8, 3, 4, 4, dtype=DT), torch.randint(0, 2, (8,)))]
    sub = AL.factor_subspaces(S.kfac_factors(net, data), 2)
    res = AL.compare("s", "s", subspaces=(sub, sub), k=2)
    dw = {lr.name: lr for lr in res.layers}["0.weight"]
    assert dw.a_overlap == pytest.approx(1.0) and math.isnan(dw.b_overlap)
    assert any("B overlap undefined" in n for n in res.notes)


def test_doctests():
    import doctest

    from pai_core import repair

    for mod in (AL, repair):
        result = doctest.testmod(mod)
        assert result.failed == 0 and result.attempted > 0, mod.__name__
