"""AppTest smoke tests for app_pages/1_Toy_landscapes.py, plus the structure of the figure it shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pai_core.toy import preset, scenario_from_spec
from pai_core.toy_figures import toy_figure

PAGE = Path(__file__).resolve().parents[1] / "app_pages" / "1_Toy_landscapes.py"


def _figure_spec(at: AppTest) -> dict:
    """The main figure (the page also draws the three scores side by side, keyed toy_side_*)."""
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith("toy_figure")]
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def _markers(spec: dict) -> dict[str, tuple[float, float]]:
    """Marker traces by legend name -> their single (x, y)."""
    return {t["name"]: (t["x"][0], t["y"][0]) for t in spec["data"] if t.get("mode") == "markers"}


@pytest.fixture
def at() -> AppTest:
    app = AppTest.from_file(str(PAGE), default_timeout=30)
    app.run()
    assert not app.exception, app.exception
    return app


def test_page_renders_figure_table_and_text(at: AppTest) -> None:
    spec = _figure_spec(at)
    assert spec["layout"]["xaxis"]["title"]["text"] == "θ[1]"
    assert spec["layout"]["yaxis"]["title"]["text"] == "θ[2]"
    assert len(at.dataframe) == 1
    df = at.dataframe[0].value
    assert list(df.columns) == ["point", "θ[1]", "θ[2]", "source loss", "transfer loss"]
    assert len(df) == 4
    assert df["source loss"].iloc[0] == 0.0
    assert any("Guided tour" in e.label for e in at.expander)
    assert any("camera" in c.value for c in at.caption)
    assert {b.proto.label for b in at.get("download_button")} == {"HTML", "PNG", "SVG"}
    # Fig. 2: the three scores side by side, each its own small figure.
    sides = [c for c in at.get("plotly_chart") if "toy_side_" in c.proto.id]
    assert len(sides) == 3
    text = " ".join(m.value for m in at.markdown)
    assert "Computed on the transfer task" in text and "**P1**" in text


def test_moving_a_slider_changes_the_figure(at: AppTest) -> None:
    before = _figure_spec(at)
    at.slider(key="toy_rotation_deg").set_value(90.0).run()
    assert not at.exception
    after = _figure_spec(at)
    assert after != before
    # The transfer contours are the ones that rotate; the source landscape stays put.
    src_before = next(t for t in before["data"] if t["name"] == "source loss")
    src_after = next(t for t in after["data"] if t["name"] == "source loss")
    tr_before = next(t for t in before["data"] if t["name"].startswith("transfer"))
    tr_after = next(t for t in after["data"] if t["name"].startswith("transfer"))
    assert src_before["z"] == src_after["z"]
    assert tr_before["z"] != tr_after["z"]
    # Moving a slider leaves the preset: the selector says "custom" now.
    assert at.selectbox(key="toy_preset").value == "custom"


def test_theta0_slider_moves_the_marker(at: AppTest) -> None:
    at.slider(key="toy_theta0_1").set_value(-1.2).run()
    assert not at.exception
    assert _markers(_figure_spec(at))["θ₀ (pre-trained)"][0] == pytest.approx(-1.2)


@pytest.mark.parametrize("name", ["misaligned", "isotropic", "diagonal", "tilted"])
def test_presets_set_the_sliders_and_match_the_core(at: AppTest, name: str) -> None:
    at.selectbox(key="toy_preset").set_value(name).run()
    assert not at.exception
    spec = preset(name)
    assert at.slider(key="toy_rotation_deg").value == spec.rotation_deg
    assert at.slider(key="toy_tilt_deg").value == spec.tilt_deg
    assert at.selectbox(key="toy_score").value == spec.score
    expected = scenario_from_spec(spec)
    markers = _markers(_figure_spec(at))
    assert markers["θ̃ₛ* (retrained)"] == pytest.approx(tuple(expected.retrained))
    assert markers["θ̃₀ (pruned)"] == pytest.approx(tuple(expected.pruned))


def test_score_and_checkbox_change_the_figure(at: AppTest) -> None:
    at.selectbox(key="toy_preset").set_value("diagonal").run()
    pruned_diag = _markers(_figure_spec(at))["θ̃₀ (pruned)"]
    at.selectbox(key="toy_score").set_value("magnitude").run()
    assert not at.exception
    pruned_mag = _markers(_figure_spec(at))["θ̃₀ (pruned)"]
    assert pruned_diag == pytest.approx((1.0, 0.0))  # diagonal score removes θ[2]
    assert pruned_mag == pytest.approx((0.0, 1.5))  # magnitude removes θ[1]
    at.checkbox(key="toy_show_transfer").uncheck().run()
    names = [t["name"] for t in _figure_spec(at)["data"]]
    assert not any(n.startswith("transfer") for n in names)


def test_toy_figure_structure() -> None:
    result = scenario_from_spec(preset("tilted"))
    fig = toy_figure(result)
    names = [t.name for t in fig.data]
    for expected in (
        "source loss",
        "transfer loss (unseen)",
        "retraining on source (GD)",
        "θ₀ (pre-trained)",
        "θ̃₀ (pruned)",
        "θ₀ + δ (OBS, Eq. 3)",
        "θ̃ₛ* (retrained)",
    ):
        assert expected in names
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.yaxis.scaleratio == 1
    src = fig.data[names.index("source loss")]
    tr = fig.data[names.index("transfer loss (unseen)")]
    assert src.colorscale is not None and src.contours.coloring == "fill"
    assert tr.line.dash == "dash" and tr.contours.coloring == "none"
    path = fig.data[names.index("retraining on source (GD)")]
    assert path.line.dash == "dash" and len(path.x) == len(result.retrain_path)
    assert len(fig.layout.annotations) >= 1  # the pruning arrow
    with pytest.raises(ValueError, match="grid_points"):
        toy_figure(result, grid_points=3)


def test_aligned_and_tilted_presets_differ_on_the_page(at: AppTest) -> None:
    aligned = _figure_spec(at)
    at.selectbox(key="toy_preset").set_value("tilted").run()
    assert _markers(_figure_spec(at)) != _markers(aligned)


def test_angles_are_shown_in_degrees(at: AppTest) -> None:
    assert at.slider(key="toy_rotation_deg").proto.format == "%d°"
    assert at.slider(key="toy_tilt_deg").proto.format == "%d°"


def test_no_move_is_claimed_when_nothing_moves(at: AppTest) -> None:
    at.selectbox(key="toy_preset").set_value("diagonal").run()
    text = " ".join(m.value for m in at.markdown)
    assert "does not move" in text and "moves θ" not in text
