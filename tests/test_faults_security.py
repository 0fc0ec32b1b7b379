"""Fault catalogue, security: no file the user hands us runs code when read.

A pickle payload (``__reduce__`` → ``os.system("touch MARKER")``) is planted in every path that
reads a user's file: ``--checkpoint``, ``$PAI_CHECKPOINT_DIR/<model>.pth``, a sweep file's
``checkpoints:``, the dashboard's checkpoint field, and CIFAR-100's pickled data. Each test asserts
that the marker never appears and that the message says why the file was refused (and, for
checkpoints, how to convert a trusted one). The first test shows the payload is live: an
unrestricted load does run it.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from pai_core import models, tasks
from pai_core.__main__ import main
from tests.faults import REPO, TRACEBACK, Payload, one_error_line, page_script


def _resnet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("resnet50", pretrained=False).state_dict()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


@pytest.fixture
def hostile_checkpoint(tmp_path: Path, marker: Path) -> Path:
    """A real resnet50 state dict with a payload next to the tensors, saved by torch.save."""
    path = tmp_path / "resnet50.pth"
    torch.save({**_resnet_state(), "zzz": Payload(marker)}, path)
    return path


def _refused(text: str, marker: Path) -> None:
    assert not marker.exists(), "the payload ran"
    assert "refused to load checkpoint" in text and "posix.system" in text, text
    assert "safetensors" in text  # how to convert a trusted file
    assert TRACEBACK not in text


def test_the_payload_is_live(hostile_checkpoint: Path, marker: Path) -> None:
    """Guard for every test below: an unrestricted load does run it (so 'no marker' means something)."""
    torch.load(hostile_checkpoint, weights_only=False)
    assert marker.exists()


def test_cli_checkpoint_flag(hostile_checkpoint: Path, marker: Path, capsys) -> None:
    rc = main(["evaluate", "--model", "resnet50", "--checkpoint", str(hostile_checkpoint)])
    err = capsys.readouterr().err
    assert rc == 2
    _refused(one_error_line(err), marker)
    assert str(hostile_checkpoint) in err


def test_checkpoint_folder(hostile_checkpoint: Path, marker: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PAI_CHECKPOINT_DIR", str(hostile_checkpoint.parent))
    with pytest.raises(models.UnsafeCheckpoint) as info:
        models.load_encoder("resnet50")
    _refused(str(info.value), marker)
    assert main(["evaluate", "--model", "resnet50"]) == 2
    _refused(one_error_line(capsys.readouterr().err), marker)


def test_sweep_file_checkpoints(
    hostile_checkpoint: Path, marker: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "models": ["resnet50"],
                "sources": [0],
                "scores": ["magnitude"],
                "sparsities": [0.5],
                "images_per_class": 2,
                "image_size": 32,
                "checkpoints": {"resnet50": str(hostile_checkpoint)},
            }
        )
    )
    rc = main(["sweep", str(cfg), "--store", str(tmp_path / "r.sqlite"), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 1  # the spec failed; the sweep reports it and ends
    assert TRACEBACK not in out.out + out.err
    _refused(out.out, marker)
    from pai_core.store import ResultsStore

    failures = ResultsStore(tmp_path / "r.sqlite").failures()
    assert len(failures) == 1 and failures.iloc[0]["attempts"] == 1  # refused once, never retried
    assert "UnsafeCheckpoint" in failures.iloc[0]["error"]


def test_dashboard_checkpoint_field(
    hostile_checkpoint: Path, marker: Path, tmp_path: Path, monkeypatch
) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    at = AppTest.from_file(str(page_script("Prune")), default_timeout=300)
    at.run()
    at.selectbox(key="prune_w_model").set_value("resnet50").run()
    at.text_input(key="prune_w_checkpoint").input(str(hostile_checkpoint)).run()
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    text = " ".join(e.value for e in at.error)
    _refused(text, marker)
    assert at.session_state["prune_job"] is None


def _cifar_folder(root: Path, data_extra=None, meta_extra=None) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    fine = np.repeat(np.arange(100), 3)
    data = np.random.default_rng(0).integers(0, 255, (300, 3072), dtype=np.uint8)
    d = {
        "data": data,
        "fine_labels": fine.tolist(),
        "coarse_labels": (fine // 5).tolist(),
        **(data_extra or {}),
    }
    with open(base / "test", "wb") as fh:
        pickle.dump(d, fh)
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], **(meta_extra or {})}, fh)
    return root


@pytest.mark.parametrize("where", ["test", "meta"])
def test_cifar100_pickles(tmp_path: Path, marker: Path, where: str) -> None:
    root = _cifar_folder(
        tmp_path / "data",
        data_extra={"x": Payload(marker)} if where == "test" else None,
        meta_extra={"x": Payload(marker)} if where == "meta" else None,
    )
    with pytest.raises(tasks.DataError, match=rf"refused to read .*{where}.*posix.system is not allowed"):
        tasks.load_suite("cifar100-superclasses", root=root)
    assert not marker.exists()


def test_cifar100_plain_data_still_reads(tmp_path: Path) -> None:
    """The restricted unpickler rebuilds NumPy arrays (protocols 2 and 5) and lists."""
    root = _cifar_folder(tmp_path / "data")
    s = tasks.load_suite("cifar100-superclasses", root=root)
    assert len(s.tasks) == 20 and s.tasks[3].images.load(1).size == (32, 32)
    with open(root / "cifar-100-python" / "test", "rb") as fh:
        d = pickle.load(fh)
    with open(root / "cifar-100-python" / "test", "wb") as fh:
        pickle.dump(d, fh, protocol=2)
    assert len(tasks.load_suite("cifar100-superclasses", root=root).tasks) == 20


def test_safetensors_and_plain_pth_load(tmp_path: Path, monkeypatch) -> None:
    state = _resnet_state()
    save_file(state, tmp_path / "r.safetensors")
    enc = models.load_encoder("resnet50", checkpoint=tmp_path / "r.safetensors")
    assert torch.equal(enc.model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    (tmp_path / "dir").mkdir()
    save_file(state, tmp_path / "dir" / "resnet50.safetensors")
    monkeypatch.setenv("PAI_CHECKPOINT_DIR", str(tmp_path / "dir"))
    assert models.load_encoder("resnet50").weights_id == enc.weights_id
    # an epoch counter and an optimizer state next to the weights are fine (plain containers)
    torch.save({"state_dict": state, "epoch": 800, "arch": "resnet50"}, tmp_path / "w.pth.tar")
    assert models.load_encoder("resnet50", checkpoint=tmp_path / "w.pth.tar").feature_dim == 2048


def test_namespace_checkpoint_is_refused_and_the_recipe_converts_it(tmp_path: Path) -> None:
    """DINO's full checkpoints carry an argparse.Namespace: refused; the message's command fixes it."""
    import argparse

    state = _resnet_state()
    trusted = tmp_path / "IN.pth"
    torch.save({"args": argparse.Namespace(arch="resnet50"), "state_dict": state}, trusted)
    with pytest.raises(models.UnsafeCheckpoint, match="argparse.Namespace") as info:
        models.load_encoder("resnet50", checkpoint=trusted)
    command = re.search(r'python -c "(.*?)"', str(info.value)).group(1)
    done = subprocess.run([sys.executable, "-c", command], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    enc = models.load_encoder("resnet50", checkpoint=tmp_path / "OUT.safetensors")
    assert torch.equal(enc.model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_no_unrestricted_unpickling_left_in_the_code() -> None:
    """Every reader of user files goes through the safe loaders: no bare pickle.load or weights_only=False."""
    patterns = (r"weights_only\s*=\s*False", r"\bpickle\.loads?\(", r"allow_pickle\s*=\s*True")
    offenders = []
    for folder in ("pai_core", "dashboard", "pages"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if "'IN.pth'" in line:  # the conversion recipe shown to users (a string, run by them)
                    continue
                if any(re.search(p, line) for p in patterns):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders
