"""Hessian-vector scores: GraSP (Hessian-gradient product) and Hutchinson's diagonal estimate.

Both differentiate twice (double backward over the data), so they force PyTorch's math
attention kernel: the fused ones have no second derivative.
"""

from __future__ import annotations

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


@register_score("grasp", label="GraSP", data_driven=True, color="#D55E00", order=4)
def grasp_score(c: ScoreCall) -> Scores:
    """``S = θ ⊙ Hg``, ``g = ∇L``, ``H = ∇²L``: keeps what preserves gradient flow
    (Wang et al., 2020, arXiv:2002.07376).

    GraSP removes the weights with the *largest* ``S(−θ) = −θ ⊙ Hg``.  As a "higher = keep"
    score we return ``−S(−θ) = θ ⊙ Hg``: a weight with large positive ``θ ⊙ Hg`` is kept.
    ``Hg`` is one exact full-data Hessian-vector product (double backward).

    Reference:
        Wang, Zhang & Grosse, "Picking Winning Tickets Before Training by Preserving Gradient
        Flow", ICLR (2020), arXiv:2002.07376.

    Example (one weight ``θ = 2``, ``x = 1``, ``C = 1``, label 0, so ``L = (θ − 1)²``,
    ``g = 2(θ − 1) = 2``, ``H = 2``, ``θ ⊙ Hg = 8``):

        >>> import torch
        >>> from torch import nn
        >>> from pai_core.scores import compute
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = net.weight.data.fill_(2.0)
        >>> compute("grasp", net, [(torch.ones(1, 1), torch.tensor([0]))])["weight"]
        tensor([[8.]])
    """
    total = 2 * _num_batches(c.batches)
    with _scoring_state(c.model, c.named.values()), _math_attention():
        g, n = _grad_full(c, "grasp: gradient", total=total)
        (hg,), _ = _hvp_pass(c, [g], "grasp: Hessian-gradient product", total // 2, total)
    return {name: p.detach() * h / n for (name, p), h in zip(c.named.items(), hg)}


@register_score(
    "hutchinson",
    label="diagonal Hessian (Hutchinson)",
    data_driven=True,
    stochastic=True,
    options=(
        ScoreOption(
            "probes", int, 10, min=1, max=10_000, help="Rademacher probes K: error ∝ 1/√K, cost ∝ K."
        ),
    ),
    color="#F0E442",
    order=6,
)
def hutchinson_score(c: ScoreCall, *, probes: int = 10, seed: int = 0) -> Scores:
    """``S_j = θ_j² · diag(H)_j``, ``diag(H) ≈ (1/K) Σ_k z_k ⊙ H z_k`` with Rademacher probes ``z_k``
    (Hutchinson, 1989; Gollini Navarrete et al., 2025, arXiv:2502.11450).

    ``H = ∇²L`` is the Hessian of the full-data loss w.r.t. the scored parameters; each probe
    ``z_k`` is drawn once (generator seeded from ``seed``) and used for every batch, so
    ``H z_k = Σ_b H_b z_k / N`` is the exact full-data HVP (double backward).  The estimate is
    unbiased (``E[z ⊙ Hz] = diag(H)`` for Rademacher ``z``); unlike the empirical Fisher it
    keeps the Hessian's sign (it may be negative away from a minimum).

    References:
        Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines", Communications in Statistics - Simulation and Computation (1989).
        Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix", Applied
        Numerical Mathematics (2007).
        Gollini Navarrete et al., "What Scalable Second-Order Information Knows for Pruning at
        Initialization", arXiv:2502.11450 (2025).
    """
    params = list(c.named.values())
    base = torch.Generator().manual_seed(int(seed))
    probe_seeds = torch.randint(0, 2**62, (probes,), generator=base).tolist()
    diag = [torch.zeros_like(p) for p in params]
    # Probes in blocks so that a block's Rademacher vectors fit in memory next to one batch's
    # double-backward graph; each block re-runs the data pass.
    block = max(1, min(probes, (1 << 26) // max(sum(p.numel() for p in params), 1)))
    nblocks = math.ceil(probes / block)
    per = _num_batches(c.batches)
    n = 0
    with _scoring_state(c.model, params), _math_attention():
        for j, lo in enumerate(range(0, probes, block)):
            zs = [_rademacher(params, s) for s in probe_seeds[lo : lo + block]]
            hzs, n = _hvp_pass(
                c, zs, f"hutchinson: probes {lo + 1}-{lo + len(zs)} of {probes}", j * per, nblocks * per
            )
            for z, hz in zip(zs, hzs):
                for d, zi, hi in zip(diag, z, hz):
                    d += zi * hi
    if n == 0:
        raise ValueError("batches is empty")
    return {name: p.detach() ** 2 * d / (n * probes) for (name, p), d in zip(c.named.items(), diag)}


def _rademacher(params: list[Tensor], seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(device=p.device, dtype=p.dtype)
        for p in params
    ]
