"""The OBS-corrected stage, cross-domain tasks, the oracle mask and task alignment on the offline
default encoder (EfficientNet-Lite0, real weights) in a tiny setting: real runs end to end."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from pai_core import experiment, repair, scores, store, task_pairs, transfer_stages
from pai_core.results import ExperimentSpec

TINY = dict(images_per_class=10, image_size=64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _fashion_installed() -> bool:
    return any(t.name.startswith("fashion") for t in experiment.get_suite("digits", None, 10, 0).tasks)


needs_fashion = pytest.mark.skipif(
    not _fashion_installed(), reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
)


def test_alignment_of_a_task_with_itself_is_one_and_with_another_is_less():
    spec = ExperimentSpec(score="diag", sparsity=0.3, **TINY)
    same = task_pairs.alignment_run(spec, spec.source, k=4)
    for key, value in same.summary().items():
        if not key.endswith("chance"):
            assert value == pytest.approx(1.0, abs=1e-9), key
    n_tasks = len(experiment.prepare(spec).suite.tasks)
    other = task_pairs.alignment_run(spec, n_tasks - 1, k=4)
    assert other.source == "digits 0-4"
    for key, value in other.summary().items():
        assert not math.isnan(value), key
    assert -1.0 <= other.fisher_pearson < 1.0 and other.fisher_spearman < 1.0
    assert 0.0 < other.mask_jaccard < 1.0
    assert 0.0 < other.a_overlap < 1.0 and other.a_chance < 1.0
    # every layer of the encoder has a row; depthwise B is undefined and said so
    assert len(other.layers) == len(experiment.get_masks(experiment.prepare(spec)))
    assert any("B overlap undefined" in n for n in other.notes)


def test_factors_are_cached_per_task(monkeypatch):
    spec = ExperimentSpec(score="magnitude", **TINY)
    ctx = experiment.prepare(spec)
    one = task_pairs.task_context(ctx, 1)
    first = transfer_stages.get_factors(one)
    calls = []
    monkeypatch.setattr(scores, "kfac_factors", lambda *a, **k: calls.append(1))
    again = transfer_stages.get_factors(task_pairs.task_context(experiment.prepare(spec), 1))
    assert not calls and set(again) == set(first)
    assert all(torch.equal(again[n].A, first[n].A) and torch.equal(again[n].B, first[n].B) for n in first)
    assert set(first) == set(experiment.get_masks(ctx))  # every weight of the encoder covered
    # another task's factors differ (they are that task's, through its own head)
    monkeypatch.undo()
    src = transfer_stages.get_factors(ctx)
    assert any(not torch.equal(src[n].B, first[n].B) for n in first)
    with pytest.raises(ValueError, match="out of range; the run's tasks are 0: digits 0-4"):
        task_pairs.task_context(ctx, 9)


def test_oracle_mask_on_the_source_itself_and_for_a_data_free_score():
    spec = ExperimentSpec(score="diag", sparsity=0.4, **TINY)
    same = task_pairs.oracle_run(spec, spec.source)
    assert same.jaccard == 1.0 and same.with_own == same.with_source and same.price == 0.0
    other = task_pairs.oracle_run(spec, 1)
    assert other.task == "digits 5-9" and 0.0 <= other.with_source <= 1.0 and 0.0 <= other.with_own <= 1.0
    assert other.jaccard < 1.0 and not other.cross_domain
    base = experiment.run(spec)
    assert other.with_source == base.tasks[1].zero_shot and other.dense == base.tasks[1].dense
    own = experiment.run(spec.replace(source=1))
    assert other.with_own == own.tasks[1].zero_shot
    assert task_pairs.OracleResult.from_dict(other.to_dict()) == other
    mag = task_pairs.oracle_run(spec.replace(score="magnitude"), 1)
    assert mag.jaccard == 1.0 and mag.with_own == mag.with_source


def test_repaired_stage_in_a_run_evaluates_every_task_and_is_cached(monkeypatch):
    spec = ExperimentSpec(score="magnitude", sparsity=0.3, repair="a", **TINY)
    res = experiment.run(spec)
    plain = experiment.run(spec.replace(repair=None))
    assert res.spec.key() != plain.spec.key()
    assert [t.zero_shot for t in res.tasks] == [t.zero_shot for t in plain.tasks]  # same mask, same stage
    assert all(t.repaired is not None and 0.0 <= t.repaired <= 1.0 for t in res.tasks)
    assert all(t.repaired is None for t in plain.tasks)
    assert res.summary()["source_repaired"] == res.tasks[0].repaired
    assert res.summary()["transfer_repaired"] == pytest.approx(
        sum(t.repaired for t in res.tasks[1:]) / (len(res.tasks) - 1)
    )
    assert "repair" in res.timings
    # the repaired weights are cached: a fresh run (result cache bypassed) solves nothing again
    monkeypatch.setattr(repair, "repair_", lambda *a, **k: pytest.fail("repair recomputed"))
    again = experiment.run(spec, use_cache=False)
    assert [t.repaired for t in again.tasks] == [t.repaired for t in res.tasks]
    # masked weights are exactly zero in the cached state, and the solve lowered the layer costs
    ctx = experiment.prepare(spec)
    mask = experiment.get_masks(ctx)
    state, rep = transfer_stages.get_repaired(ctx, mask)
    assert all(bool((state[n][~m] == 0).all()) for n, m in mask.items())
    assert rep.form == "a" and rep.converged and rep.cost_repaired < rep.cost_zeroed
    assert len(rep.layers) == len(mask) and not rep.skipped


def test_repair_damping_changes_the_correction():
    spec = ExperimentSpec(score="magnitude", sparsity=0.3, repair="a", **TINY)
    ctx = experiment.prepare(spec)
    mask = experiment.get_masks(ctx)
    a, _ = transfer_stages.get_repaired(ctx, mask)
    b, rep_b = transfer_stages.get_repaired(experiment.prepare(spec.replace(repair_damping=1.0)), mask)
    assert rep_b.damping == 1.0
    assert any(not torch.equal(a[n], b[n]) for n in mask)


@needs_fashion
def test_cross_domain_tasks_are_evaluated_labelled_and_recorded(tmp_path):
    spec = ExperimentSpec(score="magnitude", sparsity=0.3, repair="a", transfer_suite="fashion-mnist", **TINY)
    res = experiment.run(spec)
    roles = [t.role for t in res.tasks]
    n = len(experiment.prepare(spec).suite.tasks)
    assert roles[:n] == ["source"] + ["transfer"] * (n - 1)
    assert roles[n:] == ["cross-domain", "cross-domain"]
    assert [t.task for t in res.tasks[n:]] == ["fashion-mnist: fashion 0-4", "fashion-mnist: fashion 5-9"]
    assert all(t.repaired is not None for t in res.tasks)
    # the source suite's tasks are exactly those of the same run without a transfer suite
    plain = experiment.run(spec.replace(transfer_suite=None))
    assert [(t.task, t.zero_shot, t.repaired) for t in plain.tasks] == [
        (t.task, t.zero_shot, t.repaired) for t in res.tasks[:n]
    ]
    # the cross-domain tasks' dense and zero-shot accuracies are those of the fashion suite's own run
    fash = experiment.run(transfer_stages.cross_spec(spec, 0))
    assert [t.dense for t in res.tasks[n:]] == [t.dense for t in fash.tasks]
    summ = res.summary()
    assert summ["cross_zero_shot"] == pytest.approx(sum(t.zero_shot for t in res.tasks[n:]) / 2)
    assert summ["transfer_zero_shot"] == plain.summary()["transfer_zero_shot"]
    assert any("cross-domain transfer tasks from fashion-mnist" in note for note in res.notes)
    # recorded with its cross-domain columns
    st = store.ResultsStore(tmp_path / "r.sqlite")
    st.record(res, elapsed=1.0)
    row = st.frame().iloc[0]
    assert row["transfer_suite"] == "fashion-mnist" and row["repair"] == "a"
    assert row["cross_repaired"] == pytest.approx(summ["cross_repaired"])


@needs_fashion
def test_alignment_table_over_every_pair_with_a_cross_domain_suite():
    spec = ExperimentSpec(score="diag", sparsity=0.3, transfer_suite="fashion-mnist", **TINY)
    rows = task_pairs.alignment_table(spec, sources=[0], k=4)
    n = len(experiment.prepare(spec).suite.tasks)
    assert [r.transfer for r in rows] == list(range(1, n + 2))
    # by data set: digits 5-9 is in-domain; the digits suite's own Fashion-MNIST tasks and the
    # fashion-mnist suite's are cross-domain against digits 0-4
    want = ["in-domain"] + ["cross-domain"] * (n - 2) + ["cross-domain", "cross-domain"]
    assert [r.domain for r in rows] == want
    assert [r.transfer_task for r in rows][-2:] == [
        "fashion-mnist: fashion 0-4",
        "fashion-mnist: fashion 5-9",
    ]
    for r in rows:
        assert r.source_task == "digits 0-4" and 0 <= r.retention and 0.0 <= r.mask_jaccard <= 1.0
        assert r.price == pytest.approx(r.with_own - r.zero_shot)
    # a cross-domain row agrees with the pair's own functions
    last = rows[-1]
    orc = task_pairs.oracle_run(spec, last.transfer)
    assert (last.zero_shot, last.with_own, last.dense) == (orc.with_source, orc.with_own, orc.dense)
    al = task_pairs.alignment_run(spec, last.transfer, k=4)
    assert last.a_overlap == pytest.approx(al.a_overlap) and last.mask_jaccard == pytest.approx(
        al.mask_jaccard
    )
    assert task_pairs.PairAlignment.from_dict(last.to_dict()) == last


def test_cli_run_with_repair_and_align_write_what_they_print(tmp_path, monkeypatch, capsys):
    from pai_core.__main__ import main

    monkeypatch.setenv("PAI_RESULTS_DB", str(tmp_path / "r.sqlite"))
    tiny = ["--images-per-class", "10", "--image-size", "64"]
    assert main(["run", "--score", "magnitude", "--sparsity", "0.3", "--repair", "a", *tiny]) == 0
    out = capsys.readouterr().out
    assert "OBS-corr." in out and "verdict: **magnitude**: the OBS correction computed on the source" in out
    row = store.ResultsStore().frame().iloc[0]
    assert row["repair"] == "a" and row["source_repaired"] is not None
    with pytest.raises(SystemExit) as exc:  # argparse refuses it, naming the choices
        main(["run", "--repair", "sgd", *tiny])
    assert (
        exc.value.code == 2 and "invalid choice: 'sgd' (choose from 'a', 'kfac')" in capsys.readouterr().err
    )
    out_dir = tmp_path / "align"
    args = ["align", "--score", "diag", "--sparsity", "0.3", "--sources", "0", "--k", "4", *tiny]
    assert main([*args, "--out", str(out_dir)]) == 0
    text = capsys.readouterr().out
    assert "digits 0-4 → digits 5-9" in text and "Spearman ρ across pairs" in text
    frame = pd.read_csv(out_dir / "alignment.csv")
    n = len(experiment.prepare(ExperimentSpec(**TINY)).suite.tasks)
    assert len(frame) == n - 1 and set(frame["source_task"]) == {"digits 0-4"}
    assert "Task alignment" in (out_dir / "alignment.html").read_text()
    assert main([*args[:-4], "--sources", "7", *tiny]) == 2  # one line, status 2
    assert "source 7 out of range" in capsys.readouterr().err


def test_sweep_config_carries_the_repair_and_the_transfer_suite():
    from pai_core import sweep

    cfg = sweep.SweepConfig(sources=(0,), sparsities=(0.3,), repair="a", transfer_suite="fashion-mnist")
    (spec,) = sweep.expand(cfg)
    assert spec.repair == "a" and spec.transfer_suite == "fashion-mnist" and spec.repair_damping == 1e-2
    assert sweep.SweepConfig.from_dict({"repair": "none"}).repair is None
    assert sweep.SweepConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown repair form 'sgd'"):
        sweep.SweepConfig(repair="sgd")
    with pytest.raises(ValueError, match="unknown transfer suite 'mnist'"):
        sweep.SweepConfig(transfer_suite="mnist")
