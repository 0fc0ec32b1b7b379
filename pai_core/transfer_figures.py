"""Figures, tables and verdicts beyond the paper: OBS repair and task alignment (no torch, no streamlit).

* :func:`repair_verdict` — whether the OBS correction computed on the *source* helps the transfer
  (and cross-domain) tasks: P2's mechanism without an optimiser, in sentences.
* :func:`alignment_figure` — transfer retention against one alignment measure, one point per
  source → transfer pair (in-domain ●, cross-domain ✕), with the Spearman ρ across pairs in the
  title: does alignment predict transfer?
* :func:`price_figure` — per pair, the transfer task's zero-shot accuracy pruned with the source's
  data against pruned with its own (the oracle): the price of not seeing the transfer task.
* :func:`layer_alignment_figure` — one pair's alignment layer by layer (input to output).
* :func:`alignment_text`, :func:`alignment_report_html` — the same as a printed table and as one
  self-contained HTML page (``python -m pai_core align --out``).

Frames come from :func:`pai_core.task_pairs.alignment_frame` (accuracies as fractions; shown in %).

Example:
    >>> import pandas as pd
    >>> f = pd.DataFrame({"model": "m", "suite": "digits", "score": "diag", "sparsity": 0.3,
    ...     "source_task": "a", "transfer_task": ["b", "c", "d"], "domain": ["in-domain", "in-domain", "cross-domain"],
    ...     "dense": 1.0, "zero_shot": [0.9, 0.8, 0.4], "with_own": [0.9, 0.9, 0.7], "retention": [0.9, 0.8, 0.4],
    ...     "price": [0.0, 0.1, 0.3], "a_overlap": [0.7, 0.6, 0.3]})
    >>> [t.name for t in alignment_figure(f, "a_overlap").data]
    ['in-domain', 'cross-domain']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from .figures import OKABE_ITO, score_label, sparsity_label
from .results import ROLES, ExperimentResult

__all__ = [
    "repair_verdict",
    "MEASURES",
    "alignment_figure",
    "price_figure",
    "layer_alignment_figure",
    "alignment_text",
    "alignment_report_html",
]

#: Alignment columns of an alignment frame → axis labels (= ``task_pairs.ALIGNMENT_MEASURES``,
#: written out because task_pairs imports torch; a test holds the two equal).
MEASURES = {
    "fisher_pearson": "diagonal Fisher, Pearson r",
    "fisher_spearman": "diagonal Fisher, Spearman ρ",
    "a_overlap": "K-FAC A eigenspace overlap",
    "b_overlap": "K-FAC B eigenspace overlap",
    "mask_jaccard": "mask Jaccard (source vs own)",
}

_DOMAIN_STYLE = {"in-domain": ("circle", OKABE_ITO[3]), "cross-domain": ("x", OKABE_ITO[4])}


# ----------------------------------------------------------------------------- the repair verdict


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _floor(p1: float, p2: float, n: int | None) -> float | None:
    """Twice the binomial standard error of ``p₁ − p₂`` on ``n`` images each (at least one image)."""
    if not n:
        return None
    se = math.sqrt(max(p1 * (1 - p1), 0.0) / n + max(p2 * (1 - p2), 0.0) / n)
    return max(2.0 * se, 1.0 / n)


def _images(res: ExperimentResult, task) -> int | None:
    """Images a task's accuracy was measured on, when the result knows its class count."""
    classes = getattr(task, "num_classes", None)
    if not classes or res.spec.images_per_class is None:
        return None
    n = res.spec.images_per_class * classes
    return n // 2 if res.spec.holdout else n


def repair_verdict(results: Sequence[ExperimentResult]) -> list[str]:
    """Whether the OBS correction computed on the source helps the other tasks, one sentence per score.

    P2 says that moving the pruned weights downhill on the *source* also helps the transfer tasks
    when the landscapes align.  The OBS update δ (Eq. (3)) is that move without an optimiser, from
    the source's curvature alone.  Per score: the mean change (OBS-corrected − zero-shot, points)
    on the source, the transfer and the cross-domain tasks over the runs, and how many transfer
    tasks rose / fell.  Where a task's class count is known a change counts only beyond twice its
    binomial standard error; otherwise every change counts and the sentence says so.

    Args:
        results: Runs; those without ``spec.repair`` are ignored.

    Returns:
        Markdown sentences (empty when no run was OBS-corrected).

    Example:
        >>> from pai_core.results import ExperimentSpec, TaskResult
        >>> spec = ExperimentSpec(score="magnitude", sparsity=0.4, repair="a")
        >>> res = ExperimentResult(spec, [TaskResult("a", "source", 1.0, 0.6, repaired=1.0),
        ...                               TaskResult("b", "transfer", 1.0, 0.6, repaired=0.9)], None)
        >>> repair_verdict([res])[0][:85]
        '**magnitude**: the OBS correction computed on the source changed the source by +40.0 '
    """
    runs = [r for r in results if r.spec.repair and any(t.repaired is not None for t in r.tasks)]
    out = []
    for score in dict.fromkeys(r.spec.score for r in runs):
        rs = [r for r in runs if r.spec.score == score]
        change = {}
        for role, prefix in ROLES.items():
            vals = [
                r.summary()[f"{prefix}_repaired"] - r.summary()[f"{prefix}_zero_shot"]
                for r in rs
                if r.summary()[f"{prefix}_repaired"] is not None
            ]
            change[role] = sum(vals) / len(vals) if vals else None
        up = down = same = 0
        floors_known = True
        for r in rs:
            for t in r.tasks:
                if t.role == "source" or t.repaired is None:
                    continue
                floor = _floor(t.repaired, t.zero_shot, _images(r, t))
                floors_known &= floor is not None
                d = t.repaired - t.zero_shot
                if d > (floor or 0.0):
                    up += 1
                elif d < -(floor or 0.0):
                    down += 1
                else:
                    same += 1
        levels = ", ".join(sparsity_label(q) for q in sorted({r.spec.sparsity for r in rs}))
        parts = [f"changed the source by {_pts(change['source'])} points"]
        if change["transfer"] is not None:
            parts.append(f"the transfer tasks by {_pts(change['transfer'])}")
        if change["cross-domain"] is not None:
            parts.append(f"the cross-domain tasks by {_pts(change['cross-domain'])}")
        text = (
            f"**{score_label(score)}**: the OBS correction computed on the source "
            + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])
            + f" (mean over {len(rs)} run(s) at {levels})"
        )
        if up + down + same:
            beyond = "beyond the noise" if floors_known else "(every change counted: class counts unknown)"
            text += (
                f"; of {up + down + same} other tasks it raised {up}, left {same} and lowered {down} {beyond}"
            )
            others = [v for k, v in change.items() if k != "source" and v is not None]
            if down == 0 and up > 0:
                text += ": the source's correction helped tasks it never saw and hurt none, as P2 predicts"
            elif others and min(others) < 0 and down > up:
                text += ": on average it hurt the tasks it never saw, against P2"
            elif up == 0 and down == 0:
                text += ": no task it never saw moved, so this tests nothing about P2"
        out.append(text + ".")
    return out


# ----------------------------------------------------------------------------- alignment figures


def _title_rho(frame: pd.DataFrame, measure: str) -> str:
    d = frame[["retention", measure]].astype(float).dropna()
    if len(d) < 3 or d["retention"].nunique() < 2 or d[measure].nunique() < 2:
        return f"n = {len(d)} pairs"
    rho = d["retention"].rank().corr(d[measure].rank())  # Spearman: Pearson of the ranks
    return f"Spearman ρ = {rho:+.2f} over {len(d)} pairs"


def alignment_figure(
    frame: pd.DataFrame, measure: str = "a_overlap", *, title: str | None = None
) -> go.Figure:
    """Transfer retention (zero-shot / dense, %) against an alignment measure, one point per pair.

    Args:
        frame: :func:`pai_core.task_pairs.alignment_frame` rows (one score and sparsity, or several:
            the hover says which).
        measure: A column of :data:`MEASURES`.
        title: Figure title (default: the measure and the rank correlation across pairs).

    Raises:
        ValueError: An unknown measure (the message lists them).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown alignment measure {measure!r}; valid: {', '.join(MEASURES)}")
    fig = go.Figure()
    for domain, (symbol, colour) in _DOMAIN_STYLE.items():
        d = frame[frame["domain"] == domain]
        if d.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=d[measure].astype(float),
                y=100 * d["retention"].astype(float),
                mode="markers",
                name=domain,
                marker=dict(symbol=symbol, size=11, color=colour, line=dict(color="#000000", width=1)),
                customdata=list(
                    zip(
                        d["source_task"],
                        d["transfer_task"],
                        d["score"].map(score_label),
                        d["sparsity"].map(sparsity_label),
                        strict=True,
                    )
                ),
                hovertemplate="<b>%{customdata[0]} → %{customdata[1]}</b><br>%{customdata[2]} at "
                "%{customdata[3]}<br>"
                + MEASURES[measure]
                + " %{x:.3f}<br>retention %{y:.1f}%<extra></extra>",
            )
        )
    chance = {"a_overlap": "a_chance", "b_overlap": "b_chance"}.get(measure)
    if chance and chance in frame and frame[chance].notna().any():
        level = float(frame[chance].astype(float).mean())
        fig.add_vline(
            x=level,
            line=dict(color="#999999", dash="dot"),
            annotation_text=f"random subspaces {level:.2f}",
            annotation_position="top right",
        )
    fig.update_layout(
        title=dict(
            text=title
            or f"Does alignment predict transfer? {MEASURES[measure]}: {_title_rho(frame, measure)}"
        ),
        xaxis_title=f"{MEASURES[measure]} (1 = identical tasks)",
        yaxis_title="transfer retention: zero-shot / dense (%)",
        template="plotly_white",
        height=430,
        legend=dict(title="pair"),
    )
    return fig


def price_figure(frame: pd.DataFrame, *, title: str | None = None) -> go.Figure:
    """Zero-shot accuracy of each transfer task pruned with the source's data (x) vs with its own (y).

    Points above the diagonal pay a price for not seeing the transfer task (the paper's setting);
    points below it fare *better* pruned on another task's data.
    """
    fig = go.Figure()
    lo, hi = 0.0, 100.0
    fig.add_trace(
        go.Scatter(
            x=[lo, hi], y=[lo, hi], mode="lines", name="no price", line=dict(color="#999999", dash="dash")
        )
    )
    for domain, (symbol, colour) in _DOMAIN_STYLE.items():
        d = frame[frame["domain"] == domain]
        if d.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=100 * d["zero_shot"].astype(float),
                y=100 * d["with_own"].astype(float),
                mode="markers",
                name=domain,
                marker=dict(symbol=symbol, size=11, color=colour, line=dict(color="#000000", width=1)),
                customdata=list(zip(d["source_task"], d["transfer_task"], 100 * d["price"], strict=True)),
                hovertemplate="<b>%{customdata[0]} → %{customdata[1]}</b><br>with the source's mask %{x:.1f}%"
                "<br>with its own mask %{y:.1f}%<br>price %{customdata[2]:+.1f} points<extra></extra>",
            )
        )
    mean = 100 * frame["price"].astype(float).mean() if len(frame) else math.nan
    fig.update_layout(
        title=dict(
            text=title
            or f"The price of not seeing the transfer task: {mean:+.1f} points on average (oracle − source)"
        ),
        xaxis=dict(title="zero-shot accuracy, pruned with the source's data (%)", range=[lo - 2, hi + 2]),
        yaxis=dict(title="pruned with its own data: oracle (%)", range=[lo - 2, hi + 2]),
        template="plotly_white",
        height=430,
    )
    return fig


def layer_alignment_figure(alignment: Any, *, title: str | None = None) -> go.Figure:
    """One pair's alignment per layer, in the network's order: where along the depth the tasks part.

    Args:
        alignment: A :class:`pai_core.alignment.Alignment` (``source``, ``transfer``, ``layers``
            with ``name, fisher_spearman, a_overlap, a_chance, b_overlap, mask_jaccard``).
        title: Figure title.
    """
    layers = list(alignment.layers)
    x = list(range(len(layers)))
    names = [lr.name for lr in layers]
    fig = go.Figure()
    lines = (
        ("fisher_spearman", OKABE_ITO[0], "solid"),
        ("a_overlap", OKABE_ITO[3], "solid"),
        ("b_overlap", OKABE_ITO[5], "solid"),
        ("mask_jaccard", OKABE_ITO[2], "solid"),
        ("a_chance", "#999999", "dot"),
    )
    for field, colour, dash in lines:
        label = MEASURES.get(field, "A overlap of random subspaces (k/d)")
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[getattr(lr, field) for lr in layers],
                mode="lines+markers",
                name=label,
                line=dict(color=colour, dash=dash, width=1.5),
                marker=dict(size=4),
                customdata=names,
                hovertemplate="%{customdata}<br>" + label + " %{y:.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        title=dict(text=title or f"Alignment per layer: {alignment.source} → {alignment.transfer}"),
        xaxis_title="layer (input → output)",
        yaxis_title="alignment (1 = identical tasks)",
        template="plotly_white",
        height=380,
    )
    return fig


# ----------------------------------------------------------------------------- text and HTML


def alignment_text(frame: pd.DataFrame) -> str:
    """The alignment table as plain text (accuracies in %), and the rank correlations per setting."""
    if frame.empty:
        return "(no pairs)"
    show = pd.DataFrame(
        {
            "score": frame["score"],
            "sparsity": frame["sparsity"].map(sparsity_label),
            "pair": frame["source_task"] + " → " + frame["transfer_task"],
            "domain": frame["domain"],
            "dense": (100 * frame["dense"]).round(1),
            "zero-shot": (100 * frame["zero_shot"]).round(1),
            "retention": (100 * frame["retention"]).round(1),
            "own mask": (100 * frame["with_own"]).round(1),
            "price": (100 * frame["price"]).round(1),
            "F r": frame["fisher_pearson"].round(3),
            "F ρ": frame["fisher_spearman"].round(3),
            "A ov.": frame["a_overlap"].round(3),
            "B ov.": frame["b_overlap"].round(3),
            "Jaccard": frame["mask_jaccard"].round(3),
        }
    )
    lines = [show.to_string(index=False, na_rep="-"), ""]
    lines.append("Does alignment predict transfer? Spearman ρ across pairs between retention and:")
    for (score, q), g in frame.groupby(["score", "sparsity"], sort=True):
        rhos = ", ".join(f"{m} {_rho(g, m)}" for m in MEASURES)
        lines.append(f"  {score} at {sparsity_label(q)} ({len(g)} pairs): {rhos}")
    by_domain = frame.groupby("domain")[["retention", "price", "a_overlap", "mask_jaccard"]].mean()
    for domain, row in by_domain.iterrows():
        lines.append(
            f"  mean over {domain} pairs: retention {100 * row['retention']:.1f}%, price {100 * row['price']:+.1f} "
            f"points, A overlap {row['a_overlap']:.3f}, Jaccard {row['mask_jaccard']:.3f}"
        )
    return "\n".join(lines)


def _rho(g: pd.DataFrame, m: str) -> str:
    d = g[["retention", m]].astype(float).dropna()
    if len(d) < 3 or d["retention"].nunique() < 2 or d[m].nunique() < 2:
        return "-"
    return f"{d['retention'].rank().corr(d[m].rank()):+.2f}"


def alignment_report_html(frame: pd.DataFrame) -> str:
    """One self-contained HTML page: retention against every measure, the price figure and the table."""
    figs = [alignment_figure(frame, m) for m in MEASURES] + [price_figure(frame)]
    # plotly.js inlined once, with the first figure: the page opens offline.
    body = "\n".join(
        f.to_html(include_plotlyjs=i == 0, full_html=False, config={"displaylogo": False})
        for i, f in enumerate(figs)
    )
    table = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Task alignment</title></head><body>"
        "<h1>Task alignment: does alignment predict transfer?</h1>"
        f"{body}<h2>Every pair</h2>{table}</body></html>"
    )
