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

from pai_core import errors, experiment, figures, models, scores, store, tasks
from pai_core.features import device_label
from pai_core.finetune import SCHEDULES
from pai_core.results import ExperimentResult, ExperimentSpec, spec_options

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
    "model_caption",
    "suite_env_var",
    "data_root_default",
    "describe_specs",
    "model_and_data_pickers",
    "score_option_inputs",
    "score_options",
    "spec_option_inputs",
    "spec_option_values",
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
    "figure_download",
    # jobs and progress
    "PageJob",
    "ProgressPanel",
    "STAGE_LABELS",
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
}

# Widget keys carry one of these prefixes; re-assigning them on every run keeps a page's settings
# when the user visits another page and comes back (Streamlit drops the state of widgets that
# were not drawn in a run).  Buttons are keyed "btn_…" and never re-assigned (that is an error).
_PERSISTED_PREFIXES = ("prune_w_", "land_w_", "results_w_", "overview_w_")


def init_state() -> None:
    """Create the shared session state once; keep every page's widget values across page switches."""
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
    """The paper's schedule on a GPU; on a CPU-only machine off (or the 2-epoch smoke schedule)."""
    if gpu_available():
        return "paper"
    return OFF if allow_off else "smoke"


def default_images_per_class() -> int:
    """The paper's 50 images per class on a GPU; 20 on a CPU so a first run takes about a minute."""
    return 50 if gpu_available() else 20


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
    "done": "finished",
}


class ProgressPanel:
    """The engine's ``progress(stage, done, total, message)`` drawn as Streamlit progress bars.

    One bar per stage (created when the stage starts), one overall bar when several runs are
    queued, and a status line.  Updates are throttled: the engine reports every batch, and each
    update is a message to the browser.

    Args:
        parent: Container to draw in.
        runs: How many runs the job has.
        min_interval: Seconds between two updates of the same bar (the last one always shows).
    """

    def __init__(self, parent: Any, runs: int = 1, *, min_interval: float = 0.15) -> None:
        self._box = parent.container(border=True)
        self._runs = runs
        self._overall = self._box.progress(0.0, text=f"run 1 of {runs}") if runs > 1 else None
        self._status = self._box.empty()
        self._bars: dict[str, Any] = {}
        self._last: dict[str, float] = {}
        self._min_interval = min_interval
        self.run_index = 0

    def start_run(self, index: int, label: str) -> None:
        """Announce run ``index`` (0-based) of the job."""
        self.run_index = index
        if self._overall is not None:
            self._overall.progress(index / self._runs, text=f"run {index + 1} of {self._runs}: {label}")
        self._status.caption(label)

    def finish(self, text: str = "done") -> None:
        if self._overall is not None:
            self._overall.progress(1.0, text=text)
        self._status.caption(text)

    def __call__(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        now = time.monotonic()
        complete = total > 0 and done >= total
        if not complete and now - self._last.get(stage, 0.0) < self._min_interval:
            return
        self._last[stage] = now
        if stage == "done":
            self._status.caption(message or "finished")
            return
        if stage not in self._bars:
            self._bars[stage] = self._box.empty()
        frac = min(max(done / total, 0.0), 1.0) if total else 0.0
        label = STAGE_LABELS.get(stage, stage)
        self._bars[stage].progress(frac, text=f"{label}: {message}" if message else label)


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
        self, work: Callable[[Any, ProgressPanel], Iterator[Any]], *, runs: int = 1, caption: str = ""
    ) -> None:
        """Execute the queued job, if any, then rerun the page.

        Args:
            work: ``work(job, panel)`` yields the output so far after each finished piece, so that
                what finished before an error is still shown; errors are recorded for
                :func:`show_error` (explained for the user's situation, a traceback for bugs).
            runs: Pieces of work, for the overall progress bar.
            caption: What the job does, under its Cancel button.
        """
        ss = st.session_state
        job = self.job
        if job is None:
            return
        st.button(
            "Cancel",
            key=f"btn_{self.name}_cancel",
            on_click=self.cancel,
            help="Stops after the current step; finished stages stay cached.",
        )
        if caption:
            st.caption(caption)
        panel = ProgressPanel(st, runs=runs)
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


def describe_specs(specs: Sequence[ExperimentSpec]) -> str:
    """One sentence of what a job will run."""
    s = specs[0]
    ft = "no fine-tuning" if s.finetune is None else "fine-tuning " + schedule_caption(s.finetune, long=True)
    return (
        f"{len(specs)} run(s) of {s.model} on {s.suite} (source task {s.source}), "
        f"{s.images_per_class} images per class, {ft}, device {s.device}"
    )


def data_root_default(suite: str) -> str:
    """The folder a suite would read now (its environment variable), for the data-folder field."""
    return os.environ.get(suite_env_var(suite), "")


def figure_download(fig: Any, file_name: str, key: str) -> None:
    """A "Download figure (HTML)" button: the figure as a self-contained page (opens offline)."""
    st.download_button(
        "Download figure (HTML)",
        data=lambda: figures.figure_html(fig),
        file_name=file_name,
        mime="text/html",
        on_click="ignore",
        key=key,
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
        suite = st.selectbox("Task suite", tasks.available(), key=f"{prefix}_w_suite")
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
