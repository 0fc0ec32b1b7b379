"""Toy landscapes: prune one of two weights and watch the source and transfer losses (Fig. 1 and 2).

Thin page: widgets in, `pai_core.toy.scenario_from_spec` and `pai_core.toy_figures.toy_figure` out.
Everything is a 2x2 closed form, so it reruns on every slider move with no button.
"""

from __future__ import annotations

import streamlit as st

from dashboard import common
from pai_core.toy import (
    ToySpec,
    available_presets,
    available_scores,
    explain,
    preset,
    scenario_from_spec,
)
from pai_core.toy_figures import toy_figure

common.init_state()  # the shared session state, also when the page runs on its own (tests)

CUSTOM = "custom"
PRESET_LABELS = {
    CUSTOM: "custom (my slider settings)",
    "aligned": "aligned tasks (Fig. 1, left)",
    "misaligned": "misaligned tasks (Fig. 1, right)",
    "isotropic": "isotropic Hessian (Fig. 2, left)",
    "diagonal": "diagonal Hessian (Fig. 2, centre)",
    "tilted": "tilted Hessian, cross-terms (Fig. 2, right)",
}
SCORE_LABELS = {
    "magnitude": "magnitude: θⱼ²",
    "diagonal": "diagonal: θⱼ²·Hⱼⱼ",
    "block": "block / OBS: θⱼ² / [H⁻¹]ⱼⱼ",
}
DEFAULT_PRESET = "aligned"

# Widget keys, namespaced so they cannot collide with other pages' state.
K_PRESET, K_SCORE, K_ROT, K_L1, K_L2, K_TILT, K_T1, K_T2, K_SHOW = (
    "toy_preset",
    "toy_score",
    "toy_rotation_deg",
    "toy_lambda1",
    "toy_lambda2",
    "toy_tilt_deg",
    "toy_theta0_1",
    "toy_theta0_2",
    "toy_show_transfer",
)


def _write_spec(spec: ToySpec) -> None:
    """Put a spec's values into the widgets' session state (floats: sliders keep their type)."""
    st.session_state[K_SCORE] = spec.score
    st.session_state[K_ROT] = float(spec.rotation_deg)
    st.session_state[K_L1] = float(spec.eigvals[0])
    st.session_state[K_L2] = float(spec.eigvals[1])
    st.session_state[K_TILT] = float(spec.tilt_deg)
    st.session_state[K_T1] = float(spec.theta0[0])
    st.session_state[K_T2] = float(spec.theta0[1])


def _on_preset() -> None:
    name = st.session_state[K_PRESET]
    if name != CUSTOM:
        _write_spec(preset(name))


def _on_edit() -> None:
    # Once a slider moves, the settings no longer are the preset's: say so in the selector.
    st.session_state[K_PRESET] = CUSTOM


# Initialise once per session (and again if streamlit dropped the keys while another page ran);
# widgets then take their values from session state only, never from a `value=` argument.
if K_ROT not in st.session_state or K_PRESET not in st.session_state:
    st.session_state[K_PRESET] = DEFAULT_PRESET
    _write_spec(preset(DEFAULT_PRESET))
    st.session_state[K_SHOW] = True

st.title("Toy landscapes: pruning one of two weights")
st.markdown(
    "Two tasks share the pre-trained minimum θ₀. A score computed on the **source** task picks one "
    "weight to remove; the model is then retrained on the source with that weight held at zero. "
    "The **transfer** task (dashed contours) is never seen, only measured."
)

# Controls live in the sidebar so the figure gets the page's full width.
with st.sidebar:
    st.header("Toy landscape")
    st.selectbox(
        "Preset",
        [CUSTOM, *available_presets()],
        format_func=PRESET_LABELS.get,
        key=K_PRESET,
        on_change=_on_preset,
    )
    st.selectbox(
        "Pruning score (computed on the source task)",
        available_scores(),
        format_func=SCORE_LABELS.get,
        key=K_SCORE,
        on_change=_on_edit,
    )
    st.slider(
        "Rotation between tasks",
        0.0,
        90.0,
        step=5.0,
        format="%d°",
        key=K_ROT,
        on_change=_on_edit,
        help="0 = aligned tasks, 90 = orthogonal: the transfer task's steep axis is the source's flat one.",
    )
    st.slider("Eigenvalue λ1", 0.1, 5.0, step=0.1, key=K_L1, on_change=_on_edit)
    st.slider("Eigenvalue λ2", 0.1, 5.0, step=0.1, key=K_L2, on_change=_on_edit)
    st.slider(
        "Hessian tilt",
        -90.0,
        90.0,
        step=5.0,
        format="%d°",
        key=K_TILT,
        on_change=_on_edit,
        help="Angle of λ1's axis from θ[1]. 0 = axis-aligned (diagonal H); otherwise H has cross-terms.",
    )
    st.slider("θ₀[1]", -2.0, 2.0, step=0.1, key=K_T1, on_change=_on_edit)
    st.slider("θ₀[2]", -2.0, 2.0, step=0.1, key=K_T2, on_change=_on_edit)
    st.checkbox("Show transfer loss (dashed)", key=K_SHOW)

spec = ToySpec(
    eigvals=(st.session_state[K_L1], st.session_state[K_L2]),
    tilt_deg=st.session_state[K_TILT],
    rotation_deg=st.session_state[K_ROT],
    theta0=(st.session_state[K_T1], st.session_state[K_T2]),
    score=st.session_state[K_SCORE],
)
result = scenario_from_spec(spec)
fig = toy_figure(result, show_transfer=st.session_state[K_SHOW])

st.plotly_chart(fig, key="toy_figure")
st.caption(
    "Lighter = lower source loss; dashed: the transfer loss at the same levels. The buttons below save the "
    "figure: HTML (interactive; the camera icon in its toolbar gives a PNG too), PNG or SVG."
)
common.figure_downloads(fig, f"toy_landscape_{result.score}", key="btn_toy_fig")

# What this scenario shows, sentence by sentence, each computed from its numbers (pai_core.toy.explain).
st.markdown("**Here:** " + " ".join(explain(result)))

st.subheader("Losses at each point")
st.dataframe(
    result.table_rows(),
    hide_index=True,
    column_config={
        name: st.column_config.NumberColumn(format="%.3f")
        for name in ("θ[1]", "θ[2]", "source loss", "transfer loss")
    },
)

st.subheader("The three scores side by side (Fig. 2)")
st.caption(
    "The same landscape and θ₀ under each score: magnitude (H ≈ I), diagonal (θⱼ²·Hⱼⱼ) and block / OBS "
    "(θⱼ² / [H⁻¹]ⱼⱼ with the correction δ). Where they remove different weights, curvature matters; where "
    "the ✕ and the ★ differ, retraining (and OBS) moves the weight that is left."
)
cols = st.columns(3)
for col, score in zip(cols, available_scores(), strict=True):
    side = scenario_from_spec(ToySpec(**{**spec.__dict__, "score": score}))
    with col:
        st.plotly_chart(
            toy_figure(side, show_transfer=st.session_state[K_SHOW], height=400, legend=False),
            key=f"toy_side_{score}",
        )
        st.caption(SCORE_LABELS[score] + f" — removes θ[{side.pruned_index + 1}]")

with st.expander("Guided tour: what to try and what to look for", expanded=False):
    st.markdown(
        r"""
**The model.** Both losses are quadratics around the shared minimum θ₀, as in the paper's Eq. (2)
(written without a ½): $L(\theta) = (\theta-\theta_0)^\top H\,(\theta-\theta_0)$. The source Hessian has
eigenvalues λ1, λ2 and its λ1-axis tilted by the *Hessian tilt*; the transfer Hessian has the same
eigenvalues, rotated by a further *rotation between tasks*. Pruning weight *j* sets θⱼ = 0.

**1. Aligned vs misaligned tasks (Fig. 1).**
Pick *aligned tasks*. The dashed transfer contours lie on top of the source's: whatever is cheap to remove
for the source is cheap for the transfer task (the paper's P1), and retraining on the source (dashed red
line) lowers the transfer loss too (P2). Now drag *rotation between tasks* towards 90°, or pick
*misaligned tasks*. The transfer task's steep direction is now the source's flat one. Retraining still
slides along θⱼ = 0 to the source's valley floor, but that path climbs the transfer contours: the table
shows the transfer loss *rising* after retraining. Retraining on one task only transfers when the
landscapes are aligned.

**2. Isotropic vs diagonal vs tilted Hessians (Fig. 2).**
- *Isotropic* (λ1 = λ2): every score is proportional to θⱼ², so all three remove the same weight, and
  retraining does nothing: with no cross-terms the best value of the other weight does not depend on the
  removed one.
- *Diagonal* (λ1 ≠ λ2, tilt 0): magnitude and curvature now disagree. Magnitude removes the smaller
  weight even if it sits on the steep axis; the diagonal score θⱼ²·Hⱼⱼ weighs it by the curvature and
  removes the cheaper one. Retraining still does nothing (still no cross-terms).
- *Tilted* (tilt ≠ 0, 90): H has cross-terms. After removing θⱼ the other weight can partly make up
  for it, so retraining (and the OBS correction) moves, and the loss drops well below the plain-removal
  loss. Here retraining is essential.

**3. What the OBS correction buys over plain removal.**
Plain removal costs $\varepsilon^{diag}_j = \theta_j^2 H_{jj}$. Optimal Brain Surgeon (Eq. 3) also moves the
other weight by $\delta = -\frac{\theta_j}{[H^{-1}]_{jj}} H^{-1}_{[:,j]}$, which costs only
$\varepsilon^{block}_j = \theta_j^2 / [H^{-1}]_{jj} \le \varepsilon^{diag}_j$, with equality exactly when H
has no cross-terms. In a quadratic, δ is the one-shot version of retraining: the OBS point (open diamond)
and the end of the retraining path (star) coincide. With only two weights the diagonal and block scores
are proportional, so they always remove the same weight; the gain from the full Hessian is the
correction, not the choice. And δ is computed on the *source*: on a misaligned transfer task it can hurt.
"""
    )
