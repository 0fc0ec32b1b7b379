"""Plotly figures for the two-parameter toy landscapes (the paper's Fig. 1 and Fig. 2).

Pure plotting: every number comes from `pai_core.toy`; this module only lays it out. No streamlit
here, so the same figure can be saved from a script or a notebook.

Example:
    >>> from pai_core.toy import preset, scenario_from_spec
    >>> fig = toy_figure(scenario_from_spec(preset("misaligned")))
    >>> fig.layout.xaxis.title.text, fig.layout.yaxis.scaleanchor
    ('θ[1]', 'x')
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from pai_core.toy import ToyResult, loss_grid

__all__ = ["toy_figure", "figure_extent"]

# Okabe-Ito colours: distinguishable under the common colour-vision deficiencies, and the
# vermillion stands in for the paper's red arrow and red dashed retraining line.
_VERMILLION = "#D55E00"
_SKY = "#56B4E9"
_BLACK = "#000000"
_WHITE = "#FFFFFF"


def figure_extent(result: ToyResult, *, padding: float = 0.35, min_half_width: float = 1.0) -> np.ndarray:
    """A square plotting window around every point of `result`.

    Square because the figure uses an equal aspect ratio: an ellipse's tilt is only readable when
    one unit of θ[1] is as long as one unit of θ[2].

    Args:
        result: a scenario from `pai_core.toy.scenario`.
        padding: extra margin as a fraction of the half-width.
        min_half_width: lower bound on the half-width, so points that nearly coincide still get a
            landscape around them.

    Returns:
        array([[x_min, x_max], [y_min, y_max]]).
    """
    pts = np.vstack([result.theta0, result.pruned, result.obs, result.retrained, result.retrain_path])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre = 0.5 * (lo + hi)
    half = max(0.5 * float(np.max(hi - lo)), min_half_width) * (1.0 + padding)
    return np.array([[centre[0] - half, centre[0] + half], [centre[1] - half, centre[1] + half]])


def _hover(name: str, theta: np.ndarray, source: float, transfer: float) -> str:
    return (
        f"<b>{name}</b><br>θ = ({theta[0]:.3f}, {theta[1]:.3f})"
        f"<br>source loss {source:.3f}<br>transfer loss {transfer:.3f}<extra></extra>"
    )


def toy_figure(
    result: ToyResult,
    *,
    show_transfer: bool = True,
    grid_points: int = 161,
    n_levels: int = 14,
    colorscale: str = "Viridis",
    title: str | None = None,
    height: int = 620,
    legend: bool = True,
) -> go.Figure:
    """Contour plot of one toy scenario, in the style of the paper's Fig. 1 / Fig. 2.

    Filled contours show the source loss (lighter = lower, as in the paper), dashed lines the
    transfer loss at the same levels. Markers: θ₀, the pruned point θ̃₀, the OBS-corrected point
    θ₀ + δ and the end of retraining θ̃ₛ*; an arrow shows the pruning perturbation θ₀ → θ̃₀ and a
    dashed line the retraining path on the source loss.

    Args:
        result: a scenario from `pai_core.toy.scenario` / `scenario_from_spec`.
        show_transfer: draw the transfer task's dashed contours.
        grid_points: grid resolution per axis for the contours.
        n_levels: number of contour levels (the same levels for both tasks, so equal spacing of
            lines means equal loss on both).
        colorscale: a plotly sequential scale; the default Viridis is colour-blind safe and reads
            in greyscale. It is reversed so that low loss is light, as in the paper.
        title: figure title; default names the score and the pruned weight.
        height: pixel height (the aspect ratio stays 1: θ units are equally long on both axes).
        legend: show the legend (off for small multiples, which share the large figure's legend).

    Returns:
        A `plotly.graph_objects.Figure`.

    Raises:
        ValueError: if grid_points < 10 or n_levels < 2.
    """
    if grid_points < 10:
        raise ValueError(f"grid_points must be at least 10, got {grid_points}")
    if n_levels < 2:
        raise ValueError(f"n_levels must be at least 2, got {n_levels}")

    (x0, x1), (y0, y1) = figure_extent(result)
    xs = np.linspace(x0, x1, grid_points)
    ys = np.linspace(y0, y1, grid_points)
    z_src = loss_grid(result.source_hessian, result.theta0, xs, ys)

    # Levels cover every marked point with room to spare, and most of the window, but not its far
    # corners where a quadratic explodes: levels set by the corners would leave the region around
    # the points a single colour.
    worst = max(max(r.source, r.transfer) for r in result.losses)
    top = max(1.25 * worst, float(np.quantile(z_src, 0.85)), 1e-9)
    size = top / n_levels
    levels = dict(start=0.0, end=size * n_levels, size=size)

    fig = go.Figure()
    fig.add_trace(
        go.Contour(
            x=xs,
            y=ys,
            z=z_src,
            name="source loss",
            colorscale=colorscale,
            reversescale=True,
            contours=dict(levels, coloring="fill", showlines=True),
            line=dict(width=0.5, color="rgba(0,0,0,0.25)"),
            # Slightly see-through so the dashed transfer lines stay visible on the darkest colours.
            opacity=0.8,
            colorbar=dict(title=dict(text="source loss", side="right"), len=0.8),
            showscale=legend,
            zmin=0.0,
            zmax=size * n_levels,
            hovertemplate="θ = (%{x:.2f}, %{y:.2f})<br>source loss %{z:.3f}<extra></extra>",
            showlegend=True,
        )
    )
    if show_transfer:
        z_tr = loss_grid(result.transfer_hessian, result.theta0, xs, ys)
        fig.add_trace(
            go.Contour(
                x=xs,
                y=ys,
                z=z_tr,
                name="transfer loss (unseen)",
                contours=dict(levels, coloring="none"),
                line=dict(color=_BLACK, width=1.6, dash="dash"),
                showscale=False,
                hovertemplate="transfer loss %{z:.3f}<extra></extra>",
                showlegend=True,
            )
        )

    # Pruning perturbation θ₀ → θ̃₀: a legend-able line plus an arrowhead annotation on top.
    fig.add_trace(
        go.Scatter(
            x=[result.theta0[0], result.pruned[0]],
            y=[result.theta0[1], result.pruned[1]],
            mode="lines",
            line=dict(color=_VERMILLION, width=3),
            name=f"pruning θ[{result.pruned_index + 1}] → 0",
            hoverinfo="skip",
        )
    )
    fig.add_annotation(
        x=result.pruned[0],
        y=result.pruned[1],
        ax=result.theta0[0],
        ay=result.theta0[1],
        xref="x",
        yref="y",
        axref="x",
        ayref="y",
        showarrow=True,
        arrowhead=3,
        arrowsize=1.3,
        arrowwidth=3,
        arrowcolor=_VERMILLION,
        standoff=7,  # stop short of the θ̃₀ marker so the head stays visible
        text="",
    )

    path = result.retrain_path
    fig.add_trace(
        go.Scatter(
            x=path[:, 0],
            y=path[:, 1],
            mode="lines",
            line=dict(color=_VERMILLION, width=3, dash="dash"),
            name="retraining on source (GD)",
            hovertemplate="GD iterate<br>θ = (%{x:.3f}, %{y:.3f})<extra></extra>",
        )
    )
    if np.linalg.norm(path[-1] - path[0]) > 1e-9:
        # Arrowhead at the end of the path, from the last iterate that is visibly apart from it,
        # so the direction of retraining reads without hovering.
        gaps = np.linalg.norm(path - path[-1], axis=1)
        k = int(np.flatnonzero(gaps > 0.15 * gaps[0])[-1])
        fig.add_annotation(
            x=path[-1][0],
            y=path[-1][1],
            ax=path[k][0],
            ay=path[k][1],
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            showarrow=True,
            arrowhead=2,
            arrowwidth=2,
            arrowcolor=_VERMILLION,
            standoff=9,
            text="",
        )

    rows = {r.name: r for r in result.losses}
    markers = [
        ("theta0", "θ₀ (pre-trained)", result.theta0, "circle", 13, _WHITE),
        # OBS and retraining end coincide in a quadratic: a large open diamond around a small star
        # keeps both visible.
        ("obs", "θ₀ + δ (OBS, Eq. 3)", result.obs, "diamond-open", 24, _SKY),
        ("retrained", "θ̃ₛ* (retrained)", result.retrained, "star", 12, _WHITE),
        # Last, so it stays on top where retraining does not move (no cross-terms: θ̃ₛ* = θ̃₀).
        ("pruned", "θ̃₀ (pruned)", result.pruned, "x", 12, _VERMILLION),
    ]
    for key, label, theta, symbol, size_px, colour in markers:
        row = rows[key]
        fig.add_trace(
            go.Scatter(
                x=[theta[0]],
                y=[theta[1]],
                mode="markers",
                name=label,
                marker=dict(
                    symbol=symbol,
                    size=size_px,
                    color=colour,
                    line=dict(color=colour if symbol.endswith("open") else _BLACK, width=2.5),
                ),
                hovertemplate=_hover(label, theta, row.source, row.transfer),
            )
        )

    if title is None:
        title = f"{result.score} score removes θ[{result.pruned_index + 1}]"
    fig.update_layout(
        title=dict(text=title),
        xaxis=dict(title=dict(text="θ[1]"), range=[x0, x1], constrain="domain", zeroline=False),
        # scaleanchor fixes one θ unit to the same length on both axes (equal aspect ratio).
        yaxis=dict(
            title=dict(text="θ[2]"),
            range=[y0, y1],
            scaleanchor="x",
            scaleratio=1,
            constrain="domain",
            zeroline=False,
        ),
        legend=dict(orientation="h", yanchor="top", y=-0.14, xanchor="left", x=0.0),
        showlegend=legend,
        margin=dict(l=60, r=20, t=50, b=40),
        height=height,
        template="plotly_white",
    )
    return fig
