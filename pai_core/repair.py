"""Repair without SGD: the OBS update δ of Eq. (3) for the weights a mask keeps, layer by layer.

The paper's Eq. (3) gives, next to the cost of removing a weight, the optimal update δ of the
others; P2 says re-training "via SGD or using δ" should recover the source task.  This module
computes δ for a whole mask at once (every removed weight of a layer together), with the
curvature block of the layer, and writes θ + δ into the model.  No epochs, a few linear solves.

Maths.  One layer (one group of a grouped conv) has weights ``W`` of shape ``(d_B, d_A)``
(``d_A = C_in/groups · k_h · k_w``, row-major flattened as in :class:`pai_core.scores.KFactors`)
and a mask splitting them into kept ``K`` and removed ``R``.  With the curvature block ``H``
over ``θ = vec(W)`` and the quadratic model of Eq. (2), ``L(θ + δ) − L(θ) ≈ δᵀHδ``, removing
all of ``R`` at once is the multi-weight Optimal Brain Surgeon (Hassibi & Stork, 1993)::

    δ = −H⁻¹ E_R (E_Rᵀ H⁻¹ E_R)⁻¹ E_Rᵀ θ
      ⇔  δ_R = −θ_R,   H_KK δ_K = H_KR θ_R,                                   (OBS)

the minimiser of ``δᵀHδ`` subject to ``(θ + δ)_R = 0``.  Two curvature blocks (``form``):

* ``"a"`` — ``H = I ⊗ A_d``: the layer-reconstruction objective ``E_t‖(W' − W) a_t‖²`` of
  OBC/SparseGPT (Frantar & Alistarh, 2022/2023).  Rows decouple: for each output row,
  ``w'_K = w_K + (A_d)_KK⁻¹ (A_d)_KR w_R``.  The same solution holds for ``H = diag(B) ⊗ A_d``
  (a per-row scale cancels), so it is also the K-FAC block with the output coupling dropped.
  Solved *directly* (batched Cholesky), exact to round-off.
* ``"kfac"`` — ``H = B_d ⊗ A_d``, the K-FAC block of Eq. (5) that the ``kfac`` score uses.
  Rows couple through ``B``; the masked system ``H_KK δ_K = H_KR θ_R`` is solved by
  preconditioned conjugate gradients with the Kronecker matvec ``M ⊙ (B_d (M ⊙ X) A_d)`` and
  the exact per-row ``(A_d)_KK`` solves of the ``"a"`` form (scaled by ``1/B_oo``) as the
  preconditioner, started from the better of 0 and the ``"a"`` solution.  Every iterate
  satisfies ``δ_R = −θ_R`` and lowers ``δᵀHδ``; the iteration count and relative residual are
  reported per layer (the factors of real encoders are ill-conditioned: see the README).

``X_d = X + λ_X I`` with ``λ_X = damping · tr(X)/dim(X)`` per group, the convention of the
``kfac`` score; the default ``damping=1e-2`` is SparseGPT's 1 % of the mean diagonal.

Direct per-row solves.  Rows keep different weights, so each row has its own system.  With
``k`` kept and ``r`` removed weights per row, the ``"a"`` form either factorises ``(A_d)_KK``
(size ``k``) or, through the Schur identity ``(A_KK)⁻¹ = (A⁻¹)_KK − (A⁻¹)_KR ((A⁻¹)_RR)⁻¹
(A⁻¹)_RK`` and one shared ``A_d⁻¹`` per group, ``(A_d⁻¹)_RR`` (size ``r``), whichever costs less
per layer; rows are sorted by size and solved in padded batches whose memory is bounded.

Scope: weights of Conv/Linear layers with K-FAC factors (:func:`pai_core.scores.kfac_factors`);
biases are not pruned and not corrected.  A masked weight without factors, or a group whose
factor is zero (no input/gradient reached it), is pruned plainly and *reported*, never
silently skipped.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from pai_core import scores
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    >>> data = [(torch.randn(40, 6), torch.randint(0, 3, (40,)))]
    >>> f = scores.kfac_factors(net, data)
    >>> keep = {"0.weight": torch.rand(5, 6) > 0.4}
    >>> rep = repair_(net, keep, f, form="a")
    >>> bool((net[0].weight[~keep["0.weight"]] == 0).all()), rep.layers[0].cost_repaired <= rep.layers[0].cost_zeroed
    (True, True)
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .scores import KFactors

__all__ = [
    # options
    "RepairForm",
    "available_forms",
    "DEFAULT_DAMPING",
    # results
    "LayerRepair",
    "RepairReport",
    # the update
    "damped",
    "repair_layer",
    "repair_",
    "quadratic_cost",
    "factor_params",
]

Progress = Callable[[int, int, str], None]

#: SparseGPT's damping: 1 % of the mean diagonal of each factor.
DEFAULT_DAMPING = 1e-2

# Elements of one padded batch of per-row systems (float64): 2^22 = 32 MiB bounds peak memory.
_CHUNK_ELEMS = 1 << 22
# Per-row factorisations kept across PCG iterations (the "kfac" preconditioner) up to this many
# bytes (one layer at a time); beyond, they are recomputed at every application.
_KEEP_BYTES = 512 << 20
# Systems at least this big are factorised in float32 and refined in float64 (module docstring).
_FP32_MIN = 128
# Relative residual a direct float64 solve reaches on the damped factors of real layers
# (κ up to ~1e6): below it, "converged" cannot be asked of the direct form.
_ROUND_OFF = 1e-10


class RepairForm(StrEnum):
    """Curvature block of the OBS update (see the module docstring)."""

    A = "a"  # I ⊗ A_d: layer reconstruction, rows independent, direct solve
    KFAC = "kfac"  # B_d ⊗ A_d: the K-FAC block of the kfac score, PCG


def available_forms() -> list[str]:
    """Names accepted as ``form``, cheapest first."""
    return [f.value for f in RepairForm]


def _check_form(form: str) -> RepairForm:
    try:
        return RepairForm(form)
    except ValueError:
        raise ValueError(f"unknown repair form {form!r}; valid: {', '.join(available_forms())}") from None


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRepair:
    """What the OBS update did to one layer.

    Attributes:
        name: Parameter name.
        form: ``"a"`` or ``"kfac"``.
        weights, removed: Sizes of the layer and of its removed set ``R``.
        rows_repaired: Output rows with both kept and removed weights (the rows δ changes).
        uncovered_groups: Groups whose factor has zero trace (no input or no gradient reached
            them): their removed weights are zeroed without correction.
        cost_zeroed: ``δᵀH_dδ`` of plain zeroing (``δ = −θ_R``), ``H_d`` the damped block of
            ``form``: the quadratic model of Eq. (2) of the layer's loss increase.
        cost_repaired: The same after the OBS update (never larger).
        iterations: PCG iterations (0 for the direct ``"a"`` form).
        residual: Final ``‖H_KK δ_K − H_KR θ_R‖ / ‖H_KR θ_R‖`` (0 when there is nothing to solve);
            for the ``"a"`` form, of all its rows' systems stacked.
        converged: ``residual <= tol`` (the direct form: ``<= max(tol, 1e-10)``, round-off).
        seconds: Wall time of the layer.
    """

    name: str
    form: str
    weights: int
    removed: int
    rows_repaired: int
    uncovered_groups: int
    cost_zeroed: float
    cost_repaired: float
    iterations: int
    residual: float
    converged: bool
    seconds: float


@dataclass(frozen=True)
class RepairReport:
    """Result of :func:`repair_` over a model.

    Attributes:
        form, damping: The options used.
        layers: One :class:`LayerRepair` per repaired parameter, in mask order.
        skipped: ``{parameter name: reason}`` for masked weights that were only zeroed
            (no K-FAC factors for that layer type).
        seconds: Wall time of the whole repair (factors excluded).
    """

    form: str
    damping: float
    layers: list[LayerRepair] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def converged(self) -> bool:
        """Every layer's solve reached its tolerance."""
        return all(lr.converged for lr in self.layers)

    @property
    def cost_zeroed(self) -> float:
        """Σ over layers of the quadratic-model cost of plain zeroing."""
        return sum(lr.cost_zeroed for lr in self.layers)

    @property
    def cost_repaired(self) -> float:
        """Σ over layers of the quadratic-model cost after the OBS update."""
        return sum(lr.cost_repaired for lr in self.layers)

    def notes(self) -> list[str]:
        """Plain-language caveats for a UI or a result's notes."""
        out = []
        if self.skipped:
            names = list(self.skipped)
            out.append(
                f"OBS repair: {len(names)} layer(s) only zeroed, no curvature factors "
                f"(e.g. {names[0]}: {self.skipped[names[0]]})"
            )
        unc = [lr.name for lr in self.layers if lr.uncovered_groups]
        if unc:
            out.append(
                f"OBS repair: {len(unc)} layer(s) have groups without curvature, zeroed there (e.g. {unc[0]})"
            )
        bad = [lr for lr in self.layers if not lr.converged]
        if bad:
            worst = max(bad, key=lambda lr: lr.residual)
            out.append(
                f"OBS repair ({self.form}): {len(bad)} layer(s) stopped before the tolerance, worst "
                f"{worst.name} at relative residual {worst.residual:.1e} after {worst.iterations} iterations "
                "(each iterate is still a valid, cheaper correction)"
            )
        return out

    def to_dict(self) -> dict:
        """JSON-able form (for caches and result stores)."""
        return {
            "form": self.form,
            "damping": self.damping,
            "layers": [dataclasses.asdict(lr) for lr in self.layers],
            "skipped": dict(self.skipped),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> RepairReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            form=d["form"],
            damping=float(d["damping"]),
            layers=[LayerRepair(**lr) for lr in d.get("layers", [])],
            skipped=dict(d.get("skipped", {})),
            seconds=float(d.get("seconds", 0.0)),
        )


# --------------------------------------------------------------------------------------
# Curvature helpers
# --------------------------------------------------------------------------------------


def damped(factor: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """``X + λI`` per group with ``λ = damping · tr(X)/d`` (float64), and which groups have curvature.

    Args:
        factor: ``(G, d, d)`` symmetric positive semi-definite factors.
        damping: Relative damping ``≥ 0``.

    Returns:
        ``(damped factors (G, d, d) float64, covered (G,) bool)``; a group is covered when its
        factor's trace is positive (a zero factor means no input or no gradient reached it).

    Raises:
        ValueError: negative or non-finite damping, or a factor that is not ``(G, d, d)``.
    """
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    if factor.dim() != 3 or factor.shape[1] != factor.shape[2]:
        raise ValueError(f"a factor must have shape (groups, d, d), got {tuple(factor.shape)}")
    x = factor.double()
    x = 0.5 * (x + x.transpose(1, 2))
    d = x.shape[-1]
    tr = torch.diagonal(x, dim1=-2, dim2=-1).sum(-1)
    lam = damping * tr / d
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return x + lam[:, None, None] * eye, tr > 0


def _layout(weight: Tensor, f: KFactors) -> tuple[int, int, int]:
    """``(G, d_B, d_A)`` of ``weight`` for factors ``f``; ValueError when they do not fit."""
    g = f.groups
    if f.B.dim() != 3 or f.B.shape[0] != g:
        raise ValueError(
            f"factors disagree on the number of groups: A {tuple(f.A.shape)}, B {tuple(f.B.shape)}"
        )
    d_a, d_b = f.A.shape[-1], f.B.shape[-1]
    if weight.dim() < 2 or weight.shape[0] != g * d_b or weight[0].numel() != d_a:
        raise ValueError(
            f"weight of shape {tuple(weight.shape)} does not fit factors with {g} group(s), "
            f"A {tuple(f.A.shape)}, B {tuple(f.B.shape)}"
        )
    return g, d_b, d_a


def quadratic_cost(
    delta: Tensor, factors: KFactors, *, form: str = "kfac", damping: float = DEFAULT_DAMPING
) -> float:
    """``δᵀH_dδ`` for a weight change ``delta`` of one layer (Eq. (2) without the constant, no ½).

    ``H_d = B_d ⊗ A_d`` (``form="kfac"``) or ``I ⊗ A_d`` (``form="a"``) per group.

    Args:
        delta: Change of the layer's weight, the weight's shape.
        factors: The layer's K-FAC factors.
        form: ``"a"`` or ``"kfac"``.
        damping: Relative damping of the factors.

    Returns:
        The quadratic form, a float.
    """
    form = _check_form(form)
    g, d_b, d_a = _layout(delta, factors)
    a, _ = damped(factors.A.to(delta.device), damping)
    x = delta.detach().double().reshape(g, d_b, d_a)
    xa = torch.bmm(x, a)
    if form is RepairForm.A:
        return float((xa * x).sum())
    b, _ = damped(factors.B.to(delta.device), damping)
    return float((torch.bmm(b, xa) * x).sum())


# --------------------------------------------------------------------------------------
# Exact per-row solves with (A_d)_KK
# --------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    rows: Tensor  # (c,) row indices into the layer
    idx: Tensor  # (c, m) kept (K mode) or removed (R mode) column indices, padded with d
    valid: Tensor  # (c, m) bool, False on padding
    chol: Tensor | None  # (c, m, m) Cholesky factor of the padded system, when kept


class _RowSolver:
    """``v_o ↦ (A_d[g(o)])_{K_o K_o}⁻¹ v_o`` for every row ``o`` of a layer (zero outside ``K_o``).

    Rows are ordered group-major (row ``o`` is in group ``o // rows_per_group``), as in a weight.

    Two exact routes, chosen per layer by flop count: factorise ``(A_d)_KK`` (size ``k``), or
    ``(A_d⁻¹)_RR`` (size ``r``) and use ``(A_KK)⁻¹ = (A⁻¹)_KK − (A⁻¹)_KR ((A⁻¹)_RR)⁻¹ (A⁻¹)_RK``
    with one ``A_d⁻¹`` per group.  Rows are sorted by system size and batched with identity
    padding (a padded system ``[[S, 0], [0, I]]`` has the same solution on its leading block).

    Big systems are factorised in float32 (half the memory traffic and flops of float64, which
    is what the solve is bound by) and :meth:`solve` restores float64 accuracy by iterative
    refinement with float64 residuals; when float32 is too coarse for the conditioning
    (refinement stalls, or the float32 Cholesky fails) the layer is redone in float64.
    """

    def __init__(
        self,
        a: Tensor,
        keep: Tensor,
        rows_per_group: int,
        *,
        chunk_elems: int | None = None,
        keep_bytes: int = 0,
    ):
        chunk_elems = _CHUNK_ELEMS if chunk_elems is None else chunk_elems
        self.a, self.keep, self.rpg = a, keep, rows_per_group
        rows, d = keep.shape
        self.group = torch.arange(rows, device=keep.device) // rows_per_group
        k = keep.sum(1)
        self.active = (k > 0).nonzero().flatten()  # rows without unknowns need no solve
        k_act = k[self.active].double()
        n_groups = a.shape[0]
        cost_k = float((k_act**3).sum())
        cost_r = float(((d - k_act) ** 3).sum()) + n_groups * d**3
        self.mode = "R" if cost_r < cost_k else "K"
        self.ainv: Tensor | None = None
        if self.mode == "R":
            chol, info = torch.linalg.cholesky_ex(a)
            if bool((info != 0).any()):
                raise _NotPD()
            self.ainv = torch.cholesky_inverse(chol)
        sel = keep[self.active] if self.mode == "K" else ~keep[self.active]
        sizes = sel.sum(1)
        self.dtype = (
            torch.float32
            if (int(sizes.max()) if len(sizes) else 0) >= _FP32_MIN and a.dtype == torch.float64
            else a.dtype
        )
        order = torch.argsort(sizes, stable=True)
        self.chunks: list[_Chunk] = []
        lo = 0
        n = len(order)
        extra = d * d if n_groups > 1 else 0  # a gathered A (or A⁻¹) per row
        while lo < n:
            hi = lo + 1
            while hi < n:
                m = int(sizes[order[hi]])
                if (hi + 1 - lo) * (m * m + extra + 2 * d) > chunk_elems:
                    break
                hi += 1
            part = order[lo:hi]
            m = max(int(sizes[part].max()), 1)
            s = sel[part]
            # Column indices of the selected entries, left-aligned.
            pos = torch.cumsum(s.long(), 1) - 1
            # Padding points at index d: an extra zero row/column of the gathered-from matrices.
            idx = torch.full((len(part), m), d, dtype=torch.long, device=keep.device)
            r_i, c_i = s.nonzero(as_tuple=True)
            idx[r_i, pos[r_i, c_i]] = c_i
            valid = torch.arange(m, device=keep.device)[None, :] < sizes[part][:, None]
            self.chunks.append(_Chunk(self.active[part], idx, valid, None))
            lo = hi
        total = sum(c.idx.shape[0] * c.idx.shape[1] ** 2 for c in self.chunks)
        self._elems, self._keep_bytes = total, keep_bytes
        self.store = total * self.dtype.itemsize <= keep_bytes
        self._cast: dict = {}

    def _mats(self) -> tuple[Tensor, Tensor | None]:
        """``(A_d, A_d⁻¹ or None)`` in the working precision."""
        if self.dtype not in self._cast:
            ai = None if self.ainv is None else self.ainv.to(self.dtype)
            self._cast[self.dtype] = (self.a.to(self.dtype), ai)
        return self._cast[self.dtype]

    def _padded(self) -> Tensor:
        """The matrix systems are gathered from, with a zero row and column appended (index d)."""
        key = ("pad", self.dtype)
        if key not in self._cast:
            a, ai = self._mats()
            mat = a if self.mode == "K" else ai
            assert mat is not None
            self._cast[key] = F.pad(mat, (0, 1, 0, 1))
        return self._cast[key]

    def _factor(self, ch: _Chunk) -> Tensor:
        if ch.chol is not None:
            return ch.chol
        mat = self._padded()
        c, m = ch.idx.shape
        if m >= 64:  # two index_selects per row copy contiguous runs: 1.5x faster than fancy indexing
            sys = torch.empty(c, m, m, dtype=mat.dtype, device=mat.device)
            g = self.group[ch.rows].tolist()
            for i in range(c):
                torch.index_select(mat[g[i]].index_select(0, ch.idx[i]), 1, ch.idx[i], out=sys[i])
        else:
            g = self.group[ch.rows]
            sys = mat[g[:, None, None], ch.idx[:, :, None], ch.idx[:, None, :]]
        # Padded rows/columns came from the zero row/column: put 1 on their diagonal.
        sys.diagonal(dim1=1, dim2=2).add_((~ch.valid).to(sys.dtype))
        chol, info = torch.linalg.cholesky_ex(sys)
        if bool((info != 0).any()):
            if self.dtype == self.a.dtype:
                raise _NotPD()
            self._to_full_precision()  # float32 cannot factorise it: redo in float64
            return self._factor(ch)
        if self.store:
            ch.chol = chol
        return chol

    def _tri(self, chol: Tensor, b: Tensor) -> Tensor:
        # Two triangular solves: batched trsm is several times faster than cholesky_solve here.
        y = torch.linalg.solve_triangular(chol, b[:, :, None], upper=False)
        return torch.linalg.solve_triangular(chol.transpose(1, 2), y, upper=True)[:, :, 0]

    def _apply_chunk(self, ch: _Chunk, chol: Tensor, rhs: Tensor) -> Tensor:
        """The factorised inverse on the rows of one chunk: ``(c, d)`` in, ``(c, d)`` float64 out."""
        _, ai_all = self._mats()
        keep = self.keep[ch.rows]
        v = (rhs * keep).to(chol.dtype)
        c, d = v.shape
        # Gathers read index d (padding) from an appended zero column, scatters write it there
        # and it is dropped: each row's real entries are written exactly once.
        if self.mode == "K":
            x = self._tri(chol, F.pad(v, (0, 1)).gather(1, ch.idx))
            sol = v.new_zeros(c, d + 1).scatter_(1, ch.idx, x)[:, :d]
        else:
            assert ai_all is not None
            if ai_all.shape[0] == 1:
                y = v @ ai_all[0]
            else:
                ai_rows = ai_all[self.group[ch.rows]]
                y = torch.bmm(v[:, None, :], ai_rows)[:, 0]
            u = self._tri(chol, F.pad(y, (0, 1)).gather(1, ch.idx))
            corr = v.new_zeros(c, d + 1).scatter_(1, ch.idx, u)[:, :d]
            corr = corr @ ai_all[0] if ai_all.shape[0] == 1 else torch.bmm(corr[:, None, :], ai_rows)[:, 0]
            sol = (y - corr) * keep
        return sol.to(rhs.dtype)

    def apply(self, rhs: Tensor) -> Tensor:
        """One pass of the factorised inverse over all rows (float32 accuracy for big systems)."""
        out = torch.zeros_like(rhs)
        for ch in self.chunks:
            out[ch.rows] = self._apply_chunk(ch, self._factor(ch), rhs[ch.rows])
        return out

    def _to_full_precision(self) -> None:
        self.dtype = self.a.dtype
        self.store = self._elems * self.dtype.itemsize <= self._keep_bytes
        for c in self.chunks:
            c.chol = None

    def _matvec_rows(self, rows: Tensor, x: Tensor) -> Tensor:
        """``x_o ↦ (A_d)_{K_o K_o} x_o`` for the given rows, in float64 (zero outside ``K_o``)."""
        keep = self.keep[rows]
        xk = x * keep
        if self.a.shape[0] == 1:
            return (xk @ self.a[0]) * keep
        return torch.bmm(xk[:, None, :], self.a[self.group[rows]])[:, 0] * keep

    def solve(self, rhs: Tensor, tol: float = 1e-12, max_refine: int = 10) -> tuple[Tensor, float]:
        """``(x, relative residual)`` with ``x_o = (A_d)_{K_oK_o}⁻¹ rhs_o`` (rhs read on ``K_o``).

        Chunk by chunk: factorise once, solve, then refine ``x ← x + S⁻¹(b − A_KK x)`` with
        float64 residuals until ``tol`` or round-off; memory stays one chunk's.
        """
        b = rhs * self.keep
        out = torch.zeros_like(rhs)
        res2 = 0.0
        for ch in self.chunks:
            bc = b[ch.rows]
            bn = float(bc.norm())
            if bn == 0.0:
                continue
            while True:
                try:
                    chol = self._factor(ch)
                    x = self._apply_chunk(ch, chol, bc)
                    r = bc - self._matvec_rows(ch.rows, x)
                    rel = float(r.norm()) / bn
                    for _ in range(max_refine):
                        if rel <= tol:
                            break
                        x_new = x + self._apply_chunk(ch, chol, r)
                        r_new = bc - self._matvec_rows(ch.rows, x_new)
                        rel_new = float(r_new.norm()) / bn
                        if rel_new >= 0.5 * rel:  # stalls: float32 too coarse, or round-off reached
                            if self.dtype != self.a.dtype and rel > 1e-8:
                                raise _Coarse()
                            if rel_new < rel:
                                x, r, rel = x_new, r_new, rel_new
                            break
                        x, r, rel = x_new, r_new, rel_new
                    break
                except _Coarse:  # redo this chunk (and the rest of the layer) in float64
                    self._to_full_precision()
            out[ch.rows] = x
            res2 += float(r.norm()) ** 2
        bn = float(b.norm())
        return out, (math.sqrt(res2) / bn if bn > 0 else 0.0)


class _Coarse(RuntimeError):
    """Float32 factorisations are too coarse for this layer's conditioning: redo in float64."""


class _NotPD(RuntimeError):
    """A damped factor (or a principal block of it) is not numerically positive definite."""


# --------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------


def repair_layer(
    weight: Tensor,
    keep: Tensor,
    factors: KFactors,
    *,
    form: str = "a",
    damping: float = DEFAULT_DAMPING,
    tol: float = 1e-6,
    max_iter: int = 300,
    name: str = "",
) -> tuple[Tensor, LayerRepair]:
    """The OBS-corrected weight of one layer: ``θ + δ`` with ``δ`` from (OBS), module docstring.

    Args:
        weight: The layer's *dense* weight θ (Linear ``(out, in)``, Conv ``(out, in/G, kh, kw)``).
        keep: Boolean keep-mask of ``weight``'s shape (``True`` = kept).
        factors: The layer's K-FAC factors at θ (:func:`pai_core.scores.kfac_factors`).
        form: ``"a"`` (direct, rows independent) or ``"kfac"`` (PCG on ``B_d ⊗ A_d``).
        damping: Relative damping of both factors (``λ = damping · tr/d``).
        tol: Relative residual at which PCG (``"kfac"``) or the iterative refinement of the
            float32 factorisations (``"a"``) stops.
        max_iter: PCG iteration budget (``"kfac"`` only).
        name: Label for the report.

    Returns:
        ``(new weight, report)``: the new weight has ``weight``'s dtype and device and is
        *exactly* zero where ``keep`` is False.

    Raises:
        ValueError: Unknown form, bad damping/tol/max_iter, or shapes that do not fit.
        RuntimeError: A damped factor is not positive definite (damping 0 on a singular factor).
    """
    t0 = time.perf_counter()
    form = _check_form(form)
    if tol < 0 or max_iter < 0:
        raise ValueError(f"tol and max_iter must be >= 0, got {tol!r}, {max_iter!r}")
    if tuple(keep.shape) != tuple(weight.shape):
        raise ValueError(f"mask shape {tuple(keep.shape)} differs from weight shape {tuple(weight.shape)}")
    g, d_b, d_a = _layout(weight, factors)
    dev = weight.device
    w = weight.detach().double().reshape(g, d_b, d_a)
    kp = keep.to(device=dev, dtype=torch.bool).reshape(g, d_b, d_a)
    a, cov_a = damped(factors.A.to(dev), damping)
    if form is RepairForm.KFAC:
        b, cov_b = damped(factors.B.to(dev), damping)
        covered = cov_a & cov_b
    else:
        b, covered = None, cov_a
    # Groups without curvature have no unknowns; identity factors there keep the batched
    # factorisations well defined (the costs below use the true, zero, factors).
    eye_a = torch.eye(d_a, dtype=a.dtype, device=dev)
    a_solve = torch.where(covered[:, None, None], a, eye_a)
    b_solve = (
        None
        if b is None
        else torch.where(covered[:, None, None], b, torch.eye(d_b, dtype=b.dtype, device=dev))
    )
    removed = int((~kp).sum())
    # Unknowns: kept weights of covered groups in rows that lost something (others keep δ = 0
    # in the "a" form; in the "kfac" form every kept weight of a covered group may move).
    kp_c = kp & covered[:, None, None]
    wr = torch.where(kp, torch.zeros_like(w), w)  # θ_R, zero on K
    zero_delta = -wr
    rows_touched = int((kp.any(2) & (~kp).any(2) & covered[:, None]).sum())

    def cost(delta: Tensor) -> float:
        xa = torch.bmm(delta, a)
        if b is None:
            return float((xa * delta).sum())
        return float((torch.bmm(b, xa) * delta).sum())

    iters, resid, converged = 0, 0.0, True
    try:
        if removed == 0 or not bool(kp_c.any()):
            dk = torch.zeros_like(w)
        elif b_solve is None:
            # Rows that lost nothing keep δ = 0: leave them out of the solve.
            unknown = kp_c & (~kp).any(2, keepdim=True)
            rhs = torch.bmm(wr, a_solve) * unknown  # (A_d θ_R)_K per row
            solver = _RowSolver(a_solve, unknown.reshape(g * d_b, d_a), d_b)
            dk, resid = solver.solve(rhs.reshape(g * d_b, d_a), tol=tol)
            dk = dk.reshape(g, d_b, d_a)
            converged = resid <= max(tol, _ROUND_OFF)
        else:
            dk, iters, resid, converged = _pcg_kfac(a_solve, b_solve, kp_c, wr, tol, max_iter)
    except _NotPD:
        raise RuntimeError(
            f"{name or 'layer'}: a damped curvature factor is not positive definite "
            f"(damping={damping}); use a larger damping"
        ) from None
    delta = dk * kp_c + zero_delta
    new = torch.where(kp, w + delta, torch.zeros_like(w))  # exact zeros on R
    report = LayerRepair(
        name=name,
        form=form.value,
        weights=weight.numel(),
        removed=removed,
        rows_repaired=rows_touched,
        uncovered_groups=int((~covered).sum()),
        cost_zeroed=cost(zero_delta),
        cost_repaired=cost(new - w),
        iterations=iters,
        residual=resid,
        converged=converged,
        seconds=time.perf_counter() - t0,
    )
    return new.reshape(weight.shape).to(weight.dtype), report


def _pcg_kfac(
    a: Tensor, b: Tensor, keep: Tensor, wr: Tensor, tol: float, max_iter: int
) -> tuple[Tensor, int, float, bool]:
    """Solve ``H_KK x = H_KR θ_R`` for ``H = B ⊗ A`` per group by PCG; returns ``(x, its, rel. residual, ok)``."""
    g, d_b, d_a = keep.shape
    m = keep.to(a.dtype)

    def hv(x: Tensor) -> Tensor:
        return torch.bmm(b, torch.bmm(x * m, a)) * m

    rhs = torch.bmm(b, torch.bmm(wr, a)) * m
    bn = float(rhs.norm())
    if bn == 0.0:
        return torch.zeros_like(rhs), 0, 0.0, True
    solver = _RowSolver(a, keep.reshape(g * d_b, d_a), d_b, keep_bytes=_KEEP_BYTES)
    diag_b = torch.diagonal(b, dim1=-2, dim2=-1).reshape(g * d_b, 1)
    diag_b = torch.where(diag_b > 0, diag_b, torch.ones_like(diag_b))  # dead output (damping 0)

    def prec(r: Tensor) -> Tensor:
        # One pass of the (float32) factorised block-row inverse: a fixed SPD operator is all
        # PCG needs from a preconditioner; the float64 operator hv keeps the solve exact.
        return solver.apply(r.reshape(g * d_b, d_a) / diag_b).reshape(g, d_b, d_a)

    # Start from the better of 0 and the rows-independent ("a") solution, by the objective
    # ½xᵀHx − bᵀx that CG decreases: a warm start that can only help.
    x_a = solver.solve(torch.bmm(wr, a).reshape(g * d_b, d_a))[0].reshape(g, d_b, d_a)
    hx_a = hv(x_a)
    x, r = torch.zeros_like(rhs), rhs.clone()
    if float(0.5 * (x_a * hx_a).sum() - (rhs * x_a).sum()) < 0.0:
        x, r = x_a, rhs - hx_a
    rel = float(r.norm()) / bn
    its = 0
    if rel > tol and max_iter > 0:
        z = prec(r)
        p = z.clone()
        rz = float((r * z).sum())
        while its < max_iter:
            q = hv(p)
            pq = float((p * q).sum())
            if pq <= 0.0:  # only round-off can make an SPD operator non-positive: stop there
                break
            alpha = rz / pq
            x = x + alpha * p
            r = r - alpha * q
            its += 1
            rel = float(r.norm()) / bn
            if rel <= tol:
                break
            z = prec(r)
            rz_new = float((r * z).sum())
            p = z + (rz_new / rz) * p
            rz = rz_new
    return x, its, rel, rel <= tol


# --------------------------------------------------------------------------------------
# A model
# --------------------------------------------------------------------------------------


def factor_params(model: nn.Module, names: list[str] | None = None) -> list[str]:
    """The weights among ``names`` (default: all) that :func:`pai_core.scores.kfac_factors` covers.

    Plain ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and timm's TF-"same" convs, not the
    functional ``out_proj`` of ``nn.MultiheadAttention``.  The rest is reported by
    :func:`repair_` as skipped.
    """
    functional = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()}
    ok = set()
    for mname, mod in model.named_modules():
        if id(mod) in functional or mod._parameters.get("weight") is None:
            continue
        cls = type(mod)
        plain = cls in (nn.Linear, nn.Conv1d, nn.Conv2d)
        timm_like = cls.__module__.startswith("timm.") and cls.__name__ in (
            "Linear",
            "Conv2dSame",
            "Conv2dSameExport",
        )
        if plain or timm_like:
            ok.add(f"{mname}.weight" if mname else "weight")
    all_names = [n for n, _ in model.named_parameters()] if names is None else list(names)
    return [n for n in all_names if n in ok]


def repair_(
    model: nn.Module,
    masks: Mapping[str, Tensor],
    factors: Mapping[str, KFactors],
    *,
    form: str = "a",
    damping: float = DEFAULT_DAMPING,
    tol: float = 1e-6,
    max_iter: int = 300,
    progress: Progress | None = None,
) -> RepairReport:
    """Prune ``model`` by ``masks`` and apply the OBS update to the kept weights, in place.

    ``model`` must hold the *dense* weights θ₀ at which ``factors`` were computed (Eq. (3) is
    an expansion around θ₀).  Every masked weight ends exactly zero; masked parameters without
    factors are zeroed and listed in :attr:`RepairReport.skipped`.

    Args:
        model: Model with the dense weights (modified in place).
        masks: ``{parameter name: bool keep-mask}``.
        factors: ``{parameter name: KFactors}`` at θ₀ (e.g. from ``scores.kfac_factors``).
        form: ``"a"`` or ``"kfac"`` (module docstring).
        damping: Relative damping of the factors.
        tol, max_iter: PCG settings of the ``"kfac"`` form.
        progress: ``progress(done, total, message)`` after each layer.

    Returns:
        A :class:`RepairReport`.

    Raises:
        ValueError: Unknown parameter names or shapes that do not fit (nothing is modified then).
    """
    t0 = time.perf_counter()
    form = _check_form(form)
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks name unknown parameters {unknown[:3]}")
    for n, m in masks.items():  # check everything before changing anything
        if tuple(m.shape) != tuple(params[n].shape):
            raise ValueError(f"mask {n} has shape {tuple(m.shape)}, parameter has {tuple(params[n].shape)}")
        if n in factors:
            _layout(params[n], factors[n])
    layers: list[LayerRepair] = []
    skipped: dict[str, str] = {}
    total = len(masks)
    with torch.no_grad():
        for i, (n, m) in enumerate(masks.items()):
            p = params[n]
            if n not in factors:
                p.mul_(m.to(device=p.device, dtype=p.dtype))
                skipped[n] = "no K-FAC factors for this parameter (layer type not covered): zeroed only"
            else:
                new, rep = repair_layer(
                    p, m, factors[n], form=form, damping=damping, tol=tol, max_iter=max_iter, name=n
                )
                p.copy_(new)
                layers.append(rep)
            if progress:
                progress(i + 1, total, f"OBS repair ({form.value}): {n}")
    return RepairReport(form.value, float(damping), layers, skipped, time.perf_counter() - t0)
