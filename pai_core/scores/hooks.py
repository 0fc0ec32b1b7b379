"""Per-example gradient statistics and K-FAC factors of Linear/Conv layers from one backward pass.

:class:`_HookEngine` hooks every Linear / Conv1d / Conv2d (and timm's TF-"same" convs) that owns
a scored parameter, runs one backward of the *summed* loss towards the input, and turns each
layer's input ``a`` and output gradient ``g`` into per-example gradients (``g aᵀ``, summed over
tokens or output positions, convolutions unfolded into patches) or K-FAC factor sums.  Other
parameters (normalisation affine parameters, position embeddings, ``Conv3d``, transposed convs,
subclasses that transform their weight in ``forward``) get exact per-example gradients from
``torch.func`` (vmap of grad, :func:`_vmap_moments`), slower.

Scope: any padding mode, groups, dilation, token sequences; weights shared between layers are
summed per example before squaring.  Checked against per-example loops in ``tests/test_scores.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import ScoreCall, _batches, _loss_sum, _num_batches

# Largest number of elements a per-example intermediate (unfolded patches, per-example
# gradients) may have before we split the batch into chunks; bounds peak memory.
_CHUNK_ELEMS = 1 << 21
# Unfolded-patch chunks this small (1 MiB in float32) stay in a core's cache between the
# copy that builds them and the matmul that consumes them.
_CACHE_ELEMS = 1 << 18


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


def _hooked_pass(c: ScoreCall, *, moments: bool, kfac: bool, label: str, sums: bool = True) -> _HookEngine:
    """Run :class:`_HookEngine` over every batch of ``c`` (the model already in eval mode)."""
    engine = _HookEngine(c.model, list(c.named), moments=moments, kfac=kfac, sums=sums)
    total = _num_batches(c.batches)
    for i, (x, y) in enumerate(_batches(c.batches, c.model)):
        engine.run(x, y, c.loss)
        c.report(i + 1, total, label)
    if engine.n == 0:
        raise ValueError("batches is empty")
    return engine
