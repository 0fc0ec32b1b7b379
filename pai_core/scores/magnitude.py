"""Data-free scores: weight magnitude and the random baseline."""

from __future__ import annotations

import torch

from ._base import ScoreCall, Scores
from ._registry import register_score


@register_score("magnitude", label="magnitude", data_driven=False, color="#E69F00", order=0)
def magnitude_score(c: ScoreCall) -> Scores:
    """``S_j = θ_j²``: Eq. (3) with the isotropic Hessian H = I (Occhiena et al., 2025, arXiv:2509.24066).

    The OBD/OBS saliency ``θ_j² / [H⁻¹]_jj`` with ``H = I``; ranking by ``θ²`` is ranking by
    ``|θ|``.

    Reference:
        Occhiena, Iurada & Tommasi, "A Second-Order Perspective on Pruning at Initialization and
        Knowledge Transfer", arXiv:2509.24066 (2025), Eq. (3) and Sec. 3.2.

    Example:
        >>> from torch import nn
        >>> from pai_core.scores import compute
        >>> net = nn.Linear(2, 1, bias=False)
        >>> _ = net.weight.data.copy_(torch.tensor([[-3.0, 0.5]]))
        >>> compute("magnitude", net, None)["weight"]
        tensor([[9.0000, 0.2500]])
    """
    return {n: p.detach() ** 2 for n, p in c.named.items()}


@register_score("random", label="random", data_driven=False, stochastic=True, color="#000000", order=8)
def random_score(c: ScoreCall, *, seed: int = 0) -> Scores:
    """``S_j ~ U[0, 1)`` i.i.d. from the run's seed: the baseline every score must beat.

    Drawn on a CPU generator seeded with ``seed``, names in sorted order, so the same seed gives
    the same scores on every device and whatever the order of the parameters.
    """
    gen = torch.Generator().manual_seed(int(seed))
    draws = {n: torch.rand(c.named[n].shape, generator=gen, dtype=torch.float64) for n in sorted(c.named)}
    return {n: draws[n].to(device=p.device, dtype=p.dtype) for n, p in c.named.items()}
