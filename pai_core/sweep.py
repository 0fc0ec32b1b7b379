"""Sweeps: the paper's grid of experiments as one resumable command, on one device or a Ray cluster.

A :class:`SweepConfig` (a frozen dataclass, loadable from YAML or JSON) names
models × sources × scores × sparsities × seeds plus the fine-tuning schedule;
:func:`expand` turns it into :class:`~pai_core.results.ExperimentSpec` s and
:func:`run_sweep` runs those not yet in the :class:`~pai_core.store.ResultsStore`:

* in-process (default): one spec after another on this machine's device;
* Ray (``ray="auto"``, ``"local"`` or a cluster address): one task per spec with one
  GPU each (one CPU when the cluster has no GPU), the cache folder shared through
  ``$PAI_CACHE_DIR``; the driver collects results as they finish and is the only
  writer of the store.

The same machinery runs sweeps of the other experiment kind, the scalable second-order paper's
own protocol (prune a randomly initialised network, train it from scratch): a sweep file with
``kind: scratch`` is a :class:`~pai_core.scratch_sweep.ScratchSweepConfig`
(:func:`load_config` reads either), its specs are :class:`~pai_core.scratch_spec.ScratchSpec` s
run by :func:`pai_core.scratch.run_scratch`, and its rows go to the store's from-scratch table.

Each finished spec is one committed row, so a killed sweep loses at most the
specs in flight, and running the same command again skips every finished spec.
A failed spec is retried once, then recorded as a failure without stopping the
sweep.  A storage failure (disk full, read-only or corrupt store or cache) stops
the sweep at once with a :class:`~pai_core.errors.StorageError` that says how
many specs are safe in the store and how to resume: every other spec would fail
the same way.  :func:`report` renders Fig. 3 (the dashboard's plotly figure, as HTML) and CSV files
from the store.

Example:
    >>> cfg = SweepConfig(scores=("magnitude", "kfac"), sparsities=(0.36, 0.5904), finetune="smoke")
    >>> len(expand(cfg.replace(sources=(0, 1))))
    8
    >>> report_ = run_sweep(cfg)                      # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from . import cache, errors, experiment, masks, models, scores, scratch, scratch_sweep, tasks
from .errors import ClusterUnavailable, StorageError
from .finetune import SCHEDULES
from .results import REPAIR_FORMS, ExperimentResult, ExperimentSpec, spec_options
from .scratch_spec import ScratchResult, ScratchSpec
from .scratch_sweep import ScratchSweepConfig
from .store import SUMMARY_COLUMNS, ResultsStore, compute_seconds
from .validate import arg_int_at_least, arg_positive_float, check_device, parse_sparsity

__all__ = [
    "SweepConfig",
    "ScratchSweepConfig",
    "load_config",
    "SweepReport",
    "expand",
    "plan",
    "run_sweep",
    "summary_table",
    "grid_frame",
    "report",
    "add_cli",
]

_REPO_ROOT = Path(__file__).resolve().parent.parent

#: Errors that come out the same on every attempt (bad names, missing data or weights): never retried.
_DETERMINISTIC = (ValueError, models.ModelUnavailable, tasks.DataError)


# ----------------------------------------------------------------------------- config


def _tuple(value: Any) -> tuple:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, Iterable):
        return tuple(value)
    return (value,)


def _fraction(v: float | str) -> float:
    """0.5904 and "59.04%" mean 59.04 %; 59.04 is refused (see :func:`pai_core.validate.parse_sparsity`)."""
    return parse_sparsity(v)


@dataclass(frozen=True)
class SweepConfig:
    """A grid of experiments (every combination of the tuple-valued fields).

    Attributes:
        models: Encoder registry names.
        suite: Task-suite registry name.
        sources: ``"all"`` (each task of the suite the source once, as the paper) or task indices.
        scores: Pruning-score names.
        sparsities: ``"paper"`` (:data:`pai_core.masks.PAPER_SPARSITIES`), or fractions in [0, 1)
            or percentages written with ``%`` (``[0.36, "59.04%"]``); anything else is refused.
        finetune: Fine-tuning schedule (``"paper"``, ``"short"``, ``"smoke"``); None → zero-shot only.
            Each spec reports zero-shot and, with a schedule, fine-tuned accuracies.
        seeds: Seeds (subsets, random scores, mini-batch order).
        images_per_class: Data subset per class (the paper: 50); None keeps all.
        data_root: Data folder for suites that read one (must be readable where specs run).
        checkpoints: ``{model: local checkpoint file}`` for hub models on machines offline.
        score_options: ``{score: {option: value}}``, e.g. ``{"hutchinson": {"probes": 20}}``.
        mask_scope, loss, alpha, holdout, image_size: As in :class:`ExperimentSpec`.
        protocol: The other protocol options of :func:`pai_core.results.spec_options` (``rounds``,
            ``prune_layers``, ``bn_aware``, ``ridge``, ``bn_warmup_mode``), one value each for the
            whole grid; a sweep file gives them as top-level keys (``rounds: 100``).
        repair, repair_damping: OBS-correct every spec on its source (``"a"`` or ``"kfac"``; None:
            no correction), as :attr:`ExperimentSpec.repair`: a third bar in the report's Fig. 3.
        transfer_suite, transfer_data_root: Evaluate the tasks of another suite too, as
            cross-domain transfer tasks (:attr:`ExperimentSpec.transfer_suite`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (not part of result keys).
        skip_refused: Leave out the scores that refuse a model's family (PX on ViTs), as the paper
            does (:attr:`pai_core.scores.ScoreInfo.refuses`; such a spec fails otherwise).
    """

    models: tuple[str, ...] = (models.DEFAULT_MODEL,)
    suite: str = "digits"
    sources: str | tuple[int, ...] = "all"
    scores: tuple[str, ...] = ("magnitude",)
    sparsities: str | tuple[float, ...] = "paper"
    finetune: str | None = None
    seeds: tuple[int, ...] = (0,)
    images_per_class: int | None = 50
    data_root: str | None = None
    checkpoints: tuple[tuple[str, str], ...] = ()
    score_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    mask_scope: str = "global"
    loss: str = "mse"
    alpha: float = 1.0
    holdout: bool = False
    image_size: int | None = None
    device: str = "auto"
    skip_refused: bool = True
    protocol: tuple[tuple[str, Any], ...] = ()
    repair: str | None = None
    repair_damping: float = 1e-2
    transfer_suite: str | None = None
    transfer_data_root: str | None = None

    def __post_init__(self) -> None:
        # Normalise what YAML, JSON and argparse hand us (lists, comma strings, dicts, percents)
        # so that equal grids compare equal and every value is hashable.
        problems: list[str] = []

        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        def norm(name: str, fn: Callable[[], Any], example: str) -> None:
            try:
                put(name, fn())
            except (TypeError, ValueError, AttributeError):
                problems.append(f"{name}: cannot read {getattr(self, name)!r}; expected {example}")
                put(name, ("?",))  # keeps the other checks running; the config is refused below

        put("models", _tuple(self.models))
        put("scores", _tuple(self.scores))
        norm("seeds", lambda: tuple(int(s) for s in _tuple(self.seeds)), "whole numbers, e.g. [0, 1]")
        if isinstance(self.sources, str) and self.sources.strip().lower() == "all":
            put("sources", "all")
        else:
            norm(
                "sources", lambda: tuple(int(s) for s in _tuple(self.sources)), "all, or task indices [0, 3]"
            )
        if isinstance(self.sparsities, str) and self.sparsities.strip().lower() == "paper":
            put("sparsities", "paper")
        else:
            good = []
            for q in _tuple(self.sparsities):
                try:
                    good.append(_fraction(q))
                except ValueError as exc:
                    problems.append(f"sparsities: {exc}")
            put("sparsities", tuple(good) if len(good) == len(_tuple(self.sparsities)) else (0.0,))
        for name in ("repair", "transfer_suite"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
                put(name, None)
        if self.repair is not None and self.repair not in REPAIR_FORMS:
            problems.append(
                f"unknown repair form {self.repair!r}; valid: {', '.join(REPAIR_FORMS)} (or none)"
            )
        norm("repair_damping", lambda: float(self.repair_damping), "a positive number, e.g. 0.01")
        if isinstance(self.repair_damping, float) and not 0 < self.repair_damping < math.inf:
            problems.append(f"repair_damping must be a positive number, got {self.repair_damping}")
        if self.transfer_suite is not None and self.transfer_suite not in tasks.available():
            problems.append(
                f"unknown transfer suite {self.transfer_suite!r}; valid: {', '.join(tasks.available())}"
            )
        if isinstance(self.finetune, str) and self.finetune.strip().lower() in (
            "",
            "none",
            "off",
            "zero-shot",
        ):
            put("finetune", None)
        ck = self.checkpoints.items() if isinstance(self.checkpoints, dict) else self.checkpoints
        norm(
            "checkpoints",
            lambda: tuple(sorted((str(k), str(v)) for k, v in ck)),
            "{model: /path/to/checkpoint.safetensors}",
        )
        so = self.score_options.items() if isinstance(self.score_options, dict) else self.score_options
        norm(
            "score_options",
            lambda: tuple(sorted((str(s), tuple(sorted(dict(o).items()))) for s, o in so)),
            "{score: {option: value}}, e.g. {hutchinson: {probes: 20}}",
        )
        if self.images_per_class is not None:
            norm("images_per_class", lambda: int(self.images_per_class), "a whole number, or null for all")
        if self.image_size is not None:
            norm("image_size", lambda: int(self.image_size), "a whole number of pixels, or null")
        ck_values = dict(self.checkpoints) if self.checkpoints != ("?",) else {}
        pr = self.protocol.items() if isinstance(self.protocol, dict) else self.protocol
        norm(
            "protocol",
            lambda: tuple(sorted((str(k).replace("-", "_"), v) for k, v in pr)),
            "top-level keys such as rounds: 100",
        )

        for m in self.models:
            if m not in models.available() and not m.startswith(("timm:", "open_clip:")):
                problems.append(f"unknown model {m!r}; valid: {', '.join(models.available())}")
        if self.suite not in tasks.available():
            problems.append(f"unknown suite {self.suite!r}; valid: {', '.join(tasks.available())}")
        for s in self.scores:
            if s not in scores.available():
                problems.append(f"unknown score {s!r}; valid: {', '.join(scores.available())}")
        for s, opts in self.score_options:
            try:
                scores.info(s).check_options(dict(opts))
            except ValueError as exc:
                problems.append(f"score_options: {exc}")
        options = _protocol_options()
        for k, v in self.protocol if self.protocol != ("?",) else ():
            if k not in options:
                problems.append(f"unknown protocol option {k!r}; valid: {', '.join(options)}")
                continue
            try:
                options[k].check(k, v)
            except ValueError as exc:
                problems.append(str(exc))
        if self.finetune is not None and self.finetune not in SCHEDULES:
            problems.append(f"unknown fine-tuning schedule {self.finetune!r}; valid: {', '.join(SCHEDULES)}")
        try:
            check_device(self.device)
        except ValueError as exc:
            problems.append(str(exc))
        if isinstance(self.images_per_class, int) and self.images_per_class < 2:
            problems.append(
                f"images_per_class must be at least 2 (or null for all), got {self.images_per_class}"
            )
        if isinstance(self.image_size, int) and self.image_size < 1:
            problems.append(f"image_size must be a positive number of pixels, got {self.image_size}")
        for m, path in ck_values.items():
            if not path.strip():
                problems.append(f"checkpoints: empty file name for {m!r}")
        for name in ("models", "scores", "seeds", "sparsities", "sources"):
            if len(getattr(self, name)) == 0:
                problems.append(f"{name} is empty")
        if problems:
            raise ValueError("bad sweep config: " + "; ".join(problems))

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepConfig:
        """Build from a mapping (keys may use ``-`` or ``_``); unknown keys raise ValueError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)} - {"protocol"}
        clean = {str(k).replace("-", "_"): v for k, v in (d or {}).items()}
        protocol = {k: clean.pop(k) for k in list(clean) if k in _protocol_options()}
        unknown = sorted(set(clean) - names)
        if unknown:
            valid = sorted(names | set(_protocol_options()))
            raise ValueError(f"unknown sweep setting(s) {unknown}; valid: {', '.join(valid)}")
        return cls(**clean, protocol=protocol)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SweepConfig:
        """Load a sweep file of the transfer kind: JSON (``.json``) or YAML (anything else).

        Raises:
            ValueError: Unreadable file, not a mapping, bad settings, or a file of the other kind
                (:func:`load_config` reads both).
        """
        data = _read_sweep_file(path)
        if data.get("kind") == scratch_sweep.KIND:
            raise ValueError(
                f"sweep file {path} is a from-scratch sweep (kind: scratch); read it with sweep.load_config"
            )
        if data.get("kind") == "transfer":
            data.pop("kind")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> SweepConfig:
        """A copy with some settings changed (CLI flags over a sweep file)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able settings (round-trips through :meth:`from_dict`)."""
        d = dataclasses.asdict(self)
        d.update(dict(d.pop("protocol")))
        d["checkpoints"] = dict(self.checkpoints)
        d["score_options"] = {s: dict(o) for s, o in self.score_options}
        for k in ("models", "scores", "seeds", "sources", "sparsities"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    def sparsity_values(self) -> tuple[float, ...]:
        """The sparsities as fractions (``"paper"`` resolved)."""
        if self.sparsities == "paper":
            return tuple(float(q) for q in masks.PAPER_SPARSITIES)
        return tuple(self.sparsities)


def _protocol_options() -> dict[str, Any]:
    """The spec-level options a sweep file sets as top-level keys (mask_scope has its own field)."""
    return {k: opt for k, (opt, _d) in spec_options().items() if k != "mask_scope"}


def _read_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read sweep file {path}: {exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:
        raise ValueError(f"sweep file {path} is not valid {path.suffix or 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"sweep file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def load_config(path: str | os.PathLike) -> SweepConfig | ScratchSweepConfig:
    """Load a sweep file of either kind: ``kind: scratch`` → :class:`ScratchSweepConfig`, else
    (no ``kind``, or ``kind: transfer``) → :class:`SweepConfig`.

    Raises:
        ValueError: Unreadable file, not a mapping, an unknown kind, or bad settings.
    """
    data = _read_sweep_file(path)
    kind = data.get("kind", "transfer")
    if kind == scratch_sweep.KIND:
        return ScratchSweepConfig.from_dict(data)
    if kind != "transfer":
        raise ValueError(f"sweep file {path}: unknown kind {kind!r}; valid: transfer, {scratch_sweep.KIND}")
    data.pop("kind", None)
    return SweepConfig.from_dict(data)


# ----------------------------------------------------------------------------- expansion


_FAMILY_LABELS = {"cnn": "CNN", "vit": "ViT"}


def _family(model: str) -> str | None:
    for e in models.entries():
        if e.name == model:
            return e.family
    return None  # "timm:…" names: unknown until loaded; never skip them


def _source_indices(cfg: SweepConfig, seed: int) -> tuple[int, ...]:
    if cfg.sources != "all":
        return cfg.sources
    # The number of tasks is only known once the suite is read (digits has 2 or 4); reading it
    # is cheap (file lists, no images decoded) and cached in-process for the specs' own use.
    try:
        suite = experiment.get_suite(cfg.suite, cfg.data_root, cfg.images_per_class, seed)
    except tasks.DataError as exc:
        raise tasks.DataError(
            f"{exc} (sources: all needs the suite's data where the sweep is started; "
            "or list the source indices, e.g. sources: [0, 1, …, 9])"
        ) from exc
    return tuple(range(len(suite.tasks)))


def plan(cfg: SweepConfig) -> tuple[list[ExperimentSpec], list[str]]:
    """Expand a config, with notes on what was left out and why.

    Returns:
        ``(specs, notes)``; specs ordered model, seed, source, score, sparsity (so consecutive specs
        in one process reuse the encoder, features, heads and scores), without duplicates.
    """
    ck = dict(cfg.checkpoints)
    so = dict(cfg.score_options)
    specs: list[ExperimentSpec] = []
    notes: list[str] = []
    seen: set[str] = set()
    for model in cfg.models:
        family = _family(model)
        for seed in cfg.seeds:
            for source in _source_indices(cfg, seed):
                for score in cfg.scores:
                    if cfg.skip_refused and scores.info(score).refusal(family):
                        note = f"{score} skipped on {model} (a {_FAMILY_LABELS.get(family, family)}), as in the paper"
                        if note not in notes:
                            notes.append(note)
                        continue
                    for q in cfg.sparsity_values():
                        spec = ExperimentSpec(
                            model=model,
                            suite=cfg.suite,
                            source=source,
                            score=score,
                            score_options=so.get(score, ()),
                            sparsity=q,
                            mask_scope=cfg.mask_scope,
                            images_per_class=cfg.images_per_class,
                            finetune=cfg.finetune,
                            holdout=cfg.holdout,
                            alpha=cfg.alpha,
                            loss=cfg.loss,
                            seed=seed,
                            image_size=cfg.image_size,
                            data_root=cfg.data_root,
                            checkpoint=ck.get(model),
                            device=cfg.device,
                            **dict(cfg.protocol),
                            repair=cfg.repair,
                            repair_damping=cfg.repair_damping,
                            transfer_suite=cfg.transfer_suite,
                            transfer_data_root=cfg.transfer_data_root,
                        )
                        if spec.key() not in seen:
                            seen.add(spec.key())
                            specs.append(spec)
    return specs, notes


def expand(cfg: SweepConfig) -> list[ExperimentSpec]:
    """The experiment specs of a sweep (see :func:`plan`)."""
    return plan(cfg)[0]


# ----------------------------------------------------------------------------- running


@dataclass
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes:
        total: Specs in the sweep.
        skipped: Specs already in the store when the sweep started (or finished meanwhile by another sweep).
        finished: Keys of specs recorded by this run.
        failed: ``{key: error}`` of specs that failed every attempt.
        elapsed: Wall-clock seconds.
        backend: ``"in-process"`` or ``"ray (<address>)"``.
        keys: Keys of every spec of the sweep, in order (to select its rows from the store).
    """

    total: int
    skipped: int = 0
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0
    backend: str = "in-process"
    keys: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed and self.skipped + len(self.finished) >= self.total


class _Progress:
    """tqdm bar over the sweep: done/total, failures, ETA; the current stage as postfix."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str) -> None:
        self.failures = 0
        self.bar = None
        self._last = 0.0
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="spec",
                dynamic_ncols=True,
                file=sys.stderr,
                smoothing=0.1,
            )
            self._post("")

    def _post(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"failed={self.failures}" + (f" | {text}" if text else ""), refresh=True)

    def stage(self, label: str) -> Callable[[str, int, int, str], None]:
        """A ``StageProgress`` callback for :func:`experiment.run` (throttled: fine-tuning calls it per step)."""

        def cb(stage: str, done: int, total: int, message: str) -> None:
            now = time.monotonic()
            if now - self._last > 0.5:
                self._last = now
                self._post(f"{label}: {stage} {done}/{total}")

        return cb

    def advance(self, failed: bool = False, text: str = "") -> None:
        self.failures += failed
        if self.bar is not None:
            self.bar.update(1)
            self._post(text)

    def skip(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _label(spec: ExperimentSpec | ScratchSpec) -> str:
    if isinstance(spec, ScratchSpec):
        return scratch_sweep.label(spec)
    return f"{spec.model}/src{spec.source}/{spec.score}/{100 * spec.sparsity:.2f}%"


def _execute(
    spec: ExperimentSpec | ScratchSpec, progress: Callable[[str, int, int, str], None] | None = None
) -> ExperimentResult | ScratchResult:
    """Run one spec of either kind (looked up at call time, so tests can stand in for the engine)."""
    if isinstance(spec, ScratchSpec):
        return scratch.run_scratch(spec, progress)
    return experiment.run(spec, progress)


def _error_text(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # Ray wraps the worker's exception
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"


def _is_deterministic(exc: BaseException) -> bool:
    cause = getattr(exc, "cause", None) or exc
    return isinstance(cause, _DETERMINISTIC) or errors.is_memory_error(cause)


def run_sweep(
    config: SweepConfig | ScratchSweepConfig | Sequence[ExperimentSpec | ScratchSpec],
    *,
    store: ResultsStore | None = None,
    ray: str | None = None,
    retries: int = 1,
    gpus_per_task: float = 1.0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> SweepReport:
    """Run every spec of a sweep that the store does not hold yet.

    Args:
        config: A sweep config of either kind, or explicit specs (of either kind, mixed too).
        store: Where results go (and what counts as done); default :class:`ResultsStore` ().
        ray: None → in-process, unless this process has already called ``ray.init`` (then that
            session is used as it is); ``"auto"`` → the running Ray cluster; ``"local"`` → start Ray
            on this machine; else a cluster address (``"ray://head:10001"`` or ``"head:6379"``).
        retries: Extra attempts for a failed spec (not for bad names or missing data/weights).
        gpus_per_task: GPUs each Ray task asks for when the cluster has GPUs (0.5 packs two small specs
            per GPU).
        progress: Show a progress bar (stderr).
        log: Where notes go (default: stderr).

    Returns:
        A :class:`SweepReport`; failures of specs are in it (and in ``store.failures()``), not raised.

    Raises:
        StorageError: The store or the cache cannot be written (disk full, read-only, corrupt): the
            sweep stops, the message says how many specs are safe in the store and how to resume.
        ClusterUnavailable: No Ray cluster at ``ray`` (or it refused this driver).
        ValueError: ``retries`` < 0 or ``gpus_per_task`` <= 0.
    """
    if retries < 0:
        raise ValueError(f"retries must be 0 or more (extra attempts of a failed spec), got {retries}")
    if not gpus_per_task > 0:
        raise ValueError(f"gpus_per_task must be positive (0.5 = two specs per GPU), got {gpus_per_task}")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    store = ResultsStore() if store is None else store
    if isinstance(config, SweepConfig | ScratchSweepConfig):
        specs, notes = plan(config) if isinstance(config, SweepConfig) else scratch_sweep.plan(config)
        for n in notes:
            log(f"note: {n}")
    else:
        specs = list(config)
    keys = [s.key() for s in specs]
    done = store.done_keys()
    todo = [s for s, k in zip(specs, keys) if k not in done]
    if todo:
        store.check_writable()  # a read-only store is said now, not after the first spec's work
    rep = SweepReport(total=len(specs), skipped=len(specs) - len(todo), keys=keys)
    t0 = time.perf_counter()
    bar = _Progress(len(specs), rep.skipped, progress, "sweep")
    try:
        if not todo:
            pass  # nothing to do: do not start Ray for it
        elif ray is None and not _ray_initialized():
            _run_local(todo, store, retries, bar, rep)
        else:
            _run_ray(todo, store, ray, retries, gpus_per_task, bar, rep, log)
    except Exception as exc:
        if not errors.is_storage_error(exc):
            raise
        raise _stopped(exc, store, rep) from exc
    finally:
        bar.close()
        rep.elapsed = time.perf_counter() - t0
    return rep


def _stopped(exc: BaseException, store: ResultsStore, rep: SweepReport) -> StorageError:
    """A storage failure as the reason the sweep stopped, with what is safe and how to resume."""
    if not isinstance(exc, StorageError):
        exc = (
            errors.storage_error(exc, "file", getattr(exc, "filename", None))
            if isinstance(exc, OSError)
            else exc
        )
    if not isinstance(exc, StorageError):  # sqlite3.Error outside a store call: say it as is
        exc = StorageError(f"results store {store.path}: {exc}", path=store.path)
    safe = rep.skipped + len(rep.finished)
    return type(exc)(
        f"sweep stopped: {exc}. {len(rep.finished)} spec(s) finished in this run; {safe} of {rep.total} are in "
        f"the store {store.path}",
        path=exc.path,
        reason=exc.reason,
        hint=f"{exc.hint or 'fix that'}, then run the same command again to resume (finished specs are skipped)",
    )


def _run_local(
    todo: list[ExperimentSpec | ScratchSpec],
    store: ResultsStore,
    retries: int,
    bar: _Progress,
    rep: SweepReport,
) -> None:
    for spec in todo:
        key = spec.key()
        if store.is_done(key):  # a concurrent sweep on the same store finished it meanwhile
            rep.skipped += 1
            bar.skip()
            continue
        for attempt in range(retries + 1):
            t = time.perf_counter()
            try:
                res = _execute(spec, bar.stage(_label(spec)))
            except Exception as exc:
                if errors.is_storage_error(exc):
                    raise  # disk full, read-only cache…: every other spec would fail the same way
                store.record_failure(spec, exc)
                if attempt < retries and not _is_deterministic(exc):
                    continue
                rep.failed[key] = _error_text(exc)
                bar.advance(failed=True, text=f"{_label(spec)} failed")
                break
            elapsed = time.perf_counter() - t
            # A cache hit took no time now; its stage timings say what it cost when computed.
            store.record(res, elapsed=compute_seconds(res) if res.cached else elapsed)
            rep.finished.append(key)
            bar.advance(text=f"{_label(spec)} done")
            break


# ----------------------------------------------------------------------------- ray


def _ray_initialized() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()


def _ray_execute(spec_json: str, kind: str = "transfer") -> dict[str, Any]:
    """Body of one Ray task: run a spec where Ray put it, return the result as plain JSON types.

    Args:
        spec_json: The spec's JSON.
        kind: ``"transfer"`` (:class:`ExperimentSpec`) or ``"scratch"`` (:class:`ScratchSpec`).
    """
    spec = ScratchSpec.from_json(spec_json) if kind == "scratch" else ExperimentSpec.from_json(spec_json)
    t = time.perf_counter()
    res = _execute(spec)
    elapsed = time.perf_counter() - t
    return {
        "result": res.to_dict(),
        "elapsed": compute_seconds(res) if res.cached else elapsed,
        "host": socket.gethostname(),
    }


def _submit(task: Any, spec: ExperimentSpec | ScratchSpec) -> Any:
    # The transfer kind keeps its one-argument call (what a stand-in for _ray_execute receives).
    if isinstance(spec, ScratchSpec):
        return task.remote(spec.to_json(), "scratch")
    return task.remote(spec.to_json())


def _worker_env() -> dict[str, str]:
    """Environment of every Ray task: the driver's cache folder and PAI_* settings.

    Workers never write the store (``experiment.run`` records nothing): the driver is its only
    writer, as SQLite over NFS is unsafe.
    """
    env = {k: v for k, v in os.environ.items() if k.startswith("PAI_") and k != "PAI_RESULTS_DB"}
    env["PAI_CACHE_DIR"] = str(cache.cache_dir().resolve())
    # Workers import pai_core from the same checkout path (local, or the shared file system).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _run_ray(
    todo: list[ExperimentSpec | ScratchSpec],
    store: ResultsStore,
    address: str | None,
    retries: int,
    gpus_per_task: float,
    bar: _Progress,
    rep: SweepReport,
    log: Callable[[str], None],
) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from an offline head node
    import ray

    if not ray.is_initialized():
        connect_ray(address)
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    opts: dict[str, Any] = {
        "max_retries": 1,  # system failures (worker or node died): once more
        "retry_exceptions": False,  # exceptions: resubmitted below, so they are counted
        "runtime_env": {"env_vars": _worker_env()},
    }
    if gpus > 0:
        opts |= {"num_gpus": gpus_per_task, "num_cpus": 1}
        slots = math.floor(gpus / gpus_per_task)
    else:
        opts |= {"num_cpus": 1}
        slots = int(resources.get("CPU", 1))
    rep.backend = f"ray ({address or 'session'}; {slots} parallel, {'GPU' if gpus else 'CPU'})"
    log(f"ray: {int(resources.get('CPU', 0))} CPUs, {gpus:g} GPUs in the cluster; {slots} specs at a time")
    task = ray.remote(_ray_execute).options(**opts)

    # Submission order: lowest sparsity of every (model, seed, source, score) first, so the first
    # wave computes distinct scores in parallel instead of queueing on one score's file lock.
    rank = {q: i for i, q in enumerate(sorted({s.sparsity for s in todo}))}
    order = sorted(range(len(todo)), key=lambda i: (rank[todo[i].sparsity], i))
    pending: dict[Any, tuple[ExperimentSpec | ScratchSpec, int]] = {}
    for i in order:
        spec = todo[i]
        pending[_submit(task, spec)] = (spec, 0)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            for ref in ready:
                spec, attempt = pending.pop(ref)
                key = spec.key()
                try:
                    out = ray.get(ref)
                except Exception as exc:  # RayTaskError (the spec raised) or a system failure after retries
                    cause = getattr(exc, "cause", None) or exc
                    if errors.is_storage_error(cause):
                        raise cause from exc  # the shared cache is full or read-only: stop the sweep
                    store.record_failure(spec, _error_text(exc))
                    if attempt < retries and not _is_deterministic(exc):
                        pending[_submit(task, spec)] = (spec, attempt + 1)
                        continue
                    rep.failed[key] = _error_text(exc)
                    bar.advance(failed=True, text=f"{_label(spec)} failed")
                    continue
                res = (
                    ScratchResult.from_dict(out["result"])
                    if isinstance(spec, ScratchSpec)
                    else ExperimentResult.from_dict(out["result"])
                )
                store.record(res, elapsed=out["elapsed"], host=out["host"])
                rep.finished.append(key)
                bar.advance(text=f"{_label(spec)} done")
    except BaseException:
        # Interrupted driver: stop queued tasks; finished ones are in the store, and results of
        # those that finish on workers anyway land in the shared cache (a re-run collects them).
        for ref in pending:
            ray.cancel(ref, force=False)
        raise


#: Seconds to wait for a TCP answer from a cluster address before saying nobody is there.
CONNECT_TIMEOUT_S = 5.0

_START_HINT = (
    "start one with `ray start --head --port=6379` (docs/SWEEPS.md, 'The paper's grid on a Ray cluster'), "
    "or run on this machine alone with --ray local (or without --ray)"
)


def _token_available() -> bool:
    """Whether this machine holds a Ray auth token (``$RAY_AUTH_TOKEN``, its path, or ``~/.ray/auth_token``)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.join("~", ".ray", "auth_token")
    return Path(path).expanduser().is_file()


def _present_token() -> None:
    """Send this machine's auth token to the cluster when there is one.

    ``ray start --head`` (Ray 2.60) turns token authentication on whenever ``~/.ray/auth_token``
    exists, but a driver given an explicit address only presents the token when
    ``RAY_AUTH_MODE=token``; without it the connection fails after 20 s of ``InvalidAuthToken``.
    A token sent to a cluster without authentication is ignored, so sending it is always safe.
    An explicit ``RAY_AUTH_MODE`` is left alone.
    """
    if os.environ.get("RAY_AUTH_MODE") or not _token_available():
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # Ray reads its settings once per process: refresh them if it was imported already
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    if not parts.hostname:
        raise ValueError(
            f"--ray {address!r} is not an address: write auto, local, HEAD_HOST:6379 or ray://HEAD_HOST:10001"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"--ray {address!r}: the port is not a number") from None
    return parts.hostname, port or (10001 if parts.scheme == "ray" else 6379)


def connect_ray(address: str | None) -> None:
    """``ray.init`` for a sweep, failing within seconds and in one clear line when there is no cluster.

    Args:
        address: None or ``"local"`` (start Ray here), ``"auto"`` (the cluster this machine runs),
            ``"HOST:PORT"`` or ``"ray://HOST:PORT"``.

    Raises:
        ClusterUnavailable: Nothing answers at the address (within :data:`CONNECT_TIMEOUT_S`), no
            cluster runs here (``auto``), or the cluster refused this driver (auth token).
        ValueError: The address cannot be parsed.
    """
    import ray

    if address in (None, "local"):
        ray.init(include_dashboard=False, log_to_driver=False)
        return
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
        except ConnectionError as exc:
            raise ClusterUnavailable(
                f"--ray auto: no running Ray cluster found on this machine; {_START_HINT}"
            ) from exc
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = (
            f"no answer within {CONNECT_TIMEOUT_S:.0f} s"
            if isinstance(exc, TimeoutError)
            else (exc.strerror or str(exc)).lower()
        )
        raise ClusterUnavailable(
            f"--ray {address}: no Ray cluster answers at {host}:{port} ({reason}); check the address and "
            f"that `ray start --head --port={port}` runs there, or {_START_HINT.split(', or ', 1)[1]}"
        ) from None
    _present_token()
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterUnavailable(
            f"--ray {address}: could not join a Ray cluster at {host}:{port} ({first[:160]}); check the "
            f"address and that `ray start --head --port={port}` runs there. If it does, it refused this "
            "driver: with token authentication (on after `ray start --head` when ~/.ray/auth_token exists) "
            "copy the head's ~/.ray/auth_token to this machine or set RAY_AUTH_TOKEN; use the head's Ray "
            "and Python versions"
        ) from exc


# ----------------------------------------------------------------------------- tables and figures


def grid_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Average the store's rows over sources and seeds: one row per (model, suite, transfer suite,
    finetune, repair, score, sparsity).

    Args:
        frame: :meth:`ResultsStore.frame` output (any subset).

    Returns:
        The summary means (fractions), ``n_sources`` and ``n_runs``, sorted for plotting.
    """
    by = ["model", "suite", "transfer_suite", "finetune", "repair", "images_per_class", "score", "sparsity"]
    if frame.empty:
        return pd.DataFrame(columns=[*by, *SUMMARY_COLUMNS, "n_sources", "n_runs"])
    df = frame.copy()
    for c in ("finetune", "repair", "transfer_suite"):
        df[c] = df[c].fillna("none")
    df["images_per_class"] = df["images_per_class"].fillna(-1)  # groupby drops NaN keys otherwise
    agg = (
        df.groupby(by, sort=True)
        .agg(
            **{c: (c, "mean") for c in SUMMARY_COLUMNS},
            n_sources=("source", "nunique"),
            n_runs=("key", "count"),
        )
        .reset_index()
    )
    agg["images_per_class"] = agg["images_per_class"].astype(int).replace(-1, pd.NA)
    return agg


def summary_table(frame: pd.DataFrame) -> str:
    """A plain-text table of the grid (accuracies in %), for the end of a sweep."""
    agg = grid_frame(frame)
    if agg.empty:
        return "(no results)"
    cols = {
        "source_zero_shot": "src zs",
        "source_finetuned": "src ft",
        "source_repaired": "src obs",
        "transfer_zero_shot": "trf zs",
        "transfer_finetuned": "trf ft",
        "transfer_repaired": "trf obs",
        "cross_zero_shot": "x-dom zs",
        "cross_finetuned": "x-dom ft",
        "cross_repaired": "x-dom obs",
    }
    # Only the columns some row has: a plain sweep prints the paper's four.
    cols = {
        c: short
        for c, short in cols.items()
        if agg[c].notna().any() or c.endswith("zero_shot") and "cross" not in c
    }
    show = agg[["model", "score", "sparsity", *cols, "n_sources"]].rename(columns=cols)
    show["sparsity"] = (100 * show["sparsity"]).map("{:.2f}%".format)
    for c in cols.values():
        show[c] = (100 * show[c].astype(float)).round(2)
    return show.to_string(index=False, na_rep="-")


#: Settings one Fig. 3 must not mix (everything but model, score, sparsity, source and seed).
_FIGURE_SETTINGS = (
    "suite",
    "transfer_suite",
    "finetune",
    "repair",
    "holdout",
    "images_per_class",
    "mask_scope",
    "loss",
    "alpha",
    "image_size",
)


def _setting_groups(results: list[ExperimentResult]) -> dict[tuple, list[ExperimentResult]]:
    groups: dict[tuple, list[ExperimentResult]] = {}
    for r in results:
        groups.setdefault(tuple(getattr(r.spec, c) for c in _FIGURE_SETTINGS), []).append(r)
    return groups


def _group_name(setting: tuple) -> str:
    d = dict(zip(_FIGURE_SETTINGS, setting))
    parts = [str(d["suite"]), f"ft-{d['finetune'] or 'none'}", f"ipc-{d['images_per_class'] or 'all'}"]
    parts += [f"repair-{d['repair']}"] if d["repair"] else []
    parts += [f"x-{d['transfer_suite']}"] if d["transfer_suite"] else []
    defaults = ExperimentSpec()
    parts += [
        f"{k}-{v}"
        for k, v in d.items()
        if k not in ("suite", "finetune", "images_per_class", "repair", "transfer_suite")
        and v != getattr(defaults, k)
    ]
    return "_".join(p.replace("/", "-").replace(" ", "") for p in parts)


def report(
    store: ResultsStore | None = None, out_dir: str | os.PathLike = "artifacts/report", **filters: Any
) -> dict[str, Path]:
    """Write Fig. 3 (HTML; PNG too when kaleido is installed) and CSVs for a subset of the store.

    The figure is :func:`pai_core.figures.fig3_figure` (the dashboard's), one per combination of
    suite, schedule and other settings in the selection.

    Args:
        store: Results store; default :class:`ResultsStore` ().
        out_dir: Folder for ``fig3.html`` (``fig3.png``), ``grid.csv`` (means over sources) and
            ``results.csv`` (one row per spec).  With several settings selected, the figures are
            ``fig3_<suite>_ft-<schedule>_ipc-<n>….html``.
        **filters: As in :meth:`ResultsStore.frame` (e.g. ``model=["resnet50"], suite="imagenet10"``).

    Returns:
        ``{"results_csv": …, "grid_csv": …, "html": …[, "png": …][, "verdict": …]}``
        (``"html:<stem>"`` keys when there are several figures; ``verdict``: ``repair_verdict.md``,
        when some runs were OBS-corrected); no figure when the selection is empty.
    """
    from . import figures  # plotly; only the report needs it

    store = ResultsStore() if store is None else store
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = store.frame(**filters)
    paths: dict[str, Path] = {"results_csv": out / "results.csv", "grid_csv": out / "grid.csv"}
    frame.to_csv(paths["results_csv"], index=False)
    grid_frame(frame).to_csv(paths["grid_csv"], index=False)
    # figures.fig3_figure refuses to mix suites or schedules in one panel: one figure per setting.
    groups = _setting_groups(store.results(**filters))
    try:
        import kaleido  # noqa: F401

        png = True
    except ImportError:
        png = False
    for setting, results in groups.items():
        stem = "fig3" if len(groups) == 1 else f"fig3_{_group_name(setting)}"
        fig = figures.fig3_figure(results)
        html = out / f"{stem}.html"
        html.write_text(figures.figure_html(fig))  # self-contained (plotly.js inlined): opens offline
        paths["html" if len(groups) == 1 else f"html:{stem}"] = html
        if png:
            try:
                fig.write_image(out / f"{stem}.png", scale=2)
                paths["png" if len(groups) == 1 else f"png:{stem}"] = out / f"{stem}.png"
            except Exception as exc:  # kaleido without its browser, etc.: the HTML has the same figure
                warnings.warn(f"PNG not written ({exc})", stacklevel=2)
    # Whether the OBS correction computed on the source helps the other tasks (P2 without SGD).
    from .transfer_figures import repair_verdict

    verdicts = [
        f"## {_group_name(setting)}\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
        for setting, results in groups.items()
        if (lines := repair_verdict(results))
    ]
    if verdicts:
        paths["verdict"] = out / "repair_verdict.md"
        paths["verdict"].write_text(
            "# OBS repair: does the source's correction help the other tasks?\n\n" + "\n".join(verdicts)
        )
    return paths


# ----------------------------------------------------------------------------- CLI


#: Flags of ``sweep`` that a from-scratch sweep has no setting for.
_TRANSFER_ONLY_FLAGS = ("suite", "sources", "finetune", "images_per_class", "loss")


def _config_from_args(args: argparse.Namespace) -> SweepConfig | ScratchSweepConfig:
    base = load_config(args.file) if args.file else SweepConfig()
    if isinstance(base, ScratchSweepConfig):
        wrong = [n for n in _TRANSFER_ONLY_FLAGS if getattr(args, n) is not None]
        if wrong:
            flags = ", ".join("--" + n.replace("_", "-") for n in wrong)
            raise ValueError(
                f"{flags}: no such setting in a from-scratch sweep ({args.file} has kind: scratch)"
            )
        names = ("models", "scores", "sparsities", "seeds", "data_root", "device", "mask_scope")
        over = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        return base.replace(**over) if over else base
    over: dict[str, Any] = {}
    for name in (
        "models",
        "suite",
        "sources",
        "scores",
        "sparsities",
        "seeds",
        "data_root",
        "device",
        "mask_scope",
        "loss",
        "repair",
        "transfer_suite",
    ):
        v = getattr(args, name)
        if v is not None:
            over[name] = v
    if args.finetune is not None:
        over["finetune"] = args.finetune
    if args.images_per_class is not None:
        over["images_per_class"] = (
            None if args.images_per_class.lower() in ("all", "none") else int(args.images_per_class)
        )
    return base.replace(**over) if over else base


def _cmd_sweep(args: argparse.Namespace) -> int:
    cfg = _config_from_args(args)
    store = ResultsStore(args.store) if args.store else ResultsStore()
    if args.dry_run:
        specs, notes = plan(cfg) if isinstance(cfg, SweepConfig) else scratch_sweep.plan(cfg)
        done = store.done_keys()
        left = [s for s in specs if s.key() not in done]
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None).rstrip())
        for n in notes:
            print(f"note: {n}")
        print(f"{len(specs)} specs, {len(specs) - len(left)} already in {store.path}, {len(left)} to run")
        for s in left[:10]:
            print(f"  {_label(s)}")
        if len(left) > 10:
            print(f"  … and {len(left) - 10} more")
        return 0
    print(f"store: {store.path}; cache: {cache.cache_dir()}", file=sys.stderr)
    try:
        rep = run_sweep(
            cfg,
            store=store,
            ray=args.ray,
            retries=args.retries,
            gpus_per_task=args.gpus_per_task,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            "interrupted: every finished spec is in the store; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    print(
        f"\n{rep.total} specs: {rep.skipped} already done, {len(rep.finished)} run now, {len(rep.failed)} failed "
        f"({rep.elapsed:.1f} s, {rep.backend})"
    )
    if isinstance(cfg, ScratchSweepConfig):
        keys = set(rep.keys)
        print(scratch_sweep.summary_table([r for r in store.scratch_results() if r.spec.key() in keys]))
    else:
        frame = store.frame()
        print(summary_table(frame[frame["key"].isin(set(rep.keys))]))
    if rep.failed:
        print("\nfailed (details: ResultsStore().failures()):")
        by_key = {
            s.key(): s for s in (expand(cfg) if isinstance(cfg, SweepConfig) else scratch_sweep.expand(cfg))
        }
        for key, err in rep.failed.items():
            print(f"  {_label(by_key[key]) if key in by_key else key}: {err}")
        return 1
    return 0


def _cmd_report_scratch(args: argparse.Namespace, store: ResultsStore) -> int:
    wrong = [f for f, v in (("--suite", args.suite), ("--finetune", args.finetune)) if v is not None]
    wrong += ["--images-per-class"] if args.images_per_class is not None else []
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: no such setting for from-scratch runs (--kind scratch)")
    filters: dict[str, Any] = {}
    for name in ("model", "score", "dataset"):
        v = getattr(args, name)
        if v:
            filters[name] = [x for part in v for x in part.split(",") if x]
    out = args.out or "artifacts/report-scratch"
    paths = scratch_sweep.report(store, out, **filters)
    n = len(store.scratch_frame(**filters))
    print(f"{n} from-scratch result rows from {store.path}")
    for kind, p in paths.items():
        print(f"{kind:24} {p}")
    return 0 if n else 1


def _cmd_report(args: argparse.Namespace) -> int:
    store = ResultsStore(args.store) if args.store else ResultsStore()
    if args.kind == scratch_sweep.KIND:
        return _cmd_report_scratch(args, store)
    if args.dataset:
        raise ValueError("--dataset is a setting of from-scratch runs: add --kind scratch")
    filters: dict[str, Any] = {}
    for name in ("model", "suite", "score"):
        v = getattr(args, name)
        if v:
            filters[name] = [x for part in v for x in part.split(",") if x]
    if args.finetune is not None:
        filters["finetune"] = None if args.finetune.lower() in ("none", "off") else args.finetune
    if args.images_per_class is not None:
        filters["images_per_class"] = args.images_per_class
    paths = report(store, args.out or "artifacts/report", **filters)
    n = len(store.frame(**filters))
    print(f"{n} result rows from {store.path}")
    for kind, p in paths.items():
        print(f"{kind:12} {p}")
    if "png" not in paths:
        print("(no PNG: kaleido is not installed; open the HTML, or use its camera button)")
    return 0 if n else 1


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``sweep`` and ``report`` subcommands (handlers in ``fn``, as ``pai_core.__main__`` expects).

    Args:
        subparsers: What ``ArgumentParser.add_subparsers()`` returned.
    """
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of experiments (resumable; in-process or on Ray)",
        description="Run every spec of a sweep that the results store does not hold yet. Flags override "
        "the sweep file. Run the same command again to resume.",
    )
    p.add_argument(
        "file",
        nargs="?",
        default=None,
        help="sweep file (YAML or JSON), e.g. sweeps/paper_fig3.yaml; with 'kind: scratch' a from-scratch "
        "sweep, e.g. sweeps/scratch_cpu.yaml",
    )
    p.add_argument(
        "--models", default=None, help="comma-separated encoders (networks, for a from-scratch sweep file)"
    )
    p.add_argument("--suite", default=None)
    p.add_argument("--sources", default=None, help="'all' (each task once, as the paper) or indices: 0,1")
    p.add_argument("--scores", default=None, help=f"comma-separated ({', '.join(scores.available())})")
    p.add_argument(
        "--sparsities",
        default=None,
        help="'paper', or comma-separated fractions in [0, 1) or percentages: 0.36,59.04%%",
    )
    p.add_argument("--finetune", default=None, help="schedule (paper, short, smoke) or 'none'")
    p.add_argument("--seeds", default=None, help="comma-separated seeds")
    p.add_argument("--images-per-class", default=None, help="data subset per class, or 'all'")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--mask-scope", default=None, choices=["global", "layerwise"])
    p.add_argument("--loss", default=None, choices=scores.LOSSES)
    p.add_argument(
        "--repair",
        default=None,
        help=f"OBS-correct every spec on its source: {', '.join(REPAIR_FORMS)} or 'none' (sweep key: repair)",
    )
    p.add_argument(
        "--transfer-suite", default=None, help="also evaluate another suite's tasks, as cross-domain transfer"
    )
    p.add_argument(
        "--store", default=None, help="results database (default: $PAI_RESULTS_DB or <cache>/results.sqlite)"
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="auto|local|ADDRESS",
        help="run on Ray: 'auto' = the running cluster, 'local' = start one here, or an address",
    )
    p.add_argument(
        "--gpus-per-task", type=arg_positive_float, default=1.0, help="GPUs per Ray task (0.5: two per GPU)"
    )
    p.add_argument(
        "--retries",
        type=arg_int_at_least(0, "--retries"),
        default=1,
        help="extra attempts for a failed spec (0 or more)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the expanded grid and what is left; run nothing"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.set_defaults(fn=_cmd_sweep)

    p = subparsers.add_parser(
        "report",
        help="figures (HTML) and CSVs from the results store, for any subset: Fig. 3 (transfer runs), or "
        "with --kind scratch the from-scratch figures",
    )
    p.add_argument(
        "--kind",
        default="transfer",
        choices=("transfer", scratch_sweep.KIND),
        help="which experiments: transfer (Fig. 3) or scratch (accuracy vs sparsity, warm-up, layer density)",
    )
    p.add_argument("--model", action="append", default=None, help="repeatable or comma-separated")
    p.add_argument("--dataset", action="append", default=None, help="from-scratch runs only")
    p.add_argument("--suite", action="append", default=None)
    p.add_argument("--score", action="append", default=None)
    p.add_argument("--finetune", default=None, help="schedule name, or 'none' for zero-shot-only runs")
    p.add_argument("--images-per-class", type=int, default=None)
    p.add_argument("--store", default=None)
    p.add_argument(
        "--out", default=None, help="output folder (default artifacts/report, artifacts/report-scratch)"
    )
    p.set_defaults(fn=_cmd_report)
