"""Plotly figures and tables for the dashboard (the paper's Fig. 3 and Fig. 4, plus mask views).

Pure layout: every number comes from :class:`pai_core.results.ExperimentResult` objects (or a
landscape from :mod:`pai_core.landscape`); this module turns them into pandas frames and plotly
figures.  Scores are named and coloured by their registry metadata
(:attr:`pai_core.scores.ScoreInfo.label`, ``.color``).  No streamlit here, so scripts and
notebooks get the same figures as the app.

Accuracies in results are fractions in [0, 1]; frames and figures show percentages.

Example:
    >>> from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult
    >>> res = ExperimentResult(ExperimentSpec(), [TaskResult("a", "source", 1.0, 0.9)], None)
    >>> fig = fig3_figure([res])
    >>> [t.type for t in fig.data][:1], score_label("kfac")
    (['bar'], 'block Hessian (K-FAC)')
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import scores
from .reference import chance_levels
from .results import ROLES, SUMMARY_COLUMNS, ExperimentResult, ExperimentSpec
from .verdicts import finetune_diverged, finetune_losses

__all__ = [
    # palette and labels
    "OKABE_ITO",
    "score_color",
    "score_label",
    "sparsity_label",
    "sparsity_percent",
    "schedule_label",
    "run_label",
    "setting_label",
    "setting_columns",
    "group_by_setting",
    # frames
    "results_frame",
    "results_table",
    "tasks_frame",
    "diagnostics_frame",
    "fig3_frame",
    "layer_sparsity_frame",
    "jaccard_matrix",
    # figures
    "fig3_figure",
    "finetune_figure",
    "imagenet_figure",
    "layer_sparsity_figure",
    "jaccard_figure",
    "landscape_figure",
    "landscape_note",
    "figure_html",
]

# ----------------------------------------------------------------------------- palette and labels

#: Okabe-Ito: distinguishable under the common colour-vision deficiencies (black kept for lines).
OKABE_ITO = [
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#0072B2",
    "#D55E00",
    "#CC79A7",
    "#F0E442",
    "#999999",
    "#000000",
]

_BLACK = "#000000"
_VERMILLION = "#D55E00"
_BLUE = "#0072B2"
_WHITE = "#FFFFFF"
_GREY = "#666666"

_ROLE_TITLES = {
    "source": "source task",
    "transfer": "transfer tasks (mean)",
    "cross-domain": "cross-domain transfer (mean)",
}

#: The bars of one score in Fig. 3: accuracy column, legend text, fill pattern (solid, hatched, crossed).
_BAR_KINDS = (
    ("zero_shot", "zero-shot", ""),
    ("finetuned", "fine-tuned on source", "/"),
    ("repaired", "OBS-corrected on source (no SGD)", "x"),
)


def _score_info(score: str) -> scores.ScoreInfo | None:
    # A stored run may name a score this process does not register (a plugin not imported).
    return scores.info(score) if score in scores.available() else None


def score_color(score: str) -> str:
    """A stable colour per score (its registered colour), whatever else is selected."""
    i = _score_info(score)
    if i is not None and i.color:
        return i.color
    return OKABE_ITO[sum(map(ord, score)) % (len(OKABE_ITO) - 1)]


def score_label(score: str) -> str:
    """Human-readable name of a score (its registered label; the name itself when unknown)."""
    i = _score_info(score)
    return i.label if i is not None else score


def _score_order(names: Iterable[str]) -> list[str]:
    # The registry's display order (the paper's scores first), unknown names last.
    known = scores.available()
    return sorted(set(names), key=lambda s: (known.index(s) if s in known else len(known), s))


def sparsity_label(q: float) -> str:
    """The sparsity as given, in %: ``0.5904 -> "59.04%"``, ``0.5 -> "50%"``, ``0.12345 -> "12.345%"``.

    Up to four decimals of a percent (what a fraction with six decimals holds), trailing zeros
    dropped, so float noise (``100 * 0.5904 = 59.040000000000006``) never shows.
    """
    text = f"{100 * q:.4f}".rstrip("0").rstrip(".")
    return f"{text}%"


def sparsity_percent(q: float) -> float:
    """``100 * q`` without float noise (``0.5904 -> 59.04``, not ``59.040000000000006``), for tables."""
    return round(100 * q, 4)


def schedule_label(name: str | None) -> str:
    """``None -> "off (zero-shot only)"``, else the schedule's name."""
    return "off (zero-shot only)" if name is None else name


def run_label(spec: ExperimentSpec, task_names: Sequence[str] | None = None) -> str:
    """One line naming a run: model · suite · source · score · sparsity · fine-tuning."""
    src = task_names[spec.source] if task_names and spec.source < len(task_names) else f"task {spec.source}"
    ft = "no fine-tuning" if spec.finetune is None else f"fine-tuned ({spec.finetune})"
    extra = " · held-out" if spec.holdout else ""
    if spec.repair:
        extra += f" · OBS-corrected ({spec.repair})"
    if spec.transfer_suite:
        extra += f" · cross-domain: {spec.transfer_suite}"
    return (
        f"{spec.model} · {spec.suite} · source {src} · {score_label(spec.score)} · "
        f"{sparsity_label(spec.sparsity)} · {ft}{extra}"
    )


def _pct(x: float | None) -> float:
    return float("nan") if x is None else 100.0 * float(x)


# ----------------------------------------------------------------------------- frames

#: Spec fields that identify a run inside one Fig. 3 (its bars), or do not change what it computes;
#: every other field is a *setting* that all runs of one panel must share (:func:`setting_columns`).
_RUN_FIELDS = frozenset(
    {
        "model",
        "score",
        "score_options",
        "sparsity",
        "source",
        "seed",
        "device",
        "data_root",
        "transfer_data_root",
        "checkpoint",
    }
)


def setting_columns() -> list[str]:
    """Spec fields that one Fig. 3 panel must hold equal: every :class:`ExperimentSpec` field but
    model, score (and its options), sparsity, source, seed, device, data folder and checkpoint.

    Derived from the spec itself, so an option added to the spec joins the settings on its own.
    """
    return [f.name for f in dataclasses.fields(ExperimentSpec) if f.name not in _RUN_FIELDS]


_DEFAULT_SPEC: ExperimentSpec | None = None


def _default(name: str) -> Any:
    global _DEFAULT_SPEC
    if _DEFAULT_SPEC is None:
        _DEFAULT_SPEC = ExperimentSpec()
    return getattr(_DEFAULT_SPEC, name)


def results_frame(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """One row per run: its settings, the six mean accuracies (%) and its timings.

    Args:
        results: Finished runs.

    Returns:
        Columns ``key, model, suite, source, source_task, score, sparsity (fraction), sparsity (%),
        finetune, holdout, images_per_class, mask_scope, loss, alpha, image_size, seed, device,
        source_dense … transfer_finetuned (%), collapsed_layers, seconds``.
    """
    rows = []
    for r in results:
        s = r.spec
        src_task = next((t.task for t in r.tasks if t.role == "source"), f"task {s.source}")
        row: dict[str, Any] = {
            "key": s.key(),
            "score_label": score_label(s.score),
            "model": s.model,
            "suite": s.suite,
            "source": s.source,
            "source_task": src_task,
            "score": s.score,
            "sparsity": s.sparsity,
            "sparsity (%)": sparsity_percent(s.sparsity),
            "finetune": schedule_label(s.finetune),
            "repair": s.repair or "none",
            "transfer_suite": s.transfer_suite or "",
            "holdout": s.holdout,
            "images_per_class": s.images_per_class,
            "mask_scope": s.mask_scope,
            "loss": s.loss,
            "alpha": s.alpha,
            "image_size": s.image_size,
            "seed": s.seed,
            "device": r.device,
        }
        row.update({k: _pct(v) for k, v in r.summary().items()})
        row["collapsed_layers"] = len(r.collapsed_layers)
        row["seconds"] = float(sum(r.timings.values())) if r.timings else float("nan")
        rows.append(row)
    cols = [
        "key",
        "model",
        "score_label",
        "sparsity (%)",
        *SUMMARY_COLUMNS,
        "suite",
        "source",
        "source_task",
        "score",
        "sparsity",
        "finetune",
        "repair",
        "transfer_suite",
        "holdout",
        "images_per_class",
        "mask_scope",
        "loss",
        "alpha",
        "image_size",
        "seed",
        "device",
        "collapsed_layers",
        "seconds",
    ]
    return pd.DataFrame(rows, columns=cols)


def diagnostics_frame(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """One row per run: the run's protocol options and its diagnostics (zero scores, dead channels, …)."""
    rows = []
    for r in results:
        s, d = r.spec, r.diagnostics or {}
        score = d.get("score", {})
        rows.append(
            {
                "score": score_label(s.score),
                "sparsity (%)": 100 * s.sparsity,
                "rounds": s.rounds,
                "layers": s.prune_layers,
                "BN-aware": s.bn_aware,
                "zero scores (%)": 100 * d["zero_score_share"] if "zero_score_share" in d else None,
                "dead channels": d.get("dead_channels"),
                "whole filters removed": d.get("filters_removed_whole"),
                "BN-compensated channels": d.get("bn_compensated_channels"),
                "estimator rel. SE (median)": score.get("hutchinson_rel_se_median"),
            }
        )
    return pd.DataFrame(rows)


#: Column titles of :func:`results_table` (accuracies first, in the order a reader compares them).
_TABLE_TITLES = {
    "source_zero_shot": "source zero-shot (%)",
    "transfer_zero_shot": "transfer zero-shot (%)",
    "source_finetuned": "source fine-tuned (%)",
    "transfer_finetuned": "transfer fine-tuned (%)",
    "source_dense": "source dense (%)",
    "transfer_dense": "transfer dense (%)",
}


def results_table(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """The Results page's table: one row per run, what a reader compares first.

    Columns: ``model, score`` (its label), ``sparsity (%)`` (as given: 59.04), the six accuracies
    (zero-shot, fine-tuned, dense; source then transfer), ``fine-tuning``, ``settings`` (the
    readable :func:`setting_label`), ``source task``, ``seconds``, ``key`` (last: the run's id).
    """
    rows = []
    for r in results:
        s = r.spec
        summ = r.summary()
        rows.append(
            {
                "model": s.model,
                "score": score_label(s.score),
                "sparsity (%)": sparsity_percent(s.sparsity),
                **{title: _pct(summ[c]) for c, title in _TABLE_TITLES.items()},
                "fine-tuning": schedule_label(s.finetune),
                "settings": setting_label(s),
                "source task": next((t.task for t in r.tasks if t.role == "source"), f"task {s.source}"),
                "seconds": float(sum(r.timings.values())) if r.timings else float("nan"),
                "key": s.key(),
            }
        )
    cols = [
        "model",
        "score",
        "sparsity (%)",
        *_TABLE_TITLES.values(),
        "fine-tuning",
        "settings",
        "source task",
        "seconds",
        "key",
    ]
    return pd.DataFrame(rows, columns=cols)


def tasks_frame(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """One row per (run, task): role (source, transfer, cross-domain) and accuracies (%) dense,
    zero-shot, fine-tuned, OBS-corrected, and the changes."""
    rows = []
    for r in results:
        s = r.spec
        for t in r.tasks:
            rows.append(
                {
                    "model": s.model,
                    "score": score_label(s.score),
                    "sparsity (%)": 100 * s.sparsity,
                    "task": t.task,
                    "role": t.role,
                    "dense (%)": _pct(t.dense),
                    "zero-shot (%)": _pct(t.zero_shot),
                    "fine-tuned (%)": _pct(t.finetuned),
                    "OBS-corrected (%)": _pct(t.repaired),
                    "zero-shot − dense": _pct(t.zero_shot) - _pct(t.dense),
                    "fine-tuned − zero-shot": _pct(t.finetuned) - _pct(t.zero_shot),
                    "OBS-corrected − zero-shot": _pct(t.repaired) - _pct(t.zero_shot),
                }
            )
    cols = [
        "model",
        "score",
        "sparsity (%)",
        "task",
        "role",
        "dense (%)",
        "zero-shot (%)",
        "fine-tuned (%)",
        "OBS-corrected (%)",
        "zero-shot − dense",
        "fine-tuned − zero-shot",
        "OBS-corrected − zero-shot",
    ]
    return pd.DataFrame(rows, columns=cols)


def fig3_frame(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """Long frame behind Fig. 3: per (model, score, sparsity, role) the mean accuracies over runs.

    Runs that differ only in their source task are averaged, as in the paper (which averages over
    its 10 choices of source).  ``n`` counts the runs; ``*_std`` is their standard deviation
    (0 for one run).

    Returns:
        Columns ``model, score, sparsity, role, dense, zero_shot, finetuned, repaired,
        zero_shot_std, finetuned_std, repaired_std, n`` (accuracies in %); roles ``source``,
        ``transfer`` and, for runs with a transfer suite, ``cross-domain``.
    """
    rows = []
    for r in results:
        summ = r.summary()
        for role, prefix in ROLES.items():
            if summ[f"{prefix}_dense"] is None:
                continue  # a one-task suite has no transfer tasks; most runs no cross-domain ones
            rows.append(
                {
                    "model": r.spec.model,
                    "score": r.spec.score,
                    "sparsity": r.spec.sparsity,
                    "role": role,
                    "dense": _pct(summ[f"{prefix}_dense"]),
                    **{k: _pct(summ[f"{prefix}_{k}"]) for k, _, _ in _BAR_KINDS},
                }
            )
    kinds = [k for k, _, _ in _BAR_KINDS]
    cols = ["model", "score", "sparsity", "role", "dense", *kinds, *(f"{k}_std" for k in kinds), "n"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    g = df.groupby(["model", "score", "sparsity", "role"], sort=True)
    out = g.agg(
        dense=("dense", "mean"),
        **{k: (k, "mean") for k in kinds},
        **{
            f"{k}_std": (k, lambda v: float(np.std(v.dropna())) if v.notna().any() else math.nan)
            for k in kinds
        },
        n=("zero_shot", "size"),
    ).reset_index()
    return out[cols]


def _setting_values(spec: ExperimentSpec) -> tuple:
    return tuple(
        (c, tuple(v) if isinstance(v, list) else v) for c in setting_columns() for v in [getattr(spec, c)]
    )


def setting_label(spec: ExperimentSpec) -> str:
    """The settings one Fig. 3 panel shares, readable: suite, fine-tuning, images per class, how
    dense accuracy is measured, then every other setting that differs from the paper's default.

    Example:
        >>> setting_label(ExperimentSpec(suite="fashion-mnist", images_per_class=20))
        'fashion-mnist · no fine-tuning · 20 images/class · heads fit = evaluate images (the paper)'
        >>> setting_label(ExperimentSpec(finetune="short", holdout=True, loss="ce"))
        'digits · fine-tuned: short · 50 images/class · held-out evaluation · loss ce'
    """
    ft = "no fine-tuning" if spec.finetune is None else f"fine-tuned: {spec.finetune}"
    ipc = "all images" if spec.images_per_class is None else f"{spec.images_per_class} images/class"
    ev = "held-out evaluation" if spec.holdout else "heads fit = evaluate images (the paper)"
    parts = [spec.suite, ft, ipc, ev]
    names = {"alpha": "ridge α", "image_size": "image size", "mask_scope": "mask scope"}
    for c in setting_columns():
        if c in ("suite", "finetune", "images_per_class", "holdout"):
            continue
        v = getattr(spec, c)
        if v != _default(c):
            parts.append(f"{names.get(c, c.replace('_', ' '))} {v}")
    return " · ".join(parts)


def group_by_setting(results: Sequence[ExperimentResult]) -> dict[str, list[ExperimentResult]]:
    """Runs grouped by :func:`setting_label`, largest group first (what a Fig. 3 grid can compare)."""
    groups: dict[str, list[ExperimentResult]] = {}
    for r in results:
        groups.setdefault(setting_label(r.spec), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def _check_comparable(results: Sequence[ExperimentResult]) -> None:
    settings = {_setting_values(r.spec) for r in results}
    if len(settings) > 1:
        cols = setting_columns()
        diff = [c for i, c in enumerate(cols) if len({s[i][1] for s in settings}) > 1]
        raise ValueError(
            f"these runs differ in {', '.join(diff)}: one Fig. 3 panel must compare like with "
            "like; filter them to one setting first"
        )


# ----------------------------------------------------------------------------- Fig. 3


def fig3_figure(
    results: Sequence[ExperimentResult],
    *,
    heldout: Mapping[str, Mapping[str, float | None]] | None = None,
    title: str | None = None,
    error_bars: bool = True,
    height_per_row: int = 330,
) -> go.Figure:
    """Grouped bars in the style of the paper's Fig. 3.

    One column per model, two rows: the source task (top) and the mean over transfer tasks
    (bottom), and a third, *cross-domain transfer*, for runs with a transfer suite.  Along x, one
    cluster per sparsity; within a cluster, per score a solid bar (zero-shot accuracy of the pruned
    encoder), when the runs were fine-tuned a hatched bar of the same colour next to it (accuracy
    after fine-tuning on the source), and when they were OBS-corrected a cross-hatched bar
    (accuracy after the optimal update δ of Eq. (3) computed on the source, no SGD).  The patterned
    bars sit beside the solid one rather than behind it, so they stay visible where fine-tuning or
    the correction *lowers* accuracy.

    Reference lines in every panel: dashed black, the dense (unpruned) accuracy, labelled for how
    it was measured ("fit = evaluate images, as the paper", or "held-out"); dash-dotted grey, the
    dense accuracy on a held-out half when ``heldout`` gives it (what the features carry beyond
    fitting their own images); dotted grey, chance (1 / #classes, from the tasks' class counts).

    Args:
        results: Runs with the same settings apart from model, score, sparsity and source.
        heldout: ``{model: {"source": …, "transfer": …}}`` held-out dense accuracies (fractions),
            e.g. :func:`pai_core.reference.heldout_dense_means`; drawn for runs that fit and
            evaluate on the same images.
        title: Figure title (default: names the suite and the fine-tuning schedule).
        error_bars: With several runs per bar (several sources), show ±1 standard deviation.
        height_per_row: Pixel height of each row.

    Returns:
        A ``plotly.graph_objects.Figure``: bar traces named ``"<score> · zero-shot"`` /
        ``"<score> · fine-tuned on source"`` / ``"<score> · OBS-corrected on source (no SGD)"``,
        dense lines as layout shapes.

    Raises:
        ValueError: No results, or runs with different suites/schedules/settings mixed.
    """
    if not results:
        raise ValueError("no results to plot")
    _check_comparable(results)
    frame = fig3_frame(results)
    models = list(dict.fromkeys(r.spec.model for r in results))
    score_names = _score_order(frame["score"])
    levels = sorted(frame["sparsity"].unique())
    cats = [sparsity_label(q) for q in levels]
    roles = [r for r in ROLES if (frame["role"] == r).any()]
    shown = [kind for kind in _BAR_KINDS if kind[0] == "zero_shot" or frame[kind[0]].notna().any()]
    has_ft = frame["finetuned"].notna().any()
    holdout = results[0].spec.holdout
    chance: dict[tuple[str, str], float] = {}
    for model in models:
        for role in roles:
            vals = [chance_levels(r).get(role) for r in results if r.spec.model == model]
            if vals and all(v is not None for v in vals):
                chance[(model, role)] = 100 * sum(vals) / len(vals)
    has_rep = frame["repaired"].notna().any()

    fig = make_subplots(
        rows=len(roles),
        cols=len(models),
        shared_yaxes=True,
        shared_xaxes=True,
        subplot_titles=models if len(models) > 1 else None,
        horizontal_spacing=0.04 if len(models) > 1 else 0.0,
        vertical_spacing=0.10,
    )
    for ci, model in enumerate(models, start=1):
        for ri, role in enumerate(roles, start=1):
            panel = frame[(frame["model"] == model) & (frame["role"] == role)]
            first = ci == 1 and ri == 1
            for score in score_names:
                d = panel[panel["score"] == score].set_index("sparsity").reindex(levels)
                colour = score_color(score)
                n = d["n"].fillna(0).astype(int).tolist()
                for col, kind, hatch in shown:
                    err = d[f"{col}_std"].tolist() if error_bars and (d["n"] > 1).any() else None
                    fig.add_trace(
                        go.Bar(
                            x=cats,
                            y=d[col].tolist(),
                            name=f"{score_label(score)} · {kind}",
                            legendgroup=score,
                            legendgrouptitle_text=score_label(score) if first else None,
                            showlegend=first,
                            offsetgroup=f"{score}|{col}",
                            marker=dict(
                                color=colour,
                                line=dict(color=_BLACK, width=0.6),
                                pattern=dict(shape=hatch or "", fgcolor=_BLACK, size=6, solidity=0.35),
                            ),
                            error_y=dict(type="data", array=err, visible=True, thickness=1, width=2)
                            if err
                            else None,
                            customdata=np.array([n], dtype=object).T,
                            hovertemplate=(
                                f"<b>{score_label(score)}</b>, {kind}<br>{_ROLE_TITLES[role]}<br>"
                                "sparsity %{x}<br>accuracy %{y:.1f}%<br>runs: %{customdata[0]}"
                                "<extra></extra>"
                            ),
                        ),
                        row=ri,
                        col=ci,
                    )
            dense = panel["dense"].mean()
            if not math.isnan(dense):
                how = "held-out" if holdout else "fit = evaluate images, as the paper"
                fig.add_hline(
                    y=dense,
                    name="dense",
                    line=dict(color=_BLACK, width=1.5, dash="dash"),
                    row=ri,
                    col=ci,
                    annotation_text=f"dense {dense:.1f}% ({how})",
                    annotation_position="top left",
                    annotation_font_size=11,
                )
            held = None if holdout or heldout is None else (heldout.get(model) or {}).get(role)
            if held is not None:
                fig.add_hline(
                    y=100 * held,
                    name="held-out dense",
                    line=dict(color=_GREY, width=1.5, dash="dashdot"),
                    row=ri,
                    col=ci,
                    annotation_text=f"dense, held-out half {100 * held:.1f}%",
                    annotation_position="bottom right",
                    annotation_font_size=11,
                    annotation_font_color=_GREY,
                )
            if (model, role) in chance:
                fig.add_hline(
                    y=chance[(model, role)],
                    name="chance",
                    line=dict(color=_GREY, width=1.5, dash="dot"),
                    row=ri,
                    col=ci,
                    annotation_text=f"chance {chance[(model, role)]:.0f}%",
                    annotation_position="bottom left",
                    annotation_font_size=11,
                    annotation_font_color=_GREY,
                )
            fig.update_yaxes(
                title_text=f"{_ROLE_TITLES[role]}<br>accuracy (%)" if ci == 1 else None,
                range=[0, 104],
                row=ri,
                col=ci,
            )
        fig.update_xaxes(
            title_text="sparsity (% of weights removed)",
            type="category",
            categoryorder="array",
            categoryarray=cats,
            row=len(roles),
            col=ci,
        )
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=cats, col=ci)
    # Legend-only entries explaining the reference lines (a shape has no legend entry of its own).
    refs = [("dense (unpruned)", _BLACK, "dash")]
    if heldout and not holdout:
        refs.append(("dense, held-out half", _GREY, "dashdot"))
    if chance:
        refs.append(("chance (1 / #classes)", _GREY, "dot"))
    for i, (name, colour, dash) in enumerate(refs):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name=name,
                line=dict(color=colour, width=1.5, dash=dash),
                legendgroup="dense",
                legendgrouptitle_text="reference" if i == 0 else None,
            ),
            row=1,
            col=1,
        )
    if title is None:
        s = results[0].spec
        parts = ["solid: zero-shot"] if has_ft or has_rep else ["zero-shot only (no fine-tuning)"]
        if has_ft:
            parts.append(f"hatched: fine-tuned on the source ({s.finetune})")
        if has_rep:
            parts.append(f"crossed: OBS-corrected on the source ({s.repair}, no SGD)")
        where = s.suite + (f" (cross-domain: {s.transfer_suite})" if s.transfer_suite else "")
        title = f"Accuracy of pruned encoders on {where}: " + "; ".join(parts)
    fig.update_layout(
        title=dict(text=title, font_size=15),
        barmode="group",
        bargap=0.18,
        bargroupgap=0.04,
        template="plotly_white",
        height=60 + height_per_row * len(roles) + 40,
        legend=dict(groupclick="toggleitem", tracegroupgap=6, font_size=11),
        margin=dict(l=70, r=20, t=70, b=60),
    )
    return fig


# ----------------------------------------------------------------------------- fine-tuning curves

_DASHES = ["solid", "dot", "dash", "dashdot", "longdash", "longdashdot"]


def finetune_figure(results: Sequence[ExperimentResult], *, title: str | None = None) -> go.Figure:
    """The source loss of every fine-tuned run, epoch by epoch, so that no hatched bar hides a failure.

    Per run: the loss of the pruned encoder before training (epoch 0), the mean training loss of
    each epoch, and the loss of the final weights (an open circle at the last epoch; epoch means
    average over weights that kept changing).  Colour: the score; dash: the sparsity.  A run whose
    final loss exceeds its first (:func:`pai_core.verdicts.finetune_diverged`) is named
    "DIVERGED" and its final point is a red cross.

    Raises:
        ValueError: No run has a fine-tuning log.
    """
    runs = [r for r in results if finetune_losses(r.finetune_log) is not None]
    if not runs:
        raise ValueError("no fine-tuned runs to plot")
    levels = sorted({r.spec.sparsity for r in runs})
    fig = go.Figure()
    for r in sorted(runs, key=lambda r: (_score_order([r.spec.score]), r.spec.sparsity)):
        log = r.finetune_log or {}
        first, final = finetune_losses(log)
        curve = [first, *[float(v) for v in log.get("losses", [])]]
        bad = finetune_diverged(log)
        name = f"{score_label(r.spec.score)} @ {sparsity_label(r.spec.sparsity)}" + (
            " — DIVERGED" if bad else ""
        )
        colour = score_color(r.spec.score)
        dash = _DASHES[levels.index(r.spec.sparsity) % len(_DASHES)]
        fig.add_trace(
            go.Scatter(
                x=list(range(len(curve))),
                y=curve,
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line=dict(color=colour, width=2, dash=dash),
                marker=dict(size=5),
                hovertemplate=f"<b>{name}</b><br>epoch %{{x}}<br>loss %{{y:.4f}}<extra></extra>",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[len(curve) - 1],
                y=[final],
                mode="markers",
                name=f"{name}: final weights",
                legendgroup=name,
                showlegend=False,
                marker=dict(
                    symbol="x" if bad else "circle-open",
                    size=12 if bad else 10,
                    color=_VERMILLION if bad else colour,
                    line=dict(width=2.5, color=_VERMILLION if bad else colour),
                ),
                hovertemplate=f"<b>{name}</b><br>loss of the final weights %{{y:.4f}}<extra></extra>",
            )
        )
    s = runs[0].spec
    fig.update_layout(
        title=dict(
            text=title or f"Fine-tuning on the source task ({s.finetune}): source loss per epoch",
            font_size=15,
        ),
        template="plotly_white",
        xaxis=dict(
            title=dict(text="epoch (0: pruned, before fine-tuning)"), tickformat="d", rangemode="tozero"
        ),
        yaxis=dict(title=dict(text="source loss (squared error)"), rangemode="tozero"),
        height=360,
        margin=dict(l=70, r=20, t=60, b=50),
        legend=dict(font_size=11),
    )
    return fig


# ----------------------------------------------------------------------------- ImageNet check


def imagenet_figure(checks: Sequence[Any], *, title: str | None = None) -> go.Figure:
    """Top-1 ImageNet accuracy of an encoder on foolbox's 20 photos: dense, then per score and sparsity.

    Args:
        checks: :class:`pai_core.imagenet_check.ImageNetCheck` objects; the one with sparsity 0 and
            no ``score`` attribute (or ``score=None``) is the dense encoder.  Each pruned check
            carries ``score`` (set by the caller) and ``sparsity``.
        title: Figure title.
    """
    if not checks:
        raise ValueError("no ImageNet checks to plot")
    dense = [c for c in checks if getattr(c, "score", None) is None]
    pruned = [c for c in checks if getattr(c, "score", None) is not None]
    levels = sorted({c.sparsity for c in pruned})
    cats = (["dense"] if dense else []) + [sparsity_label(q) for q in levels]
    total = checks[0].total
    fig = go.Figure()
    if dense:
        d = dense[0]
        fig.add_trace(
            go.Bar(
                x=["dense"],
                y=[100 * d.accuracy],
                name="dense",
                marker=dict(color="#BBBBBB", line=dict(color=_BLACK, width=0.6)),
                text=[f"{d.correct}/{d.total}"],
                textposition="outside",
                hovertemplate=f"dense: {d.correct} of {d.total} photos<extra></extra>",
            )
        )
    for score in _score_order([c.score for c in pruned]):
        cs = {c.sparsity: c for c in pruned if c.score == score}
        fig.add_trace(
            go.Bar(
                x=[sparsity_label(q) for q in levels],
                y=[100 * cs[q].accuracy if q in cs else None for q in levels],
                name=score_label(score),
                marker=dict(color=score_color(score), line=dict(color=_BLACK, width=0.6)),
                text=[f"{cs[q].correct}/{cs[q].total}" if q in cs else "" for q in levels],
                textposition="outside",
                hovertemplate=f"<b>{score_label(score)}</b> at %{{x}}: %{{text}} photos<extra></extra>",
            )
        )
    fig.add_hline(
        y=0.1,
        name="chance",
        line=dict(color=_GREY, width=1.5, dash="dot"),
        annotation_text="chance 0.1% (1 / 1000 classes)",
        annotation_position="top right",
        annotation_font_size=10,
        annotation_font_color=_GREY,
    )
    fig.update_layout(
        title=dict(
            text=title
            or f"Its own ImageNet predictions: {total} real photos (one photo = {100 / total:.0f} points)",
            font_size=13,
        ),
        template="plotly_white",
        barmode="group",
        xaxis=dict(type="category", categoryorder="array", categoryarray=cats, title=dict(text="sparsity")),
        yaxis=dict(title=dict(text="ImageNet top-1 (%)"), range=[0, 115]),
        height=360,
        margin=dict(l=60, r=10, t=60, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=-0.45, font_size=11),
    )
    return fig


# ----------------------------------------------------------------------------- per-layer sparsity

_NAME_KEYS = ("layer", "name", "param", "parameter")
_TOTAL_KEYS = ("numel", "total", "size", "count", "n")
_KEPT_KEYS = ("kept", "nonzero", "remaining", "keep")


def _layer_row(entry: Mapping[str, Any], index: int) -> dict[str, Any]:
    name = next((entry[k] for k in _NAME_KEYS if k in entry), f"layer {index}")
    total = next((entry[k] for k in _TOTAL_KEYS if k in entry), None)
    if "sparsity" in entry:
        sparsity = float(entry["sparsity"])
    else:
        kept = next((entry[k] for k in _KEPT_KEYS if k in entry), None)
        if kept is None or not total:
            raise ValueError(f"layer report entry without sparsity or kept/total counts: {dict(entry)}")
        sparsity = 1.0 - float(kept) / float(total)
    return {
        "index": index,
        "layer": str(name),
        "weights": None if total is None else int(total),
        "sparsity (%)": 100 * sparsity,
    }


def layer_sparsity_frame(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """Per-layer sparsity of every run's mask, from ``ExperimentResult.layer_report``.

    Returns:
        Columns ``run, score, sparsity, index, layer, weights, sparsity (%), collapsed``.
    """
    rows = []
    for r in results:
        collapsed = set(r.collapsed_layers)
        run = f"{score_label(r.spec.score)} @ {sparsity_label(r.spec.sparsity)}"
        for i, entry in enumerate(r.layer_report):
            row = _layer_row(entry, i)
            rows.append(
                {
                    "run": run,
                    "score": r.spec.score,
                    "sparsity": r.spec.sparsity,
                    **row,
                    "collapsed": row["layer"] in collapsed or row["sparsity (%)"] >= 100.0 - 1e-9,
                }
            )
    cols = ["run", "score", "sparsity", "index", "layer", "weights", "sparsity (%)", "collapsed"]
    return pd.DataFrame(rows, columns=cols)


def layer_sparsity_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Lines of per-layer sparsity (x: layers in network order), one per run; collapsed layers marked.

    Args:
        frame: From :func:`layer_sparsity_frame` (possibly filtered).
        title: Figure title.
    """
    fig = go.Figure()
    dashes = ["solid", "dot", "dash", "dashdot", "longdash", "longdashdot"]
    levels = sorted(frame["sparsity"].unique()) if len(frame) else []
    for run, d in frame.groupby("run", sort=False):
        score, q = d["score"].iloc[0], d["sparsity"].iloc[0]
        fig.add_trace(
            go.Scatter(
                x=d["index"],
                y=d["sparsity (%)"],
                mode="lines+markers",
                name=run,
                line=dict(color=score_color(score), width=2, dash=dashes[levels.index(q) % len(dashes)]),
                marker=dict(size=4),
                customdata=np.stack([d["layer"], d["weights"].fillna(-1)], axis=1),
                hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[1]} weights<br>sparsity %{y:.1f}%"
                f"<extra>{run}</extra>",
            )
        )
        bad = d[d["collapsed"]]
        if len(bad):
            fig.add_trace(
                go.Scatter(
                    x=bad["index"],
                    y=bad["sparsity (%)"],
                    mode="markers",
                    name="collapsed layer (all weights removed)",
                    legendgroup="collapsed",
                    showlegend=not any(t.legendgroup == "collapsed" for t in fig.data),
                    marker=dict(
                        symbol="x", size=11, color=_VERMILLION, line=dict(width=2, color=_VERMILLION)
                    ),
                    customdata=bad[["layer"]].to_numpy(),
                    hovertemplate="<b>%{customdata[0]}</b>: every weight removed<extra></extra>",
                )
            )
    fig.update_layout(
        title=dict(text=title or "Per-layer sparsity of each mask", font_size=15),
        template="plotly_white",
        xaxis=dict(title=dict(text="layer (network order; hover for its name)"), tickformat="d"),
        yaxis=dict(title=dict(text="weights removed in the layer (%)"), range=[-2, 102]),
        height=380,
        margin=dict(l=70, r=20, t=60, b=50),
        legend=dict(font_size=11),
    )
    return fig


# ----------------------------------------------------------------------------- mask overlap


def jaccard_matrix(mask_sets: Mapping[str, Mapping[str, Any]], *, over: str = "pruned") -> pd.DataFrame:
    """Pairwise Jaccard overlap of several masks (by default of the weights they *remove*).

    Args:
        mask_sets: label → keep-masks (``{param name: bool tensor}``), e.g. the masks of one score
            on different source tasks, or of different scores on one source.
        over: ``"pruned"`` (removed weights: what P1 is about) or ``"kept"``.

    Returns:
        A square frame (labels × labels) of :func:`pai_core.masks.jaccard` values in [0, 1].
    """
    from pai_core import masks as masks_mod  # torch: only when overlaps are asked for

    labels = list(mask_sets)
    m = np.eye(len(labels))
    for i, a in enumerate(labels):
        for j in range(i + 1, len(labels)):
            m[i, j] = m[j, i] = float(masks_mod.jaccard(mask_sets[a], mask_sets[labels[j]], over=over))
    return pd.DataFrame(m, index=labels, columns=labels)


def jaccard_figure(matrix: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Annotated heatmap of a :func:`jaccard_matrix` (1 = the same weights removed)."""
    labels = list(matrix.index)
    z = matrix.to_numpy()
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=labels,
            zmin=0.0,
            zmax=1.0,
            colorscale="Cividis",
            text=np.vectorize(lambda v: f"{v:.2f}")(z),
            texttemplate="%{text}",
            textfont=dict(size=12),
            colorbar=dict(title=dict(text="Jaccard", side="right")),
            hovertemplate="%{y}<br>vs %{x}<br>Jaccard %{z:.3f}<extra></extra>",
        )
    )
    # A fixed size with square cells (the page shows it at this width, not stretched).
    size = max(260, 70 * len(labels))
    longest = max((len(str(lab)) for lab in labels), default=10)
    fig.update_layout(
        title=dict(text=title or "Overlap of the pruned weights (Jaccard index)", font_size=15),
        template="plotly_white",
        height=size + 90 + 6 * longest,
        width=size + 140 + 7 * longest,
        margin=dict(l=20, r=20, t=60, b=20),
        yaxis=dict(autorange="reversed"),
        xaxis=dict(tickangle=-30),
    )
    return fig


# ----------------------------------------------------------------------------- Fig. 4

# Matched by prefix: θ₀ dense, θ̃₀ pruned, θ̃ₛ* pruned and fine-tuned, θ̃₀+δ OBS-corrected (the
# landscape's labels).
_GREEN = "#009E73"
_POINT_STYLE = (
    ("θ̃ₛ*", ("star", 17, _BLUE)),
    ("θ̃₀+δ", ("diamond", 14, _GREEN)),  # before "θ̃₀", which it starts with
    ("θ̃₀", ("x", 14, _VERMILLION)),
    ("θ₀", ("circle", 13, _WHITE)),
)


def _point_style(label: str) -> tuple[str, int, str]:
    return next(
        (style for prefix, style in _POINT_STYLE if label.startswith(prefix)), ("diamond", 12, _WHITE)
    )


def landscape_figure(
    landscape: Any, *, log_scale: bool = True, n_levels: int = 18, title: str | None = None
) -> go.Figure:
    """Source and transfer loss side by side over the PCA plane, in the style of the paper's Fig. 4.

    One row per landscape (e.g. magnitude and diagonal Hessian, as the paper shows them), two
    columns: the source loss and the transfer loss.  In every panel: ○ θ₀, ✕ θ̃₀ and ★ θ̃ₛ*, each
    filled with the colour of its *exactly evaluated* loss on the panel's scale (the landscape's
    grid holds the points, so contours and markers agree); a vermillion arrow for pruning
    (θ₀ → θ̃₀) and a blue one for fine-tuning (θ̃₀ → θ̃ₛ*).

    Args:
        landscape: A :class:`pai_core.landscape.Landscape` (``xs, ys, source_loss, transfer_loss,
            points, point_losses, source_name, transfer_name, explained_variance``), or a list of
            them (one row each; their ``spec`` names the row).
        log_scale: Colour by log10 of the loss (losses of pruned points span decades).
        n_levels: Contour levels per panel.
        title: Figure title.
    """
    lands = list(landscape) if isinstance(landscape, list | tuple) else [landscape]
    if not lands:
        raise ValueError("no landscape to plot")
    spacing = 0.16
    titles = []
    for land in lands:
        spec = getattr(land, "spec", None)
        row = (
            f"{score_label(spec.score)} at {sparsity_label(spec.sparsity)}: "
            if spec is not None and len(lands) > 1
            else ""
        )
        titles += [f"{row}source: {land.source_name}", f"{row}transfer (unseen): {land.transfer_name}"]
    fig = make_subplots(
        rows=len(lands),
        cols=2,
        horizontal_spacing=spacing,
        vertical_spacing=0.12 if len(lands) > 1 else 0.0,
        shared_yaxes=False,
        subplot_titles=titles,
    )

    def _tf(v: Any) -> Any:
        return np.log10(np.maximum(v, 1e-12)) if log_scale else v

    for ri, land in enumerate(lands, start=1):
        xs, ys = np.asarray(land.xs), np.asarray(land.ys)
        ev = np.atleast_1d(np.asarray(getattr(land, "explained_variance", [np.nan, np.nan]), dtype=float))
        exact = getattr(land, "point_losses", None) or {}
        panels = [("source", np.asarray(land.source_loss)), ("transfer", np.asarray(land.transfer_loss))]
        # Draw the fine-tuned point first and the pruned one last: a short fine-tuning step leaves them on
        # top of each other at the plane's scale, and a small ✕ over a large ★ keeps both visible.
        order = sorted(
            land.points.items(), key=lambda kv: {"star": 0, "circle": 1}.get(_point_style(kv[0])[0], 2)
        )
        ranks = {label: i for i, label in enumerate(land.points)}
        for ci, (role, z) in enumerate(panels, start=1):
            zz = _tf(z)
            zmin, zmax = float(np.nanmin(zz)), float(np.nanmax(zz))
            axis = (ri - 1) * 2 + ci
            ref = "" if axis == 1 else str(axis)
            fig.add_trace(
                go.Contour(
                    x=xs,
                    y=ys,
                    z=zz,
                    name=f"{role} loss",
                    colorscale="Viridis",
                    reversescale=True,
                    ncontours=n_levels,
                    zmin=zmin,
                    zmax=zmax,
                    contours=dict(coloring="fill", showlines=True),
                    line=dict(width=0.5, color="rgba(0,0,0,0.3)"),
                    showlegend=False,
                    colorbar=dict(
                        title=dict(text=("log₁₀ " if log_scale else "") + f"{role} loss", side="right"),
                        x=(1 - spacing) / 2 + 0.005 if ci == 1 else 1.0,
                        y=1 - (ri - 0.5) / len(lands),
                        len=0.85 / len(lands),
                        thickness=14,
                    ),
                    customdata=z,
                    hovertemplate="PC1 %{x:.3g}, PC2 %{y:.3g}<br>loss %{customdata:.4g}<extra></extra>",
                ),
                row=ri,
                col=ci,
            )
            for label, (px, py) in order:
                symbol, size, colour = _point_style(label)
                loss = exact.get(label)
                value = None if loss is None else float(loss[ci - 1])
                marker = dict(symbol=symbol, size=size, color=colour, line=dict(color=_BLACK, width=1.5))
                if value is not None:
                    # Filled with the colour of its own exact loss on the panel's scale.
                    marker |= dict(
                        color=[float(_tf(value))],
                        colorscale="Viridis",
                        reversescale=True,
                        cmin=zmin,
                        cmax=zmax,
                    )
                    if symbol == "x":
                        marker["size"] = size + 4
                fig.add_trace(
                    go.Scatter(
                        x=[px],
                        y=[py],
                        mode="markers",
                        name=label,
                        legendgroup=label,
                        showlegend=ri == 1 and ci == 1,
                        legendrank=1000 + ranks[label],
                        marker=marker,
                        hovertemplate=f"<b>{label}</b><br>PC1 %{{x:.4g}}, PC2 %{{y:.4g}}"
                        + (f"<br>{role} loss {value:.4g} (exact)" if value is not None else "")
                        + "<extra></extra>",
                    ),
                    row=ri,
                    col=ci,
                )
            dense = next((v for k, v in land.points.items() if k.startswith("θ₀")), None)
            pruned = next((v for k, v in land.points.items() if _point_style(k)[0] == "x"), None)
            tuned = next((v for k, v in land.points.items() if k.startswith("θ̃ₛ*")), None)
            fixed = next((v for k, v in land.points.items() if k.startswith("θ̃₀+δ")), None)
            arrows = [(dense, pruned, _VERMILLION, 3), (pruned, tuned, _BLUE, 2), (pruned, fixed, _GREEN, 2)]
            for a, b, colour, width in arrows:
                if a is None or b is None:
                    continue
                fig.add_annotation(
                    x=b[0],
                    y=b[1],
                    ax=a[0],
                    ay=a[1],
                    xref=f"x{ref}",
                    yref=f"y{ref}",
                    axref=f"x{ref}",
                    ayref=f"y{ref}",
                    showarrow=True,
                    arrowhead=2,
                    arrowwidth=width,
                    arrowcolor=colour,
                    standoff=8,
                    startstandoff=7,
                    text="",
                )
            pc1 = f"PC 1 ({100 * ev[0]:.0f}% of variance)" if len(ev) > 0 and np.isfinite(ev[0]) else "PC 1"
            pc2 = f"PC 2 ({100 * ev[1]:.0f}% of variance)" if len(ev) > 1 and np.isfinite(ev[1]) else "PC 2"
            fig.update_xaxes(title_text=pc1, row=ri, col=ci)
            # Both panels of a row show the same plane: one y title is enough, and a second one would
            # sit under the left panel's colour bar.
            fig.update_yaxes(title_text=pc2 if ci == 1 else None, row=ri, col=ci)
    # Legend-only entries for the arrows.
    legend = [("pruning θ₀ → θ̃₀", _VERMILLION), ("fine-tuning on the source θ̃₀ → θ̃ₛ*", _BLUE)]
    if any(k.startswith("θ̃₀+δ") for land in lands for k in land.points):
        legend.append(("OBS correction on the source θ̃₀ → θ̃₀+δ", _GREEN))
    for name, colour in legend:
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="lines", name=name, line=dict(color=colour, width=3)),
            row=1,
            col=1,
        )
    fig.update_layout(
        title=dict(text=title or "Loss landscapes over the plane of θ₀, θ̃₀ and θ̃ₛ* (PCA)", font_size=15),
        template="plotly_white",
        height=120 + 430 * len(lands),
        margin=dict(l=60, r=30, t=80, b=90),
        legend=dict(orientation="h", yanchor="top", y=-0.16 / len(lands), xanchor="center", x=0.5),
    )
    return fig


def landscape_note(landscape: Any) -> str:
    """One sentence on the scale of the plane: how far pruning and fine-tuning moved the weights in it."""
    pts = landscape.points
    dense = next((v for k, v in pts.items() if k.startswith("θ₀")), None)
    pruned = next((v for k, v in pts.items() if _point_style(k)[0] == "x"), None)
    tuned = next((v for k, v in pts.items() if k.startswith("θ̃ₛ*")), None)
    if dense is None or pruned is None or tuned is None:
        return ""
    prune_step = float(np.hypot(pruned[0] - dense[0], pruned[1] - dense[1]))
    tune_step = float(np.hypot(tuned[0] - pruned[0], tuned[1] - pruned[1]))
    text = (
        f"In this plane pruning moved the weights by {prune_step:.3g} and fine-tuning by {tune_step:.3g} "
        "(Euclidean distance in weight space)."
    )
    fixed = next((v for k, v in pts.items() if k.startswith("θ̃₀+δ")), None)
    if fixed is not None:
        off = next((v for k, v in getattr(landscape, "off_plane", {}).items() if k.startswith("θ̃₀+δ")), None)
        text += (
            f" The OBS correction θ̃₀+δ (green ◆) is shown at its projection, "
            f"{float(np.hypot(fixed[0] - pruned[0], fixed[1] - pruned[1])):.3g} from θ̃₀ in the plane"
            + (f" and {off:.3g} off it" if off is not None else "")
            + "; its losses in the table are at the exact point."
        )
    if prune_step > 0 and tune_step < 0.02 * prune_step:
        text += (
            " The two axes are scaled separately (the grid spans each direction's own range), so the "
            "short fine-tuning step stays visible: compare distances along one axis only."
        )
    return text


# ----------------------------------------------------------------------------- export


def figure_html(fig: go.Figure) -> str:
    """A self-contained HTML page of the interactive figure (plotly.js inlined: works offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})
