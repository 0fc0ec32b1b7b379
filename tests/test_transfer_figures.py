"""pai_core.transfer_figures and the pure tables of task_pairs: verdicts and figures from hand-made numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pai_core import task_pairs, transfer_figures
from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult


def _run(zs: tuple[float, ...], rep: tuple[float, ...], *, score="magnitude", q=0.4, classes=None, ipc=50):
    spec = ExperimentSpec(score=score, sparsity=q, repair="a", images_per_class=ipc)
    tasks = []
    for k, (z, r) in enumerate(zip(zs, rep, strict=True)):
        t = TaskResult(f"t{k}", "source" if k == 0 else "transfer", 1.0, z, repaired=r)
        if classes is not None:
            t.num_classes = classes  # the class count a result may carry (issue 12)
        tasks.append(t)
    return ExperimentResult(spec, tasks, None)


def test_repair_verdict_helps_hurts_and_nothing_moved():
    helps = transfer_figures.repair_verdict([_run((0.6, 0.6, 0.5), (1.0, 0.9, 0.8))])
    assert len(helps) == 1 and "+40.0 points" in helps[0] and "transfer tasks by +30.0" in helps[0]
    assert "raised 2, left 0 and lowered 0" in helps[0] and "as P2 predicts" in helps[0]
    hurts = transfer_figures.repair_verdict([_run((0.6, 0.6, 0.5), (1.0, 0.4, 0.3))])
    assert "lowered 2" in hurts[0] and "against P2" in hurts[0]
    still = transfer_figures.repair_verdict([_run((0.6, 1.0, 1.0), (1.0, 1.0, 1.0))])
    assert "left 2" in still[0] and "tests nothing about P2" in still[0]
    # one sentence per score, runs without a correction ignored
    plain = _run((0.6, 0.6), (0.6, 0.6))
    plain = ExperimentResult(plain.spec.replace(repair=None), [TaskResult("a", "source", 1.0, 0.5)], None)
    two = transfer_figures.repair_verdict(
        [_run((0.6, 0.6), (1.0, 0.9)), _run((0.6, 0.6), (0.7, 0.7), score="diag"), plain]
    )
    assert len(two) == 2 and two[1].startswith("**diagonal Hessian**")
    assert transfer_figures.repair_verdict([plain]) == []


def test_repair_verdict_uses_the_noise_floor_when_class_counts_are_known():
    # 10 images per class x 5 classes = 50 images: a 2-point change is within 2 SE, a 30-point one is not
    small = transfer_figures.repair_verdict([_run((0.6, 0.60, 0.5), (0.8, 0.62, 0.8), classes=5, ipc=10)])
    assert "raised 1, left 1 and lowered 0 beyond the noise" in small[0]
    unknown = transfer_figures.repair_verdict([_run((0.6, 0.60, 0.5), (0.8, 0.62, 0.8), ipc=10)])
    assert "raised 2" in unknown[0] and "class counts unknown" in unknown[0]


def _pairs() -> list[task_pairs.PairAlignment]:
    rows = []
    for t, (zs, own, a, dom) in enumerate(
        [(0.9, 0.92, 0.7, "in-domain"), (0.7, 0.8, 0.5, "in-domain"), (0.4, 0.7, 0.3, "cross-domain")],
        start=1,
    ):
        rows.append(
            task_pairs.PairAlignment(
                model="m",
                suite="digits",
                score="diag",
                sparsity=0.3,
                source=0,
                source_task="a",
                transfer=t,
                transfer_task=f"t{t}",
                domain=dom,
                dense=1.0,
                zero_shot=zs,
                with_own=own,
                fisher_pearson=a,
                fisher_spearman=a,
                a_overlap=a,
                a_chance=0.05,
                b_overlap=math.nan,
                b_chance=math.nan,
                mask_jaccard=1 - a / 2,
            )
        )
    return rows


def test_alignment_frame_correlations_and_measures_agree():
    frame = task_pairs.alignment_frame(_pairs())
    assert list(frame["retention"]) == pytest.approx([0.9, 0.7, 0.4])
    assert list(frame["price"]) == pytest.approx([0.02, 0.1, 0.3])
    rho = task_pairs.alignment_correlations(frame).set_index("measure")["rho"]
    assert rho["a_overlap"] == pytest.approx(1.0) and rho["mask_jaccard"] == pytest.approx(-1.0)
    assert math.isnan(rho["b_overlap"])  # undefined, not zero
    assert transfer_figures.MEASURES == task_pairs.ALIGNMENT_MEASURES
    assert task_pairs.alignment_frame([]).empty


def test_alignment_and_price_figures_and_text():
    frame = task_pairs.alignment_frame(_pairs())
    fig = transfer_figures.alignment_figure(frame, "a_overlap")
    assert [t.name for t in fig.data] == ["in-domain", "cross-domain"]
    assert list(fig.data[0].y) == pytest.approx([90.0, 70.0]) and list(fig.data[1].x) == [0.3]
    assert fig.data[1].marker.symbol == "x"
    assert "Spearman ρ = +1.00 over 3 pairs" in fig.layout.title.text
    assert any("random subspaces 0.05" in (a.text or "") for a in fig.layout.annotations)
    with pytest.raises(ValueError, match="unknown alignment measure 'cka'; valid: fisher_pearson"):
        transfer_figures.alignment_figure(frame, "cka")
    price = transfer_figures.price_figure(frame)
    assert [t.name for t in price.data] == ["no price", "in-domain", "cross-domain"]
    assert "+14.0 points" in price.layout.title.text  # mean of 2, 10 and 30
    text = transfer_figures.alignment_text(frame)
    assert "a → t3" in text and "cross-domain" in text and "a_overlap +1.00" in text
    html = transfer_figures.alignment_report_html(frame)
    assert (
        html.count("plotly.js") >= 1 and "Every pair" in html and html.count('class="plotly-graph-div"') == 6
    )
    assert transfer_figures.alignment_text(task_pairs.alignment_frame([])) == "(no pairs)"


def test_single_pair_says_n_instead_of_a_correlation():
    frame = task_pairs.alignment_frame(_pairs()[:1])
    fig = transfer_figures.alignment_figure(frame, "fisher_pearson")
    assert "n = 1 pairs" in fig.layout.title.text
    assert isinstance(frame, pd.DataFrame)


def test_report_writes_fig3_with_crossed_bars_and_the_repair_verdict(tmp_path):
    from pai_core import store, sweep

    st = store.ResultsStore(tmp_path / "r.sqlite")
    st.record(_run((0.6, 0.6, 0.5), (1.0, 0.9, 0.8)), elapsed=1.0)
    st.record(_run((0.6, 0.6, 0.5), (0.6, 0.6, 0.5), q=0.3), elapsed=1.0)
    plain = _run((0.6, 0.6), (0.6, 0.6), q=0.5)
    st.record(
        ExperimentResult(plain.spec.replace(repair=None), [TaskResult("a", "source", 1.0, 0.5)], None),
        elapsed=1,
    )
    paths = sweep.report(st, tmp_path / "rep")
    text = paths["verdict"].read_text()
    assert "repair-a" in text and "the OBS correction computed on the source" in text
    assert "OBS-corrected" in paths["html:fig3_digits_ft-none_ipc-50_repair-a"].read_text()
    grid = pd.read_csv(paths["grid_csv"])
    assert set(grid["repair"]) == {"a", "none"} and "transfer_repaired" in grid.columns
    table = sweep.summary_table(st.frame())
    assert "trf obs" in table and "x-dom" not in table


def test_the_repair_demo_sweep_file_reads():
    from pathlib import Path

    from pai_core import sweep

    cfg = sweep.SweepConfig.from_file(Path(__file__).resolve().parents[1] / "sweeps" / "obs_repair_demo.yaml")
    specs = sweep.expand(cfg)
    assert len(specs) == 8 and all(s.repair == "a" and s.finetune is None for s in specs)


def test_layer_alignment_figure_one_line_per_measure_in_layer_order():
    from pai_core import alignment

    layers = [
        alignment.LayerAlignment(
            f"l{i}", 10, 0.9, 0.8 - 0.1 * i, 0.7, 0.05, math.nan if i == 1 else 0.5, 0.1, 0.9
        )
        for i in range(3)
    ]
    fig = transfer_figures.layer_alignment_figure(alignment.Alignment("a", "b", layers))
    by_name = {t.name: t for t in fig.data}
    assert list(by_name[transfer_figures.MEASURES["fisher_spearman"]].y) == pytest.approx([0.8, 0.7, 0.6])
    assert math.isnan(by_name[transfer_figures.MEASURES["b_overlap"]].y[1])  # a gap, not a zero
    assert list(by_name["A overlap of random subspaces (k/d)"].customdata) == ["l0", "l1", "l2"]
    assert "a → b" in fig.layout.title.text
