"""AppTest smoke tests of the From scratch page: defaults, a tiny real experiment end to end, bad settings.

Each test gets an empty cache folder (``PAI_CACHE_DIR``), so what the page shows is what it
computed: a tiny VGG on 200 Fashion-MNIST images, one epoch (the ``smoke`` schedule).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pai_core import datasets
from pai_core.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "app_pages" / "5_From_scratch.py"
TIMEOUT = 300
HAVE_FASHION = any(Path(d).is_dir() for d in datasets.FASHION_DIRS)


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    return tmp_path / "cache"


def _app() -> AppTest:
    at = AppTest.from_file(str(PAGE), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def _button(at: AppTest, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def _chart(at: AppTest, key: str) -> dict:
    found = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if key in c.proto.id]
    assert found, f"no chart {key!r}"
    return found[0]


def test_page_renders_defaults_and_says_what_deviates_from_the_paper() -> None:
    at = _app()
    assert at.title[0].value.startswith("From scratch")
    assert at.selectbox(key="scratch_w_dataset").value == "fashion-mnist"
    assert at.multiselect(key="scratch_w_warmups").value == ["off", "paper"]
    text = " ".join(m.value for m in at.markdown)
    assert "160 epochs" in text and "deviation" in text and "cpu-short" in text
    assert not _button(at, "Run").disabled and not at.error


@pytest.mark.skipif(not HAVE_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_page_runs_a_tiny_experiment_end_to_end(tmp_cache: Path) -> None:
    at = _app()
    at.selectbox(key="scratch_w_model").set_value("test_vgg")
    at.number_input(key="scratch_w_width").set_value(1.0)
    at.number_input(key="scratch_w_train").set_value(200)
    at.number_input(key="scratch_w_test").set_value(100)
    at.multiselect(key="scratch_w_scores").set_value(["magnitude", "snip"])
    at.run()
    at.multiselect(key="scratch_w_levels").set_value([0.9])
    at.selectbox(key="scratch_w_schedule").set_value("smoke")
    at.selectbox(key="scratch_w_device").set_value("cpu")
    _button(at, "Run").click()
    at.run(timeout=TIMEOUT)
    assert not at.exception, at.exception
    assert not at.error, " ".join(e.value for e in at.error)
    assert at.session_state["scratch_job"] is None and not _button(at, "Run").disabled

    # dense + magnitude (no warm-up: it looks at no data) + snip with and without: 4 real runs
    results = at.session_state["scratch_output"]["results"]
    assert len(results) == 4 and all(r.pruned_nonzero == 0 for r in results)
    assert {(r.spec.score, r.spec.bn_warmup) for r in results if r.spec.sparsity} == {
        ("magnitude", "off"),
        ("snip", "off"),
        ("snip", "paper"),
    }
    acc = _chart(at, "scratch_acc")
    names = {t["name"] for t in acc["data"]}
    assert len(acc["data"]) == 3 and any("SNIP" in n and "paper" in n for n in names)
    assert all(0.0 <= y <= 100.0 for t in acc["data"] for y in t["y"])
    assert _chart(at, "scratch_warmup")["data"] and _chart(at, "scratch_layers")["data"]
    table = next(d.value for d in at.dataframe if "seconds" in d.value.columns)  # this job's runs
    assert len(table) == 4 and set(table["score"]) == {"magnitude", "snip"}
    assert table["final_acc"].between(0, 100).all()  # in %
    assert any("smoke" in c.value for c in at.caption)  # the CPU deviation is named with the numbers

    # recorded in the store, in the from-scratch table only
    st = ResultsStore(tmp_cache / "results.sqlite")
    assert st.count("scratch") == 4 and st.count("transfer") == 0
    assert set(st.scratch_frame()["key"]) == {r.spec.key() for r in results}
    stored = next(d.value for d in at.dataframe if "finished_at" in d.value.columns)  # the store's view
    assert len(stored) == 4 and stored["final_acc"].between(0, 1).all()

    # a rerun (another sparsity for the layer view) keeps the output without running again
    at.run()
    assert _chart(at, "scratch_acc") and len(at.session_state["scratch_output"]["results"]) == 4


def test_page_refuses_an_empty_selection_with_a_message() -> None:
    at = _app()
    at.multiselect(key="scratch_w_scores").set_value([])
    at.run()
    at.checkbox(key="scratch_w_dense").uncheck()
    _button(at, "Run").click()
    at.run()
    assert not at.exception
    assert "choose at least one pruning criterion" in " ".join(e.value for e in at.error)
    assert at.session_state["scratch_job"] is None


def test_a_broken_store_is_explained_and_the_page_still_works(tmp_path, monkeypatch) -> None:
    bad = tmp_path / "broken.sqlite"
    bad.write_bytes(b"this is not a SQLite file" * 100)
    monkeypatch.setenv("PAI_RESULTS_DB", str(bad))
    at = _app()
    errors = " ".join(e.value for e in at.error)
    assert "cannot use results store" in errors and "move it aside" in errors.lower()
    assert not _button(at, "Run").disabled
