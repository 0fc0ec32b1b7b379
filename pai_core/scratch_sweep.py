"""Sweeps of the from-scratch kind: a grid of prune-at-init + train-from-scratch runs, and its report.

The sibling of :class:`pai_core.sweep.SweepConfig` for the scalable second-order paper's own
protocol (:mod:`pai_core.scratch`).  A :class:`ScratchSweepConfig` (frozen dataclass, loadable
from YAML or JSON with ``kind: scratch``) names networks × scores × sparsities × BatchNorm
warm-ups × seeds; :func:`plan` turns it into :class:`~pai_core.scratch_spec.ScratchSpec` s with
:func:`pai_core.scratch.plan_grid`, and :func:`pai_core.sweep.run_sweep` runs the ones the
:class:`~pai_core.store.ResultsStore` does not hold yet, in-process or on Ray, exactly as it runs
a transfer sweep (one committed row per finished spec, so a killed sweep resumes where it was).
:func:`report` draws the paper's figures from the store (:mod:`pai_core.scratch_figures`):
accuracy against sparsity per score with the seeds' spread, warm-up on against off, per-layer
density at the extreme sparsities (layer collapse), plus CSV and Markdown tables.

Example:
    >>> cfg = ScratchSweepConfig(scores=("random", "snip"), sparsities=(0.9, 0.99), seeds=(0, 1))
    >>> specs, notes = plan(cfg)
    >>> len(specs)      # 2 dense + random (no warm-up: it looks at no data) 2x2 + snip 2x2x2
    14
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import datasets, nets, scores
from .scratch import default_scores, is_data_free, plan_grid
from .scratch_spec import BN_WARMUPS, EXTREME_SPARSITIES, MASK_SCOPES, PRUNE_LAYERS, SCHEDULES, ScratchSpec
from .store import ResultsStore
from .validate import check_device, parse_sparsity

__all__ = [
    "KIND",
    "ScratchSweepConfig",
    "plan",
    "expand",
    "label",
    "summary_table",
    "report",
]

#: The value of ``kind`` that marks a sweep file of this kind.
KIND = "scratch"


def _tuple(value: Any) -> tuple:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, Iterable):
        return tuple(value)
    return (value,)


def _positive_or_none(value: Any, name: str, problems: list[str]) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("all", "none", "null")):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        problems.append(f"{name}: cannot read {value!r}; expected a whole number, or null for all")
        return None
    if n < 1 or isinstance(value, bool):
        problems.append(f"{name} must be a positive whole number (or null for all), got {value!r}")
    return n


@dataclass(frozen=True)
class ScratchSweepConfig:
    """A grid of from-scratch runs (every combination of the tuple-valued fields).

    Attributes:
        kind: Always ``"scratch"`` (what tells a sweep file of this kind from a transfer one).
        models: Network names (:func:`pai_core.nets.available`).
        width, init: Channel multiplier and initialisation of every network.
        dataset: Dataset (:func:`pai_core.datasets.available`); ``data_root`` its folder (CIFAR).
        train_size, test_size: Balanced subsets (None: the whole split).
        scores: Score names, or ``"paper"``: the paper's criteria the registry has
            (:func:`pai_core.scratch.default_scores`; SynFlow joins when registered).
        score_options: ``{score: {option: value}}``.
        score_per_class: Scoring examples per class (the paper: 10).
        sparsities: Fractions in [0, 1) or percentages with ``%``, or ``"extreme"``
            (:data:`~pai_core.scratch_spec.EXTREME_SPARSITIES`: 90, 95, 98, 99, 99.5 %).
        bn_warmups: BatchNorm warm-up modes (:data:`~pai_core.scratch_spec.BN_WARMUPS`); data-free
            scores run with ``"off"`` only when it is in the list (their mask cannot change).
        seeds: Seeds (initial weights, scoring examples, batch order).
        dense: Add one unpruned run per network and seed (the reference line).
        mask_scope, prune_layers, schedule, device: As in :class:`ScratchSpec`.
    """

    kind: str = KIND
    models: tuple[str, ...] = ("resnet20",)
    width: float = 1.0
    init: str = "kaiming_normal"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    scores: str | tuple[str, ...] = ("random", "magnitude", "snip", "diag")
    score_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    score_per_class: int = 10
    sparsities: str | tuple[float, ...] = "extreme"
    bn_warmups: tuple[str, ...] = ("off", "paper")
    seeds: tuple[int, ...] = (0,)
    dense: bool = True
    mask_scope: str = "global"
    prune_layers: str = "conv"
    schedule: str = "cpu-short"
    device: str = "auto"

    def __post_init__(self) -> None:
        problems: list[str] = []

        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.kind != KIND:
            problems.append(f"kind must be {KIND!r} for a from-scratch sweep, got {self.kind!r}")
        put("models", _tuple(self.models))
        # YAML 1.1 reads a bare `off` as false: that is what the user wrote.
        put("bn_warmups", tuple("off" if w is False else w for w in _tuple(self.bn_warmups)))
        if isinstance(self.scores, str) and self.scores.strip().lower() == "paper":
            put("scores", "paper")
        else:
            put("scores", _tuple(self.scores))
        try:
            put("seeds", tuple(int(s) for s in _tuple(self.seeds)))
        except (TypeError, ValueError):
            problems.append(f"seeds: cannot read {self.seeds!r}; expected whole numbers, e.g. [0, 1, 2]")
            put("seeds", (0,))
        if isinstance(self.sparsities, str) and self.sparsities.strip().lower() == "extreme":
            put("sparsities", "extreme")
        else:
            good = []
            for q in _tuple(self.sparsities):
                try:
                    good.append(parse_sparsity(q))
                except ValueError as exc:
                    problems.append(f"sparsities: {exc}")
            put("sparsities", tuple(good))
        so = self.score_options.items() if isinstance(self.score_options, dict) else self.score_options
        try:
            put("score_options", tuple(sorted((str(s), tuple(sorted(dict(o).items()))) for s, o in so)))
        except (TypeError, ValueError, AttributeError):
            problems.append(
                f"score_options: cannot read {self.score_options!r}; expected {{score: {{option: value}}}}"
            )
            put("score_options", ())
        put("train_size", _positive_or_none(self.train_size, "train_size", problems))
        put("test_size", _positive_or_none(self.test_size, "test_size", problems))
        if isinstance(self.score_per_class, bool) or not (
            isinstance(self.score_per_class, int) and self.score_per_class >= 1
        ):
            problems.append(f"score_per_class must be a positive whole number, got {self.score_per_class!r}")
        try:
            put("width", float(self.width))
            if not self.width > 0:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"width must be a positive number, got {self.width!r}")
        if not isinstance(self.dense, bool):
            problems.append(f"dense must be true or false, got {self.dense!r}")

        for m in self.models:
            if m not in nets.available():
                problems.append(f"unknown network {m!r}; valid: {', '.join(nets.available())}")
        if self.init not in nets.INITS:
            problems.append(f"unknown init {self.init!r}; valid: {', '.join(nets.INITS)}")
        if self.dataset not in datasets.available():
            problems.append(f"unknown dataset {self.dataset!r}; valid: {', '.join(datasets.available())}")
        if self.scores != "paper":
            for s in self.scores:
                if s not in scores.available():
                    problems.append(f"unknown score {s!r}; valid: {', '.join(scores.available())}")
        for s, opts in self.score_options:
            if s not in scores.available():
                problems.append(f"score_options: unknown score {s!r}")
                continue
            try:
                scores.info(s).check_options(dict(opts))
            except ValueError as exc:
                problems.append(f"score_options: {exc}")
        for w in self.bn_warmups:
            if w not in BN_WARMUPS:
                problems.append(f"unknown BatchNorm warm-up {w!r}; valid: {', '.join(BN_WARMUPS)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.mask_scope not in MASK_SCOPES:
            problems.append(f"mask_scope must be one of {', '.join(MASK_SCOPES)}, got {self.mask_scope!r}")
        if self.prune_layers not in PRUNE_LAYERS:
            problems.append(
                f"prune_layers must be one of {', '.join(PRUNE_LAYERS)}, got {self.prune_layers!r}"
            )
        try:
            check_device(self.device)
        except ValueError as exc:
            problems.append(str(exc))
        for name in ("models", "scores", "seeds", "sparsities", "bn_warmups"):
            if len(getattr(self, name)) == 0:
                problems.append(f"{name} is empty")
        if problems:
            raise ValueError("bad from-scratch sweep config: " + "; ".join(problems))

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScratchSweepConfig:
        """Build from a mapping (keys may use ``-`` or ``_``); unknown keys raise ValueError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        clean = {str(k).replace("-", "_"): v for k, v in (d or {}).items()}
        unknown = sorted(set(clean) - names)
        if unknown:
            raise ValueError(
                f"unknown from-scratch sweep setting(s) {unknown}; valid: {', '.join(sorted(names))}"
            )
        return cls(**clean)

    def replace(self, **changes: Any) -> ScratchSweepConfig:
        """A copy with some settings changed (CLI flags over a sweep file)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able settings (round-trips through :meth:`from_dict`)."""
        d = dataclasses.asdict(self)
        d["score_options"] = {s: dict(o) for s, o in self.score_options}
        for k in ("models", "scores", "seeds", "sparsities", "bn_warmups"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    def score_names(self) -> tuple[str, ...]:
        """The scores (``"paper"`` resolved against the registry of this process)."""
        return tuple(default_scores()) if self.scores == "paper" else tuple(self.scores)

    def sparsity_values(self) -> tuple[float, ...]:
        """The sparsities as fractions (``"extreme"`` resolved)."""
        return tuple(EXTREME_SPARSITIES) if self.sparsities == "extreme" else tuple(self.sparsities)


def plan(cfg: ScratchSweepConfig) -> tuple[list[ScratchSpec], list[str]]:
    """Expand a config, with notes on what was left out and why.

    Returns:
        ``(specs, notes)``, ordered network, then :func:`pai_core.scratch.plan_grid`'s order
        (dense runs, then score, sparsity, warm-up, seed), without duplicates.
    """
    so = dict(cfg.score_options)
    names = cfg.score_names()
    specs: list[ScratchSpec] = []
    seen: set[str] = set()
    notes: list[str] = []
    free = [s for s in names if is_data_free(s)]
    if free and "off" in cfg.bn_warmups and len(cfg.bn_warmups) > 1:
        notes.append(
            f"{', '.join(free)} look(s) at no data: run without the BatchNorm warm-up only "
            "(the warm-up cannot change the mask)"
        )
    if cfg.scores == "paper":
        notes.append(f"scores 'paper' = the paper's criteria registered here: {', '.join(names)}")
    for model in cfg.models:
        base = ScratchSpec(
            model=model,
            width=cfg.width,
            init=cfg.init,
            dataset=cfg.dataset,
            data_root=cfg.data_root,
            train_size=cfg.train_size,
            test_size=cfg.test_size,
            score_per_class=cfg.score_per_class,
            mask_scope=cfg.mask_scope,
            prune_layers=cfg.prune_layers,
            schedule=cfg.schedule,
            device=cfg.device,
        )
        grid = plan_grid(base, names, cfg.sparsity_values(), cfg.bn_warmups, cfg.seeds, dense=cfg.dense)
        for spec in grid:
            if spec.sparsity > 0 and spec.score in so:
                spec = spec.replace(score_options=so[spec.score])
            if spec.key() not in seen:
                seen.add(spec.key())
                specs.append(spec)
    return specs, notes


def expand(cfg: ScratchSweepConfig) -> list[ScratchSpec]:
    """The specs of a from-scratch sweep (see :func:`plan`)."""
    return plan(cfg)[0]


def label(spec: ScratchSpec) -> str:
    """A short name of one run, for progress bars and failure lists."""
    if spec.sparsity == 0:
        return f"{spec.model}/dense/seed{spec.seed}"
    return f"{spec.model}/{spec.score}/{100 * spec.sparsity:.2f}%/warm-up {spec.bn_warmup}/seed{spec.seed}"


# ----------------------------------------------------------------------------- tables and figures

#: Settings one figure must not mix (:mod:`pai_core.scratch_figures` refuses mixed frames).
_SETTING = ("model", "width", "dataset", "schedule", "train_size", "test_size", "prune_layers", "mask_scope")


def summary_table(results: Sequence[Any]) -> str:
    """Markdown: mean ± s.d. (n seeds) of the final test accuracy, per score and warm-up × sparsity,
    one table per setting (network, dataset, schedule, …)."""
    from . import scratch_figures as sf  # plotly; only tables and reports need it

    if not results:
        return "(no results)"
    frame = sf.results_frame(results)
    parts = []
    for setting, part in frame.groupby(list(_SETTING), dropna=False, sort=True):
        parts.append(f"**{_setting_name(dict(zip(_SETTING, setting)))}**\n\n{sf.summary_markdown(part)}")
    return "\n".join(parts)


def _setting_parts(setting: dict[str, Any]) -> list[str]:
    parts = [str(setting["model"])]
    if setting.get("width") not in (None, 1.0) and not pd.isna(setting.get("width")):
        parts.append(f"width {setting['width']:g}")
    parts.append(str(setting["dataset"]))
    for key, what in (("train_size", "train"), ("test_size", "test")):
        v = setting.get(key)
        if v is not None and not pd.isna(v):
            parts.append(f"{what} {int(v)}")
    parts.append(f"schedule {setting['schedule']}")
    if setting.get("prune_layers") != "conv":
        parts.append(f"prune {setting['prune_layers']}")
    if setting.get("mask_scope") != "global":
        parts.append(f"{setting['mask_scope']} masks")
    return parts


def _setting_name(setting: dict[str, Any]) -> str:
    return ", ".join(_setting_parts(setting))


def _stem(setting: dict[str, Any]) -> str:
    """The setting as a file-name suffix: ``vgg11_width-0.25_fashion-mnist_train-2500_…``."""
    return "_".join(p.replace(" ", "-").replace("/", "-").replace("+", "-") for p in _setting_parts(setting))


def report(
    store: ResultsStore | None = None,
    out_dir: str | os.PathLike = "artifacts/report-scratch",
    *,
    keys: Iterable[str] | None = None,
    **filters: Any,
) -> dict[str, Path]:
    """Write the from-scratch figures (HTML) and tables for a subset of the store.

    Per setting (network, dataset, schedule, …; one set of files each when the selection mixes
    them): ``accuracy_vs_sparsity.html`` (mean ± s.d. over seeds per score, warm-up on and off,
    log-spaced sparsity axis), ``warmup.html`` (warm-up on against off per score and sparsity),
    ``layer_density.html`` (per-layer density at the highest sparsity, layer collapse marked);
    for the whole selection ``results.csv`` (one row per run, from the store), ``grid.csv``
    (mean, s.d., min, max and count over seeds per score, sparsity and warm-up) and
    ``summary.md`` (the Markdown table of :func:`summary_table`).

    Args:
        store: Results store; default :class:`ResultsStore` ().
        out_dir: Output folder.
        keys: Only these runs (e.g. one sweep's keys); None: every from-scratch run selected by ``filters``.
        **filters: As in :meth:`ResultsStore.scratch_frame` (``model="resnet20"``, ``score=[...]``).

    Returns:
        ``{"results_csv", "grid_csv", "summary_md", "<figure>[:<setting>]": path}``; no figures when
        the selection is empty or holds no pruned run.
    """
    from . import figures
    from . import scratch_figures as sf

    store = ResultsStore() if store is None else store
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frame = store.scratch_frame(**filters)
    results = store.scratch_results(**filters)
    if keys is not None:
        wanted = set(keys)
        frame = frame[frame["key"].isin(wanted)].reset_index(drop=True)
        results = [r for r in results if r.spec.key() in wanted]
    paths: dict[str, Path] = {
        "results_csv": out / "results.csv",
        "grid_csv": out / "grid.csv",
        "summary_md": out / "summary.md",
    }
    frame.to_csv(paths["results_csv"], index=False)
    rf = sf.results_frame(results)
    grid = sf.aggregate(rf) if len(rf) else pd.DataFrame()
    grid.to_csv(paths["grid_csv"], index=False)
    paths["summary_md"].write_text(summary_table(results) + "\n")
    if rf.empty:
        return paths
    groups = list(rf.groupby(list(_SETTING), dropna=False, sort=True))
    for setting_values, part in groups:
        setting = dict(zip(_SETTING, setting_values))
        suffix = "" if len(groups) == 1 else f"_{_stem(setting)}"
        tag = "" if len(groups) == 1 else f":{_stem(setting)}"
        members = [r for r in results if all(_same(getattr(r.spec, c), setting[c]) for c in _SETTING)]
        if not (part["sparsity"] > 0).any():
            continue  # dense runs only: nothing to plot against sparsity
        figs = {
            "accuracy_vs_sparsity": sf.accuracy_vs_sparsity_figure(part),
            "warmup": sf.warmup_figure(part),
            "layer_density": sf.layer_density_figure(members),
        }
        for name, fig in figs.items():
            path = out / f"{name}{suffix}.html"
            path.write_text(figures.figure_html(fig))  # self-contained (plotly.js inlined): opens offline
            paths[f"{name}{tag}"] = path
    return paths


def _same(a: Any, b: Any) -> bool:
    if a is None or (isinstance(a, float) and pd.isna(a)):
        return b is None or (isinstance(b, float) and pd.isna(b))
    return a == b
