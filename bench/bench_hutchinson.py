"""Seed-to-seed stability of the Hutchinson score per probe count and probe scheme, and its cost.

On the default run (EfficientNet-Lite0 with its real weights + the ridge head of digits' first
task, 50 images per class, 112 px: what ``ExperimentSpec()`` scores), for each ``probe_batch:K``
configuration the score is computed with seeds 0 and 1 and compared: Spearman correlation over all
scored weights and over the weights where either estimate is non-zero (exact zeros are the dead
channels, equal under every seed), and the Jaccard overlap of the masks at 59.04 % sparsity (ties
by magnitude, as the experiment).  Cost: CPU time as a ratio to one forward+backward over the same
images (one thread, measured in the same process).  The Spearman-Brown prediction for K probes
from the one-probe correlation ρ₁, ``Kρ₁ / (1 + (K − 1)ρ₁)``, is printed to choose a default.

    python bench/bench_hutchinson.py [--configs 1:1,1:4,0:10] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from pai_core import experiment, masks, scores  # noqa: E402
from pai_core.results import ExperimentSpec  # noqa: E402


def setup(spec: ExperimentSpec):
    ctx = experiment.prepare(spec)
    model = experiment._EncoderWithHead(ctx.encoder.copy().model, ctx.heads.module(spec.source))
    names = [f"encoder.{n}" for n in scores.default_params(model.encoder)]
    return ctx, model, names, ctx.source_batches()


def unit(model, batches) -> float:
    model.encoder.requires_grad_(True)
    t = time.process_time()
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        scores.per_example_loss(model(x), y).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.process_time() - t


def flat(s: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1).double() for v in s.values()])


def compare(a: dict, b: dict, tiebreak: dict) -> dict[str, float]:
    fa, fb = flat(a), flat(b)
    nz = (fa != 0) | (fb != 0)
    ma = masks.global_topk(a, 0.5904, tiebreak=tiebreak)
    mb = masks.global_topk(b, 0.5904, tiebreak=tiebreak)
    return {
        "spearman_all": float(spearmanr(fa.numpy(), fb.numpy()).statistic),
        "spearman_nonzero": float(spearmanr(fa[nz].numpy(), fb[nz].numpy()).statistic),
        "jaccard_kept": masks.jaccard(ma, mb),
        "zero_share": float((~nz).double().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="1:1,1:4,0:10", help="probe_batch:probes, comma-separated")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = ExperimentSpec()
    ctx, model, names, batches = setup(spec)
    n = sum(len(x) for x, _ in batches)
    u = min(unit(model, batches) for _ in range(2))
    print(
        f"{spec.model} + ridge head, {n} images of '{ctx.suite.tasks[spec.source].name}', unit {u:.2f} s CPU"
    )
    params = dict(model.named_parameters())
    tiebreak = {k.removeprefix("encoder."): params[k].detach() ** 2 for k in names}
    seeds = [int(s) for s in args.seeds.split(",")]
    rho1 = None
    for cfg in args.configs.split(","):
        pb, k = (int(v) for v in cfg.split(":"))
        runs, cost, diag = [], [], {}
        for seed in seeds:
            d: dict = {}
            t = time.process_time()
            s = scores.compute(
                "hutchinson", model, batches, params=names, probes=k, probe_batch=pb, seed=seed, diagnostics=d
            )
            cost.append(time.process_time() - t)
            runs.append({n_.removeprefix("encoder."): v for n_, v in s.items()})
            diag = d
        c = compare(runs[0], runs[1], tiebreak)
        line = (
            f"probe_batch={pb} probes={k}: Spearman all {c['spearman_all']:.3f}, non-zero "
            f"{c['spearman_nonzero']:.3f}; mask Jaccard {c['jaccard_kept']:.3f}; zeros "
            f"{100 * c['zero_share']:.1f}%; cost {min(cost) / u:.1f}x; rel. SE median "
            f"{diag.get('hutchinson_rel_se_median', float('nan')):.3f} ({diag.get('hutchinson_se_from')}), "
            f"significant {100 * diag.get('hutchinson_significant_share', 0):.1f}%"
        )
        if pb == 1 and k == 1:
            rho1 = c["spearman_nonzero"]
        elif pb == 1 and rho1 is not None:
            line += f"; Spearman-Brown from K=1: {k * rho1 / (1 + (k - 1) * rho1):.3f}"
        print(line, flush=True)
    if rho1 is not None and 0 < rho1 < 1:
        need = 0.9 * (1 - rho1) / (rho1 * (1 - 0.9))
        print(f"Spearman-Brown: per-example probes needed for 0.9 (non-zero weights): {need:.1f}")


if __name__ == "__main__":
    main()
