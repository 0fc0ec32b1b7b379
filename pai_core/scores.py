"""Saliency scores for pruning at initialisation (higher = keep).

Every score is a function of ``(model, batches, options)`` that returns one tensor per
scored parameter, keyed by its name in ``model.named_parameters()``, with the parameter's
shape.  :func:`available` lists the names; :func:`compute` dispatches.

Conventions shared by all data-driven scores
--------------------------------------------
* ``model`` maps a batch of inputs to ``C`` outputs (encoder + frozen ridge head in the
  pipeline).  It is evaluated in **eval mode** (BatchNorm uses its running statistics), so
  example ``i``'s output depends on ``x_i`` only and per-example gradients are well defined.
* Per-example loss, ``loss="mse"`` (the paper's squared error, Eq. (6)):
  ``ℓ(x, y) = ‖f(x) − onehot(y)‖²`` summed over the ``C`` classes, **without** a ½.
  ``loss="ce"``: ``ℓ(x, y) = −log softmax(f(x))_y``.
  The data loss is the mean ``L = (1/N) Σ_i ℓ(x_i, y_i)`` over all ``N`` examples of
  ``batches`` (batches of any size are weighted by their size, not averaged per batch).
* ``params`` defaults to every ``weight`` of a Conv or Linear layer (:func:`default_params`).
* Option ``bn_warmup`` (int, default 0): before scoring, reset the BatchNorm running
  statistics and re-estimate them with that many train-mode passes over ``batches``
  (``momentum=None``: cumulative average over batches, no gradients), as proposed by the
  scalable second-order PaI paper.  The re-estimated statistics **stay in the model**: that
  is the point of the option.  Without it, a score leaves the model exactly as it found it
  (parameters, ``.grad``, ``requires_grad``, train/eval flag of every module, buffers, hooks).

Scope of the fast paths
-----------------------
Per-example gradients (``diag``, ``fisher_taylor``) and K-FAC factors come from hooks on
``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` and timm's TF-"same" convs (any padding mode,
groups, dilation, token sequences).  Other parameters (LayerNorm/BatchNorm affine, position
embeddings, ``Conv3d``, subclasses that transform their weight in ``forward``) get exact
per-example gradients from ``torch.func`` (vmap of grad), slower; ``kfac`` rejects them.
Double-backward scores (``grasp``, ``hutchinson``) force PyTorch's math attention kernel,
as the fused ones have no second derivative.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> data = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
    >>> s = compute("diag", net, data)
    >>> sorted(s), s["0.weight"].shape
    (['0.weight', '2.weight'], torch.Size([8, 4]))
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    # registry
    "available",
    "compute",
    "LOSSES",
    # building blocks exposed for tests and the dashboard
    "default_params",
    "per_example_loss",
    "warmup_batchnorm",
    "KFactors",
    "kfac_factors",
]

Batches = Iterable[tuple[Tensor, Tensor]]
Progress = Callable[[int, int, str], None]

#: Loss names accepted by every data-driven score.
LOSSES = ("mse", "ce")

# Largest number of elements a per-example intermediate (unfolded patches, per-example
# gradients) may have before we split the batch into chunks; bounds peak memory.
_CHUNK_ELEMS = 1 << 21
# Unfolded-patch chunks this small (1 MiB in float32) stay in a core's cache between the
# copy that builds them and the matmul that consumes them.
_CACHE_ELEMS = 1 << 18


# --------------------------------------------------------------------------------------
# Losses, data, parameters
# --------------------------------------------------------------------------------------


def per_example_loss(out: Tensor, y: Tensor, loss: str = "mse") -> Tensor:
    """Per-example losses ``ℓ_i`` (shape ``(B,)``).

    Args:
        out: Model outputs, shape ``(B, C)``.
        y: Integer labels, shape ``(B,)``.
        loss: ``"mse"``: ``‖f(x) − onehot(y)‖²`` summed over classes (no ½);
            ``"ce"``: cross-entropy of the logits ``f(x)``.

    Returns:
        Tensor of shape ``(B,)``.
    """
    if out.dim() != 2:
        raise ValueError(f"the model must return (batch, classes) outputs, got shape {tuple(out.shape)}")
    if loss == "mse":
        # Comparison instead of F.one_hot, which checks labels with .item() and breaks vmap.
        target = (torch.arange(out.shape[1], device=out.device) == y.long()[:, None]).to(out.dtype)
        return (out - target).pow(2).sum(1)
    if loss == "ce":
        return F.cross_entropy(out, y.long(), reduction="none")
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")


def _loss_sum(out: Tensor, y: Tensor, loss: str) -> Tensor:
    # Summed, not averaged: row i of any gradient at the outputs is then ∇ℓ_i itself.
    return per_example_loss(out, y, loss).sum()


def _param_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _batches(batches: Batches, model: nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
    device, dtype = _param_device_dtype(model)
    for x, y in batches:
        x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
        yield x, torch.as_tensor(y).to(device).long()


def _num_batches(batches: Batches) -> int:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return 0  # unknown: progress reports total=0


def default_params(model: nn.Module) -> list[str]:
    """Names of every Conv/Linear ``weight`` in ``model.named_parameters()`` order."""
    wanted = {
        id(m._parameters["weight"])
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd) and m._parameters.get("weight") is not None
    }
    return [n for n, p in model.named_parameters() if id(p) in wanted]


def _resolve_params(model: nn.Module, params: Sequence[str] | None) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    names = default_params(model) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"unknown parameter name(s) {unknown}; valid: {', '.join(named)}")
    if not names:
        raise ValueError("no parameters to score")
    return {n: named[n] for n in names}


# --------------------------------------------------------------------------------------
# Model state: eval mode, requires_grad, BatchNorm warm-up
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _scoring_state(model: nn.Module, need_grad: Iterable[nn.Parameter] = ()) -> Iterator[None]:
    """Eval mode (+ ``requires_grad`` on ``need_grad``) inside; the exact prior state after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in need_grad]
    try:
        for m, _ in modes:
            m.training = False  # per module, not model.eval(): restore must be exact
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for m, t in modes:
            m.training = t
        for p, f in flags:
            p.requires_grad_(f)


def warmup_batchnorm(
    model: nn.Module, batches: Batches, passes: int = 1, progress: Progress | None = None
) -> None:
    """Re-estimate BatchNorm running statistics on ``batches`` (in place, kept).

    Resets every BatchNorm's running mean/var, then runs ``passes`` train-mode forward passes
    without gradients with ``momentum=None`` (cumulative average of the per-batch statistics).
    Only BatchNorm layers are put in train mode, so dropout stays off.  Momentum and every
    module's train/eval flag are restored afterwards; the new statistics stay.

    Args:
        model: Model to update.
        batches: Re-iterable ``(x, y)`` batches (labels unused).
        passes: Number of passes over ``batches``.
        progress: Optional ``progress(done, total, message)``.
    """
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if passes <= 0 or not bns:
        return
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in bns]
    total = _num_batches(batches) * passes
    done = 0
    try:
        for m, _ in modes:
            m.training = False
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.training = True
        with torch.no_grad():
            for _ in range(passes):
                for x, _y in _batches(batches, model):
                    model(x)
                    done += 1
                    if progress:
                        progress(done, total, "BatchNorm warm-up")
    finally:
        for m, t in modes:
            m.training = t
        for m, mom in momenta:
            m.momentum = mom


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    # Fused CPU/GPU attention kernels have no double backward; HVP scores need the math path.
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


# --------------------------------------------------------------------------------------
# Per-example gradients and K-FAC factors of Conv/Linear layers via hooks
# --------------------------------------------------------------------------------------


def _is_same_pad_conv(m: nn.Module) -> bool:
    # timm's TF-"same" convs pad dynamically inside forward (asymmetric), module.padding is 0.
    return type(m).__name__ in ("Conv2dSame", "Conv2dSameExport")


def _tap_kind(m: nn.Module) -> str | None:
    """'linear' / 'conv' when we know how ``m`` uses its weight, else None.

    Subclasses that override ``forward`` (weight standardisation, LoRA, ...) may transform the
    weight before using it, so they go to the generic (``torch.func``) path instead; timm's
    ``Linear`` only adds a TorchScript branch around ``F.linear``.
    """
    cls = type(m)
    if isinstance(m, nn.Linear) and (
        cls.forward is nn.Linear.forward
        or cls.__qualname__ == "Linear"
        and cls.__module__.startswith("timm.")
    ):
        return "linear"
    if _is_same_pad_conv(m):
        return "conv"
    for base in (nn.Conv1d, nn.Conv2d):
        if isinstance(m, base) and cls.forward is base.forward and cls._conv_forward is base._conv_forward:
            return "conv"
    return None


@dataclasses.dataclass(frozen=True)
class _ConvCall:
    """One conv call in canonical 2-D form: ``x`` (B, Cin, H, W) with any asymmetric or
    non-zero padding already applied, then symmetric zero ``padding``; Conv1d is height 1."""

    x: Tensor
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def pointwise(self) -> bool:
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def rows(self, sl: slice) -> _ConvCall:
        return dataclasses.replace(self, x=self.x[sl])

    def patches(self, groups: slice | None = None) -> Tensor:
        """Unfolded patches ``(b, G, Cin/G·kh·kw, T)``; column order (channel, kh, kw) as in
        ``weight[o].flatten()``.  Built from strided views (one copy), faster than F.unfold."""
        x, gs = self.x, self.groups
        if groups is not None:
            cg = x.shape[1] // gs
            x = x[:, groups.start * cg : groups.stop * cg]
            gs = groups.stop - groups.start
        b, c = x.shape[:2]
        if self.pointwise:
            return x.reshape(b, gs, c // gs, -1)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        v = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)  # b, C, Ho, Wo, .., ..
        if dh > 1 or dw > 1:
            v = v[..., ::dh, ::dw]
        return v.permute(0, 1, 4, 5, 2, 3).reshape(b, gs, c // gs * kh * kw, -1)


def _conv_call(m: nn.modules.conv._ConvNd, x: Tensor) -> _ConvCall:
    if x.dim() == 3:  # Conv1d as a 2-D conv of height 1
        x = x.unsqueeze(2)
        k, s, d = (1, m.kernel_size[0]), (1, m.stride[0]), (1, m.dilation[0])
        pad: Any = m.padding if isinstance(m.padding, str) else (0, m.padding[0])
        rev = list(m._reversed_padding_repeated_twice) + [0, 0]
    else:
        k, s, d, pad = tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation), m.padding
        rev = list(m._reversed_padding_repeated_twice)
    if _is_same_pad_conv(m):
        pads = []
        for size, kk, ss, dd in ((x.shape[-1], k[1], s[1], d[1]), (x.shape[-2], k[0], s[0], d[0])):
            total = max((math.ceil(size / ss) - 1) * ss + (kk - 1) * dd + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        x, pad = F.pad(x, pads), (0, 0)
    elif m.padding_mode != "zeros":
        x, pad = F.pad(x, rev, mode=m.padding_mode), (0, 0)
    elif pad == "same":
        pads = []
        for kk, dd in ((k[1], d[1]), (k[0], d[0])):
            total = dd * (kk - 1)
            pads += [total // 2, total - total // 2]
        x, pad = F.pad(x, pads), (0, 0)
    elif pad == "valid":
        pad = (0, 0)
    # Symmetric zero padding stays symbolic: conv-backward takes it as an argument and patches()
    # pads cache-sized chunks; padding the whole input would allocate a fresh copy per layer.
    return _ConvCall(x, k, s, tuple(pad), d, m.groups)


def _gram(u: Tensor) -> Tensor:
    """``Σ_b u_b u_bᵀ`` over examples for ``u`` of shape (b, G, K, T): (G, K, K)."""
    b, g, k, _ = u.shape
    ug = u[0] if b == 1 else u.permute(1, 2, 0, 3).reshape(g, k, -1)
    return ug @ ug.transpose(1, 2)


@dataclasses.dataclass
class _Tap:
    module: nn.Module
    kind: str
    weight: str | None  # scored parameter names this module uses
    bias: str | None


class _HookEngine:
    """Per-example gradient statistics of Conv/Linear parameters from one backward pass.

    A forward hook on each tapped module keeps its input and registers a tensor hook on its
    output; one backward of the *summed* loss (so row ``i`` of every output gradient is
    ``∂ℓ_i/∂z``) towards the input then hands each hook the output gradient ``g``.  For a
    Linear layer the per-example weight gradient is ``Σ_t g_{i,t} a_{i,t}ᵀ`` (sum over tokens
    ``t``); for a conv it is the same product with ``a`` the unfolded input patches and ``t``
    the output positions.  Tensor hooks stay bound to the output's original autograd node,
    so a later in-place op (``ReLU(inplace=True)``) does not change what they receive.  The
    backward asks for the gradient w.r.t. the input only, so no parameter gradient is formed
    and ``.grad`` is never touched.

    Collected statistics (sums over examples; callers divide by ``n``):
        ``sq[name]``: ``Σ_i (∂ℓ_i/∂θ)²``; ``sum[name]``: ``Σ_i ∂ℓ_i/∂θ``;
        ``a_sum/a_count/b_sum[name]``: K-FAC factor sums (see :func:`kfac_factors`).
    """

    def __init__(
        self, model: nn.Module, names: Sequence[str], *, moments: bool, kfac: bool, sums: bool = True
    ):
        self.model, self.moments, self.kfac, self.sums = model, moments, kfac, sums
        pname = {id(p): n for n, p in model.named_parameters()}
        wanted = set(names)
        self.taps: list[_Tap] = []
        covered: set[str] = set()
        # nn.MultiheadAttention reads out_proj.weight functionally and never calls out_proj.
        functional = {
            id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention) for c in m.modules()
        }
        for m in model.modules():
            kind = _tap_kind(m)
            if kind is None or id(m) in functional:
                continue
            w = pname.get(id(m._parameters.get("weight")))
            b = pname.get(id(m._parameters.get("bias"))) if m._parameters.get("bias") is not None else None
            w = w if w in wanted else None
            b = b if (b in wanted and not kfac) else None
            if w or b:
                self.taps.append(_Tap(m, kind, w, b))
                covered.update(n for n in (w, b) if n)
        self.other = [n for n in names if n not in covered]  # handled by the vmap fallback
        self.sq: dict[str, Tensor] = {}
        self.sum: dict[str, Tensor] = {}
        self.a_sum: dict[str, Tensor] = {}
        self.a_count: Counter[str] = Counter()
        self.b_sum: dict[str, Tensor] = {}
        self.n = 0

    # -- accumulation helpers ---------------------------------------------------------
    @staticmethod
    def _add(store: dict[str, Tensor], name: str, value: Tensor) -> None:
        if name in store:
            store[name] += value
        else:
            store[name] = value.clone()

    def _per_example(
        self, tap: _Tap, x: Tensor, g: Tensor, rows: slice
    ) -> tuple[Tensor | None, Tensor | None]:
        """Per-example (weight, bias) gradients for examples ``rows``."""
        m = tap.module
        x, g = x[rows], g[rows]
        b = g.shape[0]
        if tap.kind == "linear":
            xt = x.reshape(b, -1, x.shape[-1])
            gt = g.reshape(b, -1, g.shape[-1])
            gw = torch.bmm(gt.transpose(1, 2), xt) if tap.weight else None
            gb = gt.sum(1) if tap.bias else None
            return gw, gb
        call = _conv_call(m, x)
        g4 = g.unsqueeze(2) if g.dim() == 3 else g
        gw = None
        if tap.weight:
            if call.pointwise and call.groups == 1:
                gw = torch.bmm(
                    g4.reshape(b, g4.shape[1], -1), call.x.reshape(b, call.x.shape[1], -1).transpose(1, 2)
                )
            else:
                # The weight gradient of a conv whose groups are the (example, group) pairs is the
                # stack of per-example weight gradients: one native conv-backward call.
                w = m.weight
                wshape = (b * w.shape[0], w.shape[1], *call.kernel)
                gw = torch.nn.grad.conv2d_weight(
                    call.x.reshape(1, -1, *call.x.shape[2:]),
                    wshape,
                    g4.reshape(1, -1, *g4.shape[2:]),
                    call.stride,
                    call.padding,
                    call.dilation,
                    b * call.groups,
                )
            gw = gw.reshape(b, *m.weight.shape)
        gb = g4.sum((2, 3)) if tap.bias else None
        return gw, gb

    def _chunk(self, tap: _Tap, x: Tensor, g: Tensor) -> int:
        # Examples per chunk so that per-example gradients stay below _CHUNK_ELEMS elements.
        per = max(tap.module.weight.numel(), 1)
        if tap.kind == "linear" and x.dim() > 2:
            per = max(per, x[:1].numel(), g[:1].numel())
        return max(1, _CHUNK_ELEMS // per)

    def _kfac_update(self, tap: _Tap, x: Tensor, g: Tensor) -> None:
        m, name = tap.module, tap.weight
        assert name is not None
        if tap.kind == "linear":
            a = x.reshape(-1, x.shape[-1])  # rows: (example, token)
            gg = g.reshape(-1, g.shape[-1])
            self._add(self.a_sum, name, (a.T @ a).unsqueeze(0))
            self._add(self.b_sum, name, (gg.T @ gg).unsqueeze(0))
            self.a_count[name] += a.shape[0]
            return
        call = _conv_call(m, x)
        b, groups = x.shape[0], call.groups
        g4 = g.unsqueeze(2) if g.dim() == 3 else g
        gt = g4.reshape(b, groups, g4.shape[1] // groups, -1)  # (b, G, Cout/G, T)
        t = gt.shape[-1]
        if gt.shape[2] == 1:  # depthwise: B is a scalar per group
            b_fac = (gt * gt).sum((0, 3))[:, :, None]
        else:
            b_fac = sum(_gram(gt[lo : lo + 16]) for lo in range(0, b, 16))
        self._add(self.b_sum, name, b_fac)
        # A: the unfolded patches are K times the input; build them in chunks of examples (and
        # groups) that fit in cache, where the gram matmul reads them back for free (3-6x faster
        # than one big unfold on CPU).
        k = (x.shape[1] // groups) * call.kernel[0] * call.kernel[1]
        per_group = k * t
        budget = _CACHE_ELEMS if x.device.type == "cpu" else _CHUNK_ELEMS * 8  # GPUs want big launches
        g_step = groups if per_group * groups <= budget else max(1, budget // per_group)
        b_step = max(1, budget // (per_group * g_step))
        a_fac = x.new_zeros(groups, k, k)
        for lo in range(0, b, b_step):
            part = call.rows(slice(lo, lo + b_step))
            for g0 in range(0, groups, g_step):
                sl = slice(g0, min(groups, g0 + g_step))
                a_fac[sl] += _gram(part.patches(sl if g_step < groups else None))
        self._add(self.a_sum, name, a_fac)
        self.a_count[name] += b * t

    # -- the hooked pass --------------------------------------------------------------
    def run(self, x: Tensor, y: Tensor, loss: str) -> None:
        """Accumulate statistics of one batch (model must already be in eval mode)."""
        if not x.is_floating_point():
            raise ValueError("per-example scores need floating-point inputs")
        uses: Counter[str] = Counter()
        pending: dict[str, Tensor] = {}
        handles = []
        failures: list[str] = []

        def on_grad(tap: _Tap, xin: Tensor, version: int, g: Tensor) -> None:
            if xin._version != version:
                failures.append(type(tap.module).__name__)
                return
            xin, g = xin.detach(), g.detach()
            if self.kfac:
                self._kfac_update(tap, xin, g)
            if not self.moments:
                return
            single = all(uses[n] == 1 for n in (tap.weight, tap.bias) if n)
            if single and tap.kind == "linear" and xin.dim() == 2:
                # No token axis: Σ_i (g_i a_iᵀ)² = (g²)ᵀ(a²), no per-example tensor needed.
                if tap.weight:
                    self._add(self.sq, tap.weight, (g * g).T @ (xin * xin))
                    if self.sums:
                        self._add(self.sum, tap.weight, g.T @ xin)
                if tap.bias:
                    self._add(self.sq, tap.bias, (g * g).sum(0))
                    if self.sums:
                        self._add(self.sum, tap.bias, g.sum(0))
                return
            step = self._chunk(tap, xin, g)
            for lo in range(0, g.shape[0], step):
                rows = slice(lo, lo + step)
                for name, pe in zip((tap.weight, tap.bias), self._per_example(tap, xin, g, rows)):
                    if name is None or pe is None:
                        continue
                    if uses[name] == 1:
                        self._add(self.sq, name, (pe * pe).sum(0))
                        if self.sums:
                            self._add(self.sum, name, pe.sum(0))
                    else:  # shared weight: sum the per-example contributions before squaring
                        buf = pending.setdefault(
                            name, torch.zeros(g.shape[0], *pe.shape[1:], dtype=pe.dtype, device=pe.device)
                        )
                        buf[rows] += pe

        def make_hook(tap: _Tap) -> Callable:
            def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
                if not (torch.is_grad_enabled() and isinstance(out, Tensor) and out.requires_grad):
                    return
                xin = args[0]
                for n in (tap.weight, tap.bias):
                    if n:
                        uses[n] += 1
                out.register_hook(lambda g, t=tap, a=xin, v=xin._version: on_grad(t, a, v, g))

            return hook

        try:
            for tap in self.taps:
                handles.append(tap.module.register_forward_hook(make_hook(tap)))
            xl = x.detach().requires_grad_(True)
            total = _loss_sum(self.model(xl), y, loss)
            torch.autograd.grad(total, xl)
        finally:
            for h in handles:
                h.remove()
        if failures:
            raise RuntimeError(
                f"the input of a {failures[0]} layer was modified in place after the layer used it; "
                "per-example gradients would be wrong (disable inplace ops before the layer)"
            )
        for name, buf in pending.items():
            self._add(self.sq, name, (buf * buf).sum(0))
            self._add(self.sum, name, buf.sum(0))
        if self.other and self.moments:
            sq, sm = _vmap_moments(self.model, self.other, x, y, loss)
            for name in self.other:
                self._add(self.sq, name, sq[name])
                self._add(self.sum, name, sm[name])
        self.n += x.shape[0]


def _vmap_moments(
    model: nn.Module, names: Sequence[str], x: Tensor, y: Tensor, loss: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Σ_i (∇ℓ_i)² and Σ_i ∇ℓ_i for parameters outside Conv/Linear layers (torch.func)."""
    from torch.func import functional_call, grad, vmap

    named = dict(model.named_parameters())
    theta = {n: named[n].detach() for n in names}

    def one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return _loss_sum(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0), loss)

    per = max(sum(t.numel() for t in theta.values()), 1)
    chunk = max(1, _CHUNK_ELEMS // per)
    g = vmap(grad(one), in_dims=(None, 0, 0), chunk_size=chunk)(theta, x, y)
    return {n: (g[n] ** 2).sum(0) for n in names}, {n: g[n].sum(0) for n in names}


def _hooked_pass(
    model: nn.Module,
    batches: Batches,
    names: Sequence[str],
    loss: str,
    *,
    moments: bool,
    kfac: bool,
    progress: Progress | None,
    label: str,
    sums: bool = True,
) -> _HookEngine:
    engine = _HookEngine(model, names, moments=moments, kfac=kfac, sums=sums)
    total = _num_batches(batches)
    for i, (x, y) in enumerate(_batches(batches, model)):
        engine.run(x, y, loss)
        if progress:
            progress(i + 1, total, label)
    if engine.n == 0:
        raise ValueError("batches is empty")
    return engine


# --------------------------------------------------------------------------------------
# K-FAC
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KFactors:
    """Kronecker factors of one layer's curvature block, per group.

    ``A[g]`` is ``(d_A, d_A)`` with ``d_A = Cin/groups·kh·kw`` (``in_features`` for Linear)
    and ``B[g]`` is ``(d_B, d_B)`` with ``d_B = Cout/groups``; the block of group ``g`` over
    the row-major flattened weights ``weight[g·d_B:(g+1)·d_B].reshape(-1)`` is
    ``kron(B[g], A[g])`` (the paper writes ``A ⊗ B`` for the column-major ``vec``).
    """

    A: Tensor
    B: Tensor

    @property
    def groups(self) -> int:
        return self.A.shape[0]


def kfac_factors(
    model: nn.Module,
    batches: Batches,
    *,
    params: Sequence[str] | None = None,
    loss: str = "mse",
    progress: Progress | None = None,
) -> dict[str, KFactors]:
    """K-FAC factors (Eq. (5)) of every scored Conv/Linear weight, with the model in eval mode.

    With ``a_{n,t}`` the layer input at position/token ``t`` of example ``n`` (for a conv: the
    unfolded input patch of output position ``t``, padding included, no bias column) and
    ``g_{n,t} = ∂ℓ_n/∂z_{n,t}`` the per-example gradient at the pre-activation output,

        ``A = 1/(N·T) Σ_{n,t} a_{n,t} a_{n,t}ᵀ``   (averaged over examples and positions),
        ``B = 1/N     Σ_{n,t} g_{n,t} g_{n,t}ᵀ``   (summed over positions, averaged over examples),

    the "K-FAC-expand" scaling of Eschenhagen et al. (2023) / KFC (Grosse & Martens, 2016):
    ``A ⊗ B`` then approximates the empirical-Fisher block ``E_n[vec(∇_W ℓ_n) vec(∇_W ℓ_n)ᵀ]``
    at the same scale as the diagonal score (exactly so when ``T = 1``).  Token sequences
    (ViT Linear layers) use the same convention with ``t`` the token.  Grouped / depthwise
    convs get one ``(A, B)`` pair per group.  A module called ``k`` times per forward counts
    its calls as ``k·T`` positions.

    Args:
        model: Network mapping inputs to ``C`` outputs.
        batches: Re-iterable ``(x, y)`` batches.
        params: Weight names (default: every Conv/Linear weight).  Only weights of
            ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` (and timm's same-padding conv) qualify.
        loss: ``"mse"`` or ``"ce"``.
        progress: Optional ``progress(done, total, message)`` per batch.

    Returns:
        ``{weight name: KFactors}``.

    Raises:
        ValueError: A parameter is not the weight of a supported layer.
    """
    named = _resolve_params(model, params)
    with _scoring_state(model):
        engine = _HookEngine(model, list(named), moments=False, kfac=True)
        if engine.other:
            raise ValueError(
                f"K-FAC needs weights of nn.Linear / nn.Conv1d / nn.Conv2d layers; cannot score {engine.other}"
            )
        engine = _hooked_pass(
            model,
            batches,
            list(named),
            loss,
            moments=False,
            kfac=True,
            progress=progress,
            label="K-FAC factors",
        )
    out = {}
    for name in named:
        if name not in engine.a_sum:  # layer never reached the loss: no curvature
            w = named[name]
            kind_groups = 1
            for t in engine.taps:
                if t.weight == name and t.kind == "conv":
                    kind_groups = t.module.groups
            d_b = w.shape[0] // kind_groups
            d_a = w[0].numel()
            z = w.new_zeros
            out[name] = KFactors(z(kind_groups, d_a, d_a), z(kind_groups, d_b, d_b))
            continue
        out[name] = KFactors(engine.a_sum[name] / engine.a_count[name], engine.b_sum[name] / engine.n)
    return out


def _damped_inverse_diag(m: Tensor, damping: float) -> Tensor:
    """``diag((M + λI)⁻¹)`` per group with ``λ = damping · tr(M)/d`` (float64)."""
    m = m.double()
    d = m.shape[-1]
    lam = damping * torch.diagonal(m, dim1=-2, dim2=-1).sum(-1) / d
    # A layer whose factor is exactly zero (dead inputs) gets a tiny λ: its weights then score ~0.
    lam = torch.where(lam > 0, lam, torch.full_like(lam, 1e-30))
    eye = torch.eye(d, dtype=m.dtype, device=m.device)
    damped = m + lam[:, None, None] * eye
    chol, info = torch.linalg.cholesky_ex(damped)
    if not bool((info == 0).all()):  # not numerically PD; a general inverse still has a diagonal
        return torch.diagonal(torch.linalg.inv(damped), dim1=-2, dim2=-1)
    if d <= 64:  # many small blocks (depthwise convs): batched cholesky_inverse is fastest
        return torch.diagonal(torch.cholesky_inverse(chol), dim1=-2, dim2=-1)
    # M⁻¹ = L⁻ᵀL⁻¹, so diag(M⁻¹)_i = Σ_k (L⁻¹)²_ki: one triangular solve, 4x faster than
    # cholesky_inverse for a 1280 x 1280 factor on CPU.
    linv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    return (linv * linv).sum(-2)


# --------------------------------------------------------------------------------------
# The scores
# --------------------------------------------------------------------------------------


def _magnitude(model, batches, named, loss, progress):
    """``θ²`` (isotropic Hessian ``H = I`` in Eq. (3))."""
    return {n: p.detach() ** 2 for n, p in named.items()}


def _random(model, batches, named, loss, progress, *, seed: int = 0):
    """Uniform ``[0, 1)`` noise from a CPU generator seeded with ``seed`` (names in sorted order)."""
    gen = torch.Generator().manual_seed(int(seed))
    draws = {n: torch.rand(named[n].shape, generator=gen, dtype=torch.float64) for n in sorted(named)}
    return {n: draws[n].to(device=p.device, dtype=p.dtype) for n, p in named.items()}


def _diag(model, batches, named, loss, progress):
    """``θ² · (1/N) Σ_i (∂ℓ_i/∂θ)²`` (diagonal empirical Fisher, per-example gradients)."""
    with _scoring_state(model):
        eng = _hooked_pass(
            model,
            batches,
            list(named),
            loss,
            moments=True,
            kfac=False,
            sums=False,
            progress=progress,
            label="diag: per-example gradients",
        )
    return {n: p.detach() ** 2 * _get(eng.sq, n, p) / eng.n for n, p in named.items()}


def _fisher_taylor(model, batches, named, loss, progress):
    """``|θ ⊙ ḡ + ½ θ² ⊙ F̂|`` with ``ḡ = ∇L`` and ``F̂ = (1/N)Σ_i (∇ℓ_i)²``."""
    with _scoring_state(model):
        eng = _hooked_pass(
            model,
            batches,
            list(named),
            loss,
            moments=True,
            kfac=False,
            progress=progress,
            label="fisher_taylor: per-example gradients",
        )
    out = {}
    for n, p in named.items():
        th = p.detach()
        out[n] = (th * _get(eng.sum, n, p) / eng.n + 0.5 * th**2 * _get(eng.sq, n, p) / eng.n).abs()
    return out


def _get(store: dict[str, Tensor], name: str, p: Tensor) -> Tensor:
    # A parameter whose layer never reached the loss has zero gradient.
    return store[name] if name in store else torch.zeros_like(p)


def _kfac(model, batches, named, loss, progress, *, damping: float = 1e-3):
    """``θ² / ([A_d⁻¹]_ii [B_d⁻¹]_oo)`` (Eq. (3) with ``H ≈ A ⊗ B``, Eq. (5))."""
    if damping < 0:
        raise ValueError("damping must be >= 0")
    factors = kfac_factors(model, batches, params=list(named), loss=loss, progress=progress)
    out = {}
    for n, p in named.items():
        f = factors[n]
        hinv = _damped_inverse_diag(f.B, damping)[:, :, None] * _damped_inverse_diag(f.A, damping)[:, None, :]
        th = p.detach()
        out[n] = (th.double() ** 2 / hinv.reshape(th.shape)).to(th.dtype)
    return out


def _grad_full(model, batches, named, loss, progress, label, done=0, total=0):
    """``∇_θ L`` of the mean data loss (autograd per batch, summed, divided by N)."""
    params = list(named.values())
    acc = [torch.zeros_like(p) for p in params]
    n = 0
    for x, y in _batches(batches, model):
        gs = torch.autograd.grad(_loss_sum(model(x), y, loss), params, allow_unused=True)
        for a, g in zip(acc, gs):
            if g is not None:
                a += g
        n += x.shape[0]
        done += 1
        if progress:
            progress(done, total, label)
    if n == 0:
        raise ValueError("batches is empty")
    return [a / n for a in acc], n


def _snip(model, batches, named, loss, progress):
    """``|θ ⊙ ∂L/∂θ|``: the gradient w.r.t. the mask ``c`` at ``c = 1`` (Eq. (4))."""
    with _scoring_state(model, named.values()):
        g, _ = _grad_full(
            model, batches, named, loss, progress, "snip: gradient", total=_num_batches(batches)
        )
    return {n: (p.detach() * gi).abs() for (n, p), gi in zip(named.items(), g)}


def _hvp_pass(model, batches, named, loss, vectors: list[list[Tensor]], progress, label, done, total):
    """``(Σ_b H_b v for v in vectors, N)``, ``H_b`` the Hessian of batch b's summed loss (double backward)."""
    params = list(named.values())
    outs = [[torch.zeros_like(p) for p in params] for _ in vectors]
    # vmap over the double backward (is_grads_batched) is much faster than a loop for matmul
    # networks, but its convolution rules are slower than looping (measured: 3x on a 32x32 CNN,
    # 70x on EfficientNet-Lite0), so conv nets loop over the vectors.
    batched = not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    n = 0
    for x, y in _batches(batches, model):
        n += x.shape[0]
        gs = torch.autograd.grad(_loss_sum(model(x), y, loss), params, create_graph=True, allow_unused=True)
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
        if progress:
            progress(done, total, label)
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


def _grasp(model, batches, named, loss, progress):
    """``θ ⊙ Hg`` with ``g = ∇L``, ``H = ∇²L`` (GraSP with its original sign, see below).

    GraSP (Wang et al., 2020) removes the weights with the *largest* ``S(−θ) = −θ ⊙ Hg``.
    As a "higher = keep" score we return ``−S = θ ⊙ Hg``: a weight with large positive
    ``θ ⊙ Hg`` is kept.

    Example (one weight ``θ = 2``, ``x = 1``, ``C = 1``, label 0, so ``L = (θ − 1)²``,
    ``g = 2(θ − 1) = 2``, ``H = 2``, ``θ ⊙ Hg = 8``):

        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(1, 1, bias=False)
        >>> _ = net.weight.data.fill_(2.0)
        >>> compute("grasp", net, [(torch.ones(1, 1), torch.tensor([0]))])["weight"]
        tensor([[8.]])
    """
    total = 2 * _num_batches(batches)
    with _scoring_state(model, named.values()), _math_attention():
        g, n = _grad_full(model, batches, named, loss, progress, "grasp: gradient", total=total)
        (hg,), _ = _hvp_pass(
            model, batches, named, loss, [g], progress, "grasp: Hessian-gradient product", total // 2, total
        )
    return {name: p.detach() * h / n for (name, p), h in zip(named.items(), hg)}


def _hutchinson(model, batches, named, loss, progress, *, probes: int = 10, seed: int = 0):
    """``θ² · diag(H)`` with ``diag(H) ≈ (1/K) Σ_k z_k ⊙ H z_k``, Rademacher ``z_k``.

    ``H = ∇²L`` is the Hessian of the full-data loss w.r.t. the scored parameters; each probe
    ``z_k`` is drawn once (generator seeded from ``seed``) and used for every batch, so
    ``H z_k = Σ_b H_b z_k / N`` is the exact full-data HVP (double backward).
    """
    if probes < 1:
        raise ValueError("probes must be >= 1")
    params = list(named.values())
    base = torch.Generator().manual_seed(int(seed))
    probe_seeds = torch.randint(0, 2**62, (probes,), generator=base).tolist()
    diag = [torch.zeros_like(p) for p in params]
    # Probes in blocks so that a block's Rademacher vectors fit in memory next to one batch's
    # double-backward graph; each block re-runs the data pass.
    block = max(1, min(probes, (1 << 26) // max(sum(p.numel() for p in params), 1)))
    nblocks = math.ceil(probes / block)
    per = _num_batches(batches)
    n = 0
    with _scoring_state(model, params), _math_attention():
        for j, lo in enumerate(range(0, probes, block)):
            zs = [_rademacher(params, s) for s in probe_seeds[lo : lo + block]]
            hzs, n = _hvp_pass(
                model,
                batches,
                named,
                loss,
                zs,
                progress,
                f"hutchinson: probes {lo + 1}-{lo + len(zs)} of {probes}",
                j * per,
                nblocks * per,
            )
            for z, hz in zip(zs, hzs):
                for d, zi, hi in zip(diag, z, hz):
                    d += zi * hi
    if n == 0:
        raise ValueError("batches is empty")
    return {name: p.detach() ** 2 * d / (n * probes) for (name, p), d in zip(named.items(), diag)}


def _rademacher(params: list[Tensor], seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(device=p.device, dtype=p.dtype)
        for p in params
    ]


# -- PX ---------------------------------------------------------------------------------

_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Tanh,
    nn.Sigmoid,
)


def _is_activation(m: nn.Module) -> bool:
    return isinstance(m, _ACTIVATIONS) or type(m).__module__.startswith("timm.layers.activations")


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


def _px(model, batches, named, loss, progress):
    """PX (Iurada et al., CVPR 2024): ``θ² ⊙ |∂R/∂(θ²)|`` with ``R`` the data-dependent path-kernel bound.

    Following the official implementation (github.com/iurada/px-ntk-pruning), with ``θ`` the
    scored weights and every other parameter (BatchNorm affine, biases, the frozen head) as is:

    * gates ``σ'(z)`` of every activation module are recorded on the real input ``x`` with the
      model in eval mode (for ReLU: ``1[z > 0]``, PX's "path activation" pattern);
    * ``z₁(x) = f̃(x²; θ := 1)``: a surrogate with the scored weights set to 1, each activation
      replaced by a multiplication with its recorded gate, fed the squared input (this is the
      data-dependent "path activation matrix" estimator; no gradient flows through it);
    * ``z₂ = f̃(1; θ := θ²)``: a surrogate with squared weights, identity activations, fed an
      all-ones input (the "path kernel"/path-norm estimator);
    * ``R = Σ_{i,c} z₁(x_i)_c · z₂_c`` and the score is ``θ² · |∂R/∂(θ²)|`` (Eq. (4) form in the
      squared variables).

    As in the official code the surrogates normalise with batch statistics (BatchNorm layers in
    train mode; the copies' running stats are thrown away), which keeps ``θ := 1`` finite in
    deep BatchNorm nets; they run in float64 on deep copies, so ``model`` is never modified.
    Activation *modules* are rewritten; activations called as functions inside a module's
    ``forward`` stay nonlinear (they see non-negative inputs in the surrogates, where ReLU is
    the identity, but the gates of ``z₁`` are then missed).  CNNs only: PX's NTK argument
    does not hold with self-attention (the paper skips PX on ViTs).
    """
    if _has_attention(model):
        raise ValueError(
            "px does not support models with attention layers: PX's path-kernel argument assumes a "
            "CNN in the NTK regime and does not hold with self-attention (the paper skips PX on ViTs)"
        )
    act_names = [n for n, m in model.named_modules() if _is_activation(m)]
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
    for p in jvf.parameters():
        p.requires_grad_(False)

    def record(name: str) -> Callable:
        def pre(mod: nn.Module, args: tuple) -> None:
            gates[name].append(_gate(mod, args[0]).double())

        return pre

    sums: dict[tuple[int, ...], Tensor] = {}
    total = _num_batches(batches)
    handles = [model.get_submodule(n).register_forward_pre_hook(record(n)) for n in act_names]
    try:
        with _scoring_state(model), torch.no_grad():
            for i, (x, _y) in enumerate(_batches(batches, model)):
                model(x)
                z1 = jvf(x.double() ** 2)
                key = tuple(x.shape[1:])
                sums[key] = sums[key] + z1.sum(0) if key in sums else z1.sum(0)
                for q in gates.values():
                    q.clear()
                if progress:
                    progress(i + 1, total, "px: path activations")
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
            z2 = pk(torch.ones(2, *shape, dtype=torch.float64, device=s.device)).mean(0)
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
    return out


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Score:
    fn: Callable[..., dict[str, Tensor]]
    data_driven: bool
    options: dict[str, Any]


_REGISTRY: dict[str, _Score] = {
    "magnitude": _Score(_magnitude, False, {}),
    "random": _Score(_random, False, {"seed": 0}),
    "diag": _Score(_diag, True, {}),
    "kfac": _Score(_kfac, True, {"damping": 1e-3}),
    "snip": _Score(_snip, True, {}),
    "grasp": _Score(_grasp, True, {}),
    "px": _Score(_px, True, {}),
    "hutchinson": _Score(_hutchinson, True, {"probes": 10, "seed": 0}),
    "fisher_taylor": _Score(_fisher_taylor, True, {}),
}


def available() -> list[str]:
    """Names accepted by :func:`compute`, in display order."""
    return list(_REGISTRY)


def compute(
    name: str,
    model: nn.Module,
    batches: Batches | None,
    *,
    params: Sequence[str] | None = None,
    loss: str = "mse",
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    r"""Compute saliency score ``name`` for the parameters ``params`` of ``model`` (higher = keep).

    Scores (``L`` the mean data loss, ``ℓ_i`` per-example losses, module docstring):

    * ``magnitude``: ``θ²``; Eq. (3) with the isotropic Hessian ``H = I``.
    * ``diag``: ``θ² · (1/N) Σ_i (∂ℓ_i/∂θ)²``; Eq. (3) with the diagonal empirical Fisher
      ``H_jj = E[(∇_j ℓ)²]`` of per-example gradients (Sec. 3.2 "Diagonal").
    * ``kfac``: ``θ²_{o,i} / ([A_d⁻¹]_ii · [B_d⁻¹]_oo)``; Eq. (3) with the block-diagonal
      ``H_l ≈ A ⊗ B`` of Eq. (5), ``X_d = X + λ_X I``, ``λ_X = damping · tr(X)/dim(X)``
      (option ``damping``, default ``1e-3``); factors as in :func:`kfac_factors`.
    * ``snip``: ``|θ ⊙ ∂L/∂θ|`` (Lee et al., 2019; Eq. (4) with ``F = L``).
    * ``grasp``: ``θ ⊙ Hg``, ``g = ∇L``, ``H = ∇²L`` (Wang et al., 2020: removing the largest
      ``−θ ⊙ Hg`` is keeping the largest ``θ ⊙ Hg``).
    * ``px``: ``θ² ⊙ |∂R/∂(θ²)|`` with ``R`` PX's data-dependent path-kernel bound (Iurada et
      al., CVPR 2024); CNNs only.
    * ``hutchinson``: ``θ² · diag(H)``, ``diag(H) ≈ (1/K) Σ_k z_k ⊙ H z_k`` with ``K = probes``
      (default 10) Rademacher probes from ``seed`` (default 0).
    * ``fisher_taylor``: ``|θ ⊙ ∂L/∂θ + ½ θ² ⊙ F̂|`` with ``F̂`` the diagonal empirical Fisher:
      the "Fisher-Taylor sensitivity" of Gollini Navarrete et al. (2025), as in their code
      (github.com/Gollini/Scalable_Second_Order_PaI, ``fd_taylor``).  The Taylor change of
      ``L`` when zeroing ``θ`` is ``−θg + ½θ²H``; we keep the paper's ``+θg`` for comparability.
    * ``random``: uniform noise from ``seed`` (default 0).

    Args:
        name: One of :func:`available`.
        model: Network mapping a batch of inputs to ``(B, C)`` outputs.
        batches: Re-iterable sequence of ``(x, y)`` with integer labels ``y``; may be ``None``
            for ``magnitude`` and ``random``.
        params: Names (as in ``model.named_parameters()``) to score; default
            :func:`default_params`.
        loss: ``"mse"`` (default) or ``"ce"``.
        progress: Optional callable ``progress(done, total, message)``, called per batch.
        **options: Score-specific options listed above, plus ``bn_warmup`` (int, default 0)
            for the data-driven scores.

    Returns:
        ``{parameter name: score tensor of the parameter's shape}``, detached.

    Raises:
        ValueError: Unknown score, loss, option or parameter name.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown score {name!r}; valid: {', '.join(_REGISTRY)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    spec = _REGISTRY[name]
    valid = dict(spec.options)
    if spec.data_driven:
        valid["bn_warmup"] = 0
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for score {name!r}; valid: {sorted(valid) or 'none'}")
    opts = {**valid, **options}
    warm = int(opts.pop("bn_warmup", 0))
    named = _resolve_params(model, params)
    if spec.data_driven and batches is None:
        raise ValueError(f"score {name!r} needs data (batches)")
    if warm > 0:
        warmup_batchnorm(model, batches, warm, progress)
    scores = spec.fn(model, batches, named, loss, progress, **opts)
    return {n: scores[n].detach() for n in named}
