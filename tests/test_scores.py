"""Scores against brute force in float64 (per-example loops, torch.func.hessian, explicit kron)."""

from __future__ import annotations

import functools
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pai_core import masks as M
from pai_core import scores as S
from pai_core.scores import hessian as H_mod

DT = torch.float64
# torch warns that padding='same' with an even kernel copies the input; that case is on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core box, OpenMP threads that lose their core to
    another process spin at barriers and make autograd 20-50x slower (measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------
# Tiny networks
# --------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.act = nn.ReLU(inplace=True)  # in-place right after a scored layer
        self.norm = nn.LayerNorm(6)
        self.fc2 = nn.Linear(6, 4)
        self.fc3 = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(self.norm(self.act(self.fc1(x))))))


class ResCNN(nn.Module):
    """Conv-BN-ReLU, a residual block, a strided conv, a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()  # shared by three call sites
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 3, 2, stride=2)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(h + self.bn2(self.conv2(h)))
        h = self.relu(self.conv3(h))
        return self.head(h.mean((2, 3)))


class GroupNet(nn.Module):
    """Grouped conv, depthwise conv (reflect padding, stride 2), pointwise conv, head."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, padding_mode="reflect")
        self.pw = nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu6(self.bn(self.grouped(x)))
        h = F.relu(self.dw(h))
        h = self.pw(h)
        return self.head(h.mean((2, 3)))


class OddConvNet(nn.Module):
    """Conv variants with their own padding rules: 'same' with an even kernel (asymmetric),
    dilation, circular padding, Conv1d, and timm's TF-'same' conv (dynamic, asymmetric)."""

    def __init__(self):
        super().__init__()
        from timm.layers import Conv2dSame

        self.same_even = nn.Conv2d(2, 3, (2, 4), padding="same", dilation=(1, 2))
        self.circ = nn.Conv2d(3, 4, 3, padding=2, dilation=2, padding_mode="circular", groups=1)
        self.tf_same = Conv2dSame(4, 4, 3, stride=2, groups=2)
        self.c1d = nn.Conv1d(4, 3, 2, padding="same")
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        h = torch.tanh(self.same_even(x))
        h = torch.tanh(self.circ(h))
        h = torch.tanh(self.tf_same(h))
        h = torch.tanh(self.c1d(h.flatten(2)))
        return self.head(h.mean(-1))


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def make(name: str) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    if name == "mlp":
        model, shape = MLP(), (5,)
    elif name == "cnn":
        model, shape = ResCNN(), (2, 6, 6)
    elif name == "odd":
        model, shape = OddConvNet(), (2, 7, 6)
    else:
        model, shape = GroupNet(), (4, 6, 6)
    model = model.to(DT)
    _randomise_bn(model)
    model.eval()
    g = torch.Generator().manual_seed(2)
    # Uneven batches: the data loss must weight examples, not batches.
    data = [
        (torch.randn(n, *shape, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g))
        for n in (4, 3)
    ]
    return model, data


NETS = ["mlp", "cnn", "grouped"]


# --------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------


def loop_grads(model, data, names, loss="mse"):
    """Per-example gradients by a Python loop: list of {name: grad}."""
    named = dict(model.named_parameters())
    out = []
    for x, y in data:
        for i in range(len(x)):
            li = S.per_example_loss(model(x[i : i + 1]), y[i : i + 1], loss).sum()
            out.append(dict(zip(names, torch.autograd.grad(li, [named[n] for n in names]))))
    return out


def full_loss_fn(model, data, names, loss="mse", temperature=1.0):
    """L(flat θ) = mean_i ℓ(f(x_i)/T, y_i) as a function of the flattened scored parameters."""
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    n_total = sum(len(x) for x, _ in data)

    def f(flat):
        parts = dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes))))
        return (
            sum(
                S.per_example_loss(functional_call(model, parts, (x,)) / temperature, y, loss).sum()
                for x, y in data
            )
            / n_total
        )

    flat = torch.cat([named[n].detach().reshape(-1) for n in names])
    return f, flat, sizes, shapes


def hessian(f, flat):
    """Exact Hessian: double backward against every unit vector (vmapped: fast on tiny nets)."""
    x = flat.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x, create_graph=True)
    eye = torch.eye(len(g), dtype=g.dtype)
    return torch.autograd.grad(g, x, grad_outputs=eye, is_grads_batched=True)[0]


@functools.cache
def exact(net: str, loss: str = "mse", temperature: float = 1.0):
    """(flat θ, g = ∇L, H = ∇²L) of the full-data loss w.r.t. the default scored params."""
    model, data = make(net)
    f, flat, _, _ = full_loss_fn(model, data, S.default_params(model), loss, temperature)
    x = flat.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x), x)
    return flat, g, hessian(f, flat)


def unflatten(vec, names, sizes, shapes):
    return {n: t.view(s) for n, t, s in zip(names, vec.split(sizes), shapes)}


def close(a, b, rtol=1e-9, atol=1e-12):
    return torch.allclose(a, b, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------
# diag, fisher_taylor, snip, grasp, hutchinson
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", NETS + ["odd"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_diag_equals_per_example_loop(net, loss):
    model, data = make(net)
    names = S.default_params(model)
    got = S.compute("diag", model, data, loss=loss)
    grads = loop_grads(model, data, names, loss)
    named = dict(model.named_parameters())
    for n in names:
        ref = named[n].detach() ** 2 * torch.stack([g[n] ** 2 for g in grads]).mean(0)
        assert close(got[n], ref), n


def test_diag_not_square_of_mean_gradient():
    model, data = make("mlp")
    n = "fc1.weight"
    grads = loop_grads(model, data, [n])
    mean_sq = torch.stack([g[n] ** 2 for g in grads]).mean(0)
    sq_mean = torch.stack([g[n] for g in grads]).mean(0) ** 2
    got = S.compute("diag", model, data, params=[n])[n] / model.fc1.weight.detach() ** 2
    assert close(got, mean_sq) and not close(got, sq_mean)


def test_diag_covers_non_layer_params_and_biases():
    """LayerNorm affine and biases go through the generic (torch.func) / bias paths."""
    model, data = make("mlp")
    names = [n for n, _ in model.named_parameters()]
    got = S.compute("diag", model, data, params=names)
    grads = loop_grads(model, data, names)
    named = dict(model.named_parameters())
    for n in names:
        ref = named[n].detach() ** 2 * torch.stack([g[n] ** 2 for g in grads]).mean(0)
        assert close(got[n], ref), n


@pytest.mark.parametrize("net", NETS)
def test_fisher_taylor_formula(net):
    model, data = make(net)
    names = S.default_params(model)
    grads = loop_grads(model, data, names)
    named = dict(model.named_parameters())
    got = S.compute("fisher_taylor", model, data)
    for n in names:
        th = named[n].detach()
        g = torch.stack([x[n] for x in grads])
        assert close(got[n], (th * g.mean(0) + 0.5 * th**2 * (g**2).mean(0)).abs()), n


@pytest.mark.parametrize("net", NETS)
def test_snip_is_gradient_wrt_mask(net):
    model, data = make(net)
    names = S.default_params(model)
    f, flat, sizes, shapes = full_loss_fn(model, data, names)
    g = unflatten(torch.func.grad(f)(flat), names, sizes, shapes)
    got = S.compute("snip", model, data)
    named = dict(model.named_parameters())
    for n in names:
        assert close(got[n], (named[n].detach() * g[n]).abs()), n


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("temperature", [1.0, 200.0, 7.5])
def test_grasp_matches_exact_hessian(net, temperature):
    """θ ⊙ H_T g_T with L_T the loss of f/T, against torch.func's exact Hessian of L_T (mse and ce)."""
    model, data = make(net)
    names = S.default_params(model)
    _, _, sizes, shapes = full_loss_fn(model, data, names)
    for loss in ("mse", "ce"):
        flat, g, H = exact(net, loss, temperature)
        ref = unflatten(flat * (H @ g), names, sizes, shapes)
        got = S.compute("grasp", model, data, loss=loss, temperature=temperature)
        for n in names:
            assert close(got[n], ref[n], atol=1e-12 * float(ref[n].abs().max()) + 1e-30), (loss, n)


def test_grasp_default_temperature_is_200_and_changes_the_ranking():
    model, data = make("cnn")
    assert S.info("grasp").option("temperature").default == 200.0
    default = S.compute("grasp", model, data)
    t200 = S.compute("grasp", model, data, temperature=200)
    t1 = S.compute("grasp", model, data, temperature=1)
    assert all(torch.equal(default[n], t200[n]) for n in default)
    a = torch.cat([t.reshape(-1) for t in t1.values()])
    b = torch.cat([t.reshape(-1) for t in t200.values()])
    assert not torch.equal(a.argsort(), b.argsort())


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_sign_keeps_large_positive_theta_hg(temperature):
    """GraSP removes the largest −θ⊙Hg, i.e. keeps the largest θ⊙Hg."""
    model, data = make("mlp")
    names = S.default_params(model)
    flat, g, H = exact("mlp", "mse", temperature)
    thg = flat * (H @ g)
    keep = M.global_topk(S.compute("grasp", model, data, temperature=temperature), 0.5)
    keep_flat = torch.cat([keep[n].reshape(-1) for n in names])
    assert thg[thg.argmax()] > 0
    assert keep_flat[thg.argmax()] and not keep_flat[thg.argmin()]
    # the kept half is exactly the larger half of θ⊙Hg
    assert thg[keep_flat].min() >= thg[~keep_flat].max()


def test_hutchinson_converges_to_exact_diagonal():
    model, data = make("mlp")
    names = S.default_params(model)
    flat, _, H = exact("mlp")
    target = flat**2 * torch.diagonal(H)

    def err(probes, seed=0):
        got = S.compute("hutchinson", model, data, probes=probes, seed=seed)
        est = torch.cat([got[n].reshape(-1) for n in names])
        return float((est - target).norm() / target.norm())

    e10, e2000 = err(10), err(2000)
    assert e2000 < 0.1 and e2000 < e10 / 5, (e10, e2000)


@pytest.mark.parametrize("net", ["cnn", "grouped"])
def test_hutchinson_is_mean_of_z_hz(net, monkeypatch):
    """On CNNs: the estimate is exactly (1/K) Σ_k z_k ⊙ H z_k for the probes it drew, H exact."""
    model, data = make(net)
    names = S.default_params(model)
    flat, _, H = exact(net)
    drawn = []
    real = H_mod._rademacher

    def spy(params, seed):
        z = real(params, seed)
        drawn.append(torch.cat([t.reshape(-1) for t in z]))
        return z

    monkeypatch.setattr(H_mod, "_rademacher", spy)
    got = S.compute("hutchinson", model, data, probes=3, seed=3, probe_batch=0)
    assert len(drawn) == 3 and all(set(z.unique().tolist()) <= {-1.0, 1.0} for z in drawn)
    ref = flat**2 * torch.stack([z * (H @ z) for z in drawn]).mean(0)
    assert close(torch.cat([got[n].reshape(-1) for n in names]), ref)


def test_hutchinson_seeded():
    model, data = make("mlp")
    a = S.compute("hutchinson", model, data, probes=3, seed=1)
    b = S.compute("hutchinson", model, data, probes=3, seed=1)
    c = S.compute("hutchinson", model, data, probes=3, seed=2)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


# --------------------------------------------------------------------------------------
# K-FAC
# --------------------------------------------------------------------------------------


def brute_factors(model, data, name, approx="expand"):
    """A and B of Eq. (5) by explicit patch extraction and per-example autograd loops, in the
    "expand" setting (every position an example) or the "reduce" one (per example: the mean
    patch ``â`` and the summed output gradient ``ĝ``), Eschenhagen et al. (2023), Sec. 3."""
    layer = model.get_submodule(name.rsplit(".", 1)[0])
    captured = {}

    def hook(mod, args, out):
        captured["x"] = args[0].detach()
        out.retain_grad()
        captured["z"] = out
        return out.clone()  # downstream in-place ops (ReLU(inplace=True)) modify the clone

    h = layer.register_forward_hook(hook)
    acts, grads = [], []
    try:
        for x, y in data:
            for i in range(len(x)):
                li = S.per_example_loss(model(x[i : i + 1]), y[i : i + 1]).sum()
                li.backward()
                acts.append(captured["x"][0])
                grads.append(captured["z"].grad[0].detach())
    finally:
        h.remove()
        model.zero_grad(set_to_none=True)
    n_ex = len(acts)
    if isinstance(layer, nn.Linear):
        if approx == "reduce":  # tokens: mean input, summed gradient per example
            a = torch.stack([x.reshape(-1, x.shape[-1]).mean(0) for x in acts])
            g = torch.stack([x.reshape(-1, x.shape[-1]).sum(0) for x in grads])
        else:
            a = torch.cat([x.reshape(-1, x.shape[-1]) for x in acts])
            g = torch.cat([x.reshape(-1, x.shape[-1]) for x in grads])
        return (a.T @ a / len(a))[None], (g.T @ g / n_ex)[None]
    one_d = isinstance(layer, nn.Conv1d)
    G = layer.groups
    kh, kw = (1, *layer.kernel_size) if one_d else layer.kernel_size
    sh, sw = (1, *layer.stride) if one_d else layer.stride
    dh, dw = (1, *layer.dilation) if one_d else layer.dilation
    cin, cout = layer.in_channels // G, layer.out_channels // G
    A = torch.zeros(G, cin * kh * kw, cin * kh * kw, dtype=DT)
    B = torch.zeros(G, cout, cout, dtype=DT)
    A_r, B_r = torch.zeros_like(A), torch.zeros_like(B)
    count = 0
    for xa, ga in zip(acts, grads):
        a_hat = torch.zeros(G, cin * kh * kw, dtype=DT)
        g_hat = torch.zeros(G, cout, dtype=DT)
        if one_d:
            xa, ga = xa.unsqueeze(1), ga.unsqueeze(1)
        if type(layer).__name__ == "Conv2dSame":  # TF 'same': pad total = needed, extra on the right
            pads = []
            for size, k, s, d in ((xa.shape[2], kw, sw, dw), (xa.shape[1], kh, sh, dh)):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            xp = F.pad(xa, pads)
        else:  # torch keeps the (possibly asymmetric) amounts it pads with in this attribute
            pads = list(layer._reversed_padding_repeated_twice) + ([0, 0] if one_d else [])
            mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
            xp = F.pad(xa[None], pads, mode=mode)[0]
        for i in range(ga.shape[1]):
            for j in range(ga.shape[2]):
                count += 1
                patch = xp[
                    :, i * sh : i * sh + dh * (kh - 1) + 1 : dh, j * sw : j * sw + dw * (kw - 1) + 1 : dw
                ]
                for gi in range(G):
                    a = patch[gi * cin : (gi + 1) * cin].reshape(-1)
                    A[gi] += torch.outer(a, a)
                    gv = ga[gi * cout : (gi + 1) * cout, i, j]
                    B[gi] += torch.outer(gv, gv)
                    a_hat[gi] += a / (ga.shape[1] * ga.shape[2])
                    g_hat[gi] += gv
        if approx == "reduce":
            A_r += a_hat[:, :, None] * a_hat[:, None, :]
            B_r += g_hat[:, :, None] * g_hat[:, None, :]
    if approx == "reduce":
        return A_r / n_ex, B_r / n_ex
    return A / count, B / n_ex


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("net", NETS + ["odd"])
def test_kfac_factors_brute_force(net, approx):
    model, data = make(net)
    factors = S.kfac_factors(model, data, approx=approx)
    assert set(factors) == set(S.default_params(model))
    for name, f in factors.items():
        A, B = brute_factors(model, data, name, approx)
        assert close(f.A, A), name
        assert close(f.B, B), name


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("net", NETS)
def test_kfac_score_matches_explicit_kron(net, approx):
    model, data = make(net)
    damping = 1e-2
    factors = S.kfac_factors(model, data, approx=approx)
    got = S.compute("kfac", model, data, damping=damping, approx=approx)
    for name, f in factors.items():
        w = model.get_parameter(name).detach()
        rows = w.shape[0] // f.groups
        for g in range(f.groups):
            A, B = f.A[g], f.B[g]
            # λ = damping·tr/d; a dead channel (zero factor) gets the implementation's 1e-30 floor
            lam_a = max(damping * float(torch.trace(A)) / A.shape[0], 1e-30)
            lam_b = max(damping * float(torch.trace(B)) / B.shape[0], 1e-30)
            Ad = A + lam_a * torch.eye(A.shape[0], dtype=DT)
            Bd = B + lam_b * torch.eye(B.shape[0], dtype=DT)
            H = torch.kron(Bd, Ad)  # row-major vec of the (out, in) weight block of this group
            theta = w[g * rows : (g + 1) * rows].reshape(-1)
            ref = theta**2 / torch.diagonal(torch.linalg.inv(H))
            assert close(got[name][g * rows : (g + 1) * rows].reshape(-1), ref, rtol=1e-8), (name, g)


def test_kfac_grouped_blocks_are_per_group():
    model, data = make("grouped")
    f = S.kfac_factors(model, data, approx="expand")
    assert f["grouped.weight"].A.shape == (2, 2 * 9, 2 * 9)
    assert f["grouped.weight"].B.shape == (2, 3, 3)
    assert f["dw.weight"].A.shape == (6, 9, 9) and f["dw.weight"].B.shape == (6, 1, 1)
    assert f["pw.weight"].A.shape == (1, 6, 6) and f["pw.weight"].B.shape == (1, 4, 4)


def test_kfac_token_linear_averages_over_tokens():
    """A Linear on (B, T, D) tokens: A averaged over examples and tokens, B summed over tokens."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Flatten(), nn.Linear(8, 2)).to(DT)
    x = torch.randn(5, 2, 3, dtype=DT)
    y = torch.randint(0, 2, (5,))
    f = S.kfac_factors(model, [(x, y)], params=["0.weight"], approx="expand")["0.weight"]
    a = x.reshape(-1, 3)
    assert close(f.A[0], a.T @ a / 10)
    zs = []
    for i in range(5):
        z = model[0](x[i : i + 1]).detach().requires_grad_(True)
        li = S.per_example_loss(model[3](model[2](model[1](z))), y[i : i + 1]).sum()
        zs.append(torch.autograd.grad(li, z)[0][0])
    g = torch.stack(zs).reshape(-1, 4)
    assert close(f.B[0], g.T @ g / 5)


class ConvPool(nn.Module):
    """A conv followed directly by global average pooling: its output gradient is the same at
    every position, the case where K-FAC-reduce is exact (Eschenhagen et al., 2023)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def test_kfac_reduce_is_the_exact_fisher_where_expand_is_not():
    """One example: F = vec(G)vec(G)ᵀ, G = ĝ âᵀ, so A⊗B = F for reduce; expand misses the
    cross-position terms and its scale ratio tr(A)tr(B)/tr(F) is far from 1."""
    torch.manual_seed(0)
    model = ConvPool().to(DT).eval()
    # Positive inputs (as after a ReLU, or images): patches correlate across positions, which
    # expand's A ⊗ B ignores.
    x, y = torch.rand(1, 2, 5, 5, dtype=DT) + 0.5, torch.tensor([1])
    (g,) = loop_grads(model, [(x, y)], ["conv.weight"])
    vec = g["conv.weight"].reshape(-1)  # row-major (out, in·kh·kw)
    fisher = torch.outer(vec, vec)
    for approx in ("reduce", "expand"):
        d: dict = {}
        f = S.kfac_factors(model, [(x, y)], approx=approx, diagnostics=d)["conv.weight"]
        kron = torch.kron(f.B[0], f.A[0])
        ratio = d["kfac_scale_ratio"]["conv.weight"]
        if approx == "reduce":
            assert close(kron, fisher) and ratio == pytest.approx(1.0, rel=1e-12)
        else:
            assert not close(kron, fisher, rtol=1e-2) and ratio < 0.5
        assert d["kfac_scale_ratio"]["head.weight"] == pytest.approx(1.0, rel=1e-12)  # T = 1: exact


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("net", ["cnn", "grouped", "mlp"])
def test_kfac_scale_ratio_diagnostic_is_trace_ratio(net, approx):
    """``kfac_scale_ratio`` = Σ_g tr(A_g)·tr(B_g) / tr(F), F the empirical Fisher from per-example
    gradients, all on the same (here: all) examples."""
    model, data = make(net)
    d: dict = {}
    S.kfac_factors(model, data, approx=approx, diagnostics=d)
    names = S.default_params(model)
    grads = loop_grads(model, data, names)
    assert d["kfac_scale_examples"] == len(grads) and set(d["kfac_scale_ratio"]) == set(names)
    assert d["kfac_approx"] == {"conv": approx, "linear": approx}
    for name in names:
        A, B = brute_factors(model, data, name, approx)
        tr_f = float(torch.stack([g[name] ** 2 for g in grads]).sum(0).sum()) / len(grads)
        ref = float(
            (torch.diagonal(A, dim1=1, dim2=2).sum(1) * torch.diagonal(B, dim1=1, dim2=2).sum(1)).sum()
        )
        assert d["kfac_scale_ratio"][name] == pytest.approx(ref / tr_f, rel=1e-9), name


def test_kfac_auto_is_reduce_for_cnn_convolutions_and_expand_otherwise():
    model, data = make("cnn")
    d: dict = {}
    S.compute("kfac", model, data, diagnostics=d)
    assert d["kfac_approx"] == {"conv": "reduce", "linear": "expand"}
    auto = S.kfac_factors(model, data)
    reduce = S.kfac_factors(model, data, approx="reduce")
    assert all(close(auto[n].A, reduce[n].A) and close(auto[n].B, reduce[n].B) for n in auto)
    vit = pytest.importorskip("timm").create_model("test_vit", pretrained=False)
    assert S.resolve_approx(vit, "auto") == {"conv": "expand", "linear": "expand"}
    with pytest.raises(ValueError, match="'approx' must be one of 'auto', 'reduce', 'expand'"):
        S.compute("kfac", model, data, approx="kron")


def test_kfac_rejects_non_layer_params():
    model, data = make("mlp")
    with pytest.raises(ValueError, match="norm.weight"):
        S.compute("kfac", model, data, params=["fc1.weight", "norm.weight"])
    with pytest.raises(ValueError, match="fc1.bias"):
        S.compute("kfac", model, data, params=["fc1.weight", "fc1.bias"])


# --------------------------------------------------------------------------------------
# PX
# --------------------------------------------------------------------------------------


def test_px_matches_direct_formula_on_relu_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)).to(DT)
    x = torch.randn(6, 4, dtype=DT)
    data = [(x[:4], torch.zeros(4, dtype=torch.long)), (x[4:], torch.zeros(2, dtype=torch.long))]
    W = [model[i].weight.detach() for i in (0, 2, 4)]
    b = [model[i].bias.detach() for i in (0, 2, 4)]
    # z1: weights := 1, gates of the real network, input x²
    h1 = x @ W[0].T + b[0]
    h2 = torch.relu(h1) @ W[1].T + b[1]
    g1, g2 = (h1 > 0).to(DT), (h2 > 0).to(DT)
    one = [torch.ones_like(w) for w in W]
    z1 = (((x**2 @ one[0].T + b[0]) * g1) @ one[1].T + b[1]) * g2 @ one[2].T + b[2]
    # z2: weights := θ² (leaves), identity activations, input 1
    sq = [(w**2).clone().requires_grad_(True) for w in W]
    z2 = ((torch.ones(1, 4, dtype=DT) @ sq[0].T + b[0]) @ sq[1].T + b[1]) @ sq[2].T + b[2]
    R = (z1.sum(0) * z2[0]).sum()
    grads = torch.autograd.grad(R, sq)
    got = S.compute("px", model, data)
    for i, name in enumerate(["0.weight", "2.weight", "4.weight"]):
        assert close(got[name], W[i] ** 2 * grads[i].abs()), name


def test_px_refuses_attention():
    model = nn.Sequential(nn.Linear(4, 4))
    model.attn = nn.MultiheadAttention(4, 1)
    with pytest.raises(ValueError, match="self-attention"):
        S.compute("px", model, [(torch.randn(2, 4), torch.tensor([0, 1]))])


def test_px_says_why_a_one_value_batchnorm_cannot_run():
    # A 3x3 image through a 3x3 conv leaves one position; one image per batch then gives BatchNorm one
    # value per channel in the surrogate's batch-statistics mode: a clear ValueError, not torch's.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    batches = [(torch.randn(1, 3, 3, 3), torch.tensor([0]))]
    with pytest.raises(ValueError, match="at least two values per channel.*1 image"):
        S.compute("px", model, batches)
    two = [(torch.randn(2, 3, 3, 3), torch.tensor([0, 1]))]
    assert set(S.compute("px", model, two)) >= {"0.weight", "4.weight"}


# --------------------------------------------------------------------------------------
# Model state, options, registry
# --------------------------------------------------------------------------------------


def snapshot(model: nn.Module) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {
            n: (
                len(m._forward_hooks),
                len(m._backward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_pre_hooks),
            )
            for n, m in model.named_modules()
        },
        "param_hooks": {n: len(p._backward_hooks or {}) for n, p in model.named_parameters()},
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["requires_grad"] == b["requires_grad"]
    assert a["training"] == b["training"]
    assert a["hooks"] == b["hooks"] and a["param_hooks"] == b["param_hooks"]
    for kind in ("params", "buffers"):
        for n in a[kind]:
            assert torch.equal(a[kind][n], b[kind][n]), (kind, n)
    for n, g in a["grads"].items():
        h = b["grads"][n]
        assert (g is None) == (h is None), n
        assert g is None or torch.equal(g, h), n


def _dirty(model: nn.Module) -> None:
    """Awkward but legal state: mixed grads, a frozen layer, train mode, a user hook."""
    model.train()
    params = list(model.named_parameters())
    params[0][1].grad = torch.full_like(params[0][1], 0.5)
    params[1][1].grad = torch.zeros_like(params[1][1])
    params[-1][1].requires_grad_(False)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d))
    first.register_forward_hook(lambda *a: None)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("name", S.available())
def test_model_left_exactly_as_found(net, name):
    model, data = make(net)
    _dirty(model)
    before = snapshot(model)
    opts = {"probes": 2} if name == "hutchinson" else {}
    S.compute(name, model, data, **opts)
    assert_same(before, snapshot(model))


def test_bn_warmup_changes_stats_only_when_asked():
    model, data = make("cnn")
    before = snapshot(model)
    S.compute("diag", model, data)
    assert_same(before, snapshot(model))
    S.compute("diag", model, data, bn_warmup=1)
    after = snapshot(model)
    assert after["training"] == before["training"]
    assert model.bn1.momentum == 0.1
    # cumulative average of the per-batch means of conv1's output
    with torch.no_grad():
        means = [model.conv1(x).mean((0, 2, 3)) for x, _ in data]
    assert close(model.bn1.running_mean, torch.stack(means).mean(0))
    assert int(model.bn1.num_batches_tracked) == len(data)
    for n in before["params"]:
        assert torch.equal(before["params"][n], after["params"][n])


def test_bn_warmup_keeps_dropout_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.9), nn.Linear(4, 2)).to(DT).eval()
    data = [(torch.randn(8, 3, dtype=DT), torch.zeros(8, dtype=torch.long))]
    S.warmup_batchnorm(model, data)
    with torch.no_grad():
        h = model[0](data[0][0])
    assert close(model[1].running_mean, h.mean(0))
    assert not any(m.training for m in model.modules())


def test_registry_and_errors():
    model, data = make("mlp")
    assert set(S.available()) >= {
        "magnitude",
        "diag",
        "kfac",
        "snip",
        "grasp",
        "px",
        "hutchinson",
        "fisher_taylor",
        "random",
    }
    with pytest.raises(ValueError, match="valid: magnitude"):
        S.compute("nope", model, data)
    with pytest.raises(ValueError, match="fc1.weight"):
        S.compute("diag", model, data, params=["fc9.weight"])
    with pytest.raises(ValueError, match="probes"):
        S.compute("diag", model, data, probes=3)
    with pytest.raises(ValueError, match="mse"):
        S.compute("diag", model, data, loss="hinge")


class EveryLayer(nn.Module):
    """One of each layer type default_params covers (Conv1d/2d/3d, ConvTranspose2d, Linear),
    plus parameters it must leave out (BatchNorm, LayerNorm, biases)."""

    def __init__(self):
        super().__init__()
        self.c3d = nn.Conv3d(1, 2, 3, padding=1)
        self.c2d = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.up = nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.c1d = nn.Conv1d(2, 2, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        h = torch.tanh(self.c3d(x)).mean(2)  # (B, 2, 2, 2)
        h = torch.tanh(self.bn(self.c2d(h)))
        h = torch.tanh(self.up(h)).flatten(2)  # (B, 2, 16)
        h = self.norm(torch.tanh(self.c1d(h)))
        return self.fc(h.flatten(1))


def test_default_params_is_every_conv_and_linear_weight_and_every_score_handles_them():
    """The one list of scored weights: Conv1d/2d/3d, transposed convs and Linear weights, nothing else.
    diag (torch.func fallback for Conv3d/ConvTranspose) matches a per-example loop on all of them;
    every other score covers them too, except kfac, which refuses the layers it has no factors for."""
    torch.manual_seed(0)
    model = EveryLayer().to(DT)
    _randomise_bn(model)
    model.eval()
    g = torch.Generator().manual_seed(3)
    data = [
        (torch.randn(n, 1, 2, 2, 2, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g))
        for n in (3, 2)
    ]
    names = S.default_params(model)
    assert names == ["c3d.weight", "c2d.weight", "up.weight", "c1d.weight", "fc.weight"]
    got = S.compute("diag", model, data)
    grads = loop_grads(model, data, names)
    for n in names:
        ref = model.get_parameter(n).detach() ** 2 * torch.stack([gr[n] ** 2 for gr in grads]).mean(0)
        assert close(got[n], ref), n
    for name in S.available():
        if name in ("diag", "kfac"):
            continue
        s = S.compute(name, model, data, **({"probes": 2} if name == "hutchinson" else {}))
        assert list(s) == names and all(torch.isfinite(t).all() for t in s.values()), name
    with pytest.raises(ValueError, match=r"c3d.weight.*up.weight"):
        S.compute("kfac", model, data)


def test_registry_metadata_and_option_checks():
    model, data = make("mlp")
    infos = S.infos()
    assert [i.name for i in infos] == S.available()
    for i in infos:
        assert i.label and i.description and i.fn.__doc__, i.name
        assert "arXiv" in i.fn.__doc__ or i.name == "random", i.name  # formula + reference
        assert (S.BN_WARMUP in i.options) == i.data_driven
    assert S.info("px").refusal("vit") and S.info("px").refusal("cnn") is None
    assert S.info("random").stochastic and S.info("hutchinson").stochastic and not S.info("diag").stochastic
    with pytest.raises(ValueError, match="valid: magnitude"):
        S.info("obd")
    with pytest.raises(ValueError, match=r"'damping' must be >= 0"):
        S.compute("kfac", model, data, damping=-1.0)
    with pytest.raises(ValueError, match=r"'probes' must be an integer"):
        S.compute("hutchinson", model, data, probes=2.5)
    with pytest.raises(ValueError, match=r"'bn_warmup' must be"):
        S.compute("diag", model, data, bn_warmup=True)
    with pytest.raises(ValueError, match="registered already"):
        S.register_score("diag", label="x", description="x", data_driven=False)(lambda *a: {})


def test_magnitude_random_progress():
    model, data = make("cnn")
    names = S.default_params(model)
    mag = S.compute("magnitude", model, None)
    assert all(torch.equal(mag[n], model.get_parameter(n).detach() ** 2) for n in names)
    r1, r2 = S.compute("random", model, None, seed=4), S.compute("random", model, None, seed=4)
    assert all(torch.equal(r1[n], r2[n]) for n in names)
    calls = []
    S.compute("snip", model, data, progress=lambda d, t, m: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
    calls.clear()
    S.compute("grasp", model, data, progress=lambda d, t, m: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_scores_keyed_by_name_with_shapes():
    model, data = make("grouped")
    for name in S.available():
        opts = {"probes": 1} if name == "hutchinson" else {}
        s = S.compute(name, model, data, **opts)
        assert list(s) == S.default_params(model)
        for n, t in s.items():
            assert t.shape == model.get_parameter(n).shape and t.dtype == DT and torch.isfinite(t).all()


# --------------------------------------------------------------------------------------
# Real architectures (timm, random init, tiny inputs)
# --------------------------------------------------------------------------------------

timm = pytest.importorskip("timm")


def _timm_case(arch: str):
    torch.manual_seed(0)
    if arch == "tf_efficientnet_lite0":
        model = nn.Sequential(timm.create_model(arch, pretrained=False, num_classes=0), nn.Linear(1280, 5))
        size = 64
    else:
        model = timm.create_model(arch, pretrained=False, num_classes=5)
        size = 64
    model.eval()
    g = torch.Generator().manual_seed(0)
    data = [
        (torch.randn(2, 3, size, size, generator=g), torch.tensor([0, 4])),
        (torch.randn(1, 3, size, size, generator=g), torch.tensor([2])),
    ]
    return model, data


@pytest.fixture(scope="module", params=["tf_efficientnet_lite0", "test_resnet", "test_vit"])
def timm_case(request):
    return request.param, *_timm_case(request.param)


@pytest.mark.parametrize("name", S.available())
def test_every_score_runs_on_timm_models(timm_case, name):
    arch, model, data = timm_case
    before = snapshot(model)
    opts = {"probes": 2} if name == "hutchinson" else {}
    if name == "px" and arch == "test_vit":
        with pytest.raises(ValueError, match="self-attention"):
            S.compute(name, model, data)
        return
    s = S.compute(name, model, data, **opts)
    assert list(s) == S.default_params(model)
    for n, t in s.items():
        assert t.shape == model.get_parameter(n).shape and torch.isfinite(t).all(), n
    if name not in ("random", "magnitude", "grasp", "hutchinson"):  # hutchinson: H is indefinite
        assert all((t >= 0).all() for t in s.values())
    assert_same(before, snapshot(model))


def test_diag_on_efficientnet_matches_loop(timm_case):
    """Covers timm's Conv2dSame (asymmetric dynamic padding), depthwise convs, BatchNormAct."""
    arch, model, data = timm_case
    names = S.default_params(model)
    got = S.compute("diag", model, data)
    grads = loop_grads(model, data, names)
    for n in names:
        ref = model.get_parameter(n).detach() ** 2 * torch.stack([g[n] ** 2 for g in grads]).mean(0)
        assert torch.allclose(got[n], ref, rtol=1e-3, atol=1e-6 * float(ref.abs().max())), (arch, n)


def test_docstring_examples():
    """The module's examples run, including GraSP's worked sign example (θ ⊙ Hg = 8 is kept)."""
    import doctest
    import pkgutil

    attempted = failed = 0
    for mod in [
        S,
        *(importlib.import_module(f"{S.__name__}.{m.name}") for m in pkgutil.iter_modules(S.__path__)),
    ]:
        result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
        attempted, failed = attempted + result.attempted, failed + result.failed
    assert attempted >= 5 and failed == 0


# --------------------------------------------------------------------------------------
# Hutchinson with fresh probes per group of examples: exact, unbiased, its variance and spread
# --------------------------------------------------------------------------------------


def group_hessians(net: str, probe_batch: int):
    """Exact Hessians H_g of the summed loss of each probe group (consecutive examples of a batch;
    probe_batch = 0: one group, all the data)."""
    model, data = make(net)
    names = S.default_params(model)
    if probe_batch == 0:
        f, flat, _, _ = full_loss_fn(model, data, names)
        n = sum(len(x) for x, _ in data)
        return [hessian(lambda v: f(v) * n, flat)]
    out = []
    for x, y in data:
        step = probe_batch or len(x)
        for lo in range(0, len(x), step):
            f, flat, _, _ = full_loss_fn(model, [(x[lo : lo + step], y[lo : lo + step])], names)
            n = len(x[lo : lo + step])
            out.append(hessian(lambda v, f=f, n=n: f(v) * n, flat))  # f is a mean: times n = sum
    return out


@pytest.mark.parametrize("net", ["mlp", "cnn"])
@pytest.mark.parametrize("probe_batch", [1, 2])
def test_hutchinson_fresh_probes_per_group_is_mean_of_z_hgz(net, probe_batch, monkeypatch):
    """(1/N) Σ_g (1/K) Σ_k z_gk ⊙ H_g z_gk exactly, for the probes it drew (group after group)."""
    model, data = make(net)
    names = S.default_params(model)
    flat, _, _ = exact(net)
    hs = group_hessians(net, probe_batch)
    drawn = []
    real = H_mod._rademacher

    def spy(params, seed):
        z = real(params, seed)
        drawn.append(torch.cat([t.reshape(-1) for t in z]))
        return z

    monkeypatch.setattr(H_mod, "_rademacher", spy)
    k = 2
    d = {}
    got = S.compute("hutchinson", model, data, probes=k, seed=5, probe_batch=probe_batch, diagnostics=d)
    assert len(drawn) == k * len(hs) and d["hutchinson_groups"] == len(hs)
    n = sum(len(x) for x, _ in data)
    est = sum(z * (h @ z) for i, h in enumerate(hs) for z in drawn[i * k : (i + 1) * k]) / (k * n)
    assert close(torch.cat([got[nm].reshape(-1) for nm in names]), flat**2 * est)


def _hutchinson_draws(probe_batch: int, seeds: range, probes: int = 1) -> torch.Tensor:
    model, data = make("mlp")
    names = S.default_params(model)
    runs = [
        torch.cat(
            [
                t.reshape(-1)
                for t in S.compute(
                    "hutchinson", model, data, probes=probes, probe_batch=probe_batch, seed=s
                ).values()
            ]
        )
        for s in seeds
    ]
    assert list(S.compute("magnitude", model, None)) == names
    return torch.stack(runs)


def test_hutchinson_unbiased_with_the_predicted_variance_lower_per_example():
    """Over 400 seeds: the mean is θ² ⊙ diag(H) and the variance is the analytic
    Var_j = θ_j⁴ (1/(N²K)) Σ_g Σ_{l≠j} (H_g)_jl², smaller per example than with shared probes."""
    flat, _, H = exact("mlp")
    n = 7
    seeds = range(400)
    target = flat**2 * torch.diagonal(H)

    def analytic(hs):
        return flat**4 * sum((h**2).sum(1) - torch.diagonal(h) ** 2 for h in hs) / n**2

    var = {}
    for pb in (1, 0):
        runs = _hutchinson_draws(pb, seeds)
        pred = analytic(group_hessians("mlp", pb))
        mean, emp = runs.mean(0), runs.var(0)
        assert ((mean - target).abs() <= 5 * (pred / len(seeds)).sqrt() + 1e-12).all(), pb
        assert 0.8 < float(emp.sum() / pred.sum()) < 1.25, pb
        var[pb] = pred.sum()
    assert var[1] < var[0] / 2  # fresh probes per example: less than half the variance here


def test_hutchinson_reports_its_spread():
    """The reported median SE/|estimate| matches the analytic one (K = 8 probes per example)."""
    model, data = make("mlp")
    flat, _, _ = exact("mlp")
    hs = group_hessians("mlp", 1)
    k, n = 8, 7
    d = {}
    got = torch.cat(
        [
            t.reshape(-1)
            for t in S.compute("hutchinson", model, data, probes=k, seed=3, diagnostics=d).values()
        ]
    )
    se = (flat**4 * sum((h**2).sum(1) - torch.diagonal(h) ** 2 for h in hs) / (n**2 * k)).sqrt()
    nz = got != 0
    want = float((se[nz] / got[nz].abs()).median())
    assert d["hutchinson_se_from"] == "within groups"
    assert want / 1.5 < d["hutchinson_rel_se_median"] < want * 1.5
    assert 0 < d["hutchinson_significant_share"] <= 1
    d1 = {}
    S.compute("hutchinson", model, data, probes=1, seed=3, diagnostics=d1)
    assert d1["hutchinson_se_from"].startswith("across groups")


def test_hutchinson_default_is_per_example():
    assert S.info("hutchinson").option("probe_batch").default == 1


# --------------------------------------------------------------------------------------
# BatchNorm warm-up modes
# --------------------------------------------------------------------------------------


def test_bn_warmup_running_mode_is_the_papers_code():
    """No reset, momentum 0.1: μ ← 0.9 μ + 0.1 μ_batch per batch (variance: unbiased batch var)."""
    model, data = make("cnn")
    mu0, var0 = model.bn1.running_mean.clone(), model.bn1.running_var.clone()
    before = snapshot(model)
    S.compute("diag", model, data, bn_warmup=1, bn_warmup_mode="running")
    mu, var = mu0, var0
    with torch.no_grad():
        for x, _ in data:
            z = model.conv1(x)
            mu = 0.9 * mu + 0.1 * z.mean((0, 2, 3))
            var = 0.9 * var + 0.1 * z.var((0, 2, 3), unbiased=True)
    assert close(model.bn1.running_mean, mu) and close(model.bn1.running_var, var)
    assert model.bn1.momentum == 0.1 and snapshot(model)["training"] == before["training"]
    with pytest.raises(ValueError, match="reset-cumulative, running"):
        S.compute("diag", model, data, bn_warmup=1, bn_warmup_mode="ema")


def test_warmup_modes_match_the_spec():
    from pai_core.results import spec_options

    assert spec_options()["bn_warmup_mode"][0].choices == S.BN_WARMUP_MODES


# --------------------------------------------------------------------------------------
# SynFlow against its definition
# --------------------------------------------------------------------------------------


def test_synflow_is_the_synaptic_saliency_of_the_path_product():
    """Bias-free ReLU MLP: R = 1ᵀ|W3||W2||W1|1, S = |W| ⊙ ∂R/∂|W| (divided by R)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 6, bias=False),
        nn.ReLU(),
        nn.Linear(6, 4, bias=False),
        nn.ReLU(),
        nn.Linear(4, 3, bias=False),
    ).to(DT)
    data = [(torch.randn(2, 5, dtype=DT), torch.tensor([0, 1]))]
    A = [model[i].weight.detach().abs().clone().requires_grad_(True) for i in (0, 2, 4)]
    r = torch.ones(1, 3, dtype=DT) @ A[2] @ A[1] @ A[0] @ torch.ones(5, 1, dtype=DT)
    grads = torch.autograd.grad(r.sum(), A)
    d = {}
    got = S.compute("synflow", model, data, diagnostics=d)
    for i, name in enumerate(["0.weight", "2.weight", "4.weight"]):
        assert close(got[name], A[i].detach() * grads[i] / r.sum()), name
        assert close(got[name].sum(), torch.tensor(1.0, dtype=DT))  # each layer carries the whole flow
    assert d["synflow_R"] == pytest.approx(float(r.sum().detach()), rel=1e-12)
    assert S.info("synflow").rounds == 100 and not S.info("synflow").data_driven


def test_synflow_folds_batchnorm_and_ignores_activations():
    """conv → BN (eval) → ReLU6 → conv → pool → Linear: the flow of the positive linear network
    |W3|·pool(|W2| ∗ (|a|·(|W1| ∗ 1) + |c|) + |b2|)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU6(),
        nn.Conv2d(3, 2, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
    ).to(DT)
    _randomise_bn(model)
    model.eval()
    data = [(torch.randn(1, 2, 5, 5, dtype=DT), torch.tensor([0]))]
    bn = model[1]
    a = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach()
    c = (bn.bias - a * bn.running_mean).detach()
    W = [model[i].weight.detach().abs().clone().requires_grad_(True) for i in (0, 3, 6)]
    h = F.conv2d(torch.ones(1, 2, 5, 5, dtype=DT), W[0], padding=1)
    h = a.abs()[None, :, None, None] * h + c.abs()[None, :, None, None]
    h = F.conv2d(h, W[1], model[3].bias.detach().abs()).mean((2, 3))
    r = (h @ W[2].T).sum()
    grads = torch.autograd.grad(r, W)
    got = S.compute("synflow", model, data)
    for i, name in enumerate(["0.weight", "3.weight", "6.weight"]):
        assert close(got[name], W[i].detach() * grads[i] / r), name


# --------------------------------------------------------------------------------------
# PX on BatchNorm networks
# --------------------------------------------------------------------------------------


def test_px_with_batchnorm_folded_matches_a_direct_formula():
    """conv1 → BN → ReLU → conv2(+b) → pool → fc, two batches: z₁ with weights 1, gates of the
    eval-mode net and batch-statistics BN (γ, β as is); z₂ with squared weights, BN as a²·x + c."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=False),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 2, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 2, bias=False),
    ).to(DT)
    _randomise_bn(model)
    model.eval()
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(b, 2, 4, 4, generator=g, dtype=DT), torch.zeros(b, dtype=torch.long)) for b in (3, 2)
    ]
    conv1, bn, conv2, fc = model[0], model[1], model[3], model[6]
    W = [conv1.weight.detach(), conv2.weight.detach(), fc.weight.detach()]
    b2 = conv2.bias.detach()
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    a = gamma / (bn.running_var + bn.eps).sqrt()
    c = beta - a * bn.running_mean
    z1 = 0
    for x, _ in data:
        gate = (bn(conv1(x)) > 0).to(DT).detach()
        h = F.conv2d(x**2, torch.ones_like(W[0]), padding=1)
        h = F.batch_norm(h, None, None, gamma, beta, training=True, eps=bn.eps) * gate
        h = F.conv2d(h, torch.ones_like(W[1]), b2).mean((2, 3))
        z1 = z1 + (h @ torch.ones_like(W[2]).T).sum(0)
    sq = [(w**2).clone().requires_grad_(True) for w in W]
    h = F.conv2d(torch.ones(1, 2, 4, 4, dtype=DT), sq[0], padding=1)
    h = (a**2)[None, :, None, None] * h + c[None, :, None, None]
    h = F.conv2d(h, sq[1], b2).mean((2, 3))
    z2 = (h @ sq[2].T)[0]
    grads = torch.autograd.grad((z1 * z2).sum(), sq)
    got = S.compute("px", model, data)
    for i, name in enumerate(["0.weight", "3.weight", "6.weight"]):
        assert close(got[name], W[i] ** 2 * grads[i].abs()), name


def _real_cnn(name: str):
    from pai_core import models

    if name == "resnet50":
        timm = pytest.importorskip("timm")
        torch.manual_seed(0)
        # timm zero-initialises each residual branch's last BatchNorm γ (the branch is then off in
        # the real network too); give them the values a trained network has.
        net = timm.create_model("resnet50", pretrained=False, num_classes=0)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.2, 1.0)
        return net.eval(), 32
    try:
        enc = models.load_encoder(name)
    except models.ModelUnavailable as exc:
        pytest.skip(f"{name}: {exc}")
    return enc.model.eval(), 64


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["efficientnet_lite0", "mobilenet_v2", "resnet50"])
def test_px_carries_signal_on_real_batchnorm_networks_and_differs_from_magnitude(arch):
    """On the paper's BatchNorm CNNs (real weights where they install offline): the folded PX gives
    every tensor a share of R well above rounding, ranks unlike magnitude, and the batch-statistics
    variant refuses with the reason."""
    from scipy.stats import spearmanr

    enc, size = _real_cnn(arch)
    model = nn.Sequential(enc, nn.LazyLinear(3))
    g = torch.Generator().manual_seed(0)
    data = [(torch.rand(2, 3, size, size, generator=g) * 2 - 1, torch.tensor([0, 2]))]
    with torch.no_grad():
        model(data[0][0])  # materialise the head
    d = {}
    px = S.compute("px", model, data, diagnostics=d)
    mag = S.compute("magnitude", model, None)
    assert d["px_blind_tensors"] == [] and d["px_min_tensor_share"] > 1e-6, d
    a = torch.cat([t.reshape(-1) for t in px.values()]).numpy()
    b = torch.cat([t.reshape(-1) for t in mag.values()]).numpy()
    rho = spearmanr(a, b).statistic
    assert rho < 0.95, rho
    with pytest.raises(ValueError, match="bn_fold=1"):
        S.compute("px", model, data, bn_fold=0)
