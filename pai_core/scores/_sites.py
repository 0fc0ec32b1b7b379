"""Sites: the calls in a forward pass that apply a given weight, however the network applies it.

A ``torch.overrides.TorchFunctionMode`` (:class:`_Recorder`) sees every torch function the
forward pass calls.  A call of ``F.linear``, ``F.conv1d``/``F.conv2d`` or a matrix product
(``@``, ``torch.matmul``, ``torch.mm``) whose weight operand is a watched parameter, or a row
slice or transpose of one, is a *site*; the recorder hands it (input, weight, output, conv
geometry) to a callback, which may hook the output.  This covers layers called as modules
(``nn.Linear``, ``nn.Conv2d``, timm's same-padding convs), weights used functionally
(``nn.MultiheadAttention``'s ``in_proj_weight`` and ``out_proj``, open_clip's ``AttentionPool2d``,
whose projections go through ``F.multi_head_attention_forward``) and raw projection parameters
(open_clip's ViT ``x @ proj``).  Python functions of ``torch.nn.functional`` that take a watched
parameter run with their own torch-function check switched off (:func:`_transparent`): a mode is
switched off while it handles a call, so it would otherwise see one opaque call instead of the
``F.linear`` calls inside.  While a mode is active ``nn.MultiheadAttention`` never takes its fused
fast path (it checks ``has_torch_function``), which would hide them.

Used by :mod:`pai_core.scores.hooks` (statistics) and :func:`pai_core.scores.default_params`
(:func:`weight_operands`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["weight_operands"]


# --------------------------------------------------------------------------------------
# Sites: the calls that apply a scored weight
# --------------------------------------------------------------------------------------


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

    def out_size(self) -> tuple[int, int]:
        h, w = self.x.shape[2:]
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

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

    def patch_sums(self, square: bool = False) -> Tensor:
        """``Σ_t patch_t`` (or ``Σ_t patch_t²``) per example: ``(b, G, Cin/G·kh·kw)``, without
        unfolding: one strided window sum of the (padded) input per kernel offset."""
        x = self.x * self.x if square else self.x
        b, c = x.shape[:2]
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.padding, self.dilation
        ho, wo = self.out_size()
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        sums = [
            x[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw].sum(
                (2, 3)
            )
            for i in range(kh)
            for j in range(kw)
        ]
        out = torch.stack(sums, -1)  # b, C, kh·kw
        return out.reshape(b, self.groups, (c // self.groups) * kh * kw)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[-1])) if isinstance(v, list | tuple) else (int(v), int(v))


def _conv_call(x: Tensor, weight: Tensor, stride: Any, padding: Any, dilation: Any, groups: int) -> _ConvCall:
    """Canonical form of an ``F.conv1d``/``F.conv2d`` call from its arguments."""
    if weight.dim() == 3:  # Conv1d as a 2-D conv of height 1
        x = x.unsqueeze(2)
        k = (1, weight.shape[2])
        s, d = (1, _pair(stride)[0]), (1, _pair(dilation)[0])
        pad: Any = padding if isinstance(padding, str) else (0, _pair(padding)[0])
    else:
        k = (weight.shape[2], weight.shape[3])
        s, d = _pair(stride), _pair(dilation)
        pad = padding if isinstance(padding, str) else _pair(padding)
    if pad == "same":
        pads = []
        for kk, dd in ((k[1], d[1]), (k[0], d[0])):
            total = dd * (kk - 1)
            pads += [total // 2, total - total // 2]
        x, pad = F.pad(x, pads), (0, 0)
    elif pad == "valid":
        pad = (0, 0)
    # Symmetric zero padding stays symbolic: conv-backward takes it as an argument and patches()
    # pads cache-sized chunks; padding the whole input would allocate a fresh copy per layer.
    return _ConvCall(x, k, s, tuple(pad), d, int(groups))


@dataclasses.dataclass(frozen=True)
class _Ref:
    """How an op's weight operand relates to a scored parameter.

    ``rows``: the rows ``[r0, r1)`` of the parameter it is (None: all); ``transposed``: it is
    the parameter's transpose (``x @ P`` uses ``Pᵀ`` as a Linear weight)."""

    name: str
    rows: tuple[int, int] | None = None
    transposed: bool = False


@dataclasses.dataclass
class _Call:
    """One site call: its kind, weight, input and (conv) geometry; ``out`` once computed."""

    kind: str  # "linear" | "conv"
    ref: _Ref
    bias: str | None
    x: Tensor
    weight: Tensor
    conv_args: tuple = ()
    out: Tensor | None = None

    def key(self) -> tuple:
        return (self.kind, self.ref, self.bias)

    def conv(self, x: Tensor | None = None) -> _ConvCall:
        return _conv_call(self.x if x is None else x, self.weight, *self.conv_args)


def _no_torch_function(*args: Any, **kwargs: Any) -> bool:
    return False


@functools.cache
def _transparent(fn: types.FunctionType) -> types.FunctionType:
    """``fn`` (a Python function of ``torch.nn.functional``) with its torch-function check off,
    so that a mode sees the ops inside it (a mode is switched off while it handles a call)."""
    g = dict(fn.__globals__)
    for name in ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic"):
        g[name] = _no_torch_function
    clone = types.FunctionType(fn.__code__, g, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__kwdefaults__ = fn.__kwdefaults__
    return clone


_MATMULS = {
    torch.matmul,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.mm,
    torch.Tensor.mm,
}


class _Recorder(TorchFunctionMode):
    """Calls ``on_site(call)`` for every op whose weight operand is a scored parameter.

    ``on_site`` gets the :class:`_Call` with ``out`` set and returns the tensor the model
    continues with (the output itself, or a stand-in leaf: :meth:`_HookEngine._on_site`).
    """

    def __init__(self, params: dict[str, Tensor], on_site: Callable[[_Call], Tensor]):
        super().__init__()
        self.ids = {id(p): n for n, p in params.items()}
        self.params = params
        self.on_site = on_site

    def ref(self, t: Any) -> _Ref | None:
        """The parameter ``t`` is, or a row slice / transpose of, if any (None otherwise)."""
        if not isinstance(t, Tensor):
            return None
        name = self.ids.get(id(t))
        if name is not None:
            return _Ref(name)
        base = t._base
        name = self.ids.get(id(base)) if base is not None else None
        if name is None:
            return None
        p = self.params[name]
        off = t.storage_offset() - p.storage_offset()
        if t.dim() == p.dim() and t.shape[1:] == p.shape[1:] and t.stride() == p.stride():
            step = p.stride(0)
            if off % step == 0:
                return _Ref(name, rows=(off // step, off // step + t.shape[0]))
        if p.dim() == 2 and t.dim() == 2 and off == 0:
            if t.shape == p.shape[::-1] and t.stride() == p.stride()[::-1]:
                return _Ref(name, transposed=True)
        return None  # another view: not a site; the probe sees its gradient unexplained

    def _touches(self, args: tuple, kwargs: dict) -> bool:
        for a in (*args, *kwargs.values()):
            if isinstance(a, list | tuple):
                if any(self.ref(b) is not None for b in a):
                    return True
            elif self.ref(a) is not None:
                return True
        return False

    def __torch_function__(self, func, _types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        call = self._parse(func, args, kwargs)
        if call is not None:
            call.out = func(*args, **kwargs)
            return self.on_site(call)
        if (
            isinstance(func, types.FunctionType)
            and func.__module__ == "torch.nn.functional"
            and self._touches(args, kwargs)
        ):
            with self:
                return _transparent(func)(*args, **kwargs)
        return func(*args, **kwargs)

    def _parse(self, func: Any, args: tuple, kwargs: dict) -> _Call | None:
        if func is F.linear:
            x = args[0] if args else kwargs["input"]
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            ref = self.ref(w)
            if ref is None:
                return None
            if ref.transposed:  # F.linear(x, Pᵀ) = x @ P: P's transpose is the Linear weight
                return None  # (not seen in the wild; left to the probe's check)
            bias = self.ids.get(id(b)) if b is not None else None
            return _Call("linear", ref, bias, x, w)
        if func in (F.conv1d, F.conv2d):
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            defaults = (None, None, None, 1, 0, 1, 1)
            vals = [args[i] if i < len(args) else kwargs.get(n, defaults[i]) for i, n in enumerate(names)]
            x, w, b = vals[:3]
            ref = self.ref(w)
            if ref is None or ref.rows is not None or ref.transposed or x.dim() != w.dim():
                return None
            bias = self.ids.get(id(b)) if b is not None else None
            return _Call("conv", ref, bias, x, w, tuple(vals[3:]))
        if func in _MATMULS or func is torch.Tensor.__rmatmul__:
            if len(args) < 2:
                return None
            x, w = (args[1], args[0]) if func is torch.Tensor.__rmatmul__ else (args[0], args[1])
            if not isinstance(x, Tensor) or x.dim() < 2 or not isinstance(w, Tensor) or w.dim() != 2:
                return None
            ref = self.ref(w)
            if ref is None:
                return None
            # y = x @ W: W is the transpose of a Linear weight (W a parameter: P = Wᵀ's transpose).
            if ref.transposed:  # x @ Pᵀ = F.linear(x, P)
                return _Call("linear", _Ref(ref.name), None, x, w.mT)
            if ref.rows is not None:
                return None  # columns of the Linear weight: not seen in the wild
            return _Call("linear", _Ref(ref.name, transposed=True), None, x, w.mT)
        return None


def weight_operands(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the parameters the forward pass of ``x`` applies as the weight of ``F.linear``,
    ``F.conv1d/2d`` or a matrix product (modules and functional uses alike), in call order.

    Example:
        >>> net = nn.MultiheadAttention(4, 2, batch_first=True)
        >>> class SelfAttn(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mha, self.proj = net, nn.Parameter(torch.randn(4, 2))
        ...     def forward(self, x):
        ...         return self.mha(x, x, x, need_weights=False)[0].mean(1) @ self.proj
        >>> weight_operands(SelfAttn(), torch.randn(1, 3, 4))
        ['mha.in_proj_weight', 'mha.out_proj.weight', 'proj']
    """
    params = dict(model.named_parameters())
    seen: dict[str, None] = {}

    def on_site(c: _Call) -> Tensor:
        seen[c.ref.name] = None
        return c.out

    modes = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in modes:
            m.training = False
        with torch.no_grad(), _Recorder(params, on_site):
            model(x)
    finally:
        for m, t in modes:
            m.training = t
    return list(seen)
