"""K-FAC: Kronecker-factored curvature blocks per layer, and the block (OBS) score they give.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> f = kfac_factors(net, [(torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1]))])
    >>> f["0.weight"].A.shape, f["0.weight"].B.shape, f["0.weight"].groups
    (torch.Size([1, 4, 4]), torch.Size([1, 3, 3]), 1)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ._base import Batches, ScoreCall, Scores, _batches, _resolve_params, _scoring_state
from ._registry import ScoreOption, register_score
from .hooks import _hooked_pass, _HookEngine

if TYPE_CHECKING:
    from ..results import Progress

__all__ = ["APPROX", "KFactors", "kfac_factors", "kfac_score", "resolve_approx", "SCALE_EXAMPLES"]


#: K-FAC approximations (the ``approx`` option): see :func:`kfac_factors`.
APPROX = ("auto", "reduce", "expand")


@dataclasses.dataclass(frozen=True)
class KFactors:
    """Kronecker factors of one layer's curvature block, per row block.

    The layer's weight as an ``(out, in)`` matrix ``W`` (a conv's ``(Cout, Cin/G·kh·kw)``; a
    Linear's weight; the transpose of a raw projection ``P`` applied as ``x @ P``) is cut into
    ``nb`` row blocks of ``d_B`` rows: the groups of a grouped conv, or q, k, v of an attention
    in-projection.  ``B[g]`` is ``(d_B, d_B)``; ``A[g]`` is ``(d_A, d_A)`` with
    ``d_A = Cin/G·kh·kw`` (``in_features`` for Linear), one per block, or one shared by every
    block (``A.shape[0] == 1``: q, k, v read the same input).  The block of block ``g`` over the
    row-major flattened ``W[g·d_B:(g+1)·d_B].reshape(-1)`` is ``kron(B[g], A[g])`` (the paper
    writes ``A ⊗ B`` for the column-major ``vec``).

    Attributes:
        A, B: The factors.
        transposed: The parameter is ``Wᵀ`` (a projection applied as ``x @ P``).
    """

    A: Tensor
    B: Tensor
    transposed: bool = False

    @property
    def groups(self) -> int:
        """Number of row blocks (``nb``)."""
        return self.B.shape[0]

    def to_param(self, t: Tensor, shape: torch.Size) -> Tensor:
        """A per-weight tensor ``(nb, d_B, d_A)`` in the layout of the parameter (``shape``)."""
        if self.transposed:
            return t.reshape(shape[1], shape[0]).T
        return t.reshape(shape)


def resolve_approx(model: nn.Module, approx: str) -> dict[str, str]:
    """The K-FAC approximation of each kind of layer: ``{"conv": …, "linear": …}``.

    ``"reduce"`` and ``"expand"`` apply to every layer.  ``"auto"`` decides by the architecture:

    * token models (self-attention blocks: ``nn.MultiheadAttention`` or a module class named
      ``…Attention``, as in timm and open_clip transformers): ``"expand"`` everywhere;
    * CNNs: ``"reduce"`` for convolutions, whose positions the network pools globally before the
      head, and ``"expand"`` for linear layers.  A linear layer on one vector per example has
      ``T = 1``, where both coincide; on tokens it is attention pooling (open_clip's
      ``AttentionPool2d``), where "reduce" is degenerate: softmax is invariant to adding one
      vector to every key, so ``Σ_t ∂ℓ/∂k_t = 0`` and the key projection's ``B`` would vanish.

    Eschenhagen et al. (2023) derive "reduce" as exact for linear weight-sharing layers whose
    shared dimension is aggregated before the loss and "expand" when it is kept in the loss; a
    deep network is neither exactly, so "auto" is a choice, checked by the ``kfac_scale_ratio``
    diagnostic (``tr(A)·tr(B)/tr(F)``, 1 at the right scale): on random-weight CNNs "reduce"
    brings the convolutions' ratios from 0.005–0.26 to 0.93–1.0; on ViTs "expand" keeps them
    at 0.7–1.05 where "reduce" gives 0.07–0.8 (``tests/test_conformance.py``).

    Example:
        >>> resolve_approx(nn.Sequential(nn.Conv2d(3, 4, 3)), "auto")
        {'conv': 'reduce', 'linear': 'expand'}
        >>> resolve_approx(nn.MultiheadAttention(8, 2), "auto")
        {'conv': 'expand', 'linear': 'expand'}
    """
    if approx not in APPROX:
        raise ValueError(f"unknown K-FAC approximation {approx!r}; valid: {', '.join(APPROX)}")
    if approx != "auto":
        return {"conv": approx, "linear": approx}
    tokens = any(
        isinstance(m, nn.MultiheadAttention) or type(m).__name__.endswith("Attention")
        for m in model.modules()
    )
    return {"conv": "expand" if tokens else "reduce", "linear": "expand"}


def kfac_factors(
    model: nn.Module,
    batches: Batches,
    *,
    params: Sequence[str] | None = None,
    loss: str = "mse",
    approx: str = "auto",
    progress: Progress | None = None,
    diagnostics: dict[str, Any] | None = None,
) -> dict[str, KFactors]:
    """K-FAC factors (Eq. (5)) of every scored weight matrix, with the model in eval mode.

    With ``a_{n,t}`` the layer input at position/token ``t`` of example ``n`` (for a conv: the
    unfolded input patch of output position ``t``, padding included, no bias column),
    ``g_{n,t} = ∂ℓ_n/∂z_{n,t}`` the per-example gradient at the pre-activation output, ``T``
    positions per example and ``N`` examples, the per-example gradient is
    ``G_n = Σ_t g_{n,t} a_{n,t}ᵀ`` and the empirical-Fisher block is ``F = (1/N) Σ_n
    vec(G_n) vec(G_n)ᵀ``.  Eschenhagen et al. (NeurIPS 2023, arXiv:2311.00636, Sec. 3) define
    two Kronecker approximations of layers with such a weight-sharing dimension:

    * **expand** (KFC, Grosse & Martens 2016): every position is an example of its own,
      ``A = 1/(N·T) Σ_{n,t} a aᵀ``, ``B = 1/N Σ_{n,t} g gᵀ``.  This drops the cross-position
      terms of ``‖G_n‖² = Σ_{t,s} (g_tᵀg_s)(a_tᵀa_s)``, so ``tr(A)·tr(B)`` does **not** match
      ``tr(F)`` when ``T > 1``: measured ratios are 0.05–0.77 on MobileNetV2 and
      EfficientNet-Lite0 (about 0.1 on their last 1×1 conv), which misranks layers against each
      other in a global ranking.
    * **reduce**: positions are aggregated per example first, ``â_n = (1/T) Σ_t a_{n,t}``,
      ``ĝ_n = Σ_t g_{n,t}``, ``A = 1/N Σ_n â_n â_nᵀ``, ``B = 1/N Σ_n ĝ_n ĝ_nᵀ``.  Exact
      (``A ⊗ B = F`` for one example) when ``g_{n,t}`` does not depend on ``t``, as for a layer
      followed directly by average pooling, and cheaper: ``Σ_t a`` of a conv needs no unfolding.

    Both coincide when ``T = 1`` (a Linear layer on one vector per example).  ``approx="auto"``
    picks per kind of layer from the architecture (:func:`resolve_approx`).  A weight used ``k`` times per
    forward counts its calls' positions together (``T = Σ_k T_k``).  Grouped / depthwise convs
    have one ``(A, B)`` pair per group; q, k and v of an attention in-projection are three
    blocks sharing ``A``.

    Args:
        model: Network mapping inputs to ``C`` outputs.
        batches: Re-iterable ``(x, y)`` batches.
        params: Weight names (default: :func:`~pai_core.scores.default_params`).  Each must be
            the weight of ``F.linear``, ``F.conv1d``/``F.conv2d`` or a matrix product in the
            forward pass (modules or functional uses alike: :mod:`~pai_core.scores.hooks`).
        loss: ``"mse"`` or ``"ce"``.
        approx: ``"auto"``, ``"reduce"`` or ``"expand"``.
        progress: Optional ``progress(done, total, message)`` per batch.
        diagnostics: Optional dict; receives ``kfac_approx`` (``{"conv": …, "linear": …}``, the
            approximation of each kind of layer),
            ``kfac_scale_ratio`` (``{layer: tr(A)·tr(B)/tr(F_diag)}``, every trace over the first
            :data:`SCALE_EXAMPLES` examples: 1 means K-FAC has the empirical Fisher's scale),
            ``kfac_scale_examples`` and, when some weights never reach the loss,
            ``unreached_params``.

    Returns:
        ``{weight name: KFactors}``; a weight that never reaches the loss gets zero factors.

    Raises:
        ValueError: A parameter is not the weight of such an op (e.g. a bias, a normalisation
            scale, a ``Conv3d`` weight, a weight transformed before use), named.
    """
    return _factors(model, batches, _resolve_params(model, params), loss, approx, progress, diagnostics)[0]


def _factors(
    model: nn.Module,
    batches: Batches,
    named: dict[str, nn.Parameter],
    loss: str,
    approx: str,
    progress: Progress | None,
    diagnostics: dict[str, Any] | None,
) -> tuple[dict[str, KFactors], _HookEngine]:
    kind = resolve_approx(model, approx)
    want = diagnostics is not None
    with _scoring_state(model):
        engine = _HookEngine(
            model,
            list(named),
            moments=want,
            kfac=True,
            approx=kind,
            moment_examples=SCALE_EXAMPLES if want else None,
        )
        call = ScoreCall(model, batches, named, loss, progress)
        it = iter(_batches(batches, model))
        first = next(it, None)
        if first is None:
            raise ValueError("batches is empty")
        engine._probe(*first, loss)
        bad = [n for n in named if n in engine.missed or n not in engine.blocks and n not in engine.unreached]
        if bad:
            raise ValueError(
                f"K-FAC has no factors for {bad}: only weights applied by F.linear, F.conv1d/conv2d or "
                "a matrix product have them (not biases, normalisation scales, Conv3d or transposed "
                "convs, or weights transformed before use); score them with diag"
            )
        label = kind["conv"] if kind["conv"] == kind["linear"] else "reduce/expand"
        _hooked_pass(call, moments=want, kfac=True, label=f"K-FAC factors ({label})", engine=engine)
    out = {}
    factors = engine.factors()
    sites = {s.ref.name: s for s in engine.sites or []}
    for name in named:
        if name in factors:
            a, b = factors[name]
            out[name] = KFactors(a, b, sites[name].ref.transposed)
            continue
        # Never reaches the loss: no curvature (reported, not hidden).
        w = named[name]
        groups = engine.blocks[name].nb if name in engine.blocks else 1
        d_b = w.shape[0] // groups
        out[name] = KFactors(w.new_zeros(1, w[0].numel(), w[0].numel()), w.new_zeros(groups, d_b, d_b))
    if diagnostics is not None:
        diagnostics["kfac_approx"] = kind
        diagnostics["kfac_scale_ratio"] = {n: _json_float(r) for n, r in engine.scale_ratios().items()}
        diagnostics["kfac_scale_examples"] = engine.n_moments
        if engine.unreached:
            diagnostics["unreached_params"] = list(engine.unreached)
    return out, engine


#: Examples on which the ``kfac_scale_ratio`` diagnostic is measured (it needs per-example
#: gradients, which K-FAC itself does not: measuring it on every example would cost about as
#: much as the ``diag`` score).
SCALE_EXAMPLES = 64


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _damped_inverse_diag(m: Tensor, damping: float) -> Tensor:
    """``diag((M + λI)⁻¹)`` per block with ``λ = damping · tr(M)/d`` (Cholesky in float64).

    float64 on purpose: at the default damping the damped factors' condition numbers reach
    ``1 + d/damping`` (4.6e6 for ResNet-50's 4608-wide patches), and a float32 Cholesky, though
    2.5x faster there, was measured 1.1e-2 off float64 (largest relative error of the diagonal,
    the reduce A factor of ``layer4.0.conv2`` of a random-weight ResNet-50, 16 images:
    ``bench/bench_kfac_inverse.py``).  The inverses are a cost independent of the number of
    images (README, "Performance").
    """
    d = m.shape[-1]
    damped = m.to(torch.float64, copy=True)  # the only copy of the factor (no identity matrix)
    diag = torch.diagonal(damped, dim1=-2, dim2=-1)
    lam = damping * diag.sum(-1) / d
    # A layer whose factor is exactly zero (all its inputs are zero) gets a tiny λ: its weights
    # then score ~0, which is the truth (removing them changes nothing).
    lam = torch.where(lam > 0, lam, torch.full_like(lam, 1e-30))
    diag.add_(lam[:, None])
    chol, info = torch.linalg.cholesky_ex(damped)
    if not bool((info == 0).all()):  # not numerically PD; a general inverse still has a diagonal
        return torch.diagonal(torch.linalg.inv(damped), dim1=-2, dim2=-1)
    del damped, diag
    # LAPACK's potri (triangular inverse + product): as fast as one triangular solve against I
    # for one block and faster for many small ones (depthwise convs).
    return torch.diagonal(torch.cholesky_inverse(chol), dim1=-2, dim2=-1)


# --------------------------------------------------------------------------------------


@register_score(
    "kfac",
    label="block Hessian (K-FAC)",
    data_driven=True,
    options=(
        ScoreOption(
            "damping", float, 1e-3, min=0.0, max=1e3, help="Each factor X becomes X + damping·tr(X)/dim(X)·I."
        ),
        ScoreOption(
            "approx",
            str,
            "auto",
            choices=APPROX,
            help="K-FAC-reduce (positions aggregated per example: CNNs that pool globally) or "
            "K-FAC-expand (every position an example: token models); auto decides by the architecture.",
        ),
    ),
    color="#009E73",
    order=2,
)
def kfac_score(c: ScoreCall, *, damping: float = 1e-3, approx: str = "auto") -> Scores:
    """``S_oi = θ_oi² / ([A_d⁻¹]_ii [B_d⁻¹]_oo)``: Eq. (3) with the K-FAC block H ≈ A ⊗ B of Eq. (5)
    (Occhiena et al., 2025, arXiv:2509.24066; Martens & Grosse, 2015, arXiv:1503.05671;
    K-FAC-reduce/expand: Eschenhagen et al., 2023, arXiv:2311.00636).

    The layer's curvature block is ``H_l ≈ A ⊗ B`` (Eq. (5); factors and the two approximations
    in :func:`kfac_factors`), so ``[H_l⁻¹]_(o,i),(o,i) = [A⁻¹]_ii · [B⁻¹]_oo``; each factor is
    damped, ``X_d = X + λ_X I`` with ``λ_X = damping · tr(X)/dim(X)``.  Grouped convs use their
    per-group blocks, attention in-projections their q, k and v blocks.

    Diagnostics (when asked): ``kfac_approx``, ``kfac_scale_ratio`` ``{layer: tr(A)·tr(B) /
    tr(F_diag)}`` on the first :data:`SCALE_EXAMPLES` examples, ``kfac_scale_examples``, and
    ``unreached_params`` (see :func:`kfac_factors`).

    Cost: one forward and one backward to the input per batch, the factor products (expand:
    ``O(N·T·(d_A² + d_B²))`` per layer; reduce: ``O(N·(d_A² + d_B²))`` plus one sum over
    positions) and, once, the inverses (``O(d_A³ + d_B³)`` per layer, independent of N).

    References:
        Occhiena, Iurada & Tommasi, "A Second-Order Perspective on Pruning at Initialization and
        Knowledge Transfer", arXiv:2509.24066 (2025), Eqs. (3) and (5).
        Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
        Curvature", ICML (2015), arXiv:1503.05671.
        Grosse & Martens, "A Kronecker-factored approximate Fisher matrix for convolution
        layers" (KFC), ICML (2016), arXiv:1602.01407.
        Eschenhagen, Immer, Turner, Schneider & Hennig, "Kronecker-Factored Approximate
        Curvature for Modern Neural Network Architectures", NeurIPS (2023), arXiv:2311.00636.
    """
    diag = c.diagnostics if c.diagnostics_wanted else None  # the scale ratio costs per-example passes
    factors, engine = _factors(c.model, c.batches, c.named, c.loss, approx, c.progress, diag)
    c.cover([n for n in c.named if n not in engine.unreached], engine.unreached)
    out = {}
    for n, p in c.named.items():
        if n in engine.unreached:  # no path to the loss: removing it changes nothing
            out[n] = torch.zeros_like(p.detach())
            continue
        f = factors.pop(n)  # freed as we go: the factors are K-FAC's largest tensors
        hinv = _damped_inverse_diag(f.B, damping)[:, :, None] * _damped_inverse_diag(f.A, damping)[:, None, :]
        th = p.detach()
        out[n] = (th.double() ** 2 / f.to_param(hinv, th.shape)).to(th.dtype)
    return out
