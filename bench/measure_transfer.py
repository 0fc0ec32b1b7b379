"""Task alignment, the price of not seeing the transfer task, and OBS repair on the real offline encoders.

For a suite's tasks (and, with ``--transfer-suite``, another suite's as cross-domain transfer
tasks), with a real pre-trained encoder:

1. **Alignment and the oracle** (:func:`pai_core.task_pairs.alignment_table`, what
   ``python -m pai_core align`` prints): per ordered pair, the transfer task's retention, its
   accuracy pruned with its own data (the oracle) and the price, and how aligned the two tasks
   are at θ₀ (diagonal-Fisher correlation, K-FAC eigenspace overlap, mask Jaccard); the Spearman
   correlation across pairs between retention and each measure.
2. **OBS repair** (:func:`pai_core.experiment.run` with ``spec.repair``): zero-shot vs
   OBS-corrected accuracy on the source, the in-domain and the cross-domain tasks (by data set:
   :attr:`pai_core.tasks.Task.domain`), the correction computed on the source only.

Every stage goes through the experiment's disk cache, so a re-run only prints.

    python bench/measure_transfer.py [--models efficientnet_lite0,mobilenet_v2] [--suites digits]
        [--transfer-suite fashion-mnist] [--per-class 20] [--sparsities 0.3,0.4]
        [--repair-scores magnitude,diag,kfac] [--oracle-scores diag,kfac] [--form a]
        [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pai_core import alignment as al  # noqa: E402
from pai_core import experiment as E  # noqa: E402
from pai_core import task_pairs, transfer_figures, transfer_stages  # noqa: E402


def _domains(ctx: E.Context) -> list[str]:
    """The data set of every task of the run, in result order."""
    doms = [t.domain or ctx.suite.name for t in ctx.suite.tasks]
    if ctx.spec.transfer_suite:
        x = E.prepare(transfer_stages.cross_spec(ctx.spec))
        doms += [t.domain or x.suite.name for t in x.suite.tasks]
    return doms


def _pct(values: list[float]) -> str:
    return "–" if not values else f"{100 * float(np.mean(values)):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="efficientnet_lite0,mobilenet_v2")
    ap.add_argument("--suites", default="digits")
    ap.add_argument("--transfer-suite", default=None)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--sparsities", default="0.3,0.4")
    ap.add_argument("--repair-scores", default="magnitude,diag,kfac")
    ap.add_argument("--oracle-scores", default="diag,kfac")
    ap.add_argument("--form", default="a")
    ap.add_argument("--k", type=int, default=al.DEFAULT_K)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    out: dict = {"args": vars(args), "alignment": [], "repair": []}
    t_start = time.perf_counter()

    for model in args.models.split(","):
        for suite_name in args.suites.split(","):
            base = E.ExperimentSpec(
                model=model,
                suite=suite_name,
                images_per_class=args.per_class,
                device="cpu",
                sparsity=sparsities[0],
                transfer_suite=args.transfer_suite,
            )
            ctx = E.prepare(base)
            names = task_pairs.run_task_names(ctx)
            doms = _domains(ctx)
            n_src = len(ctx.suite.tasks)
            print(
                f"\n## {model} on {suite_name}: tasks {', '.join(names)}; {args.per_class} images per class\n"
            )

            # -- alignment and the oracle ----------------------------------------------------
            rows = []
            for score in args.oracle_scores.split(","):
                for q in sparsities:
                    rows += task_pairs.alignment_table(base.replace(score=score, sparsity=q), k=args.k)
            frame = task_pairs.alignment_frame(rows)
            print(transfer_figures.alignment_text(frame))
            for (score, q, domain), g in frame.groupby(["score", "sparsity", "domain"]):
                print(
                    f"  {score} {q:.2f} {domain}: retention {100 * g['retention'].mean():.1f}%, price "
                    f"{100 * g['price'].mean():+.1f} points, Fisher r {g['fisher_pearson'].mean():.3f}, Fisher ρ "
                    f"{g['fisher_spearman'].mean():.3f}, A {g['a_overlap'].mean():.3f} "
                    f"(chance {g['a_chance'].mean():.3f}), B {g['b_overlap'].mean():.3f} "
                    f"(chance {g['b_chance'].mean():.3f}), Jaccard {g['mask_jaccard'].mean():.3f}; "
                    f"negative price in {(g['price'] < 0).sum()} of {len(g)}"
                )
            out["alignment"] += [{"model": model, **r.to_dict()} for r in rows]

            # -- OBS repair ------------------------------------------------------------------
            print(f"\n### Zero-shot → OBS-corrected (form {args.form}, source data only), accuracy %\n")
            print(
                "| score | sparsity | source | source | in-domain transfer | cross-domain transfer | up/equal/down |"
            )
            print("| --- | ---: | --- | --- | --- | --- | --- |")
            for score in args.repair_scores.split(","):
                for q in sparsities:
                    for s in range(n_src):
                        r = E.run(base.replace(score=score, sparsity=q, source=s, repair=args.form))
                        groups: dict[str, list] = {"source": [], "in": [], "cross": []}
                        for k, t in enumerate(r.tasks):
                            kind = "source" if k == s else "in" if doms[k] == doms[s] else "cross"
                            groups[kind].append(t)
                        cells = [
                            f"{_pct([t.zero_shot for t in g])} → {_pct([t.repaired for t in g])}"
                            if g
                            else "–"
                            for g in groups.values()
                        ]
                        d = [t.repaired - t.zero_shot for k, t in enumerate(r.tasks) if k != s]
                        counts = f"{sum(x > 0 for x in d)}/{sum(x == 0 for x in d)}/{sum(x < 0 for x in d)}"
                        print(
                            f"| {score} | {q:.2f} | {names[s]} | {' | '.join(cells)} | {counts} |", flush=True
                        )
                        out["repair"].append(
                            {
                                "model": model,
                                "suite": suite_name,
                                "score": score,
                                "sparsity": q,
                                "source": s,
                                "domains": doms,
                                "tasks": [t.__dict__ for t in r.tasks],
                                "repair_seconds": r.timings.get("repair"),
                                "notes": r.notes,
                            }
                        )
    print(f"\n(total {time.perf_counter() - t_start:.0f} s on {torch.get_num_threads()} thread(s))")
    if args.json:
        Path(args.json).write_text(json.dumps(out, default=str, indent=1))


if __name__ == "__main__":
    main()
