"""Single-spec stage timings for sizing a sweep, as ratios to one forward pass.

Two measurements, each in a fresh cache folder, printed as markdown:

1. ``offline``: the whole pipeline (``experiment.run``) on the offline default (EfficientNet-Lite0
   + digits), once per score without fine-tuning and once with the ``smoke`` schedule; per-stage
   seconds from the result's timings, divided by one batched forward pass over the source task.
2. ``arch``: the paper's architectures (ResNet-50, ViT-B/16; random weights: timing does not
   depend on the values) on synthetic 224-px images: a forward pass and a fine-tuning step per
   image at batch 32, and every score at two data sizes so that its cost splits into a fixed part
   (per-layer work such as K-FAC factor inverses) and a per-image part, extrapolated to a
   500-image source task (ImageNet-10: 10 classes x 50 images).

Timing follows ``bench/_timing.py`` (CPU time; the experiment's stage timings are switched to CPU
time too). Single-threaded by default: on a shared machine, a multi-threaded forward pass waits at every
OpenMP barrier for threads another process has pre-empted, which inflates some stages several
times more than others and makes the ratios meaningless.  One thread keeps them comparable.

The output is what ``docs/SWEEPS.md`` turns into a GPU-hour *extrapolation*; nothing here runs on
a GPU unless one is present.

    python bench/bench_sweep.py [--part offline|arch|both] [--scores magnitude,diag,...] [--threads 1]
                                [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _timing  # noqa: E402

PAPER_SCORES = ["magnitude", "diag", "kfac", "snip", "grasp", "px"]


def _best(fn, repeat: int = 2) -> float:
    """Least CPU time of ``repeat`` calls (the machine may be shared: the minimum is the least noisy)."""
    return _timing.best(fn, repeat)


def offline(scores: list[str], images_per_class: int, device: str) -> dict:
    os.environ["PAI_CACHE_DIR"] = tempfile.mkdtemp(prefix="pai-bench-sweep-")
    from pai_core import experiment
    from pai_core.features import device_label, extract, pick_device, task_inputs
    from pai_core.results import ExperimentSpec

    experiment.stage_clock = _timing.clock  # stage timings in CPU time, as the unit
    dev = pick_device(device)
    base = ExperimentSpec(images_per_class=images_per_class, sparsity=0.5904, device=device)
    enc = experiment.get_encoder(base.model)
    suite = experiment.get_suite(base.suite, None, base.images_per_class, base.seed)
    x, _ = task_inputs(suite.tasks[base.source], enc, suite.image_size)
    model = enc.copy().model.to(dev)
    extract(model, x, device=dev)  # warm-up

    def forward() -> float:
        return _best(lambda: extract(model, x, device=dev), 3)

    fwd_before = forward()
    n_all = sum(len(t) for t in suite.tasks)
    out = {
        "device": device_label(dev),
        "model": base.model,
        "suite": base.suite,
        "image_size": suite.image_size,
        "source_images": len(x),
        "all_images": n_all,
        "tasks": len(suite.tasks),
        "stages": {},
        "scores": {},
    }
    for score in scores:
        res = experiment.run(base.replace(score=score))
        t = res.timings
        out["scores"][score] = t["scores+masks"]
        for stage in ("load", "features+heads", "zero-shot"):
            out["stages"].setdefault(stage, []).append(t[stage])
    res = experiment.run(base.replace(score="magnitude", finetune="smoke"))
    epochs = len(res.finetune_log["losses"])
    out["stages"][f"fine-tune (smoke, {epochs} epochs)"] = [res.timings["fine-tune"]]
    out["stages"]["one fine-tuning epoch"] = [res.timings["fine-tune"] / epochs]
    out["stages"]["evaluate after fine-tuning"] = [res.timings["evaluate"]]
    # The unit again at the end: the least of both is the least disturbed by other processes.
    out["forward_s_before_after"] = [fwd_before, forward()]
    out["forward_s"] = min(out["forward_s_before_after"])
    return out


def _print_offline(o: dict) -> None:
    fwd = o["forward_s"]
    print(
        f"### Offline default: {o['model']} + {o['suite']} ({o['tasks']} tasks, {o['source_images']} source "
        f"images, {o['all_images']} in all, {o['image_size']} px), {o['device']}\n"
    )
    print(
        f"Unit: one forward pass over the source task = {fwd:.3f} s (before/after: "
        f"{', '.join(f'{v:.3f}' for v in o['forward_s_before_after'])})\n"
    )
    print("| stage | seconds | ratio to one forward pass |\n| --- | ---: | ---: |")
    for stage, vals in o["stages"].items():
        s = min(vals)  # first run includes the cold features; later ones are cache hits
        if stage == "features+heads":
            s = max(vals)
            stage += " (cold; once per model and suite)"
        print(f"| {stage} | {s:.2f} | {s / fwd:.1f} |")
    for score, s in o["scores"].items():
        print(f"| scores+masks: {score} | {s:.2f} | {s / fwd:.1f} |")
    print()


def arch(scores: list[str], sizes: tuple[int, int], archs: list[str], device: str) -> dict:
    import torch

    from pai_core.features import device_label, pick_device

    dev = pick_device(device)
    torch.manual_seed(0)
    return {
        "device": device_label(dev),
        "sizes": list(sizes),
        "archs": {name: _arch_one(name, scores, sizes, dev) for name in archs},
    }


def _arch_one(name: str, scores: list[str], sizes: tuple[int, int], dev) -> dict:
    import timm
    import torch
    from torch import nn

    from pai_core import scores as score_mod
    from pai_core.experiment import _EncoderWithHead
    from pai_core.features import extract
    from pai_core.finetune import FinetuneConfig, finetune

    timm_name = {"resnet50": "resnet50", "vit_b16": "vit_base_patch16_224"}[name]
    enc = timm.create_model(timm_name, pretrained=False, num_classes=0).eval()
    head = nn.Linear(enc.num_features, 10)
    x = torch.randn(max(*sizes, 32), 3, 224, 224)
    y = torch.randint(0, 10, (len(x),))
    res: dict = {"scores": {}}
    # Forward and training step at the fine-tuning batch size (32), after a warm-up call.
    extract(enc, x[:4], device=dev)
    res["forward_per_image"] = _best(lambda: extract(enc, x[:32], batch_size=32, device=dev), 3) / 32
    tuned = timm.create_model(timm_name, pretrained=False, num_classes=0).eval()
    finetune(tuned, head, x[:32], y[:32], {}, FinetuneConfig(name="warm-up", epochs=1, lr=1e-4), device=dev)
    steps = 3
    t = _best(
        lambda: finetune(
            tuned, head, x[:32], y[:32], {}, FinetuneConfig(name="bench", epochs=steps, lr=1e-4), device=dev
        ),
        2,
    )
    # finetune() also evaluates the loss once before training: one forward pass to subtract.
    res["train_per_image"] = (t - 32 * res["forward_per_image"]) / (steps * 32)
    model = _EncoderWithHead(enc, head).to(dev)
    names = [f"encoder.{p}" for p in score_mod.default_params(enc)]

    def batches(n: int) -> list:
        return [(x[i : min(i + 32, n)].to(dev), y[i : min(i + 32, n)].to(dev)) for i in range(0, n, 32)]

    for score in scores:
        if score_mod.info(score).refusal("vit" if name.startswith("vit") else "cnn"):
            continue  # e.g. PX on ViTs (the paper skips it)
        score_mod.compute(score, model, batches(4), params=names, loss="mse")  # warm-up
        for n in sizes:
            t0 = _timing.clock()
            score_mod.compute(score, model, batches(n), params=names, loss="mse")
            res["scores"].setdefault(score, {})[n] = _timing.clock() - t0
            print(f"  {name} n={n} {score}: {res['scores'][score][n]:.1f} s", file=sys.stderr, flush=True)
    return res


def _split(t: dict, n1: int, n2: int) -> tuple[float, float]:
    """(fixed seconds, seconds per image) from times at two data sizes; clamped at zero (noise)."""
    t1, t2 = t[n1], t[n2]
    per = max((t2 - t1) / (n2 - n1), 0.0)
    return max(t1 - per * n1, 0.0), per


def _print_arch(o: dict, n_source: int = 500) -> None:
    n1, n2 = o["sizes"]
    print(f"### Paper architectures (random weights, 224 px, synthetic images), {o['device']}\n")
    print(
        "Forward pass and fine-tuning step at batch 32 (least of several calls after a warm-up); "
        f"each score timed at {n1} and {n2} images, split as fixed + per-image cost, extrapolated to a "
        f"{n_source}-image source task and divided by a forward pass over those {n_source} images.\n"
    )
    print("| architecture | item | fixed (s) | per image (s) | ratio to one forward pass over 500 images |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, r in o["archs"].items():
        f = r["forward_per_image"]
        fwd500 = f * n_source
        print(f"| {name} | forward pass | – | {f:.3f} | 1.0 |")
        print(
            f"| {name} | fine-tuning epoch (fwd + bwd + SGD) | – | {r['train_per_image']:.3f} | "
            f"{r['train_per_image'] / f:.1f} |"
        )
        for score, t in r["scores"].items():
            s0, sper = _split(t, n1, n2)
            print(
                f"| {name} | score {score} | {s0:.2f} | {sper:.3f} | {(s0 + sper * n_source) / fwd500:.1f} |"
            )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--part",
        default="offline",
        choices=["offline", "arch", "both"],
        help="offline: ~7 min on 2 cores (what make bench runs); arch: ~20 min more",
    )
    ap.add_argument("--scores", default=",".join(PAPER_SCORES))
    ap.add_argument("--images-per-class", type=int, default=50)
    ap.add_argument("--archs", default="resnet50,vit_b16")
    ap.add_argument("--sizes", default="16,48", help="two data sizes for the fixed/per-image split")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (see the module docstring)")
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    args = ap.parse_args()

    print(_timing.setup(args.threads), flush=True)
    scores = [s for s in args.scores.split(",") if s]
    raw: dict = {"load_average": os.getloadavg(), "cpus": os.cpu_count(), "threads": args.threads}
    if args.part in ("offline", "both"):
        raw["offline"] = offline(scores, args.images_per_class, args.device)
        _print_offline(raw["offline"])
    if args.part in ("arch", "both"):
        n1, n2 = (int(v) for v in args.sizes.split(","))
        raw["arch"] = arch(scores, (n1, n2), args.archs.split(","), args.device)
        _print_arch(raw["arch"])
    raw["load_average_after"] = os.getloadavg()
    print(
        f"load average before/after: {raw['load_average']} / {raw['load_average_after']} "
        f"on {raw['cpus']} CPUs (a shared machine inflates every number)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    main()
