"""OBS repair against the explicit multi-weight OBS formula (float64, torch.kron blocks), the toy
page's closed form, and the actual loss of a small trained network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pai_core import masks as M
from pai_core import repair as R
from pai_core import scores as S
from pai_core import toy

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spd(g: int, d: int, gen: torch.Generator, cond: float = 1e3) -> torch.Tensor:
    """Random SPD matrices with eigenvalues spread over ``cond`` (ill-conditioned on purpose)."""
    q, _ = torch.linalg.qr(torch.randn(g, d, d, generator=gen, dtype=DT))
    ev = torch.logspace(0, -np.log10(cond), d, dtype=DT).expand(g, d)
    return q @ torch.diag_embed(ev) @ q.transpose(1, 2)


def exact_obs(theta: torch.Tensor, H: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """δ = −H⁻¹E_Q(E_QᵀH⁻¹E_Q)⁻¹E_Qᵀθ, the multi-weight OBS of Hassibi & Stork (Q = removed)."""
    q = removed.nonzero().flatten()
    if len(q) == 0:
        return torch.zeros_like(theta)
    hinv = torch.linalg.inv(H)
    e = torch.zeros(len(theta), len(q), dtype=DT)
    e[q, torch.arange(len(q))] = 1.0
    return -hinv @ e @ torch.linalg.solve(e.T @ hinv @ e, e.T @ theta)


def reference(weight, keep, f: S.KFactors, form: str, damping: float) -> torch.Tensor:
    """θ + δ per group with the explicit block kron(B_d, A_d) (or kron(I, A_d))."""
    g = f.groups
    d_b, d_a = f.B.shape[-1], f.A.shape[-1]
    a, _ = R.damped(f.A, damping)
    b, _ = R.damped(f.B, damping)
    w = weight.double().reshape(g, d_b * d_a)
    k = keep.reshape(g, d_b * d_a)
    out = torch.empty_like(w)
    for gi in range(g):
        bb = b[gi] if form == "kfac" else torch.eye(d_b, dtype=DT)
        H = torch.kron(bb, a[gi])  # row-major vec of the (d_B, d_A) weight block
        out[gi] = w[gi] + exact_obs(w[gi], H, ~k[gi])
    return out.reshape(weight.shape)


LAYOUTS = {  # name: (weight shape, groups)
    "linear": ((5, 7), 1),
    "conv": ((4, 3, 2, 2), 1),
    "grouped": ((6, 2, 3, 1), 2),
    "depthwise": ((5, 1, 3, 3), 5),
}


def random_case(layout: str, sparsity: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shape, g = LAYOUTS[layout]
    w = torch.randn(shape, generator=gen, dtype=DT)
    d_b, d_a = shape[0] // g, int(np.prod(shape[1:]))
    f = S.KFactors(spd(g, d_a, gen), spd(g, d_b, gen))
    keep = torch.rand(shape, generator=gen) >= sparsity
    keep.view(shape[0], -1)[0] = False  # a row that loses everything
    if shape[0] > 1:
        keep.view(shape[0], -1)[1] = True  # a row that loses nothing
    return w, keep, f


# --------------------------------------------------------------------------------------
# One layer against the explicit OBS formula
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("form", R.available_forms())
@pytest.mark.parametrize("sparsity", [0.15, 0.5, 0.85])
def test_layer_matches_exact_obs(layout, form, sparsity):
    w, keep, f = random_case(layout, sparsity)
    damping = 1e-3
    got, rep = R.repair_layer(w, keep, f, form=form, damping=damping, tol=1e-14, max_iter=2000)
    ref = reference(w, keep, f, form, damping)
    assert torch.allclose(got, ref, rtol=0, atol=1e-8 * float(ref.abs().max())), (got - ref).abs().max()
    assert rep.converged and rep.removed == int((~keep).sum())
    assert rep.cost_repaired <= rep.cost_zeroed * (1 + 1e-12)


@pytest.mark.parametrize("sparsity,mode", [(0.1, "R"), (0.9, "K")])
def test_both_direct_routes_are_exercised_and_agree(sparsity, mode):
    """The solver picks (A_d⁻¹)_RR for few removed weights and (A_d)_KK for few kept ones."""
    gen = torch.Generator().manual_seed(3)
    a = R.damped(spd(1, 40, gen), 1e-3)[0]
    keep = torch.rand(30, 40, generator=gen) >= sparsity
    rhs = torch.randn(30, 40, generator=gen, dtype=DT)
    solver = R._RowSolver(a, keep, 30)
    assert solver.mode == mode
    got, rel = solver.solve(rhs)
    assert rel < 1e-12
    for o in range(30):
        k = keep[o]
        ref = torch.zeros(40, dtype=DT)
        if k.any():
            ref[k] = torch.linalg.solve(a[0][k][:, k], rhs[o][k])
        assert torch.allclose(got[o], ref, atol=1e-9 * float(ref.abs().max() + 1)), o
    # tiny chunks (one row per padded batch) give the same answer
    small = R._RowSolver(a, keep, 30, chunk_elems=1).solve(rhs)[0]
    assert torch.allclose(small, got, atol=1e-12)


@pytest.mark.parametrize("form", R.available_forms())
@pytest.mark.parametrize("cond", [1e4, 1e8])
def test_float32_factorisations_refined_to_float64_accuracy(monkeypatch, form, cond):
    """Big systems are factorised in float32 and refined with float64 residuals, to float64
    accuracy on well- and ill-conditioned (κ = 1e8, undamped) factors alike."""
    monkeypatch.setattr(R, "_FP32_MIN", 0)  # small test layers take the big-layer path
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(6, 40, generator=gen, dtype=DT)
    f = S.KFactors(spd(1, 40, gen, cond), spd(1, 6, gen, 1e2))
    for sparsity in (0.2, 0.8):  # both the (A⁻¹)_RR and the A_KK route
        keep = torch.rand(6, 40, generator=gen) >= sparsity
        got, rep = R.repair_layer(w, keep, f, form=form, damping=0.0, tol=1e-13, max_iter=3000)
        ref = reference(w, keep, f, form, 0.0)
        assert torch.allclose(got, ref, rtol=0, atol=1e-8 * float(ref.abs().max())), (
            sparsity,
            (got - ref).abs().max(),
        )
        assert rep.converged


def test_float32_falls_back_to_float64_when_too_coarse(monkeypatch):
    monkeypatch.setattr(R, "_FP32_MIN", 0)
    gen = torch.Generator().manual_seed(8)
    a = spd(1, 40, gen, 1e12)  # float32 cannot even factorise its principal blocks
    keep = torch.rand(10, 40, generator=gen) >= 0.5
    easy = R._RowSolver(R.damped(a, 1e-2)[0], keep, 10)
    _, rel = easy.solve(torch.randn(10, 40, generator=gen, dtype=DT))
    assert easy.dtype == torch.float32 and rel < 1e-12  # damped: float32 + refinement suffices
    hard = R._RowSolver(a, keep, 10)
    assert hard.dtype == torch.float32
    _, rel = hard.solve(torch.randn(10, 40, generator=gen, dtype=DT))
    assert hard.dtype == torch.float64 and rel < 1e-8


def test_kfac_preconditioner_without_stored_factors(monkeypatch):
    """Beyond the memory budget the per-row factorisations are recomputed: same solution."""
    w, keep, f = random_case("linear", 0.5, seed=5)
    ref, _ = R.repair_layer(w, keep, f, form="kfac", tol=1e-14, max_iter=2000)
    monkeypatch.setattr(R, "_KEEP_BYTES", 0)
    got, rep = R.repair_layer(w, keep, f, form="kfac", tol=1e-14, max_iter=2000)
    assert rep.converged and torch.allclose(got, ref, atol=1e-10)


def test_kfac_form_is_optimal_for_its_block():
    """With B coupling the rows, the K-FAC solution beats the rows-independent one on δᵀ(B⊗A)δ."""
    w, keep, f = random_case("conv", 0.5, seed=2)
    x_a, _ = R.repair_layer(w, keep, f, form="a")
    x_k, rep = R.repair_layer(w, keep, f, form="kfac", tol=1e-12, max_iter=2000)
    cost_a = R.quadratic_cost(x_a - w, f, form="kfac")
    cost_k = R.quadratic_cost(x_k - w, f, form="kfac")
    assert cost_k < cost_a
    assert cost_k == pytest.approx(rep.cost_repaired, rel=1e-10)
    assert R.quadratic_cost(-(w * ~keep), f, form="kfac") == pytest.approx(rep.cost_zeroed, rel=1e-10)


def test_truncated_pcg_is_reported_and_still_feasible():
    w, keep, f = random_case("linear", 0.5, seed=7)
    got, rep = R.repair_layer(w, keep, f, form="kfac", tol=1e-14, max_iter=1)
    assert rep.iterations == 1 and not rep.converged and rep.residual > 1e-14
    assert bool((got[~keep] == 0).all())
    assert rep.cost_repaired <= rep.cost_zeroed
    report = R.RepairReport("kfac", 1e-2, [rep])
    assert not report.converged and "stopped before the tolerance" in " ".join(report.notes())


# --------------------------------------------------------------------------------------
# The toy page's two-parameter closed form
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", toy.available_presets())
@pytest.mark.parametrize("j", [0, 1])
@pytest.mark.parametrize("form", R.available_forms())
def test_two_parameters_match_toy_obs_update(name, j, form):
    spec = toy.preset(name)
    H = spec.source_hessian()
    theta = np.asarray(spec.theta0)
    # One output row with two inputs: the layer block is B ⊗ A = b·H; a scalar B cancels in δ.
    f = S.KFactors(torch.tensor(H, dtype=DT)[None], torch.tensor([[[2.5]]], dtype=DT))
    w = torch.tensor(theta, dtype=DT).reshape(1, 2)
    keep = torch.ones(1, 2, dtype=torch.bool)
    keep[0, j] = False
    got, rep = R.repair_layer(w, keep, f, form=form, damping=0.0, tol=1e-15)
    want = toy.obs_update(H, theta, j)
    assert np.allclose(got.numpy().ravel(), want, rtol=0, atol=1e-12)
    assert got[0, j].item() == 0.0
    # Eq. (3)'s loss increase: ε_block = θⱼ² / [H⁻¹]ⱼⱼ, scaled by B = 2.5 in the kfac form
    eps = toy.pruning_scores(H, theta)["block"][j] * (2.5 if form == "kfac" else 1.0)
    assert rep.cost_repaired == pytest.approx(eps, rel=1e-10)


# --------------------------------------------------------------------------------------
# Real networks: K-FAC factors from scores.kfac_factors
# --------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Conv (+BatchNorm), grouped conv, depthwise conv, pointwise conv, Linear head; ``c`` channels."""

    def __init__(self, c: int = 6):
        super().__init__()
        self.conv = nn.Conv2d(2, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.grouped = nn.Conv2d(c, c, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c)
        self.pw = nn.Conv2d(c, 5, 1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x)))
        h = torch.tanh(self.grouped(h))
        h = torch.tanh(self.dw(h))
        h = torch.tanh(self.pw(h))
        return self.head(h.mean((2, 3)))


def cnn_data(n: int, size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, size, size, generator=gen, dtype=DT)
    h = size // 2
    y = (x[:, 0, :h].mean((1, 2)) > 0).long() + (x[:, 1, h:].mean((1, 2)) > 0).long()
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def trained_cnn(c: int, n: int, size: int, steps: int = 200) -> tuple[nn.Module, list]:
    """A small CNN trained to (near) a minimum of its MSE loss: Eq. (3) expands around one."""
    torch.manual_seed(0)
    model = SmallCNN(c).to(DT)
    data = cnn_data(n, size)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(S.per_example_loss(model(x), y).sum() for x, y in data) / n
        loss.backward()
        opt.step()
    return model, data


def copy_of(model: nn.Module) -> nn.Module:
    net = SmallCNN(model.conv.out_channels).to(DT)
    net.load_state_dict(model.state_dict())
    return net.eval()


def mean_loss(model, data) -> float:
    with torch.no_grad():
        return float(
            sum(S.per_example_loss(model(x), y).sum() for x, y in data) / sum(len(y) for _, y in data)
        )


@pytest.fixture(scope="module")
def cnn():
    """Six channels: small enough for explicit kron blocks of every layer."""
    return trained_cnn(6, 48, 6)


@pytest.fixture(scope="module")
def wide_cnn():
    """Sixteen channels: enough redundancy per row for a correction to have somewhere to go."""
    return trained_cnn(16, 128, 8)


@pytest.mark.parametrize("form", R.available_forms())
def test_real_factors_match_exact_obs_per_layer(cnn, form):
    model, data = cnn
    factors = S.kfac_factors(model, data, approx="expand")  # the layer reconstruction averages over positions
    gen = torch.Generator().manual_seed(11)
    keep = {n: torch.rand(model.get_parameter(n).shape, generator=gen) > 0.4 for n in factors}
    net = copy_of(model)
    rep = R.repair_(net, keep, factors, form=form, damping=1e-3, tol=1e-14, max_iter=3000)
    assert rep.converged and not rep.skipped and len(rep.layers) == len(factors)
    for n, f in factors.items():
        ref = reference(model.get_parameter(n).detach(), keep[n], f, form, 1e-3)
        got = net.get_parameter(n).detach()
        assert torch.allclose(got, ref, rtol=0, atol=1e-8 * float(ref.abs().max())), n
        assert bool((got[~keep[n]] == 0).all()), n  # never revives a removed weight
    # weights repair_ does not own are untouched
    assert torch.equal(net.bn.weight, model.bn.weight) and torch.equal(net.pw.bias, model.pw.bias)


@pytest.mark.parametrize("form", R.available_forms())
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_repair_lowers_the_actual_source_loss(wide_cnn, form, sparsity):
    """On a trained net, OBS-corrected weights have a lower real loss than plainly zeroed ones.

    (On the six-channel net at 50 % the "a" form does not: 0.164 → 0.166; with a handful of
    weights per row there is little left to compensate with.)
    """
    model, data = wide_cnn
    factors = S.kfac_factors(model, data, approx="expand")  # as transfer_stages asks
    names = list(factors)
    mask = M.global_topk({n: model.get_parameter(n).detach() ** 2 for n in names}, sparsity)
    dense = mean_loss(model, data)
    zeroed = M.prune_(copy_of(model), mask)
    fixed = copy_of(model)
    rep = R.repair_(fixed, mask, factors, form=form, tol=1e-10, max_iter=1000)
    l_zero, l_fix = mean_loss(zeroed, data), mean_loss(fixed, data)
    assert dense < l_fix < 0.9 * l_zero, (dense, l_fix, l_zero)
    assert rep.cost_repaired < rep.cost_zeroed
    for n in names:
        assert bool((fixed.get_parameter(n)[~mask[n]] == 0).all())


def test_uncovered_groups_and_missing_factors_are_reported():
    """A layer whose output never reaches the loss has zero B; a LayerNorm weight has no factors."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 5)
            self.dead = nn.Linear(4, 2)
            self.norm = nn.LayerNorm(5)
            self.fc2 = nn.Linear(5, 2)

        def forward(self, x):
            return self.fc2(self.norm(torch.tanh(self.fc1(x)))) + 0.0 * self.dead(x)

    torch.manual_seed(0)
    net = Net().to(DT)
    data = [(torch.randn(20, 4, dtype=DT), torch.randint(0, 2, (20,)))]
    factors = S.kfac_factors(
        net, data, params=R.factor_params(net, ["fc1.weight", "dead.weight", "fc2.weight"])
    )
    assert float(factors["dead.weight"].B.abs().max()) == 0.0
    keep = {n: torch.rand(p.shape) > 0.5 for n, p in net.named_parameters() if n.endswith("weight")}
    keep["dead.weight"][0, 0] = False
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    rep = R.repair_(net, keep, factors, form="kfac")
    assert set(rep.skipped) == {"norm.weight"}
    layer = {lr.name: lr for lr in rep.layers}
    assert layer["dead.weight"].uncovered_groups == 1 and layer["dead.weight"].cost_zeroed == 0.0
    assert torch.equal(net.dead.weight, before["dead.weight"] * keep["dead.weight"])  # zeroed, no correction
    assert torch.equal(net.norm.weight, before["norm.weight"] * keep["norm.weight"])
    assert any("no curvature factors" in s for s in rep.notes())
    assert any("groups without curvature" in s for s in rep.notes())
    # the "a" form ignores B, so the dead layer is repaired there (its A is not zero)
    net2 = Net().to(DT)
    net2.load_state_dict({n: before[n] for n in before}, strict=False)
    rep_a = R.repair_(net2, {"dead.weight": keep["dead.weight"]}, factors, form="a")
    assert rep_a.layers[0].uncovered_groups == 0


def test_factor_params_covers_what_kfac_factors_accepts():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(1, 2, 5, 5))
    mha = nn.MultiheadAttention(4, 2)
    assert R.factor_params(net) == ["0.weight", "3.weight"]
    assert "out_proj.weight" not in R.factor_params(mha)


def test_report_round_trip_and_errors():
    w, keep, f = random_case("grouped", 0.4)
    net = nn.Conv2d(4, 6, (3, 1), groups=2, bias=False).to(DT)
    with torch.no_grad():
        net.weight.copy_(w)
    rep = R.repair_(net, {"weight": keep}, {"weight": f}, form="kfac")
    again = R.RepairReport.from_dict(rep.to_dict())
    assert again == rep
    with pytest.raises(ValueError, match="unknown repair form 'obc'; valid: a, kfac"):
        R.repair_layer(w, keep, f, form="obc")
    with pytest.raises(ValueError, match="damping"):
        R.repair_layer(w, keep, f, damping=-1.0)
    with pytest.raises(ValueError, match="does not fit"):
        R.repair_layer(w.reshape(12, 3), keep.reshape(12, 3), f)
    with pytest.raises(ValueError, match="unknown parameters"):
        R.repair_(net, {"nope": keep}, {})
    ones = torch.ones(2, 6, 1, dtype=DT)
    singular = S.KFactors(ones @ ones.transpose(1, 2), f.B)  # rank one: no kept block is invertible
    with pytest.raises(RuntimeError, match="not positive definite"):
        R.repair_layer(w, keep, singular, damping=0.0)
    # nothing was modified by the failed calls above: a bad mask shape is refused up front
    before = net.weight.detach().clone()
    with pytest.raises(ValueError, match="shape"):
        R.repair_(net, {"weight": keep[:, :1]}, {"weight": f})
    assert torch.equal(net.weight, before)


def test_float32_layer_keeps_dtype_and_exact_zeros():
    w, keep, f = random_case("conv", 0.5)
    got, _ = R.repair_layer(w.float(), keep, S.KFactors(f.A.float(), f.B.float()))
    assert got.dtype == torch.float32 and bool((got[~keep] == 0).all())
    ref = reference(w, keep, f, "a", R.DEFAULT_DAMPING)
    assert torch.allclose(got.double(), ref, atol=1e-4 * float(ref.abs().max()))


def test_conv_factor_layout_matches_functional_conv():
    """Sanity of the layout convention: kron(B, A) over weight[g].reshape(-1) is the Hessian of
    ½Σ‖conv(x, W) − conv(x, W₀)‖² w.r.t. W for a linear conv (B = I, A = Σ patches patchesᵀ)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 2, bias=False).to(DT)
    x = torch.randn(4, 2, 4, 4, dtype=DT)
    w0 = conv.weight.detach().clone()

    def loss(wflat):
        out = F.conv2d(x, wflat.reshape(w0.shape)) - F.conv2d(x, w0)
        return 0.5 * (out**2).sum()

    H = torch.autograd.functional.hessian(loss, w0.reshape(-1))
    patches = F.unfold(x, 2).transpose(1, 2).reshape(-1, 8)
    A = patches.T @ patches
    assert torch.allclose(H, torch.kron(torch.eye(3, dtype=DT), A), atol=1e-10)
