"""Whole datasets for training from scratch: IDX and CIFAR binary readers, clear errors, subsets, augmentation."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from pai_core import datasets
from pai_core.tasks import DataError

HAVE_FASHION = any(Path(d).is_dir() for d in datasets.FASHION_DIRS)


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_read_idx_round_trip_and_bad_files(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert np.array_equal(datasets.read_idx(tmp_path / "a.gz"), arr)
    _write_idx(tmp_path / "b", arr, gz=False)
    assert np.array_equal(datasets.read_idx(tmp_path / "b"), arr)
    (tmp_path / "c").write_bytes((tmp_path / "b").read_bytes()[:-3])  # truncated
    with pytest.raises(DataError, match="announces"):
        datasets.read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(DataError, match="magic"):
        datasets.read_idx(tmp_path / "d")
    (tmp_path / "e.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot be read"):
        datasets.read_idx(tmp_path / "e.gz")


def test_fashion_from_a_user_folder_and_missing_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    datasets._LOADED.clear()
    data = datasets.load("fashion-mnist", tmp_path)
    assert data.train_x.shape == (30, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.test_y.tolist() == list(range(10))
    x = data.normalise(data.train_x)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3  # train-set statistics
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        datasets.load("fashion-mnist", tmp_path / "nowhere")


def _cifar_records(n: int, label_bytes: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, (n, label_bytes)).astype(np.uint8)
    pix = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    return np.concatenate([labels, pix], 1).tobytes(), labels, pix


def test_cifar10_binary_reader_layout(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    expect_x, expect_y = [], []
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        raw, labels, pix = _cifar_records(3, 1, i)
        (root / name).write_bytes(raw)
        expect_x.append(pix)
        expect_y.append(labels[:, 0])
    datasets._LOADED.clear()
    data = datasets.load("cifar10", tmp_path)  # the parent folder works, as does the batches folder
    assert data.train_x.shape == (15, 3, 32, 32) and data.test_x.shape == (3, 3, 32, 32)
    assert data.train_y.tolist() == np.concatenate(expect_y[:5]).tolist()
    # channel-major pixels: the first 1,024 bytes are the red plane, row by row
    assert data.train_x[0, 0, 0, :4].tolist() == expect_x[0][0, :4].tolist()
    assert data.train_x[0, 1, 0, 0].item() == expect_x[0][0, 1024]
    assert data.train_x[0, 2, 31, 31].item() == expect_x[0][0, 3071]
    assert data.mean == (0.4914, 0.4822, 0.4465)


def test_cifar100_uses_the_fine_label(tmp_path):
    root = tmp_path / "cifar-100-binary"
    root.mkdir()
    for name, seed in (("train.bin", 0), ("test.bin", 1)):
        raw, labels, _ = _cifar_records(4, 2, seed)
        (root / name).write_bytes(raw)
    x, y = datasets.read_cifar_binary(root / "train.bin", 2, 1)
    _, labels, _ = _cifar_records(4, 2, 0)
    assert y.tolist() == labels[:, 1].tolist() and x.shape == (4, 3, 32, 32)


def test_cifar_errors_are_clear(tmp_path):
    datasets._LOADED.clear()
    with pytest.raises(DataError, match="needs a data folder.*binary"):
        datasets.load("cifar10")
    with pytest.raises(DataError, match="does not exist.*cifar-10-batches-bin"):
        datasets.load("cifar10", tmp_path / "missing")
    (tmp_path / "cifar-100-python").mkdir()
    with pytest.raises(DataError, match="python \\(pickle\\) version.*binary"):
        datasets.load("cifar100", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="lacks"):
        datasets.load("cifar10", empty)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(3073 + 5))
    with pytest.raises(DataError, match="whole number"):
        datasets.read_cifar_binary(bad)
    with pytest.raises(ValueError, match="fashion-mnist"):
        datasets.load("imagenet")


def test_balanced_indices():
    labels = torch.arange(100) % 4
    idx = datasets.balanced_indices(labels, 10, seed=0)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10
    assert torch.bincount(labels[idx], minlength=4).tolist() == [3, 3, 2, 2]
    assert torch.equal(idx, datasets.balanced_indices(labels, 10, seed=0))
    assert not torch.equal(idx, datasets.balanced_indices(labels, 10, seed=1))
    assert torch.equal(datasets.balanced_indices(labels, None, 0), torch.arange(100))


def test_crop_flip_is_a_shifted_window_or_its_mirror():
    x = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    y = datasets.crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert y.shape == x.shape and y.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(64):
        windows = [padded[i, :, a : a + 8, b : b + 8] for a in range(5) for b in range(5)]
        plain = any(torch.equal(y[i], w) for w in windows)
        mirrored = any(torch.equal(y[i], w.flip(-1)) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 < flips < 54  # about half are flipped
    same = datasets.crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    assert all(torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1)) for i in range(64))


@pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_loads():
    data = datasets.load("fashion-mnist")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert abs(data.mean[0] - 0.2860) < 1e-3 and abs(data.std[0] - 0.3530) < 1e-3


def test_one_idx_reader_serves_both_protocols(tmp_path):
    # The digits suite's Fashion-MNIST tasks read through the same checked reader: a truncated
    # file is a DataError there too, not a numpy reshape error.
    from pai_core import tasks

    assert datasets.read_idx is tasks.read_idx and datasets.FASHION_DIRS is tasks.FASHION_DIRS
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3), gz=False)
    images, labels = tasks._fashion_arrays(tmp_path)
    assert images.shape == (3, 28, 28) and labels.tolist() == [0, 1, 2]
    data = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(DataError, match="announces"):
        tasks._fashion_arrays(tmp_path)
