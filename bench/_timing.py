"""The timing rules every benchmark here follows, in one place (the README's "Performance" section).

* **One thread** (``torch.set_num_threads(1)``, one inter-op thread) unless a script measures
  threads on purpose: then CPU time is the work done, whatever else runs on this shared machine.
* **CPU time** of this process (``time.process_time``: user + system, all its threads), or of a
  child process (``resource.getrusage(RUSAGE_CHILDREN)``) for end-to-end commands; wall time only
  where the work runs in other processes (Ray workers, a browser) and is then labelled as such.
* **The minimum over repeats**: other processes can only add time (cache misses, page reclaim),
  so the least of several runs is the least noisy estimate of the work itself.
* **Ratios in one run**: a unit (one forward+backward, one forward pass) is measured interleaved
  with what it divides, under the same conditions.

The process's allocator is tuned as the CLI tunes it (:mod:`pai_core.runtime`), so benchmarks
measure the project as it runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

T = TypeVar("T")

#: The clock of every in-process figure.
clock = time.process_time


def add_args(ap: argparse.ArgumentParser, repeats: int = 3) -> None:
    """Add ``--threads`` (default 1) and ``--repeats`` to a benchmark's parser."""
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: CPU time is the work)"
    )
    ap.add_argument(
        "--repeats", type=int, default=repeats, help="runs per measurement; the minimum is reported"
    )


def setup(threads: int = 1) -> str:
    """Apply the rules to this process: ``threads`` intra-op threads, one inter-op, tuned allocator.

    Returns:
        One line describing the conditions, for the benchmark's header.
    """
    from pai_core import runtime

    # Anything that configures the process again (the dashboard's first page, an in-process CLI
    # call) then keeps the benchmark's thread count.
    os.environ[runtime.THREADS_ENV] = str(threads)
    info = runtime.configure(threads)
    return (
        f"threads {info.threads} (inter-op {info.interop_threads}), allocator {info.allocator}; "
        f"CPU time (process_time), minimum over repeats; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )


def cpu(fn: Callable[[], T]) -> tuple[float, T]:
    """CPU seconds of one call of ``fn``, and its result."""
    t = clock()
    out = fn()
    return clock() - t, out


def best(fn: Callable[[], Any], repeats: int) -> float:
    """Least CPU seconds of ``repeats`` calls of ``fn``."""
    return min(cpu(fn)[0] for _ in range(max(1, repeats)))


def run_child(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, float]:
    """Run a command to completion; its CPU time, wall time, minor/major faults and peak memory.

    The figures are the child's own (``os.wait4``), its own children included only where they
    were waited for.

    Raises:
        RuntimeError: the command failed (its stderr's tail is in the message).
    """
    import tempfile

    with tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {tail}")
    return {
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "wall_s": wall,
        "minflt": float(ru.ru_minflt),
        "majflt": float(ru.ru_majflt),
        "maxrss_mb": ru.ru_maxrss / 1024,  # KiB on Linux
    }
