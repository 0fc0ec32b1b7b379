"""The hook engine finds every weight matrix however the network applies it (modules,
``F.multi_head_attention_forward``, ``x @ proj``), places each example's rows right whatever the
layout, and never lets a missed tensor score zero.  References: per-example loops in float64
(:mod:`tests.brute`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pai_core import scores as S
from pai_core.scores import hooks as H
from tests.brute import diag_reference, kfac_reference, loop_grads

DT = torch.float64
# Biases the sites cannot place (slices of in_proj_bias, open_clip's concatenated pool biases)
# take the exact torch.func path, which has no batching rule for fused attention: slow, right.
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class AttnNet(nn.Module):
    """Tokens → nn.MultiheadAttention (self-attention, packed in-projection, functional
    out_proj) → mean pool → raw projection ``x @ proj`` → head.  ``cross``: query, key and
    value differ, so the in-projection is applied as three row slices of one matrix."""

    def __init__(self, batch_first: bool = True, cross: bool = False):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.proj = nn.Parameter(torch.randn(8, 5) / 3)
        self.head = nn.Linear(5, 3)
        self.cross = cross

    def forward(self, x):
        h = torch.tanh(self.embed(x))
        q, k, v = (h, 2 * torch.tanh(h), h * h) if self.cross else (h, h, h)
        if not self.mha.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        o = self.mha(q, k, v, need_weights=False)[0]
        if not self.mha.batch_first:
            o = o.transpose(0, 1)
        return self.head(torch.tanh((h + o).mean(1) @ self.proj))


class PoolNet(nn.Module):
    """A conv stem and open_clip's AttentionPool2d (q/k/v/c_proj applied functionally,
    sequence-first), as in CLIP's ResNets."""

    def __init__(self):
        super().__init__()
        from open_clip.modified_resnet import AttentionPool2d

        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.pool = AttentionPool2d(4, 8, 2, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))))


def make(kind: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind == "pool":
        model, shape = PoolNet(), (2, 4, 4)
    else:
        model, shape = AttnNet(batch_first=kind != "seqfirst", cross=kind == "cross"), (4, 3)
    model = model.to(DT).eval()
    data = [
        (torch.randn(n, *shape, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g))
        for n in (3, 2)
    ]
    return model, data


KINDS = ["self", "seqfirst", "cross", "pool"]


def close(a, b, rtol=1e-9, atol=1e-12):
    return torch.allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", KINDS)
def test_default_params_find_every_weight_matrix(kind):
    model, data = make(kind)
    static = S.default_params(model)
    found = S.default_params(model, data[0][0][:1])
    matrices = [n for n, p in model.named_parameters() if p.dim() >= 2 and "positional" not in n]
    assert found == matrices
    assert ("proj" in found) and ("proj" not in static) if kind != "pool" else found == static


@pytest.mark.parametrize("kind", KINDS)
def test_diag_and_fisher_taylor_equal_per_example_loops(kind):
    model, data = make(kind)
    names = S.default_params(model, data[0][0][:1]) + [n for n, p in model.named_parameters() if p.dim() == 1]
    d: dict = {}
    got = S.compute("diag", model, data, params=names, diagnostics=d)
    ref = diag_reference(model, data, names)
    for n in names:
        assert close(got[n], ref[n]), n
    assert "unreached_params" not in d
    grads = loop_grads(model, data, names)
    ft = S.compute("fisher_taylor", model, data, params=names)
    for n in names:
        th = model.get_parameter(n).detach()
        g = torch.stack([x[n] for x in grads])
        assert close(ft[n], (th * g.mean(0) + 0.5 * th**2 * (g**2).mean(0)).abs()), n


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("kind", KINDS)
def test_kfac_factors_of_functional_weights_match_definitions(kind, approx):
    """in_proj as three q/k/v blocks (one shared A when one call feeds them, three when q, k, v
    differ), out_proj, attention-pool projections and raw ``x @ proj`` against per-example loops."""
    model, data = make(kind)
    names = S.default_params(model, data[0][0][:1])
    f = S.kfac_factors(model, data, params=names, approx=approx)
    for n in names:
        blocks = 3 if n.endswith("in_proj_weight") else 1
        A, B = kfac_reference(model, data, n, approx, blocks)
        assert f[n].A.shape == A.shape and f[n].B.shape == B.shape, n
        assert close(f[n].A, A) and close(f[n].B, B), n
        assert f[n].transposed == (n == "proj")
    if kind == "cross":
        assert f["mha.in_proj_weight"].A.shape[0] == 3  # q, k, v read different inputs


@pytest.mark.parametrize("kind", ["self", "pool"])
def test_kfac_score_places_blocks_in_the_parameter_layout(kind):
    model, data = make(kind)
    names = S.default_params(model, data[0][0][:1])
    damping = 1e-2
    f = S.kfac_factors(model, data, params=names, approx="expand")
    got = S.compute("kfac", model, data, params=names, damping=damping, approx="expand")
    for n in names:
        w = model.get_parameter(n).detach()
        mat = w.T if f[n].transposed else w.reshape(w.shape[0], -1)
        rows = mat.shape[0] // f[n].groups
        for j in range(f[n].groups):
            A, B = f[n].A[j if f[n].A.shape[0] > 1 else 0], f[n].B[j]
            Ad = A + damping * torch.trace(A) / A.shape[0] * torch.eye(A.shape[0], dtype=DT)
            Bd = B + damping * torch.trace(B) / B.shape[0] * torch.eye(B.shape[0], dtype=DT)
            theta = mat[j * rows : (j + 1) * rows].reshape(-1)
            ref = theta**2 / torch.diagonal(torch.linalg.inv(torch.kron(Bd, Ad)))
            score = got[n].T if f[n].transposed else got[n].reshape(mat.shape)
            assert close(score[j * rows : (j + 1) * rows].reshape(-1), ref, rtol=1e-8), (n, j)


def test_layouts_found_by_the_probe():
    """(batch, tokens) rows of a Linear on tokens; (tokens, batch) inside attention, whatever
    batch_first says; attention's (tokens·batch) rows, token-major, at its output projection."""
    for kind in ("self", "seqfirst"):
        model, data = make(kind)
        names = ["embed.weight", "mha.in_proj_weight", "mha.out_proj.weight", "proj"]
        eng = H._HookEngine(model, names, moments=True, kfac=False)
        eng.run(*data[0], "mse")
        lay = {s.ref.name: s.layout for s in eng.sites}
        assert lay["embed.weight"] == H._Layout(0, "whole") and lay["proj"] == H._Layout(0, "whole")
        assert lay["mha.in_proj_weight"] == H._Layout(1, "whole")
        assert lay["mha.out_proj.weight"] == H._Layout(0, "minor")
    ids = torch.tensor([[0, 1], [0, 1], [-1, 1]])  # (tokens, batch) with one constant row
    assert H._infer_layout(ids, 2) == H._Layout(1, "whole")
    assert H._infer_layout(torch.tensor([0, 1, 2, 0, 1, 2]), 3) == H._Layout(0, "minor")
    assert H._infer_layout(torch.tensor([0, 0, 1, 1, 2, 2]), 3) == H._Layout(0, "major")
    # No example changes any row: only an unambiguous shape is placed.
    assert H._infer_layout(torch.full((3, 5), -1), 3) == H._Layout(0, "whole")
    assert H._infer_layout(torch.full((6,), -1), 3) is None  # (2·3) rows: major or minor?


class StdConvNet(nn.Module):
    """A conv whose weight is standardised before use (not a view: the sites cannot explain it)
    and a Linear layer whose output the network never uses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.unused = nn.Linear(3, 3)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        w = self.conv.weight
        h = F.conv2d(x, (w - w.mean()) / w.std(), self.conv.bias)
        self.unused(h.mean((2, 3)))
        return self.head(torch.tanh(h).mean((2, 3)))


def test_missed_weights_get_exact_fallback_or_refusal_and_unreached_are_reported():
    torch.manual_seed(0)
    model = StdConvNet().to(DT).eval()
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(3, 2, 5, 5, generator=g, dtype=DT), torch.tensor([0, 1, 2]))]
    names = S.default_params(model)
    assert names == ["conv.weight", "unused.weight", "head.weight"]
    d: dict = {}
    got = S.compute("diag", model, data, diagnostics=d)
    ref = diag_reference(model, data, ["conv.weight", "head.weight"])
    assert close(got["conv.weight"], ref["conv.weight"])  # exact, by torch.func
    assert close(got["head.weight"], ref["head.weight"])
    assert not got["unused.weight"].any() and d["unreached_params"] == ["unused.weight"]
    with pytest.raises(ValueError, match=r"K-FAC has no factors for \['conv.weight'\]"):
        S.compute("kfac", model, data)
    d = {}
    got = S.compute("kfac", model, data, params=["unused.weight", "head.weight"], diagnostics=d)
    assert d["unreached_params"] == ["unused.weight"] and not got["unused.weight"].any()
    for name in ("snip", "grasp"):
        d = {}
        S.compute(name, model, data, diagnostics=d)
        assert d["unreached_params"] == ["unused.weight"], name


def test_examples_that_interact_are_refused():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x - x.mean(0))  # every row depends on every example

    data = [(torch.randn(4, 3, dtype=DT), torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(H.ExamplesInteract, match="fc.weight"):
        S.compute("diag", Mixer().to(DT), data)


def test_registry_refuses_a_silent_zero():
    """A score whose pass misses a tensor that reaches the loss is an error, named; zeros for a
    tensor with no path to the loss are reported."""
    from pai_core.scores._registry import _REGISTRY

    model, data = make("self")

    @S.register_score("blind", label="blind", data_driven=True)
    def blind(c):
        "A broken score that never looks at the head (tests only; arXiv: none)."
        return {
            n: (torch.zeros_like(p) if n == "head.weight" else p.detach() ** 2) for n, p in c.named.items()
        }

    @S.register_score("forgetful", label="forgetful", data_driven=True)
    def forgetful(c):
        "A score that reports seeing all but one tensor (tests only)."
        c.cover([n for n in c.named if n != "embed.weight"])
        return {n: p.detach() ** 2 for n, p in c.named.items()}

    try:
        with pytest.raises(RuntimeError, match=r"blind.*\['head.weight'\].*refusing"):
            S.compute("blind", model, data)
        with pytest.raises(RuntimeError, match=r"forgetful.*\['embed.weight'\]"):
            S.compute("forgetful", model, data)
        model.head.weight.data.zero_()  # a zero weight may score zero
        S.compute("blind", model, data)
    finally:
        _REGISTRY.pop("blind")
        _REGISTRY.pop("forgetful")


# --------------------------------------------------------------------------------------
# K-FAC's symmetric products and patch chunks (issue 15): same factors, less work
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "syrk_min"), [(20, 512), (37, 8)])  # one product; lower blocks
def test_symmetric_products_equal_the_full_product(k, syrk_min, monkeypatch):
    monkeypatch.setattr(H, "_SYRK_MIN", syrk_min)
    monkeypatch.setattr(H, "_SYRK_BLOCK", 8)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, k, 50, generator=g, dtype=DT)
    acc = torch.randn(3, k, k, generator=g, dtype=DT)
    acc = acc + acc.mT  # symmetric start, as the accumulators are
    want = acc + u @ u.mT
    H._syrk_(acc, u)
    assert torch.allclose(H._mirror_(acc), want, rtol=1e-12, atol=1e-12)


def test_patch_chunks_keep_enough_positions_per_product_and_bound_memory():
    for k, t, groups in [(4608, 49, 1), (2304, 196, 1), (576, 3136, 1), (27, 12544, 1), (9, 3136, 96)]:
        b_step, g_step = H._patch_chunks(k, t, groups)
        assert b_step * t >= H._MIN_INNER or b_step * k * t * groups >= H._PATCH_ELEMS, (k, t)
        assert 1 <= g_step <= groups
        if b_step * t > H._MIN_INNER:  # more than the minimum: only because memory allows it
            assert b_step * k * t * g_step <= 4 * H._PATCH_ELEMS
    assert H._patch_chunks(4608, 49, 1)[0] > 1  # ResNet-50's last stage: not one example per chunk


@pytest.mark.parametrize("groups", [1, 4])
def test_chunked_expand_factors_equal_brute_force(groups, monkeypatch):
    """Tiny chunk bounds force several example chunks (and group chunks) per batch: the expand
    factors of (grouped) convs are still exactly their per-example definitions."""
    monkeypatch.setattr(H, "_PATCH_ELEMS", 64)
    monkeypatch.setattr(H, "_MIN_INNER", 8)
    monkeypatch.setattr(H, "_SYRK_MIN", 8)
    monkeypatch.setattr(H, "_SYRK_BLOCK", 4)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=groups),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).to(DT)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(5, 4, 6, 6, generator=g, dtype=DT), torch.tensor([0, 1, 2, 0, 1]))]
    assert H._patch_chunks(4 // groups * 9, 36, groups)[0] < 5  # several chunks per batch
    f = S.kfac_factors(model, data, params=["0.weight"], approx="expand")["0.weight"]
    A, B = kfac_reference(model, data, "0.weight", "expand", 1)
    assert torch.allclose(f.A, A, rtol=1e-10, atol=1e-13) and torch.allclose(f.B, B, rtol=1e-10, atol=1e-13)
