"""How aligned are two tasks' curvatures around θ₀?  P1's assumption, measured directly.

The paper's P1 rests on the source's and the transfer task's loss landscapes being aligned at
the pre-trained weights θ₀ (Fig. 1): then "parameters not important for D_s are also not
important for D_t".  Three measurements, per layer and overall, each equal to 1 for identical
tasks:

* **Diagonal empirical Fisher** ``F_j = E_i[(∂ℓ_i/∂θ_j)²]`` of each task (the curvature of the
  ``diag`` score, Sec. 3.2): Pearson and Spearman correlation between the tasks.
* **K-FAC factors** ``A`` (input second moments) and ``B`` (output-gradient second moments) of
  each layer (Eq. (5)): the principal angles between the spans of the top-``k`` eigenvectors
  of the two tasks' factors, summarised as the mean squared cosine
  ``‖U_sᵀU_t‖²_F / k ∈ [0, 1]`` (1: same subspace; ``k/d``: what two random ``k``-dimensional
  subspaces of ``ℝ^d`` give on average, reported beside it as ``chance``).
* **Masks**: the Jaccard overlap of the kept sets that each task's own data produce at a
  sparsity (the "oracle" mask on the transfer task, which the paper's Eq. (1) assumes, against
  the source's mask).

Everything here is a pure function of tensors; :mod:`pai_core.transfer_stages` computes the
inputs from an experiment's cached stages.

Example:
    >>> import torch
    >>> u = torch.eye(4)[:, :2]
    >>> principal_cosines(u, u).tolist()
    [1.0, 1.0]
    >>> round(subspace_overlap(u, torch.eye(4)[:, 2:]), 6)
    0.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from . import masks as masks_mod
from .scores import KFactors

__all__ = [
    # building blocks
    "fisher_from_diag_scores",
    "correlation",
    "principal_cosines",
    "top_eigvecs",
    "subspace_overlap",
    "Subspaces",
    "factor_subspaces",
    # comparisons
    "LayerAlignment",
    "Alignment",
    "compare",
    "DEFAULT_K",
]

#: Top eigenvectors compared per factor (at most half the factor's dimension, see `top_eigvecs`).
DEFAULT_K = 10


# --------------------------------------------------------------------------------------
# Diagonal Fisher
# --------------------------------------------------------------------------------------


def fisher_from_diag_scores(
    diag_scores: Mapping[str, Tensor], weights: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The diagonal empirical Fisher ``F = s / θ²`` from the ``diag`` score ``s = θ² · F``.

    The ``diag`` score (``pai_core.scores``) is cached per task by the experiment; dividing by
    ``θ²`` recovers ``F`` to the score's relative precision (a product, no cancellation).  Where
    ``θ = 0`` the score carries no information about ``F``: those entries are NaN, and
    :func:`correlation` leaves them out.

    Args:
        diag_scores: ``{name: θ² · F}``.
        weights: ``{name: θ}`` for (at least) the scored names, same shapes.

    Returns:
        ``{name: F}`` in float64, NaN where ``θ = 0``.

    Raises:
        ValueError: a scored name has no weight, or shapes differ.
    """
    missing = sorted(set(diag_scores) - set(weights))
    if missing:
        raise ValueError(f"no weights for the scored tensors {missing[:3]}")
    out = {}
    for n, s in diag_scores.items():
        w = weights[n].detach().double().cpu()
        if tuple(s.shape) != tuple(w.shape):
            raise ValueError(f"{n}: score shape {tuple(s.shape)} differs from weight shape {tuple(w.shape)}")
        th2 = w * w
        out[n] = torch.where(th2 > 0, s.detach().double().cpu() / th2.clamp_min(1e-300), torch.nan)
    return out


def correlation(a: Tensor, b: Tensor) -> tuple[float, float, int]:
    """``(Pearson, Spearman, n)`` of two equally shaped tensors over the entries finite in both.

    Spearman uses average ranks for ties (``scipy.stats.rankdata``).  NaN when fewer than two
    entries remain or one side is constant (a correlation is undefined there, not zero).

    Example:
        >>> p, s, n = correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, 9.0]))
        >>> round(p, 3), round(s, 6), n
        (0.99, 1.0, 3)
    """
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    x = a.detach().double().reshape(-1).cpu()
    y = b.detach().double().reshape(-1).cpu()
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.numel())
    if n < 2:
        return math.nan, math.nan, n
    xc, yc = x - x.mean(), y - y.mean()
    den = float(xc.norm() * yc.norm())
    pearson = float((xc * yc).sum()) / den if den > 0 else math.nan
    rx = torch.from_numpy(stats.rankdata(x.numpy()))
    ry = torch.from_numpy(stats.rankdata(y.numpy()))
    rxc, ryc = rx - rx.mean(), ry - ry.mean()
    den_r = float(rxc.norm() * ryc.norm())
    spearman = float((rxc * ryc).sum()) / den_r if den_r > 0 else math.nan
    return pearson, spearman, n


# --------------------------------------------------------------------------------------
# Principal angles between K-FAC factor eigenspaces
# --------------------------------------------------------------------------------------


def principal_cosines(u: Tensor, v: Tensor) -> Tensor:
    """Cosines of the principal angles between ``span(u)`` and ``span(v)``, largest first.

    ``u`` (d × p) and ``v`` (d × q) must have orthonormal columns; the cosines are the singular
    values of ``uᵀv`` (Björck & Golub, 1973), clipped to ``[0, 1]``; there are ``min(p, q)``.
    """
    if u.dim() != 2 or v.dim() != 2 or u.shape[0] != v.shape[0]:
        raise ValueError(
            f"bases must be (d, k) matrices of the same d, got {tuple(u.shape)} and {tuple(v.shape)}"
        )
    s = torch.linalg.svdvals(u.double().T @ v.double())
    return s.clamp(0.0, 1.0)


def subspace_overlap(u: Tensor, v: Tensor) -> float:
    """Mean squared cosine of the principal angles, ``‖uᵀv‖²_F / k`` (1 = same subspace)."""
    c = principal_cosines(u, v)
    return float((c * c).mean()) if c.numel() else math.nan


def top_eigvecs(x: Tensor, k: int) -> Tensor | None:
    """Orthonormal eigenvectors of the ``k_eff = min(k, d // 2)`` largest eigenvalues of symmetric ``x``.

    ``k`` is capped at half the dimension: the top ``d``-dimensional subspace of ``ℝ^d`` is all
    of it, and near that the overlap says nothing (its chance level ``k/d`` approaches 1).

    Returns:
        ``(d, k_eff)`` float64 (computed in ``x``'s precision), or None when ``k_eff < 1`` or
        ``x`` is zero (no curvature).
    """
    d = x.shape[-1]
    k_eff = min(int(k), d // 2)
    if k_eff < 1 or float(torch.diagonal(x).double().sum()) <= 0.0:
        return None
    # Scaled to unit mean eigenvalue (factors of late layers can be ~1e-12), in the factor's own
    # precision (float32: 2x faster than float64 on a 1152 x 1152 factor, and the span of the
    # top eigenvalues does not need more); float64 when float32's eigh fails.
    xs = x if x.is_floating_point() else x.double()
    xs = 0.5 * (xs + xs.T) / (torch.diagonal(xs).sum() / d)
    try:
        _, vecs = torch.linalg.eigh(xs)
    except torch.linalg.LinAlgError:
        vecs = None
    if vecs is None or not bool(torch.isfinite(vecs).all()):
        # float32's eigh can also return NaN without raising (seen on a real 1x1-conv factor).
        _, vecs = torch.linalg.eigh(xs.double())
    # Re-orthonormalised in float64: principal cosines need orthonormal columns to round-off.
    q, _ = torch.linalg.qr(vecs[:, -k_eff:].flip(1).double())
    return q


@dataclass(frozen=True)
class Subspaces:
    """Top-``k`` eigenvectors of one layer's factors, per group (None: no curvature or too small)."""

    a: list[Tensor | None]
    b: list[Tensor | None]


def factor_subspaces(factors: Mapping[str, KFactors], k: int = DEFAULT_K) -> dict[str, Subspaces]:
    """Top-``k`` eigenvectors of every layer's ``A`` and ``B`` (computed once per task, reused per pair)."""
    return {
        n: Subspaces([top_eigvecs(x, k) for x in f.A.cpu()], [top_eigvecs(x, k) for x in f.B.cpu()])
        for n, f in factors.items()
    }


def _mean_overlap(sa: list[Tensor | None], sb: list[Tensor | None]) -> tuple[float, float, int]:
    """Mean overlap and mean chance level over the groups where both sides have a subspace."""
    vals, chance = [], []
    for u, v in zip(sa, sb):
        if u is None or v is None:
            continue
        vals.append(subspace_overlap(u, v))
        chance.append(u.shape[1] / u.shape[0])
    if not vals:
        return math.nan, math.nan, 0
    return float(np.mean(vals)), float(np.mean(chance)), int(sa[0].shape[1] if sa[0] is not None else 0)


# --------------------------------------------------------------------------------------
# Comparison of two tasks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerAlignment:
    """One layer's alignment numbers (NaN where undefined: see each field).

    Attributes:
        name: Parameter name.
        weights: Number of weights.
        fisher_pearson, fisher_spearman: Correlations of the two tasks' diagonal Fisher
            (NaN without Fisher inputs or when one side is constant).
        a_overlap, b_overlap: Mean squared principal cosine of the top-k eigenspaces of ``A``
            / ``B`` (mean over groups; NaN without factors, for a factor of dimension 1 such
            as a depthwise conv's ``B``, or when no group has curvature on both sides).
        a_chance, b_chance: The value two random subspaces would give (``k/d``).
        mask_jaccard: Jaccard overlap of the kept sets of the two tasks' masks (NaN without masks).
    """

    name: str
    weights: int
    fisher_pearson: float = math.nan
    fisher_spearman: float = math.nan
    a_overlap: float = math.nan
    a_chance: float = math.nan
    b_overlap: float = math.nan
    b_chance: float = math.nan
    mask_jaccard: float = math.nan


@dataclass(frozen=True)
class Alignment:
    """Alignment of a source and a transfer task around θ₀ (module docstring).

    Attributes:
        source, transfer: Task labels.
        layers: Per-layer numbers.
        fisher_pearson, fisher_spearman: Correlations over all weights together.
        a_overlap, b_overlap: Weight-count-weighted means over layers of the per-layer overlaps
            (layers with NaN left out); ``a_chance``/``b_chance`` the same means of chance levels.
        mask_jaccard: Jaccard of the kept sets over all weights together.
        k: Eigenvectors compared per factor (capped per factor at half its dimension).
        notes: What was left out and why.
    """

    source: str
    transfer: str
    layers: list[LayerAlignment] = field(default_factory=list)
    fisher_pearson: float = math.nan
    fisher_spearman: float = math.nan
    a_overlap: float = math.nan
    a_chance: float = math.nan
    b_overlap: float = math.nan
    b_chance: float = math.nan
    mask_jaccard: float = math.nan
    k: int = DEFAULT_K
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """The overall numbers, for tables and scatter plots."""
        return {
            "fisher_pearson": self.fisher_pearson,
            "fisher_spearman": self.fisher_spearman,
            "a_overlap": self.a_overlap,
            "a_chance": self.a_chance,
            "b_overlap": self.b_overlap,
            "b_chance": self.b_chance,
            "mask_jaccard": self.mask_jaccard,
        }

    def to_dict(self) -> dict:
        """JSON-able form (NaN stays NaN: Python's json writes it as ``NaN``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Alignment:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["layers"] = [LayerAlignment(**lr) for lr in d.get("layers", [])]
        return cls(**d)


def _weighted(values: list[float], weights: list[int]) -> float:
    pairs = [(v, w) for v, w in zip(values, weights) if not math.isnan(v)]
    if not pairs:
        return math.nan
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


def compare(
    source: str,
    transfer: str,
    *,
    fisher: tuple[Mapping[str, Tensor], Mapping[str, Tensor]] | None = None,
    subspaces: tuple[Mapping[str, Subspaces], Mapping[str, Subspaces]] | None = None,
    masks: tuple[Mapping[str, Tensor], Mapping[str, Tensor]] | None = None,
    k: int = DEFAULT_K,
) -> Alignment:
    """Alignment of two tasks from whichever of the three inputs are given.

    Args:
        source, transfer: Labels for the report.
        fisher: ``(F_source, F_transfer)`` diagonal Fisher per parameter name.
        subspaces: ``(source, transfer)`` outputs of :func:`factor_subspaces` (same ``k``).
        masks: ``(source mask, transfer's own mask)`` keep-masks at the same sparsity.
        k: The ``k`` the subspaces were computed with (for the report).

    Returns:
        An :class:`Alignment`; numbers without inputs are NaN.

    Raises:
        ValueError: the two sides of an input name different parameters or shapes differ.
    """
    names: list[str] = []
    sizes: dict[str, int] = {}
    for pair in (fisher, masks):
        if pair is not None:
            if set(pair[0]) != set(pair[1]):
                raise ValueError(
                    f"the two tasks' inputs name different parameters: {sorted(set(pair[0]) ^ set(pair[1]))[:3]}"
                )
            for n, t in pair[0].items():
                if n not in sizes:
                    names.append(n)
                    sizes[n] = t.numel()
    if subspaces is not None:
        if set(subspaces[0]) != set(subspaces[1]):
            raise ValueError("the two tasks' factors name different parameters")
        for n in subspaces[0]:
            if n not in sizes:
                names.append(n)
                sizes[n] = -1  # unknown from subspaces alone
    notes: list[str] = []
    layers = []
    for n in names:
        row: dict = {"name": n, "weights": max(sizes[n], 0)}
        if fisher is not None and n in fisher[0]:
            p, s, _ = correlation(fisher[0][n], fisher[1][n])
            row.update(fisher_pearson=p, fisher_spearman=s)
        if subspaces is not None and n in subspaces[0]:
            a, a_ch, _ = _mean_overlap(subspaces[0][n].a, subspaces[1][n].a)
            b, b_ch, _ = _mean_overlap(subspaces[0][n].b, subspaces[1][n].b)
            row.update(a_overlap=a, a_chance=a_ch, b_overlap=b, b_chance=b_ch)
        if masks is not None and n in masks[0]:
            row["mask_jaccard"] = masks_mod.jaccard({n: masks[0][n]}, {n: masks[1][n]})
        layers.append(LayerAlignment(**row))
    out: dict = {"source": source, "transfer": transfer, "layers": layers, "k": int(k), "notes": notes}
    if fisher is not None:
        fa = torch.cat([fisher[0][n].detach().double().reshape(-1).cpu() for n in fisher[0]])
        fb = torch.cat([fisher[1][n].detach().double().reshape(-1).cpu() for n in fisher[0]])
        p, s, used = correlation(fa, fb)
        out.update(fisher_pearson=p, fisher_spearman=s)
        if used < fa.numel():
            notes.append(
                f"diagonal Fisher: {fa.numel() - used} of {fa.numel()} weights left out (θ = 0 or not finite)"
            )
    if subspaces is not None:
        w = [lr.weights if lr.weights > 0 else 1 for lr in layers]
        out.update(
            a_overlap=_weighted([lr.a_overlap for lr in layers], w),
            a_chance=_weighted([lr.a_chance for lr in layers], w),
            b_overlap=_weighted([lr.b_overlap for lr in layers], w),
            b_chance=_weighted([lr.b_chance for lr in layers], w),
        )
        no_b = [lr.name for lr in layers if math.isnan(lr.b_overlap)]
        if no_b:
            notes.append(
                f"K-FAC B overlap undefined for {len(no_b)} layer(s) (dimension 1 per group, e.g. depthwise "
                f"convs, or no curvature), e.g. {no_b[0]}"
            )
    if masks is not None:
        out["mask_jaccard"] = masks_mod.jaccard(masks[0], masks[1])
    return Alignment(**out)
