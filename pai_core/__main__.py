"""Command line: ``python -m pai_core {models,suites,scores,evaluate,run,landscape,align,sweep,report,scratch}``.

Examples:
    python -m pai_core evaluate --model efficientnet_lite0 --suite digits
    python -m pai_core run --score kfac --sparsity 0.5904 --finetune short
    python -m pai_core run --score magnitude --sparsity paper --all-sources
    python -m pai_core run --score magnitude --sparsity 0.4 --repair a --transfer-suite fashion-mnist
    python -m pai_core align --score diag --sparsity 0.3,0.4 --out artifacts/alignment
    python -m pai_core scratch run --model resnet20 --score diag --sparsity 0.98 --bn-warmup paper

``scratch`` is the other experiment kind, the scalable second-order paper's own protocol (prune a
randomly initialised network, train it from scratch): :mod:`pai_core.scratch_cli`.

Every expected failure (no weights, no data, bad settings, a file or folder that cannot be used,
memory running out) ends with one line on stderr that names the file or setting, and exit status
2; an unexpected one with one line, an error id and a file holding the traceback (status 1; set
``PAI_DEBUG=1`` to print the traceback instead).  Nothing finished is lost: stages are cached.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

from . import errors, experiment, masks, models, runtime, scores, scratch_cli, store, sweep, tasks
from .features import device_label, pick_device
from .results import REPAIR_FORMS, ExperimentResult, ExperimentSpec, spec_options
from .validate import arg_device, parse_sparsity
from .validate import arg_int_at_least as _int_at_least
from .validate import arg_positive_float as _positive_float

__all__ = ["main"]


class _Bar:
    """A one-line text progress bar per stage (stderr), so logs stay readable."""

    #: Whether some bar left its line unfinished (an error message then starts on a new line).
    line_open = False

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr  # the current one, not import time's
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        width = 28
        fill = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        _Bar.line_open = not end
        self.stream.write(
            f"\r[{stage:>10}] |{'#' * fill}{'.' * (width - fill)}| {done}/{total} {message[:60]:<60}{end}"
        )
        self.stream.flush()


# ----------------------------------------------------------------------------- argument types


def _one_sparsity(text: str) -> float:
    try:
        return parse_sparsity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (one level here; 'paper' is for run and sweep)") from None


def _check_writable(path: str, what: str) -> Path:
    """Fail now, not after an hour of computing, when ``path`` cannot be written."""
    out = Path(path).expanduser()
    existed = out.exists()
    try:
        with open(out, "a"):
            pass
    except OSError as exc:
        raise errors.storage_error(exc, what, out) from None
    if not existed:
        with contextlib.suppress(OSError):
            out.unlink()
    return out


def _score_options(text: str | None) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(
            f"--score-options is not valid JSON ({exc}); write e.g. '{{\"probes\": 20}}'"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(
            f"--score-options must be a JSON object of option names and values, e.g. '{{\"probes\": 20}}'; "
            f"got {type(value).__name__} {text}"
        )
    return value


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=models.DEFAULT_MODEL, help=f"encoder ({', '.join(models.available())})")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file for the encoder (works offline)")
    p.add_argument("--suite", default="digits", help=f"task suite ({', '.join(tasks.available())})")
    p.add_argument(
        "--data-root", default=None, help="data folder for suites that read one (e.g. ImageNet val)"
    )
    p.add_argument(
        "--images-per-class",
        type=_int_at_least(2, "--images-per-class"),
        default=50,
        help="data subset per class (paper: 50; at least 2)",
    )
    p.add_argument(
        "--holdout",
        action="store_true",
        help="fit heads on one half, evaluate on the other (deviation from the paper)",
    )
    p.add_argument(
        "--image-size",
        type=_int_at_least(1, "--image-size"),
        default=None,
        help="encoder input size in pixels (default: suite's/model's)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", type=arg_device, default="auto", help="auto (GPU when present), cpu, cuda or cuda:N"
    )


def _add_spec_options(p: argparse.ArgumentParser) -> None:
    """One flag per protocol option of :func:`pai_core.results.spec_options` (``--rounds``, …)."""
    g = p.add_argument_group("protocol options (defaults: the paper's)")
    for name, (opt, default) in spec_options().items():
        flag = "--" + name.replace("_", "-")
        text = opt.help if default is None else f"{opt.help} (default: {default})"
        if opt.type is bool:
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif opt.type is int:
            g.add_argument(flag, dest=name, type=int, default=default, metavar="N", help=text)
        else:
            g.add_argument(flag, dest=name, default=default, choices=opt.choices, help=text)


def _add_beyond_args(p: argparse.ArgumentParser, *, repair: bool = True) -> None:
    """Flags of the stages beyond the paper: the OBS correction and cross-domain transfer tasks."""
    if repair:
        p.add_argument(
            "--repair",
            default=None,
            choices=REPAIR_FORMS,
            help="also OBS-correct the pruned encoder on the source, no SGD: a = layer reconstruction "
            "(exact, fast), kfac = the K-FAC block (30 CG iterations); docs/REPAIR_ALIGNMENT.md",
        )
        p.add_argument(
            "--repair-damping",
            type=_positive_float,
            default=1e-2,
            help="relative damping of the repair's curvature factors (default 0.01 = 1%% of the mean diagonal)",
        )
    p.add_argument(
        "--transfer-suite",
        default=None,
        help=f"also evaluate the tasks of another suite, as cross-domain transfer tasks ({', '.join(tasks.available())})",
    )
    p.add_argument(
        "--transfer-data-root", default=None, help="data folder of --transfer-suite when it reads one"
    )


def _fmt(v: float | None) -> str:
    return "   -  " if v is None else f"{100 * v:6.2f}"


def _cmd_models(args) -> int:
    for e in models.entries():
        flag = "offline" if e.offline else "needs hub/checkpoint"
        print(f"{e.name:20} {e.family:4} {flag:22} {e.description}")
    return 0


def _cmd_suites(args) -> int:
    for name in tasks.available():
        i = tasks.info(name)
        print(
            f"{name:24} {'offline' if i.offline else 'needs data':10} {i.description}\n{'':35}needs: {i.needs}"
        )
    return 0


def _own_options(i: scores.ScoreInfo) -> list[scores.ScoreOption]:
    return [o for o in i.options if o is not scores.BN_WARMUP]


def _cmd_scores(args) -> int:
    for i in scores.infos():
        kind = ("data-driven" if i.data_driven else "data-free") + (
            ", seeded by --seed" if i.stochastic else ""
        )
        print(f"{i.name:14} {i.label} ({kind})\n{'':15}{i.description}")
        for family, why in i.refuses.items():
            print(f"{'':15}refuses {family} encoders: {why}")
        for o in _own_options(i):
            print(f"{'':15}option {o.describe()}")
        if i.rounds != 1:
            print(f"{'':15}prunes in {i.rounds} rounds by default (--rounds)")
    print(f"every data-driven score: option {scores.BN_WARMUP.describe()}")
    return 0


def _score_options_help() -> str:
    own = "; ".join(
        f"{i.name}: {', '.join(o.name for o in _own_options(i))}" for i in scores.infos() if _own_options(i)
    )
    return (
        f"JSON, e.g. '{{\"probes\": 20}}': {own}; {scores.BN_WARMUP.name} for every data-driven score "
        "('python -m pai_core scores' gives types and ranges)"
    )


def _spec(args, **fields) -> ExperimentSpec:
    """The command's experiment: every spec field it has a flag for (the flag's ``dest`` is the
    field's name), then ``fields``."""
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(ExperimentSpec) if hasattr(args, f.name)
    }
    given.pop("sparsity", None)  # text on the command line ("paper", percents, lists): the caller's
    if "score_options" in given:
        given["score_options"] = _score_options(args.score_options)
    return ExperimentSpec(**{**given, **fields})


def _cmd_evaluate(args) -> int:
    spec = _spec(args)
    ctx = experiment.prepare(spec, _Bar())
    enc, suite = ctx.encoder, ctx.suite
    print(
        f"model {enc.name} ({enc.weights_id}), suite {suite.name}, device {device_label(ctx.device)}"
        f"{', held-out split' if spec.holdout else ', fit = evaluate images (as the paper)'}"
    )
    accs = ctx.heads.dense
    print(f"{'task':28} {'images':>6} {'dense acc %':>11}")
    for t, a in zip(suite.tasks, accs, strict=True):
        print(f"{t.name:28} {len(t):6d} {_fmt(a):>11}")
    for note in suite.notes:
        print(f"note: {note}")
    if suite.skipped:
        print(f"note: {suite.skipped} unreadable image file(s) skipped")
    return 0


def _parse_sparsities(text: str) -> list[float]:
    """``paper``, or comma-separated fractions in [0, 1) or percentages with ``%`` (``0.36,59.04%``)."""
    if text.strip().lower() == "paper":
        return list(masks.PAPER_SPARSITIES)
    vals = [v for v in text.split(",") if v.strip()]
    if not vals:
        raise ValueError("--sparsity is empty: write e.g. 0.5904, 59.04% or paper")
    return [parse_sparsity(v) for v in vals]


def _print_result(res: ExperimentResult) -> None:
    s = res.spec
    print(
        f"\n{s.model} / {s.suite} / source {s.source} / {s.score} / sparsity {100 * s.sparsity:.2f}%"
        f" / fine-tuning: {res.schedule or 'off'}{' (cached)' if res.cached else ''}"
    )
    rep = s.repair is not None
    head = f"{'task':32} {'role':12} {'dense':>7} {'zero-shot':>9} {'fine-tuned':>10}"
    print(head + (f" {'OBS-corr.':>9}" if rep else ""))
    for t in res.tasks:
        line = (
            f"{t.task[:32]:32} {t.role:12} {_fmt(t.dense):>7} {_fmt(t.zero_shot):>9} {_fmt(t.finetuned):>10}"
        )
        print(line + (f" {_fmt(t.repaired):>9}" if rep else ""))
    m = res.summary()
    for label, prefix in (("source", "source"), ("transfer", "transfer"), ("cross-domain", "cross")):
        if m[f"{prefix}_dense"] is None:
            continue
        line = (
            f"{'mean ' + label:45} {_fmt(m[f'{prefix}_dense']):>7} {_fmt(m[f'{prefix}_zero_shot']):>9} "
            f"{_fmt(m[f'{prefix}_finetuned']):>10}"
        )
        print(line + (f" {_fmt(m[f'{prefix}_repaired']):>9}" if rep else ""))
    if rep:
        from .transfer_figures import repair_verdict

        for sentence in repair_verdict([res]):
            print(f"verdict: {sentence}")
    for note in res.notes:
        print(f"note: {note}")


def _cmd_run(args) -> int:
    # Everything that can be checked is checked before computing anything.
    json_out = _check_writable(args.json, "output file (--json)") if args.json else None
    out_dir = _check_out_dir(args.out)
    sparsities = _parse_sparsities(args.sparsity)
    pick_device(args.device)
    store.ResultsStore().check_writable()  # a corrupt or read-only results store is reported now, not after the run
    base = _spec(args)
    bar = _Bar()
    results = []
    levels = sparsities
    if len(levels) > 1:  # every sparsity's mask from one read of the scores and one partition
        n_sources = len(experiment.prepare(base).suite.tasks) if args.all_sources else 1
        for k in range(n_sources) if args.all_sources else [base.source]:
            experiment.build_masks(base.replace(source=k), levels, bar)
    for q in levels:
        spec = base.replace(sparsity=q)
        if args.all_sources:
            runs = experiment.run_all_sources(spec, bar)
            for r in runs:
                store.record_run(r)
                _print_result(r)
            avg = experiment.average_over_sources(runs)
            print(
                f"\naverage over {len(runs)} sources at {100 * q:.2f}%: "
                + ", ".join(f"{k} {_fmt(v).strip()}" for k, v in avg.items())
            )
            results += runs
        else:
            res = experiment.run(spec, bar)
            store.record_run(res)
            _print_result(res)
            results.append(res)
    _print_verdict(results)
    if json_out is not None:
        from .cache import atomic_write_bytes

        text = json.dumps([r.to_dict() for r in results], indent=1)
        atomic_write_bytes(json_out, text.encode(), what="output file (--json)")
    if out_dir is not None:
        from . import figures

        _write_figure(figures.fig3_figure(results), out_dir / "fig3")
    return 0


def _print_verdict(results: list[ExperimentResult]) -> None:
    """The page's verdict under Fig. 3, as text (per source task: each is its own experiment)."""
    from . import figures, verdicts

    for src in sorted({r.spec.source for r in results}):
        v = verdicts.fig3_verdict([r for r in results if r.spec.source == src], label=figures.score_label)
        if not v.lines:
            continue
        print(f"\nverdict (source {src}):")
        for line in v.lines + v.warnings:
            print("  " + line.replace("**", ""))
        for c in v.contradictions:
            print("  contradicts the paper: " + c)


def _check_out_dir(path: str | None) -> Path | None:
    """``--out``: a folder that can be written, checked before any work."""
    if path is None:
        return None
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.storage_error(exc, "output folder (--out)", out) from None
    _check_writable(str(out / ".pai_write_test"), "output folder (--out)")
    return out


def _write_figure(fig, stem: Path) -> None:
    from . import export

    paths = export.write_figure(fig, stem)
    for fmt, p in paths.items():
        print(f"wrote {fmt.upper():4} {p}")
    ok, why = export.renderer_status()
    if not ok:
        print(f"no PNG/SVG: {why} (the HTML has the same figure)")


def _cmd_landscape(args) -> int:
    from . import figures, landscape, verdicts
    from .cache import atomic_write_bytes

    out = _check_out_dir(args.out)
    pick_device(args.device)
    names = [n for n in args.score.split(",") if n.strip()]
    unknown = [n for n in names if n not in scores.available()]
    if unknown or not names:
        raise ValueError(
            f"unknown score(s) {unknown or args.score!r}; valid: {', '.join(scores.available())}"
        )
    from . import defaults

    sparsity = (
        args.sparsity if args.sparsity is not None else defaults.for_model(args.model).landscape_sparsity
    )
    finetune = args.finetune or defaults.schedule(pick_device(args.device).type == "cuda")
    lands = []
    for name in names:
        spec = _spec(args, sparsity=sparsity, score=name.strip(), finetune=finetune)
        ls = landscape.compute(spec, args.transfer, grid=args.grid, extent=args.extent, progress=_Bar())
        lands.append(ls)
        print(
            f"\n{figures.score_label(spec.score)}: PCA plane, explained variance "
            f"{ls.explained_variance[0]:.3f}, {ls.explained_variance[1]:.3f}; grid {len(ls.xs)}x{len(ls.ys)}"
        )
        for label, (x, y) in ls.points.items():
            src, tr = ls.point_losses[label]
            off = ls.off_plane.get(label, 0.0)
            print(
                f"{label:34} at ({x:+.4g}, {y:+.4g})  source loss {src:.4f}  transfer loss {tr:.4f}"
                + (f"  ({off:.4g} off the plane)" if off else "")
            )
        print(verdicts.landscape_verdict(ls.point_losses))
    if out is not None:
        stem = out / "fig4_landscape"
        _write_figure(figures.landscape_figure(lands), stem)
        data = json.dumps([ls.to_dict() for ls in lands], indent=1).encode()
        atomic_write_bytes(stem.with_name(stem.name + ".json"), data, what="output file (--out)")
        print(f"wrote JSON {stem.with_name(stem.name + '.json')}")
    return 0


def _cmd_align(args) -> int:
    from . import task_pairs, transfer_figures

    sparsities = _parse_sparsities(args.sparsity)
    pick_device(args.device)
    sources = None
    if args.sources:
        try:
            sources = [int(v) for v in args.sources.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"--sources must be comma-separated task indices, got {args.sources!r}"
            ) from None
    out = Path(args.out).expanduser() if args.out else None
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise errors.storage_error(exc, "output folder (--out)", out) from None
    base = _spec(args)
    bar = _Bar()
    rows = []
    for q in sparsities:
        rows += task_pairs.alignment_table(base.replace(sparsity=q), sources=sources, k=args.k, progress=bar)
    frame = task_pairs.alignment_frame(rows)
    print(transfer_figures.alignment_text(frame))
    if out is not None:
        from .cache import atomic_write_bytes

        atomic_write_bytes(out / "alignment.csv", frame.to_csv(index=False).encode(), what="alignment.csv")
        text = json.dumps([r.to_dict() for r in rows], indent=1)
        atomic_write_bytes(out / "alignment.json", text.encode(), what="alignment.json")
        html = transfer_figures.alignment_report_html(frame)
        atomic_write_bytes(out / "alignment.html", html.encode(), what="alignment.html")
        print(f"wrote {out / 'alignment.csv'}, alignment.json and alignment.html")
    return 0


_THREADS_HELP = (
    f"CPU threads: a number, 'auto' (default: physical cores not busy at start, at most the CPUs this "
    f"process may use) or 'torch' (PyTorch's default); also ${runtime.THREADS_ENV}"
)


def _threads(text: str) -> str:
    try:
        runtime.resolve_threads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (expected problems print one clear line, status 2)."""
    parser = argparse.ArgumentParser(prog="python -m pai_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list encoders and whether they load offline").set_defaults(fn=_cmd_models)
    sub.add_parser("suites", help="list task suites and what they need").set_defaults(fn=_cmd_suites)
    sub.add_parser("scores", help="list pruning scores: formula, paper, options").set_defaults(fn=_cmd_scores)

    p = sub.add_parser("evaluate", help="dense fit-and-evaluate accuracy per task")
    _add_data_args(p)
    p.add_argument(
        "--ridge",
        default="closed-form",
        choices=spec_options()["ridge"][0].choices,
        help=spec_options()["ridge"][0].help,
    )
    p.set_defaults(fn=_cmd_evaluate)

    p = sub.add_parser(
        "run", help="prune on a source task, evaluate zero-shot (and fine-tuned) on every task"
    )
    _add_data_args(p)
    p.add_argument("--source", type=_int_at_least(0, "--source"), default=0, help="index of the source task")
    p.add_argument(
        "--all-sources", action="store_true", help="each task the source once (the paper's average)"
    )
    p.add_argument("--score", default="magnitude", choices=scores.available(), help="pruning score")
    p.add_argument("--score-options", default=None, help=_score_options_help())
    p.add_argument(
        "--sparsity",
        default="0.5904",
        help="fractions in [0, 1) or percentages with %%, comma-separated (0.36,59.04%%), or 'paper'",
    )
    p.add_argument("--loss", default="mse", choices=scores.LOSSES)
    _add_spec_options(p)
    p.add_argument(
        "--finetune",
        nargs="?",
        const="cpu",
        default=None,
        help="fine-tune on the source: schedule paper|cpu|short|smoke (flag alone: cpu, the safe CPU "
        "schedule; short and smoke use lr 1e-3, which can raise the loss of a lightly pruned model)",
    )
    _add_beyond_args(p)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--out", default=None, help="folder for Fig. 3 of these runs: fig3.html, and fig3.png/.svg (kaleido)"
    )
    p.set_defaults(fn=_cmd_run)

    p = sub.add_parser("landscape", help="PCA loss landscape of a source/transfer pair (Fig. 4)")
    _add_data_args(p)
    p.add_argument("--source", type=_int_at_least(0, "--source"), default=0)
    p.add_argument("--transfer", type=_int_at_least(0, "--transfer"), default=1)
    p.add_argument(
        "--score",
        default="magnitude,diag",
        help=f"pruning score(s), comma-separated: one row of panels each ({', '.join(scores.available())})",
    )
    p.add_argument("--score-options", default=None, help=_score_options_help())
    p.add_argument(
        "--sparsity",
        type=_one_sparsity,
        default=None,
        help="one level: a fraction in [0, 1) or 47.52%%; default: the model's (pai_core.defaults)",
    )
    p.add_argument(
        "--finetune",
        default=None,
        help="schedule that gives θ̃ₛ* (paper|cpu|short|smoke); default: paper on a GPU, cpu on a CPU",
    )
    p.add_argument(
        "--out", default=None, help="folder for fig4_landscape.html (.png/.svg with kaleido) and .json"
    )
    _add_spec_options(p)
    p.add_argument(
        "--repair",
        default=None,
        choices=REPAIR_FORMS,
        help="add the OBS-corrected point θ̃₀+δ (projected onto the plane; its distance is printed)",
    )
    p.add_argument("--repair-damping", type=_positive_float, default=1e-2)
    p.add_argument("--grid", type=_int_at_least(2, "--grid"), default=9, help="points per axis (at least 2)")
    p.add_argument(
        "--extent",
        type=_positive_float,
        default=1.5,
        help="half-width of the grid (1.0 = just enclosing the points)",
    )
    p.set_defaults(fn=_cmd_landscape)

    p = sub.add_parser(
        "align",
        help="every source → transfer pair: retention, the oracle mask's price, and task alignment",
        description="For one score, at each sparsity, and every ordered pair of tasks (cross-domain ones "
        "with --transfer-suite): the transfer task's retention (zero-shot / dense with the source's mask), "
        "its accuracy with its own mask (oracle) and the price of not seeing it, and how aligned the two "
        "tasks are at θ₀ (diagonal-Fisher correlation, K-FAC eigenspace overlap, mask Jaccard). Every "
        "stage and row is cached: the same command resumes, and repeats in seconds.",
    )
    _add_data_args(p)
    p.add_argument("--score", default="diag", choices=scores.available(), help="pruning score (default diag)")
    p.add_argument("--score-options", default=None, help=_score_options_help())
    p.add_argument(
        "--sparsity",
        default="0.3",
        help="fractions in [0, 1) or percentages with %%, comma-separated (0.3,40%%), or 'paper'",
    )
    p.add_argument("--sources", default=None, help="comma-separated source indices (default: every task)")
    p.add_argument("--loss", default="mse", choices=scores.LOSSES)
    p.add_argument(
        "--k", type=_int_at_least(1, "--k"), default=10, help="eigenvectors compared per K-FAC factor"
    )
    _add_beyond_args(p, repair=False)
    p.add_argument("--out", default=None, help="also write alignment.csv, .json and .html to this folder")
    p.set_defaults(fn=_cmd_align)

    sweep.add_cli(sub)
    scratch_cli.add_cli(sub, bar=_Bar)
    # --threads is accepted before or after the command; SUPPRESS keeps a subcommand's absent flag
    # from overwriting the one given before it.
    for q, default in [(parser, None), *((q, argparse.SUPPRESS) for q in sub.choices.values())]:
        q.add_argument("--threads", type=_threads, default=default, help=_THREADS_HELP)

    args = parser.parse_args(argv)
    shown = warnings.showwarning
    warnings.showwarning = _warning_line  # a warning is one line too, not a source excerpt
    try:
        runtime.configure(args.threads)
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted: finished stages stay cached; run again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # the one place that turns every failure into one line
        return _report_failure(exc)
    finally:
        warnings.showwarning = shown


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    if _Bar.line_open:
        sys.stderr.write("\n")
        _Bar.line_open = False
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def _report_failure(exc: BaseException) -> int:
    """Print one line for ``exc`` (see the module docstring); return the exit status."""
    problem = errors.describe(exc)
    if _Bar.line_open:  # end a progress bar's unfinished line first
        sys.stderr.write("\n")
    if problem.expected:
        print(problem.line(), file=sys.stderr)
        return 2
    if errors.debug_enabled():
        print(errors.traceback_text(exc), file=sys.stderr, end="")
        print(problem.line(), file=sys.stderr)
    else:
        where = errors.write_bug_report(exc, problem)
        tail = f"; traceback in {where} (PAI_DEBUG=1 prints it)" if where is not None else ""
        print(problem.line() + tail, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
