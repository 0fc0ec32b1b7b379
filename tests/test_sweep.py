"""Sweeps: config files, expansion, in-process and Ray backends, resume after a kill, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pai_core import experiment, masks
from pai_core import sweep as sweep_mod
from pai_core.__main__ import main
from pai_core.results import ExperimentSpec
from pai_core.store import ResultsStore
from pai_core.sweep import SweepConfig, expand, plan, report, run_sweep

REPO = Path(__file__).resolve().parent.parent

#: The offline default, small: 2 sources x 3 scores x 2 sparsities = 12 specs, smoke fine-tuning.
DEMO = {
    "models": ["efficientnet_lite0"],
    "suite": "digits",
    "sources": [0, 1],
    "scores": ["magnitude", "diag", "random"],
    "sparsities": [0.36, 0.5904],
    "finetune": "smoke",
    "images_per_class": 10,
    "image_size": 64,
}

#: Random-weight test network: sub-second specs for the bookkeeping tests.
TINY = {
    "models": ["test_resnet"],
    "suite": "digits",
    "sources": [0],
    "scores": ["magnitude", "random"],
    "sparsities": [0.5],
    "images_per_class": 5,
    "image_size": 32,
}


# ----------------------------------------------------------------------------- config and expansion


def test_config_files_yaml_and_json_normalise(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "models: efficientnet_lite0, mobilenet_v2\nscores: [magnitude, kfac]\nsparsities: [36%, 59.04%]\n"
        "images-per-class: 10\nfinetune: none\nsources: [0, 1]\n"
    )
    cfg = SweepConfig.from_file(tmp_path / "s.yaml")
    assert cfg.models == ("efficientnet_lite0", "mobilenet_v2")
    assert cfg.sparsities == (0.36, 0.5904)  # percents (written with %) read as such, keys match the CLI's
    assert cfg.images_per_class == 10 and cfg.finetune is None and cfg.sources == (0, 1)
    (tmp_path / "s.json").write_text(json.dumps(cfg.to_dict()))
    assert SweepConfig.from_file(tmp_path / "s.json") == cfg
    assert SweepConfig(sparsities="paper").sparsity_values() == tuple(masks.PAPER_SPARSITIES)
    assert hash(SweepConfig(score_options={"hutchinson": {"probes": 3}}, checkpoints={"resnet50": "/x.pth"}))


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"colour": "red"}, "unknown sweep setting.*colour.*valid:.*models"),
        ({"scores": ["obd"]}, "unknown score 'obd'; valid:.*magnitude"),
        ({"models": ["resnet51"]}, "unknown model 'resnet51'; valid:.*resnet50"),
        ({"suite": "mnist"}, "unknown suite"),
        ({"finetune": "forever"}, "unknown fine-tuning schedule"),
        ({"sparsities": [100]}, "sparsities"),
        (
            {"sparsities": [59.04]},
            "sparsities: sparsity 59.04 is not a fraction.*59.04%",
        ),  # no silent percent
    ],
)
def test_bad_configs_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        SweepConfig.from_dict(bad)


def test_expand_all_sources_and_px_skipped_on_vit():
    cfg = SweepConfig(
        models=("test_resnet", "test_vit"),
        scores=("magnitude", "px"),
        sparsities=(0.5, 0.6),
        images_per_class=5,
    )
    specs, notes = plan(cfg)
    n_tasks = len(experiment.get_suite("digits", None, 5, 0).tasks)
    assert len(specs) == n_tasks * 2 * 2 + n_tasks * 1 * 2
    assert not any(s.model == "test_vit" and s.score == "px" for s in specs)
    assert notes == ["px skipped on test_vit (a ViT), as in the paper"]
    assert sorted({s.source for s in specs}) == list(range(n_tasks))
    assert len({s.key() for s in specs}) == len(specs)
    # consecutive specs differ in sparsity first: one process reuses scores between them
    assert (specs[0].score, specs[0].sparsity, specs[1].score, specs[1].sparsity) == (
        "magnitude",
        0.5,
        "magnitude",
        0.6,
    )


def test_shipped_sweep_files():
    demo = SweepConfig.from_file(REPO / "sweeps" / "offline_demo.yaml")
    assert len(expand(demo)) == 12
    paper = SweepConfig.from_file(REPO / "sweeps" / "paper_fig3.yaml")
    assert paper.sparsities == "paper" and paper.finetune == "paper" and paper.suite == "imagenet10"
    # sources given explicitly: no ImageNet needed to count the grid
    specs = expand(paper.replace(sources=tuple(range(10))))
    assert len(specs) == (3 * 6 + 2 * 5) * 10 * 7 == 1960


# ----------------------------------------------------------------------------- in-process bookkeeping


def test_in_process_sweep_skips_finished_specs(tmp_path, monkeypatch):
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    store = ResultsStore()
    rep = run_sweep(SweepConfig.from_dict(TINY), store=store, progress=False)
    assert rep.complete and rep.total == 2 and len(rep.finished) == 2 and rep.skipped == 0
    assert len(store) == 2 and rep.backend == "in-process"
    stamps = dict(zip(store.frame()["key"], store.frame()["finished_at"]))

    def must_not_run(*a, **k):
        raise AssertionError("a finished spec was run again")

    monkeypatch.setattr(experiment, "run", must_not_run)
    again = run_sweep(SweepConfig.from_dict(TINY), store=store, progress=False)
    assert again.skipped == 2 and again.finished == [] and again.complete
    assert dict(zip(store.frame()["key"], store.frame()["finished_at"])) == stamps


def test_sweep_records_into_its_store_only(tmp_path, monkeypatch):
    """A sweep records into its own store (with its timing) and nowhere else: runs write no store."""
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    mine = ResultsStore(tmp_path / "mine.sqlite")
    run_sweep(SweepConfig.from_dict(TINY), store=mine, progress=False)
    assert len(mine) == 2 and len(ResultsStore()) == 0


def test_failures_are_retried_reported_and_do_not_stop_the_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    specs = expand(SweepConfig.from_dict(TINY))
    bad = specs[0].replace(source=7)  # ValueError: deterministic, never retried
    flaky = specs[1]
    calls: list[str] = []
    real = experiment.run

    def run_once_flaky(spec, progress=None, **kw):
        calls.append(spec.key())
        if spec == flaky and calls.count(spec.key()) == 1:
            raise RuntimeError("CUDA error: transient")
        return real(spec, progress, **kw)

    monkeypatch.setattr(experiment, "run", run_once_flaky)
    store = ResultsStore()
    rep = run_sweep([bad, *specs], store=store, progress=False)
    assert list(rep.failed) == [bad.key()] and "out of range" in rep.failed[bad.key()]
    assert calls.count(bad.key()) == 1 and calls.count(flaky.key()) == 2
    assert set(rep.finished) == {s.key() for s in specs} and not rep.complete
    f = store.failures()
    assert list(f["key"]) == [bad.key()] and f.iloc[0]["attempts"] == 1  # the flaky one cleared on success


# ----------------------------------------------------------------------------- the offline default


def _write_demo(root: Path) -> Path:
    path = root / "demo.yaml"
    path.write_text(yaml.safe_dump(DEMO))
    return path


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """`python -m pai_core sweep` on the offline default, SIGKILLed after its first row, then run again.

    Single-threaded (OMP_NUM_THREADS=1), as each Ray task is: scores are sums of many float terms,
    and a different thread count changes their rounding, which flips a few weights at the mask
    threshold. Same threads, same numbers.
    """
    root = tmp_path_factory.mktemp("sweep-inproc")
    cfg = _write_demo(root)
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
            if db.exists() and len(ResultsStore(db)) >= 1:
                break
            assert proc.poll() is None, f"sweep ended before its first row:\n{proc.communicate()[0]}"
            time.sleep(0.05)
        else:
            pytest.fail("no row within 300 s")
    finally:
        proc.kill()
        proc.communicate()
    before = ResultsStore(db).frame()
    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    return {"before": before, "after": ResultsStore(db).frame(), "stdout": again.stdout, "db": db}


@pytest.mark.slow
def test_resume_after_kill_redoes_nothing_finished(killed_and_resumed):
    before, after = killed_and_resumed["before"], killed_and_resumed["after"]
    assert 1 <= len(before) < 12, "the sweep was not killed mid-run"
    assert len(after) == 12 and after["key"].is_unique
    kept = after.set_index("key").loc[before["key"]]
    # rows written before the kill are untouched: not recomputed, not rewritten
    assert list(kept["finished_at"]) == list(before["finished_at"])
    assert list(kept["tasks"]) == list(before["tasks"])
    assert (
        f"12 specs: {len(before)} already done, {12 - len(before)} run now, 0 failed"
        in killed_and_resumed["stdout"]
    )
    assert set(after["score"]) == {"magnitude", "diag", "random"} and after["source_finetuned"].notna().all()


@pytest.mark.slow
def test_report_renders_the_grid(killed_and_resumed, tmp_path):
    db = killed_and_resumed["db"]
    paths = report(ResultsStore(db), tmp_path / "rep", model="efficientnet_lite0")
    html = paths["html"].read_text()
    assert "plotly" in html and "magnitude" in html and "59.04" in html
    import pandas as pd

    grid = pd.read_csv(paths["grid_csv"])
    assert len(grid) == 6 and set(grid["n_sources"]) == {2}
    assert len(pd.read_csv(paths["results_csv"])) == 12
    # the CLI, on a subset
    out = tmp_path / "cli"
    assert main(["report", "--store", str(db), "--score", "magnitude,diag", "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "grid.csv")) == 4 and (out / "fig3.html").exists()
    # an empty selection says so (status 1) but still writes the CSV header
    assert main(["report", "--store", str(db), "--model", "resnet50", "--out", str(tmp_path / "none")]) == 1


def test_cli_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _write_demo(tmp_path)
    assert main(["sweep", str(cfg), "--scores", "magnitude", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 specs, 0 already in" in out and "efficientnet_lite0/src1/magnitude/59.04%" in out


# ----------------------------------------------------------------------------- Ray


@pytest.mark.ray
@pytest.mark.slow
def test_ray_matches_in_process_and_reports_failures(killed_and_resumed, tmp_path, monkeypatch):
    """The same 12 specs on a local 2-CPU Ray instance (own cache): identical accuracies.

    Also: a spec that raises once is resubmitted and succeeds; a bad spec fails once (not retried),
    is reported and recorded, and the sweep goes on.
    """
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray gives a 1-CPU task anyway, unless already set
    specs = expand(SweepConfig.from_dict(DEMO))
    bad = ExperimentSpec(model="test_resnet", source=9, images_per_class=5, image_size=32)
    real_execute = sweep_mod._ray_execute

    def flaky(spec_json: str) -> dict:  # local function: Ray ships it by value, it calls the real one
        import json as _json
        import os as _os
        from pathlib import Path as _Path

        d = _json.loads(spec_json)
        marker = _Path(_os.environ["PAI_CACHE_DIR"]) / "flaky-once"
        if d["score"] == "random" and d["source"] == 1 and d["sparsity"] == 0.36 and not marker.exists():
            marker.touch()
            raise RuntimeError("transient failure injected by the test")
        return real_execute(spec_json)

    monkeypatch.setattr(sweep_mod, "_ray_execute", flaky)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        store = ResultsStore(tmp_path / "ray.sqlite")
        rep = run_sweep([*specs, bad], store=store, progress=False)
    finally:
        ray.shutdown()
    assert rep.backend.startswith("ray") and "CPU" in rep.backend
    assert list(rep.failed) == [bad.key()] and "out of range" in rep.failed[bad.key()]
    assert (tmp_path / "cache" / "flaky-once").exists()  # the injected failure happened …
    fails = store.failures()
    assert list(fails["key"]) == [bad.key()] and fails.iloc[0]["attempts"] == 1  # … and was retried away

    ray_rows = store.frame().set_index("key")
    local_rows = killed_and_resumed["after"].set_index("key")
    assert sorted(ray_rows.index) == sorted(local_rows.index)
    for key in local_rows.index:
        assert json.loads(ray_rows.loc[key, "tasks"]) == json.loads(local_rows.loc[key, "tasks"]), key
    assert set(ray_rows["host"]) == set(local_rows["host"])  # one machine here; the column names it
