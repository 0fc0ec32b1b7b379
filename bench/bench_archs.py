"""Every score on the papers' full-size architectures (random weights, 224 px): time and peak
memory as ratios to one forward+backward over the same images, and coverage.

Models: timm ``resnet50`` and ``vit_base_patch16_224``, open_clip ``ViT-B-16`` and ``RN50``
image towers, timm ``tf_efficientnet_lite0``, torchvision ``mobilenet_v2``; each followed by a
random Linear head to 5 classes; random-normal images (the cost of these scores does not depend
on the pixels).  The unit is one batched forward+backward (MSE loss, every parameter's
gradient) over the same ``--n`` images and batch size.

* time: CPU time of this process (``time.process_time``) with ``--threads`` intra-op threads
  (default 1, so other processes on a shared machine cannot inflate it), the unit and the scores
  interleaved, minimum over ``--repeats`` runs;
* memory (``--memory``): each operation in a fresh subprocess; peak resident memory
  (``ru_maxrss``) above the resident memory once the model and the images are loaded, as a
  ratio to the same for the unit;
* coverage (``--coverage``): scored weight matrices / all weight matrices (parameters of two or
  more dimensions but position and class embeddings), and how many of them a score returns
  all-zero, on ``--n`` images.

    python bench/bench_archs.py --archs resnet50,vit_b16 --scores kfac,diag --n 500 --repeats 2
    python bench/bench_archs.py --memory --n 64
    python bench/bench_archs.py --coverage --n 4
    python bench/bench_archs.py --code /tmp/old_checkout ...   # the same against other code

``--scores kfac_factors`` times K-FAC's factor pass alone (``kfac`` minus it: the damped inverses,
a cost independent of ``--n``).

Targets (issue 15): kfac <= 2x on resnet50 and vit_b16 at n = 500, peak memory <= 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EMBEDDINGS = ("pos_embed", "positional_embedding", "cls_token", "class_embedding")


def build(arch: str):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if arch in ("resnet50", "vit_b16", "efficientnet_lite0"):
        import timm

        name = {"vit_b16": "vit_base_patch16_224", "efficientnet_lite0": "tf_efficientnet_lite0"}.get(
            arch, arch
        )
        enc = timm.create_model(name, pretrained=False, num_classes=0)
        dim = enc.num_features
    elif arch in ("clip_vit_b16", "clip_rn50"):
        import open_clip

        enc = open_clip.create_model("ViT-B-16" if arch == "clip_vit_b16" else "RN50", pretrained=None).visual
        dim = enc.output_dim
    elif arch == "mobilenet_v2":
        import torchvision

        from pai_core.models import _TorchvisionMobileNetFeatures

        enc, dim = _TorchvisionMobileNetFeatures(torchvision.models.mobilenet_v2()), 1280
    else:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    model = nn.Sequential(enc, nn.Linear(dim, 5)).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


ARCHS = ["resnet50", "vit_b16", "clip_vit_b16", "clip_rn50", "efficientnet_lite0", "mobilenet_v2"]


def setup(arch: str, n: int, bs: int):
    import torch

    from pai_core import scores

    model = build(arch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 224, 224, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, n, bs)]
    try:
        names = scores.default_params(model, x[:1])
    except TypeError:  # older code: no functional weights
        names = scores.default_params(model)
    names = [m for m in names if m.startswith("0.")]  # the encoder's weights, not the head
    return model, batches, names


def fwd_bwd(model, batches) -> None:
    from pai_core import scores

    for x, y in batches:
        model.zero_grad(set_to_none=True)
        scores.per_example_loss(model(x), y).mean().backward()
    model.zero_grad(set_to_none=True)


def run_op(op: str, model, batches, names, probes: int) -> None:
    from pai_core import scores

    if op == "unit":
        fwd_bwd(model, batches)
        return
    name, _, approx = op.partition(":")
    opts = {"probes": probes} if name == "hutchinson" else {}
    if approx:
        opts["approx"] = approx
    if name == "kfac_factors":  # K-FAC's factor pass alone (kfac minus this: the inverses)
        scores.kfac_factors(model, batches, params=names, **opts)
        return
    scores.compute(name, model, batches, params=names, **opts)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(args) -> None:
    """One operation in this fresh process: print its peak memory above the loaded state."""
    import torch

    torch.set_num_threads(args.threads)
    model, batches, names = setup(args.archs, args.n, args.batch_size)
    base = rss_bytes()
    run_op(args.child, model, batches, names, args.probes)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"base": base, "peak": peak}))


def measure_memory(args, arch: str, ops: list[str]) -> dict[str, float]:
    out = {}
    for op in ["unit", *ops]:
        cmd = [sys.executable, __file__, "--child", op, "--archs", arch, "--n", str(args.n)]
        cmd += [
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
            "--probes",
            str(args.probes),
        ]
        if args.code:
            cmd += ["--code", args.code]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            print(f"  {arch} {op}: failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        m = json.loads(res.stdout.strip().splitlines()[-1])
        out[op] = (m["peak"] - m["base"]) / 2**20
        print(f"  {arch} {op}: peak +{out[op]:.0f} MiB", file=sys.stderr, flush=True)
    return out


def measure_time(args, arch: str, ops: list[str]) -> tuple[float, dict[str, float]]:
    model, batches, names = setup(arch, args.n, args.batch_size)
    fwd_bwd(model, batches[:1])  # warm-up
    unit, best = [], {}
    for op in ops:
        for _ in range(args.repeats):
            t = time.process_time()
            fwd_bwd(model, batches)
            unit.append(time.process_time() - t)
            t = time.process_time()
            run_op(op, model, batches, names, args.probes)
            best[op] = min(best.get(op, float("inf")), time.process_time() - t)
        print(f"  {arch} {op}: {best[op]:.1f}s (unit so far {min(unit):.1f}s)", file=sys.stderr, flush=True)
    return min(unit), best


def coverage(args, arch: str, ops: list[str]) -> dict[str, str]:
    from pai_core import scores

    model, batches, names = setup(arch, args.n, args.batch_size)
    matrices = [
        n
        for n, p in model.named_parameters()
        if n.startswith("0.") and p.dim() >= 2 and not any(e in n for e in EMBEDDINGS)
    ]
    out = {"weight matrices": str(len(matrices)), "default_params": f"{len(set(names) & set(matrices))}"}
    for op in ops:
        name, _, approx = op.partition(":")
        opts = {"probes": args.probes} if name == "hutchinson" else {}
        if approx:
            opts["approx"] = approx
        try:
            s = scores.compute(name, model, batches, params=matrices, **opts)
        except Exception as exc:  # noqa: BLE001 - the table says what happened
            out[op] = f"error: {str(exc)[:60]}"
            continue
        live = [n for n in matrices if bool(s[n].any())]
        out[op] = f"{len(live)}/{len(matrices)}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--scores", default="diag,kfac,fisher_taylor,snip,grasp,hutchinson,px")
    ap.add_argument("--n", type=int, default=32, help="source images")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--memory", action="store_true", help="peak memory instead of time")
    ap.add_argument("--coverage", action="store_true", help="coverage instead of time")
    ap.add_argument("--code", default=None, help="a checkout whose pai_core to measure (default: this one)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, args.code or str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    ops = [s for s in args.scores.split(",") if s]
    what = "peak memory" if args.memory else "coverage" if args.coverage else "CPU time"
    reps = f", min of {args.repeats}" if what == "CPU time" else ""
    print(
        f"{what}; n={args.n}, batch {args.batch_size}, 224 px, {args.threads} thread(s){reps}; code: {args.code or ROOT}\n"
    )
    for arch in args.archs.split(","):
        if args.coverage:
            print(f"{arch}: {json.dumps(coverage(args, arch, ops))}", flush=True)
            continue
        if args.memory:
            mem = measure_memory(args, arch, ops)
            unit = mem.get("unit", float("nan"))
            row = ", ".join(f"{op} {mem[op] / unit:.2f}x" for op in ops if op in mem)
            print(f"{arch}: unit +{unit:.0f} MiB; {row}", flush=True)
            continue
        unit, best = measure_time(args, arch, ops)
        row = ", ".join(f"{op} {best[op] / unit:.2f}x ({best[op]:.1f}s)" for op in ops)
        print(f"{arch}: unit {unit:.1f}s; {row}", flush=True)


if __name__ == "__main__":
    main()
