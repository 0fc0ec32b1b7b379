"""AppTest smoke tests of what goes beyond the paper on the pages: the OBS-corrected bars and verdict
(Prune, Results), and the Task alignment page running a tiny real alignment end to end.

Each test gets an empty cache folder (``PAI_CACHE_DIR``), so what a page shows is what it computed.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pai_core import experiment, masks, store
from pai_core.results import ExperimentSpec

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
PRUNE = ROOT / "app_pages" / "2_Prune_and_evaluate.py"
RESULTS = ROOT / "app_pages" / "4_Results.py"
ALIGN = ROOT / "app_pages" / "6_Task_alignment.py"

TIMEOUT = 400
TINY_LEVEL = float(masks.PAPER_SPARSITIES[0])


def _fashion_installed() -> bool:
    try:
        experiment.get_suite("fashion-mnist", None, 2, 0)
    except Exception:
        return False
    return True


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("PAI_CACHE_DIR", str(path))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    return path


def _app(path: Path) -> AppTest:
    at = AppTest.from_file(str(path), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _chart(at: AppTest, key: str) -> dict:
    found = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if key in c.proto.id]
    assert found, f"no chart {key!r}"
    return found[0]


def _values(v) -> list[float]:
    """Plotly array data: a plain list, or plotly's typed-array form ``{"dtype", "bdata"}``."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def _errors(at: AppTest) -> str:
    return " ".join(e.value for e in at.error)


def test_overview_links_the_alignment_page() -> None:
    at = _app(APP)
    assert any("Task alignment" in str(link.proto.label) for link in at.get("page_link"))


def test_prune_page_obs_correction_draws_crossed_bars_and_says_whether_it_helps() -> None:
    at = _app(PRUNE)
    at.multiselect(key="prune_w_scores").set_value(["magnitude"])
    at.multiselect(key="prune_w_levels").set_value([TINY_LEVEL])
    at.number_input(key="prune_w_ipc").set_value(10)
    at.selectbox(key="prune_w_finetune").set_value("off")
    at.selectbox(key="prune_w_repair").set_value("a")
    _button(at, "Run").click()
    at.run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, _errors(at)
    bars = [t for t in _chart(at, "prune_fig3")["data"] if t["type"] == "bar"]
    crossed = [t for t in bars if t.get("marker", {}).get("pattern", {}).get("shape") == "x"]
    assert len(bars) == 4 and len(crossed) == 2  # magnitude x (zero-shot, OBS-corrected) x (source, transfer)
    assert all("OBS-corrected" in t["name"] for t in crossed)
    res = at.session_state["prune_output"]["results"][0]
    assert res.spec.repair == "a" and all(t.repaired is not None for t in res.tasks)
    assert any("the OBS correction computed on the source" in m.value for m in at.markdown)
    row = store.ResultsStore().frame().iloc[0]  # recorded like every run
    assert row["repair"] == "a" and row["transfer_repaired"] == pytest.approx(res.mean_transfer_repaired)


@pytest.mark.skipif(not _fashion_installed(), reason="Fashion-MNIST is not installed (dataset-fashion-mnist)")
def test_results_page_shows_crossed_bars_a_cross_domain_row_and_the_verdict() -> None:
    spec = ExperimentSpec(
        model="test_resnet",
        score="magnitude",
        sparsity=TINY_LEVEL,
        images_per_class=5,
        repair="a",
        transfer_suite="fashion-mnist",
    )
    store.record_run(experiment.run(spec))
    at = _app(RESULTS)
    assert not at.error, _errors(at)
    fig = _chart(at, "results_fig3")
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert {t["yaxis"] for t in bars} == {"y", "y2", "y3"}  # source, transfer, cross-domain
    assert "cross-domain" in fig["layout"]["yaxis3"]["title"]["text"]
    assert any(t.get("marker", {}).get("pattern", {}).get("shape") == "x" for t in bars)
    assert any("the OBS correction computed on the source" in m.value for m in at.markdown)
    assert "a" in at.multiselect(key="results_w_repair").options


def test_alignment_page_measures_a_tiny_real_alignment() -> None:
    at = _app(ALIGN)
    assert at.title[0].value.startswith("Task alignment")
    assert not _button(at, "Measure alignment").disabled
    suite = "fashion-mnist" if _fashion_installed() else "digits"  # two tasks: one pair, the cheapest
    at.selectbox(key="align_w_suite").set_value(suite).run()
    at.number_input(key="align_w_ipc").set_value(3)
    at.number_input(key="align_w_k").set_value(3)
    _button(at, "Measure alignment").click()
    at.run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, _errors(at)
    rows = at.session_state["align_output"]["rows"]
    n_tasks = len(experiment.get_suite(suite, None, 3, 0).tasks)
    assert len(rows) == n_tasks - 1 and all(r.source == 0 for r in rows)
    scatter = _chart(at, "align_fig")
    assert scatter["data"] and "Does alignment predict transfer?" in scatter["layout"]["title"]["text"]
    points = [y for t in scatter["data"] for y in _values(t["y"])]
    assert len(points) == len(rows) and all(0.0 <= y <= 100.5 for y in points)
    assert _chart(at, "align_price")["data"]
    table = next(d.value for d in at.dataframe if "transfer_task" in d.value.columns)
    assert len(table) == len(rows)
    # another measure on the x axis: the same pairs, redrawn without computing
    at.selectbox(key="align_w_measure").set_value("mask_jaccard").run()
    assert not at.exception, at.exception
    assert "mask Jaccard" in _chart(at, "align_fig")["layout"]["xaxis"]["title"]["text"]
    # one pair layer by layer, from the cached stages
    _button(at, "Show per-layer alignment").click().run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, _errors(at)
    layers = _chart(at, "align_layers_fig")
    assert len(_values(layers["data"][0]["y"])) == len(at.session_state["align_layers"].layers) > 10
