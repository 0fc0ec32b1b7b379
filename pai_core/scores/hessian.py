"""Hessian-vector scores: GraSP (Hessian-gradient product) and Hutchinson's diagonal estimate.

Both differentiate twice (double backward over the data), so they force PyTorch's math
attention kernel: the fused ones have no second derivative.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from ._base import (
    ScoreCall,
    Scores,
    _batches,
    _grad_full,
    _loss_sum,
    _math_attention,
    _num_batches,
    _scoring_state,
)
from ._registry import ScoreOption, register_score


def _hvp_pass(
    c: ScoreCall, vectors: list[list[Tensor]], label: str, done: int, total: int
) -> tuple[list[list[Tensor]], int]:
    """``(Σ_b H_b v for v in vectors, N)``, ``H_b`` the Hessian of batch b's summed loss (double backward)."""
    params = list(c.named.values())
    outs = [[torch.zeros_like(p) for p in params] for _ in vectors]
    # vmap over the double backward (is_grads_batched) is much faster than a loop for matmul
    # networks, but its convolution rules are slower than looping (measured: 3x on a 32x32 CNN,
    # 70x on EfficientNet-Lite0), so conv nets loop over the vectors.
    batched = not any(isinstance(m, nn.modules.conv._ConvNd) for m in c.model.modules())
    n = 0
    for x, y in _batches(c.batches, c.model):
        n += x.shape[0]
        gs = torch.autograd.grad(
            _loss_sum(c.model(x), y, c.loss), params, create_graph=True, allow_unused=True
        )
        # A gradient that does not depend on the parameters (None / constant) has zero Hessian rows.
        live = [i for i, g in enumerate(gs) if g is not None and g.requires_grad]
        if live:
            for k, hv in enumerate(
                _vjps(
                    [gs[i] for i in live],
                    [params[i] for i in live],
                    [[v[i] for i in live] for v in vectors],
                    batched,
                )
            ):
                for i, h in zip(live, hv):
                    if h is not None:
                        outs[k][i] += h
        del gs
        done += 1
        c.report(done, total, label)
    return outs, n


def _vjps(
    outputs: list[Tensor], inputs: list[Tensor], vectors: list[list[Tensor]], batched: bool
) -> list[tuple]:
    """``[J(outputs→inputs)ᵀ v for v in vectors]``, in one vmapped backward if ``batched``."""
    if batched and len(vectors) > 1:
        try:  # one vmapped backward for all vectors; not every op has a batching rule
            stacked = [torch.stack([v[i] for v in vectors]) for i in range(len(inputs))]
            hv = torch.autograd.grad(
                outputs,
                inputs,
                grad_outputs=stacked,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
            return [tuple(None if h is None else h[k] for h in hv) for k in range(len(vectors))]
        except RuntimeError:
            pass
    return [
        torch.autograd.grad(outputs, inputs, grad_outputs=v, retain_graph=True, allow_unused=True)
        for v in vectors
    ]


class _Tempered(nn.Module):
    """``f(x)/T``: the model seen through a softmax temperature (shares the model's parameters)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature


@register_score(
    "grasp",
    label="GraSP",
    data_driven=True,
    options=(
        ScoreOption(
            "temperature",
            float,
            200.0,
            min=1e-3,
            max=1e6,
            help="T: the loss sees the outputs divided by T (200 in the GraSP paper and code, SynFlow's "
            "code and the transfer paper's authors' code; 1: no temperature).",
        ),
    ),
    color="#D55E00",
    order=4,
)
def grasp_score(c: ScoreCall, *, temperature: float = 200.0) -> Scores:
    """``S = θ ⊙ H_T g_T``, ``g_T = ∇L_T``, ``H_T = ∇²L_T``, ``L_T`` the loss of the outputs divided
    by a temperature ``T`` (default 200): keeps what preserves gradient flow (Wang et al., 2020,
    arXiv:2002.07376).

    ``L_T(θ) = (1/N) Σ_i ℓ(f(x_i; θ)/T, y_i)``.  GraSP removes the weights with the *largest*
    ``S(−θ) = −θ ⊙ H_T g_T``.  As a "higher = keep" score we return ``−S(−θ) = θ ⊙ H_T g_T``: a
    weight with large positive ``θ ⊙ H_T g_T`` is kept.  ``H_T g_T`` is one exact full-data
    Hessian-vector product (double backward).  The temperature is the paper's (Sec. 5: "we
    divide the outputs by T = 200"), also used by its code, by Synaptic-Flow's GraSP and by the
    transfer paper's authors; it changes the ranking, not only the scale.  The authors' normalisation by ``|Σ S|`` is left
    out: it does not change the ranking.

    Reference:
        Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving Gradient
        Flow", ICLR (2020), arXiv:2002.07376.

    Example (one weight ``θ = 2``, ``x = 1``, ``C = 1``, label 0, ``T = 1``, so ``L = (θ − 1)²``,
    ``g = 2(θ − 1) = 2``, ``H = 2``, ``θ ⊙ Hg = 8``):

        >>> import torch
        >>> from torch import nn
        >>> from pai_core.scores import compute
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = net.weight.data.fill_(2.0)
        >>> compute("grasp", net, [(torch.ones(1, 1), torch.tensor([0]))], temperature=1)["weight"]
        tensor([[8.]])
    """
    if temperature != 1:
        c = dataclasses.replace(c, model=_Tempered(c.model, float(temperature)))
    total = 2 * _num_batches(c.batches)
    with _scoring_state(c.model, c.named.values()), _math_attention():
        g, n = _grad_full(c, "grasp: gradient", total=total)
        (hg,), _ = _hvp_pass(c, [g], "grasp: Hessian-gradient product", total // 2, total)
    return {name: p.detach() * h / n for (name, p), h in zip(c.named.items(), hg)}


@register_score(
    "hutchinson",
    label="diagonal Hessian (Hutchinson)",
    description=(
        "S_j = θ_j² · diag(H)_j with diag(H) estimated by Rademacher probes, fresh per example "
        "(Hutchinson, 1989; Gollini Navarrete et al., 2025, arXiv:2502.11450). Noisy: at the defaults "
        "(10 probes per example) two seeds' scores on EfficientNet-Lite0 + digits 0-4 (250 images) "
        "correlate at Spearman 0.003 and their 59.04 % masks overlap at Jaccard 0.34 "
        "(bench/bench_hutchinson.py): the ranking is mostly noise there, at 184x a forward+backward."
    ),
    data_driven=True,
    stochastic=True,
    options=(
        ScoreOption(
            "probes",
            int,
            10,
            min=1,
            max=10_000,
            help="Rademacher probes K per probe group: error ∝ 1/√(K · groups), cost ∝ K.",
        ),
        ScoreOption(
            "probe_batch",
            int,
            1,
            min=0,
            max=100_000,
            help="Examples per probe group (fresh probes for each group): 1 = per example (the "
            "scalable second-order paper's code), b = per b examples, 0 = one group for all the data "
            "(one exact full-data Hessian-vector product per probe).",
        ),
    ),
    color="#F0E442",
    order=6,
)
def hutchinson_score(c: ScoreCall, *, probes: int = 10, probe_batch: int = 1, seed: int = 0) -> Scores:
    """``S_j = θ_j² · diag(H)_j``, ``diag(H) ≈ (1/N) Σ_g (1/K) Σ_k z_gk ⊙ H_g z_gk`` with fresh
    Rademacher probes per group of examples (Hutchinson, 1989; Gollini Navarrete et al., 2025,
    arXiv:2502.11450).

    ``H = ∇²L = (1/N) Σ_g H_g`` is the Hessian of the full-data loss w.r.t. the scored parameters,
    ``H_g`` that of the summed loss of group ``g`` (``probe_batch`` consecutive examples of a data
    batch; ``probe_batch = 0``: one group, all the data).  Each group draws its own ``K`` probes
    (``probes``); every ``H_g z`` is an exact double backward.  The estimate is unbiased
    (``E[z ⊙ H_g z] = diag(H_g)`` for Rademacher ``z``) with variance
    ``Var_j = (1/(N²K)) Σ_g Σ_{l≠j} (H_g)_jl²``: fresh probes per example (``probe_batch = 1``, the
    scalable paper's code: its mask batch size is 1) average ``N·K`` independent draws, where one
    shared group averages ``K``, at the same count of Hessian-vector products.  Unlike the
    empirical Fisher it keeps the Hessian's sign (it may be negative away from a minimum).

    The spread of the estimator is reported in ``diagnostics``: per weight the standard error
    ``SE_j`` of the estimate from the probes' replicates (within groups when ``K ≥ 2``; with
    ``K = 1`` from the spread across groups, an upper bound since it also counts how the groups'
    Hessians differ), summarised as ``hutchinson_rel_se_median`` (median of ``SE_j/|Ŝ_j|`` over
    weights with a non-zero estimate) and ``hutchinson_significant_share`` (share of those with
    ``|Ŝ_j| > 2 SE_j``).

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines", Communications in Statistics - Simulation and Computation (1989).
        Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix", Applied
        Numerical Mathematics (2007).
        Gollini Navarrete et al., "What Scalable Second-Order Information Knows for Pruning at
        Initialization", arXiv:2502.11450 (2025).
    """
    params = list(c.named.values())
    seeds = torch.Generator().manual_seed(int(seed))

    def draw() -> list[Tensor]:
        return _rademacher(params, int(torch.randint(0, 2**62, (1,), generator=seeds)))

    # Per weight: s1 = Σ_g Ȳ_g (the estimate × N); for the spread, within-group sums of squares
    # (K ≥ 2) or Σ_g Ȳ_g² across groups (K = 1); Ȳ_g = (1/K) Σ_k z_gk ⊙ H_g z_gk.
    s1 = [torch.zeros_like(p) for p in params]
    s2 = [torch.zeros_like(p) for p in params]
    groups = n = 0
    with _scoring_state(c.model, params), _math_attention():
        if probe_batch == 0:
            n = _hutchinson_shared(c, params, probes, draw, s1, s2)
            groups = 1
        else:
            total = _num_batches(c.batches)
            for b, (x, y) in enumerate(_batches(c.batches, c.model)):
                for lo in range(0, x.shape[0], probe_batch):
                    xs, ys = x[lo : lo + probe_batch], y[lo : lo + probe_batch]
                    zs = [draw() for _ in range(probes)]
                    hzs = _group_hvps(c, params, xs, ys, zs)
                    _accumulate(zs, hzs, s1, s2, probes)
                    groups += 1
                    n += xs.shape[0]
                c.report(b + 1, total, f"hutchinson: {probes} probe(s) per {probe_batch} example(s)")
    if n == 0:
        raise ValueError("batches is empty")
    est = [a / n for a in s1]
    # Var(Σ_g Ȳ_g) = Σ_g Var(Ȳ_g): within groups s2 holds Σ_g Σ_k (Y − Ȳ_g)², so
    # Var(Ȳ_g) ≈ that / (K (K − 1)); across groups (K = 1) s2 holds Σ_g Ȳ_g², and the spread
    # of the Ȳ_g around their mean stands in for each one's variance.
    if probes >= 2:
        var_sum = [q / (probes * (probes - 1)) for q in s2]
        kind = "within groups"
    elif groups >= 2:
        var_sum = [(q - a * a / groups) * groups / (groups - 1) for q, a in zip(s2, s1)]
        kind = "across groups (upper bound)"
    else:
        var_sum, kind = None, "none (one group, one probe)"
    c.diagnostics["hutchinson_groups"] = groups
    c.diagnostics["hutchinson_probes_per_group"] = probes
    c.diagnostics["hutchinson_se_from"] = kind
    if var_sum is not None:
        rel, sig = _spread(est, [v.clamp_min(0).sqrt() / n for v in var_sum])
        c.diagnostics["hutchinson_rel_se_median"] = rel
        c.diagnostics["hutchinson_significant_share"] = sig
    return {name: p.detach() ** 2 * d for (name, p), d in zip(c.named.items(), est)}


def _group_hvps(
    c: ScoreCall, params: list[Tensor], x: Tensor, y: Tensor, zs: list[list[Tensor]]
) -> list[list[Tensor | None]]:
    """``[H_g z for z in zs]``, ``H_g`` the Hessian of the summed loss of ``(x, y)``."""
    gs = torch.autograd.grad(_loss_sum(c.model(x), y, c.loss), params, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(gs) if g is not None and g.requires_grad]
    out: list[list[Tensor | None]] = [[None] * len(params) for _ in zs]
    if live:
        batched = not any(isinstance(m, nn.modules.conv._ConvNd) for m in c.model.modules())
        for k, hv in enumerate(
            _vjps(
                [gs[i] for i in live], [params[i] for i in live], [[z[i] for i in live] for z in zs], batched
            )
        ):
            for i, h in zip(live, hv):
                out[k][i] = h
    return out


def _accumulate(
    zs: list[list[Tensor]], hzs: list[list[Tensor | None]], s1: list[Tensor], s2: list[Tensor], probes: int
) -> None:
    """Add one group's ``Ȳ_g`` to ``s1`` and its spread term to ``s2`` (see hutchinson_score)."""
    for i in range(len(s1)):
        ys = [z[i] * h[i] for z, h in zip(zs, hzs) if h[i] is not None]
        if not ys:
            continue
        mean = sum(ys) / probes
        s1[i] += mean
        if probes >= 2:
            s2[i] += sum(v * v for v in ys) - probes * mean * mean
        else:
            s2[i] += mean * mean


def _hutchinson_shared(
    c: ScoreCall, params: list[Tensor], probes: int, draw, s1: list[Tensor], s2: list[Tensor]
) -> int:
    """One probe group for all the data: ``H z_k`` exact full-data HVPs (returns N).

    Probes in blocks so that a block's Rademacher vectors fit in memory next to one batch's
    double-backward graph; each block re-runs the data pass.
    """
    block = max(1, min(probes, (1 << 26) // max(sum(p.numel() for p in params), 1)))
    nblocks = math.ceil(probes / block)
    per = _num_batches(c.batches)
    total = [torch.zeros_like(p) for p in params]
    squares = [torch.zeros_like(p) for p in params]
    n = 0
    for j, lo in enumerate(range(0, probes, block)):
        zs = [draw() for _ in range(lo, min(probes, lo + block))]
        hzs, n = _hvp_pass(
            c, zs, f"hutchinson: probes {lo + 1}-{lo + len(zs)} of {probes}", j * per, nblocks * per
        )
        for z, hz in zip(zs, hzs):
            for i, (zi, hi) in enumerate(zip(z, hz)):
                y = zi * hi
                total[i] += y
                squares[i] += y * y
    for i in range(len(params)):
        mean = total[i] / probes
        s1[i] += mean
        s2[i] += squares[i] - probes * mean * mean if probes >= 2 else mean * mean
    return n


def _spread(est: list[Tensor], se: list[Tensor]) -> tuple[float, float]:
    """(median of SE/|est|, share with |est| > 2 SE) over the weights with a non-zero estimate."""
    e = torch.cat([t.reshape(-1) for t in est]).abs().double()
    s = torch.cat([t.reshape(-1) for t in se]).double()
    nz = e > 0
    if not nz.any():
        return float("nan"), 0.0
    ratio = s[nz] / e[nz]
    return float(ratio.median()), float((e[nz] > 2 * s[nz]).double().mean())


def _rademacher(params: list[Tensor], seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(device=p.device, dtype=p.dtype)
        for p in params
    ]
