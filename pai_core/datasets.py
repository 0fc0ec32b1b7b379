"""Whole image-classification datasets as tensors, for training networks from scratch.

The transfer protocol (:mod:`pai_core.tasks`) reads small task suites lazily; training from
scratch needs a full train/test split in memory instead.  Images are kept as ``uint8`` tensors
``(N, C, H, W)`` and normalised per batch (:meth:`ImageData.normalise`), so CIFAR's 50,000
training images cost 150 MB, not 600 MB of floats.

Datasets (:func:`available`, :func:`load`):

* ``fashion-mnist``: 60,000 / 10,000 grayscale 28x28 images, 10 classes, from Debian's
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``, gzipped IDX files) or a
  folder holding the same four files.  Works offline.  Normalised with the training set's
  own pixel mean and standard deviation.
* ``cifar10`` / ``cifar100``: 50,000 / 10,000 colour 32x32 images from the user's folder, in
  the official **binary** format (``cifar-10-batches-bin/`` with ``data_batch_1.bin`` …
  ``test_batch.bin``; ``cifar-100-binary/`` with ``train.bin``, ``test.bin``; fine labels).
  Normalised with the constants of the scalable second-order paper's code.  The python
  ("pickle") versions are refused with a message: reading them means unpickling, which this
  project does not do with files it did not write.

Missing or malformed data raise :class:`pai_core.tasks.DataError` saying what was expected
and where.

Example:
    >>> data = load("fashion-mnist")                      # doctest: +SKIP
    >>> data.train_x.shape, data.train_x.dtype            # doctest: +SKIP
    (torch.Size([60000, 1, 28, 28]), torch.uint8)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .tasks import FASHION_DIRS, DataError, read_idx

__all__ = [
    "DatasetInfo",
    "ImageData",
    "DataError",
    "available",
    "info",
    "load",
    "read_idx",
    "read_cifar_binary",
    "balanced_indices",
    "crop_flip",
    "FASHION_DIRS",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and what it needs.

    Attributes:
        name: Registry name.
        num_classes: Number of classes.
        channels: Image channels.
        image_size: Height = width in pixels.
        augmentation: ``"crop+flip"`` (random 4-px-padded crop and horizontal flip, the paper's
            CIFAR training transform) or ``"none"``.
        offline: Available without the user providing data.
        needs: What the user must provide (shown in menus and errors).
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    augmentation: str
    offline: bool
    needs: str


_INFO: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist",
        10,
        1,
        28,
        "none",
        True,
        "Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or a folder with "
        "train-/t10k-images-idx3-ubyte.gz and train-/t10k-labels-idx1-ubyte.gz",
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        10,
        3,
        32,
        "crop+flip",
        False,
        "a folder with CIFAR-10's binary version (cifar-10-batches-bin/: data_batch_1.bin ... "
        "data_batch_5.bin, test_batch.bin), from https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        100,
        3,
        32,
        "crop+flip",
        False,
        "a folder with CIFAR-100's binary version (cifar-100-binary/: train.bin, test.bin), from "
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    ),
}

# Per-channel mean/std of the scalable second-order paper's code (data/cifar.py).
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def available() -> list[str]:
    """Dataset names accepted by :func:`load`."""
    return list(_INFO)


def info(name: str) -> DatasetInfo:
    """Registry entry of ``name``; unknown name → ``ValueError`` listing the valid ones."""
    if name not in _INFO:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(_INFO)}")
    return _INFO[name]


@dataclass(eq=False)
class ImageData:
    """A dataset in memory.

    Attributes:
        name: Registry name.
        train_x, test_x: ``uint8`` images ``(N, C, H, W)``.
        train_y, test_y: ``int64`` labels ``(N,)``.
        mean, std: Per-channel normalisation in ``[0, 1]`` pixel units.
        num_classes: Number of classes.
        augmentation: See :class:`DatasetInfo`.
        source: Folder the data came from.
        identity: Hash of the pixels and labels (for cache keys).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    augmentation: str
    source: str
    identity: str

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def normalise(self, x: Tensor) -> Tensor:
        """``uint8`` images → float32 ``(x/255 − mean)/std``, on ``x``'s device."""
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x.float() / 255.0 - mean) / std


# --------------------------------------------------------------------------------------
# readers (the IDX reader lives in pai_core.tasks, torch-free; imported above)
# --------------------------------------------------------------------------------------


def _find_fashion(root: Path | None) -> Path:
    candidates = [root] if root is not None else [Path(d) for d in FASHION_DIRS]
    for cand in candidates:
        if cand.is_dir():
            for sub in (cand, *sorted(p for p in cand.iterdir() if p.is_dir())):
                if any(sub.glob("train-images-idx3-ubyte*")):
                    return sub
    where = str(root) if root is not None else ", ".join(FASHION_DIRS)
    raise DataError(f"Fashion-MNIST not found in {where}; needs {info('fashion-mnist').needs}")


def _fashion_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"Fashion-MNIST: {folder} has no {stem}(.gz)")


def _load_fashion(root: Path | None) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    folder = _find_fashion(root)
    arrays = {}
    for split in ("train", "t10k"):
        x = read_idx(_fashion_file(folder, f"{split}-images-idx3-ubyte"))
        y = read_idx(_fashion_file(folder, f"{split}-labels-idx1-ubyte"))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST {split}: images {x.shape} and labels {y.shape} do not match")
        if y.size and int(y.max()) >= 10:
            raise DataError(f"Fashion-MNIST {split}: label {int(y.max())} outside 0-9")
        arrays[split] = (torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    return (*arrays["train"], *arrays["t10k"], str(folder))


_CIFAR_LAYOUT = {
    # name: (folder, train files, test files, label bytes, which label byte)
    "cifar10": (
        "cifar-10-batches-bin",
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        ["test_batch.bin"],
        1,
        0,
    ),
    "cifar100": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2, 1),
}
_CIFAR_PY = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_PIXELS = 3 * 32 * 32


def read_cifar_binary(path: str | Path, label_bytes: int = 1, label_index: int = 0) -> tuple[Tensor, Tensor]:
    """Read one CIFAR binary file: records of ``label_bytes`` label bytes then 3,072 pixel bytes.

    CIFAR-10 records are ``<label><3072 pixels>``; CIFAR-100 records are
    ``<coarse label><fine label><3072 pixels>`` (``label_bytes=2``, ``label_index=1`` for the
    fine label).  Pixels are channel-major (1,024 red, then green, then blue, row by row).

    Returns:
        ``uint8`` images ``(N, 3, 32, 32)`` and ``int64`` labels ``(N,)``.

    Raises:
        DataError: The file is missing or its size is not a whole number of records.
    """
    path = Path(path)
    record = label_bytes + _PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records "
            "(truncated or not the binary version)"
        )
    rows = raw.reshape(-1, record)
    labels = torch.from_numpy(rows[:, label_index].astype(np.int64))
    images = torch.from_numpy(rows[:, label_bytes:].copy()).view(-1, 3, 32, 32)
    return images, labels


def _load_cifar(name: str, root: Path | None) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    if root is None:
        raise DataError(f"{name} needs a data folder (data_root): {info(name).needs}")
    if not root.is_dir():
        raise DataError(f"{name}: folder {root} does not exist; it should hold {info(name).needs}")
    sub, train_files, test_files, nbytes, idx = _CIFAR_LAYOUT[name]
    folder = root / sub if (root / sub).is_dir() else root
    if not all((folder / f).is_file() for f in train_files + test_files):
        py = _CIFAR_PY[name]
        if (root / py).is_dir() or root.name == py:
            raise DataError(
                f"{name}: {root} holds the python (pickle) version, which this project does not read "
                f"(unpickling files runs code). Use the binary version ({sub}/) instead: {info(name).needs}"
            )
        missing = [f for f in train_files + test_files if not (folder / f).is_file()]
        raise DataError(f"{name}: {folder} lacks {missing}; it should hold {info(name).needs}")
    nclass = info(name).num_classes
    parts = {}
    for split, files in (("train", train_files), ("test", test_files)):
        xs, ys = zip(*(read_cifar_binary(folder / f, nbytes, idx) for f in files), strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        if int(y.max()) >= nclass:
            raise DataError(f"{name} {split}: label {int(y.max())} outside 0-{nclass - 1} (wrong dataset?)")
        parts[split] = (x, y)
    return (*parts["train"], *parts["test"], str(folder))


def _identity(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


_LOADED: dict[tuple[str, str | None], ImageData] = {}


def load(name: str, root: str | os.PathLike | None = None) -> ImageData:
    """Load a whole dataset into memory (once per process and folder).

    Never mutate the returned tensors: later callers share them.

    Args:
        name: One of :func:`available`.
        root: Data folder; ``None`` uses Debian's folder for Fashion-MNIST (CIFAR needs one).

    Returns:
        The :class:`ImageData`.

    Raises:
        ValueError: Unknown dataset.
        DataError: The data are missing or malformed (the message says what is expected).
    """
    meta = info(name)
    key = (name, None if root is None else str(Path(root).expanduser().resolve()))
    if key in _LOADED:
        return _LOADED[key]
    folder = None if root is None else Path(root).expanduser()
    if name == "fashion-mnist":
        tx, ty, vx, vy, source = _load_fashion(folder)
        pix = tx.double() / 255.0
        mean, std = (float(pix.mean()),), (float(pix.std()),)
    else:
        tx, ty, vx, vy, source = _load_cifar(name, folder)
        mean, std = _CIFAR_STATS[name]
    data = ImageData(
        name=name,
        train_x=tx,
        train_y=ty,
        test_x=vx,
        test_y=vy,
        mean=mean,
        std=std,
        num_classes=meta.num_classes,
        augmentation=meta.augmentation,
        source=source,
        identity=_identity(tx, ty, vx, vy),
    )
    if len(_LOADED) >= 3:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = data
    return data


# --------------------------------------------------------------------------------------
# subsets and augmentation
# --------------------------------------------------------------------------------------


def balanced_indices(labels: Tensor, total: int | None, seed: int, num_classes: int | None = None) -> Tensor:
    """A seeded subset with (as nearly as possible) the same number of examples per class.

    Args:
        labels: ``int64`` labels.
        total: Subset size; ``None`` or ``>= len(labels)`` keeps every index (in order).
        seed: Seed of the draw.
        num_classes: Classes to balance over (default ``labels.max() + 1``).

    Returns:
        Sorted ``int64`` indices.  Each class gets ``total // C`` examples and the first
        ``total % C`` classes one more; a class with fewer examples gives all it has.

    Raises:
        ValueError: ``total < 1``.
    """
    n = len(labels)
    if total is None or total >= n:
        return torch.arange(n)
    if total < 1:
        raise ValueError(f"subset size must be >= 1, got {total}")
    c = int(num_classes if num_classes is not None else int(labels.max()) + 1)
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    for k in range(c):
        idx = (labels == k).nonzero().flatten()
        want = total // c + (1 if k < total % c else 0)
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:want]])
    return torch.cat(picked).sort().values


def crop_flip(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random ``padding``-px zero-padded crop and random horizontal flip, per image.

    The CIFAR training transform of the paper's code (``RandomCrop(32, padding=4)`` and
    ``RandomHorizontalFlip()``), on a batch ``(B, C, H, W)`` of any dtype; zero padding of
    ``uint8`` images is black, as torchvision's.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator).to(x.device)
    flip = (torch.rand(b, 1, generator=generator) < 0.5).to(x.device)
    rows = dy + torch.arange(h, device=x.device)  # (b, h)
    cols = dx + torch.where(
        flip, torch.arange(w - 1, -1, -1, device=x.device), torch.arange(w, device=x.device)
    )  # (b, w): a flipped crop reads its columns right to left
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
