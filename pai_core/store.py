"""Results store: one SQLite row per finished experiment, shared by sweeps, the CLI and the dashboard.

It holds the two kinds of experiment, each in its own table (their columns differ):

* ``"transfer"`` (table ``results``): the transfer paper's protocol,
  :func:`pai_core.experiment.run` → :class:`~pai_core.results.ExperimentResult`;
* ``"scratch"`` (table ``scratch_results``): the scalable second-order paper's protocol (prune a
  randomly initialised network, train it from scratch), :func:`pai_core.scratch.run_scratch` →
  :class:`~pai_core.scratch_spec.ScratchResult`.

The callers of either record what it returns: the CLI and the dashboard through
:func:`record_run`, sweeps into their own store as results come back from workers
(:meth:`ResultsStore.record` picks the table from the result's type).  The store is the one
source of truth for finished runs (the dashboard's Results page reads nothing else).  It answers
"what is done?" (:meth:`ResultsStore.done_keys`, both kinds, so a re-run skips it; the keys of
the two kinds never collide: ``results-…`` and ``scratch-…``) and "what came out?"
(:meth:`ResultsStore.frame` / :meth:`ResultsStore.results` for the transfer kind,
:meth:`ResultsStore.scratch_frame` / :meth:`ResultsStore.scratch_results` for the from-scratch
kind).  It imports no torch.

Durability and concurrency:

* one row per spec, keyed by ``spec.key()`` and written with ``INSERT OR
  REPLACE`` in its own transaction as soon as that spec finishes, so an
  interrupted sweep loses at most the spec in flight;
* WAL journal (switched on once, when the file is created: the mode is stored in
  the file) plus a busy timeout and a retry of whole transactions on
  ``SQLITE_BUSY``, so several processes (two sweeps, a sweep and the dashboard)
  read and write at once without "database is locked" errors or corruption, even
  on a loaded machine;
* a file that cannot be written (read-only file system, no permission) is opened
  read-only (``mode=ro``, or ``immutable=1`` when SQLite cannot even create its
  shared-memory file there), so ``report`` and the Results page still read it;
  writing to it raises :class:`~pai_core.errors.StoreError`;
* every SQLite or OS failure (corrupt file, a folder where the file should be,
  read-only, disk full) is a :class:`~pai_core.errors.StoreError` that names the
  file and says what to do; a failed write leaves every committed row in place;
* each call opens a short-lived connection: nothing is held open between calls,
  so a store object is cheap, picklable and safe to share between threads.

SQLite's WAL needs shared memory between its users, which a network file system
does not give across machines: keep the store on the local disk of the machine
that writes it (a Ray sweep's driver writes it alone; see ``docs/SWEEPS.md``),
or point ``$PAI_RESULTS_DB`` elsewhere.

Example:
    >>> import pathlib, tempfile
    >>> from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult
    >>> store = ResultsStore(pathlib.Path(tempfile.mkdtemp()) / "results.sqlite")
    >>> result = ExperimentResult(ExperimentSpec(), [TaskResult("digits 0-4", "source", 0.9, 0.8)], None)
    >>> store.record(result, elapsed=12.5) == result.spec.key()
    True
    >>> store.frame(model="efficientnet_lite0", score=["magnitude", "kfac"])[["score", "source_zero_shot"]]
           score  source_zero_shot
    0  magnitude               0.8
    >>> len(store.scratch_frame()), len(store)          # the other kind has its own table
    (0, 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sqlite3
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from . import cache
from .errors import StoreError, storage_error
from .results import SUMMARY_COLUMNS, ExperimentResult, ExperimentSpec
from .scratch_spec import ScratchResult, ScratchSpec

__all__ = [
    "STORE_VERSION",
    "KINDS",
    "SUMMARY_COLUMNS",
    "SCRATCH_COLUMNS",
    "ResultsStore",
    "StoreError",
    "compute_seconds",
    "default_path",
    "record_run",
]

#: Bump when the table layout changes.  Layout 1 (transfer runs only) is migrated in place to 2
#: (a second table for from-scratch runs, a ``kind`` column on failures): its rows are kept.
#: A file written by a newer layout is refused, never rewritten.
STORE_VERSION = 2

#: The experiment kinds the store holds (see the module docstring).
KINDS = ("transfer", "scratch")

#: Every spec field's default: what a row written before the field existed means by it.
_SPEC_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(ExperimentSpec) if f.default is not dataclasses.MISSING
}

#: Spec fields copied into their own columns, so the file is queryable with plain ``sqlite3`` too.
_SPEC_COLUMNS = ("model", "suite", "source", "score", "sparsity", "finetune", "seed", "images_per_class")
#: The same for from-scratch runs.
_SCRATCH_SPEC_COLUMNS = (
    "model",
    "width",
    "dataset",
    "score",
    "sparsity",
    "bn_warmup",
    "seed",
    "schedule",
    "train_size",
)
#: Numbers of a from-scratch result kept in their own columns (accuracies as fractions).
SCRATCH_COLUMNS = ("final_acc", "best_acc", "best_epoch", "density", "collapsed", "pruned_nonzero")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    model TEXT, suite TEXT, source INTEGER, score TEXT, sparsity REAL, finetune TEXT, seed INTEGER,
    images_per_class INTEGER,
    {", ".join(f"{c} REAL" for c in SUMMARY_COLUMNS)},
    spec_json TEXT NOT NULL,
    tasks_json TEXT NOT NULL,
    timings_json TEXT NOT NULL,
    result_json TEXT NOT NULL,
    elapsed REAL,
    device TEXT,
    schedule TEXT,
    host TEXT,
    finished_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS results_grid ON results (model, suite, score, sparsity);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    host TEXT,
    failed_at TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'transfer'
);
"""

#: Added by layout 2 (created by :data:`_SCHEMA` in a new file, by the migration in a layout-1 file).
_SCRATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS scratch_results (
    key TEXT PRIMARY KEY,
    model TEXT, width REAL, dataset TEXT, score TEXT, sparsity REAL, bn_warmup TEXT, seed INTEGER,
    schedule TEXT, train_size INTEGER,
    final_acc REAL, best_acc REAL, best_epoch INTEGER, density REAL, collapsed INTEGER,
    pruned_nonzero INTEGER,
    spec_json TEXT NOT NULL,
    result_json TEXT NOT NULL,
    elapsed REAL,
    device TEXT,
    host TEXT,
    finished_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS scratch_grid ON scratch_results (model, dataset, score, sparsity, bn_warmup)
"""

_TABLES = {"transfer": "results", "scratch": "scratch_results"}

#: Seconds a writer waits for another one before giving up (a row takes milliseconds to write).
BUSY_TIMEOUT_S = 60.0


def default_path() -> Path:
    """``$PAI_RESULTS_DB``, else ``results.sqlite`` in :func:`pai_core.cache.cache_dir` (read at call time)."""
    env = os.environ.get("PAI_RESULTS_DB")
    return Path(env) if env else cache.cache_dir() / "results.sqlite"


def _now() -> str:
    # Microseconds and UTC so rows written in the same second by different machines still order.
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _spec_dict(spec: ExperimentSpec | ScratchSpec) -> dict[str, Any]:
    return json.loads(spec.to_json()) if isinstance(spec, ScratchSpec) else dataclasses.asdict(spec)


def _kind_of(obj: ExperimentSpec | ScratchSpec | ExperimentResult | ScratchResult) -> str:
    return "scratch" if isinstance(obj, ScratchSpec | ScratchResult) else "transfer"


def _statements(schema: str) -> list[str]:
    return [stmt for stmt in schema.split(";") if stmt.strip()]


def _columns_of(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def _filter(df: pd.DataFrame, filters: dict[str, Any]) -> pd.DataFrame:
    """``column=value`` / ``column=[values]`` / ``column=None`` filters (see :meth:`ResultsStore.frame`)."""
    for name, want in filters.items():
        if name not in df.columns:
            raise ValueError(f"unknown column {name!r} to filter on; valid: {', '.join(df.columns)}")
        if isinstance(want, list | tuple | set | frozenset):
            wanted = list(want)
            mask = df[name].isin([w for w in wanted if w is not None])
            if None in wanted:
                mask |= df[name].isna()
        elif want is None:
            mask = df[name].isna()
        else:
            mask = df[name] == want
        df = df[mask]
    return df


class ResultsStore:
    """A SQLite file of finished experiments (see the module docstring).

    Args:
        path: Database file; None → :func:`default_path` (resolved now, so a later change
            of ``$PAI_CACHE_DIR`` does not move an existing store object).

    Attributes:
        readonly: True when the file cannot be written here (then only reading works).

    Raises:
        StoreError: The file cannot be used (corrupt, a folder, unreadable, or missing where it
            cannot be created); the message names it and says what to do.
    """

    #: Transactions retried after SQLite answered busy, in this process (diagnostics for tests and logs).
    busy_retries: int = 0

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._ro_uri: str | None = None
        if self.path.is_dir():
            raise self._fail(
                "not-a-file", "it is a folder, not a file", "give a file name (--store / $PAI_RESULTS_DB)"
            )
        if not self.path.parent.is_dir():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise storage_error(exc, "results store", self.path, cls=StoreError) from None
        self.readonly = self.path.exists() and not (
            os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        )
        if self.readonly:
            self._open_readonly()
        else:
            self._retrying(self._initialise)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    def check_writable(self) -> None:
        """Raise the :class:`StoreError` a write would raise, before any work is done for it."""
        if self.readonly:
            self._retrying(lambda con: None, write=True)

    # -- connection ---------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if self._ro_uri is not None:
            con = sqlite3.connect(self._ro_uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        else:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a writer takes the
            # write lock up front instead of upgrading a read lock (which can fail with
            # SQLITE_BUSY immediately, whatever the timeout).
            con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if self._ro_uri is None:
                # NORMAL in WAL mode: a killed process never loses a committed row; only a power
                # cut can drop the last few commits, which a re-run recomputes from the cache.
                con.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            con.close()
            raise
        return con

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection; SQLite errors come out as :class:`StoreError`."""
        try:
            con = self._open()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            yield con
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        finally:
            con.close()

    def _retrying(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool = False) -> Any:
        """Run ``fn(con)`` on a fresh connection, from the start again while SQLite answers busy.

        With ``write``, inside one ``BEGIN IMMEDIATE`` transaction, rolled back if anything fails,
        so a retry never writes a row twice.  Retries for up to :data:`BUSY_TIMEOUT_S`.
        """
        if write and self._ro_uri is not None:
            raise self._fail(
                "read-only",
                "it is read-only here (file system or permissions): it can be read, not written",
                "use a writable file with --store or $PAI_RESULTS_DB",
            )
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.02
        while True:
            try:
                con = self._open()
                try:
                    if not write:
                        return fn(con)
                    con.execute("BEGIN IMMEDIATE")
                    try:
                        out = fn(con)
                    except BaseException:
                        with contextlib.suppress(sqlite3.Error):
                            con.execute("ROLLBACK")
                        raise
                    con.execute("COMMIT")
                    return out
                finally:
                    con.close()
            except sqlite3.OperationalError as exc:
                if _is_busy(exc) and time.monotonic() < deadline:
                    ResultsStore.busy_retries += 1
                    time.sleep(delay)
                    delay = min(2 * delay, 0.5)
                    continue
                raise self._error(exc) from exc
            except sqlite3.Error as exc:
                raise self._error(exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, no retry (:meth:`_retrying` with ``write=True`` retries)."""
        if self._ro_uri is not None:
            self._retrying(lambda con: None, write=True)  # raises the read-only error
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _initialise(self, con: sqlite3.Connection) -> None:
        # WAL is a property of the file: switch it once, here, not on every connection (switching
        # needs a moment of exclusive access, which a busy store does not give at once).
        if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            con.execute("PRAGMA journal_mode = WAL")
        self._ensure_schema(con)

    def _open_readonly(self) -> None:
        uri = self.path.resolve().as_uri()
        for query in ("?mode=ro", "?mode=ro&immutable=1"):  # immutable: no -shm file is needed
            self._ro_uri = uri + query
            try:
                con = self._open()
                try:
                    version = con.execute("PRAGMA user_version").fetchone()[0]
                    con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                finally:
                    con.close()
            except sqlite3.OperationalError as exc:
                if query.endswith("immutable=1"):
                    raise self._error(exc) from exc
                continue
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            if version > STORE_VERSION:
                raise self._newer(version)
            if version not in (0, 1, STORE_VERSION):
                raise self._fail(
                    "corrupt",
                    f"its layout {version} is not {STORE_VERSION}, and it is read-only here",
                    "open it once where it is writable (it is migrated then), or use another --store",
                )
            # Layout 1 reads as it is: it has no from-scratch runs (and no failure kinds) yet.
            return

    def _newer(self, version: int) -> StoreError:
        return self._fail(
            "newer",
            f"it was written by a newer version of this program (layout {version}; this one knows "
            f"{STORE_VERSION}); it is left untouched",
            "open it with that version, or use another file with --store or $PAI_RESULTS_DB",
        )

    def _fail(self, reason: str, text: str, hint: str) -> StoreError:
        return StoreError(
            f"cannot use results store {self.path}: {text}", path=self.path, reason=reason, hint=hint
        )

    def _error(self, exc: sqlite3.Error) -> StoreError:
        """An SQLite error as a :class:`StoreError` that names the file and says what to do."""
        text = str(exc).lower()
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            return self._fail(
                "corrupt",
                f"the file is damaged or not a results store ({exc})",
                f"move it aside (mv {self.path} {self.path}.broken) and run again: a sweep re-records "
                "finished specs from the cache in seconds",
            )
        if "full" in text or (("disk i/o" in text or "unable to open" in text) and _disk_full(self.path)):
            return self._fail(
                "full",
                "the disk is full",
                "free some space and run the same command again: rows already written are kept",
            )
        if "readonly" in text or "read-only" in text:
            return self._fail(
                "read-only", "it is read-only here", "use a writable file with --store or $PAI_RESULTS_DB"
            )
        if "unable to open" in text or "authorization" in text or "disk i/o" in text:
            return self._fail(
                "permission",
                f"cannot open it ({exc}): check that the file and its folder can be read and written",
                "fix the permissions, or use another file with --store or $PAI_RESULTS_DB",
            )
        if _is_busy(exc):
            return self._fail(
                "busy",
                f"another process held it for more than {BUSY_TIMEOUT_S:.0f} s",
                "run again when the other sweep has finished",
            )
        return self._fail("io", f"SQLite error: {exc}", "")

    def _ensure_schema(self, con: sqlite3.Connection) -> None:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version == STORE_VERSION:
            self._add_summary_columns(con)
            return
        if version > STORE_VERSION:
            raise self._newer(version)
        con.execute("BEGIN IMMEDIATE")
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
            if version > STORE_VERSION:
                raise self._newer(version)
            if version == 1:
                # Layout 1 → 2 adds and keeps: a table for from-scratch runs, and the kind of each
                # failure (every failure of layout 1 was a transfer run).
                if "kind" not in _columns_of(con, "failures"):
                    con.execute("ALTER TABLE failures ADD COLUMN kind TEXT NOT NULL DEFAULT 'transfer'")
            elif version not in (0, STORE_VERSION):
                # Rows of an unknown older layout are only an index of the result cache: drop them;
                # a sweep re-run re-records every finished spec from cache hits in seconds.
                warnings.warn(
                    f"{self.path}: results store layout {version} is older than {STORE_VERSION}; "
                    "starting a fresh table (re-run sweeps to refill it from the cache)",
                    stacklevel=3,
                )
                con.execute("DROP TABLE IF EXISTS results")
                con.execute("DROP TABLE IF EXISTS failures")
            for stmt in _statements(_SCHEMA) + _statements(_SCRATCH_SCHEMA):
                con.execute(stmt)
            con.execute(f"PRAGMA user_version = {STORE_VERSION}")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        self._add_summary_columns(con)

    @staticmethod
    def _add_summary_columns(con: sqlite3.Connection) -> None:
        """Add the summary columns a store written by an earlier version lacks (in place, rows kept).

        Summary columns only ever grow (OBS-corrected and cross-domain means joined the six of
        the first layout): each is a nullable ``REAL``, NULL in earlier rows, which had no such
        stage or task, so an older store needs no other change and keeps :data:`STORE_VERSION`.
        """
        if not _missing_summary_columns(con):
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            for c in _missing_summary_columns(con):  # again: another process may have added them
                con.execute(f"ALTER TABLE results ADD COLUMN {c} REAL")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # -- writing ------------------------------------------------------------------------
    def record(
        self, result: ExperimentResult | ScratchResult, *, elapsed: float, host: str | None = None
    ) -> str:
        """Write (or replace) the row of a finished spec, in one transaction.

        Args:
            result: What :func:`pai_core.experiment.run` (transfer) or
                :func:`pai_core.scratch.run_scratch` (from scratch) returned; the table follows
                the type.
            elapsed: Wall-clock seconds the run took where it ran (for ETAs and GPU-hour estimates).
            host: Machine that ran it; default this one.

        Returns:
            The row's key (``result.spec.key()``).
        """
        if isinstance(result, ScratchResult):
            return self._record_scratch(result, elapsed=elapsed, host=host)
        spec = result.spec
        key = spec.key()
        sd = _spec_dict(spec)
        summary = result.summary()
        full = result.to_dict()
        full["cached"] = False  # "cached" describes one call, not the result
        row = {
            "key": key,
            **{c: sd[c] for c in _SPEC_COLUMNS},
            **{c: summary.get(c) for c in SUMMARY_COLUMNS},
            "spec_json": _dumps(sd),
            "tasks_json": _dumps([dataclasses.asdict(t) for t in result.tasks]),
            "timings_json": _dumps(result.timings),
            "result_json": _dumps(full),
            "elapsed": float(elapsed),
            "device": result.device,
            "schedule": result.schedule,
            "host": host or socket.gethostname(),
            "finished_at": _now(),
        }
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)

        def write(con: sqlite3.Connection) -> None:
            con.execute(f"INSERT OR REPLACE INTO results ({cols}) VALUES ({marks})", tuple(row.values()))
            con.execute("DELETE FROM failures WHERE key = ?", (key,))

        self._retrying(write, write=True)
        return key

    def _record_scratch(self, result: ScratchResult, *, elapsed: float, host: str | None) -> str:
        spec = result.spec
        key = spec.key()
        sd = _spec_dict(spec)
        full = result.to_dict()
        full["cached"] = False  # "cached" describes one call, not the result
        row = {
            "key": key,
            **{c: sd[c] for c in _SCRATCH_SPEC_COLUMNS},
            "final_acc": result.final_acc,
            "best_acc": result.best_acc,
            "best_epoch": result.best_epoch,
            "density": result.density,
            "collapsed": len(result.collapsed_layers),
            "pruned_nonzero": result.pruned_nonzero,
            "spec_json": _dumps(sd),
            "result_json": _dumps(full),
            "elapsed": float(elapsed),
            "device": result.device,
            "host": host or socket.gethostname(),
            "finished_at": _now(),
        }
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)

        def write(con: sqlite3.Connection) -> None:
            con.execute(
                f"INSERT OR REPLACE INTO scratch_results ({cols}) VALUES ({marks})", tuple(row.values())
            )
            con.execute("DELETE FROM failures WHERE key = ?", (key,))

        self._retrying(write, write=True)
        return key

    def record_failure(
        self, spec: ExperimentSpec | ScratchSpec, error: BaseException | str, *, host: str | None = None
    ) -> None:
        """Note that a spec failed (kept until it succeeds; counts attempts).

        Args:
            spec: The spec that failed (either kind).
            error: The exception (its traceback is kept) or a message.
            host: Machine it failed on; default this one.
        """
        if isinstance(error, BaseException):
            msg = f"{type(error).__name__}: {error}"
            tb = "".join(traceback.format_exception(error))
        else:
            msg, tb = str(error), None
        values = (
            spec.key(),
            _dumps(_spec_dict(spec)),
            msg,
            tb,
            host or socket.gethostname(),
            _now(),
            _kind_of(spec),
        )
        self._retrying(
            lambda con: con.execute(
                "INSERT INTO failures (key, spec_json, error, traceback, attempts, host, failed_at, kind) "
                "VALUES (?, ?, ?, ?, 1, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET error = excluded.error, "
                "traceback = excluded.traceback, attempts = attempts + 1, host = excluded.host, "
                "failed_at = excluded.failed_at",
                values,
            ),
            write=True,
        )

    def delete(self, keys: Sequence[str]) -> int:
        """Forget rows of either kind (e.g. to force a re-run). Returns how many were removed."""

        def drop(con: sqlite3.Connection) -> int:
            pairs = [(k,) for k in keys]
            return sum(
                con.executemany(f"DELETE FROM {table} WHERE key = ?", pairs).rowcount
                for table in _TABLES.values()
            )

        return self._retrying(drop, write=True)

    # -- reading ------------------------------------------------------------------------
    def _tables(self, con: sqlite3.Connection) -> list[str]:
        """The result tables this file has (a read-only layout-1 file has no ``scratch_results``)."""
        have = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return [t for t in _TABLES.values() if t in have]

    def done_keys(self, kind: str | None = None) -> set[str]:
        """Keys (``spec.key()``) of every finished spec (of one kind of :data:`KINDS`, or both)."""
        with self._connect() as con:
            tables = [t for k, t in _TABLES.items() if kind in (None, k) and t in self._tables(con)]
            return {k for t in tables for (k,) in con.execute(f"SELECT key FROM {t}")}

    def is_done(self, key: str) -> bool:
        """Whether the spec with this key has a row, of either kind (one indexed lookup per table)."""
        with self._connect() as con:
            return any(
                con.execute(f"SELECT 1 FROM {t} WHERE key = ?", (key,)).fetchone() is not None
                for t in self._tables(con)
            )

    def __len__(self) -> int:
        """Finished specs of both kinds (``len(store.frame())`` counts the transfer kind alone)."""
        with self._connect() as con:
            return sum(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in self._tables(con))

    def count(self, kind: str) -> int:
        """Finished specs of one kind of :data:`KINDS`."""
        if kind not in _TABLES:
            raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
        with self._connect() as con:
            if _TABLES[kind] not in self._tables(con):
                return 0
            return con.execute(f"SELECT COUNT(*) FROM {_TABLES[kind]}").fetchone()[0]

    def frame(self, **filters: Any) -> pd.DataFrame:
        """One row per finished spec, optionally filtered.

        Args:
            **filters: ``column=value`` or ``column=[values]`` on any column of the frame, e.g.
                ``model="resnet50", score=["magnitude", "kfac"], finetune=None``.

        Returns:
            Columns: ``key``, every :class:`ExperimentSpec` field (a field added after a row was
            written reads as its default), the means of
            :data:`SUMMARY_COLUMNS`, ``tasks`` (JSON list of per-task accuracies), ``timings``
            (JSON), ``elapsed`` (s), ``device``, ``schedule``, ``host``, ``finished_at``; sorted by
            model, suite, score, sparsity, source, seed.

        Raises:
            ValueError: A filter names no column (the message lists them).
        """
        with self._connect() as con:
            # A read-only store of an earlier layout may lack later summary columns: NULL for them.
            missing = set(_missing_summary_columns(con))
            have = [c for c in SUMMARY_COLUMNS if c not in missing]
            rows = con.execute(
                f"SELECT key, spec_json, {', '.join(have)}, tasks_json, timings_json, elapsed, "
                "device, schedule, host, finished_at FROM results"
            ).fetchall()
        records = []
        for key, spec_json, *rest in rows:
            spec = {**_SPEC_DEFAULTS, **json.loads(spec_json)}
            spec["score_options"] = _dumps(spec.get("score_options", []))  # hashable, filterable
            means = {c: None for c in SUMMARY_COLUMNS} | dict(zip(have, rest[: len(have)]))
            tasks_json, timings_json, elapsed, device, schedule, host, finished_at = rest[len(have) :]
            # "device" is the spec's request ("auto") in spec_json and where it ran in the row;
            # the frame keeps the latter, which is what a reader of timings wants.
            spec.pop("device", None)
            records.append(
                {
                    "key": key,
                    **spec,
                    **means,
                    "tasks": tasks_json,
                    "timings": timings_json,
                    "elapsed": elapsed,
                    "device": device,
                    "schedule": schedule,
                    "host": host,
                    "finished_at": finished_at,
                }
            )
        df = _filter(pd.DataFrame.from_records(records, columns=self._columns()), filters)
        order = [c for c in ("model", "suite", "score", "sparsity", "source", "seed") if c in df.columns]
        return df.sort_values(order, kind="stable").reset_index(drop=True)

    @staticmethod
    def _columns() -> list[str]:
        spec_cols = [f.name for f in dataclasses.fields(ExperimentSpec) if f.name != "device"]
        return [
            "key",
            *spec_cols,
            *SUMMARY_COLUMNS,
            "tasks",
            "timings",
            "elapsed",
            "device",
            "schedule",
            "host",
            "finished_at",
        ]

    def results(self, **filters: Any) -> list[ExperimentResult]:
        """Full results (per-task accuracies, layer report, notes…), same filters and order as :meth:`frame`."""
        keys = list(self.frame(**filters)["key"]) if filters else None
        with self._connect() as con:
            rows = dict(con.execute("SELECT key, result_json FROM results").fetchall())
        order = keys if keys is not None else list(self.frame()["key"])
        return [ExperimentResult.from_dict(json.loads(rows[k])) for k in order if k in rows]

    # -- reading the from-scratch kind ----------------------------------------------------------
    def scratch_frame(self, **filters: Any) -> pd.DataFrame:
        """One row per finished from-scratch run, optionally filtered (as :meth:`frame`).

        Returns:
            Columns: ``key``, every :class:`~pai_core.scratch_spec.ScratchSpec` field but
            ``device`` (``score_options`` as JSON), :data:`SCRATCH_COLUMNS` (accuracies and
            density as fractions, ``collapsed`` = number of layers left empty), ``epochs``,
            ``elapsed`` (s), ``device`` (where it ran), ``host``, ``finished_at``; sorted by
            model, dataset, score, sparsity, warm-up, seed.

        Raises:
            ValueError: A filter names no column (the message lists them).
        """
        with self._connect() as con:
            rows = (
                con.execute(
                    f"SELECT key, spec_json, {', '.join(SCRATCH_COLUMNS)}, result_json, elapsed, device, "
                    "host, finished_at FROM scratch_results"
                ).fetchall()
                if "scratch_results" in self._tables(con)
                else []
            )
        records = []
        for key, spec_json, *rest in rows:
            spec = json.loads(spec_json)
            spec["score_options"] = _dumps(spec.get("score_options", []))  # hashable, filterable
            spec.pop("device", None)  # the request ("auto"); the frame keeps where it ran
            numbers = dict(zip(SCRATCH_COLUMNS, rest[: len(SCRATCH_COLUMNS)]))
            result_json, elapsed, device, host, finished_at = rest[len(SCRATCH_COLUMNS) :]
            records.append(
                {
                    "key": key,
                    **spec,
                    **numbers,
                    "epochs": len(json.loads(result_json).get("curve", [])),
                    "elapsed": elapsed,
                    "device": device,
                    "host": host,
                    "finished_at": finished_at,
                }
            )
        df = _filter(pd.DataFrame.from_records(records, columns=self._scratch_columns()), filters)
        order = ["model", "dataset", "score", "sparsity", "bn_warmup", "seed"]
        return df.sort_values(order, kind="stable").reset_index(drop=True)

    @staticmethod
    def _scratch_columns() -> list[str]:
        spec_cols = [f.name for f in dataclasses.fields(ScratchSpec) if f.name != "device"]
        return ["key", *spec_cols, *SCRATCH_COLUMNS, "epochs", "elapsed", "device", "host", "finished_at"]

    def scratch_results(self, **filters: Any) -> list[ScratchResult]:
        """Full from-scratch results (training curves, per-layer densities, notes…), same filters
        and order as :meth:`scratch_frame`.

        Rows written by another result format (:data:`pai_core.scratch_spec.RESULT_VERSION`) are
        left out with a warning: the run is in the store, its meaning has changed since.
        """
        order = list(self.scratch_frame(**filters)["key"])
        with self._connect() as con:
            rows = (
                dict(con.execute("SELECT key, result_json FROM scratch_results").fetchall())
                if "scratch_results" in self._tables(con)
                else {}
            )
        out, stale = [], 0
        for k in order:
            if k not in rows:
                continue
            try:
                out.append(ScratchResult.from_dict(json.loads(rows[k])))
            except ValueError:
                stale += 1
        if stale:
            warnings.warn(
                f"{stale} from-scratch row(s) in {self.path} have an older result format; run them again",
                stacklevel=2,
            )
        return out

    def failures(self, kind: str | None = None) -> pd.DataFrame:
        """Specs that failed and have not succeeded since: key, kind, spec fields, error, attempts, host,
        failed_at (of one kind of :data:`KINDS`, or both; spec fields a kind lacks are None)."""
        with self._connect() as con:
            has_kind = "kind" in _columns_of(con, "failures")  # a read-only layout-1 file has none
            rows = con.execute(
                f"SELECT key, spec_json, error, traceback, attempts, host, failed_at, "
                f"{'kind' if has_kind else repr('transfer')} FROM failures ORDER BY failed_at"
            ).fetchall()
        records = [
            {
                "key": k,
                "kind": kd,
                **{c: json.loads(s).get(c) for c in _SPEC_COLUMNS},
                "error": e,
                "traceback": tb,
                "attempts": a,
                "host": h,
                "failed_at": t,
            }
            for k, s, e, tb, a, h, t, kd in rows
            if kind in (None, kd)
        ]
        return pd.DataFrame.from_records(
            records,
            columns=["key", "kind", *_SPEC_COLUMNS, "error", "traceback", "attempts", "host", "failed_at"],
        )


def _missing_summary_columns(con: sqlite3.Connection) -> list[str]:
    """Summary columns the ``results`` table lacks (a store written before they existed)."""
    have = {row[1] for row in con.execute("PRAGMA table_info(results)")}
    return [c for c in SUMMARY_COLUMNS if c not in have]


def _disk_full(path: Path, margin: int = 1 << 16) -> bool:
    """Whether the file system holding ``path`` has (almost) no space left.

    SQLite reports a full disk at open time as "disk I/O error" (it cannot create its -shm file).
    """
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def compute_seconds(result: ExperimentResult | ScratchResult) -> float:
    """What a run cost when it was computed, from its stage timings (a cache hit costs nothing now).

    A transfer result's timings are disjoint stages (their sum); a from-scratch result's have a
    ``total`` (its stages overlap: ``epoch`` is a mean of ``train``).
    """
    if isinstance(result, ScratchResult):
        return float(result.timings.get("total", 0.0))
    return float(sum(result.timings.values()))


def record_run(
    result: ExperimentResult | ScratchResult,
    *,
    elapsed: float | None = None,
    store: ResultsStore | None = None,
) -> str | None:
    """Record a finished run: what the CLI and the dashboard call after :func:`pai_core.experiment.run`
    (or :func:`pai_core.scratch.run_scratch`: the store files each kind in its own table).

    A store problem never loses the run (its result stays in the result cache and a later record
    of the same spec replaces nothing else): it is reported as a warning, and None returned.

    Args:
        result: The finished run (a cache hit too: recording is idempotent, one row per spec).
        elapsed: Wall-clock seconds; default :func:`compute_seconds` (what it cost when it was
            computed).
        store: Where to record; default :class:`ResultsStore` () at :func:`default_path`.

    Returns:
        The row's key, or None when the store could not be written.
    """
    seconds = compute_seconds(result) if elapsed is None else elapsed
    try:
        return (store if store is not None else ResultsStore()).record(result, elapsed=seconds)
    except Exception as exc:  # a locked, corrupt or read-only file: warn, keep the run
        warnings.warn(f"result not recorded in the results store: {exc}", stacklevel=2)
        return None
