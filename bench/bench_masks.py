"""Masks of the paper's seven sparsities from one scores file: before (main's procedure) and now.

A ResNet-50-sized random score set (every conv/Linear weight of timm's ``resnet50``: 25.5 M
scores, float32, as the experiment caches them) is written to a throw-away cache folder.  Then,
timed as CPU time on one thread, the minimum over ``--repeats``:

* **before**: per sparsity, read and checksum the scores file, then one ``kthvalue`` over the whole
  concatenation (main's ``global_topk``, ties by sorted name and flat index);
* **now**: one read, then all seven thresholds from one multi-pivot partition
  (:func:`pai_core.masks.global_topk_many`, ties by magnitude), as :func:`pai_core.experiment.build_masks`
  does; the bit-packing of the seven masks is timed separately.

Both produce the same masks when ties go by name and index (checked; float32 ``rand`` has only
2²⁴ values, so 25 M scores do tie, and with ties by magnitude the masks differ exactly there).
Target: < 1 s for all seven including the read.

    python bench/bench_masks.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pai_core import cache, masks  # noqa: E402


def shapes() -> dict[str, tuple[int, ...]]:
    """Weight shapes of every conv/Linear layer of ResNet-50 (ImageNet head included)."""
    import timm

    from pai_core.scores import default_params

    with torch.device("meta"):
        net = timm.create_model("resnet50", pretrained=False)
    return {n: tuple(net.get_parameter(n).shape) for n in default_params(net)}


def before(path: Path, sparsities) -> list[dict[str, torch.Tensor]]:
    """main's procedure: a read and a kthvalue selection per sparsity."""
    out = []
    for q in sparsities:
        sc, _ = cache.load_tensors(path)
        names = sorted(sc)
        flat = torch.cat([sc[n].reshape(-1) for n in names])
        k = masks.n_remove(q, flat.numel())
        keep = torch.ones_like(flat, dtype=torch.bool)
        t = flat.kthvalue(k).values
        below = flat < t
        keep &= ~below
        need = k - int(below.sum())
        if need > 0:
            keep[(flat == t).nonzero().flatten()[:need]] = False
        m, off = {}, 0
        for n in names:
            m[n] = keep[off : off + sc[n].numel()].view(sc[n].shape)
            off += sc[n].numel()
        out.append(m)
    return out


def now(path: Path, sparsities, tiebreak) -> list[dict[str, torch.Tensor]]:
    sc, _ = cache.load_tensors(path)
    return masks.global_topk_many(sc, sparsities, tiebreak=tiebreak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    sc = {n: torch.rand(s, generator=g) for n, s in shapes().items()}
    tb = {n: torch.rand(s.shape, generator=g) for n, s in sc.items()}  # stands in for θ²
    total = sum(v.numel() for v in sc.values())
    qs = list(masks.PAPER_SPARSITIES)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scores.safetensors"
        cache.save_tensors(path, sc)
        size = os.path.getsize(path) / 2**20
        t_before = t_now = t_pack = math.inf
        for _ in range(args.repeats):
            t = time.process_time()
            ref = before(path, qs)
            t_before = min(t_before, time.process_time() - t)
            t = time.process_time()
            got = now(path, qs, tb)
            t_now = min(t_now, time.process_time() - t)
            t = time.process_time()
            for m in got:
                masks.pack(m)
            t_pack = min(t_pack, time.process_time() - t)
        same = masks.global_topk_many(cache.load_tensors(path)[0], qs)  # ties by name and index
        for a, b, c in zip(ref, same, got, strict=True):
            assert all(torch.equal(a[n], b[n]) for n in a), "the two procedures disagree"
            assert sum(int((a[n] != c[n]).sum()) for n in a) <= 8, "ties by magnitude moved more than ties"
    print(f"ResNet-50-sized scores: {total / 1e6:.1f} M float32, {size:.0f} MiB file; 7 sparsities")
    print(f"before (read + kthvalue per sparsity): {t_before:.2f} s CPU")
    print(f"now (one read, one partition):         {t_now:.2f} s CPU  ({t_before / t_now:.1f}x faster)")
    print(f"bit-packing the 7 masks:               {t_pack:.2f} s CPU")


if __name__ == "__main__":
    main()
