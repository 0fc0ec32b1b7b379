"""Per-stage time of one experiment on the offline default, as ratios to one forward pass.

Runs in a fresh cache folder (cold), then again (warm), in one process, and
prints a markdown table.  The unit is one batched forward pass of the encoder
over the source task's images, measured in the same process just before.

    python bench/bench_experiment.py [--score kfac] [--finetune short] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--suite", default="digits")
    ap.add_argument("--score", default="kfac")
    ap.add_argument("--sparsity", type=float, default=0.5904)
    ap.add_argument("--finetune", default="short")
    ap.add_argument("--images-per-class", type=int, default=50)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    os.environ["PAI_CACHE_DIR"] = tempfile.mkdtemp(prefix="pai-bench-")

    import torch

    from pai_core import experiment
    from pai_core.features import device_label, extract, pick_device, task_inputs
    from pai_core.results import ExperimentSpec

    spec = ExperimentSpec(
        model=args.model,
        suite=args.suite,
        score=args.score,
        sparsity=args.sparsity,
        finetune=args.finetune,
        images_per_class=args.images_per_class,
        device=args.device,
    )
    device = pick_device(args.device)
    enc = experiment.get_encoder(spec.model)
    suite = experiment.get_suite(spec.suite, None, spec.images_per_class, spec.seed)
    x, _ = task_inputs(suite.tasks[spec.source], enc, suite.image_size)
    model = enc.copy().model.to(device)
    extract(model, x, device=device)  # warm-up (allocator, cuDNN autotune)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    extract(model, x, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    fwd = time.perf_counter() - t

    t = time.perf_counter()
    cold = experiment.run(spec)
    cold_total = time.perf_counter() - t
    t = time.perf_counter()
    experiment.run(spec)
    warm_total = time.perf_counter() - t
    t = time.perf_counter()
    experiment.run(spec.replace(sparsity=0.738))
    other_sparsity = time.perf_counter() - t

    print(
        f"device: {device_label(device)}; {spec.model} + {spec.suite} ({len(x)} source images, "
        f"{sum(len(t) for t in suite.tasks)} in all), score {spec.score}, fine-tuning {spec.finetune}"
    )
    print(f"unit: one forward pass over the source task = {fwd:.2f} s\n")
    print("| stage | seconds | ratio to one forward pass |\n| --- | ---: | ---: |")
    for stage, sec in cold.timings.items():
        print(f"| {stage} | {sec:.2f} | {sec / fwd:.1f} |")
    print(f"| **whole run, cold cache** | {cold_total:.2f} | {cold_total / fwd:.1f} |")
    print(f"| whole run, warm cache (same spec) | {warm_total:.3f} | {warm_total / fwd:.2f} |")
    print(
        f"| another sparsity (scores reused, fine-tuning redone) | {other_sparsity:.2f} | {other_sparsity / fwd:.1f} |"
    )


if __name__ == "__main__":
    main()
