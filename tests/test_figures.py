"""pai_core.figures: the traces of each figure come out right from small hand-made results."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pai_core import figures
from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult


def _result(
    score: str,
    sparsity: float,
    *,
    source: int = 0,
    model: str = "efficientnet_lite0",
    finetune: str | None = "smoke",
    zs: tuple[float, float, float] = (0.8, 0.6, 0.5),
    ft: tuple[float, float, float] = (0.9, 0.7, 0.6),
    collapsed: tuple[str, ...] = (),
) -> ExperimentResult:
    """Three tasks; ``source`` is the source. Dense accuracy 1.0 on the source, 0.9 elsewhere."""
    spec = ExperimentSpec(model=model, score=score, sparsity=sparsity, source=source, finetune=finetune)
    tasks = []
    for k in range(3):
        role = "source" if k == source else "transfer"
        tasks.append(
            TaskResult(
                task=f"task {k}",
                role=role,
                dense=1.0 if role == "source" else 0.9,
                zero_shot=zs[k],
                finetuned=ft[k] if finetune else None,
            )
        )
    report = [
        {"name": "conv1.weight", "numel": 100, "kept": 50, "sparsity": 0.5},
        {"name": "fc.weight", "numel": 10, "kept": 0, "sparsity": 1.0},
    ]
    return ExperimentResult(
        spec=spec,
        tasks=tasks,
        schedule=finetune,
        timings={"load": 1.0, "scores": 2.0},
        layer_report=report,
        collapsed_layers=list(collapsed),
        device="cpu",
    )


def _bars(fig):
    return [t for t in fig.data if t.type == "bar"]


def test_fig3_one_solid_and_one_hatched_bar_per_score_and_row() -> None:
    results = [_result(s, q) for s in ("magnitude", "diag") for q in (0.5, 0.9)]
    fig = figures.fig3_figure(results)
    bars = _bars(fig)
    # 2 scores x (zero-shot, fine-tuned) x 2 rows (source, transfer)
    assert len(bars) == 8
    solid = [b for b in bars if not b.marker.pattern.shape]
    hatched = [b for b in bars if b.marker.pattern.shape == "/"]
    assert len(solid) == 4 and len(hatched) == 4
    assert all("zero-shot" in b.name for b in solid) and all("fine-tuned" in b.name for b in hatched)
    # One bar per sparsity, in increasing order, labelled in %.
    assert list(solid[0].x) == ["50%", "90%"]
    # Same colour for a score's solid and hatched bars; different colours for different scores.
    by_name = {b.name: b.marker.color for b in bars}
    assert by_name["magnitude · zero-shot"] == by_name["magnitude · fine-tuned on source"]
    assert by_name["magnitude · zero-shot"] != by_name["diagonal Hessian · zero-shot"]
    # Colours come from the Okabe-Ito palette.
    assert set(by_name.values()) <= set(figures.OKABE_ITO)


def test_fig3_values_rows_and_reference_lines() -> None:
    fig = figures.fig3_figure([_result("magnitude", 0.5)])
    bars = _bars(fig)
    src_zs = next(b for b in bars if b.yaxis == "y" and "zero-shot" in b.name)
    tr_ft = next(b for b in bars if b.yaxis == "y2" and "fine-tuned" in b.name)
    assert src_zs.y[0] == pytest.approx(80.0)  # source task 0: 0.8 → 80 %
    assert tr_ft.y[0] == pytest.approx(65.0)  # transfer mean of 0.7 and 0.6
    # Dense accuracy as a dashed horizontal line in each row: 100 % (source) and 90 % (transfer).
    lines = sorted(s.y0 for s in fig.layout.shapes if s.type == "line" and s.y0 == s.y1)
    assert lines == pytest.approx([90.0, 100.0])
    assert all(s.line.dash == "dash" for s in fig.layout.shapes)
    assert any(t.name == "dense (unpruned)" for t in fig.data)
    # Axis labels with units.
    assert "accuracy (%)" in fig.layout.yaxis.title.text and "source" in fig.layout.yaxis.title.text
    assert "transfer" in fig.layout.yaxis2.title.text
    assert "sparsity" in fig.layout.xaxis2.title.text and "%" in fig.layout.xaxis2.title.text


def test_fig3_without_finetuning_has_only_solid_bars() -> None:
    fig = figures.fig3_figure([_result("magnitude", 0.5, finetune=None), _result("snip", 0.5, finetune=None)])
    bars = _bars(fig)
    assert len(bars) == 4
    assert not any(b.marker.pattern.shape for b in bars)
    assert "zero-shot only" in fig.layout.title.text


def test_fig3_averages_over_sources_with_error_bars() -> None:
    a = _result("magnitude", 0.5, source=0, zs=(0.8, 0.6, 0.6))
    b = _result("magnitude", 0.5, source=1, zs=(0.6, 0.4, 0.6))
    frame = figures.fig3_frame([a, b])
    src = frame[frame["role"] == "source"].iloc[0]
    assert src["zero_shot"] == pytest.approx(60.0)  # (80 + 40) / 2
    assert src["n"] == 2 and src["zero_shot_std"] == pytest.approx(20.0)
    fig = figures.fig3_figure([a, b])
    zs = next(t for t in _bars(fig) if t.yaxis == "y" and "zero-shot" in t.name)
    assert zs.error_y.array[0] == pytest.approx(20.0)


def test_fig3_one_column_per_model() -> None:
    results = [_result("magnitude", 0.5, model=m) for m in ("efficientnet_lite0", "mobilenet_v2")]
    fig = figures.fig3_figure(results)
    assert {b.xaxis for b in _bars(fig)} == {"x", "x2", "x3", "x4"}
    titles = [a.text for a in fig.layout.annotations]
    assert "efficientnet_lite0" in titles and "mobilenet_v2" in titles


def _repaired(
    result: ExperimentResult, rep: tuple[float, ...], cross: tuple[float, ...] = ()
) -> ExperimentResult:
    """``result`` OBS-corrected (accuracies ``rep``), with cross-domain tasks (zero-shot ``cross``) if given."""
    spec = result.spec.replace(repair="a", transfer_suite="fashion-mnist" if cross else None)
    tasks = [
        TaskResult(t.task, t.role, t.dense, t.zero_shot, t.finetuned, r) for t, r in zip(result.tasks, rep)
    ]
    tasks += [
        TaskResult(
            f"fashion-mnist: {k}", "cross-domain", 0.8, z, None if result.spec.finetune is None else z, r
        )
        for k, (z, r) in enumerate(zip(cross, rep[len(result.tasks) :]))
    ]
    return ExperimentResult(spec, tasks, result.schedule, layer_report=result.layer_report)


def test_fig3_crossed_bars_for_the_obs_correction_and_a_cross_domain_row() -> None:
    fig = figures.fig3_figure([_repaired(_result("magnitude", 0.5), (0.95, 0.85, 0.75))])
    bars = _bars(fig)
    assert [b.marker.pattern.shape for b in bars if b.yaxis == "y"] == [
        "",
        "/",
        "x",
    ]  # solid, hatched, crossed
    crossed = [b for b in bars if b.marker.pattern.shape == "x"]
    assert all("OBS-corrected" in b.name for b in crossed) and len(crossed) == 2
    assert crossed[0].y[0] == pytest.approx(95.0) and crossed[1].y[0] == pytest.approx(80.0)  # mean(85, 75)
    assert crossed[0].marker.color == bars[0].marker.color  # a score keeps its colour
    assert "crossed: OBS-corrected" in fig.layout.title.text and "hatched" in fig.layout.title.text
    # without fine-tuning: solid and crossed bars only
    nofit = figures.fig3_figure([_repaired(_result("magnitude", 0.5, finetune=None), (0.95, 0.85, 0.75))])
    assert {b.marker.pattern.shape for b in _bars(nofit)} == {"", "x"}
    # a transfer suite adds a third row, labelled cross-domain, with its own dense line
    fig = figures.fig3_figure(
        [_repaired(_result("magnitude", 0.5), (0.95, 0.85, 0.75, 0.7, 0.5), (0.4, 0.6))]
    )
    assert {b.yaxis for b in _bars(fig)} == {"y", "y2", "y3"}
    assert "cross-domain" in fig.layout.yaxis3.title.text
    x = next(b for b in _bars(fig) if b.yaxis == "y3" and "zero-shot" in b.name)
    assert x.y[0] == pytest.approx(50.0)
    lines = sorted(sh.y0 for sh in fig.layout.shapes if sh.type == "line" and sh.y0 == sh.y1)
    assert lines == pytest.approx([80.0, 90.0, 100.0])
    assert "cross-domain: fashion-mnist" in fig.layout.title.text
    # tables say it too
    tasks = figures.tasks_frame(
        [_repaired(_result("magnitude", 0.5), (0.95, 0.85, 0.75, 0.7, 0.5), (0.4, 0.6))]
    )
    assert list(tasks["role"])[-2:] == ["cross-domain", "cross-domain"]
    assert tasks["OBS-corrected − zero-shot"].iloc[0] == pytest.approx(15.0)
    row = figures.results_frame(
        [_repaired(_result("magnitude", 0.5), (0.95, 0.85, 0.75, 0.7, 0.5), (0.4, 0.6))]
    )
    assert row.iloc[0]["transfer_suite"] == "fashion-mnist" and row.iloc[0]["repair"] == "a"
    assert row.iloc[0]["cross_repaired"] == pytest.approx(60.0)
    # runs with and without the correction are different settings: never one panel
    with pytest.raises(ValueError, match="repair"):
        figures.fig3_figure(
            [_result("magnitude", 0.5), _repaired(_result("magnitude", 0.9), (0.9, 0.8, 0.7))]
        )


def test_fig3_refuses_mixed_settings() -> None:
    with pytest.raises(ValueError, match="finetune"):
        figures.fig3_figure(
            [_result("magnitude", 0.5, finetune=None), _result("magnitude", 0.5, finetune="smoke")]
        )
    with pytest.raises(ValueError, match="no results"):
        figures.fig3_figure([])


def test_frames() -> None:
    results = [_result("magnitude", 0.5), _result("diag", 0.9, finetune="smoke")]
    df = figures.results_frame(results)
    assert len(df) == 2 and df.loc[0, "source_zero_shot"] == pytest.approx(80.0)
    assert df.loc[0, "seconds"] == pytest.approx(3.0)
    assert df.loc[0, "source_task"] == "task 0"
    tf = figures.tasks_frame(results)
    assert len(tf) == 6 and set(tf["role"]) == {"source", "transfer"}
    assert tf.loc[0, "fine-tuned − zero-shot"] == pytest.approx(10.0)


def test_layer_sparsity_frame_and_figure_mark_collapse() -> None:
    res = _result("magnitude", 0.5, collapsed=("fc.weight",))
    frame = figures.layer_sparsity_frame([res])
    assert list(frame["sparsity (%)"]) == [50.0, 100.0]
    assert list(frame["collapsed"]) == [False, True]
    fig = figures.layer_sparsity_figure(frame)
    assert any("collapsed" in t.name for t in fig.data)
    assert "%" in fig.layout.yaxis.title.text


def test_layer_report_with_counts_only() -> None:
    res = _result("magnitude", 0.5)
    res.layer_report = [{"layer": "a", "total": 10, "kept": 4}]
    assert figures.layer_sparsity_frame([res])["sparsity (%)"].iloc[0] == pytest.approx(60.0)


def test_jaccard_matrix_and_heatmap() -> None:
    a = {"w": torch.tensor([True, True, False, False])}
    b = {"w": torch.tensor([True, False, True, False])}
    m = figures.jaccard_matrix({"a": a, "b": b, "a again": a})
    assert m.shape == (3, 3)
    assert np.allclose(np.diag(m), 1.0)
    assert m.loc["a", "a again"] == pytest.approx(1.0)
    assert 0.0 <= m.loc["a", "b"] < 1.0 and m.loc["a", "b"] == m.loc["b", "a"]
    fig = figures.jaccard_figure(m)
    assert fig.data[0].type == "heatmap" and fig.data[0].zmin == 0 and fig.data[0].zmax == 1


def test_landscape_figure_two_panels_with_points() -> None:
    xs = ys = np.linspace(-1, 1, 5)
    z = np.add.outer(ys**2, xs**2) + 0.1
    land = SimpleNamespace(
        xs=xs,
        ys=ys,
        source_loss=z,
        transfer_loss=2 * z,
        points={"θ₀ (dense)": (0.0, 0.0), "θ̃₀ (pruned)": (0.5, 0.2), "θ̃ₛ* (pruned + fine-tuned)": (0.3, 0.1)},
        source_name="digits 0-4",
        transfer_name="fashion 5-9",
        explained_variance=(0.8, 0.2),
    )
    fig = figures.landscape_figure(land)
    contours = [t for t in fig.data if t.type == "contour"]
    assert len(contours) == 2 and {c.xaxis for c in contours} == {"x", "x2"}
    assert np.allclose(contours[0].z, np.log10(z))
    markers = [t for t in fig.data if t.type == "scatter" and t.mode == "markers"]
    assert len(markers) == 6  # three points in each panel
    assert {m.marker.symbol for m in markers} == {"circle", "x", "star"}
    assert "80%" in fig.layout.xaxis.title.text
    titles = [a.text for a in fig.layout.annotations if a.text]
    assert any("digits 0-4" in t for t in titles) and any("fashion 5-9" in t for t in titles)
    # Drawn so the small ✕ (pruned) lies on top of the ★ (fine-tuned); the legend keeps the landscape's order.
    assert [m.marker.symbol for m in markers[:3]] == ["star", "circle", "x"]
    assert "fine-tuning by" in figures.landscape_note(land)
    lin = figures.landscape_figure(land, log_scale=False)
    assert np.allclose([t for t in lin.data if t.type == "contour"][0].z, z)


def test_landscape_figure_with_the_obs_corrected_point() -> None:
    xs = ys = np.linspace(-1, 1, 5)
    z = np.add.outer(ys**2, xs**2) + 0.1
    land = SimpleNamespace(
        xs=xs,
        ys=ys,
        source_loss=z,
        transfer_loss=2 * z,
        points={
            "θ₀ (dense)": (0.0, 0.0),
            "θ̃₀ (pruned)": (0.5, 0.2),
            "θ̃ₛ* (pruned + fine-tuned)": (0.3, 0.1),
            "θ̃₀+δ (OBS-corrected, projected)": (0.1, 0.05),
        },
        off_plane={"θ̃₀+δ (OBS-corrected, projected)": 0.25},
        source_name="digits 0-4",
        transfer_name="fashion 5-9",
        explained_variance=(0.8, 0.2),
    )
    fig = figures.landscape_figure(land)
    markers = [t for t in fig.data if t.type == "scatter" and t.x[0] is not None]  # not legend-only lines
    assert len(markers) == 8 and {m.marker.symbol for m in markers} == {"circle", "x", "star", "diamond"}
    diamond = next(m for m in markers if m.marker.symbol == "diamond")
    assert diamond.name.startswith("θ̃₀+δ") and (diamond.x[0], diamond.y[0]) == (0.1, 0.05)
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 6  # pruning, fine-tuning and the correction, in both panels
    leaving = [a for a in arrows if (a.ax, a.ay) == (0.5, 0.2)]  # fine-tuning and the correction leave θ̃₀
    assert sorted((a.x, a.y) for a in leaving) == [(0.1, 0.05), (0.1, 0.05), (0.3, 0.1), (0.3, 0.1)]
    assert {(a.ax, a.ay, a.x, a.y) for a in arrows if a not in leaving} == {(0.0, 0.0, 0.5, 0.2)}  # pruning
    legend = [t.name for t in fig.data if t.type == "scatter" and t.x[0] is None]
    assert any("OBS correction" in n for n in legend)
    note = figures.landscape_note(land)
    assert "OBS correction" in note and "0.25 off it" in note


def test_labels_and_html() -> None:
    assert figures.sparsity_label(0.5904) == "59.04%"
    assert figures.sparsity_label(0.5) == "50%"
    assert figures.score_color("magnitude") == figures.score_color("magnitude")
    assert figures.score_color("unknown-score") in figures.OKABE_ITO
    assert "magnitude" in figures.run_label(ExperimentSpec(score="magnitude"), ["digits 0-4", "digits 5-9"])
    fig = figures.fig3_figure([_result("magnitude", 0.5)])
    html = figures.figure_html(fig)
    assert "<html>" in html[:200] and "plotly" in html and len(html) > 1_000_000  # plotly.js inlined: offline
    assert isinstance(figures.results_frame([]), pd.DataFrame)
    assert math.isnan(
        figures.results_frame([_result("magnitude", 0.5, finetune=None)])["source_finetuned"][0]
    )


def _with_classes(res: ExperimentResult, c: int = 5) -> ExperimentResult:
    for t in res.tasks:
        t.num_classes = c
    return res


def test_fig3_draws_chance_and_labels_dense_for_how_it_was_measured() -> None:
    res = _with_classes(_result("magnitude", 0.5))
    fig = figures.fig3_figure([res], heldout={"efficientnet_lite0": {"source": 0.74, "transfer": 0.9}})
    by_name: dict[str, list[float]] = {}
    for s in fig.layout.shapes:
        by_name.setdefault(s.name, []).append(s.y0)
    assert sorted(by_name["dense"]) == pytest.approx([90.0, 100.0])
    assert sorted(by_name["chance"]) == pytest.approx([20.0, 20.0])  # 1 / 5 classes, both rows
    assert sorted(by_name["held-out dense"]) == pytest.approx([74.0, 90.0])
    dashes = {s.name: s.line.dash for s in fig.layout.shapes}
    assert dashes == {"dense": "dash", "held-out dense": "dashdot", "chance": "dot"}
    notes = [a.text for a in fig.layout.annotations]
    assert any("fit = evaluate images, as the paper" in t for t in notes)
    assert any("held-out half 74.0%" in t for t in notes) and any("chance 20%" in t for t in notes)
    legend = {t.name for t in fig.data if t.type == "scatter"}
    assert {"dense (unpruned)", "dense, held-out half", "chance (1 / #classes)"} <= legend
    # A held-out run: its dense line is the held-out one, and no second line is drawn.
    held = _with_classes(_result("magnitude", 0.5))
    held.spec = held.spec.replace(holdout=True)
    fig = figures.fig3_figure([held], heldout={"efficientnet_lite0": {"source": 0.7, "transfer": 0.8}})
    assert {s.name for s in fig.layout.shapes} == {"dense", "chance"}
    assert any("(held-out)" in a.text for a in fig.layout.annotations)


def test_finetune_figure_shows_every_curve_and_flags_divergence() -> None:
    ok = _result("magnitude", 0.5)
    ok.finetune_log = {"loss_before": 0.5, "losses": [0.4, 0.3], "loss_after": 0.25}
    bad = _result("diag", 0.5)
    bad.finetune_log = {"loss_before": 0.077, "losses": [0.3, 0.6], "loss_after": 0.739}
    fig = figures.finetune_figure([ok, bad])
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert len(lines) == 2
    curve = next(t for t in lines if t.name.startswith("magnitude"))
    assert list(curve.x) == [0, 1, 2] and list(curve.y) == pytest.approx([0.5, 0.4, 0.3])
    assert any("DIVERGED" in t.name for t in lines) and not any(
        "DIVERGED" in t.name for t in lines if "magnitude" in t.name
    )
    finals = {t.name: t for t in fig.data if t.mode == "markers"}
    bad_final = next(t for n, t in finals.items() if "DIVERGED" in n)
    assert bad_final.y[0] == pytest.approx(0.739) and bad_final.marker.symbol == "x"
    with pytest.raises(ValueError, match="no fine-tuned"):
        figures.finetune_figure([_result("magnitude", 0.5, finetune=None)])


def test_imagenet_figure_counts_photos() -> None:
    from pai_core.imagenet_check import ImageNetCheck

    dense = ImageNetCheck("efficientnet_lite0", 0.0, 18, 20)
    a = ImageNetCheck("efficientnet_lite0", 0.36, 17, 20)
    a.score = "magnitude"
    b = ImageNetCheck("efficientnet_lite0", 0.4752, 0, 20)
    b.score = "magnitude"
    fig = figures.imagenet_figure([dense, a, b])
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["dense", "magnitude"]
    assert list(bars[0].y) == [90.0] and list(bars[1].y) == [85.0, 0.0]
    assert list(bars[1].text) == ["17/20", "0/20"] and list(bars[1].x) == ["36%", "47.52%"]
    assert "20 real photos" in fig.layout.title.text and "5 points" in fig.layout.title.text


def test_sparsities_are_printed_as_given() -> None:
    assert figures.sparsity_percent(0.5904) == 59.04 and figures.sparsity_label(0.5904) == "59.04%"
    assert figures.sparsity_label(0.12345) == "12.345%" and figures.sparsity_label(0.1) == "10%"
    table = figures.results_table([_result("kfac", 0.5904)])
    assert table.loc[0, "sparsity (%)"] == 59.04 and str(float(table.loc[0, "sparsity (%)"])) == "59.04"
    assert table.loc[0, "score"] == "block Hessian (K-FAC)"  # the label, not the key
    # Accuracy columns straight after the run's identity; the key last.
    cols = list(table.columns)
    assert (
        cols[:3] == ["model", "score", "sparsity (%)"] and cols[3].endswith("(%)") and "zero-shot" in cols[3]
    )
    assert cols[-1] == "key"
    assert "images/class" in table.loc[0, "settings"] and "suite=" not in table.loc[0, "settings"]


def test_settings_cover_every_spec_field_but_the_runs_identity() -> None:
    cols = figures.setting_columns()
    assert {"suite", "finetune", "holdout", "images_per_class", "mask_scope", "loss", "alpha"} <= set(cols)
    assert not {"model", "score", "sparsity", "source", "seed", "device"} & set(cols)
    a = _result("magnitude", 0.5)
    b = _result("magnitude", 0.5)
    b.spec = b.spec.replace(alpha=0.5)
    assert figures.setting_label(a.spec) != figures.setting_label(b.spec)
    assert "ridge α 0.5" in figures.setting_label(b.spec)
    with pytest.raises(ValueError, match="alpha"):
        figures.fig3_figure([a, b])


def test_landscape_points_coloured_by_exact_loss_with_both_arrows_and_one_row_per_score() -> None:
    xs = ys = np.linspace(-1, 1, 5)
    z = np.add.outer(ys**2, xs**2) + 0.1
    pts = {"θ₀ (dense)": (0.0, 0.0), "θ̃₀ (pruned)": (0.5, 0.2), "θ̃ₛ* (pruned + fine-tuned)": (0.3, 0.1)}
    exact = {"θ₀ (dense)": (0.001, 0.002), "θ̃₀ (pruned)": (0.4, 0.9), "θ̃ₛ* (pruned + fine-tuned)": (0.2, 0.5)}

    def land(score: str) -> SimpleNamespace:
        return SimpleNamespace(
            xs=xs,
            ys=ys,
            source_loss=z,
            transfer_loss=2 * z,
            points=pts,
            point_losses=exact,
            source_name="a",
            transfer_name="b",
            explained_variance=(0.8, 0.2),
            spec=ExperimentSpec(score=score, sparsity=0.4752, finetune="cpu"),
        )

    fig = figures.landscape_figure([land("magnitude"), land("diag")])
    contours = [t for t in fig.data if t.type == "contour"]
    assert len(contours) == 4  # 2 scores x (source, transfer)
    titles = [a.text for a in fig.layout.annotations if a.text]
    assert any(t.startswith("magnitude at 47.52%") for t in titles)
    assert any(t.startswith("diagonal Hessian at 47.52%") for t in titles)
    dense_src = next(
        t
        for t in fig.data
        if t.type == "scatter" and t.mode == "markers" and t.name.startswith("θ₀") and t.xaxis == "x"
    )
    # Filled by its exact loss on the contour's own scale (log10 0.001 = -3, below the grid's minimum).
    assert dense_src.marker.color[0] == pytest.approx(-3.0)
    assert dense_src.marker.cmin == pytest.approx(float(np.log10(z).min()))
    assert "exact" in dense_src.hovertemplate
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 8  # pruning and fine-tuning in each of the 4 panels
    assert {a.arrowcolor for a in arrows} == {"#D55E00", "#0072B2"}
    prune = next(a for a in arrows if a.arrowcolor == "#D55E00" and a.xref == "x")
    assert (prune.ax, prune.ay, prune.x, prune.y) == (0.0, 0.0, 0.5, 0.2)
