"""Masks from scores, applying them to a model, comparing them, and packing them: pure maths.

A mask is ``dict[str, BoolTensor]`` keyed by parameter name (as in
``model.named_parameters()``), ``True`` = keep.  Masks are a pure function of scores
(:func:`global_topk`, :func:`layerwise_topk`); applying them is a separate step
(:func:`apply_masks` for fine-tuning, :func:`prune_` for zero-shot evaluation).  Nothing here
touches the disk: :mod:`pai_core.experiment` caches scores and (bit-packed) masks with its stages.

Example:
    >>> import torch
    >>> s = {"a": torch.tensor([3.0, 1.0, 2.0]), "b": torch.tensor([[0.5, 4.0]])}
    >>> m = global_topk(s, 0.4)  # round(0.4 * 5) = 2 weights removed: 0.5 and 1.0
    >>> m["a"].tolist(), m["b"].tolist()
    ([True, False, True], [[False, True]])
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PAPER_SPARSITIES",
    # scores -> masks
    "global_topk",
    "layerwise_topk",
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


def _n_remove(sparsity: float, total: int) -> int:
    # round half up, not Python's round-half-to-even: the same count on every platform/caller
    return min(total, int(math.floor(sparsity * total + 0.5)))


def _check_finite(scores: Mapping[str, Tensor]) -> None:
    bad = [n for n, s in scores.items() if torch.isnan(s).any()]
    if bad:
        raise ValueError(f"NaN scores in {bad}")


def _remove_lowest(flat: Tensor, k: int) -> Tensor:
    """Boolean keep-mask of ``flat`` with the ``k`` lowest removed; ties: lower index removed first.

    Equivalent to a stable ascending sort by ``(score, index)`` but O(n) memory: a k-th
    value threshold, everything strictly below it, then the first tied entries by index.
    """
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k <= 0:
        return keep
    if k >= flat.numel():
        return torch.zeros_like(keep)
    t = flat.kthvalue(k).values
    below = flat < t
    keep &= ~below
    need = k - int(below.sum())
    if need > 0:
        tied = (flat == t).nonzero().flatten()[:need]
        keep[tied] = False
    return keep


def _warn_collapsed(masks: Masks) -> None:
    dead = collapsed_layers(masks)
    if dead:
        warnings.warn(f"layer collapse: no weight kept in {dead}", RuntimeWarning, stacklevel=3)


def global_topk(scores: Mapping[str, Tensor], sparsity: float) -> Masks:
    """Keep the highest scores across all tensors; remove exactly ``round(sparsity · total)``.

    Ties are broken deterministically: tensors are taken in sorted-name order and flattened,
    and among equal scores the lower flat index is removed first.  Warns (``RuntimeWarning``)
    when a layer loses every weight (layer collapse).

    Args:
        scores: ``{name: score tensor}``, higher = keep.
        sparsity: Fraction of weights to remove, in ``[0, 1]``.

    Returns:
        ``{name: bool tensor of the same shape}``, ``True`` = keep, in the order of ``scores``.

    Raises:
        ValueError: NaN scores or sparsity outside ``[0, 1]``.
    """
    _check_sparsity(sparsity)
    _check_finite(scores)
    names = sorted(scores)
    if not names:
        return {}
    dtype = torch.promote_types(torch.float32, scores[names[0]].dtype)
    for n in names[1:]:
        dtype = torch.promote_types(dtype, scores[n].dtype)
    flat = torch.cat([scores[n].detach().reshape(-1).to(device="cpu", dtype=dtype) for n in names])
    keep = _remove_lowest(flat, _n_remove(sparsity, flat.numel()))
    out: Masks = {}
    offset = 0
    for n in names:
        s = scores[n]
        out[n] = keep[offset : offset + s.numel()].view(s.shape).to(s.device)
        offset += s.numel()
    out = {n: out[n] for n in scores}
    _warn_collapsed(out)
    return out


def layerwise_topk(scores: Mapping[str, Tensor], sparsity: float) -> Masks:
    """Remove ``round(sparsity · numel)`` lowest scores in every tensor separately (uniform sparsity).

    Same tie-breaking and errors as :func:`global_topk`.
    """
    _check_sparsity(sparsity)
    _check_finite(scores)
    out = {}
    for n, s in scores.items():
        flat = s.detach().reshape(-1)
        out[n] = _remove_lowest(flat, _n_remove(sparsity, flat.numel())).view(s.shape)
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
_BITS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Bit-pack masks (8 weights per byte) for storage.

    Returns:
        ``{name: uint8 tensor}`` plus ``{"__shape__/" + name: int64 shape tensor}``.
    """
    out: dict[str, Tensor] = {}
    for n, m in masks.items():
        if n.startswith(_SHAPE_PREFIX):
            raise ValueError(f"mask name may not start with {_SHAPE_PREFIX!r}")
        flat = m.detach().reshape(-1).bool().cpu()
        padded = torch.zeros(math.ceil(flat.numel() / 8) * 8, dtype=torch.bool)
        padded[: flat.numel()] = flat
        out[n] = (padded.view(-1, 8).to(torch.uint8) * _BITS).sum(1, dtype=torch.uint8)
        out[_SHAPE_PREFIX + n] = torch.tensor(list(m.shape), dtype=torch.int64)
    return out


def unpack(packed: Mapping[str, Tensor]) -> Masks:
    """Inverse of :func:`pack` (CPU bool tensors)."""
    out = {}
    for n, bits in packed.items():
        if n.startswith(_SHAPE_PREFIX):
            continue
        shape = [int(v) for v in packed[_SHAPE_PREFIX + n].tolist()]
        flat = (bits.cpu().to(torch.uint8)[:, None] & _BITS).ne(0).reshape(-1)
        out[n] = flat[: math.prod(shape)].view(shape)
    return out
