"""AppTest smoke tests for the entry point and pages 2–4 (the toy page has tests/test_page_toy.py).

Each test gets an empty cache folder (``PAI_CACHE_DIR``), so what a page shows is what it computed.
The Prune page runs a real, tiny experiment end to end (EfficientNet-Lite0 on digits, 10 images per
class, magnitude at one sparsity, the 2-epoch "smoke" fine-tuning) and must draw its bars.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from pai_core import defaults, experiment, figures, masks, store
from pai_core.results import ExperimentSpec

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
PRUNE = ROOT / "app_pages" / "2_Prune_and_evaluate.py"
LANDSCAPE = ROOT / "app_pages" / "3_Loss_landscape.py"
RESULTS = ROOT / "app_pages" / "4_Results.py"

# Generous: the first real run extracts features and fine-tunes on 2 CPU cores.
TIMEOUT = 300
TINY_LEVEL = float(masks.PAPER_SPARSITIES[0])


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("PAI_CACHE_DIR", str(path))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    monkeypatch.delenv("PAI_IMAGENET10_ROOT", raising=False)
    return path


def _app(path: Path) -> AppTest:
    at = AppTest.from_file(str(path), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _charts(at: AppTest) -> dict[str, dict]:
    """Plotly charts on the page by their element key suffix → figure spec."""
    return {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


def _chart(at: AppTest, key: str) -> dict:
    found = [spec for cid, spec in _charts(at).items() if key in cid]
    assert found, f"no chart {key!r} among {list(_charts(at))}"
    return found[0]


def _shape(z) -> tuple[int, ...]:
    """Shape of plotly array data, plain nested lists or plotly's typed-array form."""
    if isinstance(z, dict) and "shape" in z:
        return tuple(int(n) for n in str(z["shape"]).split(","))
    return (len(z), len(z[0]))


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def _errors(at: AppTest) -> str:
    return " ".join(e.value for e in at.error)


# ----------------------------------------------------------------------------- overview


def test_overview_renders_device_cache_models_and_suites() -> None:
    at = _app(APP)
    assert "PaI Explorer" in at.title[0].value
    text = " ".join(m.value for m in at.markdown)
    assert "P1" in text and "P2" in text
    assert "Device in use" in text and ("CPU" in text or "cuda" in text)
    assert "PAI_IMAGENET10_ROOT" in text
    frames = [d.value for d in at.dataframe]
    models_df = next(f for f in frames if "model" in f.columns)
    suites_df = next(f for f in frames if "suite" in f.columns)
    assert models_df.loc[models_df["model"] == "efficientnet_lite0", "works offline here"].item()
    assert not models_df.loc[models_df["model"] == "resnet50", "works offline here"].item()
    assert "needs" in suites_df.columns and "imagenet10" in set(suites_df["suite"])
    assert not at.error


# ----------------------------------------------------------------------------- prune & evaluate


def test_prune_page_renders_defaults() -> None:
    at = _app(PRUNE)
    assert at.title[0].value.startswith("Prune & evaluate")
    assert at.selectbox(key="prune_w_model").value == "efficientnet_lite0"
    # The defaults come from pai_core.defaults: Fashion-MNIST where installed, the model's own levels,
    # fine-tuning on (the safe CPU schedule without a GPU).
    assert at.selectbox(key="prune_w_suite").value == defaults.suite()
    assert len(at.multiselect(key="prune_w_scores").value) == 2
    gpu = torch.cuda.is_available()
    assert at.multiselect(key="prune_w_levels").value == list(
        defaults.for_model("efficientnet_lite0").selection(gpu)
    )
    assert at.selectbox(key="prune_w_finetune").value == defaults.schedule(gpu)
    assert not _button(at, "Run").disabled
    assert not at.error
    # Another model gets its own levels.
    at.selectbox(key="prune_w_model").set_value("mobilenet_v2").run()
    assert at.multiselect(key="prune_w_levels").value == list(
        defaults.for_model("mobilenet_v2").selection(gpu)
    )


def test_prune_page_runs_a_tiny_experiment_and_draws_bars() -> None:
    at = _app(PRUNE)
    at.multiselect(key="prune_w_scores").set_value(["magnitude"])
    at.multiselect(key="prune_w_levels").set_value([TINY_LEVEL])
    at.number_input(key="prune_w_ipc").set_value(10)
    at.selectbox(key="prune_w_finetune").set_value("smoke")
    _button(at, "Run").click()
    at.run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, _errors(at)
    spec = _chart(at, "prune_fig3")
    bars = [t for t in spec["data"] if t["type"] == "bar"]
    assert len(bars) == 4  # magnitude x (zero-shot, fine-tuned) x (source, transfer)
    assert any(t.get("marker", {}).get("pattern", {}).get("shape") == "/" for t in bars)
    assert all(0.0 <= y <= 100.0 for t in bars for y in t["y"])
    assert "accuracy (%)" in spec["layout"]["yaxis"]["title"]["text"]
    # Reference lines: the dense line says how it was measured; chance (5 classes) and held-out dense.
    shapes = {sh.get("name") for sh in spec["layout"]["shapes"]}
    assert {"dense", "chance", "held-out dense"} <= shapes
    notes = " ".join(a.get("text", "") for a in spec["layout"]["annotations"])
    assert "fit = evaluate images, as the paper" in notes and "chance 20%" in notes
    # The verdict under the figure, the fine-tuning curve and the ImageNet check come with it.
    text = " ".join(m.value for m in at.markdown)
    assert "What these runs say" in text and "**P1**" in text and "**P2**" in text
    assert _chart(at, "prune_finetune")["data"]
    inet = _chart(at, "prune_imagenet")
    assert "20 real photos" in inet["layout"]["title"]["text"]
    assert {b.proto.label for b in at.get("download_button")} >= {"HTML", "PNG", "SVG"}
    # The per-task table and the per-layer sparsity chart come with it; the result persists.
    assert _chart(at, "prune_layers")["data"]
    assert len(at.session_state["prune_output"]["results"]) == 1
    assert at.session_state["prune_job"] is None  # finished: Run is enabled again
    assert not _button(at, "Run").disabled
    # A rerun (any widget change) keeps the figure without running again.
    at.run()
    assert _chart(at, "prune_fig3")
    # Mask overlap across two source tasks: magnitude ignores the data, so its masks coincide (Jaccard 1).
    at.multiselect(key="prune_w_overlap_sources").set_value([0, 1])
    _button(at, "Compare masks").click()
    at.run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, _errors(at)
    heat = _chart(at, "prune_overlap")["data"][0]
    assert heat["type"] == "heatmap" and len(heat["x"]) == 2
    assert at.session_state["overlap_output"]["matrix"].to_numpy().min() == pytest.approx(1.0)


def test_prune_page_explains_missing_weights_without_traceback() -> None:
    at = _app(PRUNE)
    at.selectbox(key="prune_w_model").set_value("resnet50").run()
    at.text_input(key="prune_w_checkpoint").input("/nonexistent/resnet50.pth").run()
    _button(at, "Run").click().run()
    assert not at.exception
    assert "not available" in _errors(at) and "/nonexistent/resnet50.pth" in _errors(at)
    assert not at.get("plotly_chart")
    assert at.session_state["prune_job"] is None


def test_prune_page_explains_missing_data_folder() -> None:
    at = _app(PRUNE)
    at.selectbox(key="prune_w_suite").set_value("imagenet10").run()
    assert not at.exception
    assert "data" in _errors(at).lower()
    at.text_input(key="prune_w_root").input("/nonexistent/imagenet/val").run()
    assert not at.exception
    assert "/nonexistent/imagenet/val" in _errors(at)
    assert _button(at, "Run").disabled


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message for 'cuda' on a machine without a GPU"
)
def test_prune_page_explains_cuda_without_gpu() -> None:
    at = _app(PRUNE)
    at.selectbox(key="prune_w_device").set_value("cuda")
    _button(at, "Run").click().run()
    assert not at.exception
    assert "no GPU" in _errors(at)


def test_prune_page_refuses_empty_score_list() -> None:
    at = _app(PRUNE)
    at.multiselect(key="prune_w_scores").set_value([])
    _button(at, "Run").click().run()
    assert not at.exception
    assert "at least one pruning score" in _errors(at)


# ----------------------------------------------------------------------------- loss landscape


def test_landscape_page_renders_defaults() -> None:
    at = _app(LANDSCAPE)
    assert at.title[0].value.startswith("Loss landscape")
    assert at.selectbox(key="land_w_source").value != at.selectbox(key="land_w_transfer").value
    assert not _button(at, "Compute landscape").disabled
    assert not at.error


@pytest.mark.slow
def test_landscape_page_computes_a_small_grid() -> None:
    at = _app(LANDSCAPE)
    # timm's tiny test_resnet (random weights) keeps this a wiring test, not a 2-CPU-minute one.
    at.selectbox(key="land_w_model").set_value("test_resnet").run()
    at.number_input(key="land_w_ipc").set_value(5)
    at.number_input(key="land_w_images").set_value(5)
    at.select_slider(key="land_w_grid").set_value(5)
    at.selectbox(key="land_w_finetune").set_value("smoke")
    # The default is magnitude and the diagonal Hessian side by side: one row of two panels each.
    assert at.multiselect(key="land_w_scores").value == ["magnitude", "diag"]
    _button(at, "Compute landscape").click()
    at.run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, _errors(at)
    spec = _chart(at, "land_fig")
    contours = [t for t in spec["data"] if t["type"] == "contour"]
    assert len(contours) == 4
    # 5 evenly spaced lines per axis plus the three points' own coordinates.
    rows, cols = _shape(contours[0]["z"])
    assert 5 < rows <= 8 and 5 < cols <= 8
    names = {t["name"] for t in spec["data"] if t["type"] == "scatter"}
    assert any(n.startswith("θ̃ₛ*") for n in names) and any(n.startswith("θ̃₀") for n in names)
    text = " ".join(m.value for m in at.markdown)
    assert "What the planes show" in text and "Pruning" in text
    # The log toggle redraws the stored landscapes: no job is queued, the colour values change.
    at.toggle(key="land_w_log").set_value(False).run()
    assert at.session_state["land_job"] is None and not at.exception
    linear = [t for t in _chart(at, "land_fig")["data"] if t["type"] == "contour"]
    assert "log" not in linear[0]["colorbar"]["title"]["text"]


# ----------------------------------------------------------------------------- results


def test_results_page_without_runs_says_so() -> None:
    at = _app(RESULTS)
    assert any("No finished runs" in i.value for i in at.info)


def test_results_page_lists_runs_draws_grid_and_offers_downloads() -> None:
    spec = ExperimentSpec(model="test_resnet", score="magnitude", sparsity=TINY_LEVEL, images_per_class=5)
    store.record_run(experiment.run(spec))  # what the Prune page and the CLI do after a run
    store.record_run(experiment.run(spec.replace(score="random")))
    at = _app(RESULTS)
    table = next(d.value for d in at.dataframe if "score" in d.value.columns)
    # Score labels, not keys; sparsity as given; accuracy columns straight after the run's identity.
    assert set(table["score"]) == {figures.score_label("magnitude"), figures.score_label("random")}
    assert list(table["sparsity (%)"]) == [100 * TINY_LEVEL] * 2 and list(table.columns)[3].endswith("(%)")
    assert "images/class" in table["settings"].iloc[0]
    bars = [t for t in _chart(at, "results_fig3")["data"] if t["type"] == "bar"]
    assert len(bars) == 4  # 2 scores x (source, transfer); no fine-tuning: solid only
    labels = {b.proto.label for b in at.get("download_button")}
    assert {"Download table (CSV)", "Download runs (JSON)", "HTML", "PNG", "SVG"} <= labels
    # Choosing fewer runs to draw redraws the figure with fewer bars.
    keys = at.multiselect(key="results_w_overlay").value
    assert len(keys) == 2
    at.multiselect(key="results_w_overlay").set_value(keys[:1]).run()
    assert len([t for t in _chart(at, "results_fig3")["data"] if t["type"] == "bar"]) == 2
    assert any("What these runs say" in m.value or "P1 and P2" in m.value for m in at.markdown)
    _button(at, "Prepare masks file").click().run()
    assert not at.exception, at.exception
    blob = at.session_state["results_masks"]
    assert blob is not None and blob["bytes"][:8] and len(blob["bytes"]) > 100
