"""Per-stage time of one experiment on the offline default, as ratios to one forward pass.

Runs in a fresh cache folder (cold), then again (warm), in one process, and
prints a markdown table.  The unit is one batched forward pass of the encoder
over the source task's images, measured in the same process just before.
Timing follows ``bench/_timing.py``: one thread, CPU time (the experiment's stage
timings are switched to CPU time), the minimum over ``--repeats`` cold runs, each
in a fresh cache folder.

    python bench/bench_experiment.py [--score kfac] [--finetune short] [--device auto] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _timing  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--suite", default="digits")
    ap.add_argument("--score", default="kfac")
    ap.add_argument("--sparsity", type=float, default=0.5904)
    ap.add_argument("--finetune", default="short")
    ap.add_argument("--images-per-class", type=int, default=50)
    ap.add_argument("--device", default="auto")
    _timing.add_args(ap, repeats=2)
    args = ap.parse_args()
    conditions = _timing.setup(args.threads)
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
    experiment.stage_clock = _timing.clock
    clock = _timing.clock
    if device.type == "cuda":  # GPU work is not CPU time: wall time, synchronised

        def clock() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

        experiment.stage_clock = clock
    extract(model, x, device=device)  # warm-up (allocator, cuDNN autotune)

    def timed(fn) -> float:
        t = clock()
        fn()
        return clock() - t

    fwd = min(timed(lambda: extract(model, x, device=device)) for _ in range(3))
    best: dict[str, float] = {}
    cold_total = float("inf")
    for r in range(max(1, args.repeats)):
        if r:
            os.environ["PAI_CACHE_DIR"] = tempfile.mkdtemp(prefix="pai-bench-")
        t = clock()
        cold = experiment.run(spec)
        cold_total = min(cold_total, clock() - t)
        for stage, sec in cold.timings.items():
            best[stage] = min(best.get(stage, float("inf")), sec)
    warm_total = min(timed(lambda: experiment.run(spec)) for _ in range(3))
    other_sparsity = timed(lambda: experiment.run(spec.replace(sparsity=0.738)))

    print(
        f"device: {device_label(device)}; {spec.model} + {spec.suite} ({len(x)} source images, "
        f"{sum(len(t) for t in suite.tasks)} in all), score {spec.score}, fine-tuning {spec.finetune}; "
        f"{conditions}"
    )
    print(f"unit: one forward pass over the source task = {fwd:.2f} s\n")
    print("| stage | seconds | ratio to one forward pass |\n| --- | ---: | ---: |")
    for stage, sec in best.items():
        print(f"| {stage} | {sec:.2f} | {sec / fwd:.1f} |")
    print(f"| **whole run, cold cache** | {cold_total:.2f} | {cold_total / fwd:.1f} |")
    print(f"| whole run, warm cache (same spec) | {warm_total:.3f} | {warm_total / fwd:.2f} |")
    print(
        f"| another sparsity (scores reused, fine-tuning redone) | {other_sparsity:.2f} | {other_sparsity / fwd:.1f} |"
    )


if __name__ == "__main__":
    main()
