"""Figures of the from-scratch protocol (the scalable second-order paper's own plots), plotly only.

Pure layout over :class:`~pai_core.scratch_spec.ScratchResult` objects (or their ``to_dict()``
form), no streamlit, so scripts, reports and the dashboard draw the same figures.  Scores are
named and coloured from the score registry (:func:`pai_core.figures.score_label`), which imports
torch; the specs, results and the store do not (they read without the engine).

* :func:`accuracy_vs_sparsity_figure`: test accuracy against sparsity per score, mean ± spread
  over seeds, with the remaining density on a log axis so 90 … 99.5 % are evenly spread
  (where PaI criteria separate), warm-up on and off as solid and dashed lines;
* :func:`warmup_figure`: the BatchNorm warm-up's effect, per score and sparsity, off vs on;
* :func:`layer_density_figure`: kept fraction of every layer (layer collapse shows as a
  marker on the floor line);
* :func:`training_curves_figure`: test accuracy per epoch;
* :func:`results_frame`, :func:`aggregate`, :func:`summary_markdown`: the numbers behind them.

Accuracies in results are fractions; frames and figures show percentages.

Example:
    >>> fig = accuracy_vs_sparsity_figure(results_frame(results))   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .figures import OKABE_ITO, score_color, score_label, sparsity_label
from .scratch_spec import PAPER_SCORES, SCHEDULES, ScratchResult

__all__ = [
    "WARMUP_LABELS",
    "WARMUP_DASH",
    "results_frame",
    "aggregate",
    "summary_markdown",
    "accuracy_vs_sparsity_figure",
    "warmup_figure",
    "layer_density_frame",
    "layer_density_figure",
    "training_curves_figure",
]

#: How each warm-up mode is named in legends.
WARMUP_LABELS = {
    "off": "no warm-up",
    "paper": "BN warm-up (paper: running avg.)",
    "reset": "BN warm-up (reset + cumulative)",
}
#: Line style per warm-up mode.
WARMUP_DASH = {"off": "dash", "paper": "solid", "reset": "dot"}
_WARMUP_COLOR = {"off": "#999999", "paper": OKABE_ITO[3], "reset": OKABE_ITO[2]}
_SETTING = ("model", "width", "dataset", "schedule", "train_size", "test_size", "prune_layers", "mask_scope")
_FLOOR = 1e-4  # where a collapsed layer (density 0) is drawn on the log axis


def _as_result(r: ScratchResult | Mapping[str, Any]) -> ScratchResult:
    return r if isinstance(r, ScratchResult) else ScratchResult.from_dict(dict(r))


def _score_order(names: Sequence[str]) -> list[str]:
    known = list(PAPER_SCORES)
    return sorted(set(names), key=lambda s: (known.index(s) if s in known else len(known), s))


# --------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------


def results_frame(results: Sequence[ScratchResult | Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run: its settings, ``final_acc`` / ``best_acc`` in %, density, collapse, time."""
    rows = []
    for r in map(_as_result, results):
        s = r.spec
        rows.append(
            {
                "model": s.model,
                "width": s.width,
                "dataset": s.dataset,
                "schedule": s.schedule,
                "train_size": s.train_size,
                "test_size": s.test_size,
                "prune_layers": s.prune_layers,
                "mask_scope": s.mask_scope,
                "score": s.score,
                "sparsity": s.sparsity,
                "density": r.density,
                "bn_warmup": s.bn_warmup,
                "seed": s.seed,
                "final_acc": 100.0 * r.final_acc,
                "best_acc": 100.0 * r.best_acc,
                "epochs": len(r.curve),
                "collapsed": len(r.collapsed_layers),
                "kept": r.kept,
                "total": r.total,
                "seconds": r.timings.get("total", float("nan")),
                "cached": r.cached,
            }
        )
    return pd.DataFrame(rows)


def aggregate(frame: pd.DataFrame, metric: str = "final_acc") -> pd.DataFrame:
    """Mean, sample standard deviation (ddof 1; NaN for one seed), min, max and count over seeds.

    Grouped by score, sparsity and warm-up (and every setting column, so mixed grids never
    average across networks or datasets).  Dense runs (sparsity 0) form their own group with
    score ``"dense"``.
    """
    if frame.empty:
        raise ValueError("no results")
    f = frame.copy()
    f.loc[f["sparsity"] == 0.0, ["score", "bn_warmup"]] = ["dense", "off"]
    keys = [c for c in _SETTING if c in f.columns] + ["score", "sparsity", "bn_warmup"]
    g = f.groupby(keys, dropna=False)[metric]
    out = g.agg(mean="mean", std="std", min="min", max="max", n="count").reset_index()
    collapsed = f.groupby(keys, dropna=False)["collapsed"].mean().reset_index(drop=True)
    out["collapsed"] = collapsed.values
    return out


def summary_markdown(frame: pd.DataFrame, metric: str = "final_acc") -> str:
    """A Markdown table: one row per score and warm-up, one column per sparsity, ``mean ± std (n)``."""
    agg = aggregate(frame, metric)
    levels = sorted(q for q in agg["sparsity"].unique() if q > 0)
    lines = []
    dense = agg[agg["score"] == "dense"]
    if not dense.empty:
        lines += [f"Dense (unpruned) network: {_cell(dense.iloc[0])}.", ""]
    lines.append("| score | warm-up | " + " | ".join(sparsity_label(q) for q in levels) + " |")
    lines.append("|" + " --- |" * (2 + len(levels)))
    for score in _score_order([s for s in agg["score"].unique() if s != "dense"]):
        for w in ("off", "paper", "reset"):
            part = agg[(agg["score"] == score) & (agg["bn_warmup"] == w)].set_index("sparsity")
            if part.empty:
                continue
            cells = [_cell(part.loc[q]) if q in part.index else "–" for q in levels]
            lines.append(f"| {score_label(score)} | {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: pd.Series) -> str:
    std = "" if math.isnan(row["std"]) else f" ± {row['std']:.1f}"
    mark = f", {row['collapsed']:.1f} collapsed" if row["collapsed"] > 0 else ""
    return f"{row['mean']:.1f}{std} (n={int(row['n'])}{mark})"


def _check_one_setting(frame: pd.DataFrame) -> dict[str, Any]:
    cols = [c for c in _SETTING if c in frame.columns]
    distinct = {c: frame[c].dropna().unique() for c in cols}
    mixed = [c for c, v in distinct.items() if len(v) > 1]
    if mixed:
        raise ValueError(f"these runs differ in {', '.join(mixed)}: filter them to one setting first")
    return {c: (v[0] if len(v) else None) for c, v in distinct.items()}


def _setting_title(setting: Mapping[str, Any]) -> str:
    sched = SCHEDULES.get(str(setting.get("schedule")))
    width = setting.get("width")
    net = f"{setting.get('model')}" + ("" if width in (None, 1.0) else f" (width {width:g})")
    data = f"{setting.get('dataset')}"
    if setting.get("train_size"):
        data += f", {int(setting['train_size'])} training images"
    return f"{net} on {data} · {sched.name if sched else setting.get('schedule')} schedule"


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------


def accuracy_vs_sparsity_figure(
    frame: pd.DataFrame,
    *,
    metric: str = "final_acc",
    spread: str = "std",
    title: str | None = None,
) -> go.Figure:
    """Test accuracy against sparsity, one colour per score, one line style per warm-up mode.

    The x axis is the remaining density ``1 − q`` on a log scale, reversed, so sparsity grows
    to the right and 90, 95, 98, 99, 99.5 % sit evenly; ticks are labelled with the sparsity.
    Points are means over seeds with error bars of ±1 standard deviation (``spread="std"``) or
    the min–max range (``spread="range"``).  Dense runs become a black dotted line.

    Args:
        frame: :func:`results_frame` of runs with one setting (network, dataset, schedule, …).
        metric: ``"final_acc"`` (default, the honest number) or ``"best_acc"``.
        spread: ``"std"`` or ``"range"``.
        title: Figure title (default: names the setting).

    Returns:
        A figure with one scatter trace per (score, warm-up), named ``"<score> · <warm-up>"``.

    Raises:
        ValueError: No pruned runs, mixed settings, or an unknown ``spread``.
    """
    if spread not in ("std", "range"):
        raise ValueError("spread must be 'std' or 'range'")
    setting = _check_one_setting(frame)
    agg = aggregate(frame, metric)
    pruned = agg[agg["sparsity"] > 0]
    if pruned.empty:
        raise ValueError("no pruned runs (sparsity > 0) to plot")
    fig = go.Figure()
    for score in _score_order(pruned["score"]):
        for w in ("off", "paper", "reset"):
            d = pruned[(pruned["score"] == score) & (pruned["bn_warmup"] == w)].sort_values("sparsity")
            if d.empty:
                continue
            if spread == "std":
                err = dict(type="data", array=d["std"].fillna(0).tolist(), visible=True, thickness=1)
            else:
                err = dict(
                    type="data",
                    symmetric=False,
                    array=(d["max"] - d["mean"]).tolist(),
                    arrayminus=(d["mean"] - d["min"]).tolist(),
                    visible=True,
                    thickness=1,
                )
            fig.add_trace(
                go.Scatter(
                    x=(100 * (1 - d["sparsity"])).tolist(),
                    y=d["mean"].tolist(),
                    mode="lines+markers",
                    name=f"{score_label(score)} · {WARMUP_LABELS[w]}",
                    legendgroup=score,
                    line=dict(color=score_color(score), dash=WARMUP_DASH[w], width=2),
                    marker=dict(size=7, symbol="circle" if w != "off" else "circle-open"),
                    error_y=err,
                    customdata=list(zip(d["sparsity"] * 100, d["n"], d["collapsed"], strict=True)),
                    hovertemplate=(
                        f"<b>{score_label(score)}</b> · {WARMUP_LABELS[w]}<br>sparsity %{{customdata[0]:.2f}}%"
                        "<br>accuracy %{y:.2f}%<br>seeds: %{customdata[1]}<br>collapsed layers (mean): "
                        "%{customdata[2]:.1f}<extra></extra>"
                    ),
                )
            )
    levels = sorted(pruned["sparsity"].unique())
    dense = agg[agg["score"] == "dense"]
    if not dense.empty:
        fig.add_hline(
            y=float(dense["mean"].iloc[0]),
            line=dict(color="#000000", dash="dot", width=1),
            annotation_text=f"dense {dense['mean'].iloc[0]:.1f}%",
            annotation_position="top left",
        )
    fig.update_xaxes(
        type="log",
        autorange="reversed",
        tickvals=[100 * (1 - q) for q in levels],
        ticktext=[sparsity_label(q) for q in levels],
        title="sparsity (log scale of the remaining weights)",
    )
    label = "final test accuracy" if metric == "final_acc" else "best per-epoch test accuracy (optimistic)"
    fig.update_yaxes(title=f"{label} (%)")
    fig.update_layout(
        title=title or f"Accuracy after training from scratch · {_setting_title(setting)}",
        template="plotly_white",
        legend=dict(groupclick="toggleitem"),
        height=480,
    )
    return fig


def warmup_figure(frame: pd.DataFrame, *, metric: str = "final_acc", title: str | None = None) -> go.Figure:
    """Grouped bars: per sparsity (one panel each), per score, accuracy with each warm-up mode.

    Bars are means over seeds with ±1 standard deviation.  Data-free scores appear with the
    modes they were run with (usually only "off": the warm-up cannot change their mask).

    Raises:
        ValueError: No pruned runs or mixed settings.
    """
    setting = _check_one_setting(frame)
    agg = aggregate(frame, metric)
    pruned = agg[agg["sparsity"] > 0]
    if pruned.empty:
        raise ValueError("no pruned runs (sparsity > 0) to plot")
    levels = sorted(pruned["sparsity"].unique())
    order = _score_order(pruned["score"])
    fig = make_subplots(
        rows=1, cols=len(levels), shared_yaxes=True, subplot_titles=[sparsity_label(q) for q in levels]
    )
    modes = [w for w in ("off", "paper", "reset") if (pruned["bn_warmup"] == w).any()]
    for ci, q in enumerate(levels, start=1):
        for w in modes:
            d = (
                pruned[(pruned["sparsity"] == q) & (pruned["bn_warmup"] == w)]
                .set_index("score")
                .reindex(order)
            )
            fig.add_trace(
                go.Bar(
                    x=[score_label(s) for s in order],
                    y=d["mean"].tolist(),
                    name=WARMUP_LABELS[w],
                    legendgroup=w,
                    showlegend=ci == 1,
                    marker=dict(color=_WARMUP_COLOR[w]),
                    error_y=dict(type="data", array=d["std"].fillna(0).tolist(), visible=True, thickness=1),
                    hovertemplate=f"%{{x}} · {WARMUP_LABELS[w]}<br>accuracy %{{y:.2f}}%<extra></extra>",
                ),
                row=1,
                col=ci,
            )
    fig.update_yaxes(title_text="final test accuracy (%)" if metric == "final_acc" else metric, row=1, col=1)
    fig.update_layout(
        barmode="group",
        template="plotly_white",
        title=title or f"BatchNorm warm-up on vs off · {_setting_title(setting)}",
        height=430,
    )
    return fig


def layer_density_frame(results: Sequence[ScratchResult | Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (run, covered layer): ``layer`` (index in network order), ``name``, ``density``."""
    rows = []
    for r in map(_as_result, results):
        for i, row in enumerate(r.layer_density):
            rows.append(
                {
                    "score": r.spec.score,
                    "sparsity": r.spec.sparsity,
                    "bn_warmup": r.spec.bn_warmup,
                    "seed": r.spec.seed,
                    "layer": i,
                    "name": row["name"],
                    "numel": row["numel"],
                    "density": row["density"],
                }
            )
    return pd.DataFrame(rows)


def layer_density_figure(
    results: Sequence[ScratchResult | Mapping[str, Any]],
    *,
    sparsity: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """Kept fraction per layer at one sparsity: one line per score, one panel per warm-up mode.

    Densities are means over seeds on a log axis; a layer whose mean density is 0 (collapsed in
    every seed) is drawn on a floor line with an ``x`` marker.  The dotted line is the overall
    density ``1 − q`` (what every layer would keep under uniform pruning).

    Args:
        results: Runs with one setting.
        sparsity: Which sparsity to show (default: the highest pruned one, where collapse shows).
        title: Figure title.

    Raises:
        ValueError: No pruned runs, or none at ``sparsity``.
    """
    frame = layer_density_frame(results)
    frame = frame[frame["sparsity"] > 0]
    if frame.empty:
        raise ValueError("no pruned runs to plot")
    q = max(frame["sparsity"]) if sparsity is None else float(sparsity)
    frame = frame[(frame["sparsity"] - q).abs() < 1e-12]
    if frame.empty:
        raise ValueError(f"no runs at sparsity {q}")
    modes = [w for w in ("off", "paper", "reset") if (frame["bn_warmup"] == w).any()]
    fig = make_subplots(
        rows=len(modes), cols=1, shared_xaxes=True, subplot_titles=[WARMUP_LABELS[w] for w in modes]
    )
    names = frame.drop_duplicates("layer").sort_values("layer")["name"].tolist()
    for ri, w in enumerate(modes, start=1):
        for score in _score_order(frame["score"]):
            d = frame[(frame["bn_warmup"] == w) & (frame["score"] == score)]
            if d.empty:
                continue
            m = d.groupby("layer")["density"].mean().reindex(range(len(names)))
            y = [max(v, _FLOOR) for v in m.tolist()]
            collapsed = [v == 0 for v in m.tolist()]
            fig.add_trace(
                go.Scatter(
                    x=list(range(len(names))),
                    y=y,
                    mode="lines+markers",
                    name=score_label(score),
                    legendgroup=score,
                    showlegend=ri == 1,
                    line=dict(color=score_color(score), width=1.5),
                    marker=dict(
                        symbol=["x" if c else "circle" for c in collapsed],
                        size=[11 if c else 5 for c in collapsed],
                    ),
                    customdata=names,
                    hovertemplate=f"<b>{score_label(score)}</b><br>%{{customdata}}<br>density %{{y:.4f}}<extra></extra>",
                ),
                row=ri,
                col=1,
            )
        fig.add_hline(y=1 - q, line=dict(color="#000000", dash="dot", width=1), row=ri, col=1)
        fig.add_hline(y=_FLOOR, line=dict(color="#D55E00", dash="dash", width=1), row=ri, col=1)
    fig.update_yaxes(
        type="log",
        title_text="kept fraction",
        tickvals=[_FLOOR, 1e-3, 1e-2, 1e-1, 1.0],
        ticktext=["collapsed (0)", "0.1%", "1%", "10%", "100%"],
    )
    fig.update_xaxes(tickvals=list(range(len(names))), ticktext=names, tickangle=-60, row=len(modes), col=1)
    fig.update_layout(
        template="plotly_white",
        title=title
        or f"Per-layer density at {sparsity_label(q)} sparsity (x on the red line: layer collapse)",
        height=330 * len(modes) + 120,
    )
    return fig


def training_curves_figure(
    results: Sequence[ScratchResult | Mapping[str, Any]], *, title: str | None = None
) -> go.Figure:
    """Test accuracy per epoch, one line per run, coloured by score, dashed without warm-up."""
    fig = go.Figure()
    for r in map(_as_result, results):
        s = r.spec
        fig.add_trace(
            go.Scatter(
                x=[row["epoch"] for row in r.curve],
                y=[100 * row["test_acc"] for row in r.curve],
                mode="lines+markers",
                name=f"{score_label(s.score)} · {sparsity_label(s.sparsity)} · {s.bn_warmup} · seed {s.seed}",
                line=dict(color=score_color(s.score), dash=WARMUP_DASH[s.bn_warmup]),
            )
        )
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(title="test accuracy (%)")
    fig.update_layout(
        template="plotly_white", title=title or "Training from scratch: test accuracy per epoch"
    )
    return fig
