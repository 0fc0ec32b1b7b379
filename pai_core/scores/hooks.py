"""Per-example gradient statistics and K-FAC factors from one backward pass, for every weight
matrix a network uses, whether a module or the network's own code applies it.

How the weights are found
-------------------------
Every call that applies a scored weight (``F.linear``, ``F.conv1d/2d``, a matrix product,
including the ones inside ``F.multi_head_attention_forward`` and a raw ``x @ proj``) is a *site*
(:mod:`pai_core.scores._sites`): its input ``a`` is kept and its output hooked, and the backward
pass hands over the output gradient ``g``.  We chose one mechanism at the level of torch
functions over per-module special cases because the same code then serves every architecture,
and because what it cannot see it can *detect* (below) instead of returning zeros.

Which example a row belongs to
------------------------------
Convolutions take the examples on their first axis.  A linear site may not: inside
``F.multi_head_attention_forward`` inputs are ``(tokens, batch, features)`` and the output
projection sees ``(tokens·batch, features)`` rows in token-major order.  A probe on two
examples (:meth:`_HookEngine._probe`) finds, for every site, which rows change when one example
is perturbed, and from that the axis (and the order within a merged axis) that carries the
examples.  A row changed by two examples means the examples interact (e.g. BatchNorm in train
mode), and per-example gradients are then undefined: an error.

Nothing missed, nothing silent
------------------------------
The same probe compares, for every scored parameter, the sum of the per-site gradients
``Σ g aᵀ`` with autograd's gradient.  A parameter autograd gives no gradient never reaches the
loss (:attr:`_HookEngine.unreached`: its gradient is exactly zero, which callers report).  A
parameter whose gradient the sites do not fully explain (a weight transformed before use, a
``Conv3d``, a normalisation scale, a use outside the recognised ops) is :attr:`_HookEngine.missed`:
moment statistics then come from exact per-example gradients of ``torch.func``
(:func:`_vmap_moments`, slower), and K-FAC, which has no factors for it, refuses it by name.

Statistics (sums over examples; callers divide by ``n``)
--------------------------------------------------------
``sq[name] = Σ_i (∂ℓ_i/∂θ)²`` and ``sum[name] = Σ_i ∂ℓ_i/∂θ`` from per-example gradients
``Σ_t g_{i,t} a_{i,t}ᵀ`` (convolutions unfolded into patches), and K-FAC factor sums in the
"expand" or "reduce" setting (:func:`pai_core.scores.kfac.kfac_factors` gives the formulas).
Checked against per-example loops and explicit patch extraction in ``tests/test_scores.py`` and
on the papers' architectures in ``tests/test_conformance.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ._base import ScoreCall, _batches, _loss_sum, _num_batches
from ._sites import _Call, _ConvCall, _Recorder, _Ref

# Largest number of elements a per-example intermediate (per-example gradients) may have
# before we split the batch into chunks; bounds peak memory.
_CHUNK_ELEMS = 1 << 21
# Unfolded-patch chunks for K-FAC-expand: at most this many elements (16 MiB in float32) and at
# least _MIN_INNER positions per matrix product (a product over few positions reads the whole
# K x K accumulator per handful of multiply-adds: 2.8x slower on ResNet-50's last stage).
_PATCH_ELEMS = 1 << 22
_MIN_INNER = 512
# Symmetric products X Xᵀ of more than _SYRK_MIN rows are formed block by block, lower
# triangle only (0.57-0.71x the time of one full product, measured on one CPU thread).
_SYRK_MIN = 512
_SYRK_BLOCK = 256
# Examples of the layout/coverage probe.
_PROBE = 2


# --------------------------------------------------------------------------------------
# Layout of the examples in a site's input
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where the examples are in a linear site's input ``(*lead, features)``.

    ``dim``: the leading axis that holds them; ``order``: ``"whole"`` (one row per example on
    that axis), ``"major"`` (the axis is ``(examples, m)`` flattened) or ``"minor"``
    (``(m, examples)`` flattened, e.g. ``(tokens·batch)`` rows in attention's output projection).
    """

    dim: int
    order: str

    def examples(self, t: Tensor, b: int) -> Tensor:
        """``t`` as ``(b, rows per example, features)``."""
        d = self.dim
        if self.order == "major":
            t = t.unflatten(d, (b, -1))
        elif self.order == "minor":
            t = t.unflatten(d, (-1, b))
            d += 1
        if d != 0:
            t = t.movedim(d, 0)
        return t.reshape(b, -1, t.shape[-1])


def _infer_layout(ids: Tensor, p: int) -> _Layout | None:
    """The layout consistent with ``ids`` (per leading position: the example whose
    perturbation changed that row, −1 for rows no example changes), or None if none/several.

    Rows that no example changes (an input that does not depend on the data, e.g. saturated
    activations) carry no evidence; with none at all, only an input whose shape allows a single
    layout (one leading axis of ``p`` rows and no merged one) is placed."""
    found = []
    known = ids >= 0
    if not bool(known.any()):
        fits = [d for d, s in enumerate(ids.shape) if s % p == 0]
        if len(fits) == 1 and ids.shape[fits[0]] == p:
            return _Layout(fits[0], "whole")
        return None
    for d, s in enumerate(ids.shape):
        if s % p:
            continue
        m = s // p
        idx = torch.arange(s)
        for order in ("whole",) if m == 1 else ("major", "minor"):
            want = idx // m if order != "minor" else idx % p
            shape = [1] * ids.dim()
            shape[d] = s
            want = want.view(shape).expand_as(ids)
            if bool((ids[known] == want[known]).all()):
                found.append(_Layout(d, order))
    return found[0] if len(found) == 1 else None


# --------------------------------------------------------------------------------------
# Symmetric products
# --------------------------------------------------------------------------------------


def _syrk_(acc: Tensor, u: Tensor) -> None:
    """``acc += u uᵀ`` for ``u`` (G, K, M), lower triangle by blocks when K is large (only the
    lower triangle of ``acc`` is then valid: :func:`_mirror_` completes it)."""
    k = u.shape[1]
    if k <= _SYRK_MIN:
        acc.baddbmm_(u, u.mT)
        return
    for i in range(0, k, _SYRK_BLOCK):
        ri = slice(i, min(k, i + _SYRK_BLOCK))
        acc[:, ri, : ri.stop].baddbmm_(u[:, ri], u[:, : ri.stop].mT)


def _patch_chunks(k: int, t: int, groups: int) -> tuple[int, int]:
    """(examples, groups) per chunk of unfolded patches ``(K, T)`` per group and example.

    At most about :data:`_PATCH_ELEMS` elements per chunk (memory), but at least
    :data:`_MIN_INNER` positions per product whatever ``K`` is: a chunk of one example of
    ResNet-50's last stage (``K = 4608``, ``T = 49``) would read the whole ``K × K`` accumulator
    per 49 multiply-adds.  Groups are split only when a chunk would exceed 4x the bound.

    Example:
        >>> _patch_chunks(4608, 49, 1)  # ResNet-50's layer4 3x3 convs at 224 px: not one example
        (18, 1)
    """
    per_example = k * t * groups
    b_step = max(math.ceil(_MIN_INNER / t), _PATCH_ELEMS // max(per_example, 1), 1)
    g_step = groups
    if b_step * per_example > 4 * _PATCH_ELEMS:
        g_step = max(1, _PATCH_ELEMS // (k * t * b_step))
    return b_step, g_step


def _mirror_(acc: Tensor) -> Tensor:
    """Make ``acc`` the symmetric matrix whose lower triangle it holds (in place; one transient
    strict-lower copy) and return it."""
    upper = torch.tril(acc, -1).mT
    return acc.tril_().add_(upper)


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Site:
    """A site as the probe found it: its call key, layout and K-FAC blocks."""

    key: tuple
    kind: str
    ref: _Ref
    bias: str | None
    layout: _Layout | None  # linear sites: where the examples are (None: unknown)
    groups: int = 1  # conv groups


@dataclasses.dataclass
class _Blocks:
    """K-FAC block structure of one parameter: ``nb`` row blocks of its (out, in) matrix,
    ``na`` input factors (1: shared by every block; else one per block)."""

    nb: int
    na: int
    d_out: int
    d_in: int


class ExamplesInteract(RuntimeError):
    """The model mixes examples (e.g. BatchNorm in train mode): per-example gradients are undefined."""


class _HookEngine:
    """Per-example gradient statistics and K-FAC factor sums of the scored parameters.

    Args:
        model: The network (in eval mode while it runs).
        names: Scored parameter names.
        moments: Collect ``sq`` (and ``sum`` when ``sums``).
        kfac: Collect K-FAC factor sums.
        approx: ``"expand"`` or ``"reduce"`` for every layer, or ``{"conv": …, "linear": …}``
            per kind of site (a parameter takes its first site's kind).
        moment_examples: Collect moments on the first this many examples only (None: all).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Sequence[str],
        *,
        moments: bool,
        kfac: bool,
        sums: bool = True,
        approx: str | dict[str, str] = "expand",
        moment_examples: int | None = None,
    ):
        self.model, self.moments, self.kfac, self.sums = model, moments, kfac, sums
        self.approx = approx if isinstance(approx, dict) else {"conv": approx, "linear": approx}
        self.kind: dict[str, str] = {}  # K-FAC approximation per parameter
        self.moment_examples = moment_examples
        named = dict(model.named_parameters())
        self.names = list(names)
        self.params = {n: named[n] for n in self.names}
        self.sites: list[_Site] | None = None
        self.unreached: list[str] = []
        self.missed: list[str] = []
        self.blocks: dict[str, _Blocks] = {}
        self.sq: dict[str, Tensor] = {}
        self.sum: dict[str, Tensor] = {}
        self.a_sum: dict[str, Tensor] = {}
        self.a_count: dict[str, Tensor] = {}  # expand: positions per A block, summed over examples
        self.b_sum: dict[str, Tensor] = {}
        # Diagnostic (K-FAC with moments on the first examples): Σ‖a‖² per A block, Σ‖g‖² per
        # B block over those examples (for reduce: of the per-example sums â, ĝ).
        self.tr_a: dict[str, Tensor] = {}
        self.tr_b: dict[str, Tensor] = {}
        self.n = 0
        self.n_moments = 0
        self._direct: dict[str, bool] = {}

    # -- the probe ---------------------------------------------------------------------
    def _record(self, x: Tensor, on_site: Callable[[_Call], Tensor]) -> Tensor:
        with _Recorder(self.params, on_site):
            return self.model(x)

    def _probe(self, x: Tensor, y: Tensor, loss: str) -> None:
        """Find the sites, their example layout and which parameters they fully explain."""
        g = torch.Generator(device="cpu").manual_seed(0)
        p = _PROBE
        reps = [x[i % x.shape[0]] for i in range(p)]
        xp = torch.stack(reps).clone()
        yp = torch.stack([y[i % y.shape[0]] for i in range(p)])
        noise = torch.randn(xp.shape, generator=g, dtype=torch.float32).to(xp)
        scale = float(xp.float().std()) or 1.0
        if x.shape[0] < p:  # make the probe's examples distinct
            xp = xp + 0.5 * scale * torch.randn(xp.shape, generator=g, dtype=torch.float32).to(xp)

        calls: list[_Call] = []

        def keep(c: _Call) -> Tensor:
            calls.append(c)
            return c.out

        with torch.no_grad():
            self._record(xp, keep)
            base = list(calls)
            changed: list[list[Tensor]] = []
            for i in range(p):
                calls.clear()
                xi = xp.clone()
                xi[i] = xi[i] + scale * noise[i]
                self._record(xi, keep)
                if [c.key() for c in calls] != [c.key() for c in base]:
                    raise RuntimeError("the model applies its weights differently to different inputs")
                changed.append([_rows_changed(c0, c1) for c0, c1 in zip(base, calls)])
        sites = []
        for k, c in enumerate(base):
            lead = changed[0][k].shape
            ids = torch.full(lead, -1, dtype=torch.long)
            for i in range(p):
                hit = changed[i][k]
                if bool((hit & (ids >= 0)).any()):
                    raise ExamplesInteract(
                        f"an input of {c.ref.name!r}'s layer depends on several examples: the model "
                        "mixes examples (BatchNorm in train mode?); per-example gradients are undefined"
                    )
                ids[hit] = i
            if c.kind == "conv":
                layout = _Layout(0, "whole") if _infer_layout(ids, p) == _Layout(0, "whole") else None
                groups = int(c.conv_args[-1])
            else:
                layout, groups = _infer_layout(ids, p), 1
            sites.append(_Site(c.key(), c.kind, c.ref, c.bias, layout, groups))
        self.sites = sites
        self._check_coverage(xp, yp, loss)
        self._plan_blocks()

    def _check_coverage(self, xp: Tensor, yp: Tensor, loss: str) -> None:
        """Sort the parameters: explained by the sites, unreached, or missed (see module doc)."""
        sums: dict[str, Tensor] = {}

        def on_site(c: _Call) -> Tensor:
            out, c.out = c.out, None
            if out.requires_grad:
                out.register_hook(functools.partial(self._probe_grad, c, sums))
            return out

        params = list(self.params.values())
        flags = [(q, q.requires_grad) for q in params]
        try:
            for q in params:
                q.requires_grad_(True)
            total = _loss_sum(self._record(xp, on_site), yp, loss)
            auto = torch.autograd.grad(total, params, allow_unused=True)
        finally:
            for q, f in flags:
                q.requires_grad_(f)
        for name, ga in zip(self.params, auto):
            gh = sums.get(name)
            if ga is None:
                if gh is not None and bool(gh.any()):
                    self.missed.append(name)  # sites saw a gradient autograd does not: not ours
                else:
                    self.unreached.append(name)
                continue
            scale = float(ga.norm()) + float(gh.norm() if gh is not None else 0.0)
            err = float((ga - (gh if gh is not None else 0)).norm())
            tol = 1e-3 if ga.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-9
            if err > tol * scale:
                self.missed.append(name)
        # A site whose examples could not be located cannot give per-example statistics.
        for s in self.sites or []:
            if s.layout is None and (self.moments or self.kfac and self.approx[s.kind] == "reduce"):
                for n in (s.ref.name, s.bias):
                    if n and n not in self.missed and n not in self.unreached:
                        self.missed.append(n)

    def _probe_grad(self, c: _Call, sums: dict[str, Tensor], g: Tensor) -> None:
        g = g.detach()
        w = self._site_weight_grad(c, c.x.detach(), g)
        _place(sums, self.params[c.ref.name], c.ref, w)
        if c.bias:
            gb = (
                g.sum(tuple(range(g.dim() - 1)))
                if c.kind == "linear"
                else g.sum(tuple(i for i in range(g.dim()) if i != 1))
            )
            _place(sums, self.params[c.bias], _Ref(c.bias), gb)

    @staticmethod
    def _site_weight_grad(c: _Call, x: Tensor, g: Tensor) -> Tensor:
        """``Σ g aᵀ`` over every row/position: the site's weight gradient (in the op's layout)."""
        if c.kind == "linear":
            return g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        call = c.conv(x)
        g4 = g.unsqueeze(2) if g.dim() == 3 else g
        w = torch.nn.grad.conv2d_weight(
            call.x, (c.weight.shape[0], c.weight.shape[1], *call.kernel), g4,
            call.stride, call.padding, call.dilation, call.groups,
        )  # fmt: skip
        return w.reshape(c.weight.shape)

    def _plan_blocks(self) -> None:
        """K-FAC blocks per parameter and whether its moments can be accumulated site by site."""
        by_name: dict[str, list[_Site]] = {}
        for s in self.sites or []:
            by_name.setdefault(s.ref.name, []).append(s)
            if s.bias:
                by_name.setdefault(s.bias, []).append(s)
        packed = _packed_qkv(self.model)
        for name, sites in by_name.items():
            ranges = [s.ref.rows or (0, _out_dim(self.params[name], s.ref)) for s in sites]
            disjoint = all(
                a[1] <= b[0] or b[1] <= a[0] for i, a in enumerate(ranges) for b in ranges[i + 1 :]
            )
            self._direct[name] = disjoint
            w = self.params[name]
            if any(s.bias == name for s in sites) or not self.kfac:
                continue
            s0 = sites[0]
            self.kind[name] = self.approx[s0.kind]
            if s0.kind == "conv":
                g = s0.groups
                self.blocks[name] = _Blocks(g, g, w.shape[0] // g, w[0].numel())
                continue
            d_out = _out_dim(w, s0.ref)
            d_in = w.shape[0] if s0.ref.transposed else w[0].numel()
            cuts = sorted({r for rng in ranges for r in rng} | {0, d_out})
            sizes = {b - a for a, b in zip(cuts, cuts[1:])}
            if len(sizes) != 1:
                self.missed.append(name)  # unequal row blocks: no K-FAC layout for them
                continue
            nb = len(cuts) - 1
            if nb == 1 and id(w) in packed:
                nb = 3
            shared = all(s.ref.rows is None for s in sites)
            self.blocks[name] = _Blocks(nb, 1 if shared else nb, d_out // nb, d_in)

    # -- one batch ---------------------------------------------------------------------
    def run(self, x: Tensor, y: Tensor, loss: str) -> None:
        """Accumulate statistics of one batch (model must already be in eval mode)."""
        if not x.is_floating_point():
            raise ValueError("per-example scores need floating-point inputs")
        if self.sites is None:
            self._probe(x, y, loss)
        b = x.shape[0]
        self._batch = _Batch(b, self._moment_rows(b))
        k = 0
        failures: list[str] = []
        leaves: list[Tensor] = []
        sites = self.sites or []

        def on_site(c: _Call) -> Tensor:
            nonlocal k
            if k >= len(sites) or sites[k].key != c.key():
                raise RuntimeError("the model applies its weights differently to different inputs")
            site = sites[k]
            k += 1
            out = c.out
            if not self._wanted(site):
                return out
            if not out.requires_grad:  # no path from the data to here: differentiate w.r.t. it
                out = out.detach().requires_grad_(True)
                leaves.append(out)
            c.out = None  # the hook must not keep the output alive (it is a closure on c)
            out.register_hook(lambda g, s=site, c=c, v=c.x._version: self._on_grad(s, c, v, g, failures))
            return out

        params = list(self.model.parameters())
        flags = [(q, q.requires_grad) for q in params]
        try:
            for q in params:  # no parameter gradient is ever formed: rows of g come from the data
                q.requires_grad_(False)
            xl = x.detach().requires_grad_(True)
            total = _loss_sum(self._record(xl, on_site), y, loss)
            if k != len(sites):
                raise RuntimeError("the model applies its weights differently to different inputs")
            if total.requires_grad:
                torch.autograd.grad(total, [xl, *leaves], allow_unused=True)
        finally:
            for q, f in flags:
                q.requires_grad_(f)
        if failures:
            raise RuntimeError(
                f"the input of {failures[0]!r}'s layer was modified in place after the layer used it; "
                "per-example gradients would be wrong (disable inplace ops before the layer)"
            )
        self._finish_batch(x, y, loss)
        self.n += b

    def _wanted(self, site: _Site) -> bool:
        return any(
            n and n in self.params and n not in self.missed and n not in self.unreached
            for n in (site.ref.name, site.bias)
        )

    def _moment_rows(self, b: int) -> int:
        if not self.moments:
            return 0
        if self.moment_examples is None:
            return b
        return max(0, min(b, self.moment_examples - self.n))

    def _on_grad(self, site: _Site, c: _Call, version: int, g: Tensor, failures: list[str]) -> None:
        if c.x._version != version:
            failures.append(site.ref.name)
            return
        x, g = c.x.detach(), g.detach()
        w_ok = site.ref.name not in self.missed and site.ref.name not in self.unreached
        if self.kfac and w_ok and site.bias != site.ref.name and site.ref.name in self.blocks:
            if self.kind[site.ref.name] == "reduce":
                self._reduce_update(site, c, x, g)
            else:
                self._expand_update(site, c, x, g)
        if self._batch.rows:
            self._moment_update(site, c, x, g)

    # -- K-FAC --------------------------------------------------------------------------
    def _linear_rows(self, site: _Site, t: Tensor, b: int) -> Tensor:
        assert site.layout is not None
        return site.layout.examples(t, b)

    def _expand_update(self, site: _Site, c: _Call, x: Tensor, g: Tensor) -> None:
        name = site.ref.name
        bl = self.blocks[name]
        b = self._batch.b
        a_acc = self._acc(self.a_sum, name, (bl.na, bl.d_in, bl.d_in), x)
        b_acc = self._acc(self.b_sum, name, (bl.nb, bl.d_out, bl.d_out), g)
        count = self._acc(self.a_count, name, (bl.na,), x)
        lo, hi = self._block_range(site, bl)
        ja = slice(0, bl.na) if bl.na == 1 or site.kind == "conv" else slice(lo, hi)
        diag = self._diag_rows()
        if site.kind == "linear":
            a2 = x.reshape(-1, x.shape[-1])
            g2 = g.reshape(-1, g.shape[-1])
            if ja.stop - ja.start == 1:
                _syrk_(a_acc[ja], a2.T.unsqueeze(0))
            else:  # one input for several blocks of their own (rare): one product, added to each
                gram = a2.new_zeros(1, bl.d_in, bl.d_in)
                _syrk_(gram, a2.T.unsqueeze(0))
                a_acc[ja] += gram
            _syrk_(b_acc[lo:hi], g2.reshape(-1, hi - lo, bl.d_out).permute(1, 2, 0))
            count[ja] += a2.shape[0]
            if diag:
                a3 = self._linear_rows(site, x, b)[:diag]
                g3 = self._linear_rows(site, g, b)[:diag]
                self._traces(name, bl, ja, (a3 * a3).sum(), lo, hi, (g3 * g3).sum((0, 1)))
            return
        call = c.conv(x)
        groups = call.groups
        g4 = g.unsqueeze(2) if g.dim() == 3 else g
        gt = g4.reshape(b, groups, g4.shape[1] // groups, -1)  # (b, G, Cout/G, T)
        t = gt.shape[-1]
        if gt.shape[2] == 1:  # depthwise: B is a scalar per group
            b_acc += (gt * gt).sum((0, 3))[:, :, None]
        else:
            step = max(1, _PATCH_ELEMS // max(gt[:1].numel(), 1))
            for s0 in range(0, b, step):
                u = gt[s0 : s0 + step].permute(1, 2, 0, 3).reshape(groups, gt.shape[2], -1)
                _syrk_(b_acc, u)
        # A: unfolded patches (K times the input) in chunks of examples (and groups).
        k = (x.shape[1] // groups) * call.kernel[0] * call.kernel[1]
        b_step, g_step = _patch_chunks(k, t, groups)
        for s0 in range(0, b, b_step):
            part = call.rows(slice(s0, s0 + b_step))
            for g0 in range(0, groups, g_step):
                sl = slice(g0, min(groups, g0 + g_step))
                pt = part.patches(sl if g_step < groups else None)  # (b', G', K, T)
                _syrk_(a_acc[sl], pt.permute(1, 2, 0, 3).reshape(pt.shape[1], k, -1))
        count += b * t
        if diag:
            ta = call.rows(slice(0, diag)).patch_sums(square=True).sum((0, 2))  # per group
            tb = (gt[:diag] * gt[:diag]).sum((0, 3)).reshape(-1)
            self._traces(name, bl, ja, ta, lo, hi, tb)

    def _reduce_update(self, site: _Site, c: _Call, x: Tensor, g: Tensor) -> None:
        """Per-example sums ``Σ_t a`` / ``Σ_t g`` (reduced to factors after the batch)."""
        name = site.ref.name
        bl = self.blocks[name]
        b = self._batch.b
        lo, hi = self._block_range(site, bl)
        if site.kind == "linear":
            a3 = self._linear_rows(site, x, b)
            g3 = self._linear_rows(site, g, b)
            t = a3.shape[1]
            asum = a3.sum(1)[:, None, :]  # (b, 1, d_in)
            gsum = g3.sum(1).reshape(b, hi - lo, bl.d_out)
        else:
            call = c.conv(x)
            g4 = g.unsqueeze(2) if g.dim() == 3 else g
            t = g4.shape[2] * g4.shape[3]
            asum = call.patch_sums()  # (b, G, K)
            gsum = g4.sum((2, 3)).reshape(b, bl.nb, bl.d_out)
        buf = self._batch.reduce.setdefault(
            name,
            [
                x.new_zeros(b, bl.na, bl.d_in),
                x.new_zeros(bl.na),
                g.new_zeros(b, bl.nb, bl.d_out),
            ],
        )
        if bl.na == 1 or site.kind == "conv":
            ja = slice(0, bl.na)
        else:
            ja = slice(lo, hi)
        buf[0][:, ja] += asum
        buf[1][ja] += t
        buf[2][:, lo:hi] += gsum

    def _finish_reduce(self) -> None:
        diag = self._diag_rows()
        for name, (asum, count, gsum) in self._batch.reduce.items():
            bl = self.blocks[name]
            ahat = asum / count.clamp_min(1)[None, :, None]  # mean over positions
            a_acc = self._acc(self.a_sum, name, (bl.na, bl.d_in, bl.d_in), asum)
            b_acc = self._acc(self.b_sum, name, (bl.nb, bl.d_out, bl.d_out), gsum)
            _syrk_(a_acc, ahat.permute(1, 2, 0))
            _syrk_(b_acc, gsum.permute(1, 2, 0))
            if diag:
                ta = (ahat[:diag] ** 2).sum((0, 2))
                tb = (gsum[:diag] ** 2).sum(0).reshape(-1)
                self._traces(name, bl, slice(0, bl.na), ta, 0, bl.nb, tb)

    def _block_range(self, site: _Site, bl: _Blocks) -> tuple[int, int]:
        if site.ref.rows is None:
            return 0, bl.nb
        r0, r1 = site.ref.rows
        return r0 // bl.d_out, r1 // bl.d_out

    def _diag_rows(self) -> int:
        return self._batch.rows if (self.kfac and self.moments) else 0

    def _traces(self, name: str, bl: _Blocks, ja: slice, ta: Tensor, lo: int, hi: int, tb: Tensor) -> None:
        """Add Σ‖a‖² (to A blocks ``ja``) and Σ‖g‖² (``tb``: per output, or per B block) of the
        diagnostic examples."""
        tr_a = self.tr_a.setdefault(name, torch.zeros(bl.na, dtype=torch.float64))
        tr_b = self.tr_b.setdefault(name, torch.zeros(bl.nb, dtype=torch.float64))
        tr_a[ja] += ta.double().cpu()
        tb = tb.double().cpu()
        tr_b[lo:hi] += tb.reshape(hi - lo, -1).sum(1)

    # -- moments -----------------------------------------------------------------------
    def _moment_update(self, site: _Site, c: _Call, x: Tensor, g: Tensor) -> None:
        rows = self._batch.rows
        b = self._batch.b
        for name, is_bias in ((site.ref.name, False), (site.bias, True)):
            if not name or name in self.missed or name in self.unreached or name not in self.params:
                continue
            p = self.params[name]
            direct = self._direct.get(name, True)
            ref = _Ref(name) if is_bias else site.ref
            if site.kind == "linear":
                a3 = self._linear_rows(site, x, b)[:rows]
                g3 = self._linear_rows(site, g, b)[:rows]
                if direct and not is_bias and a3.shape[1] == 1 and not ref.transposed:
                    # No token axis: Σ_i (g_i a_iᵀ)² = (g²)ᵀ(a²), no per-example tensor needed.
                    a2, g2 = a3[:, 0], g3[:, 0]
                    _place(self.sq, p, ref, (g2 * g2).T @ (a2 * a2))
                    if self.sums:
                        _place(self.sum, p, ref, g2.T @ a2)
                    continue
                if is_bias:
                    self._add_pe(name, p, ref, g3.sum(1), direct, rows)
                    continue
                step = max(1, _CHUNK_ELEMS // max(p.numel(), a3[:1].numel(), g3[:1].numel(), 1))
                for lo in range(0, rows, step):
                    pe = torch.bmm(g3[lo : lo + step].transpose(1, 2), a3[lo : lo + step])
                    self._add_pe(name, p, ref, pe, direct, rows, lo)
                continue
            g4 = g.unsqueeze(2) if g.dim() == 3 else g
            if is_bias:
                self._add_pe(name, p, ref, g4[:rows].sum((2, 3)), direct, rows)
                continue
            call = c.conv(x)
            step = max(1, _CHUNK_ELEMS // max(p.numel(), 1))
            for lo in range(0, rows, step):
                sl = slice(lo, min(rows, lo + step))
                pe = _conv_per_example(call.rows(sl), g4[sl], c.weight.shape)
                self._add_pe(name, p, ref, pe, direct, rows, lo)

    def _add_pe(
        self, name: str, p: Tensor, ref: _Ref, pe: Tensor, direct: bool, rows: int, lo: int = 0
    ) -> None:
        """Add per-example gradients ``pe`` (examples ``lo…``, in the op's layout) of ``name``."""
        if direct:
            _place(self.sq, p, ref, (pe * pe).sum(0))
            if self.sums:
                _place(self.sum, p, ref, pe.sum(0))
            return
        buf = self._batch.pending.get(name)
        if buf is None:
            buf = self._batch.pending[name] = p.new_zeros(rows, *p.shape).to(pe.dtype)
        view = buf[lo : lo + pe.shape[0]]
        if ref.transposed:
            pe = pe.transpose(1, 2)
        elif ref.rows is not None:
            view = view[:, ref.rows[0] : ref.rows[1]]
        view += pe.reshape(view.shape)

    def _finish_batch(self, x: Tensor, y: Tensor, loss: str) -> None:
        bt = self._batch
        if bt.reduce:
            self._finish_reduce()
        for name, buf in bt.pending.items():
            _place(self.sq, self.params[name], _Ref(name), (buf * buf).sum(0))
            if self.sums:
                _place(self.sum, self.params[name], _Ref(name), buf.sum(0))
        if bt.rows:
            other = [n for n in self.missed if n in self.params]
            if other and not self.kfac:
                sq, sm = _vmap_moments(self.model, other, x[: bt.rows], y[: bt.rows], loss)
                for name in other:
                    _place(self.sq, self.params[name], _Ref(name), sq[name])
                    if self.sums:
                        _place(self.sum, self.params[name], _Ref(name), sm[name])
            self.n_moments += bt.rows

    @staticmethod
    def _acc(store: dict[str, Tensor], name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        if name not in store:
            store[name] = like.new_zeros(shape)
        return store[name]

    # -- results -----------------------------------------------------------------------
    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{name: (A, B)}`` normalised as :func:`~pai_core.scores.kfac.kfac_factors` says.

        Built in place from the accumulators, which it consumes (call once): the factors are
        the largest tensors K-FAC holds, and a second copy would double its peak memory.
        """
        out = {}
        for name in list(self.a_sum):
            a, bm = _mirror_(self.a_sum.pop(name)), _mirror_(self.b_sum.pop(name)).div_(self.n)
            if self.kind[name] == "reduce":
                out[name] = (a.div_(self.n), bm)
            else:
                out[name] = (a.div_(self.a_count[name].clamp_min(1)[:, None, None]), bm)
        return out

    def scale_ratios(self) -> dict[str, float]:
        """``tr(A⊗B) / tr(F) = Σ_b tr(A_b)·tr(B_b) / Σ_j F_jj`` per layer, every trace over the
        first :attr:`n_moments` examples (F: the empirical Fisher from their per-example
        gradients; A, B: the factors as built from the same examples)."""
        out = {}
        n = self.n_moments
        for name, tr_a in self.tr_a.items():
            if not n or name not in self.sq:
                continue
            tr_f = float(self.sq[name].double().sum()) / n
            ta = tr_a / n
            if self.kind[name] != "reduce":  # A is an average over positions as well
                per_example = self.a_count[name].double().cpu() / self.n
                ta = ta / per_example.clamp_min(1)
            tb = self.tr_b[name] / n
            prod = float((ta.expand_as(tb) * tb).sum())
            out[name] = prod / tr_f if tr_f > 0 else float("nan")
        return out


@dataclasses.dataclass
class _Batch:
    """Per-batch buffers."""

    b: int
    rows: int  # examples of this batch that collect moments
    pending: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    reduce: dict[str, list[Tensor]] = dataclasses.field(default_factory=dict)


def _rows_changed(c0: _Call, c1: _Call) -> Tensor:
    """Which leading positions of a site's input differ between two runs (bool)."""
    a, b = c0.x, c1.x
    if c0.kind == "conv":
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    diff = (a - b).abs().amax(-1)
    ref = torch.maximum(a.abs().amax(-1), b.abs().amax(-1))
    return diff > 1e-4 * ref + 1e-30


def _out_dim(p: Tensor, ref: _Ref) -> int:
    return p.shape[1] if ref.transposed else p.shape[0]


def _place(store: dict[str, Tensor], p: Tensor, ref: _Ref, value: Tensor) -> None:
    """Add ``value`` (in the op's layout) to ``store[name]`` (the parameter's shape)."""
    if ref.transposed:
        value = value.T
    if ref.name not in store:
        store[ref.name] = torch.zeros(p.shape, dtype=value.dtype, device=value.device)
    target = store[ref.name]
    if ref.rows is not None:
        target = target[ref.rows[0] : ref.rows[1]]
    target += value.reshape(target.shape)


def _packed_qkv(model: nn.Module) -> set[int]:
    """Weights that hold q, k and v stacked (one matrix for speed, three maps in the maths):
    ``nn.MultiheadAttention.in_proj_weight`` and timm-style ``qkv`` Linear layers."""
    out = set()
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.add(id(m.in_proj_weight))
        qkv = getattr(m, "qkv", None)
        if isinstance(qkv, nn.Linear) and qkv.out_features == 3 * qkv.in_features:
            out.add(id(qkv.weight))
    return out


def _conv_per_example(call: _ConvCall, g4: Tensor, wshape: torch.Size) -> Tensor:
    """Per-example weight gradients ``(b, *wshape)`` of a conv call."""
    b = g4.shape[0]
    if call.pointwise and call.groups == 1:
        pe = torch.bmm(g4.reshape(b, g4.shape[1], -1), call.x.reshape(b, call.x.shape[1], -1).transpose(1, 2))
    else:
        # The weight gradient of a conv whose groups are the (example, group) pairs is the
        # stack of per-example weight gradients: one native conv-backward call.
        pe = torch.nn.grad.conv2d_weight(
            call.x.reshape(1, -1, *call.x.shape[2:]),
            (b * wshape[0], wshape[1], *call.kernel),
            g4.reshape(1, -1, *g4.shape[2:]),
            call.stride,
            call.padding,
            call.dilation,
            b * call.groups,
        )
    return pe.reshape(b, *wshape)


def _vmap_moments(
    model: nn.Module, names: Sequence[str], x: Tensor, y: Tensor, loss: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Σ_i (∇ℓ_i)² and Σ_i ∇ℓ_i of parameters the sites do not explain (exact, torch.func)."""
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
    c: ScoreCall,
    *,
    moments: bool,
    kfac: bool,
    label: str,
    sums: bool = True,
    approx: str = "expand",
    moment_examples: int | None = None,
    engine: _HookEngine | None = None,
) -> _HookEngine:
    """Run :class:`_HookEngine` over every batch of ``c`` (the model already in eval mode)."""
    engine = engine or _HookEngine(
        c.model,
        list(c.named),
        moments=moments,
        kfac=kfac,
        sums=sums,
        approx=approx,
        moment_examples=moment_examples,
    )
    total = _num_batches(c.batches)
    for i, (x, y) in enumerate(_batches(c.batches, c.model)):
        engine.run(x, y, c.loss)
        c.report(i + 1, total, label)
    if engine.n == 0:
        raise ValueError("batches is empty")
    return engine
