"""What a set of runs says about the paper's predictions, computed from the results.

The paper (Sec. 1, Fig. 3) predicts:

* **P1**: pruning with a score computed on the source task removes weights the transfer tasks do
  not need either, so the *transfer* accuracy falls no further than the *source* accuracy;
* **P2**: fine-tuning the pruned encoder on the source task alone also raises the transfer
  accuracy (or at least does not lower it).

:func:`fig3_verdict` reads both off a list of runs, per score: P1 compares the fall of the
zero-shot accuracy from the dense accuracy on the source and on the transfer tasks (mean), P2 the
change of the transfer accuracy from zero-shot to fine-tuned.  A difference counts only when it
exceeds the run's **noise floor**, twice the binomial standard error of the difference,
``2·sqrt(p₁(1−p₁)/n₁ + p₂(1−p₂)/n₂)`` with the numbers of evaluated images (one image of 100 is
one point: small suites cannot resolve small effects, and the verdict says so rather than guess).
Runs where both accuracies sit within that floor of chance (1 / #classes) say nothing about P1
and are reported as such; fine-tuning whose final source loss exceeds its first
(:func:`finetune_diverged`) says nothing about P2 and is flagged.

:func:`landscape_verdict` reads Fig. 4 the same way from the exact losses at θ₀, θ̃₀ and θ̃ₛ*.

Example:
    >>> from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult
    >>> spec = ExperimentSpec(score="magnitude", sparsity=0.36, images_per_class=50, finetune="short")
    >>> res = ExperimentResult(spec, [TaskResult("a", "source", 1.0, 0.80, 0.95, num_classes=5),
    ...                               TaskResult("b", "transfer", 1.0, 0.40, 0.30, num_classes=5)], "short")
    >>> v = fig3_verdict([res])
    >>> [(r.p1, r.p2) for r in v.runs]
    [('contradicts', 'contradicts')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .reference import chance_levels
from .results import ExperimentResult

__all__ = [
    "RunVerdict",
    "Fig3Verdict",
    "fig3_verdict",
    "finetune_diverged",
    "finetune_losses",
    "noise_floor",
    "landscape_verdict",
]


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1))


def noise_floor(p1: float, n1: int, p2: float, n2: int) -> float:
    """Twice the standard error of ``p₁ − p₂`` for accuracies measured on ``n₁`` and ``n₂`` images.

    Below this, a difference is within what re-drawing the images would change (≈ 95 % band).
    A floor of one image is kept where an accuracy is 0 or 1 (the formula would give 0).

    Example:
        >>> round(noise_floor(0.5, 100, 0.5, 100), 3)
        0.141
    """
    se = math.sqrt(_se(p1, n1) ** 2 + _se(p2, n2) ** 2)
    return max(2.0 * se, 1.0 / max(min(n1, n2), 1))


def finetune_losses(log: dict | None) -> tuple[float, float] | None:
    """``(first, final)`` source loss of a fine-tuning log (before and after training), or None.

    Logs written before ``loss_after`` was recorded use the last epoch's mean training loss.
    """
    if not log or "loss_before" not in log:
        return None
    final = log.get("loss_after")
    if final is None:
        losses = log.get("losses") or []
        if not losses:
            return None
        final = losses[-1]
    return float(log["loss_before"]), float(final)


def finetune_diverged(log: dict | None) -> bool:
    """Whether fine-tuning ended with a higher source loss than it started with (a failed run).

    Example:
        >>> finetune_diverged({"loss_before": 0.077, "losses": [0.2, 0.5], "loss_after": 0.739})
        True
    """
    pair = finetune_losses(log)
    return pair is not None and not (pair[1] <= pair[0])  # NaN counts as diverged


@dataclass(frozen=True)
class RunVerdict:
    """P1 and P2 for one run (fractions in [0, 1]; ``None`` where the run cannot say).

    Attributes:
        score, sparsity: Which run.
        source_fall, transfer_fall: Dense minus zero-shot accuracy (mean over the transfer tasks).
        p1: ``"holds"`` (the transfer fell no further than the source, within the noise floor),
            ``"contradicts"`` (it fell further by more than the floor), ``"at chance"`` (both
            zero-shot accuracies within the floor of chance: the pruned encoder is broken and says
            nothing about P1).
        p1_floor: The noise floor of the P1 comparison.
        transfer_change: Transfer accuracy fine-tuned minus zero-shot (None without fine-tuning).
        source_change: The same on the source.
        p2: ``"holds"``, ``"contradicts"`` (transfer fell by more than the floor), ``"diverged"``
            (the fine-tuning loss rose: the run tests nothing), or None without fine-tuning.
        p2_floor: The noise floor of the P2 comparison.
    """

    score: str
    sparsity: float
    source_fall: float
    transfer_fall: float
    p1: str
    p1_floor: float
    transfer_change: float | None = None
    source_change: float | None = None
    p2: str | None = None
    p2_floor: float | None = None


@dataclass
class Fig3Verdict:
    """What the runs of one Fig. 3 say about P1 and P2.

    Attributes:
        runs: One :class:`RunVerdict` per (score, sparsity), in score then sparsity order.
        lines: One Markdown sentence per score (what the page prints under the figure).
        contradictions: One phrase per run that contradicts the paper (score, sparsity, numbers).
        warnings: Things that limit the verdict (at-chance runs, diverged fine-tuning, few images).
    """

    runs: list[RunVerdict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _eval_images(res: ExperimentResult, role: str) -> int:
    """Images behind a role's mean accuracy (approximate: images per class x classes, halved held out)."""
    per_class = res.spec.images_per_class or 50
    tasks = [t for t in res.tasks if t.role == role]
    n = sum(per_class * (t.num_classes or 5) for t in tasks)
    return max(n // 2 if res.spec.holdout else n, 1)


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _run_verdict(res: ExperimentResult) -> RunVerdict:
    m = res.summary()
    chance = chance_levels(res)
    n_s, n_t = _eval_images(res, "source"), _eval_images(res, "transfer")
    zs_s, zs_t = m["source_zero_shot"], m["transfer_zero_shot"]
    d_s, d_t = m["source_dense"], m["transfer_dense"]
    fall_s, fall_t = d_s - zs_s, d_t - zs_t
    # The fall's noise: both the dense and the zero-shot accuracy are measured on the same images, so
    # the zero-shot accuracy's error dominates; compare the two falls with their zero-shot errors.
    floor1 = noise_floor(zs_s, n_s, zs_t, n_t)
    c_s, c_t = chance["source"], chance["transfer"]
    at_chance = (
        c_s is not None
        and c_t is not None
        and zs_s - c_s <= 2 * _se(c_s, n_s) + 1.0 / n_s
        and zs_t - c_t <= 2 * _se(c_t, n_t) + 1.0 / n_t
    )
    if at_chance:
        p1 = "at chance"
    elif fall_t - fall_s > floor1:
        p1 = "contradicts"
    else:
        p1 = "holds"
    ft_t, ft_s = m["transfer_finetuned"], m["source_finetuned"]
    p2 = t_change = s_change = floor2 = None
    if ft_t is not None:
        t_change = ft_t - zs_t
        s_change = None if ft_s is None else ft_s - zs_s
        floor2 = noise_floor(ft_t, n_t, zs_t, n_t)
        if finetune_diverged(res.finetune_log):
            p2 = "diverged"
        elif t_change < -floor2:
            p2 = "contradicts"
        else:
            p2 = "holds"
    return RunVerdict(
        res.spec.score, res.spec.sparsity, fall_s, fall_t, p1, floor1, t_change, s_change, p2, floor2
    )


def fig3_verdict(results: Sequence[ExperimentResult], *, label: Any = None) -> Fig3Verdict:
    """P1 and P2, per score, from the runs of one Fig. 3 (one model, one setting, one source).

    Runs with the same score and sparsity (several sources) are judged one by one: each is its own
    experiment.

    Args:
        results: Finished runs.
        label: ``label(score) -> str`` for the sentences (default: the score's name).

    Returns:
        A :class:`Fig3Verdict`; empty when there are no runs with transfer tasks.
    """
    label = label or (lambda s: s)
    out = Fig3Verdict()
    usable = [r for r in results if r.summary()["transfer_dense"] is not None]
    if not usable:
        return out
    runs = sorted((_run_verdict(r) for r in usable), key=lambda v: (v.score, v.sparsity))
    order = list(dict.fromkeys(r.spec.score for r in usable))
    runs.sort(key=lambda v: (order.index(v.score), v.sparsity))
    out.runs = runs
    diverged_runs = []
    for score in order:
        rs = [v for v in runs if v.score == score]
        name = label(score)
        informative = [v for v in rs if v.p1 != "at chance"]
        parts = []
        if informative:
            fs = sum(v.source_fall for v in informative) / len(informative)
            ft = sum(v.transfer_fall for v in informative) / len(informative)
            held = sum(v.p1 == "holds" for v in informative)
            parts.append(
                f"**P1**: zero-shot, the transfer tasks lost {100 * ft:.1f} points against "
                f"{100 * fs:.1f} on the source (mean over {len(informative)} sparsit"
                f"{'y' if len(informative) == 1 else 'ies'}); P1 holds within the noise at {held} of "
                f"{len(informative)}"
            )
        chance_runs = [v for v in rs if v.p1 == "at chance"]
        if chance_runs:
            parts.append(
                "at " + ", ".join(f"{100 * v.sparsity:.4g} %" for v in chance_runs) + " both accuracies are "
                "at chance (the pruned encoder is broken there: no test of P1)"
            )
        tuned = [v for v in rs if v.p2 is not None]
        if tuned:
            valid = [v for v in tuned if v.p2 != "diverged"]
            if valid:
                mean_change = sum(v.transfer_change for v in valid) / len(valid)
                held2 = sum(v.p2 == "holds" for v in valid)
                parts.append(
                    f"**P2**: fine-tuning on the source changed the transfer accuracy by "
                    f"{_pts(mean_change)} points on average; P2 holds at {held2} of {len(valid)}"
                )
            for v in tuned:
                if v.p2 == "diverged":
                    diverged_runs.append(f"{name} at {100 * v.sparsity:.4g} %")
        out.lines.append(f"**{name}**: " + "; ".join(parts) + ".")
        for v in rs:
            where = f"{name} at {100 * v.sparsity:.4g} %"
            if v.p1 == "contradicts":
                out.contradictions.append(
                    f"{where}: the transfer tasks lost {100 * v.transfer_fall:.1f} points, the source "
                    f"{100 * v.source_fall:.1f} (noise floor {100 * v.p1_floor:.1f}): contradicts P1"
                )
            if v.p2 == "contradicts":
                out.contradictions.append(
                    f"{where}: fine-tuning on the source lowered the transfer accuracy by "
                    f"{-100 * v.transfer_change:.1f} points (noise floor {100 * v.p2_floor:.1f}): contradicts P2"
                )
    if diverged_runs:
        out.warnings.append(
            "Fine-tuning diverged (final source loss above the first) for "
            + ", ".join(diverged_runs)
            + ": those hatched bars test nothing; use a smaller learning rate."
        )
    return out


def landscape_verdict(point_losses: dict[str, Sequence[float]]) -> str:
    """One sentence on Fig. 4 from the exact losses at the three points.

    Args:
        point_losses: ``{label: (source loss, transfer loss)}`` with labels starting ``θ₀``,
            ``θ̃₀`` and ``θ̃ₛ*`` (:attr:`pai_core.landscape.Landscape.point_losses`).

    Returns:
        What pruning did to both losses, what fine-tuning on the source did to both, and whether
        that supports P2 (the transfer loss fell with the source loss) or contradicts it.

    Example:
        >>> landscape_verdict({"θ₀": (0.1, 0.1), "θ̃₀": (0.9, 0.8), "θ̃ₛ*": (0.2, 0.5)})[:63]
        'Pruning raised the source loss from 0.1 to 0.9 and raised the t'
    """

    def get(prefix: str) -> tuple[float, float] | None:
        v = next((v for k, v in point_losses.items() if k.startswith(prefix)), None)
        return None if v is None else (float(v[0]), float(v[1]))

    # Order matters: "θ̃ₛ*" and "θ̃₀" share the prefix "θ̃".
    tuned, pruned, dense = get("θ̃ₛ*"), get("θ̃₀"), get("θ₀")
    if dense is None or pruned is None or tuned is None:
        return ""

    def f(x: float) -> str:
        return f"{x:.3g}"

    def moved(a: float, b: float) -> bool:  # more than 1 % (relative) or round-off
        return abs(b - a) > 0.01 * max(abs(a), abs(b)) + 1e-12

    def change(what: str, a: float, b: float, start: bool = True) -> str:
        if not moved(a, b):
            return f"left the {what} at about {f(a)}" if start else f"left the {what} at about {f(b)}"
        verb = "raised" if b > a else "lowered"
        return f"{verb} the {what} from {f(a)} to {f(b)}" if start else f"{verb} the {what} to {f(b)}"

    text = (
        f"Pruning {change('source loss', dense[0], pruned[0])} and {change('transfer loss', dense[1], pruned[1])}. "
        f"Fine-tuning on the source {change('source loss', pruned[0], tuned[0], False)} and "
        f"{change('transfer loss', pruned[1], tuned[1], False)}"
    )
    if not (moved(pruned[0], tuned[0]) and tuned[0] < pruned[0]):
        return text + ": fine-tuning did not lower its own loss, so this plane tests nothing about P2."
    if not moved(pruned[1], tuned[1]):
        return text + ": the transfer loss did not move, neither supporting nor contradicting P2."
    if tuned[1] < pruned[1]:
        damage = pruned[1] - dense[1]
        share = (
            f" ({100 * (pruned[1] - tuned[1]) / damage:.0f} % of the pruning damage to the transfer loss undone)"
            if moved(dense[1], pruned[1]) and damage > 0
            else ""
        )
        return (
            text
            + f": the step downhill for the source is downhill for the transfer task too{share}, as P2 predicts."
        )
    return text + ": the step downhill for the source climbs the transfer landscape, which contradicts P2."
