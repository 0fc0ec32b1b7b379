"""Fault catalogue, command line: every failure is one line that names the file or setting.

Bad values are refused before any work, never reinterpreted (sparsity 1.5 was run at 1.5 %,
``--retries -1`` ran nothing and exited 0, ``--image-size 0`` was ignored, ``landscape --extent -1``
and ``--sparsity paper`` were accepted). Failures during a run (wrong state dict, memory running
out, a bug) end in one line and a non-zero status; a bug's traceback goes to a file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from pai_core import experiment, models
from pai_core.__main__ import main
from tests.faults import TRACEBACK, one_error_line
from tests.test_store import fake_result

RUN = ["run", "--model", "test_resnet", "--images-per-class", "3", "--image-size", "32"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    monkeypatch.delenv("PAI_DEBUG", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def runs(monkeypatch) -> list:
    """Replace experiment.run: record the specs it gets, return a made-up result (no computing)."""
    seen = []

    def fake_run(spec, progress=None, **k):
        seen.append(spec)
        res = fake_result()
        res.spec = spec
        return res

    monkeypatch.setattr(experiment, "run", fake_run)
    return seen


def _refused_by_argparse(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- values refused up front


@pytest.mark.parametrize("value", ["1.5", "59.04", "1", "-0.1", "100%", "paper-ish", "0.3,"])
def test_sparsity_needs_an_explicit_unit(value: str, runs, capsys) -> None:
    rc = main([*RUN, "--sparsity", value])
    line = one_error_line(capsys.readouterr().err) if value != "0.3," else ""
    if value == "0.3,":  # a trailing comma is only a separator
        assert rc == 0 and [s.sparsity for s in runs] == [0.3]
        return
    assert rc == 2 and not runs
    assert "write 0.5904 or 59.04% for 59.04 % of the weights removed" in line


def test_sparsity_fractions_and_percentages(runs, capsys) -> None:
    assert main([*RUN, "--sparsity", "0.36,59.04%"]) == 0
    assert [s.sparsity for s in runs] == [0.36, 0.5904]
    assert main([*RUN, "--sparsity", "paper"]) == 0
    assert len(runs) == 2 + 7


@pytest.mark.parametrize(
    "argv,match",
    [
        (["sweep", "--retries", "-1"], "--retries must be at least 0, got -1"),
        (["sweep", "--gpus-per-task", "0"], "--gpus-per-task: must be a positive number"),
        (["run", "--image-size", "0"], "--image-size must be at least 1, got 0"),
        (["evaluate", "--images-per-class", "1"], "--images-per-class must be at least 2"),
        (["run", "--device", "foo"], "unknown device 'foo'; valid: auto"),
        (["run", "--source", "-1"], "--source must be at least 0"),
        (["landscape", "--extent", "-1"], "--extent: must be a positive number, got '-1'"),
        (["landscape", "--extent", "nan"], "--extent: must be a positive number"),
        (["landscape", "--grid", "1"], "--grid must be at least 2"),
        (["landscape", "--sparsity", "paper"], "'paper' is for run and sweep"),
        (["landscape", "--sparsity", "66.42"], "sparsity '66.42' is not a fraction in [0, 1)"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], match: str, runs, capsys) -> None:
    assert match in _refused_by_argparse(argv, capsys)
    assert not runs


def test_retries_minus_one_never_runs_nothing_and_succeeds() -> None:
    from pai_core.sweep import run_sweep

    with pytest.raises(ValueError, match="retries must be 0 or more"):
        run_sweep([], retries=-1)


@pytest.mark.parametrize(
    "options,match",
    [
        ("[1, 2]", "must be a JSON object of option names and values.*got list"),
        ('"probes"', "must be a JSON object.*got str"),
        ("{probes: 3}", "is not valid JSON"),
    ],
)
def test_score_options_must_be_a_json_object(options: str, match: str, runs, capsys) -> None:
    assert main([*RUN, "--score-options", options]) == 2
    assert re.search(match, one_error_line(capsys.readouterr().err))
    assert not runs


@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_json_output_is_checked_before_the_run(where: str, tmp_path: Path, runs, capsys) -> None:
    target = tmp_path / "no" / "such" / "x.json" if where == "missing-folder" else tmp_path
    assert main([*RUN, "--json", str(target)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"output file (--json) {target}" in line
    assert not runs  # nothing computed, so nothing to lose


def test_json_output_is_written_whole(tmp_path: Path, runs) -> None:
    out = tmp_path / "r.json"
    assert main([*RUN, "--sparsity", "0.3,0.5", "--json", str(out)]) == 0
    assert [r["spec"]["sparsity"] for r in json.loads(out.read_text())] == [0.3, 0.5]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_report_into_a_file_instead_of_a_folder(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("mine")
    assert main(["report", "--store", str(tmp_path / "r.sqlite"), "--out", str(blocker)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(blocker) in line and blocker.read_text() == "mine"


# ----------------------------------------------------------------------------- failures during a run


@pytest.mark.parametrize("model", ["efficientnet_lite0", "mobilenet_v2"])
def test_wrong_state_dict_for_the_offline_models(model: str, tmp_path: Path, capsys) -> None:
    wrong = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), wrong)
    assert main(["evaluate", "--model", model, "--checkpoint", str(wrong)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"checkpoint {wrong} does not fit '{model}'" in line and "missing keys" in line


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you "
                     "tried to allocate 9663676416 bytes."),
        MemoryError(),
    ],
    ids=["gpu", "cpu-allocator", "python"],
)  # fmt: skip
def test_memory_running_out_says_what_to_lower(error: BaseException, monkeypatch, capsys) -> None:
    def oom(*a, **k):
        raise error

    monkeypatch.setattr(experiment, "run", oom)
    assert main(RUN) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: out of memory") and "--images-per-class" in line and "--image-size" in line


def test_memory_running_out_in_a_sweep_is_not_retried(tmp_path: Path, monkeypatch, capsys) -> None:
    calls = []

    def oom(spec, *a, **k):
        calls.append(spec)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(experiment, "run", oom)
    argv = ["sweep", "--models", "test_resnet", "--sources", "0", "--sparsities", "0.3,0.5",
            "--store", str(tmp_path / "r.sqlite"), "--no-progress"]  # fmt: skip
    assert main(argv) == 1
    out = capsys.readouterr()
    assert len(calls) == 2 and "OutOfMemoryError: CUDA out of memory" in out.out
    assert TRACEBACK not in out.out + out.err


def test_a_bug_is_one_line_with_an_id_and_the_traceback_in_a_file(monkeypatch, capsys) -> None:
    def bug(*a, **k):
        raise KeyError("/srv/secret/path/config.yaml")

    monkeypatch.setattr(experiment, "run", bug)
    assert main(RUN) == 1
    err = capsys.readouterr().err
    line = one_error_line(err)
    assert "unexpected KeyError" in line and "/srv/secret" not in line and "config.yaml" in line
    error_id = re.search(r"\[error id ([0-9a-f]{8})\]", line).group(1)
    where = Path(re.search(r"traceback in (\S+)", line).group(1))
    assert where.name == f"{error_id}.txt" and TRACEBACK in where.read_text()
    assert "def bug" not in err
    monkeypatch.setenv("PAI_DEBUG", "1")
    assert main(RUN) == 1
    err = capsys.readouterr().err
    assert TRACEBACK in err and "raise KeyError" in err and err.strip().splitlines()[-1].startswith("error:")


def test_interrupt_says_how_to_resume(monkeypatch, capsys) -> None:
    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "run", stop)
    assert main(RUN) == 130
    assert "run again to resume" in capsys.readouterr().err


def test_big_timm_model_fails_before_it_is_built(monkeypatch, capsys) -> None:
    """The hub is unreachable here; the model must not be built (seconds, gigabytes) to find out."""

    def no_build(*a, **k):
        raise AssertionError("the model was built before checking for its weights")

    monkeypatch.setattr(models, "_host_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(timm, "create_model", no_build)
    with pytest.raises(
        models.ModelUnavailable, match="vit_huge_patch14_224.*not in the local Hugging Face cache"
    ):
        models.load_encoder("timm:vit_huge_patch14_224")
    assert main(["evaluate", "--model", "timm:vit_huge_patch14_224"]) == 2
    assert "cannot load model 'timm:vit_huge_patch14_224'" in one_error_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match="Invalid pretrained tag"):
        models.load_encoder("timm:resnet50.no_such_tag")


def test_decompression_bomb_in_a_folder_is_skipped_from_the_cli(tmp_path: Path, capsys) -> None:
    root = tmp_path / "imgs"
    for k, c in enumerate(["a", "b", "c", "d"]):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (60 * k, 20 * i, 0)).save(root / c / f"{i}.png")
    Image.new("1", (10_000, 10_000)).save(root / "a" / "bomb.png")
    (root / "tasks.json").write_text(json.dumps({"tasks": [{"name": "x", "classes": ["a", "b"]},
                                                           {"name": "y", "classes": ["c", "d"]}]}))  # fmt: skip
    argv = [
        "evaluate",
        "--model",
        "test_resnet",
        "--suite",
        "folder",
        "--data-root",
        str(root),
        "--image-size",
        "32",
    ]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "1 unreadable image file(s) skipped" in out.out and TRACEBACK not in out.err


def test_spec_parsing_has_the_same_units() -> None:
    from pai_core.experiment import ExperimentSpec

    assert ExperimentSpec(sparsity="59.04%").sparsity == 0.5904
    assert ExperimentSpec.from_json(ExperimentSpec(sparsity=0.36).to_json()).sparsity == 0.36
    for bad in (1.0, 1.5, 59.04, "59.04", -0.01):
        with pytest.raises(ValueError, match="write 0.5904 or 59.04%"):
            ExperimentSpec(sparsity=bad)
    with pytest.raises(ValueError, match="image_size must be a positive number"):
        ExperimentSpec(image_size=0)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        ExperimentSpec(device="gpu")


def test_in_a_real_process_a_bug_prints_exactly_one_line(tmp_path: Path) -> None:
    """In-process tests run under pytest's log handlers; a plain process has none (logging's
    last-resort handler would print a traceback): check the real thing."""
    import subprocess
    import sys

    from tests.faults import REPO

    code = (
        "import sys\nfrom pai_core import experiment\nfrom pai_core.__main__ import main\n"
        "def bug(*a, **k):\n    raise KeyError('/srv/private/y.bin')\n"
        "experiment.run = bug\nsys.exit(main(['run', '--model', 'test_resnet']))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PAI_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unexpected KeyError"), done.stderr
    assert "/srv/private" not in done.stderr and done.stdout == ""


def test_in_a_real_process_an_expected_failure_prints_exactly_one_line(tmp_path: Path) -> None:
    from tests.faults import run_cli

    bad = tmp_path / "r.sqlite"
    bad.write_bytes(b"junk" * 100)
    done = run_cli("report", "--store", str(bad), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "the file is damaged or not a results store" in lines[0], done.stderr
