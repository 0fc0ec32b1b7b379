"""Measurements behind the protocol options, on the default run (EfficientNet-Lite0, real weights,
+ the ridge head of digits' first task, 50 images per class at 112 px: ``ExperimentSpec()``).

Sections (``--only px,grasp,zeros,dead840,rounds,runs``):

* ``px``: Spearman correlation of PX (BatchNorm folded) with magnitude over all scored weights, and
  what the batch-statistics variant (``bn_fold=0``) says.
* ``grasp``: Spearman correlation of GraSP at ``T = 1`` and ``T = 200``.
* ``zeros``: share of exactly-zero diag scores, filters whose scores are all zero by layer kind,
  dead channels on the source data.
* ``dead840``: remove exactly the depthwise filters whose diag scores are all zero; source and
  transfer accuracy (frozen heads) of the dense encoder, of the naive pruned one and of the BN-aware
  one.
* ``rounds``: Jaccard overlap of kept weights between one-shot masks and iterative ones at
  59.04 % (diag with 10 rounds, SynFlow with 100 rounds against SynFlow in one).
* ``runs``: whole zero-shot runs of diag at 36 %: default, BN-aware, pointwise-only.

    python bench/bench_protocol.py [--only px,grasp]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from pai_core import evaluate, experiment, layers, masks, scores  # noqa: E402
from pai_core.results import ExperimentSpec  # noqa: E402

SPEC = ExperimentSpec()


def flat(s: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).double().cpu() for v in s.values()])


def rho(a, b) -> float:
    return float(spearmanr(flat(a).numpy(), flat(b).numpy()).statistic)


def model_and_data(ctx):
    model = experiment._EncoderWithHead(ctx.encoder.copy().model, ctx.heads.module(SPEC.source))
    names = [f"encoder.{n}" for n in scores.default_params(model.encoder)]
    return model, names, ctx.source_batches()


def section_px(ctx) -> None:
    model, names, batches = model_and_data(ctx)
    d: dict = {}
    t = time.process_time()
    px = scores.compute("px", model, batches, params=names, diagnostics=d)
    took = time.process_time() - t
    mag = scores.compute("magnitude", model, None, params=names)
    print(
        f"PX (BatchNorm folded) vs magnitude: Spearman {rho(px, mag):.3f}; smallest tensor share of R "
        f"{d['px_min_tensor_share']:.2e}; blind tensors {len(d['px_blind_tensors'])}; {took:.0f} s CPU"
    )
    try:
        scores.compute("px", model, batches, params=names, bn_fold=0)
        print("PX with batch statistics: returned scores (no refusal)")
    except ValueError as exc:
        print(f"PX with batch statistics refuses: {str(exc)[:160]}…")


def section_grasp(ctx) -> None:
    model, names, batches = model_and_data(ctx)
    g1 = scores.compute("grasp", model, batches, params=names, temperature=1)
    g200 = scores.compute("grasp", model, batches, params=names, temperature=200)
    print(f"GraSP T=1 vs T=200: Spearman {rho(g1, g200):.3f}")


def section_zeros(ctx) -> None:
    sc = experiment.get_scores(dataclasses.replace(ctx, spec=SPEC.replace(score="diag")))
    f = flat(sc)
    kinds = layers.layer_kinds(ctx.encoder.model, list(sc))
    by_kind: dict[str, list[int]] = {}
    for n, v in sc.items():
        dead = layers.filters_removed(v != 0)
        k = by_kind.setdefault(kinds[n], [0, 0, 0])
        k[0] += int(dead.sum())
        k[1] += int(dead.sum()) * v[0].numel()
        k[2] += v.shape[0]
    _pairs, stats = experiment.get_channels(ctx)
    dead = stats.dead_summary()
    print(
        f"diag: {100 * float((f == 0).double().mean()):.1f}% of {f.numel()} scores exactly 0; dead channels on "
        f"the source data: {dead['dead_channels']} of {dead['activation_channels']} "
        f"({100 * dead['dead_channel_share']:.1f}%)"
    )
    for kind, (filters, weights, total) in by_kind.items():
        print(f"  all-zero filters in {kind} layers: {filters} of {total} ({weights} weights)")


def section_dead840(ctx) -> None:
    sc = experiment.get_scores(dataclasses.replace(ctx, spec=SPEC.replace(score="diag")))
    kinds = layers.layer_kinds(ctx.encoder.model, list(sc))
    mask = {n: torch.ones_like(v, dtype=torch.bool) for n, v in sc.items()}
    for n, v in sc.items():
        if kinds[n] == "depthwise":
            mask[n][layers.filters_removed(v != 0)] = False
    removed = sum(int((~m).sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())

    def accs(model) -> list[float]:
        return evaluate.evaluate(
            model, ctx.encoder, ctx.suite, ctx.heads, image_size=ctx.image_size, device=ctx.device
        )

    dense = ctx.heads.dense
    naive = accs(masks.prune_(ctx.encoder.copy().model, mask))
    aware_ctx = dataclasses.replace(ctx, spec=SPEC.replace(score="diag", bn_aware=True))
    model, done = experiment.pruned_encoder(aware_ctx, mask)
    aware = accs(model)
    names = [t.name for t in ctx.suite.tasks]
    print(
        f"removing the {removed} weights ({100 * removed / total:.3f}%) of all-zero-score depthwise filters "
        f"(diag); {sum(done.values())} channels compensated:"
    )
    for k, name in enumerate(names):
        role = "source" if k == SPEC.source else "transfer"
        print(
            f"  {name:24} {role:8} dense {100 * dense[k]:5.1f}%  naive {100 * naive[k]:5.1f}%  "
            f"BN-aware {100 * aware[k]:5.1f}%"
        )


def section_rounds(ctx) -> None:
    for score, rounds, q in (("diag", 10, 0.5904), ("synflow", 100, 0.5904)):
        one = experiment.get_masks(
            dataclasses.replace(ctx, spec=SPEC.replace(score=score, sparsity=q, rounds=1))
        )
        t = time.process_time()
        it = experiment.get_masks(
            dataclasses.replace(ctx, spec=SPEC.replace(score=score, sparsity=q, rounds=rounds))
        )
        print(
            f"{score}: one-shot vs {rounds} rounds at {100 * q:.2f}%: Jaccard of kept weights "
            f"{masks.jaccard(one, it):.3f}, of removed {masks.jaccard(one, it, over='pruned'):.3f} "
            f"({time.process_time() - t:.0f} s CPU for the rounds)"
        )


def section_runs(ctx) -> None:
    for changes in ({}, {"bn_aware": True}, {"prune_layers": "pointwise"}):
        res = experiment.run(SPEC.replace(score="diag", sparsity=0.36, **changes))
        s = res.summary()
        print(
            f"diag 36% {changes or 'default'}: source {100 * s['source_zero_shot']:.1f}% (dense "
            f"{100 * s['source_dense']:.1f}%), transfer {100 * s['transfer_zero_shot']:.1f}% (dense "
            f"{100 * s['transfer_dense']:.1f}%); whole filters removed {res.diagnostics['filters_removed_whole']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="px,grasp,zeros,dead840,rounds,runs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ctx = experiment.prepare(SPEC)
    print(
        f"{SPEC.model} ({ctx.encoder.weights_id}) on '{ctx.suite.tasks[SPEC.source].name}', "
        f"{sum(len(x) for x, _ in ctx.source_batches())} images",
        flush=True,
    )
    for name in args.only.split(","):
        globals()[f"section_{name}"](ctx)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
