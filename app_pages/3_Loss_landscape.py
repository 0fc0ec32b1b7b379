"""Loss landscape (the paper's Fig. 4): source and transfer loss over the plane of θ₀, θ̃₀ and θ̃ₛ*.

Thin page: widgets build an :class:`ExperimentSpec`, :func:`pai_core.landscape.compute` does the
work (cached on disk), :func:`pai_core.figures.landscape_figure` draws it.
"""

from __future__ import annotations

import streamlit as st

from dashboard import common
from pai_core import figures, landscape, masks, models, scores
from pai_core.results import ExperimentSpec

PAPER_LEVELS = [float(q) for q in masks.PAPER_SPARSITIES]
GRIDS = [5, 7, 9, 11, 15, 21]

common.page_defaults(
    {
        "land_w_model": models.DEFAULT_MODEL,
        "land_w_checkpoint": "",
        "land_w_suite": "digits",
        "land_w_root": "",
        "land_w_source": 0,
        "land_w_transfer": -1,  # set below to the last task, as the paper pairs task 1 with task 10
        "land_w_score": "magnitude",
        # The paper: ResNets at 66.42 %, ViTs at 47.52 %; start from the level closest to the former.
        "land_w_sparsity": min(PAPER_LEVELS, key=lambda q: abs(q - 0.6642)),
        "land_w_finetune": common.default_schedule(allow_off=False),
        "land_w_grid": 9
        if common.gpu_available()
        else 5,  # every grid point is a forward pass over two tasks
        "land_w_extent": 1.5,
        "land_w_images": 50 if common.gpu_available() else 20,
        "land_w_ipc": common.default_images_per_class(),
        "land_w_log": True,
        "land_w_device": "auto",
        "land_w_repair": False,
    }
)
ss = st.session_state

st.title("Loss landscape (Fig. 4)")
st.markdown(
    "Three weight vectors of the encoder — pre-trained **θ₀**, pruned on the source **θ̃₀**, and pruned then "
    "fine-tuned on the source **θ̃ₛ*** — span a plane. On a grid over that plane (its two principal directions) "
    "we load the weights and measure the loss of the **source** task and of one **transfer** task, each through "
    "its own frozen head. If fine-tuning moves θ̃₀ downhill in *both* panels, the landscapes are aligned (**P2**)."
)

root, names, checkpoint, c3 = common.model_and_data_pickers("land", "Source task")
if names:
    with c3:
        if not 0 <= ss["land_w_transfer"] < len(names) or ss["land_w_transfer"] == ss["land_w_source"]:
            # The paper pairs task 1 with task 10: default to the last task that is not the source.
            ss["land_w_transfer"] = (
                next(k for k in reversed(range(len(names))) if k != ss["land_w_source"])
                if len(names) > 1
                else 0
            )
        st.selectbox(
            "Transfer task (never seen by pruning or fine-tuning)",
            list(range(len(names))),
            key="land_w_transfer",
            format_func=lambda k: names[k],
        )
# Outside the form too: the options drawn below depend on the chosen score.
st.selectbox("Pruning score", scores.available(), key="land_w_score", format_func=figures.score_label)


JOB = common.PageJob("land")


def _job() -> dict:
    """The job the button queues (the form's values are in session state when this runs)."""
    if ss["land_w_transfer"] == ss["land_w_source"]:
        raise ValueError("the transfer task must differ from the source task")
    spec = ExperimentSpec(
        model=ss["land_w_model"],
        suite=ss["land_w_suite"],
        source=int(ss["land_w_source"]),
        score=ss["land_w_score"],
        score_options=common.score_options("land", ss["land_w_score"]),
        sparsity=float(ss["land_w_sparsity"]),
        images_per_class=int(ss["land_w_ipc"]),
        finetune=ss["land_w_finetune"],
        repair="a" if ss["land_w_repair"] else None,
        data_root=root,
        device=ss["land_w_device"],
        checkpoint=checkpoint,
    )
    return {
        "spec": spec,
        "transfer": int(ss["land_w_transfer"]),
        "grid": int(ss["land_w_grid"]),
        "extent": float(ss["land_w_extent"]),
        "images": int(ss["land_w_images"]),
    }


def _work(job: dict, panel: common.ProgressPanel):
    land = landscape.compute(
        job["spec"],
        job["transfer"],
        grid=job["grid"],
        extent=job["extent"],
        images_per_task=job["images"],
        progress=panel,
    )
    yield {"landscape": land, "job": job}


running = JOB.running
with st.form("land_form"):
    f1, f2, f3 = st.columns(3)
    with f1:
        st.selectbox(
            "Sparsity (% of weights removed)",
            PAPER_LEVELS,
            key="land_w_sparsity",
            format_func=figures.sparsity_label,
            help="The paper: 66.42 % for ResNets, 47.52 % for ViTs.",
        )
        st.selectbox(
            "Fine-tuning on the source (gives θ̃ₛ*)",
            common.schedule_choices(allow_off=False),
            key="land_w_finetune",
            format_func=common.schedule_caption,
        )
    with f2:
        st.select_slider(
            "Grid points per axis",
            GRIDS,
            key="land_w_grid",
            help="Cost grows with its square: every point is a forward pass over both tasks.",
        )
        st.slider(
            "Extent (× the largest coordinate of the three points)", 1.1, 3.0, step=0.1, key="land_w_extent"
        )
        st.number_input(
            "Images per task for each loss value", min_value=5, max_value=500, step=5, key="land_w_images"
        )
    with f3:
        st.number_input(
            "Images per class (scores, heads, fine-tuning)",
            min_value=2,
            max_value=1000,
            step=5,
            key="land_w_ipc",
        )
        st.checkbox(
            "Add the OBS-corrected point θ̃₀+δ (beyond the paper)",
            key="land_w_repair",
            help="The pruned weights corrected by Eq. (3)'s optimal update computed on the source, no SGD. "
            "It is generally off the plane: drawn at its projection, its distance from the plane in the caption.",
        )
        st.checkbox(
            "Colour by log₁₀ of the loss",
            key="land_w_log",
            help="Losses of pruned weights span decades; a log scale keeps the valley visible.",
        )
        st.selectbox(
            "Device", ["auto", "cpu", "cuda"], key="land_w_device", help=f"auto uses: {common.device_text()}"
        )
    with st.expander("What the chosen score computes, and its options"):
        common.score_option_inputs("land", [ss["land_w_score"]])
    st.form_submit_button(
        "Compute landscape",
        type="primary",
        on_click=JOB.submit,
        args=(_job,),
        key="btn_land_run",
        disabled=running or not names or len(names) < 2,
        help="Computing…" if running else None,
    )

common.show_error(JOB.error)

if JOB.running:
    job = JOB.job
    JOB.run(
        _work,
        caption=f"{job['grid']}×{job['grid']} grid, {job['images']} images per task per point. Leaving this "
        "page pauses the computation; finished stages stay cached.",
    )

out = JOB.output
if out is None:
    st.info(
        "Choose settings and press **Compute landscape**. On a 2-core CPU the defaults take a few minutes "
        "(fine-tuning, then one forward pass of both tasks per grid point); a finer grid costs its square. "
        "Results are cached."
    )
    st.stop()

land, spec = out["landscape"], out["job"]["spec"]


@st.cache_data(show_spinner=False, max_entries=8)
def _figure(key: str, log_scale: bool, _land):
    return figures.landscape_figure(_land, log_scale=log_scale)


key = f"{spec.to_json()}|{out['job']['transfer']}|{out['job']['grid']}|{out['job']['extent']}|{out['job']['images']}"
fig = _figure(key, bool(ss["land_w_log"]), land)
st.caption(
    f"{spec.model}, {figures.score_label(spec.score)} at {figures.sparsity_label(spec.sparsity)}, "
    f"fine-tuned with **{common.schedule_caption(spec.finetune, long=True)}**; {spec.images_per_class} images "
    "per class."
)
st.plotly_chart(fig, key="land_fig")
st.caption(
    "Lighter = lower loss. ○ θ₀ (pre-trained), ✕ θ̃₀ (pruned), ★ θ̃ₛ* (pruned and fine-tuned on the source)"
    + ("; ◆ θ̃₀+δ (OBS-corrected on the source, green arrow)" if spec.repair else "")
    + "; the blue arrow is fine-tuning. "
    + figures.landscape_note(land)
    + " PNG: camera icon in the figure's toolbar."
)
common.figure_download(fig, "fig4_landscape.html", key="btn_land_html")
pl = getattr(land, "point_losses", None) or {}
if pl:
    st.dataframe(
        [{"point": k, "source loss": v[0], "transfer loss": v[1]} for k, v in pl.items()],
        hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.4f") for c in ("source loss", "transfer loss")
        },
    )
