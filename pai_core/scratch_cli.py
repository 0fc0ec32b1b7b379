"""The ``scratch`` command of the CLI: the scalable second-order paper's own protocol.

``python -m pai_core scratch {list,run,grid}`` (registered by :func:`add_cli` from
:mod:`pai_core.__main__`, whose error handling it shares: a bad setting or missing data is one
line and exit status 2).  ``run`` runs one :class:`~pai_core.scratch_spec.ScratchSpec` and
``grid`` a score × sparsity × warm-up × seed grid given by flags (a from-scratch sweep, the same
as a ``kind: scratch`` sweep file run by ``python -m pai_core sweep``); both record what finished
in the results store (:func:`pai_core.store.record_run`), as ``run`` and ``sweep`` do for the
transfer protocol.

Examples::

    python -m pai_core scratch list
    python -m pai_core scratch run --model resnet20 --score diag --sparsity 0.9 --bn-warmup paper \\
        --train-size 2500 --test-size 2000
    python -m pai_core scratch grid --model vgg11 --width 0.25 --scores random,magnitude,snip \\
        --sparsities 0.9,0.99 --bn-warmup off,paper --seeds 0,1 --train-size 2500 --out report/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import datasets, nets, scores, scratch_sweep, store, sweep
from .nets import INITS
from .scratch import SCHEDULES, StageProgress, default_scores, run_scratch
from .scratch_spec import (
    BN_WARMUPS,
    EXTREME_SPARSITIES,
    MASK_SCOPES,
    PRUNE_LAYERS,
    ScratchResult,
    ScratchSpec,
)
from .validate import arg_device, arg_int_at_least, arg_sparsity

__all__ = ["add_cli", "summary_line"]


def _score_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"--score-option {text!r}: write KEY=JSON, e.g. probes=20")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--score-option {text!r}: the value is not JSON, e.g. probes=20"
        ) from None


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    d = ScratchSpec()
    p.add_argument("--model", default=d.model, help=f"network ({', '.join(nets.available())})")
    p.add_argument("--width", type=float, default=d.width, help="channel multiplier")
    p.add_argument("--init", default=d.init, choices=INITS)
    p.add_argument("--dataset", default=d.dataset, help=f"dataset ({', '.join(datasets.available())})")
    p.add_argument("--data-root", default=None, help="folder with the dataset (CIFAR: the binary version)")
    p.add_argument(
        "--train-size",
        type=arg_int_at_least(1, "--train-size"),
        default=None,
        help="balanced training subset",
    )
    p.add_argument(
        "--test-size", type=arg_int_at_least(1, "--test-size"), default=None, help="balanced test subset"
    )
    p.add_argument(
        "--score-per-class",
        type=arg_int_at_least(1, "--score-per-class"),
        default=d.score_per_class,
        help="scoring examples per class (the paper: 10)",
    )
    p.add_argument(
        "--score-option",
        action="append",
        type=_score_option,
        default=[],
        metavar="KEY=JSON",
        help="score option",
    )
    p.add_argument("--mask-scope", default=d.mask_scope, choices=MASK_SCOPES)
    p.add_argument("--prune-layers", default=d.prune_layers, choices=PRUNE_LAYERS)
    p.add_argument("--schedule", default=d.schedule, choices=tuple(SCHEDULES), help="training recipe")
    p.add_argument("--device", type=arg_device, default=d.device, help="auto (GPU when present), cpu or cuda")
    p.add_argument("--threads", type=arg_int_at_least(1, "--threads"), default=None, help="torch CPU threads")
    p.add_argument(
        "--store", default=None, help="results database (default: $PAI_RESULTS_DB or <cache>/results.sqlite)"
    )


def _base_spec(args: argparse.Namespace, **fields: Any) -> ScratchSpec:
    return ScratchSpec(
        model=args.model,
        width=args.width,
        init=args.init,
        dataset=args.dataset,
        data_root=args.data_root,
        train_size=args.train_size,
        test_size=args.test_size,
        score_per_class=args.score_per_class,
        score_options=tuple(args.score_option),
        mask_scope=args.mask_scope,
        prune_layers=args.prune_layers,
        schedule=args.schedule,
        device=args.device,
        **fields,
    )


def summary_line(r: ScratchResult) -> str:
    """One line per run: score, sparsity, warm-up, seed, final and best accuracy, collapse, time."""
    s = r.spec
    return (
        f"{s.score:14} q={100 * s.sparsity:6.2f}%  warm-up={s.bn_warmup:5}  seed={s.seed}  "
        f"final={100 * r.final_acc:6.2f}%  best={100 * r.best_acc:6.2f}%  "
        f"collapsed={len(r.collapsed_layers)}  {r.timings.get('total', 0):6.1f}s{'  (cached)' if r.cached else ''}"
    )


def _setup(args: argparse.Namespace) -> store.ResultsStore:
    if args.threads:
        torch.set_num_threads(args.threads)
    st = store.ResultsStore(args.store) if args.store else store.ResultsStore()
    st.check_writable()  # a corrupt or read-only store is said now, not after the training
    return st


def _cmd_list(args: argparse.Namespace) -> int:
    print("networks:")
    for n in nets.available():
        print(f"  {n:12} {nets.info(n).description}")
    print("datasets:")
    for n in datasets.available():
        i = datasets.info(n)
        print(f"  {n:14} {'offline' if i.offline else 'needs data'}: {i.needs}")
    print("schedules:")
    for s in SCHEDULES.values():
        print(f"  {s.name:10} {s.label}")
    print(f"scores: {', '.join(scores.available())}")
    print(f"the paper's criteria available here: {', '.join(default_scores())}")
    return 0


def _cmd_run(args: argparse.Namespace, bar: Callable[[], StageProgress]) -> int:
    spec = _base_spec(
        args, score=args.score, sparsity=args.sparsity, bn_warmup=args.bn_warmup, seed=args.seed
    )
    st = _setup(args)
    res = run_scratch(spec, bar(), use_cache=not args.no_cache)
    store.record_run(res, store=st)
    for row in res.curve:
        print(
            f"epoch {row['epoch']:3d}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f}  "
            f"train acc {100 * row['train_acc']:6.2f}%  test acc {100 * row['test_acc']:6.2f}%"
        )
    print(summary_line(res))
    print(f"kept {res.kept} of {res.total} covered weights ({100 * res.density:.3f}%)")
    for n in res.notes:
        print(f"note: {n}")
    if args.json:
        from .cache import atomic_write_bytes

        atomic_write_bytes(
            Path(args.json), json.dumps(res.to_dict(), indent=1).encode(), what="output file (--json)"
        )
    return 0


def _cmd_grid(args: argparse.Namespace, bar: Callable[[], StageProgress]) -> int:
    st = _setup(args)
    cfg = scratch_sweep.ScratchSweepConfig(
        models=(args.model,),
        width=args.width,
        init=args.init,
        dataset=args.dataset,
        data_root=args.data_root,
        train_size=args.train_size,
        test_size=args.test_size,
        scores=args.scores,
        score_per_class=args.score_per_class,
        sparsities=args.sparsities,
        bn_warmups=args.bn_warmup,
        seeds=args.seeds,
        dense=args.dense,
        mask_scope=args.mask_scope,
        prune_layers=args.prune_layers,
        schedule=args.schedule,
        device=args.device,
    )
    if args.score_option:
        cfg = cfg.replace(score_options=_options_per_score(cfg.score_names(), dict(args.score_option)))
    rep = sweep.run_sweep(cfg, store=st, ray=args.ray, retries=args.retries, progress=not args.no_progress)
    keys = set(rep.keys)
    results = [r for r in st.scratch_results() if r.spec.key() in keys]
    print(
        f"{rep.total} runs: {rep.skipped} already done, {len(rep.finished)} run now, {len(rep.failed)} failed "
        f"({rep.elapsed:.1f} s, {rep.backend})"
    )
    for r in results:
        print(summary_line(r))
    print(scratch_sweep.summary_table(results))
    if args.out:
        paths = scratch_sweep.report(st, args.out, keys=keys)
        print(f"wrote {', '.join(p.name for p in paths.values())} to {args.out}/", file=sys.stderr)
    for key, err in rep.failed.items():
        print(f"failed: {key}: {err}", file=sys.stderr)
    return 1 if rep.failed else 0


def _options_per_score(names: tuple[str, ...], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Give each score of a grid the ``--score-option`` s it takes (``probes`` goes to Hutchinson only)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        takers = [
            s
            for s in names
            if key in [o.name for o in scores.info(s).options]
            or (key == "seed" and scores.info(s).stochastic)
        ]
        if not takers:
            raise ValueError(f"--score-option {key}: none of the scores {', '.join(names)} takes it")
        for s in takers:
            out.setdefault(s, {})[key] = value
    return out


def add_cli(
    subparsers: argparse._SubParsersAction, bar: Callable[[], StageProgress]
) -> argparse.ArgumentParser:
    """Register ``scratch {list,run,grid}`` (handlers in ``fn``, as :mod:`pai_core.__main__` expects).

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.
        bar: Makes the progress callback of one run (the CLI's progress bar).

    Returns:
        The ``scratch`` parser.
    """
    make_bar = bar
    top = subparsers.add_parser(
        "scratch",
        help="the scalable paper's protocol: prune a randomly initialised network, train it from scratch",
        description="The scalable second-order paper's own protocol: score a randomly initialised network "
        "on a few labelled images, prune it once, train the sparse network from scratch. Every finished "
        "run is recorded in the results store.",
    )
    sub = top.add_subparsers(dest="scratch_command", required=True)
    p = sub.add_parser("list", help="networks, datasets, schedules and scores")
    p.set_defaults(fn=_cmd_list)

    p = sub.add_parser(
        "run", help="one prune-at-init + train-from-scratch run (recorded in the results store)"
    )
    _add_spec_args(p)
    p.add_argument("--score", default="diag", help=f"criterion ({', '.join(scores.available())})")
    p.add_argument(
        "--sparsity",
        type=arg_sparsity,
        default=0.9,
        help="fraction of covered weights removed (0.98 or 98%%)",
    )
    p.add_argument("--bn-warmup", default="off", choices=BN_WARMUPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="recompute the result (scores/masks still cached)")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    p.set_defaults(fn=lambda a: _cmd_run(a, make_bar))

    p = sub.add_parser(
        "grid",
        help="score x sparsity x warm-up x seed grid (a from-scratch sweep: resumable, recorded, Ray-capable)",
    )
    _add_spec_args(p)
    p.add_argument(
        "--scores", default="paper", help="comma-separated, or 'paper' (the paper's criteria registered here)"
    )
    p.add_argument(
        "--sparsities",
        default=",".join(str(q) for q in EXTREME_SPARSITIES),
        help="comma-separated fractions or percentages, or 'extreme' (90,95,98,99,99.5%%)",
    )
    p.add_argument("--bn-warmup", default="off,paper", help="comma-separated warm-up modes")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--dense", action="store_true", help="add one unpruned run per seed")
    p.add_argument("--out", default=None, help="folder for CSVs, summary.md and the HTML figures")
    p.add_argument(
        "--ray", default=None, metavar="auto|local|ADDRESS", help="run on Ray (see `sweep --help`)"
    )
    p.add_argument("--retries", type=arg_int_at_least(0, "--retries"), default=1)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.set_defaults(fn=lambda a: _cmd_grid(a, make_bar))
    return top
