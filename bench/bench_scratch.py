"""Cost of the from-scratch protocol on a CPU, and one small real grid (scalable paper, arXiv 2502.11450).

Part ``timing`` (default, a few minutes):

* per network (ResNet-20; VGG-11 and VGG-16 at width 0.25; VGG-11 at full width) on
  Fashion-MNIST: training time per image (SGD steps of batch 128), one epoch on a subset
  (measured) and on the full 60,000 images (extrapolated from the measured steps, labelled so),
  and evaluation time per 1,000 test images;
* scoring time of every registered score on ResNet-20 with the paper's scoring data (10 images
  per class), as a ratio to one forward+backward over the same 100 images, measured in the
  same process (minimum over repeats, so other processes cannot inflate it);
* the two BatchNorm warm-ups (paper: running average; reset + cumulative) over a subset.

Part ``grid`` (about half an hour of one core): ResNet-20 on a balanced Fashion-MNIST subset,
scores {random, magnitude, snip, diag, grasp} × sparsities {90, 98, 99.5 %} × warm-up
{off, paper} × seeds {0, 1}, plus one dense run per seed, the ``cpu-short`` schedule.
Data-free scores (random, magnitude) run without warm-up only (it cannot change their mask).
Writes ``results.json``, ``results.csv``, ``summary.md`` and HTML figures to ``--out``.

Everything runs on one thread (``torch.set_num_threads(1)``) and reports CPU time of this
process, so a shared machine does not skew the numbers; the grid's results are cached
(``$PAI_CACHE_DIR``), so re-running it only redoes what is missing.

    python bench/bench_scratch.py [--part timing|grid|all] [--out artifacts/scratch_grid]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pai_core import datasets, nets, scores, scratch  # noqa: E402
from pai_core.scratch_spec import ScratchSpec  # noqa: E402

NETS = (("resnet20", 1.0), ("vgg11", 0.25), ("vgg16", 0.25), ("vgg11", 1.0))
SUBSET = 2500


def _cpu() -> float:
    return time.process_time()


def timing(args: argparse.Namespace) -> dict:
    data = datasets.load("fashion-mnist")
    out: dict = {"threads": torch.get_num_threads(), "nets": [], "scores": [], "warmup": []}
    sub = datasets.balanced_indices(data.train_y, SUBSET, 0, 10)
    test = datasets.balanced_indices(data.test_y, 1000, 1, 10)
    print(f"one thread: torch.get_num_threads() = {torch.get_num_threads()}; CPU seconds of this process\n")
    print(
        "| network | params | train ms/image | epoch on 2,500 images (s, measured) | full epoch 60,000 (s, extrapolated) | eval s / 1,000 |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, width in NETS:
        spec = ScratchSpec(model=name, width=width, train_size=SUBSET, test_size=1000)
        model = scratch.build_model(spec, data)
        params = sum(p.numel() for p in model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        batches = scratch.Batches(data, sub, 128)
        it = iter(batches)
        x, y = next(it)  # warm-up step (allocations), not timed
        F.cross_entropy(model(x), y).backward()
        opt.step()
        t0 = _cpu()
        n_img = 0
        for x, y in batches:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            n_img += len(y)
        epoch_s = _cpu() - t0
        per_img = epoch_s / n_img
        t0 = _cpu()
        scratch.evaluate(model, data, test)
        eval_s = _cpu() - t0
        row = {
            "net": f"{name} (width {width:g})",
            "params": params,
            "train_ms_per_image": 1000 * per_img,
            "subset_epoch_s": epoch_s,
            "full_epoch_s_extrapolated": per_img * len(data.train_y),
            "eval_s_per_1000": eval_s,
        }
        out["nets"].append(row)
        print(
            f"| {row['net']} | {params:,} | {row['train_ms_per_image']:.2f} | {epoch_s:.1f} | "
            f"{row['full_epoch_s_extrapolated']:.0f} | {eval_s:.2f} |"
        )

    # one real full epoch of the cheapest network, to check the extrapolation above
    spec = ScratchSpec(model="vgg11", width=0.25)
    model = scratch.build_model(spec, data)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    t0 = _cpu()
    for x, y in scratch.Batches(data, torch.arange(len(data.train_y)), 128):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    full = _cpu() - t0
    out["vgg11_w025_full_epoch_s"] = full
    print(
        f"\nvgg11 (width 0.25), one full 60,000-image epoch measured: {full:.0f} s "
        f"(extrapolated above: {out['nets'][1]['full_epoch_s_extrapolated']:.0f} s)"
    )

    # scores on ResNet-20 with the paper's scoring data
    spec = ScratchSpec(model="resnet20", train_size=SUBSET)
    _, train_idx, _, score_idx = scratch.prepare_data(spec)
    model = scratch.build_model(spec, data)
    batches = scratch.Batches(data, score_idx, scratch.SCORE_BATCH)
    names = nets.prunable_weights(model, "conv")

    def fwd_bwd() -> None:
        model.eval()
        for x, y in batches:
            F.cross_entropy(model(x), y, reduction="sum").backward()
        model.zero_grad(set_to_none=True)
        model.train()

    def best(fn, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            t0 = _cpu()
            fn()
            times.append(_cpu() - t0)
        return min(times)

    unit = best(fwd_bwd, 5)
    print(
        f"\nscores on resnet20, {len(score_idx)} scoring images (10 per class), batches of {scratch.SCORE_BATCH};"
    )
    print(f"unit = one eval-mode forward+backward over them = {unit:.3f} s\n")
    print("| score | seconds | ratio to forward+backward |")
    print("| --- | ---: | ---: |")
    for name in scores.available():
        opts = {"seed": 0} if name in ("random", "hutchinson") else {}
        s = best(
            lambda name=name, opts=opts: scores.compute(
                name, model, batches, params=names, loss="ce", **opts
            ),
            2,
        )
        out["scores"].append({"score": name, "seconds": s, "ratio": s / unit})
        print(f"| {name} | {s:.3f} | {s / unit:.2f} |")
    out["score_unit_s"] = unit

    # warm-ups over the training subset, batch 128
    wb = scratch.Batches(data, train_idx, 128)
    print(f"\nBatchNorm warm-up, one pass over {len(train_idx)} training images, batch 128:\n")
    for label, fn in (
        ("paper (running average, momentum 0.1)", lambda: scores.warmup_batchnorm(model, wb, mode="running")),
        ("reset + cumulative (scores.warmup_batchnorm)", lambda: scores.warmup_batchnorm(model, wb, 1)),
    ):
        s = best(fn, 2)
        out["warmup"].append({"mode": label, "seconds": s})
        print(f"- {label}: {s:.2f} s")
    return out


def grid(args: argparse.Namespace) -> dict:
    from pai_core import scratch_figures as sf

    base = ScratchSpec(model="resnet20", train_size=SUBSET, test_size=2000, schedule="cpu-short")
    specs = scratch.plan_grid(
        base,
        ["random", "magnitude", "snip", "diag", "grasp"],
        [0.9, 0.98, 0.995],
        ["off", "paper"],
        [0, 1],
        dense=True,
    )
    print(
        f"\ngrid: {len(specs)} runs of {base.model} on {base.dataset} ({SUBSET} training images, "
        f"{base.test_size} test images, schedule {base.schedule})\n",
        flush=True,
    )
    t0, w0 = _cpu(), time.perf_counter()
    results = scratch.run_grid(
        specs, on_result=lambda i, r: print(f"[{i + 1}/{len(specs)}] {scratch._summary_line(r)}", flush=True)
    )
    cpu, wall = _cpu() - t0, time.perf_counter() - w0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps([r.to_dict() for r in results], indent=1))
    frame = sf.results_frame(results)
    frame.to_csv(out_dir / "results.csv", index=False)
    summary = sf.summary_markdown(frame)
    (out_dir / "summary.md").write_text(summary)
    sf.accuracy_vs_sparsity_figure(frame).write_html(out_dir / "accuracy_vs_sparsity.html")
    sf.warmup_figure(frame).write_html(out_dir / "warmup.html")
    sf.layer_density_figure(results).write_html(out_dir / "layer_density.html")
    print("\n" + summary)
    print(
        f"grid: {cpu / 60:.1f} CPU minutes in this process, {wall / 60:.1f} minutes wall "
        f"({sum(r.cached for r in results)} of {len(results)} results came from the cache)"
    )
    return {"cpu_s": cpu, "wall_s": wall, "runs": len(results)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", default="timing", choices=("timing", "grid", "all"))
    p.add_argument("--out", default="artifacts/scratch_grid")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("timing", "all"):
        timing(args)
    if args.part in ("grid", "all"):
        grid(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
