"""Adding a score takes one file: a toy score registered here shows up, with its option, in the CLI,
sweeps, figures and the dashboard, and runs end to end through the experiment."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pai_core import figures, scores
from pai_core.__main__ import main
from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult
from pai_core.scores import ScoreCall, ScoreOption, Scores, register_score
from pai_core.store import ResultsStore
from pai_core.sweep import SweepConfig, plan

ROOT = Path(__file__).resolve().parents[1]
TOY = "toy_abs"
TOY_COLOR = "#123456"


@pytest.fixture(scope="module", autouse=True)
def toy_score() -> Iterator[str]:
    """Register the toy score for this module's tests only (other modules never see it)."""

    @register_score(
        TOY,
        label="|θ|^p (toy)",
        data_driven=False,
        options=(
            ScoreOption("power", float, 1.0, min=0.5, max=4.0, help="exponent p"),
            ScoreOption("shape", str, "plain", choices=("plain", "log1p"), help="log1p: log(1 + |θ|^p)"),
        ),
        color=TOY_COLOR,
    )
    def toy_abs(c: ScoreCall, *, power: float = 1.0, shape: str = "plain") -> Scores:
        """``S_j = |θ_j|^p``: a toy score for tests (no paper; ranks like magnitude for any p)."""
        c.diagnose("toy_max", max(float(p.detach().abs().max()) for p in c.named.values()))
        out = {n: p.detach().abs() ** power for n, p in c.named.items()}
        return {n: t.log1p() for n, t in out.items()} if shape == "log1p" else out

    yield TOY
    scores._registry._REGISTRY.pop(TOY)


@pytest.fixture
def tmp_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PAI_RESULTS_DB", raising=False)
    return tmp_path


def test_registry_lists_it_after_the_built_ins_and_compute_checks_its_option():
    assert scores.available()[-1] == TOY and scores.info(TOY).option("power").max == 4.0
    assert (
        scores.info(TOY).description
        == "S_j = |θ_j|^p: a toy score for tests (no paper; ranks like magnitude for any p)."
    )
    assert ExperimentSpec(score=TOY, score_options={"power": 2.0}).score == TOY
    with pytest.raises(ValueError, match="'power' must be <= 4.0"):
        ExperimentSpec(score=TOY, score_options={"power": 9.0})
    with pytest.raises(ValueError, match="'shape' must be one of 'plain', 'log1p', got 'cube'"):
        ExperimentSpec(score=TOY, score_options={"shape": "cube"})
    assert ExperimentSpec(score=TOY, score_options={"shape": "log1p"}).score_options == (("shape", "log1p"),)


def test_compute_fills_the_callers_diagnostics_only_when_asked():
    from torch import nn

    net = nn.Linear(2, 1, bias=False)
    d: dict = {}
    scores.compute(TOY, net, None, diagnostics=d)
    assert d == {"toy_max": float(net.weight.detach().abs().max())}
    scores.compute(TOY, net, None)  # no dict: nothing to fill, no error
    with pytest.raises(ValueError, match="compute"):
        register_score("bad_opt", label="x", data_driven=False, options=(ScoreOption("loss", int, 1),))(
            lambda c: {}
        )


def test_cli_offers_it_and_runs_it_into_the_store(tmp_store, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert TOY in text and "power" in text  # --score choices and --score-options help
    assert main(["scores"]) == 0
    listing = capsys.readouterr().out
    assert "|θ|^p (toy)" in listing and "option power (float, default 1, 0.5..4): exponent p" in listing
    assert "option shape (one of plain|log1p, default plain): log1p: log(1 + |θ|^p)" in listing
    argv = ["run", "--model", "test_resnet", "--score", TOY, "--sparsity", "0.5", "--images-per-class", "5"]
    assert main([*argv, "--image-size", "32", "--score-options", '{"power": 2, "shape": "log1p"}']) == 0
    [res] = ResultsStore().results()
    assert res.spec.score == TOY and res.spec.score_options == (("power", 2), ("shape", "log1p"))
    assert main([*argv, "--score-options", '{"power": 0.1}']) == 2  # out of range: one clear line
    assert "'power' must be >= 0.5" in capsys.readouterr().err


def test_sweep_accepts_it_with_its_options():
    cfg = SweepConfig.from_dict(
        {
            "scores": ["magnitude", TOY],
            "sources": [0],
            "sparsities": [0.5],
            "score_options": {TOY: {"power": 3, "shape": "log1p"}},
        }
    )
    specs, _ = plan(cfg)
    assert [(s.score, s.score_options) for s in specs] == [
        ("magnitude", ()),
        (TOY, (("power", 3), ("shape", "log1p"))),
    ]
    with pytest.raises(ValueError, match="score_options.*'power'"):
        SweepConfig.from_dict({"scores": [TOY], "score_options": {TOY: {"power": -1}}})


def test_figures_use_its_label_colour_and_order():
    assert figures.score_label(TOY) == "|θ|^p (toy)" and figures.score_color(TOY) == TOY_COLOR
    results = [
        ExperimentResult(
            ExperimentSpec(score=s, sparsity=0.5),
            [TaskResult("a", "source", 0.9, 0.8), TaskResult("b", "transfer", 0.9, 0.7)],
            None,
        )
        for s in (TOY, "magnitude")
    ]
    bars = [t for t in figures.fig3_figure(results).data if t.type == "bar"]
    assert [b.name for b in bars][:2] == ["magnitude · zero-shot", "|θ|^p (toy) · zero-shot"]
    assert {b.marker.color for b in bars if b.legendgroup == TOY} == {TOY_COLOR}


def test_dashboard_offers_it_draws_its_option_and_runs_it(tmp_store):
    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Prune_and_evaluate.py"), default_timeout=300)
    at.run()
    assert "|θ|^p (toy)" in at.multiselect(key="prune_w_scores").options  # its label
    at.multiselect(key="prune_w_scores").set_value([TOY]).run()
    widget = at.number_input(key=f"prune_w_opt_{TOY}_power")
    assert widget.value == 1.0 and widget.min == 0.5 and widget.max == 4.0 and widget.help == "exponent p"
    choice = at.selectbox(key=f"prune_w_opt_{TOY}_shape")
    assert choice.options == ["plain", "log1p"] and choice.value == "plain"
    at.selectbox(key="prune_w_model").set_value("test_resnet").run()
    at.number_input(key="prune_w_ipc").set_value(5)
    at.multiselect(key="prune_w_levels").set_value([0.36])
    at.number_input(key=f"prune_w_opt_{TOY}_power").set_value(2.0)
    at.selectbox(key=f"prune_w_opt_{TOY}_shape").set_value("log1p")
    [run] = [b for b in at.button if b.label == "Run"]
    run.click()
    at.run(timeout=300)
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    [res] = at.session_state["prune_output"]["results"]
    assert res.spec.score == TOY and dict(res.spec.score_options) == {"power": 2.0, "shape": "log1p"}
    assert [r.spec.key() for r in ResultsStore().results()] == [res.spec.key()]  # recorded by the page
    bars = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "prune_fig3" in c.proto.id))[
        "data"
    ]
    assert any(b.get("legendgroup") == TOY for b in bars)
