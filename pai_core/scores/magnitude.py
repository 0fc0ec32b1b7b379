"""Data-free scores: weight magnitude and the random baseline."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ._base import Batches, Named, Scores
from ._registry import register_score

if TYPE_CHECKING:
    from ..results import Progress


@register_score(
    "magnitude",
    label="magnitude",
    description="θ²: Eq. (3) with the isotropic Hessian H = I (Occhiena et al., 2025, arXiv:2509.24066)",
    data_driven=False,
    color="#E69F00",
    order=0,
)
def magnitude_score(
    model: nn.Module, batches: Batches | None, named: Named, loss: str, progress: Progress | None
) -> Scores:
    """``S_j = θ_j²``: the OBD/OBS saliency ``θ_j² / [H⁻¹]_jj`` of Eq. (3) with ``H = I``.

    Reference: Occhiena, Iurada & Tommasi, "A Second-Order Perspective on Pruning at
    Initialization and Knowledge Transfer", arXiv:2509.24066 (2025), Sec. 3.2 (the isotropic
    case of Eq. (3); ranking by ``θ²`` is ranking by ``|θ|``).

    Example:
        >>> from torch import nn
        >>> from pai_core.scores import compute
        >>> net = nn.Linear(2, 1, bias=False)
        >>> _ = net.weight.data.copy_(torch.tensor([[-3.0, 0.5]]))
        >>> compute("magnitude", net, None)["weight"]
        tensor([[9.0000, 0.2500]])
    """
    return {n: p.detach() ** 2 for n, p in named.items()}


@register_score(
    "random",
    label="random",
    description="uniform noise in [0, 1) from the run's seed (the baseline every score must beat)",
    data_driven=False,
    stochastic=True,
    color="#000000",
    order=8,
)
def random_score(
    model: nn.Module,
    batches: Batches | None,
    named: Named,
    loss: str,
    progress: Progress | None,
    *,
    seed: int = 0,
) -> Scores:
    """``S_j ~ U[0, 1)`` i.i.d., drawn on a CPU generator seeded with ``seed`` (names in sorted order).

    The same seed gives the same scores on every device and whatever the order of ``named``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    draws = {n: torch.rand(named[n].shape, generator=gen, dtype=torch.float64) for n in sorted(named)}
    return {n: draws[n].to(device=p.device, dtype=p.dtype) for n, p in named.items()}
