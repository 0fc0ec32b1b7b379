"""PX: data-driven spectral foresight pruning through the path kernel (CNNs only)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..layers import is_activation
from ._base import ScoreCall, Scores, _batches, _num_batches, _scoring_state
from ._registry import ScoreOption, register_score


def _has_attention(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__ for m in model.modules()
    )


def _gate(m: nn.Module, z: Tensor) -> Tensor:
    """σ'(z) of an elementwise activation module (closed form for the piecewise-linear ones)."""
    if type(m) is nn.ReLU:
        return (z > 0).to(z.dtype)
    if type(m) in (nn.ReLU6, nn.Hardtanh):
        lo, hi = (0.0, 6.0) if type(m) is nn.ReLU6 else (m.min_val, m.max_val)
        return ((z > lo) & (z < hi)).to(z.dtype)
    if type(m) is nn.LeakyReLU:
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, m.negative_slope))
    with torch.enable_grad():
        zc = z.detach().clone().requires_grad_(True)
        (d,) = torch.autograd.grad(m(zc.clone()).sum(), zc)
    return d


class _FixedGate(nn.Module):
    """Replaces an activation in the PX surrogate: multiplies by the gates recorded on the real input."""

    def __init__(self, queue: list[Tensor]):
        super().__init__()
        self.queue = queue

    def forward(self, z: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return z * self.queue.pop(0)


def _replace_modules(model: nn.Module, names: Iterable[str], make: Callable[[str], nn.Module]) -> None:
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name))


#: Why PX does not apply to ViTs; the experiment refuses ViT encoders with it, and the score
#: itself refuses any model with attention layers.
REFUSAL = (
    "PX is defined for CNNs only: its path-kernel argument assumes the NTK regime, which "
    "self-attention breaks (the paper skips PX on ViTs); choose another score"
)


class _ChannelAffine(nn.Module):
    """``y = scale_c · x + shift_c`` per channel (dim 1): a BatchNorm in the PX path-kernel surrogate."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(view) + self.shift.view(view)


def _fold_batchnorm(net: nn.Module) -> int:
    """Replace every BatchNorm with running statistics by ``a²·x + c`` (``a = γ/σ``, ``c = β − aμ``).

    Returns the number replaced.  BatchNorms that keep no running statistics stay (batch statistics).
    """
    folded = 0
    for name, m in list(net.named_modules()):
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.running_mean is None:
            continue
        with torch.no_grad():
            a = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                a = a * m.weight
            c = -a * m.running_mean + (m.bias if m.bias is not None else 0.0)
        _replace_modules(net, [name], lambda _n, a=a, c=c: _ChannelAffine(a.detach() ** 2, c.detach()))
        folded += 1
    return folded


#: Share of ``|R|`` below which a tensor's ``Σ θ²|∂R/∂θ²|`` is rounding noise (PX refuses then).
NO_SIGNAL = 1e-9


@register_score(
    "px",
    label="PX",
    data_driven=True,
    refuses={"vit": REFUSAL},
    options=(
        ScoreOption(
            "bn_fold",
            int,
            1,
            min=0,
            max=1,
            help="1: in the path kernel z₂ each BatchNorm is its eval-mode affine map a·x + c "
            "(a = γ/σ, c = β − γμ/σ) with a squared like the weights it folds into (BatchNorm "
            "networks carry signal); 0: batch statistics as the authors' current code (z₂ is then "
            "constant on BatchNorm networks, and PX refuses them).",
        ),
    ),
    color="#CC79A7",
    order=5,
)
def px_score(c: ScoreCall, *, bn_fold: int = 1) -> Scores:
    """``S = θ² ⊙ |∂R/∂(θ²)|``, R the data-dependent path-kernel bound; CNNs only
    (Iurada et al., CVPR 2024, arXiv:2406.01345).

    Following the official implementation (github.com/iurada/px-ntk-pruning), with ``θ`` the
    scored weights and every other parameter (biases, the frozen head) as is:

    * gates ``σ'(z)`` of every activation module are recorded on the real input ``x`` with the
      model in eval mode (for ReLU: ``1[z > 0]``, PX's "path activation" pattern);
    * ``z₁(x) = f̃(x²; θ := 1)``: a surrogate with the scored weights set to 1, each activation
      replaced by a multiplication with its recorded gate, fed the squared input (this is the
      data-dependent "path activation matrix" estimator; no gradient flows through it); its
      BatchNorms normalise with batch statistics (train mode; the copy's running stats are thrown
      away), which keeps ``θ := 1`` finite in deep BatchNorm nets;
    * ``z₂ = f̃(1; θ := θ²)``: a surrogate with squared weights, identity activations, fed an
      all-ones input (the "path kernel"/path-norm estimator);
    * ``R = Σ_{i,c} z₁(x_i)_c · z₂_c`` and the score is ``θ² · |∂R/∂(θ²)|`` (Eq. (4) form in the
      squared variables).

    BatchNorm in ``z₂`` (``bn_fold``).  With batch statistics on an all-ones input, every channel
    after a BatchNorm is normalised to mean 0 over its positions, so a globally pooled output is
    exactly ``β``: ``z₂`` is constant in every weight before the last BatchNorm, and on
    EfficientNet-Lite0, MobileNetV2 and ResNet-50 ``|∂R/∂θ²|`` is rounding noise (≤ 1.4e-15).  The
    default (``bn_fold=1``) uses each BatchNorm as the per-channel affine map it is in eval mode,
    ``a·x + c`` with ``a = γ/σ`` and ``c = β − γμ/σ`` from its running statistics, and squares its
    scale like the weights it would fold into: ``a²·x + c`` (BatchNorm folded into the preceding
    convolution, ``W' = aW``, then squared).  The authors' earlier eval-mode code squares the whole
    BatchNorm state instead, which gives the same ``a²`` scale and a shift ``β² − a²μ²`` in place of
    ``c``; here the shift is kept as is, like every bias.  Either way ``z₂`` depends on every weight
    again.  A weight tensor whose share ``Σ θ²|∂R/∂θ²| / |R|`` is below 10⁻⁹ is one ``z₂`` does not
    see: the score refuses with the reason rather than return noise when that is due to
    ``bn_fold=0`` on a BatchNorm network, or holds for every tensor; otherwise (a branch that is
    really cut, e.g. a residual branch whose last BatchNorm has ``γ = 0``, as timm initialises them)
    the blind tensors are listed in ``diagnostics["px_blind_tensors"]``.

    The surrogates run in float64 on deep copies, so ``model`` is never modified.  Activation
    *modules* are rewritten; activations called as functions inside a module's ``forward`` stay
    nonlinear (they see non-negative inputs in the surrogates, where ReLU is the identity, but the
    gates of ``z₁`` are then missed).  CNNs only (:data:`REFUSAL`).

    Reference:
        Iurada, Ciccone & Tommasi, "Finding Lottery Tickets in Vision Models via Data-driven
        Spectral Foresight Pruning", CVPR (2024), arXiv:2406.01345.
    """
    model, batches, named = c.model, c.batches, c.named
    if _has_attention(model):
        raise ValueError(f"px does not support models with attention layers. {REFUSAL}")
    act_names = [n for n, m in model.named_modules() if is_activation(m)]
    gates: dict[str, list[Tensor]] = {n: [] for n in act_names}

    def surrogate(transform: Callable[[Tensor], Tensor]) -> nn.Module:
        net = copy.deepcopy(model).double()
        own = dict(net.named_parameters())
        with torch.no_grad():
            for n in named:
                own[n].copy_(transform(own[n]))
        for m in net.modules():
            m.training = isinstance(m, nn.modules.batchnorm._BatchNorm)
        return net

    pk = surrogate(torch.square)
    jvf = surrogate(torch.ones_like)
    _replace_modules(pk, act_names, lambda n: nn.Identity())
    _replace_modules(jvf, act_names, lambda n: _FixedGate(gates[n]))
    folded = _fold_batchnorm(pk) if bn_fold else 0
    c.diagnostics["px_batchnorms_folded"] = folded
    for p in jvf.parameters():
        p.requires_grad_(False)

    def record(name: str) -> Callable:
        def pre(mod: nn.Module, args: tuple) -> None:
            gates[name].append(_gate(mod, args[0]).double())

        return pre

    sums: dict[tuple[int, ...], Tensor] = {}
    total = _num_batches(batches)

    def run(net: nn.Module, x: Tensor) -> Tensor:
        # The surrogates keep BatchNorm in batch-statistics mode (as the authors' code): a batch whose
        # feature maps shrink to one value per channel cannot be normalised.
        try:
            return net(x)
        except ValueError as exc:
            if "more than 1 value per channel" not in str(exc):
                raise
            raise ValueError(
                f"px needs at least two values per channel at every BatchNorm, but a batch of {x.shape[0]} "
                f"image(s) of size {tuple(x.shape[2:])} reaches one: use larger images or batches of "
                "at least 2 images"
            ) from None

    handles = [model.get_submodule(n).register_forward_pre_hook(record(n)) for n in act_names]
    try:
        with _scoring_state(model), torch.no_grad():
            for i, (x, _y) in enumerate(_batches(batches, model)):
                model(x)
                z1 = run(jvf, x.double() ** 2)
                key = tuple(x.shape[1:])
                sums[key] = sums[key] + z1.sum(0) if key in sums else z1.sum(0)
                for q in gates.values():
                    q.clear()
                c.report(i + 1, total, "px: path activations")
    finally:
        for h in handles:
            h.remove()
    if not sums:
        raise ValueError("batches is empty")
    own = dict(pk.named_parameters())
    leaves = [own[n] for n in named]
    r = 0.0
    with torch.enable_grad():
        for p in pk.parameters():
            p.requires_grad_(False)
        for p in leaves:
            p.requires_grad_(True)
        for shape, s in sums.items():
            # z₂ does not depend on the data: one forward per input shape.  Two identical rows so
            # that train-mode BatchNorm sees the same statistics as a batch of ones.
            z2 = run(pk, torch.ones(2, *shape, dtype=torch.float64, device=s.device)).mean(0)
            r = r + (s * z2).sum()
        if not torch.isfinite(r):
            raise RuntimeError(
                "PX surrogate overflowed (R is not finite); the model is too deep without normalisation"
            )
        grads = torch.autograd.grad(r, leaves, allow_unused=True)
    out = {}
    for (n, p), g in zip(named.items(), grads):
        th2 = p.detach() ** 2
        out[n] = th2 * (g.abs().to(th2.dtype) if g is not None else torch.zeros_like(th2))
    # Σ_t θ²|∂R/∂θ²| over one weight tensor is (for a network without biases) R itself: a tensor
    # whose share is rounding noise next to |R| is one z₂ does not see.
    r = abs(float(r.detach()))
    share = {n: float(t.double().sum()) / r if r else 0.0 for n, t in out.items()}
    c.diagnostics["px_min_tensor_share"] = min(share.values())
    blind = [n for n, v in share.items() if not v > NO_SIGNAL]
    c.diagnostics["px_blind_tensors"] = blind
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if blind and ((not bn_fold and has_bn) or len(blind) == len(out)):
        why = (
            "batch-statistics BatchNorm (bn_fold=0) normalises the all-ones input of the path kernel z₂ "
            "to its shift β, so z₂ is constant in every weight before a BatchNorm: use bn_fold=1"
            if not bn_fold and has_bn
            else "the path kernel z₂ does not depend on any weight (a normalisation PX cannot fold, "
            "e.g. GroupNorm or LayerNorm, cuts it)"
        )
        raise ValueError(
            f"px carries no signal for {len(blind)} of {len(out)} weight tensors (e.g. {blind[:2]}: "
            f"Σ θ²|∂R/∂θ²| ≤ {NO_SIGNAL:g}·|R|, rounding noise) because {why}"
        )
    return out
