"""pai_core.export: PNG and SVG files of the figures, written without a browser window."""

from __future__ import annotations

import os

import plotly.graph_objects as go
import pytest

from pai_core import export


def _require_renderer() -> None:
    ok, why = export.renderer_status()
    if ok:
        return
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"static export unavailable in CI: {why}")
    pytest.skip(f"static export unavailable here: {why}")


def _fig() -> go.Figure:
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2], name="bars"))
    fig.update_layout(title="a title", height=300)
    return fig


@pytest.mark.slow
def test_png_and_svg_bytes_are_real_images() -> None:
    _require_renderer()
    png = export.figure_image(_fig(), "png", scale=1, width=400)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # The PNG header holds the pixel size: width and height as asked (scale 1).
    assert int.from_bytes(png[16:20], "big") == 400 and int.from_bytes(png[20:24], "big") == 300
    svg = export.figure_image(_fig(), "svg").decode()
    assert svg.startswith("<svg") and "a title" in svg


@pytest.mark.slow
def test_write_figure_writes_html_png_svg(tmp_path) -> None:
    _require_renderer()
    paths = export.write_figure(_fig(), tmp_path / "sub" / "fig3")
    assert set(paths) == {"html", "png", "svg"}
    assert paths["png"].name == "fig3.png" and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "plotly" in paths["html"].read_text()[:5000].lower()


def test_unknown_format_and_missing_renderer(monkeypatch, tmp_path) -> None:
    with pytest.raises(ValueError, match="png, svg"):
        export.figure_image(_fig(), "jpeg")
    monkeypatch.setattr(export, "renderer_status", lambda: (False, "no browser here"))
    with pytest.raises(export.ExportUnavailable, match="no browser here"):
        export.figure_image(_fig(), "png")
    # Without a renderer the HTML is still written, and nothing pretends to be a PNG.
    assert set(export.write_figure(_fig(), tmp_path / "f")) == {"html"}
    assert not (tmp_path / "f.png").exists()


def test_status_names_what_is_missing(monkeypatch) -> None:
    export.renderer_status.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    ok, why = export.renderer_status()
    export.renderer_status.cache_clear()
    assert not ok and "chromium" in why.lower()
