"""What every dashboard page shares: session state, cached loaders, progress bars, error display.

Pages stay thin: they lay out widgets and call these helpers and :mod:`pai_core`.  Everything
that touches Streamlit's caches lives here, with the rule from ``STYLE.md``:
``st.cache_resource`` for objects shared between sessions (encoders, masks) that must never be
mutated, ``st.cache_data`` for values that are copied per caller (names, frames, figures, bytes).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import streamlit as st
import torch

from pai_core import defaults, errors, experiment, export, figures, models, runtime, scores, store, tasks
from pai_core.features import device_label, pick_device
from pai_core.finetune import SCHEDULES
from pai_core.results import REPAIR_FORMS, ExperimentResult, ExperimentSpec, spec_options

__all__ = [
    # session state
    "STATE_DEFAULTS",
    "init_state",
    "page_defaults",
    # choices and labels
    "OFF",
    "gpu_available",
    "schedule_choices",
    "schedule_caption",
    "default_schedule",
    "default_images_per_class",
    "default_suite",
    "level_choices",
    "apply_model_defaults",
    "model_caption",
    "suite_env_var",
    "data_root_default",
    "describe_specs",
    "model_and_data_pickers",
    "score_option_inputs",
    "score_options",
    "spec_option_inputs",
    "spec_option_values",
    "REPAIR_CHOICES",
    "beyond_inputs",
    "beyond_options",
    # cached loaders
    "device_text",
    "task_names",
    "encoder",
    "model_check",
    "mask_set",
    "masks_file",
    "results_and_store_error",
    "results_signature",
    "all_results",
    "results_json",
    "figure_downloads",
    # jobs and progress
    "PageJob",
    "ProgressPanel",
    "STAGE_LABELS",
    "duration_text",
    # errors
    "USER_ERRORS",
    "error_record",
    "show_error",
]

# ----------------------------------------------------------------------------- session state

#: Non-widget state shared by the pages, created once per session by the entry point (and by a
#: page run on its own, e.g. in a test).  Widget values live under their own page-prefixed keys.
STATE_DEFAULTS: dict[str, Any] = {
    "prune_job": None,  # the run in progress: {"specs": [...], "started": t}; survives interruptions
    "prune_output": None,  # {"results": [...], "task_names": [...], "overlap": frame | None}
    "prune_error": None,  # error_record(...) of the last failed run
    "overlap_output": None,  # {"matrix": DataFrame, "title": str}
    "overlap_error": None,
    "land_job": None,
    "land_output": None,
    "land_error": None,
    "results_masks": None,  # {"key": spec key, "bytes": b"...", "name": file name}
    "align_job": None,  # the Task alignment page's job: {"specs": [...], "sources": …, "k": …}
    "align_output": None,  # {"rows": [PairAlignment, ...]}
    "align_error": None,
    "align_layers": None,  # pai_core.alignment.Alignment of the pair chosen for the per-layer view
}

# Widget keys carry one of these prefixes; re-assigning them on every run keeps a page's settings
# when the user visits another page and comes back (Streamlit drops the state of widgets that
# were not drawn in a run).  Buttons are keyed "btn_…" and never re-assigned (that is an error).
_PERSISTED_PREFIXES = ("prune_w_", "land_w_", "results_w_", "overview_w_", "scratch_w_", "align_w_")


@st.cache_resource(show_spinner=False)
def _configure_runtime() -> runtime.RuntimeInfo:
    return runtime.configure()


def process_runtime() -> tuple[runtime.RuntimeInfo, str | None]:
    """Thread count and allocator of this server process, set once from ``$PAI_THREADS``.

    Returns:
        What is set, and a message when ``$PAI_THREADS`` was unusable (the default is used then).
    """
    try:
        return _configure_runtime(), None
    except ValueError as exc:
        return runtime.configure("auto"), f"{exc}; using the default"


def init_state() -> None:
    """Create the shared session state once; keep every page's widget values across page switches.

    Also sets this process's CPU threads and allocator (:mod:`pai_core.runtime`) before any work.
    """
    process_runtime()
    for key, value in STATE_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(_PERSISTED_PREFIXES):
            st.session_state[key] = st.session_state[key]


def page_defaults(defaults: dict[str, Any]) -> None:
    """Give a page's widgets their first values through session state (never through ``value=``).

    Widgets then read and write only session state, so a value set by a callback or kept from an
    earlier visit is never fought over by a ``value=`` argument.
    """
    init_state()
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


# ----------------------------------------------------------------------------- choices and labels

#: The "no fine-tuning" choice of the fine-tuning selectors.
OFF = "off"


def gpu_available() -> bool:
    """Whether PyTorch sees a CUDA GPU here."""
    return torch.cuda.is_available()


def schedule_choices(*, allow_off: bool = True) -> list[str]:
    """Fine-tuning choices for a selectbox: ``off`` and every schedule of :data:`SCHEDULES`."""
    return ([OFF] if allow_off else []) + list(SCHEDULES)


def schedule_caption(name: str | None, *, long: bool = False) -> str:
    """What a fine-tuning choice means: short for selectboxes, ``long=True`` for captions under results."""
    if name in (None, OFF):
        return "off: zero-shot only" + (" (no fine-tuning, no hatched bars)" if long else "")
    cfg = SCHEDULES[name]
    if name == "paper":
        lr = "5e-5 (1e-4 for ViT-B/16 DINO)" if cfg.lr is None else f"{cfg.lr:g}"
        return f"paper: {cfg.epochs} epochs, lr {lr}" + (" — the paper's recipe" if long else "")
    lr = "paper's" if cfg.lr is None else f"{cfg.lr:g}"
    return f"{name}: {cfg.epochs} epochs, lr {lr}" + (
        " — shortened for CPUs, a deviation from the paper's 90 epochs" if long else " (CPU)"
    )


def default_schedule(*, allow_off: bool = True) -> str:
    """Fine-tuning on by default: the paper's schedule on a GPU, the safe ``cpu`` one on a CPU
    (:func:`pai_core.defaults.schedule`; ``allow_off`` is kept for callers that offer "off")."""
    return defaults.schedule(gpu_available())


def default_images_per_class() -> int:
    """The paper's 50 images per class on a GPU; 20 on a CPU (:func:`pai_core.defaults.images_per_class`)."""
    return defaults.images_per_class(gpu_available())


def default_suite() -> str:
    """Fashion-MNIST where installed, else digits (:func:`pai_core.defaults.suite`)."""
    return defaults.suite()


def level_choices(model: str) -> list[float]:
    """Sparsity levels offered for ``model``: its own grid and the paper's seven, sorted."""
    return sorted(set(defaults.for_model(model).sparsities) | set(defaults.PAPER_SPARSITIES))


def apply_model_defaults(prefix: str, model: str) -> None:
    """When the chosen model changes, select its default sparsity levels and protocol options.

    Sets ``{prefix}_w_levels`` to :meth:`pai_core.defaults.ModelDefaults.selection` and every
    ``{prefix}_w_spec_<field>`` of its ``spec_options`` (the advanced-options widgets' keys), once
    per model change, so a user's own choice for the same model is kept.
    """
    ss = st.session_state
    if ss.get(f"{prefix}_w_levels_model") == model:
        return
    d = defaults.for_model(model)
    ss[f"{prefix}_w_levels_model"] = model
    ss[f"{prefix}_w_levels"] = list(d.selection(gpu_available()))
    for name, value in d.spec_options.items():
        ss[f"{prefix}_w_spec_{name}"] = value


def model_caption(name: str) -> str:
    """``name`` plus whether it works offline here, for selectboxes."""
    entry = next((e for e in models.entries() if e.name == name), None)
    if entry is None:
        return name
    if entry.random_weights:
        return f"{name} (random weights, tests only)"
    return f"{name}" + (" (works offline)" if entry.offline else " (needs download or checkpoint)")


def suite_env_var(name: str) -> str:
    """The environment variable a suite reads its data folder from (``PAI_IMAGENET10_ROOT``, …)."""
    return f"PAI_{name.upper().replace('-', '_')}_ROOT"


def _option_key(prefix: str, score: str, option: str) -> str:
    return f"{prefix}_w_opt_{score}_{option}"


def score_option_inputs(prefix: str, names: Sequence[str]) -> None:
    """A widget for every option of the chosen scores, drawn from the score registry: a number
    input for a number, a select box for a choice.

    Type, default, range or choices, and help come from :attr:`pai_core.scores.ScoreInfo.options`; each score
    is introduced by its label and formula.  Widgets are keyed ``{prefix}_w_opt_{score}_{option}``
    (read them back with :func:`score_options`).
    """
    ss = st.session_state
    for name in names:
        info = scores.info(name)
        st.markdown(f"**{info.label}**: {info.description}")
        if not info.options:
            st.caption("No options.")
            continue
        cols = st.columns(max(len(info.options), 2))
        for col, o in zip(cols, info.options, strict=False):
            key = _option_key(prefix, name, o.name)
            ss.setdefault(key, o.default)
            if o.choices:
                col.selectbox(o.name, o.choices, key=key, help=o.help)
                continue
            integer = o.type is int
            col.number_input(
                o.name,
                min_value=o.min,
                max_value=o.max,
                step=1 if integer else (o.default or 0.01),
                format="%d" if integer else "%g",
                key=key,
                help=o.help,
            )


def score_options(prefix: str, name: str) -> dict[str, Any]:
    """The options of score ``name`` set in :func:`score_option_inputs` that differ from their defaults.

    Defaults are left out, so a run with the defaults is the same spec (and cache entry) as the
    command line's without ``--score-options``.
    """
    out: dict[str, Any] = {}
    for o in scores.info(name).options:
        value = st.session_state.get(_option_key(prefix, name, o.name), o.default)
        if value != o.default:
            out[o.name] = o.type(value)
    return out


def _spec_key(prefix: str, name: str) -> str:
    return f"{prefix}_w_spec_{name}"


def spec_option_inputs(prefix: str) -> None:
    """A widget per protocol option of :func:`pai_core.results.spec_options` (the "advanced options").

    Label, help, choices, bounds and default come from that one declaration: a selectbox for a
    choice, a checkbox for a switch, a number input for an integer (left empty: ``None``, whose
    meaning the help states).  Keyed ``{prefix}_w_spec_{name}``; read back with
    :func:`spec_option_values`.
    """
    ss = st.session_state
    items = list(spec_options().items())
    cols = st.columns(3)
    for i, (name, (opt, default)) in enumerate(items):
        key = _spec_key(prefix, name)
        ss.setdefault(key, default)
        col = cols[i % 3]
        if opt.type is bool:
            col.checkbox(opt.label, key=key, help=opt.help)
        elif opt.type is int:
            col.number_input(
                opt.label + (f" (empty: {opt.none})" if opt.none else ""),
                min_value=opt.min,
                max_value=opt.max,
                step=1,
                key=key,
                help=opt.help,
            )
        else:
            col.selectbox(opt.label, list(opt.choices), key=key, help=opt.help)


def spec_option_values(prefix: str) -> dict[str, Any]:
    """``{field: value}`` of the protocol options set in :func:`spec_option_inputs` (all of them)."""
    out: dict[str, Any] = {}
    for name, (opt, default) in spec_options().items():
        value = st.session_state.get(_spec_key(prefix, name), default)
        out[name] = int(value) if opt.type is int and value is not None else value
    return out


#: The OBS-correction choices of the run pages (none, then :data:`pai_core.results.REPAIR_FORMS`).
REPAIR_CHOICES = (OFF, *REPAIR_FORMS)
_REPAIR_CAPTIONS = {
    OFF: "off",
    "a": "a: layer reconstruction (exact, about one epoch of solves)",
    "kfac": "kfac: the K-FAC block (30 CG iterations, slower)",
}


def beyond_inputs(prefix: str, *, repair: bool = True) -> None:
    """Widgets for the stages beyond the paper: the OBS correction and a cross-domain transfer suite.

    Keys ``{prefix}_w_repair``, ``_repair_damping``, ``_xsuite``, ``_xroot`` (read back with
    :func:`beyond_options`); defaults: off, 1 %, none.
    """
    ss = st.session_state
    ss.setdefault(f"{prefix}_w_repair", OFF)
    ss.setdefault(f"{prefix}_w_repair_damping", 0.01)
    ss.setdefault(f"{prefix}_w_xsuite", OFF)
    ss.setdefault(f"{prefix}_w_xroot", "")
    c1, c2 = st.columns(2)
    if repair:
        with c1:
            st.selectbox(
                "OBS correction on the source (no SGD) — beyond the paper",
                REPAIR_CHOICES,
                key=f"{prefix}_w_repair",
                format_func=_REPAIR_CAPTIONS.get,
                help="Apply Eq. (3)'s optimal update δ of the kept weights, computed from the source task's "
                "curvature, instead of (or beside) fine-tuning: crossed bars in Fig. 3. P2 says it should help "
                "the transfer tasks too when the landscapes align.",
            )
            st.number_input(
                "Damping of the correction's curvature (× mean diagonal)",
                min_value=1e-6,
                max_value=100.0,
                step=0.01,
                format="%g",
                key=f"{prefix}_w_repair_damping",
            )
    with c2:
        st.selectbox(
            "Cross-domain transfer suite (optional) — beyond the paper",
            [OFF, *tasks.available()],
            key=f"{prefix}_w_xsuite",
            format_func=lambda n: "none" if n == OFF else n,
            help="Also evaluate the tasks of another data set, labelled cross-domain in every figure and "
            "table (heads fitted on the dense encoder with that data; pruning never sees it).",
        )
        xs = ss[f"{prefix}_w_xsuite"]
        if xs != OFF and tasks.info(xs).needs_root:
            st.text_input("Its data folder", key=f"{prefix}_w_xroot", help=tasks.info(xs).needs)


def beyond_options(prefix: str) -> dict[str, Any]:
    """The :class:`ExperimentSpec` fields set by :func:`beyond_inputs`."""
    ss = st.session_state
    rep = ss.get(f"{prefix}_w_repair", OFF)
    xs = ss.get(f"{prefix}_w_xsuite", OFF)
    return {
        "repair": None if rep == OFF else rep,
        "repair_damping": float(ss.get(f"{prefix}_w_repair_damping", 0.01)),
        "transfer_suite": None if xs == OFF else xs,
        "transfer_data_root": (ss.get(f"{prefix}_w_xroot") or None) if xs != OFF else None,
    }


# ----------------------------------------------------------------------------- cached loaders


@st.cache_data(show_spinner=False)
def device_text() -> str:
    """Human-readable name of the device runs use by default (GPU name or CPU threads)."""
    return device_label()


@st.cache_data(show_spinner="Reading the task suite…", max_entries=16)
def task_names(suite: str, root: str | None) -> list[str]:
    """Task names of a suite (for the source/transfer selectors).

    Raises:
        DataError: The suite's data is missing (not cached: fixing the folder and retrying works).
    """
    s = tasks.load_suite(suite, root=root or None, images_per_class=2)
    return [t.name for t in s.tasks]


@st.cache_resource(show_spinner="Loading the encoder…", max_entries=4)
def encoder(name: str, checkpoint: str | None = None) -> models.Encoder:
    """A loaded encoder, shared by every session: never mutate it (``.copy()`` before pruning)."""
    return experiment.get_encoder(name, checkpoint or None)


@st.cache_data(show_spinner=False)
def model_check(name: str) -> tuple[bool, str]:
    """Try to load a model here: (ok, what happened) — for the overview's table."""
    try:
        enc = encoder(name)
    except models.ModelUnavailable as exc:
        return False, str(exc)
    except Exception as exc:  # a broken optional package is an answer here, not a crash
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"loads: {enc.family}, {enc.feature_dim} features, weights {enc.weights_id}"


@st.cache_resource(show_spinner=False, max_entries=32)
def mask_set(spec_json: str, _progress: Any = None) -> dict[str, torch.Tensor]:
    """Keep-masks of a spec (read from the disk cache, computed if missing); never mutate them."""
    return experiment.load_masks(ExperimentSpec.from_json(spec_json), _progress)


@st.cache_data(show_spinner=False, max_entries=8)
def masks_file(spec_json: str) -> bytes:
    """The masks of a finished run as a safetensors file (bit-packed by :func:`pai_core.masks.pack`)."""
    from safetensors.torch import save

    from pai_core import masks

    packed = masks.pack(mask_set(spec_json))
    return save(
        packed,
        metadata={
            "spec": spec_json,
            "format": "pai_core.masks.pack",
            "read_with": "pai_core.masks.unpack(safetensors.torch.load(data)); True = kept",
        },
    )


def results_signature() -> tuple:
    """Changes whenever a run is recorded in the results store: the key of :func:`all_results`."""
    db = store.default_path()
    sig: list = [str(db)]
    for path in (db, db.with_name(db.name + "-wal")):
        if path.exists():
            st_ = path.stat()
            sig.append((path.name, st_.st_mtime_ns, st_.st_size))
    return tuple(sig)


@st.cache_data(show_spinner="Reading finished runs…", max_entries=4)
def all_results(signature: tuple) -> list[ExperimentResult]:
    """Every finished run, from the results store (the one source of truth; ``signature`` keys the cache).

    Raises:
        StoreError: The results store cannot be read (see :func:`results_and_store_error`).
    """
    return store.ResultsStore().results()


def results_and_store_error(signature: tuple) -> tuple[list[ExperimentResult], dict | None]:
    """Finished runs, surviving a broken results store.

    The store is the one source of truth; only when it cannot be read (corrupt, unreadable…) do
    the runs come from the result files that every finished run also leaves in the cache, so the
    user still sees them while following the error's advice (move the file aside).

    Returns:
        ``(runs, None)``, or the cache's runs and the store's :func:`error_record`, whose message
        names the file and says how to move it aside.
    """
    try:
        return all_results(signature), None
    except errors.StorageError as exc:
        return _file_results(signature), error_record(exc)


@st.cache_data(show_spinner=False, max_entries=4)
def _file_results(signature: tuple) -> list[ExperimentResult]:
    """Runs whose result file is in the cache (the fallback while the store is broken)."""
    from pai_core import cache

    found: dict[str, ExperimentResult] = {}
    res_dir = cache.cache_dir() / "results"
    for path in sorted(res_dir.glob("*.json")) if res_dir.is_dir() else []:
        try:
            r = ExperimentResult.from_dict(cache.load_json(path))
        except (cache.CacheCorrupt, TypeError, KeyError, ValueError):
            continue  # a result of an older format or a half-copied file: not a finished run
        found.setdefault(r.spec.key(), r)
    return list(found.values())


# ----------------------------------------------------------------------------- progress


STAGE_LABELS = {
    "data": "loading model and data",
    "features": "dense features and ridge heads",
    "scores": "scores on the source task",
    "masks": "masks",
    "zero-shot": "zero-shot evaluation of the pruned encoder",
    "fine-tune": "fine-tuning on the source task",
    "evaluate": "evaluating the fine-tuned encoder",
    "landscape": "loss over the PCA plane",
    "repair": "OBS correction on the source (K-FAC factors, then solves)",
    "repaired": "evaluating the OBS-corrected encoder",
    "fisher": "diagonal Fisher of a task",
    "factors": "K-FAC factors of a task",
    "pairs": "task pairs",
    "done": "finished",
}


def duration_text(seconds: float) -> str:
    """``75 -> "1 min 15 s"``, ``8.2 -> "8 s"``, ``3725 -> "1 h 2 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        m, sec = divmod(seconds, 60)
        return f"{m} min {sec} s" if sec else f"{m} min"
    h, rest = divmod(seconds, 3600)
    return f"{h} h {rest // 60} min"


class ProgressPanel:
    """The engine's ``progress(stage, done, total, message)`` drawn as Streamlit progress bars.

    A job line (run i of n, elapsed, time left once a run has finished), a status line, and one bar
    per stage of the *current* run with its elapsed time and, while it runs, an estimate of the time
    left (elapsed × remaining / done).  Each run starts with fresh bars: the previous run's finished
    stages are cleared.  Updates are throttled: the engine reports every batch, and each update is a
    message to the browser.

    Args:
        parent: Container to draw in (put it where the user looks: the top of the page).
        runs: How many runs the job has.
        min_interval: Seconds between two updates of the same bar (the last one always shows).
        clock: Seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self,
        parent: Any,
        runs: int = 1,
        *,
        min_interval: float = 0.15,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._box = parent.container(border=True)
        self._runs = runs
        self._job_line = self._box.empty()
        self._overall = self._box.progress(0.0, text=f"run 1 of {runs}") if runs > 1 else None
        self._status = self._box.empty()
        self._stage_slot = self._box.empty()
        self._stage_box = self._stage_slot.container()
        self._bars: dict[str, Any] = {}
        self._last: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._min_interval = min_interval
        self._t0 = clock()
        self._run_t0 = self._t0
        self._finished_runs = 0
        self.run_index = 0

    def _job_text(self) -> str:
        elapsed = self._clock() - self._t0
        text = f"{duration_text(elapsed)} elapsed"
        if self._runs > 1 and 0 < self._finished_runs < self._runs:
            left = elapsed / self._finished_runs * (self._runs - self._finished_runs)
            text += f" · about {duration_text(left)} left (from the runs so far)"
        return text

    def start_run(self, index: int, label: str) -> None:
        """Announce run ``index`` (0-based) of the job; clears the previous run's stage bars."""
        self._finished_runs = index
        self.run_index = index
        self._run_t0 = self._clock()
        self._stage_box = self._stage_slot.container()  # replaces the old bars
        self._bars.clear()
        self._last.clear()
        self._started.clear()
        if self._overall is not None:
            self._overall.progress(index / self._runs, text=f"run {index + 1} of {self._runs}: {label}")
            self._status.empty()  # the overall bar names the run already
        else:
            self._status.caption(label)
        self._job_line.caption(self._job_text())

    def finish(self, text: str = "done") -> None:
        self._finished_runs = self._runs
        if self._overall is not None:
            self._overall.progress(1.0, text=text)
        self._status.caption(f"{text} in {duration_text(self._clock() - self._t0)}")

    def __call__(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        now = self._clock()
        self._started.setdefault(stage, now)
        complete = total > 0 and done >= total
        if not complete and now - self._last.get(stage, -1e18) < self._min_interval:
            return
        self._last[stage] = now
        if stage == "done":
            self._status.caption(message or "finished")
            return
        if stage not in self._bars:
            self._bars[stage] = self._stage_box.empty()
        frac = min(max(done / total, 0.0), 1.0) if total else 0.0
        elapsed = now - self._started[stage]
        timing = f"{duration_text(elapsed)} elapsed"
        if complete:
            timing = f"done in {duration_text(elapsed)}"
        elif 0 < done < total and elapsed >= 1.0:
            timing += f", about {duration_text(elapsed * (total - done) / done)} left"
        label = STAGE_LABELS.get(stage, stage)
        text = f"{label}: {message}" if message else label
        self._bars[stage].progress(frac, text=f"{text} — {timing}")
        self._job_line.caption(self._job_text())


# ----------------------------------------------------------------------------- jobs


class PageJob:
    """A page's long-running job: submit → progress → output or error, kept in session state.

    The Run button's callback queues a job (:meth:`submit`); the next script run executes it
    (:meth:`run`): a Cancel button, a caption, a :class:`ProgressPanel`, then the output or the
    error in session state and a rerun, so the page redraws with Run enabled and the new output.
    The queued job survives leaving the page: coming back resumes it (finished stages are cached).

    Session keys: ``{name}_job``, ``{name}_output``, ``{name}_error`` (see ``STATE_DEFAULTS``).

    Args:
        name: The page's job name (``"prune"``, ``"land"``).
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def job(self) -> Any:
        """The queued job (what :meth:`submit`'s ``build`` returned), or None."""
        return st.session_state[f"{self.name}_job"]

    @property
    def running(self) -> bool:
        """A job is queued or in progress (its Run button must be disabled)."""
        return self.job is not None

    @property
    def output(self) -> Any:
        return st.session_state[f"{self.name}_output"]

    @property
    def error(self) -> dict | None:
        return st.session_state[f"{self.name}_error"]

    def fail(self, exc: BaseException) -> None:
        """Record an error to show (:func:`show_error`) on the next run."""
        st.session_state[f"{self.name}_error"] = error_record(exc)

    def submit(self, build: Callable[[], Any]) -> None:
        """Queue ``build()`` as the job (a Run button's ``on_click``); a bad setting becomes the error.

        A second click while a job runs does nothing.
        """
        ss = st.session_state
        if self.running:
            return
        try:
            job = build()
        except ValueError as exc:
            self.fail(exc)
            return
        ss[f"{self.name}_error"] = None
        ss[f"{self.name}_job"] = job

    def cancel(self) -> None:
        st.session_state[f"{self.name}_job"] = None

    def run(
        self,
        work: Callable[[Any, ProgressPanel], Iterator[Any]],
        *,
        runs: int = 1,
        caption: str = "",
        parent: Any = None,
    ) -> None:
        """Execute the queued job, if any, then rerun the page.

        Args:
            work: ``work(job, panel)`` yields the output so far after each finished piece, so that
                what finished before an error is still shown; errors are recorded for
                :func:`show_error` (explained for the user's situation, a traceback for bugs).
            runs: Pieces of work, for the overall progress bar.
            caption: What the job does, under its Cancel button.
            parent: Where to draw the Cancel button, the caption and the progress panel (a container
                near the top of the page, so they show without scrolling); default: here.
        """
        ss = st.session_state
        job = self.job
        if job is None:
            return
        where = parent if parent is not None else st
        where.button(
            "Cancel",
            key=f"btn_{self.name}_cancel",
            on_click=self.cancel,
            help="Stops after the current step; finished stages stay cached.",
        )
        if caption:
            where.caption(caption)
        panel = ProgressPanel(where, runs=runs)
        try:
            for output in work(job, panel):
                ss[f"{self.name}_output"] = output
        except Exception as exc:  # user errors are explained; anything else is shown as a bug with details
            self.fail(exc)
        ss[f"{self.name}_job"] = None
        st.rerun()  # redraw with the Run button enabled and the new output


# ----------------------------------------------------------------------------- errors

#: Errors that are the user's situation (no weights, no data, bad settings, a file that cannot be
#: used, memory too small), shown as a message saying what to do, never as a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    models.ModelUnavailable,
    tasks.DataError,
    ValueError,
    errors.StorageError,
    torch.cuda.OutOfMemoryError,
    MemoryError,
)

#: The server log (where ``streamlit run`` prints): unexpected errors land here with their traceback.
log = logging.getLogger("pai_explorer.dashboard")
if not log.handlers:  # Streamlit configures its own loggers only
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(_handler)
    log.propagate = False


def debug_view() -> bool:
    """Whether tracebacks are shown in the page (``PAI_DEBUG=1`` where the server was started)."""
    return errors.debug_enabled()


def error_record(exc: BaseException) -> dict[str, str | None]:
    """What :func:`show_error` needs, in a form that survives ``st.rerun`` in session state.

    The classification is :func:`pai_core.errors.describe` (the CLI says the same).  An unexpected
    error gets a short id; its full traceback goes to the server log under that id, and into the
    record only when :func:`debug_view` is on, so a page never shows server paths by default.
    """
    problem = errors.describe(exc)
    kind = {"memory": "oom"}.get(problem.kind, problem.kind)
    if problem.kind == "bug":
        log.error("unexpected error %s in the dashboard (%s)", problem.error_id, problem.type, exc_info=exc)
    return {
        "type": problem.type,
        "message": problem.message,
        "hint": problem.hint,
        "kind": kind,
        "error_id": problem.error_id,
        "traceback": errors.traceback_text(exc) if problem.kind == "bug" and debug_view() else None,
    }


def show_error(err: BaseException | dict | None) -> None:
    """Explain an error: what went wrong and what to do, in one message.

    Unexpected errors show one line and a short id (quoted in the server log with the traceback);
    the traceback itself only with ``PAI_DEBUG=1``.
    """
    if err is None:
        return
    rec = error_record(err) if isinstance(err, BaseException) else err
    kind, msg, hint = rec["kind"], rec["message"], rec.get("hint") or ""
    then = f"\n\n{hint[0].upper()}{hint[1:]}." if hint and hint not in msg else ""
    if kind == "model":
        st.error(f"**The model's weights are not available here.** {msg}", icon=":material/block:")
    elif kind == "data":
        st.error(
            f"**The data for this suite was not found or is unusable.** {msg}\n\n"
            "Give the folder in the *data folder* field, or set the suite's environment variable "
            "before starting the app (see the Overview page).",
            icon=":material/folder_off:",
        )
    elif kind == "oom":
        st.error(
            "**Out of memory.** Use fewer images per class, a smaller input size or model, or the other "
            f"device (*cpu* / *cuda*). ({msg})",
            icon=":material/memory:",
        )
    elif kind == "storage":
        st.error(f"**A file or folder cannot be used.** {msg}{then}", icon=":material/database:")
    elif kind in ("settings", "cluster"):
        st.error(f"**These settings cannot run.** {msg}{then}", icon=":material/tune:")
    elif kind == "interrupted":
        st.warning("Interrupted: finished stages stay cached; run again to resume.", icon=":material/pause:")
    else:
        ref = f" (error id `{rec['error_id']}`)" if rec.get("error_id") else ""
        st.error(
            f"**Unexpected error{ref}.** {msg}. This is a bug: please report it with the error id; the "
            "details are in the server log.",
            icon=":material/bug_report:",
        )
        if rec.get("traceback") and debug_view():
            with st.expander("Details (PAI_DEBUG is on)"):
                st.code(rec["traceback"], language="text")


# ----------------------------------------------------------------------------- small helpers


def describe_specs(specs: Sequence[ExperimentSpec], task_names: Sequence[str] | None = None) -> str:
    """One sentence of what a job will run: model, suite, source and transfer tasks by name, the
    fine-tuning schedule and the device it will actually run on."""
    s = specs[0]
    ft = "no fine-tuning" if s.finetune is None else "fine-tuning " + schedule_caption(s.finetune, long=True)
    if task_names and s.source < len(task_names):
        others = [n for k, n in enumerate(task_names) if k != s.source]
        tasks_text = f"source {task_names[s.source]}; transfer {', '.join(others) or 'none'}"
    else:
        tasks_text = f"source task {s.source}"
    try:
        device = device_label(pick_device(s.device))
    except ValueError:
        device = s.device  # the run itself will explain (e.g. cuda without a GPU)
    return (
        f"{len(specs)} run(s) of {s.model} on {s.suite} ({tasks_text}), "
        f"{s.images_per_class} images per class, {ft}, on {device}"
    )


def data_root_default(suite: str) -> str:
    """The folder a suite would read now (its environment variable), for the data-folder field."""
    return os.environ.get(suite_env_var(suite), "")


def figure_downloads(fig: Any, stem: str, key: str) -> None:
    """Download buttons for a figure: HTML (interactive, opens offline), PNG and SVG (static, drawn
    by :mod:`pai_core.export` when a file is asked for; disabled, with the reason, without a renderer).

    Keys: ``{key}_html``, ``{key}_png``, ``{key}_svg``.
    """
    ok, why = export.renderer_status()
    cols = st.columns([1, 1, 1, 3])
    cols[0].download_button(
        "HTML",
        data=lambda: figures.figure_html(fig),
        file_name=f"{stem}.html",
        mime=export.MIME["html"],
        on_click="ignore",
        key=f"{key}_html",
        icon=":material/download:",
        help="The interactive figure as a self-contained page (opens offline).",
    )
    for col, fmt in zip(cols[1:3], export.FORMATS, strict=True):
        col.download_button(
            fmt.upper(),
            data=(lambda f=fmt: export.figure_image(fig, f)) if ok else b"",
            file_name=f"{stem}.{fmt}",
            mime=export.MIME[fmt],
            on_click="ignore",
            key=f"{key}_{fmt}",
            icon=":material/download:",
            disabled=not ok,
            help=f"Static {fmt.upper()} for papers and slides ({why}; about 3 s)."
            if ok
            else f"Not available here: {why}.",
        )


def results_json(results: Sequence[ExperimentResult]) -> str:
    """Finished runs as one JSON document (list of ``ExperimentResult.to_dict()``)."""
    return json.dumps([r.to_dict() for r in results], indent=1, default=str)


def model_and_data_pickers(
    prefix: str, source_label: str
) -> tuple[str | None, list[str] | None, str | None, Any]:
    """The model / suite / source-task row shared by the run pages.

    Widgets are keyed ``{prefix}_w_model``, ``_checkpoint``, ``_suite``, ``_root``, ``_source``.

    Returns:
        ``(data root or None, task names or None when the suite cannot be read, checkpoint file or
        None, third column)``; the caller may add more widgets (e.g. a transfer task) to the column.
    """
    ss = st.session_state
    c1, c2, c3 = st.columns(3)
    with c1:
        st.selectbox("Model", models.available(), key=f"{prefix}_w_model", format_func=model_caption)
        entry = next(e for e in models.entries() if e.name == ss[f"{prefix}_w_model"])
        if not entry.offline:
            st.text_input(
                "Checkpoint file (optional)",
                key=f"{prefix}_w_checkpoint",
                help="A local weights file, for machines without internet access to the model's hub. "
                f"Weights come from: {entry.source}.",
            )
    with c2:
        current = (
            tasks.info(ss[f"{prefix}_w_suite"]) if ss.get(f"{prefix}_w_suite") in tasks.available() else None
        )
        suite = st.selectbox(
            "Task suite",
            tasks.available(),
            key=f"{prefix}_w_suite",
            help=None if current is None else f"{current.description}. Needs: {current.needs}.",
        )
        suite_info = tasks.info(suite)
        if suite_info.needs_root:
            if not ss[f"{prefix}_w_root"]:
                ss[f"{prefix}_w_root"] = data_root_default(suite)
            st.text_input(
                "Data folder",
                key=f"{prefix}_w_root",
                help=suite_info.needs,
                placeholder=f"or set {suite_env_var(suite)}",
            )
        if suite_info.needs_root:  # offline suites say what they are in the help; folders need saying
            st.caption(f"Needs: {suite_info.needs}")
    root = (ss[f"{prefix}_w_root"] or None) if suite_info.needs_root else None
    checkpoint = (ss[f"{prefix}_w_checkpoint"] or None) if not entry.offline else None
    names: list[str] | None = None
    with c3:
        try:
            names = task_names(suite, root)
        except USER_ERRORS as exc:
            show_error(exc)
        if names:
            if ss[f"{prefix}_w_source"] >= len(names):
                ss[f"{prefix}_w_source"] = 0
            st.selectbox(
                source_label,
                list(range(len(names))),
                key=f"{prefix}_w_source",
                format_func=lambda k: names[k],
            )
    return root, names, checkpoint, c3
