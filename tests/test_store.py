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
from pai_core.scratch_spec import ScratchResult, ScratchSpec
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


def fake_scratch_result(
    score: str = "snip",
    sparsity: float = 0.9,
    bn_warmup: str = "off",
    seed: int = 0,
    model: str = "resnet20",
    acc: float = 0.7,
) -> ScratchResult:
    """A from-scratch result with made-up numbers (no computation)."""
    spec = ScratchSpec(
        model=model, score=score, sparsity=sparsity, bn_warmup=bn_warmup, seed=seed, train_size=500
    )
    layers = [
        {"name": "conv1.weight", "numel": 100, "kept": 20, "density": 0.2},
        {"name": "conv2.weight", "numel": 100, "kept": 0, "density": 0.0},
    ]
    curve = [
        {
            "epoch": e,
            "lr": 0.05,
            "train_loss": 1.0,
            "train_acc": 0.5,
            "test_loss": 1.0,
            "test_acc": acc - 0.1 * (2 - e),
        }
        for e in (1, 2)
    ]
    return ScratchResult(
        spec=spec,
        final_acc=acc,
        best_acc=acc,
        best_epoch=2,
        curve=curve,
        layer_density=layers,
        collapsed_layers=["conv2.weight"],
        kept=20,
        total=200,
        pruned_nonzero=0,
        schedule={"name": "cpu-short"},
        train_examples=500,
        test_examples=200,
        score_examples=100,
        timings={"train": 3.0, "epoch": 1.5, "total": 4.0},
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
        "num_classes": None,  # not given to this made-up result
        "repaired": None,
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


def _old_layout_store(path: Path, result: ExperimentResult) -> None:
    """A store as layout 1 wrote it before the OBS-corrected and cross-domain columns existed."""
    old = [f"{r}_{k}" for r in ("source", "transfer") for k in ("dense", "zero_shot", "finetuned")]
    con = sqlite3.connect(path)
    con.executescript(
        store_mod._SCHEMA.replace(
            ", ".join(f"{c} REAL" for c in SUMMARY_COLUMNS), ", ".join(f"{c} REAL" for c in old)
        )
    )
    spec = {
        k: v for k, v in json.loads(result.spec.to_json()).items() if k not in ("repair", "repair_damping")
    }
    spec = {k: v for k, v in spec.items() if k not in ("transfer_suite", "transfer_data_root")}
    summ = result.summary()
    con.execute(
        f"INSERT INTO results (key, model, suite, {', '.join(old)}, spec_json, tasks_json, timings_json, "
        f"result_json, finished_at) VALUES (?, ?, ?, {', '.join('?' * len(old))}, ?, ?, ?, ?, ?)",
        (
            result.spec.key(),
            result.spec.model,
            result.spec.suite,
            *[summ[c] for c in old],
            json.dumps(spec),
            "[]",
            "{}",
            json.dumps({**result.to_dict(), "spec": spec}),
            "2025-01-01T00:00:00+00:00",
        ),
    )
    con.execute(f"PRAGMA user_version = {store_mod.STORE_VERSION}")
    con.commit()
    con.close()


def test_a_store_without_the_later_summary_columns_gains_them_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    old = fake_result()
    _old_layout_store(path, old)
    st = ResultsStore(path)  # migrates: adds the missing columns in place
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(results)")}
    assert set(SUMMARY_COLUMNS) <= cols
    row = st.frame().iloc[0]
    assert row["key"] == old.spec.key() and row["source_zero_shot"] == pytest.approx(
        old.mean_source_zero_shot
    )
    assert row["repair"] is None and row["transfer_suite"] is None and row["repair_damping"] == 1e-2
    assert row["source_repaired"] is None or row["source_repaired"] != row["source_repaired"]  # NULL
    assert st.results()[0].spec == old.spec  # the earlier spec reads with the later fields' defaults
    new = fake_result(sparsity=0.5904)
    new.tasks[0].repaired = 0.5
    new = ExperimentResult(new.spec.replace(repair="a"), new.tasks, new.schedule)
    st.record(new, elapsed=1.0)
    df = st.frame(repair="a")
    assert len(df) == 1 and df.iloc[0]["source_repaired"] == 0.5 and len(st) == 2


def test_a_read_only_store_without_the_later_columns_still_reads(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite"
    _old_layout_store(path, fake_result())
    before = path.read_bytes()
    monkeypatch.setattr(store_mod.os, "access", lambda p, mode: False)  # what a read-only file says
    st = ResultsStore(path)
    assert st.readonly
    df = st.frame()
    assert len(df) == 1 and df["cross_zero_shot"].isna().all() and df["repair"].isna().all()
    assert path.read_bytes() == before  # reading migrates nothing


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


# ----------------------------------------------------------------------------- the two kinds


def test_both_kinds_live_apart(tmp_path):
    st = ResultsStore(tmp_path / "r.sqlite")
    transfer = fake_result()
    st.record(transfer, elapsed=1.0)
    runs = [
        fake_scratch_result(score=s, bn_warmup=w, acc=a)
        for s, w, a in (("snip", "off", 0.6), ("snip", "paper", 0.5), ("random", "off", 0.4))
    ]
    keys = [st.record(r, elapsed=2.0) for r in runs]
    assert all(k.startswith("scratch-") for k in keys) and transfer.spec.key().startswith("results-")
    # the transfer views see their kind only; the from-scratch views theirs
    assert list(st.frame()["key"]) == [transfer.spec.key()] and len(st.results()) == 1
    sf = st.scratch_frame()
    assert set(sf["key"]) == set(keys) and transfer.spec.key() not in set(sf["key"])
    assert st.done_keys() == {transfer.spec.key(), *keys}
    assert st.done_keys("scratch") == set(keys) and st.done_keys("transfer") == {transfer.spec.key()}
    assert len(st) == 4 and st.count("scratch") == 3 and st.count("transfer") == 1
    assert all(st.is_done(k) for k in keys)
    with pytest.raises(ValueError, match="valid: transfer, scratch"):
        st.count("both")
    # frame: spec fields, numbers as fractions, sorted; filters as for the transfer frame
    row = st.scratch_frame(score="snip", bn_warmup="paper").iloc[0]
    assert row["final_acc"] == 0.5 and row["density"] == 0.1 and row["collapsed"] == 1 and row["epochs"] == 2
    assert row["model"] == "resnet20" and row["train_size"] == 500 and row["elapsed"] == 2.0
    assert list(st.scratch_frame()["score"]) == ["random", "snip", "snip"]
    with pytest.raises(ValueError, match="unknown column 'suite'.*bn_warmup"):
        st.scratch_frame(suite="digits")
    back = st.scratch_results(score="snip")
    assert [r.spec for r in back] == [runs[0].spec, runs[1].spec]
    assert back[0].curve == runs[0].curve and back[0].layer_density == runs[0].layer_density
    assert not back[0].cached
    # plain SQL sees the denormalised columns too
    con = sqlite3.connect(tmp_path / "r.sqlite")
    assert con.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1
    assert con.execute(
        "SELECT score, bn_warmup, final_acc FROM scratch_results WHERE score = 'random'"
    ).fetchone() == ("random", "off", 0.4)
    con.close()
    # failures carry their kind and clear on success, per kind
    st.record_failure(fake_scratch_result(seed=9).spec, "boom")
    st.record_failure(fake_result(seed=9).spec, "bang")
    assert list(st.failures("scratch")["error"]) == ["boom"] and list(st.failures("transfer")["error"]) == [
        "bang"
    ]
    assert set(st.failures()["kind"]) == {"scratch", "transfer"}
    st.record(fake_scratch_result(seed=9), elapsed=1.0)
    assert st.failures("scratch").empty and len(st.failures()) == 1
    # delete works on either kind
    assert st.delete([keys[0], transfer.spec.key()]) == 2
    assert st.count("scratch") == 3 and st.count("transfer") == 0


def test_record_run_files_a_scratch_result_with_its_total_time(tmp_path):
    st = ResultsStore(tmp_path / "r.sqlite")
    res = fake_scratch_result()
    assert store_mod.record_run(res, store=st) == res.spec.key()
    assert st.scratch_frame().iloc[0]["elapsed"] == 4.0  # timings["total"], not the sum of overlapping stages
    assert store_mod.compute_seconds(res) == 4.0 and store_mod.compute_seconds(fake_result()) == 2.0


def _as_layout_1(path: Path) -> None:
    """Turn a store file into what layout 1 wrote: no from-scratch table, failures without a kind."""
    con = sqlite3.connect(path)
    con.executescript(
        """
        DROP TABLE scratch_results;
        CREATE TABLE failures_old (key TEXT PRIMARY KEY, spec_json TEXT NOT NULL, error TEXT NOT NULL,
            traceback TEXT, attempts INTEGER NOT NULL DEFAULT 1, host TEXT, failed_at TEXT NOT NULL);
        INSERT INTO failures_old SELECT key, spec_json, error, traceback, attempts, host, failed_at FROM failures;
        DROP TABLE failures;
        ALTER TABLE failures_old RENAME TO failures;
        PRAGMA user_version = 1;
        """
    )
    con.close()


def test_a_layout_1_store_is_migrated_in_place_keeping_its_rows(tmp_path, monkeypatch):
    path = tmp_path / "r.sqlite"
    old = ResultsStore(path)
    for seed in (0, 1):
        old.record(fake_result(seed=seed), elapsed=1.0)
    old.record_failure(fake_result(seed=5).spec, "worker died")
    _as_layout_1(path)

    # read-only, it reads as it is: transfer rows, no from-scratch rows, failures of the transfer kind
    with monkeypatch.context() as m:
        m.setattr(store_mod.os, "access", lambda p, mode: False)
        st_ro = ResultsStore(path)
        assert st_ro.readonly and len(st_ro.frame()) == 2 and st_ro.scratch_frame().empty
        assert st_ro.count("scratch") == 0 and list(st_ro.failures()["kind"]) == ["transfer"]
        assert st_ro.scratch_results() == [] and len(st_ro) == 2
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1  # reading changed nothing
    con.close()

    st = ResultsStore(path)  # writable: migrated to the current layout
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_mod.STORE_VERSION == 2
    con.close()
    assert sorted(st.frame()["seed"]) == [0, 1]  # nothing dropped
    assert list(st.failures()["kind"]) == ["transfer"] and st.failures().iloc[0]["error"] == "worker died"
    st.record(fake_scratch_result(), elapsed=1.0)
    assert st.count("scratch") == 1 and st.count("transfer") == 2


def test_a_store_from_a_newer_layout_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsStore(path).record(fake_result(), elapsed=1.0)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {store_mod.STORE_VERSION + 1}")
    con.close()
    before = path.read_bytes()
    with pytest.raises(store_mod.StoreError, match="newer version") as info:
        ResultsStore(path)
    assert info.value.reason == "newer" and "--store" in info.value.hint
    assert path.read_bytes() == before
