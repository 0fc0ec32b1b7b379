"""Fault catalogue, data: a class never disappears silently, and bad files are skipped, not trusted.

An empty class folder, or a class whose files are all unreadable, used to drop out of its task,
which then scored 100 %. Each case must end in a DataError naming the class and the files tried
(every class keeps at least 2 readable images), or, for a few unreadable files, in a skip that is
counted. Hostile task files (``"classes": "ab"``, ``../x``) are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pai_core import evaluate, experiment, tasks
from pai_core.__main__ import main
from pai_core.experiment import ExperimentSpec
from pai_core.features import task_inputs
from pai_core.models import load_encoder
from tests.faults import one_error_line

CLASSES = ["cat", "dog", "cow", "pig"]
GROUPS = {"tasks": [{"name": "pets", "classes": ["cat", "dog"]}, {"name": "farm", "classes": ["cow", "pig"]}]}


def _png(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for k, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True)
        for i in range(4):
            _png(root / c / f"{i}.png", 10 * k + i)
    (root / "tasks.json").write_text(json.dumps(GROUPS))
    return root


@pytest.fixture(scope="module")
def tiny_encoder():
    return load_encoder("test_resnet")


def test_empty_class_folder_is_named(folder: Path) -> None:
    for f in (folder / "dog").iterdir():
        f.unlink()
    with pytest.raises(tasks.DataError, match=r"task 'pets': class 'dog' has 0 image file\(s\) in .*dog"):
        tasks.load_suite("folder", root=folder)


def test_class_with_only_unreadable_files_is_named_with_the_files(folder: Path, tiny_encoder) -> None:
    for f in (folder / "dog").iterdir():
        f.write_bytes(b"not an image")
    suite = tasks.load_suite("folder", root=folder)  # file names look fine: found when decoding
    with pytest.raises(tasks.DataError) as info:
        task_inputs(suite.tasks[0], tiny_encoder, image_size=32)
    msg = str(info.value)
    assert "class 'dog' has 0 readable image(s) of 4 tried; at least 2 are needed" in msg
    assert "dog/0.png (cannot identify image file" in msg
    # the other task is untouched
    x, y = task_inputs(suite.tasks[1], tiny_encoder, image_size=32)
    assert len(x) == 8 and sorted(set(y.tolist())) == [0, 1]


def test_one_readable_image_is_not_enough(folder: Path, tiny_encoder) -> None:
    for f in sorted((folder / "cat").iterdir())[1:]:
        f.write_bytes(b"\xff\xd8 truncated jpeg")
    suite = tasks.load_suite("folder", root=folder)
    with pytest.raises(tasks.DataError, match="class 'cat' has 1 readable image"):
        task_inputs(suite.tasks[0], tiny_encoder, image_size=32)


def test_a_few_unreadable_files_are_skipped_and_counted(folder: Path, tiny_encoder) -> None:
    (folder / "dog" / "3.png").write_bytes(b"junk")
    suite = tasks.load_suite("folder", root=folder)
    x, y = task_inputs(suite.tasks[0], tiny_encoder, image_size=32)
    assert len(x) == 7 and np.bincount(y.numpy()).tolist() == [4, 3]
    assert suite.skipped == 1 and "3.png" in suite.tasks[0].images.unreadable[0]


def test_cli_names_the_class_in_one_line(folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    for f in (folder / "cow").iterdir():
        f.write_bytes(b"junk")
    rc = main(
        [
            "evaluate",
            "--model",
            "test_resnet",
            "--suite",
            "folder",
            "--data-root",
            str(folder),
            "--images-per-class",
            "4",
            "--image-size",
            "32",
        ]
    )
    line = one_error_line(capsys.readouterr().err)
    assert rc == 2 and "class 'cow' has 0 readable image(s)" in line and "cow/0.png" in line


@pytest.mark.parametrize(
    "classes,match",
    [
        ("ab", r'"classes" must be a list of folder names, got "ab"'),
        (["cat", 3], "must be a list of folder names"),
        (["cat", ""], "must be a list of folder names"),
        (["cat", "../imgs/dog"], "class '../imgs/dog' is outside the data folder"),
        (["cat", "/etc"], "class '/etc' is outside the data folder"),
        (["cat", "."], "class '.' is outside the data folder"),
    ],
)
def test_hostile_task_files_are_refused(folder: Path, classes, match: str) -> None:
    (folder / "tasks.json").write_text(json.dumps({"tasks": [{"name": "x", "classes": classes}]}))
    with pytest.raises(tasks.DataError, match=match):
        tasks.load_suite("folder", root=folder)


def test_class_name_with_a_subfolder_inside_the_root_is_fine(folder: Path) -> None:
    (folder / "more").mkdir()
    (folder / "dog").rename(folder / "more" / "dog")
    (folder / "tasks.json").write_text(json.dumps({"tasks": [{"name": "x", "classes": ["cat", "more/dog"]}]}))
    assert len(tasks.load_suite("folder", root=folder).tasks[0]) == 8


@pytest.mark.parametrize("size", [(10_000, 10_000), (18_000, 18_000)], ids=["warning-size", "error-size"])
def test_decompression_bombs_are_skipped_like_unreadable_files(folder: Path, tiny_encoder, size) -> None:
    """PIL warns above 89 M pixels and refuses above twice that; both are skipped, never decoded."""
    bomb = folder / "dog" / "bomb.png"
    Image.new("1", size).save(bomb)  # a few kB on disk, 100-324 M pixels decoded
    assert bomb.stat().st_size < 200_000
    suite = tasks.load_suite("folder", root=folder)
    x, y = task_inputs(suite.tasks[0], tiny_encoder, image_size=32)
    assert len(x) == 8 and suite.skipped == 1
    assert "bomb.png" in suite.tasks[0].images.unreadable[0]
    assert "decompression bomb" in suite.tasks[0].images.unreadable[0].lower()


def test_array_suite_class_without_images_is_named() -> None:
    imgs = np.zeros((6, 8, 8), dtype=np.uint8)
    labels = np.array([0, 0, 0, 2, 2, 2])
    with pytest.raises(tasks.DataError, match="task 't': class 'one' has 0 images"):
        tasks._array_task("t", [0, 1, 2], ["zero", "one", "two"], imgs, labels, None, 0)


def test_holdout_never_evaluates_on_the_fitting_image() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        ExperimentSpec(images_per_class=1, holdout=True)
    with pytest.raises(ValueError, match="held-out evaluation needs at least 2 images of each class"):
        evaluate.split_indices(np.array([0, 0, 1]), holdout=True)
    fit, ev = evaluate.split_indices(np.array([0, 0, 1, 1, 1]), holdout=True)
    assert not set(fit) & set(ev) and len(fit) + len(ev) == 5


def test_holdout_with_one_image_per_class_from_the_cli(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", "--holdout", "--images-per-class", "1"])
    assert info.value.code == 2
    assert "--images-per-class must be at least 2, got 1" in capsys.readouterr().err


def test_images_per_class_below_two_is_refused_by_the_suites() -> None:
    with pytest.raises(tasks.DataError, match="at least 2"):
        tasks.load_suite("digits", images_per_class=1)
    with pytest.raises(ValueError, match="images_per_class must be at least 2"):
        experiment.ExperimentSpec(images_per_class=0)
