"""SynFlow: iterative synaptic-flow pruning, the data-agnostic baseline both papers cite."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..layers import is_activation
from ._base import ScoreCall, Scores, _scoring_state
from ._registry import register_score
from .px import _ChannelAffine, _replace_modules

#: SynFlow's paper prunes in 100 rounds (exponential schedule); ``ExperimentSpec.rounds`` defaults to it.
ROUNDS = 100


def _linearize(model: nn.Module) -> nn.Module:
    """The positive linear network of the synaptic flow: a float64 copy with ``|θ|`` for every
    parameter, identity activations, and every BatchNorm with running statistics as its folded
    per-channel map ``|a|·x + |c|`` (``a = γ/σ``, ``c = β − γμ/σ``)."""
    net = copy.deepcopy(model).double()
    acts = [n for n, m in net.named_modules() if n and is_activation(m)]
    _replace_modules(net, acts, lambda _n: nn.Identity())
    for name, m in list(net.named_modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            with torch.no_grad():
                a = torch.rsqrt(m.running_var + m.eps)
                if m.weight is not None:
                    a = a * m.weight
                c = -a * m.running_mean + (m.bias if m.bias is not None else 0.0)
            _replace_modules(net, [name], lambda _n, a=a, c=c: _ChannelAffine(a.abs(), c.abs()))
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    return net


@register_score("synflow", label="SynFlow", data_driven=False, color="#999999", order=7, rounds=ROUNDS)
def synflow_score(c: ScoreCall) -> Scores:
    """``S = θ ⊙ ∂R/∂θ``, ``R = 1ᵀ(Π_l |W^l|)1`` the synaptic flow, pruned iteratively (100 rounds)
    (Tanaka et al., NeurIPS 2020, arXiv:2006.05467).

    ``R`` is the sum of the outputs of the network with every parameter replaced by its absolute
    value and fed an all-ones input (Synaptic-Flow's ``linearize``); the score of weight ``j`` is
    ``|θ_j · ∂R/∂θ_j|`` (the reference code's ``|θ ⊙ g|``; on a network without normalisation
    layers ``g ≥ 0`` and it is ``|θ_j|·∂R/∂|θ_j|``), returned divided by ``R`` (a common factor, so the ranking is the
    same; ``R`` reaches 1e45 on EfficientNet-Lite0, beyond float32) and ``R`` itself goes to
    ``diagnostics["synflow_R"]``.  No data is used: one batch only tells the input's shape.  SynFlow is
    iterative by definition: re-scoring the masked network after each of ``ROUNDS`` = 100 rounds of
    an exponential schedule (``ExperimentSpec.rounds``, which defaults to 100 for this score) is what
    avoids layer collapse; one round is the one-shot "SynFlow score", not SynFlow.

    ``R = 1ᵀ(Π|W|)1`` is a path sum through a *linear* network, so the surrogate (float64, a deep
    copy: the model is never touched) replaces every activation module by the identity and every
    eval-mode BatchNorm by its folded per-channel map ``|γ/σ|·x + |β − γμ/σ|``.  For a ReLU network
    without BatchNorm this is exactly the reference code (non-negative inputs pass a ReLU
    unchanged); the reference keeps the activations and applies ``|·|`` to the BatchNorm's running
    mean, which on ReLU6/hard-swish networks (EfficientNet-Lite0, MobileNetV2) clips or cuts the
    flow and zeroes most scores.

    Reference:
        Tanaka, Kunin, Yamins & Ganguli, "Pruning neural networks without any data by iteratively
        conserving synaptic flow", NeurIPS (2020), arXiv:2006.05467; code:
        github.com/ganguli-lab/Synaptic-Flow.

    Example (``R = |w₂|·|w₁| = 6`` for a 1-1-1 linear chain: ``S = (|w₁w₂|, |w₁w₂|)/R``):

        >>> from torch import nn
        >>> from pai_core.scores import compute
        >>> net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False))
        >>> _ = net[0].weight.data.fill_(-2.0); _ = net[2].weight.data.fill_(3.0)
        >>> s = compute("synflow", net, [(torch.zeros(1, 1), torch.tensor([0]))])
        >>> s["0.weight"].item(), s["2.weight"].item()
        (1.0, 1.0)
    """
    if c.batches is None:
        raise ValueError("synflow needs one batch to know the input's shape (its values are not used)")
    first = next(iter(c.batches), None)
    if first is None:
        raise ValueError("batches is empty")
    shape = tuple(first[0].shape[1:])
    net = _linearize(c.model)
    own = dict(net.named_parameters())
    leaves = [own[n] for n in c.named]
    device = leaves[0].device if leaves else torch.device("cpu")
    with _scoring_state(net, leaves):
        for p in net.parameters():
            if all(p is not q for q in leaves):
                p.requires_grad_(False)
        r = net(torch.ones(1, *shape, dtype=torch.float64, device=device)).sum()
        if not torch.isfinite(r):
            raise ValueError(
                "synflow overflowed: the synaptic flow R = 1ᵀ(Π|W|)1 of this network exceeds float64"
            )
        grads = torch.autograd.grad(r, leaves, allow_unused=True)
    r = float(r.detach())
    c.diagnostics["synflow_R"] = r
    out = {}
    for (n, p), q, g in zip(c.named.items(), leaves, grads):
        # Divided by R (a common factor: the ranking is unchanged) so that float32 holds them:
        # R reaches 1e45 on EfficientNet-Lite0 at 64 px.
        s = (q.detach() * g).abs() / abs(r) if g is not None else torch.zeros_like(q)
        out[n] = s.to(p.dtype)
    c.report(1, 1, "synflow")
    return out
