"""Results store: rows, filters, failures, recording by the callers, and two processes writing at once."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pai_core import experiment
from pai_core import store as store_mod
from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult
from pai_core.store import SUMMARY_COLUMNS, ResultsStore

REPO = Path(__file__).resolve().parent.parent


def fake_result(
    source: int = 0,
    score: str = "magnitude",
    sparsity: float = 0.36,
    seed: int = 0,
    finetune: str | None = "smoke",
    model: str = "efficientnet_lite0",
) -> ExperimentResult:
    """A result with made-up but distinct accuracies (no computation)."""
    spec = ExperimentSpec(
        model=model,
        source=source,
        score=score,
        sparsity=sparsity,
        seed=seed,
        finetune=finetune,
        images_per_class=10,
    )
    tasks = [
        TaskResult(
            task=f"task {k}",
            role="source" if k == source else "transfer",
            dense=0.9 - 0.01 * k,
            zero_shot=0.8 - sparsity / 10 - 0.01 * k,
            finetuned=None if finetune is None else 0.85 - 0.01 * k,
        )
        for k in range(3)
    ]
    return ExperimentResult(
        spec=spec,
        tasks=tasks,
        schedule=finetune,
        timings={"load": 0.5, "zero-shot": 1.5},
        notes=["made up"],
        device="cpu",
    )


def test_default_path_follows_cache_dir_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "c1"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    assert ResultsStore().path == tmp_path / "c1" / "results.sqlite"
    monkeypatch.setenv("PAI_RESULTS_DB", str(tmp_path / "elsewhere" / "r.sqlite"))
    assert ResultsStore().path == tmp_path / "elsewhere" / "r.sqlite"


def test_record_frame_results_roundtrip(tmp_path):
    st = ResultsStore(tmp_path / "r.sqlite")
    assert len(st) == 0 and st.done_keys() == set()
    assert list(st.frame().columns)[:3] == ["key", "model", "suite"]  # columns even when empty
    res = fake_result()
    key = st.record(res, elapsed=2.25)
    assert key == res.spec.key() and st.done_keys() == {key} and st.is_done(key)

    df = st.frame()
    assert len(df) == 1
    row = df.iloc[0]
    for c in SUMMARY_COLUMNS:
        want = res.summary()[c]
        assert row[c] == pytest.approx(want)
    assert row["model"] == "efficientnet_lite0" and row["source"] == 0 and row["sparsity"] == 0.36
    assert row["elapsed"] == 2.25 and row["device"] == "cpu" and row["schedule"] == "smoke"
    assert json.loads(row["tasks"])[1] == {
        "task": "task 1",
        "role": "transfer",
        "dense": 0.89,
        "zero_shot": pytest.approx(0.754),
        "finetuned": 0.84,
    }
    assert json.loads(row["timings"]) == {"load": 0.5, "zero-shot": 1.5}
    assert row["finished_at"].endswith("+00:00")

    back = st.results()
    assert len(back) == 1
    assert back[0].spec == res.spec and back[0].tasks == res.tasks and back[0].notes == ["made up"]
    assert back[0].summary() == res.summary()


def test_replace_keeps_one_row_per_spec(tmp_path):
    st = ResultsStore(tmp_path / "r.sqlite")
    st.record(fake_result(), elapsed=1.0)
    first = st.frame().iloc[0]["finished_at"]
    st.record(fake_result(), elapsed=3.0)
    df = st.frame()
    assert len(df) == 1 and df.iloc[0]["elapsed"] == 3.0 and df.iloc[0]["finished_at"] > first
    # a different sparsity is a different spec, hence a second row
    st.record(fake_result(sparsity=0.5904), elapsed=1.0)
    assert len(st) == 2


def test_filters(tmp_path):
    st = ResultsStore(tmp_path / "r.sqlite")
    for src in (0, 1):
        for score in ("magnitude", "kfac"):
            for q in (0.36, 0.5904):
                st.record(fake_result(source=src, score=score, sparsity=q), elapsed=1.0)
    st.record(fake_result(finetune=None, model="mobilenet_v2"), elapsed=1.0)
    assert len(st.frame()) == 9
    assert len(st.frame(score="kfac")) == 4
    assert len(st.frame(score=["kfac", "magnitude"], sparsity=0.5904)) == 4
    assert len(st.frame(finetune=None)) == 1
    assert st.frame(finetune=None).iloc[0]["model"] == "mobilenet_v2"
    assert len(st.frame(finetune=["smoke", None])) == 9
    assert [r.spec.score for r in st.results(source=1, sparsity=0.36)] == ["kfac", "magnitude"]  # sorted
    with pytest.raises(ValueError, match="unknown column 'colour'.*model"):
        st.frame(colour="red")


def test_failures_count_attempts_and_clear_on_success(tmp_path):
    st = ResultsStore(tmp_path / "r.sqlite")
    res = fake_result()
    try:
        raise RuntimeError("CUDA error: an illegal memory access")
    except RuntimeError as exc:
        st.record_failure(res.spec, exc)
    st.record_failure(res.spec, "worker died")
    f = st.failures()
    assert len(f) == 1 and f.iloc[0]["attempts"] == 2 and f.iloc[0]["error"] == "worker died"
    assert len(st) == 0  # a failure is not a finished spec
    st.record(res, elapsed=1.0)
    assert st.failures().empty and len(st) == 1


def test_wal_mode_and_schema_version(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore(path).record(fake_result(), elapsed=1.0)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_mod.STORE_VERSION
    # plain SQL works too (spec columns are denormalised for that)
    assert con.execute("SELECT model, score, sparsity FROM results").fetchone() == (
        "efficientnet_lite0",
        "magnitude",
        0.36,
    )
    con.close()


def test_record_run_writes_the_default_store_or_the_one_given(tmp_path, monkeypatch):
    monkeypatch.setenv("PAI_RESULTS_DB", str(tmp_path / "default.sqlite"))
    res = fake_result()
    mine = ResultsStore(tmp_path / "mine.sqlite")
    assert store_mod.record_run(res, store=mine) == res.spec.key()
    assert len(mine) == 1 and len(ResultsStore()) == 0
    store_mod.record_run(res)
    df = ResultsStore().frame()
    assert len(df) == 1 and df.iloc[0]["elapsed"] == pytest.approx(2.0)  # sum of the stage timings


def _cli_run(spec: ExperimentSpec) -> int:
    from pai_core.__main__ import main

    return main(
        [
            "run",
            "--model",
            spec.model,
            "--score",
            spec.score,
            "--sparsity",
            str(spec.sparsity),
            "--images-per-class",
            str(spec.images_per_class),
            "--image-size",
            str(spec.image_size),
        ]
    )


def test_every_cli_run_lands_in_the_store_and_experiment_run_writes_none(tmp_path, monkeypatch):
    """No hidden hook: experiment.run writes no store; its callers (here the CLI's `run`) record."""
    from pai_core import experiment

    monkeypatch.setenv("PAI_RESULTS_DB", str(tmp_path / "hook.sqlite"))
    spec = ExperimentSpec(
        model="test_resnet", score="magnitude", sparsity=0.5, images_per_class=5, image_size=32
    )
    res = experiment.run(spec, use_cache=False)
    assert len(ResultsStore()) == 0
    assert _cli_run(spec) == 0
    df = ResultsStore().frame()
    assert list(df["key"]) == [spec.key()]
    assert df.iloc[0]["source_zero_shot"] == pytest.approx(res.mean_source_zero_shot)


def test_a_broken_store_only_warns(tmp_path, monkeypatch, capsys):
    """Recording into a broken store warns and keeps the run; the CLI refuses before any work (issue 9)."""
    bad = tmp_path / "not-a-db.sqlite"
    junk = b"this is not a SQLite file" * 100
    bad.write_bytes(junk)
    monkeypatch.setenv("PAI_RESULTS_DB", str(bad))
    spec = ExperimentSpec(
        model="test_resnet", score="random", sparsity=0.5, images_per_class=5, image_size=32
    )
    res = experiment.run(spec)
    with pytest.warns(UserWarning, match="results store"):
        assert store_mod.record_run(res) is None
    assert res.mean_source_zero_shot is not None  # the run's results are there all the same
    assert _cli_run(spec) == 2
    err = capsys.readouterr().err
    assert "cannot use results store" in err and "move it aside" in err and "Traceback" not in err
    assert bad.read_bytes() == junk


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from tests.test_store import fake_result
    from pai_core.store import ResultsStore
    db, offset, barrier = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[4])
    (barrier / str(offset)).touch()
    while len(list(barrier.iterdir())) < 2:  # start together, after both paid for their imports
        time.sleep(0.01)
    st = ResultsStore(db)
    for i in range(60):
        st.record(fake_result(seed=offset + i), elapsed=float(i))
        if i % 10 == 0:
            st.done_keys(); st.frame()  # readers in between writers
""")


def test_two_processes_writing_at_once(tmp_path):
    """Two writers (e.g. two sweeps) interleave without losing rows, errors or corruption."""
    path = tmp_path / "shared.sqlite"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(off), str(REPO), str(barrier)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for off in (0, 1000)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    st = ResultsStore(path)
    assert len(st) == 120 and len(st.done_keys()) == 120
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    assert sorted(st.frame()["seed"]) == sorted(list(range(60)) + list(range(1000, 1060)))
