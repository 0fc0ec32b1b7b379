"""Cost of the OBS repair (pai_core.repair) as ratios to one fine-tuning epoch and one forward+backward.

Setting: a real offline encoder (EfficientNet-Lite0 or MobileNetV2, ImageNet weights) with the
source task's frozen ridge head, the source task of a suite (default: digits, task 0, 20 images
per class at the suite's 112 px), a mask from the experiment's cached stages (default magnitude,
global, 40 %).  Everything runs in one process on ``--threads`` threads (default 1); each time is
the minimum over ``--repeats`` runs of process CPU time, which filters out time stolen by the
other processes of a shared machine.  Units, measured side by side:

* one forward+backward over the source images (batch 32, MSE through the head);
* one fine-tuning epoch as :func:`pai_core.finetune.finetune` runs it (SGD, batch 32, masks
  applied; it includes its own initial no-grad loss pass, as every fine-tuning run does).

Timed: the K-FAC factors at θ₀ (:func:`pai_core.scores.kfac_factors`, needed by any mask whose
score did not already compute them), the ``"a"`` form at the default tolerance 1e-6 and at 1e-10
(round-off), and the ``"kfac"`` form with a PCG budget of ``--kfac-iters`` iterations (its
iterations and residuals are printed: the real factors are ill-conditioned).

    python bench/bench_repair.py [--model efficientnet_lite0] [--suite digits] [--per-class 20]
        [--score magnitude] [--sparsity 0.4] [--kfac-iters 30] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pai_core import experiment as E  # noqa: E402
from pai_core import masks, repair, scores, transfer_stages  # noqa: E402
from pai_core.finetune import FinetuneConfig, finetune  # noqa: E402


def cpu_min(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--suite", default="digits")
    ap.add_argument("--source", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--score", default="magnitude")
    ap.add_argument("--sparsity", type=float, default=0.4)
    ap.add_argument("--kfac-iters", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    spec = E.ExperimentSpec(
        model=args.model,
        suite=args.suite,
        source=args.source,
        score=args.score,
        sparsity=args.sparsity,
        images_per_class=args.per_class,
        device="cpu",
    )
    ctx = E.prepare(spec)
    enc, heads = ctx.encoder, ctx.heads
    mask = E.get_masks(ctx)
    x_fit, y_fit = ctx.split(spec.source, "fit")
    batches = [(x_fit[i : i + 32], y_fit[i : i + 32]) for i in range(0, len(x_fit), 32)]  # as get_scores
    n = sum(len(y) for _, y in batches)
    dense = E._EncoderWithHead(enc.copy().model, heads.module(spec.source)).eval()
    names = [f"encoder.{k}" for k in mask]
    for p in dense.encoder.parameters():  # the loaded encoder is frozen; training computes these
        p.requires_grad_(True)

    def fwd_bwd() -> None:
        for x, y in batches:
            dense.zero_grad(set_to_none=True)
            scores.per_example_loss(dense(x), y).mean().backward()
        dense.zero_grad(set_to_none=True)

    x_all = torch.cat([x for x, _ in batches])
    y_all = torch.cat([y for _, y in batches])

    def epoch() -> None:
        model = enc.copy().model
        masks.prune_(model, mask)
        finetune(
            model,
            heads.module(spec.source),
            x_all,
            y_all,
            mask,
            FinetuneConfig(name="1 epoch", epochs=1, lr=1e-3),
        )

    def factors() -> dict:
        return scores.kfac_factors(dense, batches, params=names, **transfer_stages._expand())

    t_fb, _ = cpu_min(fwd_bwd, args.repeats)
    t_ep, _ = cpu_min(epoch, args.repeats)
    t_f, fac = cpu_min(factors, args.repeats)
    fac = {k.removeprefix("encoder."): v for k, v in fac.items()}

    def run(form: str, tol: float, max_iter: int = 300):
        def go():
            model = enc.copy().model
            return repair.repair_(model, mask, fac, form=form, tol=tol, max_iter=max_iter)

        return go

    rows = []
    t_a, rep_a = cpu_min(run("a", 1e-6), args.repeats)
    rows.append(("repair, form a (tol 1e-6, default)", t_a, rep_a))
    t_a10, rep_a10 = cpu_min(run("a", 1e-10), args.repeats)
    rows.append(("repair, form a (tol 1e-10)", t_a10, rep_a10))
    t_k, rep_k = cpu_min(run("kfac", 1e-6, args.kfac_iters), 1)
    rows.append((f"repair, form kfac (≤ {args.kfac_iters} PCG iterations)", t_k, rep_k))

    print(
        f"{args.model} ({enc.weights_id[:12]}), suite {args.suite} task {args.source}: {n} images at "
        f"{ctx.image_size} px; mask {args.score} {args.sparsity:.0%} global; "
        f"{torch.get_num_threads()} thread(s); CPU seconds, min of {args.repeats}\n"
    )
    print(f"unit 1: one forward+backward over the {n} images = {t_fb:.2f} s")
    print(f"unit 2: one fine-tuning epoch (pai_core.finetune, batch 32) = {t_ep:.2f} s\n")
    print("| step | seconds | / epoch | / fwd+bwd |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| K-FAC factors at θ₀ | {t_f:.2f} | {t_f / t_ep:.2f} | {t_f / t_fb:.2f} |")
    for label, t, _ in rows:
        print(f"| {label} | {t:.2f} | {t / t_ep:.2f} | {t / t_fb:.2f} |")
    print()
    for label, _, rep in rows:
        worst = max(rep.layers, key=lambda lr: lr.residual)
        its = [lr.iterations for lr in rep.layers if lr.iterations]
        print(
            f"{label}: quadratic-model cost {rep.cost_zeroed:.4g} (zeroed) -> {rep.cost_repaired:.4g}; "
            f"worst relative residual {worst.residual:.1e} ({worst.name}); "
            f"{sum(not lr.converged for lr in rep.layers)} of {len(rep.layers)} layers above tol"
            + (f"; PCG iterations median {sorted(its)[len(its) // 2]}, max {max(its)}" if its else "")
        )
        slow = sorted(rep.layers, key=lambda lr: -lr.seconds)[:3]
        print("   slowest layers: " + ", ".join(f"{lr.name} {lr.seconds:.2f}s" for lr in slow))
        for note in rep.notes():
            print("   note:", note)


if __name__ == "__main__":
    main()
