"""From-scratch sweeps: config files, expansion, the shared sweep runner, resume after a kill, report, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pai_core import datasets, scratch
from pai_core.__main__ import main
from pai_core.scratch_spec import EXTREME_SPARSITIES, ScratchSpec
from pai_core.scratch_sweep import ScratchSweepConfig, expand, plan, report
from pai_core.store import ResultsStore
from pai_core.sweep import SweepConfig, load_config, run_sweep

REPO = Path(__file__).resolve().parent.parent
HAVE_FASHION = any(Path(d).is_dir() for d in datasets.FASHION_DIRS)
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed")

#: A tiny real grid: 2 dense + random 2x1x2 + snip 2x2x2 = 14 runs of about a second each.
TINY = {
    "kind": "scratch",
    "models": ["test_vgg"],
    "train_size": 200,
    "test_size": 100,
    "scores": ["random", "snip"],
    "sparsities": [0.5, 0.9],
    "bn_warmups": ["off", "paper"],
    "seeds": [0, 1],
    "schedule": "smoke",
    "device": "cpu",
}


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    return tmp_path / "cache"


def _write(path: Path, data: dict | str) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- config and expansion


def test_config_file_normalises_what_yaml_hands_over(tmp_path):
    path = _write(
        tmp_path / "s.yaml",
        "kind: scratch\nmodels: resnet20, vgg11\nscores: [random, snip]\nsparsities: [90%, 0.99]\n"
        "bn_warmups: [off, paper]\nseeds: 0, 1\ntrain-size: 500\ntest_size: all\n",
    )
    cfg = load_config(path)
    assert isinstance(cfg, ScratchSweepConfig)
    assert cfg.models == ("resnet20", "vgg11") and cfg.scores == ("random", "snip")
    assert cfg.sparsities == (0.9, 0.99) and cfg.seeds == (0, 1)
    assert cfg.bn_warmups == ("off", "paper")  # YAML 1.1 reads a bare `off` as false
    assert cfg.train_size == 500 and cfg.test_size is None
    assert ScratchSweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert ScratchSweepConfig().sparsity_values() == EXTREME_SPARSITIES
    paper = ScratchSweepConfig(scores="paper")
    assert paper.score_names() == tuple(scratch.default_scores()) and "random" in paper.score_names()
    assert any("paper" in n for n in plan(paper.replace(models=("test_vgg",)))[1])


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"models": ["resnet18"]}, "unknown network 'resnet18'; valid: resnet20"),
        ({"scores": ["obs"]}, "unknown score 'obs'; valid:"),
        ({"sparsities": [99.5]}, "not a fraction"),
        ({"bn_warmups": ["on"]}, "unknown BatchNorm warm-up 'on'; valid: off, paper, reset"),
        ({"dataset": "cifar"}, "unknown dataset 'cifar'; valid: fashion-mnist"),
        ({"schedule": "long"}, "unknown schedule 'long'; valid: paper, cpu-short, smoke"),
        ({"train_size": 0}, "train_size must be a positive"),
        ({"score_options": {"hutchinson": {"probes": 0}}}, "score_options"),
        ({"seeds": []}, "seeds is empty"),
        ({"suite": "digits"}, r"unknown from-scratch sweep setting\(s\) \['suite'\]; valid:"),
    ],
)
def test_bad_configs_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ScratchSweepConfig.from_dict(bad)


def test_plan_follows_plan_grid_and_gives_each_score_its_options():
    cfg = ScratchSweepConfig(
        models=("test_vgg", "test_resnet"),
        scores=("magnitude", "hutchinson"),
        sparsities=(0.9,),
        seeds=(0, 1),
        score_options={"hutchinson": {"probes": 3}},
    )
    specs, notes = plan(cfg)
    # per network: 2 dense + magnitude (off only) 2 + hutchinson x 2 warm-ups x 2 seeds
    assert len(specs) == 2 * (2 + 2 + 4) and len({s.key() for s in specs}) == len(specs)
    assert [s.model for s in specs[:8]] == ["test_vgg"] * 8
    assert {s.score_options for s in specs if s.score == "hutchinson" and s.sparsity} == {(("probes", 3),)}
    assert {s.bn_warmup for s in specs if s.score == "magnitude" and s.sparsity} == {"off"}
    assert any("magnitude" in n and "no data" in n for n in notes)
    # the same specs, in the same order, as plan_grid per network (options added to their score)
    want = [
        s.replace(score_options=(("probes", 3),)) if s.score == "hutchinson" and s.sparsity else s
        for m in cfg.models
        for s in scratch.plan_grid(
            ScratchSpec(model=m), ["magnitude", "hutchinson"], [0.9], ["off", "paper"], [0, 1], dense=True
        )
    ]
    assert [s.key() for s in specs] == [s.key() for s in want]
    assert [s.sparsity for s in specs[:2]] == [0.0, 0.0]


def test_the_shipped_cpu_sweep_file():
    cfg = load_config(REPO / "sweeps" / "scratch_cpu.yaml")
    assert isinstance(cfg, ScratchSweepConfig) and cfg.sparsity_values() == EXTREME_SPARSITIES
    assert {"random", "magnitude"} <= set(cfg.score_names()) and cfg.seeds == (0, 1, 2)
    specs = expand(cfg)
    data_driven = [s for s in cfg.score_names() if not scratch.is_data_free(s)]
    free = len(cfg.score_names()) - len(data_driven)
    assert len(specs) == 3 + 3 * 5 * (free + 2 * len(data_driven))  # 183 with the 7 scores it lists
    assert {(s.model, s.width, s.dataset, s.train_size, s.test_size, s.schedule) for s in specs} == {
        ("vgg11", 0.25, "fashion-mnist", 2500, 2000, "cpu-short")
    }
    assert max(s.sparsity for s in specs) == 0.995


def test_load_config_tells_the_kinds_apart(tmp_path):
    transfer = load_config(REPO / "sweeps" / "offline_demo.yaml")
    assert isinstance(transfer, SweepConfig)
    assert isinstance(
        load_config(_write(tmp_path / "t.yaml", {"kind": "transfer", "scores": ["magnitude"]})), SweepConfig
    )
    with pytest.raises(ValueError, match="from-scratch sweep .*load_config"):
        SweepConfig.from_file(REPO / "sweeps" / "scratch_cpu.yaml")
    with pytest.raises(ValueError, match="unknown kind 'finetune'; valid: transfer, scratch"):
        load_config(_write(tmp_path / "k.yaml", {"kind": "finetune"}))


# ----------------------------------------------------------------------------- running, resuming, reporting


@needs_fashion
def test_in_process_sweep_records_the_scratch_kind_and_skips_finished_runs(own_cache, monkeypatch):
    cfg = ScratchSweepConfig.from_dict(
        {**TINY, "scores": ["snip"], "sparsities": [0.9], "seeds": [0], "dense": False}
    )
    store = ResultsStore()
    rep = run_sweep(cfg, store=store, progress=False)
    assert rep.complete and rep.total == 2 and len(rep.finished) == 2 and rep.backend == "in-process"
    assert store.count("scratch") == 2 and store.count("transfer") == 0
    assert set(store.scratch_frame()["bn_warmup"]) == {"off", "paper"}
    assert (store.scratch_frame()["elapsed"] > 0).all()

    def must_not_run(*a, **k):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(scratch, "run_scratch", must_not_run)
    again = run_sweep(cfg, store=store, progress=False)
    assert again.skipped == 2 and again.finished == [] and again.complete


@needs_fashion
def test_a_failing_run_is_reported_and_the_sweep_goes_on(own_cache):
    good = ScratchSpec(
        model="test_vgg", train_size=200, test_size=100, schedule="smoke", sparsity=0.0, device="cpu"
    )
    bad = good.replace(dataset="cifar10")  # no CIFAR folder: a DataError, never retried
    store = ResultsStore()
    rep = run_sweep([bad, good], store=store, progress=False)
    assert list(rep.failed) == [bad.key()] and "cifar10" in rep.failed[bad.key()]
    assert rep.finished == [good.key()]
    f = store.failures("scratch")
    assert list(f["key"]) == [bad.key()] and f.iloc[0]["attempts"] == 1 and store.failures("transfer").empty


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """`python -m pai_core sweep` on the tiny from-scratch grid, SIGKILLed after its first row, then run again."""
    if not HAVE_FASHION:
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    root = tmp_path_factory.mktemp("scratch-sweep")
    cfg = _write(root / "tiny.yaml", TINY)
    db = root / "cache" / "results.sqlite"
    env = {
        **os.environ,
        "PAI_CACHE_DIR": str(root / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    env.pop("PAI_RESULTS_DB", None)
    cmd = [sys.executable, "-m", "pai_core", "sweep", str(cfg), "--no-progress"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if db.exists() and ResultsStore(db).count("scratch") >= 1:
                break
            assert proc.poll() is None, f"sweep ended before its first row:\n{proc.communicate()[0]}"
            time.sleep(0.05)
        else:
            pytest.fail("no row within 300 s")
    finally:
        proc.kill()
        proc.communicate()
    before = ResultsStore(db).scratch_frame()
    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    return {
        "before": before,
        "after": ResultsStore(db).scratch_frame(),
        "stdout": again.stdout,
        "db": db,
        "root": root,
    }


@pytest.mark.slow
def test_resume_after_kill_redoes_nothing_finished(killed_and_resumed):
    before, after = killed_and_resumed["before"], killed_and_resumed["after"]
    assert 1 <= len(before) < 14, "the sweep was not killed mid-run"
    assert len(after) == 14 and after["key"].is_unique
    kept = after.set_index("key").loc[before["key"]]
    # rows written before the kill are untouched: not recomputed, not rewritten
    assert list(kept["finished_at"]) == list(before["finished_at"])
    assert list(kept["final_acc"]) == list(before["final_acc"])
    assert (
        f"14 specs: {len(before)} already done, {14 - len(before)} run now, 0 failed"
        in killed_and_resumed["stdout"]
    )
    assert "| SNIP | paper |" in killed_and_resumed["stdout"]  # the summary table of the whole grid
    assert set(after["score"]) == {"magnitude", "random", "snip"}  # dense runs are filed as magnitude at 0
    assert (after["pruned_nonzero"] == 0).all() and ResultsStore(killed_and_resumed["db"]).count(
        "transfer"
    ) == 0


@pytest.mark.slow
def test_report_draws_the_papers_figures_from_the_store(killed_and_resumed, tmp_path, capsys):
    db = killed_and_resumed["db"]
    paths = report(ResultsStore(db), tmp_path / "rep")
    assert {
        "results_csv",
        "grid_csv",
        "summary_md",
        "accuracy_vs_sparsity",
        "warmup",
        "layer_density",
    } <= set(paths)
    html = paths["accuracy_vs_sparsity"].read_text()
    assert "plotly" in html and "no warm-up" in html and "SNIP" in html
    assert "collapsed" in paths["layer_density"].read_text()
    grid = pd.read_csv(paths["grid_csv"])
    # dense + random(2 sparsities) + snip (2 sparsities x 2 warm-ups), each over 2 seeds
    assert len(grid) == 1 + 2 + 4 and set(grid["n"]) == {2} and grid["std"].notna().all()
    assert len(pd.read_csv(paths["results_csv"])) == 14
    assert "±" in paths["summary_md"].read_text()
    # the CLI, on a subset
    out = tmp_path / "cli"
    assert (
        main(["report", "--kind", "scratch", "--store", str(db), "--score", "snip", "--out", str(out)]) == 0
    )
    assert len(pd.read_csv(out / "results.csv")) == 8 and (out / "warmup.html").exists()
    # an empty selection says so (status 1); settings of the other kind are refused (status 2)
    assert (
        main(
            [
                "report",
                "--kind",
                "scratch",
                "--store",
                str(db),
                "--model",
                "resnet20",
                "--out",
                str(tmp_path / "n"),
            ]
        )
        == 1
    )
    assert main(["report", "--kind", "scratch", "--store", str(db), "--suite", "digits"]) == 2
    assert main(["report", "--store", str(db), "--dataset", "fashion-mnist"]) == 2
    err = capsys.readouterr().err
    assert "--suite: no such setting for from-scratch runs" in err and "add --kind scratch" in err
    # the transfer report of the same store finds no transfer rows
    assert main(["report", "--store", str(db), "--out", str(tmp_path / "t")]) == 1


def test_cli_dry_run_and_flags_of_the_other_kind(own_cache, tmp_path, capsys):
    cfg = _write(tmp_path / "tiny.yaml", TINY)
    assert main(["sweep", str(cfg), "--scores", "snip", "--seeds", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "kind: scratch" in out
        and "5 specs, 0 already in" in out
        and "test_vgg/snip/90.00%/warm-up paper/seed0" in out
    )
    assert main(["sweep", str(cfg), "--suite", "digits", "--finetune", "smoke"]) == 2
    assert "--suite, --finetune: no such setting in a from-scratch sweep" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the scratch command


@needs_fashion
def test_scratch_cli_run_and_grid_record_into_the_store(own_cache, tmp_path, capsys):
    tiny = [
        "--model",
        "test_vgg",
        "--train-size",
        "200",
        "--test-size",
        "100",
        "--schedule",
        "smoke",
        "--device",
        "cpu",
    ]
    assert (
        main(
            [
                "scratch",
                "run",
                *tiny,
                "--score",
                "snip",
                "--sparsity",
                "90%",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch   1" in out and "q= 90.00%" in out
    store = ResultsStore()
    assert (
        store.count("scratch") == 1
        and json.loads((tmp_path / "r.json").read_text())["spec"]["score"] == "snip"
    )

    rc = main(
        ["scratch", "grid", *tiny, "--scores", "snip,hutchinson", "--sparsities", "0.9", "--bn-warmup", "off",
         "--seeds", "0", "--score-option", "probes=2", "--no-progress", "--out", str(tmp_path / "g")]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 runs: 1 already done, 1 run now, 0 failed" in out  # snip at 90 % came from `run`
    hutch = store.scratch_results(score="hutchinson")
    assert [r.spec.score_options for r in hutch] == [(("probes", 2),)]  # the option went to hutchinson only
    assert store.scratch_frame(score="snip").iloc[0]["score_options"] == "[]"
    assert (tmp_path / "g" / "accuracy_vs_sparsity.html").exists() and (
        tmp_path / "g" / "summary.md"
    ).exists()
    assert main(["scratch", "grid", *tiny, "--scores", "snip", "--score-option", "probes=2"]) == 2
    assert "none of the scores snip takes it" in capsys.readouterr().err


def test_scratch_cli_errors_are_one_line(own_cache, tmp_path, capsys):
    assert main(["scratch", "run", "--dataset", "cifar10", "--data-root", str(tmp_path / "none")]) == 2
    text = capsys.readouterr().err
    err = [ln for ln in text.strip().splitlines() if not ln.startswith("[")]  # the progress bar's own line
    assert len(err) == 1 and err[0].startswith("error: cifar10") and "does not exist" in err[0]
    assert "Traceback" not in text
    assert not list(own_cache.glob("scratch-*/*.json"))  # nothing half-written
    with pytest.raises(SystemExit):
        main(["scratch", "run", "--sparsity", "99.5"])  # a bare 99.5 is refused, not read as 99.5 %
    assert "not a fraction" in capsys.readouterr().err


# ----------------------------------------------------------------------------- Ray


@pytest.mark.ray
@pytest.mark.slow
@needs_fashion
def test_ray_runs_the_scratch_kind_like_in_process(tmp_path, monkeypatch):
    """The same 4 runs on a local 2-CPU Ray instance (own cache) give the same accuracies in-process."""
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    specs = expand(
        ScratchSweepConfig.from_dict({**TINY, "scores": ["snip"], "sparsities": [0.9], "seeds": [0]})
    )
    assert len(specs) == 3
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "local"))
    local = ResultsStore(tmp_path / "local.sqlite")
    run_sweep(specs, store=local, progress=False)
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "ray"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = ResultsStore(tmp_path / "ray.sqlite")
        rep = run_sweep(specs, store=remote, progress=False)
    finally:
        ray.shutdown()
    assert rep.complete and rep.backend.startswith("ray") and remote.count("scratch") == 3
    a = local.scratch_frame().set_index("key")["final_acc"]
    b = remote.scratch_frame().set_index("key")["final_acc"]
    assert a.sort_index().tolist() == b.sort_index().tolist()


def test_report_draws_one_set_of_figures_per_setting(tmp_path):
    """Runs of two networks are never averaged together: one set of figures each, named by setting."""
    from tests.test_store import fake_scratch_result

    store = ResultsStore(tmp_path / "r.sqlite")
    for model in ("resnet20", "vgg11"):
        for seed, acc in ((0, 0.6), (1, 0.7)):
            for q in (0.0, 0.9, 0.99):
                store.record(fake_scratch_result(model=model, seed=seed, sparsity=q, acc=acc), elapsed=1.0)
    paths = report(store, tmp_path / "rep")
    stems = sorted(k.split(":", 1)[1] for k in paths if k.startswith("accuracy_vs_sparsity:"))
    assert stems == [
        "resnet20_fashion-mnist_train-500_schedule-cpu-short",
        "vgg11_fashion-mnist_train-500_schedule-cpu-short",
    ]
    assert all(paths[f"{f}:{s}"].exists() for f in ("warmup", "layer_density") for s in stems)
    summary = paths["summary_md"].read_text()
    assert summary.count("Dense (unpruned) network: 65.0 ± 7.1 (n=2, 1.0 collapsed).") == 2  # a fake result
    assert "**resnet20, fashion-mnist, train 500, schedule cpu-short**" in summary
    grid = pd.read_csv(paths["grid_csv"])
    assert len(grid) == 2 * 3 and set(grid["n"]) == {2}
    # a selection of one network: unsuffixed names
    one = report(store, tmp_path / "one", model="vgg11")
    assert one["accuracy_vs_sparsity"].name == "accuracy_vs_sparsity.html"
