"""Masks from scores, applying them to a model, comparing them, and packing them: pure maths.

A mask is ``dict[str, BoolTensor]`` keyed by parameter name (as in
``model.named_parameters()``), ``True`` = keep.  Masks are a pure function of scores
(:func:`global_topk`, :func:`global_topk_many`, :func:`layerwise_topk`); applying them is a separate
step (:func:`apply_masks` for fine-tuning, :func:`prune_` for zero-shot evaluation).  Nothing here
touches the disk: :mod:`pai_core.experiment` caches scores and (bit-packed) masks with its stages.

Ties.  Scores tie often on real models (a channel that no gradient reaches scores exactly 0 under
every gradient-based score: a fifth of EfficientNet-Lite0's weights under diag).  Among equal scores
the weight with the lower ``tiebreak`` value (the experiment passes ``θ²``, i.e. magnitude) is
removed first; only exact ties of both fall back to the order of sorted names and flat index, so
the result never depends on the order of the dict.

Example:
    >>> import torch
    >>> s = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([[0.5, 4.0]])}
    >>> m = global_topk(s, 0.4)  # round(0.4 * 5) = 2 weights removed: 0.5 and 1.0
    >>> m["a"].tolist(), m["b"].tolist()
    ([True, False, True], [[False, True]])
    >>> tied = {"a": torch.zeros(3)}  # all scores equal: the smallest |θ| goes first
    >>> global_topk(tied, 1 / 3, tiebreak={"a": torch.tensor([0.2, -0.1, 0.3]).abs()})["a"].tolist()
    [True, False, True]
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "PAPER_SPARSITIES",
    # scores -> masks
    "global_topk",
    "global_topk_many",
    "layerwise_topk",
    "n_remove",
    # masks -> model
    "MaskHandle",
    "apply_masks",
    "remove_masks",
    "prune_",
    # inspection
    "sparsity_report",
    "collapsed_layers",
    "jaccard",
    # storage format
    "pack",
    "unpack",
]

#: Sparsities evaluated in the paper (Sec. 4, following NTK-SAP), as fractions removed.
PAPER_SPARSITIES = (0.36, 0.4752, 0.5904, 0.6642, 0.738, 0.7852, 0.8322)

Masks = dict[str, Tensor]


# --------------------------------------------------------------------------------------
# scores -> masks
# --------------------------------------------------------------------------------------


def _check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")


def n_remove(sparsity: float, total: int) -> int:
    """How many of ``total`` weights a sparsity removes: ``⌊q·total + ½⌋`` (round half up).

    Not Python's round-half-to-even: the same count on every platform and caller.
    """
    return min(total, int(math.floor(sparsity * total + 0.5)))


def _check_finite(scores: Mapping[str, Tensor]) -> None:
    bad = [n for n, s in scores.items() if torch.isnan(s).any()]
    if bad:
        raise ValueError(f"NaN scores in {bad}")


def _numpy(t: Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().reshape(-1).to(device="cpu", dtype=dtype).numpy()


class _Flat:
    """Score tensors laid end to end (sorted names), with a lookup of any entry's tie-break value."""

    def __init__(
        self,
        scores: Mapping[str, Tensor],
        names: Sequence[str],
        tiebreak: Mapping[str, Tensor] | None,
    ) -> None:
        dtype = torch.float32
        for n in names:
            dtype = torch.promote_types(dtype, scores[n].dtype)
        self.names = list(names)
        self.sizes = [scores[n].numel() for n in names]
        self.starts = np.cumsum([0, *self.sizes])
        self.values = (
            np.concatenate([_numpy(scores[n], dtype) for n in names]) if names else np.empty(0, np.float32)
        )
        self._tb = tiebreak
        if tiebreak is not None:
            missing = [n for n in names if n not in tiebreak]
            if missing:
                raise ValueError(f"tiebreak misses {missing}")
            bad = [n for n in names if tiebreak[n].shape != scores[n].shape]
            if bad:
                raise ValueError(f"tiebreak shapes differ from the scores' for {bad}")

    def tiebreak(self, idx: np.ndarray) -> np.ndarray | None:
        """Tie-break values of flat entries ``idx`` (None: no tie-break given)."""
        if self._tb is None:
            return None
        which = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty(len(idx), dtype=np.float64)
        for j in np.unique(which):
            sel = which == j
            tb = _numpy(self._tb[self.names[j]], torch.float64)
            out[sel] = tb[idx[sel] - self.starts[j]]
        return out

    def split(self, keep: np.ndarray, scores: Mapping[str, Tensor]) -> Masks:
        """``{name: bool keep-mask}`` views of the flat keep array (no copy on the CPU)."""
        flat = torch.from_numpy(keep)
        return {
            n: flat[self.starts[j] : self.starts[j + 1]].view(scores[n].shape).to(scores[n].device)
            for j, n in enumerate(self.names)
        }

    def collapsed(self, keep: np.ndarray) -> list[str]:
        """Names whose every entry is removed."""
        return [
            n
            for j, n in enumerate(self.names)
            if self.sizes[j] and not keep[self.starts[j] : self.starts[j + 1]].any()
        ]


def _order_key(values: np.ndarray) -> np.ndarray:
    """Integers in the same order as the (NaN-free) floats ``values``, equal exactly where they are.

    A float's bits read as a signed integer are ordered like the float when it is ≥ 0, and in
    reverse when it is < 0; flipping the 31 (63) value bits of the negatives fixes that.  ``−0.0``
    is first made ``+0.0`` (they are equal as floats).  Integer selection is about twice as fast as
    float selection (no NaN handling).
    """
    ints = {np.dtype(np.float32): np.int32, np.dtype(np.float64): np.int64}[values.dtype]
    key = (values + values.dtype.type(0)).view(ints)  # a copy in which -0.0 became +0.0
    flip = ints(np.iinfo(ints).max)
    np.bitwise_xor(key, flip, out=key, where=key < 0)
    return key


def _kept(flat: np.ndarray, ks: Sequence[int], tiebreak: Callable[[np.ndarray], Any]) -> list[np.ndarray]:
    """For each ``k``: a boolean keep-array of ``flat`` without its ``k`` lowest entries.

    Order: score, then ``tiebreak(indices)`` (lower first; None: skipped), then flat index.  All
    thresholds come from one multi-pivot partition (O(n) for the seven of the paper, not one
    selection per sparsity, and on :func:`_order_key` integers); each mask is then one comparison
    pass, plus a look at the tied entries when the threshold value repeats.
    """
    flat = _order_key(flat)
    n = flat.size
    inner = sorted({k for k in ks if 0 < k < n})
    part = np.partition(flat, [k - 1 for k in inner]) if inner else flat
    out = []
    for k in ks:
        if k <= 0:
            out.append(np.ones(n, dtype=bool))
            continue
        if k >= n:
            out.append(np.zeros(n, dtype=bool))
            continue
        t = part[k - 1]
        keep = flat > t
        kept = int(np.count_nonzero(keep))
        if n - kept != k:  # the threshold value repeats: keep the last of the tied entries
            tied = np.flatnonzero(flat == t)
            values = tiebreak(tied)
            if values is not None:
                tied = tied[np.argsort(values, kind="stable")]
            below = n - kept - len(tied)
            keep[tied[k - below :]] = True
        out.append(keep)
    return out


def _warn_collapsed(masks: Masks) -> None:
    _warn(collapsed_layers(masks))


def _warn(dead: list[str]) -> None:
    if dead:
        warnings.warn(f"layer collapse: no weight kept in {dead}", RuntimeWarning, stacklevel=4)


def _eligible_names(scores: Mapping[str, Tensor], eligible: Collection[str] | None) -> list[str]:
    if eligible is None:
        return sorted(scores)
    unknown = sorted(set(eligible) - set(scores))
    if unknown:
        raise ValueError(f"eligible names {unknown} have no scores")
    return sorted(n for n in scores if n in eligible)


def global_topk_many(
    scores: Mapping[str, Tensor],
    sparsities: Sequence[float],
    *,
    tiebreak: Mapping[str, Tensor] | None = None,
    eligible: Collection[str] | None = None,
) -> list[Masks]:
    """:func:`global_topk` at several sparsities from one partition of the scores.

    Args:
        scores: ``{name: score tensor}``, higher = keep.
        sparsities: Fractions of *all* scored weights to remove, each in ``[0, 1]``.
        tiebreak: ``{name: tensor of the score's shape}``; among equal scores the lower value is
            removed first (the experiment passes ``θ²``).  None: sorted name, then flat index.
        eligible: Names that may lose weights (default: all).  The others are kept whole, and the
            ``round(q · total)`` removed weights (``total`` over *all* tensors, so that a sparsity
            means the same whatever the scope) all come from the eligible ones.

    Returns:
        One mask per sparsity, each ``{name: bool tensor}`` in the order of ``scores``.

    Raises:
        ValueError: NaN scores, a sparsity outside ``[0, 1]``, or more weights to remove than the
            eligible tensors hold.
    """
    for q in sparsities:
        _check_sparsity(q)
    if not scores:
        return [{} for _ in sparsities]
    names = _eligible_names(scores, eligible)
    _check_finite({n: s for n, s in scores.items() if n not in set(names)})
    flat = _Flat(scores, names, tiebreak)
    if np.isnan(flat.values).any():
        _check_finite({n: scores[n] for n in names})  # names them
    total = sum(s.numel() for s in scores.values())
    ks = [n_remove(q, total) for q in sparsities]
    if ks and max(ks) > flat.values.size:
        raise ValueError(
            f"sparsity {max(sparsities):g} removes {max(ks)} of {total} weights, but the prunable "
            f"layers hold only {flat.values.size}: lower the sparsity or prune more layers"
        )
    out = []
    for keep in _kept(flat.values, ks, flat.tiebreak):
        part = flat.split(keep, scores)
        out.append({n: part.get(n, torch.ones_like(s, dtype=torch.bool)) for n, s in scores.items()})
        _warn(flat.collapsed(keep))
    return out


def global_topk(
    scores: Mapping[str, Tensor],
    sparsity: float,
    *,
    tiebreak: Mapping[str, Tensor] | None = None,
    eligible: Collection[str] | None = None,
) -> Masks:
    """Keep the highest scores across all tensors; remove exactly ``round(sparsity · total)``.

    Ties are broken deterministically: by ``tiebreak`` (lower removed first), then in sorted-name
    order and by flat index.  Warns (``RuntimeWarning``) when a layer loses every weight (layer
    collapse).  See :func:`global_topk_many` for the arguments.

    Returns:
        ``{name: bool tensor of the same shape}``, ``True`` = keep, in the order of ``scores``.

    Raises:
        ValueError: NaN scores, sparsity outside ``[0, 1]``, too few eligible weights.
    """
    return global_topk_many(scores, [sparsity], tiebreak=tiebreak, eligible=eligible)[0]


def layerwise_topk(
    scores: Mapping[str, Tensor],
    sparsity: float,
    *,
    tiebreak: Mapping[str, Tensor] | None = None,
    eligible: Collection[str] | None = None,
) -> Masks:
    """Remove the lowest scores in every eligible tensor separately (uniform sparsity).

    Each eligible tensor loses ``round(q' · numel)`` weights with ``q' = q · total / eligible
    total`` (``q`` when every tensor is eligible), so the overall sparsity is ``q`` up to rounding.
    Same tie-breaking and errors as :func:`global_topk`.
    """
    _check_sparsity(sparsity)
    _check_finite(scores)
    names = _eligible_names(scores, eligible)
    total = sum(s.numel() for s in scores.values())
    avail = sum(scores[n].numel() for n in names)
    q = sparsity if avail == total else (sparsity * total / avail if avail else 0.0)
    if q > 1.0 + 1e-12:
        raise ValueError(
            f"sparsity {sparsity:g} needs {q:.1%} of each prunable layer; lower it or prune more layers"
        )
    out: Masks = {}
    for n, s in scores.items():
        if n not in names:
            out[n] = torch.ones_like(s, dtype=torch.bool)
            continue
        flat = _Flat(scores, [n], tiebreak)
        (keep,) = _kept(flat.values, [n_remove(min(q, 1.0), s.numel())], flat.tiebreak)
        out[n] = flat.split(keep, scores)[n]
    _warn_collapsed(out)
    return out


# --------------------------------------------------------------------------------------
# masks -> model
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class MaskHandle:
    """What :func:`apply_masks` registered; pass it to :func:`remove_masks`."""

    masks: Masks
    hooks: list[Any]


# model -> handle, so remove_masks(model, masks) also finds the hooks; weak so it never
# keeps a model alive.
_HANDLES: weakref.WeakKeyDictionary[nn.Module, MaskHandle] = weakref.WeakKeyDictionary()


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{parameter name: (module that owns it, attribute name)}``."""
    out = {}
    for name, _p in model.named_parameters():
        mod_name, _, attr = name.rpartition(".")
        out[name] = (model.get_submodule(mod_name) if mod_name else model, attr)
    return out


def _checked(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, tuple[nn.Parameter, Tensor]]:
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks name unknown parameters {unknown}")
    out = {}
    for n, m in masks.items():
        p = params[n]
        if tuple(m.shape) != tuple(p.shape):
            raise ValueError(f"mask {n} has shape {tuple(m.shape)}, parameter has {tuple(p.shape)}")
        out[n] = (p, m.to(device=p.device, dtype=torch.bool))
    return out


def prune_(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Zero the pruned weights in place (for zero-shot evaluation); returns ``model``."""
    with torch.no_grad():
        for p, m in _checked(model, masks).values():
            p.mul_(m.to(p.dtype))
    return model


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> MaskHandle:
    """Keep the pruned weights at exactly zero through fine-tuning.

    Parameters keep their names and stay plain ``nn.Parameter`` (state dicts and optimisers
    built by name are unaffected).  Three mechanisms:

    1. the pruned weights are zeroed now;
    2. a hook on each parameter multiplies its gradient by the mask, so ``.grad`` is zero at
       pruned positions; with the weight also zero, SGD's weight decay ``λθ`` and its momentum
       buffer (built from those gradients) stay zero, and Adam's moments too;
    3. a forward pre-hook on the owning module re-zeros the pruned weights before every
       forward, which also undoes anything that wrote there in between (a momentum buffer
       carried over from before masking, ``load_state_dict`` of dense weights).

    Call :func:`remove_masks` to take the hooks off (zeros baked in).

    Args:
        model: Model to mask (in place).
        masks: ``{parameter name: bool tensor}``, ``True`` = keep.

    Returns:
        A :class:`MaskHandle`.
    """
    if model in _HANDLES:
        raise RuntimeError("masks already applied to this model; call remove_masks first")
    checked = _checked(model, masks)
    owners = _owners(model)
    hooks: list[Any] = []
    by_module: dict[nn.Module, list[tuple[str, Tensor]]] = {}
    for n, (p, m) in checked.items():
        hooks.append(p.register_hook(lambda g, m=m: g * m.to(g.dtype)))
        mod, attr = owners[n]
        by_module.setdefault(mod, []).append((attr, m))

    def rezero(entries: list[tuple[str, Tensor]]) -> Callable:
        def pre(mod: nn.Module, args: Any) -> None:
            with torch.no_grad():
                for attr, m in entries:
                    w = getattr(mod, attr)
                    w.mul_(m.to(w.dtype))

        return pre

    for mod, entries in by_module.items():
        hooks.append(mod.register_forward_pre_hook(rezero(entries)))
    prune_(model, masks)
    handle = MaskHandle({n: m for n, (_p, m) in checked.items()}, hooks)
    _HANDLES[model] = handle
    return handle


def remove_masks(
    model: nn.Module, handle_or_masks: MaskHandle | Mapping[str, Tensor] | None = None, bake: bool = True
) -> nn.Module:
    """Remove what :func:`apply_masks` registered; with ``bake`` the pruned weights are zeroed.

    Args:
        model: The masked model.
        handle_or_masks: The handle from :func:`apply_masks`, or the masks dict (the handle
            is then found from ``model``); ``None``: whatever is applied to ``model``.
        bake: Zero the pruned weights (plain parameters with zeros baked in).

    Returns:
        ``model``.
    """
    handle = handle_or_masks if isinstance(handle_or_masks, MaskHandle) else _HANDLES.get(model)
    masks = handle.masks if handle is not None else handle_or_masks
    if handle is not None:
        for h in handle.hooks:
            h.remove()
        handle.hooks.clear()
        if _HANDLES.get(model) is handle:
            del _HANDLES[model]
    if bake and masks is not None:
        prune_(model, masks)
    return model


# --------------------------------------------------------------------------------------
# inspection
# --------------------------------------------------------------------------------------


def sparsity_report(masks: Mapping[str, Tensor]) -> list[dict[str, Any]]:
    """One row per tensor: ``name``, ``numel``, ``kept``, ``sparsity`` (fraction removed)."""
    rows = []
    for n, m in masks.items():
        numel, kept = m.numel(), int(m.sum())
        rows.append(
            {"name": n, "numel": numel, "kept": kept, "sparsity": 1.0 - kept / numel if numel else 0.0}
        )
    return rows


def collapsed_layers(masks: Mapping[str, Tensor]) -> list[str]:
    """Names of the tensors with no kept weight (layer collapse: the network is cut)."""
    return [n for n, m in masks.items() if m.numel() and not bool(m.any())]


def jaccard(masks_a: Mapping[str, Tensor], masks_b: Mapping[str, Tensor], *, over: str = "kept") -> float:
    """Jaccard overlap ``|A ∩ B| / |A ∪ B|`` of two masks over all tensors.

    Args:
        masks_a, masks_b: Masks with the same names and shapes.
        over: ``"kept"`` (sets of kept weights) or ``"pruned"`` (sets of removed weights).

    Returns:
        Overlap in ``[0, 1]``; 1.0 when both sets are empty.
    """
    if over not in ("kept", "pruned"):
        raise ValueError(f"over must be 'kept' or 'pruned', got {over!r}")
    if set(masks_a) != set(masks_b):
        raise ValueError(f"masks differ in names: {sorted(set(masks_a) ^ set(masks_b))}")
    inter = union = 0
    for n, a in masks_a.items():
        b = masks_b[n]
        if a.shape != b.shape:
            raise ValueError(f"{n}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
        a, b = a.bool().cpu(), b.bool().cpu()
        if over == "pruned":
            a, b = ~a, ~b
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return inter / union if union else 1.0


# --------------------------------------------------------------------------------------
# storage format
# --------------------------------------------------------------------------------------

_SHAPE_PREFIX = "__shape__/"


def pack(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Bit-pack masks (8 weights per byte, most significant bit first, zero-padded) for storage.

    Returns:
        ``{name: uint8 tensor}`` plus ``{"__shape__/" + name: int64 shape tensor}``.
    """
    out: dict[str, Tensor] = {}
    for n, m in masks.items():
        if n.startswith(_SHAPE_PREFIX):
            raise ValueError(f"mask name may not start with {_SHAPE_PREFIX!r}")
        flat = m.detach().reshape(-1).bool().cpu().numpy()
        out[n] = torch.from_numpy(np.packbits(flat))
        out[_SHAPE_PREFIX + n] = torch.tensor(list(m.shape), dtype=torch.int64)
    return out


def unpack(packed: Mapping[str, Tensor]) -> Masks:
    """Inverse of :func:`pack` (CPU bool tensors)."""
    out = {}
    for n, bits in packed.items():
        if n.startswith(_SHAPE_PREFIX):
            continue
        shape = [int(v) for v in packed[_SHAPE_PREFIX + n].tolist()]
        flat = np.unpackbits(bits.cpu().to(torch.uint8).numpy(), count=math.prod(shape)).astype(bool)
        out[n] = torch.from_numpy(flat).view(shape)
    return out
