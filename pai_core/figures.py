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

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import scores
from .results import SUMMARY_COLUMNS, ExperimentResult, ExperimentSpec

__all__ = [
    # palette and labels
    "OKABE_ITO",
    "score_color",
    "score_label",
    "sparsity_label",
    "schedule_label",
    "run_label",
    "setting_label",
    "group_by_setting",
    # frames
    "results_frame",
    "tasks_frame",
    "diagnostics_frame",
    "fig3_frame",
    "layer_sparsity_frame",
    "jaccard_matrix",
    # figures
    "fig3_figure",
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

_ROLE_TITLES = {"source": "source task", "transfer": "transfer tasks (mean)"}


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
    """``0.5904 -> "59.04%"``; trailing zeros dropped (``0.5 -> "50%"``)."""
    text = f"{100 * q:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def schedule_label(name: str | None) -> str:
    """``None -> "off (zero-shot only)"``, else the schedule's name."""
    return "off (zero-shot only)" if name is None else name


def run_label(spec: ExperimentSpec, task_names: Sequence[str] | None = None) -> str:
    """One line naming a run: model · suite · source · score · sparsity · fine-tuning."""
    src = task_names[spec.source] if task_names and spec.source < len(task_names) else f"task {spec.source}"
    ft = "no fine-tuning" if spec.finetune is None else f"fine-tuned ({spec.finetune})"
    extra = " · held-out" if spec.holdout else ""
    return (
        f"{spec.model} · {spec.suite} · source {src} · {score_label(spec.score)} · "
        f"{sparsity_label(spec.sparsity)} · {ft}{extra}"
    )


def _pct(x: float | None) -> float:
    return float("nan") if x is None else 100.0 * float(x)


# ----------------------------------------------------------------------------- frames

_SETTING_COLUMNS = [
    "suite",
    "finetune",
    "holdout",
    "images_per_class",
    "mask_scope",
    "loss",
    "alpha",
    "image_size",
]


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
            "model": s.model,
            "suite": s.suite,
            "source": s.source,
            "source_task": src_task,
            "score": s.score,
            "sparsity": s.sparsity,
            "sparsity (%)": 100 * s.sparsity,
            "finetune": schedule_label(s.finetune),
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
        "suite",
        "source",
        "source_task",
        "score",
        "sparsity",
        "sparsity (%)",
        "finetune",
        "holdout",
        "images_per_class",
        "mask_scope",
        "loss",
        "alpha",
        "image_size",
        "seed",
        "device",
        *SUMMARY_COLUMNS,
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


def tasks_frame(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """One row per (run, task): role and accuracies (%) dense, zero-shot, fine-tuned, and the changes."""
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
                    "zero-shot − dense": _pct(t.zero_shot) - _pct(t.dense),
                    "fine-tuned − zero-shot": _pct(t.finetuned) - _pct(t.zero_shot),
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
        "zero-shot − dense",
        "fine-tuned − zero-shot",
    ]
    return pd.DataFrame(rows, columns=cols)


def fig3_frame(results: Sequence[ExperimentResult]) -> pd.DataFrame:
    """Long frame behind Fig. 3: per (model, score, sparsity, role) the mean accuracies over runs.

    Runs that differ only in their source task are averaged, as in the paper (which averages over
    its 10 choices of source).  ``n`` counts the runs; ``*_std`` is their standard deviation
    (0 for one run).

    Returns:
        Columns ``model, score, sparsity, role, dense, zero_shot, finetuned, zero_shot_std,
        finetuned_std, n`` (accuracies in %).
    """
    rows = []
    for r in results:
        summ = r.summary()
        for role in ("source", "transfer"):
            if summ[f"{role}_dense"] is None:
                continue  # a one-task suite has no transfer tasks
            rows.append(
                {
                    "model": r.spec.model,
                    "score": r.spec.score,
                    "sparsity": r.spec.sparsity,
                    "role": role,
                    "dense": _pct(summ[f"{role}_dense"]),
                    "zero_shot": _pct(summ[f"{role}_zero_shot"]),
                    "finetuned": _pct(summ[f"{role}_finetuned"]),
                }
            )
    cols = [
        "model",
        "score",
        "sparsity",
        "role",
        "dense",
        "zero_shot",
        "finetuned",
        "zero_shot_std",
        "finetuned_std",
        "n",
    ]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    g = df.groupby(["model", "score", "sparsity", "role"], sort=True)
    out = g.agg(
        dense=("dense", "mean"),
        zero_shot=("zero_shot", "mean"),
        finetuned=("finetuned", "mean"),
        zero_shot_std=("zero_shot", lambda v: float(np.std(v))),
        finetuned_std=("finetuned", lambda v: float(np.std(v.dropna())) if v.notna().any() else math.nan),
        n=("zero_shot", "size"),
    ).reset_index()
    return out[cols]


def setting_label(spec: ExperimentSpec) -> str:
    """The settings one Fig. 3 panel must share (everything but model, score, sparsity, source, seed)."""
    d = {c: getattr(spec, c) for c in _SETTING_COLUMNS}
    d["finetune"] = schedule_label(d["finetune"])
    return " · ".join(f"{c}={v}" for c, v in d.items() if not (c == "image_size" and v is None))


def group_by_setting(results: Sequence[ExperimentResult]) -> dict[str, list[ExperimentResult]]:
    """Runs grouped by :func:`setting_label`, largest group first (what a Fig. 3 grid can compare)."""
    groups: dict[str, list[ExperimentResult]] = {}
    for r in results:
        groups.setdefault(setting_label(r.spec), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def _check_comparable(results: Sequence[ExperimentResult]) -> None:
    settings = {tuple(getattr(r.spec, c) for c in _SETTING_COLUMNS) for r in results}
    if len(settings) > 1:
        diff = [c for i, c in enumerate(_SETTING_COLUMNS) if len({s[i] for s in settings}) > 1]
        raise ValueError(
            f"these runs differ in {', '.join(diff)}: one Fig. 3 panel must compare like with "
            "like; filter them to one setting first"
        )


# ----------------------------------------------------------------------------- Fig. 3


def fig3_figure(
    results: Sequence[ExperimentResult],
    *,
    title: str | None = None,
    error_bars: bool = True,
    height_per_row: int = 330,
) -> go.Figure:
    """Grouped bars in the style of the paper's Fig. 3.

    One column per model, two rows: the source task (top) and the mean over transfer tasks
    (bottom).  Along x, one cluster per sparsity; within a cluster, per score a solid bar
    (zero-shot accuracy of the pruned encoder) and, when the runs were fine-tuned, a hatched bar of
    the same colour next to it (accuracy after fine-tuning on the source).  The hatched bar sits
    beside the solid one rather than behind it, so it stays visible where fine-tuning *lowers*
    accuracy.  A dashed black line marks the dense (unpruned) accuracy in every panel.

    Args:
        results: Runs with the same settings apart from model, score, sparsity and source.
        title: Figure title (default: names the suite and the fine-tuning schedule).
        error_bars: With several runs per bar (several sources), show ±1 standard deviation.
        height_per_row: Pixel height of each row.

    Returns:
        A ``plotly.graph_objects.Figure``: bar traces named ``"<score> · zero-shot"`` /
        ``"<score> · fine-tuned"``, dense lines as layout shapes.

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
    roles = [r for r in ("source", "transfer") if (frame["role"] == r).any()]
    has_ft = frame["finetuned"].notna().any()

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
                kinds = [("zero_shot", "zero-shot", None)]
                if has_ft:
                    kinds.append(("finetuned", "fine-tuned on source", "/"))
                for col, kind, hatch in kinds:
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
                fig.add_hline(
                    y=dense,
                    line=dict(color=_BLACK, width=1.5, dash="dash"),
                    row=ri,
                    col=ci,
                    annotation_text=f"dense {dense:.1f}%",
                    annotation_position="top left",
                    annotation_font_size=11,
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
    # Legend-only entry explaining the dashed line (a shape has no legend entry of its own).
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="lines",
            name="dense (unpruned)",
            line=dict(color=_BLACK, width=1.5, dash="dash"),
            legendgroup="dense",
            legendgrouptitle_text="reference",
        ),
        row=1,
        col=1,
    )
    if title is None:
        s = results[0].spec
        ft = (
            ("solid: zero-shot; hatched: fine-tuned on the source (" + str(s.finetune) + ")")
            if has_ft
            else "zero-shot only (no fine-tuning)"
        )
        title = f"Accuracy of pruned encoders on {s.suite}: {ft}"
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

# Matched by prefix: θ₀ dense, θ̃₀ pruned, θ̃ₛ* pruned and fine-tuned (the landscape's labels).
_POINT_STYLE = (
    ("θ̃ₛ*", ("star", 17, _BLUE)),
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

    Args:
        landscape: A :class:`pai_core.landscape.Landscape` (``xs, ys, source_loss, transfer_loss,
            points, source_name, transfer_name, explained_variance``).
        log_scale: Colour by log10 of the loss (losses of pruned points span decades).
        n_levels: Contour levels per panel.
        title: Figure title.
    """
    xs, ys = np.asarray(landscape.xs), np.asarray(landscape.ys)
    ev = np.atleast_1d(np.asarray(getattr(landscape, "explained_variance", [np.nan, np.nan]), dtype=float))
    panels = [
        ("source", landscape.source_name, np.asarray(landscape.source_loss)),
        ("transfer", landscape.transfer_name, np.asarray(landscape.transfer_loss)),
    ]
    spacing = 0.16
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=spacing,
        shared_yaxes=False,
        subplot_titles=[f"source: {panels[0][1]}", f"transfer (unseen): {panels[1][1]}"],
    )
    # Draw the fine-tuned point first and the pruned one last: a short fine-tuning step leaves them on top
    # of each other at the plane's scale, and a small ✕ over a large ★ keeps both visible.
    order = sorted(
        landscape.points.items(), key=lambda kv: {"star": 0, "circle": 1}.get(_point_style(kv[0])[0], 2)
    )
    ranks = {label: i for i, label in enumerate(landscape.points)}
    for ci, (role, _, z) in enumerate(panels, start=1):
        zz = np.log10(np.maximum(z, 1e-12)) if log_scale else z
        fig.add_trace(
            go.Contour(
                x=xs,
                y=ys,
                z=zz,
                name=f"{role} loss",
                colorscale="Viridis",
                reversescale=True,
                ncontours=n_levels,
                contours=dict(coloring="fill", showlines=True),
                line=dict(width=0.5, color="rgba(0,0,0,0.3)"),
                showlegend=False,
                colorbar=dict(
                    title=dict(text=("log₁₀ " if log_scale else "") + f"{role} loss", side="right"),
                    x=(1 - spacing) / 2 + 0.005 if ci == 1 else 1.0,
                    len=0.85,
                    thickness=14,
                ),
                customdata=z,
                hovertemplate="PC1 %{x:.2f}, PC2 %{y:.2f}<br>loss %{customdata:.4g}<extra></extra>",
            ),
            row=1,
            col=ci,
        )
        for label, (px, py) in order:
            symbol, size, colour = _point_style(label)
            fig.add_trace(
                go.Scatter(
                    x=[px],
                    y=[py],
                    mode="markers",
                    name=label,
                    legendgroup=label,
                    showlegend=ci == 1,
                    legendrank=1000 + ranks[label],
                    marker=dict(symbol=symbol, size=size, color=colour, line=dict(color=_BLACK, width=1.5)),
                    hovertemplate=f"<b>{label}</b><br>PC1 %{{x:.3f}}, PC2 %{{y:.3f}}<extra></extra>",
                ),
                row=1,
                col=ci,
            )
        pruned = next((v for k, v in landscape.points.items() if k.startswith("θ̃₀")), None)
        tuned = next((v for k, v in landscape.points.items() if k.startswith("θ̃ₛ*")), None)
        if pruned is not None and tuned is not None:
            (x0, y0), (x1, y1) = pruned, tuned
            fig.add_annotation(
                x=x1,
                y=y1,
                ax=x0,
                ay=y0,
                xref=f"x{ci}" if ci > 1 else "x",
                yref=f"y{ci}" if ci > 1 else "y",
                axref=f"x{ci}" if ci > 1 else "x",
                ayref=f"y{ci}" if ci > 1 else "y",
                showarrow=True,
                arrowhead=2,
                arrowwidth=2,
                arrowcolor=_BLUE,
                standoff=8,
                text="",
            )
        pc1 = f"PC 1 ({100 * ev[0]:.0f}% of variance)" if len(ev) > 0 and np.isfinite(ev[0]) else "PC 1"
        pc2 = f"PC 2 ({100 * ev[1]:.0f}% of variance)" if len(ev) > 1 and np.isfinite(ev[1]) else "PC 2"
        fig.update_xaxes(title_text=pc1, row=1, col=ci)
        # Both panels show the same plane: one y title is enough, and a second one would sit under the
        # left panel's colour bar.
        fig.update_yaxes(title_text=pc2 if ci == 1 else None, row=1, col=ci)
    fig.update_layout(
        title=dict(text=title or "Loss landscapes over the plane of θ₀, θ̃₀ and θ̃ₛ* (PCA)", font_size=15),
        template="plotly_white",
        height=520,
        margin=dict(l=60, r=30, t=80, b=90),
        legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="center", x=0.5),
    )
    return fig


def landscape_note(landscape: Any) -> str:
    """One sentence on the scale of the plane: how far pruning and fine-tuning moved the weights in it."""
    pts = landscape.points
    dense = next((v for k, v in pts.items() if k.startswith("θ₀")), None)
    pruned = next((v for k, v in pts.items() if k.startswith("θ̃₀")), None)
    tuned = next((v for k, v in pts.items() if k.startswith("θ̃ₛ*")), None)
    if dense is None or pruned is None or tuned is None:
        return ""
    prune_step = float(np.hypot(pruned[0] - dense[0], pruned[1] - dense[1]))
    tune_step = float(np.hypot(tuned[0] - pruned[0], tuned[1] - pruned[1]))
    text = (
        f"In this plane pruning moved the weights by {prune_step:.3g} and fine-tuning by {tune_step:.3g} "
        "(Euclidean distance in weight space)."
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
