import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from pai_core import cache, experiment, masks, models, repair, results, scores
from pai_core import masks as M
from pai_core.results import ExperimentSpec

TINY = dict(images_per_class=10, image_size=64)


def test_spec_json_roundtrip_and_stable_key():
    spec = ExperimentSpec(score="hutchinson", score_options={"probes": 3, "bn_warmup": 1}, sparsity=0.36)
    back = ExperimentSpec.from_json(spec.to_json())
    assert back == spec and back.key() == spec.key()
    same = ExperimentSpec(score="hutchinson", score_options=(("bn_warmup", 1), ("probes", 3)), sparsity=0.36)
    assert same.key() == spec.key()
    assert spec.replace(device="cpu").key() == spec.key()  # the device does not change the result
    assert spec.replace(sparsity=0.4752).key() != spec.key()
    # the key is a pure function of the spec (same value in another process)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from pai_core.results import ExperimentSpec as S; print(S.from_json({spec.to_json()!r}).key())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == spec.key()


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(score="obd"), "magnitude"),
        (dict(sparsity=1.0), "sparsity"),
        (dict(finetune="forever"), "paper"),
        (dict(mask_scope="per-block"), "layerwise"),
    ],
)
def test_bad_specs_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ExperimentSpec(**bad)


def test_source_out_of_range_and_px_on_vit():
    with pytest.raises(ValueError, match="out of range"):
        experiment.run(ExperimentSpec(source=7, **TINY))
    with pytest.raises(ValueError, match="CNNs only"):
        experiment.run(ExperimentSpec(model="test_vit", score="px", **TINY))


def test_full_run_on_the_offline_default_and_cache_reuse(monkeypatch, fresh_cache):
    # A cache of its own: another test's cached scores for the same spec would hide the first scoring.
    calls = []
    real = scores.compute

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(scores, "compute", counting)
    events = []
    spec = ExperimentSpec(score="diag", sparsity=0.5, finetune="smoke", **TINY)
    res = experiment.run(spec, progress=lambda *e: events.append(e))
    assert calls == ["diag"]
    assert {e[0] for e in events} >= {
        "data",
        "features",
        "scores",
        "zero-shot",
        "fine-tune",
        "evaluate",
        "done",
    }
    assert [t.role for t in res.tasks].count("source") == 1 and res.tasks[0].role == "source"
    assert len(res.tasks) >= 2 and all(0 <= t.zero_shot <= 1 and t.finetuned is not None for t in res.tasks)
    assert res.schedule == "smoke" and res.finetune_log["losses"]
    kept = sum(r["kept"] for r in res.layer_report)
    total = sum(r["numel"] for r in res.layer_report)
    assert kept == total - round(0.5 * total)
    # the same spec again: a cache hit, no scoring, identical numbers
    again = experiment.run(spec)
    assert again.cached
    assert [t.zero_shot for t in again.tasks] == [t.zero_shot for t in res.tasks]
    # only the sparsity changes: the scores are reused
    experiment.run(spec.replace(sparsity=0.7, finetune=None))
    assert calls == ["diag"]
    # a result from a fresh process comes out of the store/cache too
    assert json.loads(json.dumps(res.to_dict()))["summary"]["source_zero_shot"] == res.mean_source_zero_shot


def test_pruning_more_hurts_more_on_real_weights():
    lo = experiment.run(ExperimentSpec(score="magnitude", sparsity=0.1, **TINY))
    hi = experiment.run(ExperimentSpec(score="magnitude", sparsity=0.9, **TINY))
    assert hi.mean_source_zero_shot < lo.mean_source_zero_shot


def test_all_sources_average():
    runs = experiment.run_all_sources(ExperimentSpec(score="magnitude", sparsity=0.36, **TINY))
    assert [r.spec.source for r in runs] == list(range(len(runs)))
    avg = experiment.average_over_sources(runs)
    assert avg["source_zero_shot"] == pytest.approx(sum(r.mean_source_zero_shot for r in runs) / len(runs))


def test_load_masks_matches_the_run():
    spec = ExperimentSpec(score="magnitude", sparsity=0.36, **TINY)
    experiment.run(spec)
    m = experiment.load_masks(spec)
    total = sum(v.numel() for v in m.values())
    assert sum(int(v.sum()) for v in m.values()) == total - round(0.36 * total)
    assert masks.jaccard(m, m) == 1.0


def _rand_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (4, 3, 3, 3), "fc.weight": (5, 7), "b.weight": (13,)}
    return {n: torch.rand(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}


def test_cached_masks_and_scores_recompute_after_truncation(fresh_cache):
    masks = M.global_topk(_rand_scores(), 0.738)
    scores = _rand_scores(1)
    calls = {"m": 0, "s": 0}

    def cm():
        calls["m"] += 1
        return masks

    def cs():
        calls["s"] += 1
        return scores

    spec = {"model": "tiny", "score": "diag", "sparsity": 0.738}
    for _ in range(2):
        got = experiment._cached_masks(spec, cm)
        assert all(torch.equal(got[n], masks[n]) for n in masks)
        got_s = experiment._cached_scores(spec, cs)
        assert all(torch.equal(got_s[n], scores[n]) for n in scores)
    assert calls == {"m": 1, "s": 1}
    for kind in ("masks", "scores"):
        path = cache.cache_dir() / kind / f"{cache.spec_key(kind, spec)}.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # truncated
    got = experiment._cached_masks(spec, cm)
    got_s = experiment._cached_scores(spec, cs)
    assert calls == {"m": 2, "s": 2}
    assert all(torch.equal(got[n], masks[n]) for n in masks)
    assert all(torch.equal(got_s[n], scores[n]) for n in scores)
    # the stored masks are bit-packed
    stored, _ = cache.load_tensors(
        cache.cache_dir() / "masks" / f"{cache.spec_key('masks', spec)}.safetensors"
    )
    assert stored["fc.weight"].dtype == torch.uint8


def test_spec_defaults_follow_the_registries():
    """results.py spells the default model out (models imports torch): keep it the registry's default."""
    assert ExperimentSpec().model == models.DEFAULT_MODEL
    with pytest.raises(ValueError, match="valid: mse, ce"):
        ExperimentSpec(loss="hinge")
    with pytest.raises(ValueError, match="'damping' must be >= 0"):
        ExperimentSpec(score="kfac", score_options={"damping": -1})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['probes'\] for score 'kfac'"):
        ExperimentSpec(score="kfac", score_options={"probes": 3})


def test_scored_weights_are_default_params_of_the_encoder_and_seeds_reach_stochastic_scores():
    spec = ExperimentSpec(model="test_resnet", score="random", sparsity=0.5, **TINY)
    ctx = experiment.prepare(spec)
    got = experiment.get_scores(ctx)
    assert list(got) == scores.default_params(ctx.encoder.model)
    other = experiment.get_scores(experiment.prepare(spec.replace(seed=1)))
    assert not torch.equal(got[next(iter(got))], other[next(iter(other))])  # spec.seed is the score's seed


def test_later_spec_fields_keep_earlier_keys_and_are_checked():
    # A spec without the fields added for the OBS repair and cross-domain tasks hashes as it did before
    # them, so cached results and stored rows keep their keys.
    spec = ExperimentSpec(score="kfac", sparsity=0.5904)
    before = {
        k: v
        for k, v in dataclasses.asdict(spec).items()
        if k not in ("repair", "repair_damping", "transfer_suite", "transfer_data_root")
    }
    before["score_options"] = sorted(spec.resolved_score_options().items())  # defaults filled in
    assert spec.key() == cache.spec_key("results", {**before, "device": None, "v": results.RESULT_VERSION})
    assert spec.replace(repair_damping=0.5).key() == spec.key()  # damping means nothing without a repair
    keys = {
        spec.key(),
        spec.replace(repair="a").key(),
        spec.replace(repair="kfac").key(),
        spec.replace(repair="a", repair_damping=0.1).key(),
        spec.replace(transfer_suite="fashion-mnist").key(),
    }
    assert len(keys) == 5
    assert ExperimentSpec.from_json(spec.replace(repair="a").to_json()).repair == "a"
    assert results.REPAIR_FORMS == tuple(repair.available_forms())
    with pytest.raises(ValueError, match="unknown repair form 'sgd'; valid: a, kfac"):
        spec.replace(repair="sgd")
    with pytest.raises(ValueError, match="repair_damping must be a positive number"):
        spec.replace(repair="a", repair_damping=0)
    with pytest.raises(ValueError, match="unknown transfer suite 'mnist'; valid: .*fashion-mnist"):
        spec.replace(transfer_suite="mnist")
    with pytest.raises(ValueError, match="is the source's own suite"):
        spec.replace(transfer_suite="digits")
