"""pai_core.runtime: thread settings that do not oversubscribe, the allocator tuning, the CLI flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pai_core import runtime
from pai_core.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def test_resolve_threads_reads_values_env_and_defaults(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.resolve_threads(3) == 3
    assert runtime.resolve_threads(" 2 ") == 2
    assert runtime.resolve_threads("torch") is None
    assert runtime.resolve_threads("auto") == runtime.default_threads()
    monkeypatch.setenv(runtime.THREADS_ENV, "5")
    assert runtime.resolve_threads() == 5
    monkeypatch.setenv(runtime.THREADS_ENV, "")
    assert runtime.resolve_threads() == runtime.default_threads()
    # An explicit OpenMP setting is PyTorch's to follow, unless PAI_THREADS says otherwise.
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert runtime.resolve_threads() is None
    monkeypatch.setenv(runtime.THREADS_ENV, "2")
    assert runtime.resolve_threads() == 2


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_bad_thread_settings_name_the_setting(monkeypatch, bad):
    with pytest.raises(ValueError, match="threads=.*positive number"):
        runtime.resolve_threads(bad)
    monkeypatch.setenv(runtime.THREADS_ENV, bad)
    with pytest.raises(ValueError, match=runtime.THREADS_ENV):
        runtime.resolve_threads()


def test_default_threads_never_exceed_what_the_process_may_use(monkeypatch):
    n = runtime.default_threads()
    assert 1 <= n <= min(runtime.physical_cores(), runtime.available_cpus())
    # A machine whose CPUs are all busy gets one thread, never zero.
    monkeypatch.setattr(runtime, "_busy_cpus", lambda: 10_000)
    assert runtime.default_threads() == 1
    monkeypatch.setattr(runtime, "_busy_cpus", lambda: 0)
    assert runtime.default_threads() == min(runtime.physical_cores(), runtime.available_cpus())


def test_physical_cores_count_distinct_cores(tmp_path, monkeypatch):
    assert 1 <= runtime.physical_cores() <= (os.cpu_count() or 1)


_PROBE = """
import json, resource, torch
from pai_core import runtime

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20

info = runtime.configure(1)
for _ in range(10):  # 200 MB buffers, each freed before the next (warm-up)
    torch.ones(50_000_000).sum()
f0 = faults()
for _ in range(10):
    torch.ones(50_000_000).sum()
steady = faults() - f0
# The pattern that defeats the reuse: a small object kept after every big buffer.
kept = [torch.ones(50_000_000).sum() for _ in range(5)]
grown = rss_mb()
released = runtime.release_memory()
print(json.dumps({"info": [info.threads, info.interop_threads, info.allocator],
                  "torch": [torch.get_num_threads(), torch.get_num_interop_threads()],
                  "steady": steady, "grown": grown, "released": released, "after": rss_mb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt tuning is glibc's (Linux)")
def test_configure_in_a_fresh_process_sets_threads_interop_and_allocator():
    out = {}
    for mode in ("tuned", "default"):
        env = dict(os.environ, PAI_MALLOC=mode)
        res = subprocess.run(
            [sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    tuned, default = out["tuned"], out["default"]
    assert tuned["info"] == [1, 1, "tuned"] and tuned["torch"] == [1, 1]
    assert default["info"][2] == "default" and default["released"] is False
    # 200 MB is ~48,800 pages of 4 KiB: glibc's default maps, faults in and unmaps every buffer;
    # tuned, once the heap has settled, buffers reuse pages already there.
    assert default["steady"] > 10 * 40_000
    assert tuned["steady"] < default["steady"] / 10
    # The defeating pattern leaves freed 200 MB holes in the heap; release_memory returns them.
    assert tuned["released"] is True
    assert tuned["after"] < tuned["grown"] - 150


def test_allocator_can_be_turned_off(monkeypatch):
    monkeypatch.setenv(runtime.MALLOC_ENV, "default")
    assert runtime.tune_allocator() == "default"
    assert runtime.tune_allocator(False) == "default"


def test_cli_threads_flag_before_or_after_the_command(capsys):
    assert main(["--threads", "1", "scores"]) == 0
    assert runtime.current().threads == 1
    assert main(["scores", "--threads", "torch"]) == 0
    assert runtime.current().threads is None


def test_cli_refuses_a_bad_thread_count_with_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--threads", "0"])
    assert exc.value.code == 2
    assert "--threads" in capsys.readouterr().err


def test_cli_reports_a_bad_environment_setting_as_a_setting(monkeypatch, capsys):
    monkeypatch.setenv(runtime.THREADS_ENV, "many")
    assert main(["scores"]) == 2
    err = capsys.readouterr().err
    assert runtime.THREADS_ENV in err and len(err.strip().splitlines()) == 1
