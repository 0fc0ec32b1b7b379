"""P2 by δ or by SGD: zero-shot, OBS-corrected (both curvature blocks) and fine-tuned accuracy side by side.

For each model and score, the source task 0 of the suite is pruned at ``--sparsity`` and then
(a) left as is (zero-shot), (b) corrected by the OBS update with the ``"a"`` block, (c) with the
``"kfac"`` block under its PCG budget (:data:`pai_core.transfer_stages.KFAC_MAX_ITER`), (d)
fine-tuned on the source with the ``smoke`` (2 epochs) and ``short`` (10 epochs) schedules.
Accuracy on the source and mean accuracy on the transfer tasks, with the seconds each stage took
when its run computed it (runs are cached).

    python bench/repair_vs_finetune.py [--models efficientnet_lite0,mobilenet_v2] [--suite digits]
        [--scores magnitude,diag] [--sparsity 0.4] [--per-class 20] [--holdout]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pai_core import experiment as E  # noqa: E402
from pai_core import transfer_stages as TS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="efficientnet_lite0,mobilenet_v2")
    ap.add_argument("--suite", default="digits")
    ap.add_argument("--scores", default="magnitude,diag")
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--holdout", action="store_true", help="heads fitted on one half, evaluated on the other")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"suite {args.suite}, source task 0, {args.per_class} images per class, sparsity {args.sparsity:.0%}"
        + (
            ", held-out evaluation"
            if args.holdout
            else ", evaluated on the fitting images (the paper's protocol)"
        )
    )
    print("\n| model | score | variant | source % | mean transfer % | seconds |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for model in args.models.split(","):
        for score in args.scores.split(","):
            spec = E.ExperimentSpec(
                model=model,
                suite=args.suite,
                score=score,
                sparsity=args.sparsity,
                images_per_class=args.per_class,
                holdout=args.holdout,
                device="cpu",
            )
            base = E.run(spec)
            rows = [
                ("dense", base.mean_source_dense, base.mean_transfer_dense, None),
                ("zero-shot", base.mean_source_zero_shot, base.mean_transfer_zero_shot, None),
            ]
            for form in ("a", "kfac"):
                r = E.run(spec.replace(repair=form))
                label = f"OBS {form}" + (f" (≤ {TS.KFAC_MAX_ITER} PCG it.)" if form == "kfac" else "")
                secs = r.timings.get("repair")
                rows.append((label, r.mean_source_repaired, r.mean_transfer_repaired, secs))
            for sched in ("smoke", "short"):
                f = E.run(spec.replace(finetune=sched))
                secs = f.timings.get("fine-tune")
                rows.append(
                    (f"fine-tuned ({sched})", f.mean_source_finetuned, f.mean_transfer_finetuned, secs)
                )
            for label, s, t, secs in rows:
                sec = "" if secs is None else f"{secs:.1f}"
                print(f"| {model} | {score} | {label} | {100 * s:.1f} | {100 * t:.1f} | {sec} |", flush=True)


if __name__ == "__main__":
    main()
