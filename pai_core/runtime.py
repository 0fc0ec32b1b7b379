"""Process settings for CPU work: threads that do not oversubscribe, an allocator that keeps big buffers.

Two things wasted most of the CPU of an end-to-end run (issue 15):

* **Threads.** PyTorch starts one intra-op thread per logical CPU whatever else runs on the
  machine. On a shared machine those threads wait on each other at every parallel region (OpenMP
  barriers spin), so under load the default made the CLI several times slower than one thread.
  :func:`default_threads` is ``min(physical cores, CPUs this process may run on, CPUs not busy at
  start)``, at least 1, with one inter-op thread (this package never runs independent ops
  concurrently). ``--threads N`` (CLI), ``PAI_THREADS=N`` (environment, also read by sweep workers
  and the dashboard) override it; ``PAI_THREADS=torch`` leaves PyTorch's own default.
* **Page faults.** glibc serves every allocation above its mmap threshold (128 KiB, growing to at
  most 32 MiB) with a fresh ``mmap`` and unmaps it on free, so a 100 MB feature batch is faulted in
  page by page (25,000 minor faults) again every batch, and freed heap tops above 128 KiB go back
  to the kernel the same way. :func:`tune_allocator` raises the mmap threshold to 512 MiB and the
  trim threshold to 1 GiB with ``mallopt(3)`` (the ``MALLOC_MMAP_THRESHOLD_`` /
  ``MALLOC_TRIM_THRESHOLD_`` settings, but effective after start-up), so freed batches are reused
  from the heap. Cost: freed memory up to the trim threshold stays in the process, and PyTorch's
  64-byte-aligned requests do not fit a freed hole of exactly their own size, so the heap can grow
  by a few batch-sized buffers before such holes merge (a few re-faults, a larger resident set:
  +0.1 GB on the default CLI run; ``bench/bench_runtime.py`` reports both). A loop that keeps a
  small object allocated after every big buffer defeats the reuse and grows the heap by a buffer
  per iteration; :func:`release_memory` (called after every experiment run) returns such holes
  to the kernel. glibc only; on macOS, Windows or musl
  it does nothing and says so. ``PAI_MALLOC=default`` turns it off.

This module imports no torch at import time: the CLI, the dashboard (``app.py``) and sweep workers
call :func:`configure` first, before the work starts.

Example:
    >>> resolve_threads("3")
    3
    >>> resolve_threads("torch") is None
    True
    >>> default_threads() >= 1
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import sys

THREADS_ENV = "PAI_THREADS"
MALLOC_ENV = "PAI_MALLOC"

#: glibc's ``mallopt`` parameter numbers (``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Allocations at or above this size still get their own mapping (one chunk this size is rare).
MMAP_THRESHOLD = 512 * 1024 * 1024
#: Free memory at the top of the heap is returned to the kernel only above this size.
TRIM_THRESHOLD = 1024 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """What :func:`configure` set: shown by the CLI's ``--verbose`` paths and recorded by benchmarks.

    Attributes:
        threads: intra-op threads in use (``None``: PyTorch's default, not set by us).
        interop_threads: inter-op threads in use (``None``: not set by us).
        allocator: ``"tuned"`` (mallopt applied), ``"default"`` (turned off) or why not applied.
    """

    threads: int | None
    interop_threads: int | None
    allocator: str


_state: dict[str, object] = {"allocator": None, "info": None}


def physical_cores() -> int:
    """Physical cores on this machine (distinct ``(physical id, core id)`` pairs of /proc/cpuinfo).

    Returns:
        The count, or ``os.cpu_count()`` where /proc/cpuinfo says nothing usable (non-Linux).
    """
    pairs: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            phys = ""
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    pairs.add((phys, value))
    except OSError:
        pass
    return len(pairs) or os.cpu_count() or 1


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: cgroups and ``taskset`` included)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _busy_cpus() -> int:
    """CPUs kept busy by other processes: the 1-minute load average, rounded down (0 if unknown)."""
    try:
        return int(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def default_threads() -> int:
    """Intra-op threads that do not oversubscribe: ``min(physical, affinity, affinity - busy)``, at least 1.

    Hyper-threads share a core's arithmetic units, so more threads than physical cores gain
    little; CPUs outside the affinity mask cannot be used; CPUs that other processes keep busy
    (the load average when this process starts) would make every parallel region wait.
    """
    cpus = min(physical_cores(), available_cpus())
    return max(1, min(cpus, available_cpus() - _busy_cpus()))


def resolve_threads(value: int | str | None = None) -> int | None:
    """The thread count to use: ``value``, else ``$PAI_THREADS``, else :func:`default_threads`.

    Args:
        value: a positive int (or its text), ``"auto"`` for the default, ``"torch"`` for
            PyTorch's own choice, or ``None`` to read ``$PAI_THREADS`` (unset: PyTorch's choice
            when ``$OMP_NUM_THREADS`` is set, which PyTorch follows; else the default).

    Returns:
        The count, or ``None`` for PyTorch's default.

    Raises:
        ValueError: ``value`` (or ``$PAI_THREADS``) is not one of those; the message names it.
    """
    where = "threads"
    if value is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        where = THREADS_ENV
        if not value and os.environ.get("OMP_NUM_THREADS", "").strip():
            return None  # an explicit OpenMP setting (yours, or Ray's for its tasks) is left alone
        value = value or "auto"
    text = str(value).strip().lower()
    if text == "auto":
        return default_threads()
    if text == "torch":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{where}={value!r}: write a positive number of threads, 'auto' or 'torch'")
    return n


def tune_allocator(enable: bool | None = None) -> str:
    """Keep big freed buffers in glibc's heap instead of unmapping them (see the module docstring).

    Safe to call more than once and at any time (it changes where *later* allocations come from).

    Args:
        enable: ``False`` leaves the allocator alone; ``None`` reads ``$PAI_MALLOC``
            (``default`` turns the tuning off, anything else or unset turns it on).

    Returns:
        ``"tuned"``, ``"default"``, or the reason nothing was changed (not glibc, mallopt refused).
    """
    if enable is None:
        enable = os.environ.get(MALLOC_ENV, "tuned").strip().lower() not in {"default", "off", "0", "no"}
    if not enable:
        return "default"
    if _state["allocator"] == "tuned":
        return "tuned"
    if not sys.platform.startswith("linux"):
        return f"default (mallopt is glibc's; not on {sys.platform})"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - present on glibc only (musl has mallopt as a no-op)
    except (OSError, AttributeError):
        return "default (not glibc)"
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _state["allocator"] = "tuned" if ok else "default (mallopt refused the thresholds)"
    return str(_state["allocator"])


def release_memory() -> bool:
    """Give the free pages inside glibc's heap back to the kernel (``malloc_trim(0)``) when tuned.

    The tuning keeps freed buffers for reuse; in a long-lived process (the dashboard, a sweep)
    that memory would otherwise stay with it from one run to the next. ``experiment.run`` calls
    this after every run (not between its stages: re-faulting each stage's buffers cost 1 M
    faults and ~13 % of the CPU of the default CLI run, for no lower peak).

    Returns:
        Whether anything was released (False when the allocator is not tuned, or not glibc).
    """
    if _state["allocator"] != "tuned":
        return False
    try:
        return bool(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def configure(threads: int | str | None = None, *, allocator: bool | None = None) -> RuntimeInfo:
    """Apply the thread count and allocator settings to this process (imports torch).

    Call it early: the inter-op pool can only be sized before PyTorch first uses it (a later call
    leaves it as it is and reports its size).

    Args:
        threads: see :func:`resolve_threads` (``None``: ``$PAI_THREADS`` or the default).
        allocator: see :func:`tune_allocator`.

    Returns:
        What was set.

    Raises:
        ValueError: a thread setting that is not a positive number, ``auto`` or ``torch``.
    """
    n = resolve_threads(threads)
    alloc = tune_allocator(allocator)
    import torch

    interop: int | None = None
    if n is not None:
        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # set before, or the inter-op pool already started: keep it
            pass
        interop = torch.get_num_interop_threads()
    info = RuntimeInfo(threads=n, interop_threads=interop, allocator=alloc)
    _state["info"] = info
    return info


def current() -> RuntimeInfo | None:
    """The settings of the last :func:`configure` call in this process (``None`` before)."""
    info = _state["info"]
    return info if isinstance(info, RuntimeInfo) else None
