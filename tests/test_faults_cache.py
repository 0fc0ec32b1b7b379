"""Fault catalogue, cache: entries are checked against their key; an unusable cache folder is one line.

Cases: a valid result file under another spec's name (was served: asked 80 %, got the 30 % result);
``$PAI_CACHE_DIR`` naming a file; a read-only cache (the lock file cannot be created); the disk
filling up while an entry is written (simulated with ENOSPC, and for real on a full tmpfs when root);
``make clean-cache``. Each asserts the message and that nothing already cached was lost or damaged.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import torch

from pai_core import cache, experiment, store
from pai_core.__main__ import main
from pai_core.experiment import ExperimentSpec
from tests.faults import REPO, fill, one_error_line, remount_readonly, tmpfs

SPEC = ExperimentSpec(model="test_resnet", score="magnitude", sparsity=0.3, images_per_class=3, image_size=32)
RUN = [
    "run",
    "--model",
    "test_resnet",
    "--score",
    "magnitude",
    "--images-per-class",
    "3",
    "--image-size",
    "32",
]


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    return tmp_path / "cache"


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (but lock files) → SHA-256: what 'nothing was lost' compares."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def test_a_result_under_another_specs_name_is_not_served(own_cache: Path) -> None:
    low, high = SPEC, SPEC.replace(sparsity=0.8)
    experiment.run(low)
    res_high = experiment.run(high)
    folder = own_cache / "results"
    # Put the 30 % file under the 80 % name: its checksum is valid, its key is not.
    shutil.copy(folder / f"{low.key()}.json", folder / f"{high.key()}.json")
    with pytest.raises(cache.CacheCorrupt, match="written for key"):
        cache.load_json(folder / f"{high.key()}.json")
    again = experiment.run(high)
    assert again.spec == high and again.spec.sparsity == 0.8 and not again.cached  # recomputed, not served
    assert [t.zero_shot for t in again.tasks] == [t.zero_shot for t in res_high.tasks]
    assert cache.load_json(folder / f"{high.key()}.json")["spec"]["sparsity"] == 0.8  # and the file repaired
    # The same for tensors: a masks file copied under another key is recomputed.
    masks_dir = own_cache / "masks"
    files = sorted(masks_dir.glob("*.safetensors"))
    assert len(files) == 2
    data = files[0].read_bytes()
    files[1].write_bytes(data)
    with pytest.raises(cache.CacheCorrupt, match="written for key"):
        cache.load_tensors(files[1])


def test_entries_without_a_key_are_not_trusted(own_cache: Path) -> None:
    path = own_cache / "x" / "results-abc.json"
    cache.save_json(path, {"v": 1})
    assert cache.load_json(path) == {"v": 1}
    renamed = path.with_name("results-def.json")
    path.rename(renamed)
    with pytest.raises(cache.CacheCorrupt, match="'results-abc', not for 'results-def'"):
        cache.load_json(renamed)


def test_cache_dir_that_is_a_file(tmp_path: Path, monkeypatch, capsys) -> None:
    bogus = tmp_path / "not-a-folder"
    bogus.write_text("precious")
    monkeypatch.setenv("PAI_CACHE_DIR", str(bogus))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    assert main(RUN) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"$PAI_CACHE_DIR) {bogus}: it is a file, not a folder" in line and "writable folder" in line
    assert bogus.read_text() == "precious"


def _warm(own_cache: Path) -> dict[str, str]:
    store.record_run(experiment.run(SPEC))  # as the CLI does after a run
    return _digest(own_cache)


def test_read_only_cache_simulated(own_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # The CLI records every run it prints (a cache hit too) into the results store: keep the store
    # outside the read-only cache, as on a real read-only cache (see the next test).
    monkeypatch.setenv("PAI_RESULTS_DB", str(tmp_path / "store" / "results.sqlite"))
    before = _warm(own_cache)
    real_open = open

    def read_only_open(path, *a, **k):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(cache, "open", read_only_open, raising=False)
    assert main([*RUN, "--sparsity", "0.3"]) == 0  # finished before: read from the cache
    capsys.readouterr()
    assert main([*RUN, "--sparsity", "0.5"]) == 2  # new work needs the lock
    line = one_error_line(capsys.readouterr().err)
    assert "cannot use the cache folder (lock file)" in line and "read-only" in line
    assert "$PAI_CACHE_DIR" in line
    assert _digest(own_cache) == before


def test_read_only_cache_for_real(tmp_path: Path, monkeypatch, capsys) -> None:
    with tmpfs("64m") as fs:
        monkeypatch.setenv("PAI_CACHE_DIR", str(fs / "cache"))
        # the store elsewhere, writable: this test is about the lock file
        monkeypatch.setenv("PAI_RESULTS_DB", str(tmp_path / "results.sqlite"))
        before = _warm(fs / "cache")
        remount_readonly(fs)
        assert main([*RUN, "--sparsity", "0.3"]) == 0
        assert "(cached)" in capsys.readouterr().out
        assert main([*RUN, "--sparsity", "0.5"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "the file system is read-only" in line and ".lock" in line
        assert _digest(fs / "cache") == before


def test_disk_full_while_writing_an_entry_simulated(own_cache: Path, monkeypatch, capsys) -> None:
    before = _warm(own_cache)

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "tempfile", types.SimpleNamespace(mkstemp=no_space))
    assert main([*RUN, "--sparsity", "0.5", "--score", "random"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "the disk is full" in line and "free some space" in line and str(own_cache) in line
    assert _digest(own_cache) == before  # nothing lost, no half file


def test_disk_full_while_writing_an_entry_for_real(tmp_path: Path, monkeypatch, capsys) -> None:
    with tmpfs("4m") as fs:
        monkeypatch.setenv("PAI_CACHE_DIR", str(fs / "cache"))
        monkeypatch.setenv(
            "PAI_RESULTS_DB", str(tmp_path / "results.sqlite")
        )  # the store on a disk with room
        before = _warm(fs / "cache")
        filler = fill(fs, leave_bytes=4096)
        rc = main([*RUN, "--sparsity", "0.5", "--score", "random"])
        line = one_error_line(capsys.readouterr().err)
        assert rc == 2 and "the disk is full" in line, line
        assert not [p for p in (fs / "cache").rglob("*.tmp")]  # no half-written entry left behind
        filler.unlink()
        assert _digest(fs / "cache") == before
        assert main([*RUN, "--sparsity", "0.5", "--score", "random"]) == 0  # space back: it runs


def test_cache_write_never_leaves_a_temporary_file_on_enospc(own_cache: Path, monkeypatch) -> None:
    def full_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "fsync", full_fsync)
    with pytest.raises(cache.CacheError, match="disk is full") as info:
        cache.save_tensors(own_cache / "k" / "features-1.safetensors", {"a": torch.ones(3)})
    assert info.value.reason == "full"
    assert not list((own_cache / "k").iterdir())


def test_make_clean_cache_honours_the_env_and_removes_the_store(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = tmp_path / "c"
    for kind in ("results", "masks"):
        (root / kind).mkdir(parents=True)
        (root / kind / "x").write_text("1")
    for name in ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm"):
        (root / name).write_text("db")
    elsewhere = tmp_path / "mine.sqlite"
    elsewhere.write_text("keep")
    env = {**os.environ, "PAI_CACHE_DIR": str(root), "PAI_RESULTS_DB": str(elsewhere)}
    done = subprocess.run(["make", "-s", "clean-cache"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert list(root.iterdir()) == [] and elsewhere.read_text() == "keep"
    env["PAI_CACHE_DIR"] = str(elsewhere)
    done = subprocess.run(["make", "-s", "clean-cache"], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "not a folder" in done.stderr and elsewhere.read_text() == "keep"
