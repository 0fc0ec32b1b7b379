"""Experiment-level repair, oracle and alignment stages on the offline default encoder (tiny setting)."""

from __future__ import annotations

import math

import pytest
import torch

from pai_core import experiment, repair, scores
from pai_core import transfer_stages as TS
from pai_core.experiment import ExperimentSpec

TINY = dict(images_per_class=10, image_size=64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_alignment_of_a_task_with_itself_is_one_and_with_another_is_less():
    spec = ExperimentSpec(score="diag", sparsity=0.3, **TINY)
    same = TS.alignment_run(spec, spec.source, k=4)
    for key, value in same.summary().items():
        if not key.endswith("chance"):
            assert value == pytest.approx(1.0, abs=1e-9), key
    other = TS.alignment_run(spec, 2, k=4)  # digits 0-4 vs fashion 0-4: another domain
    assert other.source == "digits 0-4" and other.transfer == "fashion 0-4"
    for key, value in other.summary().items():
        assert not math.isnan(value), key
    assert -1.0 <= other.fisher_pearson < 1.0 and other.fisher_spearman < 1.0
    assert 0.0 < other.mask_jaccard < 1.0
    assert 0.0 < other.a_overlap < 1.0 and other.a_chance < 1.0
    # every layer of the encoder has a row; depthwise B is undefined and said so
    assert len(other.layers) == len(experiment.get_masks(spec, *_stages(spec)))
    assert any("B overlap undefined" in n for n in other.notes)


def _stages(spec):
    enc = experiment.get_encoder(spec.model)
    suite = experiment.get_suite(spec.suite, None, spec.images_per_class, spec.seed)
    heads = experiment.get_heads(spec, enc, suite, "cpu")
    return enc, suite, heads, "cpu"


def test_factors_are_cached_per_task(monkeypatch):
    spec = ExperimentSpec(score="magnitude", **TINY)
    enc, suite, heads, dev = _stages(spec)
    first = TS.get_factors(spec, enc, suite, heads, dev, task=1)
    calls = []
    monkeypatch.setattr(scores, "kfac_factors", lambda *a, **k: calls.append(1))
    again = TS.get_factors(spec, enc, suite, heads, dev, task=1)
    assert not calls and set(again) == set(first)
    assert all(torch.equal(again[n].A, first[n].A) and torch.equal(again[n].B, first[n].B) for n in first)
    assert set(first) == set(experiment.get_masks(spec, enc, suite, heads, dev))  # every weight covered
    with pytest.raises(ValueError, match="out of range; the suite's tasks are 0: digits 0-4"):
        TS.get_factors(spec, enc, suite, heads, dev, task=9)


def test_oracle_mask_on_the_source_itself_and_for_a_data_free_score():
    spec = ExperimentSpec(score="diag", sparsity=0.4, **TINY)
    same = TS.oracle_run(spec, spec.source)
    assert same.jaccard == 1.0 and same.with_own == same.with_source and same.price == 0.0
    other = TS.oracle_run(spec, 1)
    assert other.task == "digits 5-9" and 0.0 <= other.with_source <= 1.0 and 0.0 <= other.with_own <= 1.0
    assert other.jaccard < 1.0
    base = experiment.run(spec)
    assert other.with_source == base.tasks[1].zero_shot and other.dense == base.tasks[1].dense
    assert TS.OracleResult.from_dict(other.to_dict()) == other
    mag = TS.oracle_run(spec.replace(score="magnitude"), 1)
    assert mag.jaccard == 1.0 and mag.with_own == mag.with_source


def test_repair_run_evaluates_every_task_and_is_cached(monkeypatch):
    spec = ExperimentSpec(score="magnitude", sparsity=0.3, **TINY)
    res = TS.repair_run(spec)
    assert [t.role for t in res.tasks] == ["source", "transfer", "transfer", "transfer"]
    assert all(0.0 <= t.repaired <= 1.0 for t in res.tasks)
    base = experiment.run(spec)
    assert [t.zero_shot for t in res.tasks] == [t.zero_shot for t in base.tasks]
    rep = repair.RepairReport.from_dict(res.report)
    assert rep.form == "a" and rep.converged and rep.cost_repaired < rep.cost_zeroed
    assert len(rep.layers) == len(experiment.get_masks(spec, *_stages(spec))) and not rep.skipped
    # the repaired weights are cached: no second solve, same accuracies
    monkeypatch.setattr(repair, "repair_", lambda *a, **k: pytest.fail("repair recomputed"))
    again = TS.repair_run(spec)
    assert [t.repaired for t in again.tasks] == [t.repaired for t in res.tasks]
    assert TS.RepairResult.from_dict(res.to_dict()).tasks == res.tasks
    # masked weights are exactly zero in the cached state
    enc, suite, heads, dev = _stages(spec)
    mask = experiment.get_masks(spec, enc, suite, heads, dev)
    state, _ = TS.get_repaired(spec, enc, suite, heads, mask, dev)
    assert all(bool((state[n][~m] == 0).all()) for n, m in mask.items())
