"""The authors' protocol as options of a run: iterative rounds, prunable layers, BN-aware filter
removal, ridge heads with intercept, run diagnostics, masks of many sparsities at once, and the
one declaration (``spec_options``) from which the CLI, sweep files and the dashboard take them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from pai_core import cache, experiment, layers, masks, scores
from pai_core.__main__ import main
from pai_core.results import ExperimentSpec, spec_options
from pai_core.store import ResultsStore
from pai_core.sweep import SweepConfig, plan

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(images_per_class=10, image_size=64)
RESNET = dict(model="test_resnet", images_per_class=5, image_size=32)


def _removed(m: dict[str, torch.Tensor]) -> int:
    return sum(int((~v).sum()) for v in m.values())


# ----------------------------------------------------------------------------- rounds


def test_rounds_rescore_the_masked_model_and_reach_the_exact_sparsity(monkeypatch):
    spec = ExperimentSpec(score="diag", sparsity=0.6, rounds=3, **RESNET)
    ctx = experiment.prepare(spec)
    names = scores.default_params(ctx.encoder.model)
    total = sum(ctx.encoder.model.get_parameter(n).numel() for n in names)
    seen = []
    real = scores.compute

    def spy(name, model, *a, **k):
        seen.append(sum(int((model.get_parameter(f"encoder.{n}") == 0).sum()) for n in names))
        return real(name, model, *a, **k)

    monkeypatch.setattr(scores, "compute", spy)
    mask = experiment.get_masks(ctx)
    qs = experiment.round_sparsities(0.6, 3)
    assert qs[-1] == 0.6 and qs[0] == pytest.approx(1 - 0.4 ** (1 / 3))
    # round 1: the dense model's (cached one-shot) scores; rounds 2, 3: the model pruned so far
    assert seen[-2:] == [masks.n_remove(q, total) for q in qs[:2]]
    assert _removed(mask) == masks.n_remove(0.6, total)
    one_shot = experiment.get_masks(experiment.prepare(spec.replace(rounds=1)))
    assert _removed(one_shot) == _removed(mask) and masks.jaccard(mask, one_shot) < 1.0


def test_synflow_is_iterative_by_default_and_rounds_apply_to_every_score():
    assert ExperimentSpec(score="synflow").rounds == 100
    assert ExperimentSpec(score="magnitude").rounds == 1
    assert ExperimentSpec(score="synflow", rounds=1).rounds == 1
    spec = ExperimentSpec(score="synflow", sparsity=0.5, rounds=4, **RESNET)
    res = experiment.run(spec)
    kept = sum(r["kept"] for r in res.layer_report)
    total = sum(r["numel"] for r in res.layer_report)
    assert total - kept == masks.n_remove(0.5, total) and res.diagnostics["rounds"] == 4
    assert any("4 rounds" in n for n in res.notes)
    # magnitude re-scored on the masked model is magnitude in one shot
    m1 = experiment.load_masks(ExperimentSpec(score="magnitude", sparsity=0.5, **RESNET))
    m5 = experiment.load_masks(ExperimentSpec(score="magnitude", sparsity=0.5, rounds=5, **RESNET))
    assert masks.jaccard(m1, m5) == 1.0


# ----------------------------------------------------------------------------- masks


def test_pointwise_only_masks_leave_other_layers_whole():
    spec = ExperimentSpec(score="magnitude", sparsity=0.08, prune_layers="pointwise", **RESNET)
    ctx = experiment.prepare(spec)
    m = experiment.get_masks(ctx)
    kinds = layers.layer_kinds(ctx.encoder.model, list(m))
    total = sum(v.numel() for v in m.values())
    assert _removed(m) == masks.n_remove(0.08, total)  # counted over every scored weight
    assert {kinds[n] for n, v in m.items() if not v.all()} == {"pointwise"}
    with pytest.raises(ValueError, match="prunable layers hold only"):
        experiment.get_masks(experiment.prepare(spec.replace(sparsity=0.5)))


def test_masks_of_many_sparsities_come_from_one_read_and_one_partition(monkeypatch):
    spec = ExperimentSpec(score="diag", **RESNET)
    qs = [0.36, 0.5, 0.8322]
    experiment.get_scores(experiment.prepare(spec))  # scores on disk
    experiment._SCORES.clear()
    loads, partitions = [], []
    real_load, real_many = cache.load_tensors, masks.global_topk_many

    def load(path):
        loads.append(Path(path).parent.name)
        return real_load(path)

    def many(*a, **k):
        partitions.append(a[1])
        return real_many(*a, **k)

    monkeypatch.setattr(cache, "load_tensors", load)
    monkeypatch.setattr(masks, "global_topk_many", many)
    built = experiment.build_masks(spec, qs)
    assert loads.count("scores") == 1 and partitions == [qs]
    for q, m in zip(qs, built, strict=True):
        assert all(torch.equal(m[n], v) for n, v in experiment.load_masks(spec.replace(sparsity=q)).items())
    assert loads.count("scores") == 1  # the later runs read the masks, and the scores from memory


def test_ties_go_by_magnitude_in_the_experiment():
    """The exactly-zero diag scores of dead channels are removed smallest |θ| first."""
    spec = ExperimentSpec(score="diag", sparsity=0.05, **TINY)
    ctx = experiment.prepare(spec)
    sc = experiment.get_scores(ctx)
    zero = sum(int((v == 0).sum()) for v in sc.values())
    total = sum(v.numel() for v in sc.values())
    assert 0 < masks.n_remove(0.05, total) < zero  # the threshold falls among the zeros
    m = experiment.get_masks(ctx)
    params = dict(ctx.encoder.model.named_parameters())
    gone = torch.cat([params[n].detach().abs()[~m[n]] for n in m])
    kept_zero = torch.cat([params[n].detach().abs()[m[n] & (sc[n] == 0)] for n in m])
    assert gone.max() <= kept_zero.min()


# ----------------------------------------------------------------------------- BN-aware


def test_bn_aware_keeps_dead_depthwise_channels_dead_on_the_real_model():
    """Remove the depthwise filters whose diag scores are all 0 and whose channel is dead (output 0 on
    every source image and position): without the BN-aware treatment the features change; with it
    they are those of the dense encoder.  (A zero-score channel that ReLU6 holds at 0 in some places
    and at 6 in others is not constant: no BatchNorm shift can replace it exactly.)"""
    spec = ExperimentSpec(score="diag", **TINY)
    ctx = experiment.prepare(spec)
    sc = experiment.get_scores(ctx)
    pairs, stats = experiment.get_channels(ctx)
    kinds = layers.layer_kinds(ctx.encoder.model, list(sc))
    mask = {n: torch.ones_like(v, dtype=torch.bool) for n, v in sc.items()}
    for n, v in sc.items():
        if kinds[n] == "depthwise":
            dead = stats.dead[f"{pairs[n]}.act"]  # timm's BatchNormAct2d: the activation inside the BN
            mask[n][layers.filters_removed(v != 0) & dead] = False
    assert _removed(mask) > 0
    x, _ = ctx.split(spec.source, "fit")
    with torch.no_grad():
        dense = ctx.encoder.model.eval()(x)
        naive = masks.prune_(ctx.encoder.copy().model, mask).eval()(x)
        aware_ctx = dataclasses.replace(ctx, spec=spec.replace(bn_aware=True))
        model, done = experiment.pruned_encoder(aware_ctx, mask)
        aware = model.eval()(x)
    assert sum(done.values()) == int(sum(layers.filters_removed(m).sum() for m in mask.values()))
    assert not torch.allclose(naive, dense, atol=1e-3)
    assert torch.allclose(aware, dense, rtol=1e-5, atol=1e-5)


def test_run_reports_diagnostics_cached_with_the_scores():
    spec = ExperimentSpec(
        score="hutchinson", score_options={"probes": 2}, sparsity=0.5, bn_aware=True, **RESNET
    )
    res = experiment.run(spec)
    d = res.diagnostics
    assert 0 <= d["zero_score_share"] <= 1 and d["scored_weights"] > 0
    assert {
        "dead_channels",
        "activation_channels",
        "bn_compensated_channels",
        "filters_removed_whole",
    } <= set(d)
    assert d["score"]["hutchinson_probes_per_group"] == 2 and "hutchinson_rel_se_median" in d["score"]
    assert any("BN-aware" in n for n in res.notes)
    again = experiment.run(spec)
    assert again.cached and again.diagnostics == json.loads(json.dumps(d))
    path = cache.cache_dir() / "scores"
    stored = [cache.load_tensors(p)[0] for p in path.glob("*.safetensors")]
    assert any("__diagnostics__" in s for s in stored)


# ----------------------------------------------------------------------------- ridge, keys


def test_ridge_with_intercept_through_the_experiment():
    spec = ExperimentSpec(score="magnitude", sparsity=0.2, ridge="intercept-balanced", **RESNET)
    ctx = experiment.prepare(spec)
    heads = ctx.heads
    assert heads.intercept and heads.xi[0].shape[0] == ctx.encoder.feature_dim + 1
    assert heads.module(0).bias is not None
    res = experiment.run(spec)
    assert all(0 <= t.dense <= 1 for t in res.tasks) and any("intercept" in n for n in res.notes)
    plain = experiment.prepare(spec.replace(ridge="closed-form"))
    assert plain.key("heads") != ctx.key("heads")


def test_keys_resolve_score_defaults(monkeypatch):
    before = ExperimentSpec(score="grasp").key()
    assert before == ExperimentSpec(score="grasp", score_options={"temperature": 200.0}).key()
    info = scores.info("grasp")
    changed = dataclasses.replace(
        info,
        options=tuple(
            dataclasses.replace(o, default=100.0) if o.name == "temperature" else o for o in info.options
        ),
    )
    monkeypatch.setitem(scores._registry._REGISTRY, "grasp", changed)
    assert ExperimentSpec(score="grasp").key() != before  # a new default is a new result


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(rounds=0), "rounds must be >= 1"),
        (dict(prune_layers="dense"), "'all', 'pointwise'"),
        (dict(ridge="sklearn"), "intercept-balanced"),
        (dict(bn_aware="yes"), "true or false"),
        (dict(bn_warmup_mode="ema"), "running"),
    ],
)
def test_bad_protocol_options_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ExperimentSpec(**bad)


# ----------------------------------------------------------------------------- CLI, sweeps, dashboard


@pytest.fixture
def tmp_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    return tmp_path


def test_cli_has_a_flag_per_option_and_runs_them(tmp_store, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for name in spec_options():
        assert "--" + name.replace("_", "-") in text, name
    argv = ["run", "--model", "test_resnet", "--score", "magnitude", "--images-per-class", "5"]
    argv += ["--image-size", "32", "--sparsity", "0.03,0.05", "--rounds", "2", "--prune-layers", "pointwise"]
    argv += ["--bn-aware", "--ridge", "intercept-balanced", "--bn-warmup-mode", "running"]
    assert main(argv) == 0
    specs = [r.spec for r in ResultsStore().results()]
    assert sorted(s.sparsity for s in specs) == [0.03, 0.05]
    assert {(s.rounds, s.prune_layers, s.bn_aware, s.ridge, s.bn_warmup_mode) for s in specs} == {
        (2, "pointwise", True, "intercept-balanced", "running")
    }
    assert main([*argv[:-2], "--rounds", "0"]) == 2
    assert "rounds must be >= 1" in capsys.readouterr().err


def test_sweep_files_take_the_options_as_top_level_keys(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        "scores: [magnitude, synflow]\nsources: [0]\nsparsities: [0.5]\nbn-aware: true\nrounds: 3\n"
    )
    cfg = SweepConfig.from_file(path)
    specs, _ = plan(cfg)
    assert [(s.score, s.rounds, s.bn_aware) for s in specs] == [("magnitude", 3, True), ("synflow", 3, True)]
    assert SweepConfig.from_dict(cfg.to_dict()) == cfg
    default = plan(SweepConfig(scores=("synflow",), sources=(0,), sparsities=(0.5,)))[0]
    assert default[0].rounds == 100
    with pytest.raises(ValueError, match="prune_layers must be one of"):
        SweepConfig.from_dict({"prune_layers": "dense"})
    with pytest.raises(ValueError, match="valid: .*bn_aware"):
        SweepConfig.from_dict({"bn_awareness": True})


def test_dashboard_draws_the_options_from_the_declaration_and_runs_them(tmp_store):
    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Prune_and_evaluate.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    for name, (opt, default) in spec_options().items():
        key = f"prune_w_spec_{name}"
        w = {bool: at.checkbox, int: at.number_input, str: at.selectbox}[opt.type](key=key)
        assert w.value == default and w.help == opt.help, name
        if opt.type is str:
            assert list(w.options) == list(opt.choices)
    at.selectbox(key="prune_w_model").set_value("test_resnet").run()
    at.number_input(key="prune_w_ipc").set_value(5)
    at.multiselect(key="prune_w_scores").set_value(["magnitude"])
    at.multiselect(key="prune_w_levels").set_value([0.36])
    at.number_input(key="prune_w_spec_rounds").set_value(2)
    at.checkbox(key="prune_w_spec_bn_aware").check()
    at.selectbox(key="prune_w_spec_ridge").set_value("intercept-balanced")
    [run] = [b for b in at.button if b.label == "Run"]
    run.click()
    at.run(timeout=300)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    [res] = at.session_state["prune_output"]["results"]
    assert (res.spec.rounds, res.spec.bn_aware, res.spec.ridge) == (2, True, "intercept-balanced")
    assert any("zero scores" in str(df.value.columns.tolist()) for df in at.dataframe)
