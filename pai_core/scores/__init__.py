"""Saliency scores for pruning at initialisation (higher = keep), and their registry.

Every score is a function of ``(model, batches, options)`` that returns one tensor per scored
parameter, keyed by its name in ``model.named_parameters()``, with the parameter's shape.
:func:`available` lists the names, :func:`info` says everything about one (label, formula and
paper, data, seed, refused architectures, options), :func:`compute` validates and dispatches.

Layout (one module per family, as in curvlinops):

* :mod:`~pai_core.scores._base`: the loss, the data, which weights are scored
  (:func:`default_params`: every weight matrix), the model's state, BatchNorm warm-up, what a
  score's pass saw (:class:`Coverage`);
* :mod:`~pai_core.scores._sites`: where the forward pass applies a weight (modules,
  ``F.multi_head_attention_forward``, ``x @ proj``), found by a torch-function mode;
* :mod:`~pai_core.scores.hooks`: per-example gradients and K-FAC factor sums at those sites from
  one backward pass, with a probe that places each example's rows and proves coverage;
* :mod:`~pai_core.scores.magnitude` (magnitude, random), :mod:`~pai_core.scores.fisher`
  (SNIP, diagonal empirical Fisher, Fisher–Taylor), :mod:`~pai_core.scores.kfac` (K-FAC factors,
  reduce or expand, and the block score), :mod:`~pai_core.scores.hessian` (GraSP, Hutchinson),
  :mod:`~pai_core.scores.px` (PX), :mod:`~pai_core.scores.synflow` (SynFlow);
* :mod:`~pai_core.scores._registry`: :func:`register_score`, the metadata types, and
  :func:`compute`, which refuses a silent zero and hands scores a diagnostics dict.

Adding a score is one file: a function of a :class:`ScoreCall` (model, data, scored parameters,
loss, progress) and its options, whose docstring opens with the formula and the paper, decorated
with :func:`register_score`; import the module (here, for built-ins) and the CLI, sweeps, figures
and the dashboard pick it up.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> data = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
    >>> s = compute("diag", net, data)
    >>> sorted(s), s["0.weight"].shape
    (['0.weight', '2.weight'], torch.Size([8, 4]))
    >>> info("kfac").option("damping").default, info("hutchinson").stochastic
    (0.001, True)
"""

from __future__ import annotations

# The family modules register their scores on import; the order of the imports does not
# matter (ScoreInfo.order sets the display order).
from . import fisher, hessian, kfac, magnitude, px, synflow  # noqa: F401
from ._base import (
    BN_WARMUP_MODES,
    LOSSES,
    Batches,
    Coverage,
    Named,
    ScoreCall,
    Scores,
    default_params,
    per_example_loss,
    warmup_batchnorm,
)
from ._registry import (
    BN_WARMUP,
    ScoreFn,
    ScoreInfo,
    ScoreOption,
    available,
    compute,
    info,
    infos,
    register_score,
)
from .kfac import APPROX, SCALE_EXAMPLES, KFactors, kfac_factors, resolve_approx

__all__ = [
    # registry
    "available",
    "compute",
    "info",
    "infos",
    "register_score",
    "ScoreFn",
    "ScoreCall",
    "ScoreInfo",
    "ScoreOption",
    "BN_WARMUP",
    # conventions shared by every score
    "LOSSES",
    "BN_WARMUP_MODES",
    "Batches",
    "Named",
    "Scores",
    "Coverage",
    "default_params",
    "per_example_loss",
    "warmup_batchnorm",
    # curvature building blocks (tests, benchmarks)
    "KFactors",
    "kfac_factors",
    "resolve_approx",
    "APPROX",
    "SCALE_EXAMPLES",
]
