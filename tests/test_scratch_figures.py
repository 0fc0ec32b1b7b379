"""Figures of the from-scratch protocol: numbers in the traces equal the means/spreads of the runs."""

from __future__ import annotations

import math

import pytest

from pai_core import scratch_figures as sf
from pai_core.scratch_spec import ScratchResult, ScratchSpec


def fake(
    score: str, q: float, warm: str, seed: int, acc: float, layers=(0.5, 0.1, 0.0), **spec
) -> ScratchResult:
    dens = [
        {"name": f"l{i}.weight", "numel": 100, "kept": int(100 * d), "density": d}
        for i, d in enumerate(layers)
    ]
    return ScratchResult(
        spec=ScratchSpec(score=score, sparsity=q, bn_warmup=warm, seed=seed, **spec),
        final_acc=acc,
        best_acc=acc + 0.01,
        best_epoch=1,
        curve=[
            {"epoch": 1, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "test_loss": 1.0, "test_acc": acc}
        ],
        layer_density=dens,
        collapsed_layers=[d["name"] for d in dens if d["kept"] == 0],
        kept=sum(d["kept"] for d in dens),
        total=300,
        pruned_nonzero=0,
        schedule={},
        train_examples=1,
        test_examples=1,
        score_examples=1,
    )


@pytest.fixture
def grid():
    runs = [fake("magnitude", 0.0, "off", s, 0.90 + 0.02 * s, layers=(1.0, 1.0, 1.0)) for s in (0, 1)]
    for q in (0.9, 0.99):
        for s in (0, 1):
            runs.append(fake("random", q, "off", s, 0.5 + 0.1 * s))
            runs.append(fake("snip", q, "off", s, 0.6 + 0.02 * s))
            runs.append(fake("snip", q, "paper", s, 0.7 + 0.04 * s, layers=(0.5, 0.1, 0.05)))
    return runs


def test_aggregate_is_mean_and_sample_std_over_seeds(grid):
    agg = sf.aggregate(sf.results_frame(grid))
    row = agg[(agg["score"] == "snip") & (agg["bn_warmup"] == "paper") & (agg["sparsity"] == 0.99)].iloc[0]
    assert row["mean"] == pytest.approx(72.0) and row["std"] == pytest.approx(4 / math.sqrt(2))
    assert row["n"] == 2 and row["min"] == pytest.approx(70) and row["max"] == pytest.approx(74)
    dense = agg[agg["score"] == "dense"].iloc[0]
    assert dense["mean"] == pytest.approx(91.0) and dense["collapsed"] == 0
    assert agg[(agg["score"] == "snip") & (agg["bn_warmup"] == "off")]["collapsed"].tolist() == [1.0, 1.0]


def test_accuracy_vs_sparsity_traces(grid):
    fig = sf.accuracy_vs_sparsity_figure(sf.results_frame(grid))
    names = [t.name for t in fig.data]
    assert names == [
        "random · no warm-up",
        "SNIP · no warm-up",
        "SNIP · BN warm-up (paper: running avg.)",
    ]
    t = fig.data[2]
    assert list(t.x) == pytest.approx([10.0, 1.0])  # remaining density in %, log axis
    assert list(t.y) == pytest.approx([72.0, 72.0])
    assert list(t.error_y.array) == pytest.approx([4 / math.sqrt(2)] * 2)
    assert t.line.dash == "solid" and fig.data[1].line.dash == "dash"
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.ticktext) == ["90%", "99%"]
    assert any("dense 91.0%" in (a.text or "") for a in fig.layout.annotations)
    rng = sf.accuracy_vs_sparsity_figure(sf.results_frame(grid), spread="range")
    assert list(rng.data[0].error_y.array) == pytest.approx([5.0, 5.0])  # random: 50 and 60 -> +5/-5


def test_mixed_settings_are_refused(grid):
    grid.append(fake("snip", 0.9, "off", 0, 0.5, model="vgg11"))
    with pytest.raises(ValueError, match="model"):
        sf.accuracy_vs_sparsity_figure(sf.results_frame(grid))


def test_warmup_and_layer_density_figures(grid):
    frame = sf.results_frame(grid)
    wf = sf.warmup_figure(frame)
    bars = [t for t in wf.data if t.name == sf.WARMUP_LABELS["paper"]]
    assert len(bars) == 2 and list(bars[0].x) == ["random", "SNIP"]
    assert math.isnan(bars[0].y[0]) and bars[0].y[1] == pytest.approx(72.0)  # random has no warm-up run

    lf = sf.layer_density_figure(grid)
    assert "99%" in lf.layout.title.text
    off_snip = next(t for t in lf.data if t.name == "SNIP" and t.xaxis == "x")
    assert list(off_snip.marker.symbol) == ["circle", "circle", "x"]  # the collapsed layer
    assert off_snip.y[2] == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="0.5"):
        sf.layer_density_figure(grid, sparsity=0.5)


def test_summary_markdown_and_dict_inputs(grid):
    text = sf.summary_markdown(sf.results_frame([r.to_dict() for r in grid]))
    assert text.startswith("Dense (unpruned) network: 91.0 ± 1.4 (n=2)")
    assert "| SNIP | paper | 72.0 ± 2.8 (n=2) | 72.0 ± 2.8 (n=2) |" in text
    assert "1.0 collapsed" in text
    fig = sf.training_curves_figure(grid[:2])
    assert len(fig.data) == 2 and list(fig.data[0].y) == [90.0]
