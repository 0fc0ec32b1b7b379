"""pai_core.verdicts and pai_core.reference: the sentences under Fig. 3 and Fig. 4 come from the numbers."""

from __future__ import annotations

import math

import pytest

from pai_core import reference, verdicts
from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult


def _run(
    score: str,
    q: float,
    zs: tuple[float, float],
    ft: tuple[float, float] | None = None,
    *,
    dense: tuple[float, float] = (1.0, 1.0),
    ipc: int = 50,
    log: dict | None = None,
    classes: int | None = 5,
) -> ExperimentResult:
    spec = ExperimentSpec(
        score=score, sparsity=q, images_per_class=ipc, finetune="smoke" if ft is not None else None
    )
    tasks = [
        TaskResult("src", "source", dense[0], zs[0], None if ft is None else ft[0], num_classes=classes),
        TaskResult("tr", "transfer", dense[1], zs[1], None if ft is None else ft[1], num_classes=classes),
    ]
    if ft is not None and log is None:
        log = {"loss_before": 0.5, "losses": [0.4, 0.3], "loss_after": 0.25}
    return ExperimentResult(spec, tasks, spec.finetune, finetune_log=log)


def test_noise_floor_is_two_standard_errors_with_a_one_image_minimum() -> None:
    assert verdicts.noise_floor(0.5, 100, 0.5, 100) == pytest.approx(2 * math.sqrt(0.005))
    assert verdicts.noise_floor(1.0, 100, 1.0, 100) == pytest.approx(0.01)  # one image of 100
    # More images, smaller floor.
    assert verdicts.noise_floor(0.7, 1000, 0.6, 1000) < verdicts.noise_floor(0.7, 100, 0.6, 100)


def test_p1_holds_when_transfer_falls_no_further_than_source() -> None:
    v = verdicts.fig3_verdict([_run("magnitude", 0.4, zs=(0.70, 0.75))])
    (r,) = v.runs
    assert r.p1 == "holds" and r.source_fall == pytest.approx(0.30) and r.transfer_fall == pytest.approx(0.25)
    assert not v.contradictions
    assert "P1 holds within the noise at 1 of 1" in v.lines[0]


def test_p1_contradicted_run_is_named_with_its_numbers() -> None:
    # MobileNetV2 at 36 % on Fashion-MNIST, measured: source 83 %, transfer 33 % (100 images each).
    v = verdicts.fig3_verdict([_run("magnitude", 0.36, zs=(0.83, 0.33), ipc=20)], label=str.upper)
    assert v.runs[0].p1 == "contradicts"
    (c,) = v.contradictions
    assert c.startswith("MAGNITUDE at 36 %") and "67.0 points" in c and "17.0" in c and "P1" in c


def test_small_differences_within_the_noise_do_not_contradict() -> None:
    # 3 points further on 100 images per role is noise (floor ~ 12 points).
    v = verdicts.fig3_verdict([_run("magnitude", 0.4, zs=(0.70, 0.67), ipc=20)])
    assert v.runs[0].p1 == "holds"
    # The same gap on 5,000 images per role is not.
    v = verdicts.fig3_verdict([_run("magnitude", 0.4, zs=(0.70, 0.60), ipc=1000)])
    assert v.runs[0].p1 == "contradicts"


def test_runs_at_chance_say_nothing_about_p1() -> None:
    v = verdicts.fig3_verdict([_run("magnitude", 0.83, zs=(0.21, 0.19), ipc=20)])
    assert v.runs[0].p1 == "at chance"
    assert not v.contradictions
    assert "at chance" in v.lines[0]


def test_p2_holds_contradicts_and_diverged() -> None:
    up = _run("diag", 0.4, zs=(0.7, 0.5), ft=(0.95, 0.7))
    down = _run("diag", 0.5, zs=(0.7, 0.6), ft=(0.95, 0.3))
    diverged = _run(
        "diag",
        0.6,
        zs=(0.7, 0.84),
        ft=(0.8, 0.28),
        log={"loss_before": 0.077, "losses": [0.3, 0.7], "loss_after": 0.739},
    )
    v = verdicts.fig3_verdict([diverged, down, up])
    by_q = {r.sparsity: r for r in v.runs}
    assert [r.sparsity for r in v.runs] == [0.4, 0.5, 0.6]  # sorted by sparsity within a score
    assert by_q[0.4].p2 == "holds" and by_q[0.4].transfer_change == pytest.approx(0.2)
    assert by_q[0.5].p2 == "contradicts"
    assert by_q[0.6].p2 == "diverged"  # a failed fine-tuning is not counted against P2
    assert sum("contradicts P2" in c for c in v.contradictions) == 1
    assert any("diverged" in w for w in v.warnings) and "at 60 %" in v.warnings[0]
    assert "P2 holds at 1 of 2" in v.lines[0]


def test_verdict_is_per_score_in_the_given_order() -> None:
    v = verdicts.fig3_verdict([_run("magnitude", 0.4, zs=(0.7, 0.7)), _run("diag", 0.4, zs=(0.8, 0.8))])
    assert [line.split("**")[1] for line in v.lines] == ["magnitude", "diag"]
    assert verdicts.fig3_verdict([]).lines == []


def test_finetune_diverged_reads_the_final_against_the_first_loss() -> None:
    assert verdicts.finetune_diverged({"loss_before": 0.077, "losses": [0.5], "loss_after": 0.739})
    assert not verdicts.finetune_diverged({"loss_before": 0.5, "losses": [0.6], "loss_after": 0.2})
    # Old logs without loss_after: the last epoch's mean.
    assert verdicts.finetune_diverged({"loss_before": 0.1, "losses": [0.05, 0.2]})
    assert verdicts.finetune_diverged({"loss_before": 0.1, "losses": [float("nan")]})
    assert not verdicts.finetune_diverged(None) and verdicts.finetune_losses({}) is None


def test_landscape_verdict_supports_or_contradicts_p2() -> None:
    good = verdicts.landscape_verdict(
        {"θ₀ (dense)": (0.01, 0.02), "θ̃₀ (pruned)": (0.8, 0.9), "θ̃ₛ*": (0.1, 0.3)}
    )
    assert (
        "as P2 predicts" in good and "68 %" in good
    )  # (0.9 - 0.3) / (0.9 - 0.02) = 0.68 of the damage undone
    bad = verdicts.landscape_verdict({"θ₀": (0.01, 0.02), "θ̃₀": (0.8, 0.5), "θ̃ₛ*": (0.1, 0.7)})
    assert "contradicts P2" in bad and "raised the transfer loss to 0.7" in bad
    failed = verdicts.landscape_verdict({"θ₀": (0.01, 0.02), "θ̃₀": (0.8, 0.5), "θ̃ₛ*": (0.9, 0.4)})
    assert "tests nothing" in failed
    assert verdicts.landscape_verdict({"θ₀": (0.0, 0.0)}) == ""
    # Nothing moves (a random-weight encoder): no percentage, no claim of a move.
    flat = verdicts.landscape_verdict({"θ₀": (0.797, 0.799), "θ̃₀": (0.7971, 0.7992), "θ̃ₛ*": (0.7970, 0.7991)})
    assert "%" not in flat and "raised" not in flat and "lowered" not in flat and "tests nothing" in flat


def test_chance_levels_from_class_counts() -> None:
    r = _run("magnitude", 0.4, zs=(0.5, 0.5))
    assert reference.chance_levels(r) == {"source": pytest.approx(0.2), "transfer": pytest.approx(0.2)}
    # Unknown class counts and no suite to read them from: no chance level rather than a guess.
    unknown = _run("magnitude", 0.4, zs=(0.5, 0.5), classes=None)
    assert reference.chance_levels(unknown) == {"source": None, "transfer": None}


def test_few_images_warning() -> None:
    assert reference.few_images_warning(100, 1280) is not None
    assert "100 images" in reference.few_images_warning(100, 1280)
    assert reference.few_images_warning(5000, 1280) is None
    assert reference.few_images_warning(None, 1280) is None
    r = _run("magnitude", 0.4, zs=(0.5, 0.5), ipc=20)
    assert reference.fit_images(r) == 100
    assert reference.fit_images(r.__class__(r.spec.replace(holdout=True), r.tasks, None)) == 50


@pytest.mark.slow
def test_heldout_dense_reuses_the_features_and_differs_from_fit_equals_evaluate() -> None:
    spec = ExperimentSpec(model="test_resnet", suite="digits", images_per_class=6)
    held = reference.heldout_dense(spec)
    from pai_core.evaluate import fit_heads
    from pai_core.experiment import get_encoder, get_suite

    suite = get_suite("digits", None, 6, 0)
    direct = fit_heads(get_encoder("test_resnet"), suite, holdout=True, image_size=suite.image_size).dense
    assert held == pytest.approx(direct) and all(0.0 <= a <= 1.0 for a in held)
    means = reference.heldout_dense_means(spec)
    assert means["source"] == held[0]
    assert means["transfer"] == pytest.approx(sum(held[1:]) / (len(held) - 1))
