"""Masks: exact sparsity, deterministic ties, application through fine-tuning, storage."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from pai_core import masks as M


def rand_scores(seed: int = 0, ties: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (4, 3, 3, 3), "fc.weight": (5, 7), "b.weight": (13,)}
    if ties:  # few distinct values: most comparisons are ties
        return {n: torch.randint(0, 4, s, generator=g).double() for n, s in shapes.items()}
    return {n: torch.rand(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}


def n_removed(masks) -> int:
    return sum(int((~m).sum()) for m in masks.values())


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("q", M.PAPER_SPARSITIES + (0.0, 1.0, 0.5))
def test_global_topk_exact_count(q, ties):
    s = rand_scores(ties=ties)
    total = sum(t.numel() for t in s.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = M.global_topk(s, q)
    assert n_removed(m) == math.floor(q * total + 0.5)
    assert list(m) == list(s) and all(m[n].shape == s[n].shape and m[n].dtype == torch.bool for n in s)
    # every kept score >= every removed score
    kept = torch.cat([s[n][m[n]] for n in s])
    gone = torch.cat([s[n][~m[n]] for n in s])
    if len(kept) and len(gone):
        assert kept.min() >= gone.max()


def test_ties_broken_by_sorted_name_then_flat_index():
    s = {"b": torch.zeros(3), "a": torch.zeros(2)}  # all tied
    with pytest.warns(RuntimeWarning, match="collapse"):
        m = M.global_topk(s, 0.6)  # remove 3: a[0], a[1], b[0]
    assert m["a"].tolist() == [False, False] and m["b"].tolist() == [False, True, True]
    # insertion order does not matter
    with pytest.warns(RuntimeWarning, match="collapse"):
        m2 = M.global_topk({"a": torch.zeros(2), "b": torch.zeros(3)}, 0.6)
    assert all(torch.equal(m[n], m2[n]) for n in m)


def test_reproducible():
    s = rand_scores(ties=True)
    a, b = M.global_topk(s, 0.5904), M.global_topk({n: t.clone() for n, t in s.items()}, 0.5904)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_nan_rejected():
    s = rand_scores()
    s["fc.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        M.global_topk(s, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        M.layerwise_topk(s, 0.5)
    with pytest.raises(ValueError):
        M.global_topk(rand_scores(), 1.5)


def test_infinite_scores_are_ordinary():
    s = {"w": torch.tensor([float("inf"), 1.0, -float("inf"), 0.0])}
    assert M.global_topk(s, 0.5)["w"].tolist() == [True, True, False, False]


@pytest.mark.parametrize("q", M.PAPER_SPARSITIES)
def test_layerwise_exact_per_layer(q):
    s = rand_scores(ties=True)
    m = M.layerwise_topk(s, q)
    for n, t in s.items():
        assert int((~m[n]).sum()) == math.floor(q * t.numel() + 0.5)


def test_collapse_warned_and_reported():
    s = {"big": torch.ones(10), "tiny": torch.full((3,), 1e-9)}
    with pytest.warns(RuntimeWarning, match="tiny"):
        m = M.global_topk(s, 0.2)
    assert M.collapsed_layers(m) == ["tiny"]
    rows = {r["name"]: r for r in M.sparsity_report(m)}
    assert rows["tiny"] == {"name": "tiny", "numel": 3, "kept": 0, "sparsity": 1.0}
    assert rows["big"]["kept"] == 10 and rows["big"]["sparsity"] == 0.0


def test_jaccard():
    a = {"x": torch.tensor([True, True, False, False])}
    b = {"x": torch.tensor([True, False, True, False])}
    assert M.jaccard(a, a) == 1.0
    assert M.jaccard(a, b) == pytest.approx(1 / 3)
    assert M.jaccard(a, b, over="pruned") == pytest.approx(1 / 3)
    assert M.jaccard(a, {"x": ~a["x"]}) == 0.0
    with pytest.raises(ValueError):
        M.jaccard(a, {"y": a["x"]})


# --------------------------------------------------------------------------------------
# applying masks
# --------------------------------------------------------------------------------------


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3)
    )


def half_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    scores = {
        n: p.detach().abs() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1
    }
    return M.global_topk(scores, 0.5)


def hook_counts(model):
    return [(len(m._forward_pre_hooks), len(m._forward_hooks)) for m in model.modules()] + [
        len(p._backward_hooks or {}) for p in model.parameters()
    ]


def train_steps(model, opt, steps=5, check=None):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 3, 5, 5, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if check:
            check()


def test_apply_masks_sgd_momentum_weight_decay_keeps_zeros():
    model = net()
    masks = half_masks(model)
    before = hook_counts(model)
    handle = M.apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def check():
        for n, m in masks.items():
            p = model.get_parameter(n)
            assert torch.all(p[~m] == 0), n
            assert torch.all(p.grad[~m] == 0), n
            assert torch.all(opt.state[p]["momentum_buffer"][~m] == 0), n

    train_steps(model, opt, check=check)
    assert any(
        not torch.equal(model.get_parameter(n)[m], torch.zeros(int(m.sum()))) for n, m in masks.items()
    )
    M.remove_masks(model, handle)
    assert hook_counts(model) == before
    for n, m in masks.items():
        assert torch.all(model.get_parameter(n)[~m] == 0)
    assert isinstance(model[0].weight, nn.Parameter) and "0.weight" in dict(model.named_parameters())


def test_apply_masks_with_stale_momentum_and_adamw():
    """A momentum buffer from dense training revives nothing the forward or the baked model sees."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    train_steps(model, opt, steps=2)  # dense: non-zero momentum everywhere
    masks = half_masks(model)
    M.apply_masks(model, masks)
    seen = []
    h = model[0].register_forward_pre_hook(
        lambda mod, a: seen.append(bool(torch.all(mod.weight[~masks["0.weight"]] == 0)))
    )
    train_steps(model, opt, steps=3)
    h.remove()
    assert seen and all(seen)
    M.remove_masks(model, masks)  # by masks dict: the handle is found from the model
    assert all(torch.all(model.get_parameter(n)[~m] == 0) for n, m in masks.items())
    assert hook_counts(model) == hook_counts(net())

    model = net()
    masks = half_masks(model)
    handle = M.apply_masks(model, masks)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    train_steps(
        model,
        opt,
        check=lambda: [
            torch.all(model.get_parameter(n)[~m] == 0) or pytest.fail(n) for n, m in masks.items()
        ],
    )
    M.remove_masks(model, handle, bake=False)


def test_apply_twice_refused_and_prune():
    model = net()
    masks = half_masks(model)
    M.apply_masks(model, masks)
    with pytest.raises(RuntimeError):
        M.apply_masks(model, masks)
    M.remove_masks(model)
    fresh = net()
    M.prune_(fresh, masks)
    for n, m in masks.items():
        p = fresh.get_parameter(n)
        assert torch.all(p[~m] == 0) and torch.equal(p[m], net().get_parameter(n)[m])
    with pytest.raises(ValueError, match="shape"):
        M.prune_(fresh, {"0.weight": torch.ones(2, dtype=torch.bool)})


# --------------------------------------------------------------------------------------
# storage
# --------------------------------------------------------------------------------------


def test_pack_roundtrip_odd_sizes():
    g = torch.Generator().manual_seed(3)
    masks = {
        f"l{i}": torch.rand(s, generator=g) > 0.5
        for i, s in enumerate([(1,), (7,), (3, 5), (2, 3, 3, 3), (9,)])
    }
    packed = M.pack(masks)
    assert packed["l1"].dtype == torch.uint8 and packed["l1"].numel() == 1
    assert packed["l3"].numel() == math.ceil(54 / 8)
    out = M.unpack(packed)
    assert list(out) == list(masks)
    assert all(torch.equal(out[n], masks[n]) for n in masks)


def test_docstring_examples():
    import doctest

    result = doctest.testmod(M)
    assert result.attempted >= 2 and result.failed == 0


# --------------------------------------------------------------------------------------
# ties by magnitude, many sparsities at once, prunable subsets
# --------------------------------------------------------------------------------------


def _reference_removed(scores, tiebreak, k, names=None):
    """Brute force: sort every (score, tiebreak, sorted-name position, flat index), remove the first k."""
    names = sorted(scores) if names is None else sorted(names)
    keys = []
    for j, n in enumerate(names):
        s = scores[n].reshape(-1).tolist()
        t = tiebreak[n].reshape(-1).tolist() if tiebreak is not None else [0.0] * len(s)
        keys += [(s[i], t[i], j, i, n) for i in range(len(s))]
    gone = sorted(keys)[:k]
    out = {n: torch.ones_like(v, dtype=torch.bool).reshape(-1) for n, v in scores.items()}
    for *_, i, n in gone:
        out[n][i] = False
    return {n: out[n].view(scores[n].shape) for n in scores}


def test_ties_broken_by_magnitude_before_names():
    s = {"b": torch.zeros(3), "a": torch.zeros(2)}  # all tied
    mag = {"b": torch.tensor([0.1, 5.0, 0.2]), "a": torch.tensor([3.0, 0.05])}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = M.global_topk(s, 0.6, tiebreak=mag)  # remove 3: the smallest |θ|: a[1], b[0], b[2]
    assert m["a"].tolist() == [True, False] and m["b"].tolist() == [False, True, False]
    # equal magnitudes too: sorted names, then flat index
    with pytest.warns(RuntimeWarning, match="collapse"):
        m2 = M.global_topk(s, 0.4, tiebreak={"b": torch.ones(3), "a": torch.ones(2)})
    assert m2["a"].tolist() == [False, False] and m2["b"].tolist() == [True, True, True]
    with pytest.raises(ValueError, match="tiebreak"):
        M.global_topk(s, 0.4, tiebreak={"a": torch.ones(2)})


@pytest.mark.parametrize("ties", [False, True])
def test_many_sparsities_from_one_partition_match_one_at_a_time_and_brute_force(ties):
    s = rand_scores(seed=4, ties=ties)
    g = torch.Generator().manual_seed(5)
    tb = {n: torch.randint(0, 3, t.shape, generator=g).double() for n, t in s.items()}  # ties in |θ| too
    qs = [*M.PAPER_SPARSITIES, 0.0, 1.0, 0.5]
    total = sum(t.numel() for t in s.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        many = M.global_topk_many(s, qs, tiebreak=tb)
        for q, m in zip(qs, many, strict=True):
            one = M.global_topk(s, q, tiebreak=tb)
            ref = _reference_removed(s, tb, M.n_remove(q, total))
            assert all(torch.equal(m[n], one[n]) and torch.equal(m[n], ref[n]) for n in s), q
            assert list(m) == list(s)


def test_eligible_tensors_alone_lose_weights_counted_over_all():
    s = rand_scores(seed=6)
    total = sum(t.numel() for t in s.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = M.global_topk(s, 0.3, eligible=["conv.weight", "fc.weight"])
    assert bool(m["b.weight"].all())
    assert n_removed(m) == math.floor(0.3 * total + 0.5)
    ref = _reference_removed(
        {n: s[n] for n in ("conv.weight", "fc.weight")}, None, math.floor(0.3 * total + 0.5)
    )
    assert all(torch.equal(m[n], ref[n]) for n in ref)
    with pytest.raises(ValueError, match="prunable layers hold only 13"):
        M.global_topk(s, 0.5, eligible=["b.weight"])
    lw = M.layerwise_topk(s, 0.3, eligible=["conv.weight", "fc.weight"])
    assert bool(lw["b.weight"].all())
    eligible_total = s["conv.weight"].numel() + s["fc.weight"].numel()
    for n in ("conv.weight", "fc.weight"):
        assert int((~lw[n]).sum()) == math.floor(0.3 * total / eligible_total * s[n].numel() + 0.5)


def test_pack_keeps_its_bit_format():
    """Most significant bit first, zero-padded: what earlier caches and downloads hold."""
    m = {"x": torch.tensor([True, False, True, True, False, False, False, True, True, False])}
    packed = M.pack(m)
    assert packed["x"].tolist() == [0b10110001, 0b10000000]
    assert torch.equal(M.unpack(packed)["x"], m["x"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signed_scores_zero_signs_and_infinities_select_like_floats(dtype):
    """Selection runs on integer keys of the floats: order and equality must be the floats'."""
    g = torch.Generator().manual_seed(7)
    vals = torch.tensor([-0.0, 0.0, -1.5, 1.5, float("inf"), -float("inf"), -1e-30, 1e-30], dtype=dtype)
    s = {"w": vals[torch.randint(0, len(vals), (200,), generator=g)]}
    tb = {"w": torch.rand(200, generator=g, dtype=torch.float64)}
    for q in (0.1, 0.3, 0.5, 0.77):
        got = M.global_topk(s, q, tiebreak=tb)
        ref = _reference_removed(s, tb, M.n_remove(q, 200))
        assert torch.equal(got["w"], ref["w"]), q
