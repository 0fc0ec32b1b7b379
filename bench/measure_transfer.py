"""Task alignment, the price of not seeing the transfer task, and OBS repair on the real offline encoders.

For every (source → transfer) pair of a suite's tasks, with a real pre-trained encoder:

1. **Alignment** around θ₀ (:mod:`pai_core.alignment`): correlation of the two tasks' diagonal
   empirical Fisher (Pearson, Spearman), mean squared principal cosine between the top-k
   eigenvectors of their K-FAC factors A and B (chance level k/d beside it), and the Jaccard
   overlap of the masks each task gives on its own data (per score and sparsity).
2. **Oracle vs source** (:func:`pai_core.transfer_stages.oracle_run`): the transfer task's
   zero-shot accuracy pruned with the source's data vs with its own data.
3. **OBS repair** (:func:`pai_core.transfer_stages.repair_run`): zero-shot vs OBS-corrected
   accuracy on the source and the transfer tasks, the correction computed on the source only.

Every stage goes through the experiment's disk cache, so a re-run only prints.  Pairs between
the digits and the Fashion-MNIST tasks of the ``digits`` suite are cross-domain (marked ×).

    python bench/measure_transfer.py [--models efficientnet_lite0,mobilenet_v2]
        [--suites digits,fashion-mnist] [--per-class 20] [--sparsities 0.3,0.4]
        [--repair-scores magnitude,diag,kfac] [--oracle-scores diag,kfac] [--form a]
        [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from pai_core import alignment as al  # noqa: E402
from pai_core import experiment as E  # noqa: E402
from pai_core import masks  # noqa: E402
from pai_core import transfer_stages as TS  # noqa: E402


def domain(name: str) -> str:
    return name.split()[0]


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="efficientnet_lite0,mobilenet_v2")
    ap.add_argument("--suites", default="digits,fashion-mnist")
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
    out: dict = {"args": vars(args), "runs": []}
    t_start = time.perf_counter()

    for model in args.models.split(","):
        for suite_name in args.suites.split(","):
            base = E.ExperimentSpec(
                model=model,
                suite=suite_name,
                images_per_class=args.per_class,
                device="cpu",
                sparsity=sparsities[0],
            )
            enc = E.get_encoder(model)
            suite = E.get_suite(suite_name, None, args.per_class, base.seed)
            heads = E.get_heads(base, enc, suite, "cpu")
            names = [t.name for t in suite.tasks]
            n_tasks = len(names)
            print(
                f"\n## {model} on {suite_name}: tasks {', '.join(names)}; {args.per_class} images per class\n"
            )
            print(f"dense accuracy per task: {', '.join(fmt(a, True) for a in heads.dense)} %")

            # -- alignment: per-task curvature computed once, compared per pair -------------
            fisher = {t: TS.get_fisher(base, enc, suite, heads, "cpu", t) for t in range(n_tasks)}
            subs = {
                t: al.factor_subspaces(TS.get_factors(base, enc, suite, heads, "cpu", t), args.k)
                for t in range(n_tasks)
            }
            pairs = [(s, t) for s in range(n_tasks) for t in range(n_tasks) if s != t]
            align = {}
            for s, t in pairs:
                res = al.compare(
                    names[s], names[t], fisher=(fisher[s], fisher[t]), subspaces=(subs[s], subs[t]), k=args.k
                )
                jac = {}
                for score in args.oracle_scores.split(","):
                    for q in sparsities:
                        spec = base.replace(score=score, sparsity=q)
                        m_s = E.get_masks(spec.replace(source=s), enc, suite, heads, "cpu")
                        m_t = E.get_masks(spec.replace(source=t), enc, suite, heads, "cpu")
                        jac[(score, q)] = masks.jaccard(m_s, m_t)
                align[(s, t)] = (res, jac)
            print("\n### Alignment around θ₀ (1 = identical tasks; × = cross-domain)\n")
            jac_cols = [f"Jaccard {sc}@{q:.2f}" for sc in args.oracle_scores.split(",") for q in sparsities]
            print(
                "| source → transfer | Fisher Pearson | Fisher Spearman | A overlap (chance) | B overlap (chance) | "
                + " | ".join(jac_cols)
                + " |"
            )
            print("| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in jac_cols) + " |")
            for (s, t), (res, jac) in align.items():
                x = " ×" if domain(names[s]) != domain(names[t]) else ""
                print(
                    f"| {names[s]} → {names[t]}{x} | {fmt(res.fisher_pearson)} | {fmt(res.fisher_spearman)} | "
                    f"{fmt(res.a_overlap)} ({fmt(res.a_chance)}) | {fmt(res.b_overlap)} ({fmt(res.b_chance)}) | "
                    + " | ".join(fmt(v) for v in jac.values())
                    + " |"
                )

            # -- oracle vs source -----------------------------------------------------------
            print(
                "\n### Transfer accuracy pruned with the source's data vs with its own (oracle), zero-shot %\n"
            )
            print("| score | sparsity | source → transfer | dense | with source | with own | price |")
            print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
            oracle = {}
            for score in args.oracle_scores.split(","):
                for q in sparsities:
                    for s, t in pairs:
                        o = TS.oracle_run(base.replace(score=score, sparsity=q, source=s), t)
                        oracle[(score, q, s, t)] = o
                        x = " ×" if domain(names[s]) != domain(names[t]) else ""
                        print(
                            f"| {score} | {q:.2f} | {names[s]} → {names[t]}{x} | {fmt(o.dense, True)} | "
                            f"{fmt(o.with_source, True)} | {fmt(o.with_own, True)} | {100 * o.price:+.1f} |"
                        )

            # -- OBS repair -----------------------------------------------------------------
            print(f"\n### Zero-shot vs OBS-corrected (form {args.form}, source data only), accuracy %\n")
            print(
                "| score | sparsity | source | source: zero-shot → repaired | transfer (in-domain): zs → rep | "
                "transfer (cross-domain ×): zs → rep | repair s |"
            )
            print("| --- | ---: | --- | --- | --- | --- | ---: |")
            repairs = {}
            for score in args.repair_scores.split(","):
                for q in sparsities:
                    for s in range(n_tasks):
                        r = TS.repair_run(base.replace(score=score, sparsity=q, source=s), form=args.form)
                        repairs[(score, q, s)] = r
                        src = r.tasks[s]
                        ins = [
                            t for k, t in enumerate(r.tasks) if k != s and domain(t.task) == domain(src.task)
                        ]
                        crs = [t for k, t in enumerate(r.tasks) if domain(t.task) != domain(src.task)]

                        def pair_str(ts):
                            if not ts:
                                return "–"
                            zs = np.mean([t.zero_shot for t in ts])
                            rp = np.mean([t.repaired for t in ts])
                            return f"{fmt(zs, True)} → {fmt(rp, True)}"

                        print(
                            f"| {score} | {q:.2f} | {src.task} | {pair_str([src])} | {pair_str(ins)} | "
                            f"{pair_str(crs)} | {r.seconds.get('factors+repair', 0):.1f} |"
                        )
                        for note in r.notes:
                            print(f"|  |  |  | note: {note} |  |  |  |")

            # -- does alignment predict transfer? --------------------------------------------
            print(f"\n### Does alignment predict transfer? Spearman over the pairs (n = {len(pairs)})\n")
            print(
                "| score | sparsity | retention vs Fisher Spearman | vs A overlap | vs Jaccard | price vs Jaccard |"
            )
            print("| --- | ---: | ---: | ---: | ---: | ---: |")
            for score in args.oracle_scores.split(","):
                for q in sparsities:
                    ret = [
                        oracle[(score, q, s, t)].with_source / max(oracle[(score, q, s, t)].dense, 1e-9)
                        for s, t in pairs
                    ]
                    price = [oracle[(score, q, s, t)].price for s, t in pairs]
                    fs = [align[p][0].fisher_spearman for p in pairs]
                    ao = [align[p][0].a_overlap for p in pairs]
                    jc = [align[p][1][(score, q)] for p in pairs]

                    def rho(a, b):
                        if len(set(a)) < 2 or len(set(b)) < 2:
                            return math.nan
                        return float(stats.spearmanr(a, b)[0])

                    print(
                        f"| {score} | {q:.2f} | {fmt(rho(ret, fs))} | {fmt(rho(ret, ao))} | {fmt(rho(ret, jc))} | "
                        f"{fmt(rho(price, jc))} |"
                    )

            out["runs"].append(
                {
                    "model": model,
                    "suite": suite_name,
                    "tasks": names,
                    "dense": heads.dense,
                    "alignment": [
                        {
                            "source": s,
                            "transfer": t,
                            **res.summary(),
                            "jaccard": {f"{sc}@{q}": v for (sc, q), v in jac.items()},
                        }
                        for (s, t), (res, jac) in align.items()
                    ],
                    "oracle": [
                        {"score": sc, "sparsity": q, "source": s, **o.to_dict()}
                        for (sc, q, s, t), o in oracle.items()
                    ],
                    "repair": [
                        {"score": sc, "sparsity": q, "source": s, **r.to_dict()}
                        for (sc, q, s), r in repairs.items()
                    ],
                }
            )
    print(f"\n(total {time.perf_counter() - t_start:.0f} s on {torch.get_num_threads()} thread(s))")
    if args.json:
        Path(args.json).write_text(json.dumps(out, default=str, indent=1))


if __name__ == "__main__":
    main()
