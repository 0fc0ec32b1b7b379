"""Helpers shared by the fault catalogue (``tests/test_faults_*.py``).

* :class:`Payload`: a pickle that runs a shell command when unpickled (``__reduce__`` → ``os.system``),
  as a hostile checkpoint or data file would; it only touches a marker file.
* :func:`tmpfs`: a real small (or read-only) file system, for "disk full" and "read-only" faults
  as the kernel reports them. Needs root; without it the test is skipped with that reason (each
  such fault also has a test that simulates the error, which always runs).
* :func:`run_cli`: ``python -m pai_core …`` in a subprocess, optionally under
  :func:`permissions_prefix` (permission bits mean nothing to root otherwise).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: A stack trace in the output means an error escaped the one-line handlers.
TRACEBACK = "Traceback (most recent call last)"


class Payload:
    """Unpickling this runs ``touch <marker>`` through ``os.system`` (what the issue reproduced)."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(size: str = "1m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on a fresh folder; unmounted (and removed) afterwards."""
    if not is_root() or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (the simulated variant of this fault runs anyway)")
    where = Path(tempfile.mkdtemp(prefix="pai-tmpfs-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the simulated variant runs anyway")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        with contextlib.suppress(OSError):
            where.rmdir()


def remount_readonly(where: Path) -> None:
    """Make a :func:`tmpfs` read-only (what a read-only file system reports, even to root)."""
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def fill(where: Path, leave_bytes: int) -> Path:
    """Fill the file system of ``where`` until about ``leave_bytes`` are free; return the filler file."""
    filler = where / "filler"
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))
    return filler


def permissions_prefix() -> list[str] | None:
    """A command prefix under which file permissions apply (None when that cannot be arranged).

    Root ignores permission bits through two capabilities; ``setpriv`` drops them from the command
    it starts, so root then meets a ``chmod 000`` file like any owner would.
    """
    if not is_root():
        return []
    if shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m pai_core *args`` from the repository (after ``prefix``); output captured as text."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("PAI_DEBUG", None)
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "pai_core", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(text: str) -> str:
    """The single ``error: …`` line of a failed command (asserting there is exactly one, and no traceback)."""
    assert TRACEBACK not in text, text
    lines = [line for line in text.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, text
    return lines[0]


def page_script(word: str) -> Path:
    """The dashboard page whose file name contains ``word`` (wherever the pages folder is)."""
    hits = sorted(p for p in REPO.glob(f"*/*{word}*.py") if p.parts[-2] not in (".venv", "tests", "bench"))
    assert hits, f"no page script matching {word!r}"
    return hits[0]
