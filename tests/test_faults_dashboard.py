"""Fault catalogue, dashboard: localhost only, no raw traceback, a broken store is explained.

The server listened on every interface; it now binds 127.0.0.1 unless told otherwise. An unexpected
exception shows one line and a short id (the traceback goes to the server log, and into the page
only with ``PAI_DEBUG=1``), never server paths. The Results page survives a corrupt store and still
lists the runs whose result files are in the cache.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from pai_core import experiment
from pai_core.experiment import ExperimentSpec
from tests.faults import REPO, page_script

TIMEOUT = 300


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    monkeypatch.delenv("PAI_DEBUG", raising=False)
    return tmp_path / "cache"


def _errors(at: AppTest) -> str:
    return " ".join(e.value for e in at.error)


def _run_prune(at: AppTest) -> None:
    next(b for b in at.button if b.label == "Run").click().run(timeout=TIMEOUT)


# ----------------------------------------------------------------------------- listening address


def test_config_binds_localhost_and_hides_unhandled_details() -> None:
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["client"]["showErrorDetails"] == "none"
    readme = (REPO / "README.md").read_text()
    assert "make app ADDRESS=0.0.0.0" in readme and "--server.address" in readme


def test_make_app_exposes_only_when_asked() -> None:
    def dry(*extra: str) -> str:
        return subprocess.run(["make", "-n", "app", *extra], cwd=REPO, capture_output=True, text=True).stdout

    assert "--server.address" not in dry()
    assert "--server.address 0.0.0.0" in dry("ADDRESS=0.0.0.0")


def _listening(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = []
    for name, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                if width == 8:
                    found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.append(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.mark.slow
def test_the_server_listens_on_localhost_only(tmp_path: Path) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp to read listening sockets from")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PAI_CACHE_DIR": str(tmp_path / "cache"),
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    log = tmp_path / "streamlit.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.fileWatcherType", "none"],
            cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        assert _listening(port) == ["127.0.0.1"]
        assert "Network URL" not in log.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- errors in pages


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log():
    handler = _Collect()
    logger = logging.getLogger("pai_explorer.dashboard")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _raise(exc: BaseException):
    def run(*a, **k):
        raise exc

    return run


def test_unexpected_error_is_one_line_with_an_id(monkeypatch, server_log) -> None:
    monkeypatch.setattr(experiment, "run", _raise(KeyError("/srv/private/models/x.bin")))
    at = AppTest.from_file(str(page_script("Prune")), default_timeout=TIMEOUT)
    at.run()
    _run_prune(at)
    assert not at.exception, at.exception
    text = _errors(at)
    error_id = at.session_state["prune_error"]["error_id"]
    assert f"Unexpected error (error id `{error_id}`)" in text and "x.bin" in text
    assert "/srv/private" not in text and "Traceback" not in text
    assert not at.code and not [e for e in at.expander if "Details" in e.label]
    # the server log has the id and the full traceback
    rec = next(r for r in server_log.records if error_id in r.getMessage())
    assert rec.exc_info and rec.exc_info[0] is KeyError


def test_debug_setting_shows_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("PAI_DEBUG", "1")
    monkeypatch.setattr(experiment, "run", _raise(KeyError("boom")))
    at = AppTest.from_file(str(page_script("Prune")), default_timeout=TIMEOUT)
    at.run()
    _run_prune(at)
    assert not at.exception
    assert any("Traceback" in c.value for c in at.code)


@pytest.mark.parametrize(
    "exc,words",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4 GiB"), "Out of memory"),
        (
            RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 bytes"),
            "Out of memory",
        ),
        (OSError(28, "No space left on device", "/x/cache/f.json"), "A file or folder cannot be used"),
    ],
    ids=["gpu-oom", "cpu-oom", "disk-full"],
)
def test_expected_failures_say_what_to_do(exc: BaseException, words: str, monkeypatch) -> None:
    monkeypatch.setattr(experiment, "run", _raise(exc))
    at = AppTest.from_file(str(page_script("Prune")), default_timeout=TIMEOUT)
    at.run()
    _run_prune(at)
    assert not at.exception
    text = _errors(at)
    assert words in text and "Unexpected" not in text


def test_results_page_survives_a_corrupt_store(own_cache: Path) -> None:
    spec = ExperimentSpec(
        model="test_resnet", score="magnitude", sparsity=0.3, images_per_class=3, image_size=32
    )
    experiment.run(spec)  # leaves its result file in the cache (and a row in the store)
    db = own_cache / "results.sqlite"
    junk = b"garbage, not SQLite" * 100
    db.write_bytes(junk)
    for extra in ("-wal", "-shm"):
        Path(str(db) + extra).unlink(missing_ok=True)
    at = AppTest.from_file(str(page_script("Results")), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    text = _errors(at)
    assert "the file is damaged or not a results store" in text and f"mv {db} {db}.broken" in text
    assert any("result files" in c.value for c in at.caption)
    assert len(at.dataframe) >= 1 and len(at.dataframe[0].value) == 1  # the run is still listed
    assert db.read_bytes() == junk


def test_overview_survives_a_cache_dir_that_is_a_file(tmp_path: Path, monkeypatch) -> None:
    bogus = tmp_path / "cachefile"
    bogus.write_text("x")
    monkeypatch.setenv("PAI_CACHE_DIR", str(bogus))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert "it is a file, not a folder" in _errors(at)
