"""The measurements behind the per-model defaults of :mod:`pai_core.defaults` (README, "Defaults").

Three parts, each printing a Markdown table (and appending JSON lines to ``--jsonl``):

* ``grid``: zero-shot source/transfer accuracy of each offline model on a suite over a wide sparsity
  grid, per score, with the dense accuracy fitted and evaluated on the same images (the paper's
  protocol) and on a held-out half; plus the model's own ImageNet top-1 on foolbox's 20 photos
  with the magnitude mask of each level.  Where does each model hold, where does it break?
* ``finetune``: source-only fine-tuning at several learning rates and epochs: loss before and
  after, source and transfer accuracy before and after, seconds.  Which step is safe on a CPU?
* ``imagenet``: the ImageNet check alone (dense and magnitude masks).

    OMP_NUM_THREADS=1 python bench/bench_defaults.py grid --models efficientnet_lite0 mobilenet_v2
    OMP_NUM_THREADS=1 python bench/bench_defaults.py finetune --lrs 1e-4 3e-4 1e-3 --epochs 5 10

Accuracies depend on the data, not on the machine; seconds are this machine's (2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pai_core import experiment, imagenet_check, reference  # noqa: E402
from pai_core.finetune import SCHEDULES, FinetuneConfig  # noqa: E402
from pai_core.results import ExperimentSpec  # noqa: E402

GRID = (0.1, 0.2, 0.3, 0.36, 0.4, 0.4752, 0.5904)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _emit(args, row: dict) -> None:
    if args.jsonl:
        with open(args.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def part_grid(args) -> None:
    print("| model | score | sparsity | source zero-shot | transfer zero-shot | ImageNet top-1 (20 photos) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for model in args.models:
        base = ExperimentSpec(model=model, suite=args.suite, images_per_class=args.ipc, source=args.source)
        ctx = experiment.prepare(base)
        dense = ctx.heads.dense
        held = reference.heldout_dense(base)
        enc = experiment.get_encoder(model)
        d_in = imagenet_check.imagenet_check(enc)
        print(
            f"| {model} | dense | 0 | {_pct(dense[args.source])} (held-out {_pct(held[args.source])}) | "
            f"{_pct(sum(a for k, a in enumerate(dense) if k != args.source) / (len(dense) - 1))} (held-out "
            f"{_pct(sum(a for k, a in enumerate(held) if k != args.source) / (len(held) - 1))}) | "
            f"{d_in.correct}/{d_in.total} |"
        )
        _emit(
            args, {"part": "grid", "model": model, "dense": dense, "heldout": held, "imagenet": d_in.correct}
        )
        for score in args.scores:
            for q in args.levels:
                spec = base.replace(score=score, sparsity=q)
                res = experiment.run(spec)
                inet = ""
                if score == "magnitude":
                    chk = imagenet_check.imagenet_check(enc, experiment.load_masks(spec), sparsity=q)
                    inet = f"{chk.correct}/{chk.total}"
                print(
                    f"| {model} | {score} | {100 * q:g} | {_pct(res.mean_source_zero_shot)} | "
                    f"{_pct(res.mean_transfer_zero_shot)} | {inet} |",
                    flush=True,
                )
                _emit(
                    args,
                    {
                        "part": "grid",
                        "model": model,
                        "score": score,
                        "sparsity": q,
                        "summary": res.summary(),
                        "imagenet": inet,
                        "collapsed": len(res.collapsed_layers),
                    },
                )


def part_finetune(args) -> None:
    print(
        "| model | score | sparsity | lr | epochs | loss before → after | source zero-shot → fine-tuned | "
        "transfer zero-shot → fine-tuned | seconds |"
    )
    print("| --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: |")
    for model in args.models:
        for score in args.scores:
            for q in args.levels:
                for lr in args.lrs:
                    for ep in args.epochs:
                        name = f"bench-lr{lr:g}-e{ep}"
                        SCHEDULES[name] = FinetuneConfig(name=name, epochs=ep, lr=lr)
                        spec = ExperimentSpec(
                            model=model,
                            suite=args.suite,
                            images_per_class=args.ipc,
                            source=args.source,
                            score=score,
                            sparsity=q,
                            finetune=name,
                        )
                        t0 = time.perf_counter()
                        res = experiment.run(spec)
                        sec = time.perf_counter() - t0
                        log = res.finetune_log or {}
                        after = log.get("loss_after", (log.get("losses") or [float("nan")])[-1])
                        print(
                            f"| {model} | {score} | {100 * q:g} | {lr:g} | {ep} | {log.get('loss_before', 0):.3f} → "
                            f"{after:.3f} | {_pct(res.mean_source_zero_shot)} → {_pct(res.mean_source_finetuned)} | "
                            f"{_pct(res.mean_transfer_zero_shot)} → {_pct(res.mean_transfer_finetuned)} | "
                            f"{sec:.0f} |",
                            flush=True,
                        )
                        _emit(
                            args,
                            {
                                "part": "finetune",
                                "model": model,
                                "score": score,
                                "sparsity": q,
                                "lr": lr,
                                "epochs": ep,
                                "summary": res.summary(),
                                "log": log,
                                "seconds": sec,
                                "cached": res.cached,
                            },
                        )


def part_imagenet(args) -> None:
    print("| model | mask | ImageNet top-1 (20 photos) |")
    print("| --- | --- | ---: |")
    for model in args.models:
        enc = experiment.get_encoder(model)
        chk = imagenet_check.imagenet_check(enc)
        print(f"| {model} | dense | {chk.correct}/{chk.total} |")
        for q in args.levels:
            spec = ExperimentSpec(model=model, suite=args.suite, images_per_class=args.ipc, sparsity=q)
            chk = imagenet_check.imagenet_check(enc, experiment.load_masks(spec), sparsity=q)
            print(f"| {model} | magnitude {100 * q:g}% | {chk.correct}/{chk.total} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["grid", "finetune", "imagenet"])
    ap.add_argument("--models", nargs="+", default=["efficientnet_lite0", "mobilenet_v2"])
    ap.add_argument("--scores", nargs="+", default=["magnitude", "diag"])
    ap.add_argument("--levels", nargs="+", type=float, default=list(GRID))
    ap.add_argument("--suite", default="fashion-mnist")
    ap.add_argument("--source", type=int, default=0)
    ap.add_argument("--ipc", type=int, default=20, help="images per class")
    ap.add_argument("--lrs", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3])
    ap.add_argument("--epochs", nargs="+", type=int, default=[5])
    ap.add_argument("--jsonl", default=None, help="append one JSON line per measurement")
    args = ap.parse_args()
    print(
        f"# {args.part}: suite {args.suite}, {args.ipc} images/class, source {args.source}; "
        f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}\n"
    )
    {"grid": part_grid, "finetune": part_finetune, "imagenet": part_imagenet}[args.part](args)


if __name__ == "__main__":
    main()
