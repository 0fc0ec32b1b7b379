"""K-FAC's damped inverses in float32 vs float64: time and accuracy on a real factor.

The largest factor of ResNet-50 (random weights, 224 px): the A factor of ``layer4.0.conv2``
(3x3 conv over 512 channels: 4608-wide patches), K-FAC-reduce as ``approx="auto"`` picks it, on
``--n`` random-normal images.  Prints the CPU time (one thread, minimum of ``--repeats``) of
``diag((A + λI)⁻¹)`` by Cholesky in float64 (what ``kfac`` does) and in float32, and the largest
relative error of float32's diagonal against float64's.

    python bench/bench_kfac_inverse.py --n 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pai_core import scores  # noqa: E402


def diag_inverse(m: torch.Tensor, damping: float) -> torch.Tensor:
    d = m.shape[-1]
    lam = damping * torch.diagonal(m, dim1=-2, dim2=-1).sum(-1) / d
    chol = torch.linalg.cholesky(m + lam[:, None, None] * torch.eye(d, dtype=m.dtype))
    return torch.diagonal(torch.cholesky_inverse(chol), dim1=-2, dim2=-1)


def main() -> None:
    import timm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(timm.create_model("resnet50", pretrained=False, num_classes=0), nn.Linear(2048, 5))
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 3, 224, 224, generator=g)
    y = torch.randint(0, 5, (args.n,), generator=g)
    name = "0.layer4.0.conv2.weight"
    a = scores.kfac_factors(model, [(x, y)], params=[name])[name].A  # float32, as the score gets it
    best = {}
    out = {}
    for dtype in (torch.float64, torch.float32):
        for _ in range(args.repeats):
            t = time.process_time()
            out[dtype] = diag_inverse(a.to(dtype), args.damping)
            best[dtype] = min(best.get(dtype, float("inf")), time.process_time() - t)
    err = float(((out[torch.float32].double() - out[torch.float64]).abs() / out[torch.float64].abs()).max())
    print(
        f"A of {name}: d = {a.shape[-1]}, n = {args.n}, damping {args.damping:g}; "
        f"float64 {best[torch.float64]:.2f}s, float32 {best[torch.float32]:.2f}s "
        f"({best[torch.float64] / best[torch.float32]:.1f}x); float32's largest relative error {err:.1e}"
    )


if __name__ == "__main__":
    main()
