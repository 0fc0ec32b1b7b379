"""From-scratch protocol: a tiny run end to end (cached), exact zeros through SGD, the paper's warm-up, specs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from pai_core import datasets, masks, nets, scores, scratch
from pai_core.__main__ import main
from pai_core.scratch_spec import RESULT_VERSION, ScratchResult, ScratchSpec, TrainSchedule
from pai_core.tasks import DataError

HAVE_FASHION = any(Path(d).is_dir() for d in datasets.FASHION_DIRS)
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
REPO = Path(__file__).resolve().parents[1]


def synthetic_data(
    n_train: int = 128, n_test: int = 64, classes: int = 4, size: int = 12
) -> datasets.ImageData:
    """Learnable toy images: a class-specific bright quadrant plus noise, uint8 like the real ones."""
    g = torch.Generator().manual_seed(0)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % classes
        x = torch.randint(0, 80, (n, 1, size, size), generator=g)
        h = size // 2
        for k in range(classes):
            r, c = divmod(k, 2)
            x[y == k, :, r * h : (r + 1) * h, c * h : (c + 1) * h] += 150
        return x.clamp(0, 255).to(torch.uint8), y

    tx, ty = make(n_train)
    vx, vy = make(n_test)
    return datasets.ImageData(
        "synthetic", tx, ty, vx, vy, (0.3,), (0.3,), classes, "crop+flip", "memory", "synthetic-0"
    )


# --------------------------------------------------------------------------------------
# training keeps pruned weights at exactly zero
# --------------------------------------------------------------------------------------


def test_training_keeps_pruned_weights_exactly_zero_through_momentum_and_weight_decay():
    data = synthetic_data()
    model = nets.create("test_resnet", in_channels=1, num_classes=4, seed=0)
    names = nets.prunable_weights(model, "conv+linear")
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)
    mask = {n: torch.rand(params[n].shape, generator=g) > 0.8 for n in names}
    mask[names[2]][:] = False  # a collapsed layer as well
    before = {n: p.detach().clone() for n, p in params.items()}
    assert all(bool((before[n][~m] != 0).any()) for n, m in mask.items())  # pruning has work to do

    steps = []

    def after_step(opt, args, kwargs):
        # every SGD step: pruned weights and their momentum buffers exactly zero
        for n, m in mask.items():
            p = params[n]
            assert torch.all(p.detach()[~m] == 0), n
            buf = opt.state[p]["momentum_buffer"]
            assert torch.all(buf[~m] == 0), n
        steps.append(opt)

    sched = TrainSchedule(
        name="t",
        label="test",
        epochs=2,
        batch_size=32,
        lr=0.5,  # large steps: weight decay and momentum would revive anything not masked
        momentum=0.9,
        weight_decay=5e-3,
        lr_schedule="step",
        milestones=(1,),
        augment=True,
    )
    handle = register_optimizer_step_post_hook(after_step)
    try:
        curve, nonzero, notes = scratch.train_masked(
            model, mask, data, torch.arange(128), torch.arange(64), sched, seed=0
        )
    finally:
        handle.remove()
    assert len(steps) == 2 * 4 and nonzero == 0 and not notes
    assert [row["lr"] for row in curve] == [0.5, 0.05]  # step schedule, stepped per epoch
    for n, m in mask.items():
        assert torch.all(params[n].detach()[~m] == 0)
        if m.any():
            assert (params[n].detach()[m] != before[n][m]).float().mean() > 0.9  # kept weights trained
    assert not any(mod._forward_pre_hooks for mod in model.modules())  # masks removed afterwards
    assert not any(p._backward_hooks for p in model.parameters())  # gradient hooks too


def test_train_masked_reports_a_revived_weight():
    # The check is not vacuous: a mask that training does not know about is reported as nonzero.
    data = synthetic_data()
    model = nets.create("test_vgg", in_channels=1, num_classes=4, seed=0)
    names = nets.prunable_weights(model)
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in names}
    sched = TrainSchedule(name="t", label="t", epochs=1, batch_size=64, lr=0.1, augment=False)
    _, nonzero, _ = scratch.train_masked(model, mask, data, torch.arange(128), torch.arange(64), sched)
    assert nonzero == 0
    assert scratch._pruned_nonzero(model, {names[0]: torch.zeros_like(mask[names[0]])}) > 0


# --------------------------------------------------------------------------------------
# the paper's BatchNorm warm-up
# --------------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)
        self.bn1 = nn.BatchNorm1d(3)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("scale", torch.full((1,), 2.0))  # a non-BatchNorm buffer

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))) * self.scale
        return self.bn1(self.fc(self.drop(h.flatten(1))))


def _batches(n: int = 5, b: int = 8):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(b, 1, 6, 6, generator=g) * 3 + 1, torch.zeros(b, dtype=torch.long)) for _ in range(n)
    ]


def test_paper_warmup_changes_only_batchnorm_buffers():
    model = _Net().eval()
    model.bn1.momentum = 0.3  # restored afterwards; the warm-up itself uses 0.1
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    scores.warmup_batchnorm(model, _batches(), passes=2, mode="running")
    after = model.state_dict()
    bn_buffers = {
        f"{m}.{b}" for m in ("bn", "bn1") for b in ("running_mean", "running_var", "num_batches_tracked")
    }
    for k, v in after.items():
        if k in bn_buffers:
            assert not torch.equal(v, state[k]), k
        else:
            assert torch.equal(v, state[k]), k  # parameters and the other buffer: bit-identical
    assert after["bn.num_batches_tracked"].item() == 10
    assert all(not m.training for m in model.modules())  # every flag restored (dropout never on)
    assert model.bn1.momentum == 0.3 and model.bn.momentum == 0.1
    assert all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_paper_warmup_is_a_running_average_not_the_cumulative_one():
    # float64 brute force on one BatchNorm1d: r <- (1 - m) r + m stat_b, no reset, unbiased variance.
    bn = nn.BatchNorm1d(3).double()
    with torch.no_grad():
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 3, generator=g, dtype=torch.float64) * (i + 1) + i for i in range(4)]
    batches = [(x, torch.zeros(6, dtype=torch.long)) for x in xs]
    mean, var = torch.full((3,), 0.5, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64)
    for x in xs:
        mean = 0.9 * mean + 0.1 * x.mean(0)
        var = 0.9 * var + 0.1 * x.var(0, unbiased=True)
    paper = nn.Sequential(bn)
    scores.warmup_batchnorm(paper, batches, mode="running")
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-12, atol=1e-12)

    other = nn.Sequential(nn.BatchNorm1d(3).double())
    scores.warmup_batchnorm(other, batches, 1)  # reset + cumulative: the plain average of batch stats
    torch.testing.assert_close(other[0].running_mean, torch.stack([x.mean(0) for x in xs]).mean(0))
    assert not torch.allclose(other[0].running_mean, bn.running_mean)


# --------------------------------------------------------------------------------------
# specs and results
# --------------------------------------------------------------------------------------


def test_spec_round_trips_through_json_and_validates():
    spec = ScratchSpec(
        score="hutchinson", score_options={"probes": 4, "seed": 3}, sparsity=0.995, train_size=500
    )
    assert ScratchSpec.from_json(spec.to_json()) == spec
    assert ScratchSpec.from_json(json.loads(spec.to_json())) == spec
    assert spec.score_options == (("probes", 4), ("seed", 3))
    for bad in (
        {"sparsity": 1.0},
        {"sparsity": -0.1},
        {"bn_warmup": "on"},
        {"schedule": "long"},
        {"train_size": 0},
        {"mask_scope": "local"},
        {"prune_layers": "all"},
        {"width": 0},
    ):
        with pytest.raises(ValueError):
            ScratchSpec(**bad)
    with pytest.raises(ValueError, match="unknown ScratchSpec field"):
        ScratchSpec.from_json('{"sparsity": 0.9, "warmup": "paper"}')
    with pytest.raises(ValueError, match="valid"):
        scratch.validate(ScratchSpec(model="resnet18"))
    with pytest.raises(ValueError, match="valid"):
        scratch.validate(ScratchSpec(score="obs"))


def test_spec_keys_are_stable_and_ignore_the_device():
    a = ScratchSpec(score="snip", score_options=(("b", 1), ("a", 2)), device="cpu")
    b = ScratchSpec(score="snip", score_options={"a": 2, "b": 1}, device="auto")
    assert a.key() == b.key() and a.key().startswith("scratch-")
    assert a.key() != a.replace(sparsity=0.95).key() != a.replace(bn_warmup="paper").key()
    assert ScratchSpec(sparsity=0.9).key() == ScratchSpec(sparsity=0.9000).key() == ScratchSpec(width=1).key()
    # the same key in another interpreter with another hash seed
    code = "from pai_core.scratch_spec import ScratchSpec; print(ScratchSpec(score='snip', score_options={'b': 1, 'a': 2}).key())"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == a.key()


def test_spec_and_store_import_without_torch():
    """Specs, results and the store (which holds both kinds of run) read without the engine.

    The figures are not in this list on purpose: they name and colour scores from the score
    registry (:mod:`pai_core.scores`, which needs torch), as the transfer figures do.
    """
    code = (
        "import sys, pai_core.scratch_spec, pai_core.store, pai_core.results; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_stochastic_scores_follow_the_runs_seed_from_the_registry():
    stochastic = [n for n in scores.available() if scores.info(n).stochastic]
    assert {"random", "hutchinson"} <= set(stochastic)
    for name in scores.available():
        opts = scratch._score_options(ScratchSpec(score=name, seed=7))
        assert opts == ({"seed": 7} if name in stochastic else {}), name
    # a seed fixed in the options wins over the run's
    fixed = ScratchSpec(score="hutchinson", seed=7, score_options={"seed": 3, "probes": 2})
    assert scratch._score_options(fixed) == {"seed": 3, "probes": 2}


def test_result_round_trip_and_version_check():
    res = ScratchResult(
        spec=ScratchSpec(),
        final_acc=0.5,
        best_acc=0.6,
        best_epoch=1,
        curve=[
            {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.6}
        ],
        layer_density=[{"name": "a", "numel": 10, "kept": 1, "density": 0.1}],
        collapsed_layers=[],
        kept=1,
        total=10,
        pruned_nonzero=0,
        schedule={},
        train_examples=1,
        test_examples=1,
        score_examples=1,
    )
    d = json.loads(json.dumps(res.to_dict()))
    assert ScratchResult.from_dict(d) == res and d["version"] == RESULT_VERSION
    with pytest.raises(ValueError, match="format"):
        ScratchResult.from_dict({**d, "version": RESULT_VERSION + 1})


def test_plan_grid_skips_warmup_variants_of_data_free_scores():
    specs = scratch.plan_grid(
        ScratchSpec(), ["random", "snip"], [0.9, 0.99], ["off", "paper"], [0, 1], dense=True
    )
    assert len(specs) == 2 + 2 * 2 * 1 + 2 * 2 * 2
    assert {s.bn_warmup for s in specs if s.score == "random"} == {"off"}
    assert sum(s.sparsity == 0 for s in specs) == 2
    only_paper = scratch.plan_grid(ScratchSpec(), ["random"], [0.9], ["paper"], [0])
    assert [s.bn_warmup for s in only_paper] == ["paper"]  # nothing silently dropped
    with pytest.raises(ValueError, match="bn_warmup"):
        scratch.plan_grid(ScratchSpec(), ["snip"], [0.9], ["on"], [0])


# --------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------


def _tiny(**kw) -> ScratchSpec:
    base = dict(
        model="test_resnet",
        train_size=200,
        test_size=200,
        schedule="smoke",
        score="snip",
        sparsity=0.9,
        bn_warmup="paper",
        device="cpu",
    )
    return ScratchSpec(**{**base, **kw})


@needs_fashion
def test_tiny_run_end_to_end_is_sensible_and_cached(fresh_cache, monkeypatch):
    spec = _tiny()
    stages = []
    res = scratch.run_scratch(spec, lambda stage, d, t, m: stages.append(stage))
    assert {"data", "warm-up", "scores", "masks", "train", "done"} <= set(stages)
    assert not res.cached and res.spec == spec
    assert len(res.curve) == 1 and set(res.curve[0]) == {
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
    }
    assert 0.0 <= res.final_acc <= 1.0 and res.final_acc == res.curve[-1]["test_acc"] == res.best_acc
    assert res.train_examples == 200 and res.test_examples == 200 and res.score_examples == 100
    # exactly round(0.9 * total) weights removed, counted per layer in network order
    model = nets.create("test_resnet", in_channels=1)
    covered = nets.prunable_weights(model, "conv")
    assert [r["name"] for r in res.layer_density] == covered
    assert res.total == sum(r["numel"] for r in res.layer_density)
    assert res.total - res.kept == int(0.9 * res.total + 0.5)
    assert res.pruned_nonzero == 0
    assert any("smoke" in n for n in res.notes) and any("subset" in n for n in res.notes)
    assert {"data", "warm-up", "scores", "masks", "train", "total"} <= set(res.timings)
    for kind in ("scratch-results", "scratch-scores", "scratch-masks"):
        assert len(list((fresh_cache / kind).glob("*"))) >= 1, kind

    again = scratch.run_scratch(spec)
    assert again.cached and again.curve == res.curve and again.layer_density == res.layer_density

    # another sparsity reuses the cached scores and warmed-up BatchNorm state: neither runs again
    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(scores, "compute", boom)
    monkeypatch.setattr(scores, "warmup_batchnorm", boom)
    other = scratch.run_scratch(spec.replace(sparsity=0.5))
    assert other.total - other.kept == int(0.5 * other.total + 0.5)
    # ...and trains from exactly the state a cold run trains from
    redo = scratch.run_scratch(spec, use_cache=False)
    assert redo.curve == res.curve and not redo.cached


@needs_fashion
def test_dense_run_and_cli(fresh_cache, capsys, tmp_path):
    rc = main(
        [
            "scratch",
            "run",
            "--model",
            "test_vgg",
            "--train-size",
            "100",
            "--test-size",
            "100",
            "--schedule",
            "smoke",
            "--sparsity",
            "0",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "epoch   1" in out and "dense network" in out
    res = ScratchResult.from_dict(json.loads((tmp_path / "r.json").read_text()))
    assert res.kept == res.total and res.score_examples == 0 and not res.collapsed_layers


def test_missing_cifar_gives_a_clear_data_error(fresh_cache, tmp_path, capsys):
    datasets._LOADED.clear()
    with pytest.raises(DataError, match="binary"):
        scratch.run_scratch(ScratchSpec(dataset="cifar10"))
    with pytest.raises(DataError, match="does not exist"):
        scratch.run_scratch(ScratchSpec(dataset="cifar100", data_root=str(tmp_path / "none")))
    assert main(["scratch", "run", "--dataset", "cifar10", "--data-root", str(tmp_path / "none")]) == 2
    assert "error: cifar10" in capsys.readouterr().err
    assert not list(fresh_cache.glob("scratch-*/*.json"))  # nothing half-written


def test_scores_see_the_networks_own_logits_and_the_covered_weights_only():
    # One scoring pass by hand equals what get_scored_state caches (loss "ce", conv weights only).
    data = synthetic_data()
    spec = ScratchSpec(model="test_resnet", score="snip", sparsity=0.9, seed=0)
    model = nets.create("test_resnet", in_channels=1, num_classes=4, seed=0)
    score_idx = torch.arange(40)
    got, _ = scratch.get_scored_state(spec, model, data, torch.arange(128), score_idx, torch.device("cpu"))
    ref_model = nets.create("test_resnet", in_channels=1, num_classes=4, seed=0)
    x, y = data.normalise(data.train_x[:40]), data.train_y[:40]
    ref_model.eval()
    loss = nn.functional.cross_entropy(ref_model(x), y)
    names = nets.prunable_weights(ref_model, "conv")
    params = dict(ref_model.named_parameters())
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    assert list(got) == names
    for n, g in zip(names, grads, strict=True):
        torch.testing.assert_close(got[n], (params[n].detach() * g).abs(), rtol=1e-4, atol=1e-7)
    mask = scratch.get_masks(spec, got, model, data)
    assert set(mask) == set(names) and masks.collapsed_layers(mask) == masks.collapsed_layers(
        masks.global_topk(got, 0.9)
    )
