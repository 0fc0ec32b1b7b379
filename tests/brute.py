"""Brute-force references for the hook scores, shared by the test modules.

Everything here works one example at a time (batch of one), so no layout of examples inside
a batch is ever inferred, and forms every matrix by explicit outer products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pai_core import scores as S
from pai_core.scores import _sites


def loop_grads(model: nn.Module, data, names, loss: str = "mse") -> list[dict[str, Tensor]]:
    """Per-example gradients by a Python loop (autograd, batch of one): list of {name: grad}."""
    named = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in named.items()}
    out = []
    try:
        for n in names:
            named[n].requires_grad_(True)
        for x, y in data:
            for i in range(len(x)):
                li = S.per_example_loss(model(x[i : i + 1]), y[i : i + 1], loss).sum()
                out.append(dict(zip(names, torch.autograd.grad(li, [named[n] for n in names]))))
    finally:
        for n, f in flags.items():
            named[n].requires_grad_(f)
    return out


def diag_reference(model: nn.Module, data, names) -> dict[str, Tensor]:
    """θ² · mean_i (∂ℓ_i/∂θ)²."""
    grads = loop_grads(model, data, names)
    return {
        n: model.get_parameter(n).detach() ** 2 * torch.stack([g[n] ** 2 for g in grads]).mean(0)
        for n in names
    }


def site_rows(
    model: nn.Module, x1: Tensor, y1: Tensor, name: str
) -> list[tuple[Tensor, Tensor, _sites._Call]]:
    """For one example: every use of weight ``name`` as ``(a, g, call)``, ``a`` the op's input
    rows (for a conv: unfolded patches (T, K) by ``F.unfold``), ``g`` the output gradient rows
    (T, out) of the example's loss."""
    params = {name: model.get_parameter(name)}
    calls: list[_sites._Call] = []

    def keep(c: _sites._Call) -> Tensor:
        c.out.retain_grad()
        calls.append(c)
        return c.out

    with _sites._Recorder(params, keep):
        out = model(x1)
    S.per_example_loss(out, y1).sum().backward()
    rows = []
    for c in calls:
        g = c.out.grad.detach()
        if c.kind == "linear":
            a = c.x.detach().reshape(-1, c.x.shape[-1])
            g = g.reshape(-1, g.shape[-1])
        else:
            call = c.conv(c.x.detach())
            x = F.pad(call.x, (call.padding[1],) * 2 + (call.padding[0],) * 2)
            a = F.unfold(x, call.kernel, dilation=call.dilation, stride=call.stride)[0].T  # T, C·kh·kw
            g4 = g.unsqueeze(2) if g.dim() == 3 else g
            g = g4[0].reshape(g4.shape[1], -1).T
        rows.append((a, g, c))
    return rows


def kfac_reference(model: nn.Module, data, name: str, approx: str, blocks: int = 1) -> tuple[Tensor, Tensor]:
    """K-FAC factors of ``name`` by their definitions (Eschenhagen et al., 2023, Sec. 3), from
    per-example loops: ``blocks`` row blocks of the (out, in) weight (conv groups, or q/k/v),
    each with its own A unless one call feeds every block (then A has one block)."""
    model.zero_grad(set_to_none=True)
    per_ex = []
    for x, y in data:
        for i in range(len(x)):
            per_ex.append(site_rows(model, x[i : i + 1], y[i : i + 1], name))
    model.zero_grad(set_to_none=True)
    first = per_ex[0]
    assert first, f"{name} is not applied by F.linear, a conv or a matrix product"
    conv_groups = first[0][2].conv_args[-1] if first[0][2].kind == "conv" else 1
    if conv_groups > 1:
        blocks = conv_groups
    shared_a = conv_groups == 1 and all(c.ref.rows is None for _, _, c in first)
    d_out = first[0][1].shape[1] if first[0][2].ref.rows is None else None
    A = B = None
    count = torch.zeros(blocks)
    for calls in per_ex:
        a_hat = g_hat = None
        t = torch.zeros(blocks)
        for a, g, c in calls:
            rows = c.ref.rows
            out_dim = g.shape[1]
            if conv_groups > 1:  # per group: its input channels, its output channels
                k, m = a.shape[1] // conv_groups, out_dim // conv_groups
                ab = torch.stack([a[:, j * k : (j + 1) * k] for j in range(conv_groups)])
                gb = torch.stack([g[:, j * m : (j + 1) * m] for j in range(conv_groups)])
                idx = list(range(conv_groups))
            else:
                per = (d_out or out_dim * blocks) // blocks
                lo = 0 if rows is None else rows[0] // per
                idx = list(range(lo, lo + out_dim // per))
                gb = torch.stack([g[:, j * per : (j + 1) * per] for j in range(len(idx))])
                ab = a[None].expand(len(idx), *a.shape)
            if A is None:
                A = torch.zeros(blocks, ab.shape[2], ab.shape[2], dtype=a.dtype)
                B = torch.zeros(blocks, gb.shape[2], gb.shape[2], dtype=g.dtype)
            if a_hat is None:
                a_hat = torch.zeros(blocks, ab.shape[2], dtype=a.dtype)
                g_hat = torch.zeros(blocks, gb.shape[2], dtype=g.dtype)
            for j, aj, gj in zip(idx, ab, gb):
                if approx == "expand":  # Σ_rows r rᵀ
                    A[j] += aj.T @ aj
                    B[j] += gj.T @ gj
                a_hat[j] += aj.sum(0)
                g_hat[j] += gj.sum(0)
                t[j] += aj.shape[0]
        count += t
        if approx == "reduce":
            for j in range(blocks):
                aj = a_hat[j] / t[j]  # mean over the example's positions, summed gradient
                A[j] += torch.outer(aj, aj)
                B[j] += torch.outer(g_hat[j], g_hat[j])
    n = len(per_ex)
    A = A / (count.to(A.dtype)[:, None, None] if approx == "expand" else n)
    B = B / n
    if shared_a:
        A = A[:1]
    return A, B
