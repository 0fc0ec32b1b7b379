"""Results store: one SQLite row per finished experiment, shared by sweeps, the CLI and the dashboard.

The callers of :func:`pai_core.experiment.run` record what it returns: the CLI and
the dashboard through :func:`record_run`, sweeps into their own store as results
come back from workers.  The store is the one source of truth for finished runs
(the dashboard's Results page reads nothing else).  It answers
"what is done?" (:meth:`ResultsStore.done_keys`, so a re-run skips it) and "what
came out?" (:meth:`ResultsStore.frame` for tables and figures,
:meth:`ResultsStore.results` for full :class:`~pai_core.results.ExperimentResult`
objects).  It imports no torch.

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

__all__ = [
    "STORE_VERSION",
    "SUMMARY_COLUMNS",
    "ResultsStore",
    "StoreError",
    "default_path",
    "record_run",
]

#: Bump when the table layout changes; an older file is migrated by re-creating its tables.
STORE_VERSION = 1

#: Spec fields copied into their own columns, so the file is queryable with plain ``sqlite3`` too.
_SPEC_COLUMNS = ("model", "suite", "source", "score", "sparsity", "finetune", "seed", "images_per_class")

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
    failed_at TEXT NOT NULL
);
"""

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


def _spec_dict(spec: ExperimentSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


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
            if version not in (0, STORE_VERSION):
                raise self._fail(
                    "corrupt",
                    f"its layout {version} is not {STORE_VERSION}, and it is read-only here",
                    "open it once where it is writable (it is migrated then), or use another --store",
                )
            return

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
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
            if version not in (0, STORE_VERSION):
                # Rows of an older layout are only an index of the result cache: drop them;
                # a sweep re-run re-records every finished spec from cache hits in seconds.
                warnings.warn(
                    f"{self.path}: results store layout {version} is older than {STORE_VERSION}; "
                    "starting a fresh table (re-run sweeps to refill it from the cache)",
                    stacklevel=3,
                )
                con.execute("DROP TABLE IF EXISTS results")
                con.execute("DROP TABLE IF EXISTS failures")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.execute(f"PRAGMA user_version = {STORE_VERSION}")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    # -- writing ------------------------------------------------------------------------
    def record(self, result: ExperimentResult, *, elapsed: float, host: str | None = None) -> str:
        """Write (or replace) the row of a finished spec, in one transaction.

        Args:
            result: What :func:`pai_core.experiment.run` returned.
            elapsed: Wall-clock seconds the run took where it ran (for ETAs and GPU-hour estimates).
            host: Machine that ran it; default this one.

        Returns:
            The row's key (``result.spec.key()``).
        """
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

    def record_failure(
        self, spec: ExperimentSpec, error: BaseException | str, *, host: str | None = None
    ) -> None:
        """Note that a spec failed (kept until it succeeds; counts attempts).

        Args:
            spec: The spec that failed.
            error: The exception (its traceback is kept) or a message.
            host: Machine it failed on; default this one.
        """
        if isinstance(error, BaseException):
            msg = f"{type(error).__name__}: {error}"
            tb = "".join(traceback.format_exception(error))
        else:
            msg, tb = str(error), None
        values = (spec.key(), _dumps(_spec_dict(spec)), msg, tb, host or socket.gethostname(), _now())
        self._retrying(
            lambda con: con.execute(
                "INSERT INTO failures (key, spec_json, error, traceback, attempts, host, failed_at) "
                "VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT(key) DO UPDATE SET error = excluded.error, "
                "traceback = excluded.traceback, attempts = attempts + 1, host = excluded.host, "
                "failed_at = excluded.failed_at",
                values,
            ),
            write=True,
        )

    def delete(self, keys: Sequence[str]) -> int:
        """Forget rows (e.g. to force a re-run). Returns how many were removed."""
        return self._retrying(
            lambda con: con.executemany("DELETE FROM results WHERE key = ?", [(k,) for k in keys]).rowcount,
            write=True,
        )

    # -- reading ------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        """Keys (``spec.key()``) of every finished spec."""
        with self._connect() as con:
            return {k for (k,) in con.execute("SELECT key FROM results")}

    def is_done(self, key: str) -> bool:
        """Whether the spec with this key has a row (one indexed lookup)."""
        with self._connect() as con:
            return con.execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        with self._connect() as con:
            return con.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def frame(self, **filters: Any) -> pd.DataFrame:
        """One row per finished spec, optionally filtered.

        Args:
            **filters: ``column=value`` or ``column=[values]`` on any column of the frame, e.g.
                ``model="resnet50", score=["magnitude", "kfac"], finetune=None``.

        Returns:
            Columns: ``key``, every :class:`ExperimentSpec` field, the six means of
            :data:`SUMMARY_COLUMNS`, ``tasks`` (JSON list of per-task accuracies), ``timings``
            (JSON), ``elapsed`` (s), ``device``, ``schedule``, ``host``, ``finished_at``; sorted by
            model, suite, score, sparsity, source, seed.

        Raises:
            ValueError: A filter names no column (the message lists them).
        """
        with self._connect() as con:
            rows = con.execute(
                f"SELECT key, spec_json, {', '.join(SUMMARY_COLUMNS)}, tasks_json, timings_json, elapsed, "
                "device, schedule, host, finished_at FROM results"
            ).fetchall()
        records = []
        for key, spec_json, *rest in rows:
            spec = json.loads(spec_json)
            spec["score_options"] = _dumps(spec.get("score_options", []))  # hashable, filterable
            means = dict(zip(SUMMARY_COLUMNS, rest[: len(SUMMARY_COLUMNS)]))
            tasks_json, timings_json, elapsed, device, schedule, host, finished_at = rest[
                len(SUMMARY_COLUMNS) :
            ]
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
        df = pd.DataFrame.from_records(records, columns=self._columns())
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

    def failures(self) -> pd.DataFrame:
        """Specs that failed and have not succeeded since: key, spec fields, error, attempts, host, failed_at."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT key, spec_json, error, traceback, attempts, host, failed_at FROM failures "
                "ORDER BY failed_at"
            ).fetchall()
        records = [
            {
                "key": k,
                **{c: json.loads(s).get(c) for c in _SPEC_COLUMNS},
                "error": e,
                "traceback": tb,
                "attempts": a,
                "host": h,
                "failed_at": t,
            }
            for k, s, e, tb, a, h, t in rows
        ]
        return pd.DataFrame.from_records(
            records, columns=["key", *_SPEC_COLUMNS, "error", "traceback", "attempts", "host", "failed_at"]
        )


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


def record_run(
    result: ExperimentResult, *, elapsed: float | None = None, store: ResultsStore | None = None
) -> str | None:
    """Record a finished run: what the CLI and the dashboard call after :func:`pai_core.experiment.run`.

    A store problem never loses the run (its result stays in the result cache and a later record
    of the same spec replaces nothing else): it is reported as a warning, and None returned.

    Args:
        result: The finished run (a cache hit too: recording is idempotent, one row per spec).
        elapsed: Wall-clock seconds; default the sum of the result's stage timings (what it cost
            when it was computed).
        store: Where to record; default :class:`ResultsStore` () at :func:`default_path`.

    Returns:
        The row's key, or None when the store could not be written.
    """
    seconds = sum(result.timings.values()) if elapsed is None else elapsed
    try:
        return (store if store is not None else ResultsStore()).record(result, elapsed=seconds)
    except Exception as exc:  # a locked, corrupt or read-only file: warn, keep the run
        warnings.warn(f"result not recorded in the results store: {exc}", stacklevel=2)
        return None
