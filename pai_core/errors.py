"""User-facing errors, and one place that turns any exception into one clear line.

Expected failures are the user's situation, not bugs: weights that cannot be had here
(:class:`ModelUnavailable`), data that is missing or unusable (:class:`DataError`), bad settings
(``ValueError``), a file or folder that cannot be used (:class:`StorageError`: the cache, the
results store, an output file; disk full, read-only, corrupt), memory that runs out.
:func:`describe` maps any exception to a :class:`Problem` (kind, one-line message, what to do);
the CLI prints :meth:`Problem.line` and exits non-zero, the dashboard shows the same text.
Anything else is a bug: it gets a short id, its traceback goes to the log, and only a debug
setting (``PAI_DEBUG=1``) shows the traceback to the user.

This module imports neither torch nor streamlit, so any layer can use it.

Example:
    >>> describe(ValueError("sparsity must be in [0, 1)")).line()
    'error: sparsity must be in [0, 1)'
    >>> describe(OSError(28, "No space left on device", "/data/cache/x.json")).kind
    'storage'
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import sqlite3
import traceback
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ModelUnavailable",
    "UnsafeCheckpoint",
    "DataError",
    "StorageError",
    "StoreError",
    "CacheError",
    "ClusterUnavailable",
    "Problem",
    "describe",
    "storage_error",
    "is_storage_error",
    "is_memory_error",
    "debug_enabled",
    "scrub_paths",
    "traceback_text",
    "write_bug_report",
    "MEMORY_HINT",
]

# ----------------------------------------------------------------------------- error classes


class ModelUnavailable(RuntimeError):
    """The model's weights cannot be obtained here (offline, missing package or file)."""


class UnsafeCheckpoint(ModelUnavailable):
    """A checkpoint that only loads by running code stored in it (arbitrary unpickling): refused."""


class DataError(ValueError):
    """The data a suite needs is missing or unusable; the message says what to do."""


class StorageError(RuntimeError):
    """A file or folder the program reads or writes cannot be used.

    Attributes:
        path: The file or folder, when known.
        reason: ``"full"``, ``"read-only"``, ``"permission"``, ``"corrupt"``, ``"not-a-file"``,
            ``"not-a-folder"``, ``"missing"``, ``"busy"`` or ``"io"``.
        hint: What to do about it (one sentence), shown after the message.
    """

    def __init__(
        self, message: str, *, path: str | os.PathLike | None = None, reason: str = "io", hint: str = ""
    ):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.reason = reason
        self.hint = hint


class StoreError(StorageError):
    """The results store (SQLite) cannot be opened, read or written."""


class CacheError(StorageError):
    """The cache folder (``$PAI_CACHE_DIR``) cannot be used."""


class ClusterUnavailable(RuntimeError):
    """No Ray cluster answers at the address asked for (or it refuses this driver)."""


# ----------------------------------------------------------------------------- classification

#: What to lower when memory runs out (CLI flags; the dashboard has the same settings).
MEMORY_HINT = (
    "lower the images per class (--images-per-class), the input size (--image-size) or the number of "
    "probes of a stochastic score, choose a smaller model, or run on the other device (--device cpu/cuda)"
)

_MEMORY_TEXT = ("out of memory", "not enough memory", "cannot allocate memory", "can't allocate memory")

_REASONS = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EFBIG: "full",
    errno.EROFS: "read-only",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.EISDIR: "not-a-file",
    errno.ENOTDIR: "not-a-folder",
    errno.EEXIST: "not-a-folder",
    errno.ENOENT: "missing",
}

_REASON_TEXT = {
    "full": "the disk is full",
    "read-only": "the file system is read-only",
    "permission": "permission denied",
    "not-a-file": "it is a folder, not a file",
    "not-a-folder": "a file stands where a folder is needed",
    "missing": "no such file or folder",
}


def is_memory_error(exc: BaseException) -> bool:
    """CPU or GPU allocation failure (``MemoryError``, ``torch.OutOfMemoryError``, allocator messages)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _MEMORY_TEXT)


def is_storage_error(exc: BaseException) -> bool:
    """A problem with the disk or a file rather than with one experiment (stops a sweep)."""
    if isinstance(exc, StorageError | sqlite3.Error):
        return True
    return isinstance(exc, OSError) and getattr(exc, "errno", None) in (
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
    )


def storage_error(
    exc: OSError,
    what: str,
    path: str | os.PathLike | None = None,
    *,
    cls: type[StorageError] = StorageError,
    hint: str | None = None,
) -> StorageError:
    """An ``OSError`` as a :class:`StorageError` whose message names the file and the reason.

    Args:
        exc: The error from the operating system.
        what: What the file is, for the message ("cache entry", "results store", "output file").
        path: The file; default ``exc.filename``.
        cls: Which :class:`StorageError` subclass to build.
        hint: What to do; default one that fits the reason.
    """
    path = path if path is not None else getattr(exc, "filename", None)
    reason = _REASONS.get(getattr(exc, "errno", None) or -1, "io")
    text = _REASON_TEXT.get(reason) or (exc.strerror or str(exc))
    if hint is None:
        hint = {
            "full": "free some space (or point the folder at a bigger disk) and run the same command again",
            "read-only": "use a writable folder",
            "permission": "fix the permissions or use a folder you can write",
        }.get(reason, "")
    return cls(f"cannot use {what} {path}: {text}", path=path, reason=reason, hint=hint)


# ----------------------------------------------------------------------------- describing


@dataclass(frozen=True)
class Problem:
    """What went wrong, in words a user can act on.

    Attributes:
        kind: ``"model"``, ``"data"``, ``"settings"``, ``"storage"``, ``"memory"``, ``"cluster"``,
            ``"interrupted"`` or ``"bug"``.
        message: One line; for bugs, paths are shortened to their last component.
        hint: What to do (may be empty).
        type: The exception's class name.
        error_id: Short id of an unexpected error (also written to the log with its traceback).
    """

    kind: str
    message: str
    hint: str = ""
    type: str = ""
    error_id: str | None = None

    @property
    def expected(self) -> bool:
        """True for the user's situation (say what to do), False for a bug (give an id)."""
        return self.kind != "bug"

    def line(self) -> str:
        """The problem as one line (``error: …``), as the CLI prints it."""
        text = " ".join(self.message.split())  # one line, whatever the message held
        if self.hint and self.hint not in text:
            text = f"{text.rstrip('.')}; {self.hint}"
        if self.error_id:
            text += f" [error id {self.error_id}]"
        return f"error: {text}"


def debug_enabled() -> bool:
    """Whether ``$PAI_DEBUG`` asks for tracebacks to be shown (CLI and dashboard)."""
    return os.environ.get("PAI_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


_PATH = re.compile(r"(?<![\w.])(?:/[^\s/'\":,()\[\]]+)+/([^\s/'\":,()\[\]]+)")


def scrub_paths(text: str) -> str:
    """Shorten absolute paths to ``…/name`` (messages of unexpected errors never show server paths)."""
    return _PATH.sub(r"…/\1", text)


def _cause(exc: BaseException) -> BaseException:
    # Ray wraps a task's exception in RayTaskError(…) whose ``cause`` is the original.
    if type(exc).__name__.startswith("RayTaskError") and isinstance(
        getattr(exc, "cause", None), BaseException
    ):
        return exc.cause
    return exc


def describe(exc: BaseException) -> Problem:
    """Classify an exception and say it in one line (see the module docstring).

    Unexpected exceptions (kind ``"bug"``) get an ``error_id``; the caller puts the traceback where
    its user cannot see server paths but a maintainer can find it by that id (the CLI: a file,
    :func:`write_bug_report`; the dashboard: the server log).
    """
    exc = _cause(exc)
    name = type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return Problem(
            "interrupted", "interrupted: finished stages stay cached; run again to resume", type=name
        )
    if isinstance(exc, ModelUnavailable):
        return Problem("model", str(exc), type=name)
    if isinstance(exc, DataError):
        return Problem("data", str(exc), type=name)
    if isinstance(exc, StorageError):
        return Problem("storage", str(exc), exc.hint, type=name)
    if isinstance(exc, ClusterUnavailable):
        return Problem("cluster", str(exc), type=name)
    if is_memory_error(exc):
        first = (str(exc).strip().splitlines() or [name])[0]
        return Problem("memory", f"out of memory ({scrub_paths(first)[:200]})", MEMORY_HINT, type=name)
    if isinstance(exc, sqlite3.Error):
        return Problem(
            "storage", f"results store: {exc}", "check the file named by --store / $PAI_RESULTS_DB", type=name
        )
    if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None:
        err = storage_error(exc, "file", getattr(exc, "filename", None))
        return Problem("storage", str(err), err.hint, type=name)
    if isinstance(exc, ValueError):
        return Problem("settings", str(exc), type=name)
    error_id = secrets.token_hex(4)
    first = (str(exc).strip().splitlines() or [""])[0]
    return Problem(
        "bug",
        f"unexpected {name}: {scrub_paths(first)[:300]}".rstrip(": "),
        "this is a bug; please report it with the error id",
        type=name,
        error_id=error_id,
    )


def traceback_text(exc: BaseException) -> str:
    """The full traceback of ``exc`` (for logs and the debug view)."""
    return "".join(traceback.format_exception(exc))


def write_bug_report(exc: BaseException, problem: Problem) -> Path | None:
    """Write the traceback of an unexpected error to a private file; return its path (None if that failed)."""
    import tempfile

    folder = Path(tempfile.gettempdir()) / "pai_core-errors"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{problem.error_id}.txt"
        path.write_text(traceback_text(exc))
        return path
    except OSError:
        return None
