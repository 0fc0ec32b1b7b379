"""Fault catalogue, Ray: the documented cluster recipe works with the pinned Ray, and failures are one line.

docs/SWEEPS.md's steps, as written, against Ray 2.60 (which turns token authentication on): make a
token, start a head with ``RAY_AUTH_MODE=token ray start --head`` on 127.0.0.1, run a two-spec
sweep with ``--ray HOST:PORT`` from a driver that only has the token file, stop the head. A driver
without the token is refused in one line that says to copy it; a wrong address fails within seconds
(it hung for minutes); ``--ray auto`` with no cluster says how to start one.

The head runs in its own session with its own HOME (token) and temp folder, and is stopped by
signalling the process this test started (never ``ray stop``, which would stop other people's Ray).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pai_core import sweep as sweep_mod
from pai_core.errors import ClusterUnavailable
from pai_core.store import ResultsStore
from tests.faults import TRACEBACK, one_error_line, run_cli

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY = shutil.which("ray", path=str(Path(__file__).resolve().parent.parent / ".venv" / "bin")) or shutil.which(
    "ray"
)
SPECS = ["sweep", "--models", "test_resnet", "--sources", "0", "--scores", "magnitude", "--sparsities", "0.3,0.5",
         "--images-per-class", "3", "--no-progress"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- no cluster (run first:
# the head below is a cluster on this machine too)


@pytest.mark.parametrize("address", ["127.0.0.1:{closed}", "10.255.255.1:6379", "no-such-host.invalid:6379"])
def test_wrong_address_fails_within_seconds(address: str, tmp_path: Path) -> None:
    address = address.format(closed=_free_port())
    env = {**_clean_env(tmp_path), "PAI_CACHE_DIR": str(tmp_path / "cache")}
    # the timeout bounds the whole command: it used to hang for minutes
    done = run_cli(*SPECS, "--store", str(tmp_path / "r.sqlite"), "--ray", address, env=env, timeout=90)
    line = one_error_line(done.stderr)
    assert done.returncode == 2 and f"--ray {address}: " in line
    # nothing answers (refused, unreachable, unknown host), or something answers that is not this cluster
    assert "no Ray cluster answers at" in line or "could not join a Ray cluster" in line
    assert "ray start --head --port=" in line


def test_auto_without_a_cluster_says_how_to_start_one(monkeypatch) -> None:
    import ray

    def no_cluster(*a, **k):  # what ray.init(address="auto") raises when none runs here
        raise ConnectionError(
            "Could not find any running Ray instance. Please specify the one to connect to."
        )

    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(
        ClusterUnavailable, match="no running Ray cluster found on this machine.*ray start --head"
    ):
        sweep_mod.connect_ray("auto")


def _other_ray_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"gcs_server" in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def test_auto_without_a_cluster_for_real(tmp_path: Path) -> None:
    if not Path("/proc").is_dir() or _other_ray_running():
        pytest.skip("a Ray cluster runs on this machine (another job's): --ray auto would find it")
    env = {**_clean_env(tmp_path), "PAI_CACHE_DIR": str(tmp_path / "cache")}
    done = run_cli(*SPECS, "--store", str(tmp_path / "r.sqlite"), "--ray", "auto", env=env, timeout=120)
    line = one_error_line(done.stderr)
    assert done.returncode == 2 and "no running Ray cluster found" in line and "ray start --head" in line


# ----------------------------------------------------------------------------- a cluster started as documented


@pytest.fixture(scope="module")
def head():
    """A one-CPU Ray head on 127.0.0.1 with token authentication, started as docs/SWEEPS.md says."""
    if RAY is None:
        pytest.fail("the ray command is not installed (it is pinned in requirements.txt)")
    base = Path(tempfile.mkdtemp(prefix="pai-ray-", dir="/tmp"))  # short: Ray's socket paths are limited
    home = base / "home"
    home.mkdir()
    env = _clean_env(home)
    subprocess.run(
        [RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=120
    )
    assert (home / ".ray" / "auth_token").is_file()
    port = _free_port()
    log = base / "head.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
             "--node-ip-address=127.0.0.1", f"--temp-dir={base / 'r'}", "--block"],
            env={**env, "RAY_AUTH_MODE": "token"}, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"port": port, "home": home, "base": base}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the head's session: the processes this test started
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def test_documented_cluster_runs_two_specs(head, tmp_path: Path) -> None:
    db = tmp_path / "ray.sqlite"
    env = {**_clean_env(head["home"]), "PAI_CACHE_DIR": str(tmp_path / "cache")}
    address = f"127.0.0.1:{head['port']}"
    done = run_cli(*SPECS, "--store", str(db), "--ray", address, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert TRACEBACK not in done.stderr
    assert "2 specs: 0 already done, 2 run now, 0 failed" in done.stdout
    assert f"ray ({address}; 1 parallel, CPU)" in done.stdout
    on_ray = ResultsStore(db).frame().set_index("sparsity")
    assert len(on_ray) == 2
    # the same two specs in-process (same single thread): the same accuracies
    local_db = tmp_path / "local.sqlite"
    env_local = {**env, "PAI_CACHE_DIR": str(tmp_path / "cache-local")}
    assert run_cli(*SPECS, "--store", str(local_db), env=env_local).returncode == 0
    here = ResultsStore(local_db).frame().set_index("sparsity")
    for col in ("source_zero_shot", "transfer_zero_shot"):
        assert on_ray[col].to_dict() == here[col].to_dict()


def test_driver_without_the_token_is_refused_in_one_line(head, tmp_path: Path) -> None:
    stranger = tmp_path / "home"
    stranger.mkdir()
    env = {**_clean_env(stranger), "PAI_CACHE_DIR": str(tmp_path / "cache")}
    done = run_cli(*SPECS, "--store", str(tmp_path / "r.sqlite"), "--ray", f"127.0.0.1:{head['port']}",
                   env=env, timeout=300)  # fmt: skip
    line = one_error_line(done.stderr)
    assert done.returncode == 2
    assert "could not join a Ray cluster" in line and "copy the head's ~/.ray/auth_token" in line
    assert len(ResultsStore(tmp_path / "r.sqlite")) == 0
