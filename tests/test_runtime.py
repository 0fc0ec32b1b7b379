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
    assert runtime.resolve_threads(3) == 3
    assert runtime.resolve_threads(" 2 ") == 2
    assert runtime.resolve_threads("torch") is None
    assert runtime.resolve_threads("auto") == runtime.default_threads()
    monkeypatch.setenv(runtime.THREADS_ENV, "5")
    assert runtime.resolve_threads() == 5
    monkeypatch.setenv(runtime.THREADS_ENV, "")
    assert runtime.resolve_threads() == runtime.default_threads()


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt tuning is glibc's (Linux)")
def test_configure_in_a_fresh_process_sets_threads_interop_and_allocator():
    code = (
        "import json, resource, torch; from pai_core import runtime; "
        "info = runtime.configure(1); "
        # a 200 MB buffer freed and allocated again: with the tuned allocator the second one reuses
        # the heap's pages instead of a fresh mapping that is faulted in again page by page
        "torch.ones(50_000_000); r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
        "torch.ones(50_000_000); r1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; "
        "print(json.dumps([info.threads, info.interop_threads, info.allocator, torch.get_num_threads(), "
        "torch.get_num_interop_threads(), r1 - r0]))"
    )
    out = {}
    for mode in ("tuned", "default"):
        env = dict(os.environ, PAI_MALLOC=mode)
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    threads, interop, alloc, torch_threads, torch_interop, faults = out["tuned"]
    assert (threads, interop, alloc, torch_threads, torch_interop) == (1, 1, "tuned", 1, 1)
    assert out["default"][2] == "default"
    # 200 MB is ~48,800 pages of 4 KiB: faulted again without the tuning, (nearly) not with it.
    assert out["default"][5] > 40_000
    assert faults < out["default"][5] / 10


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
