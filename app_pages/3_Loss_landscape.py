"""Loss landscape (the paper's Fig. 4): source and transfer loss over the plane of θ₀, θ̃₀ and θ̃ₛ*.

Thin page: widgets build one :class:`ExperimentSpec` per score, :func:`pai_core.landscape.compute`
does the work (cached on disk), :func:`pai_core.figures.landscape_figure` draws the scores side by
side as the paper does, and :func:`pai_core.verdicts.landscape_verdict` says what each shows.
"""

from __future__ import annotations

import streamlit as st

from dashboard import common
from pai_core import defaults, figures, landscape, models, scores, verdicts
from pai_core.results import ExperimentSpec

GRIDS = [5, 7, 9, 11, 15, 21]

common.page_defaults(
    {
        "land_w_model": models.DEFAULT_MODEL,
        "land_w_checkpoint": "",
        "land_w_suite": common.default_suite(),
        "land_w_root": "",
        "land_w_source": 0,
        "land_w_transfer": -1,  # set below to the last task, as the paper pairs task 1 with task 10
        "land_w_scores": [s for s in defaults.scores() if s in scores.available()],
        "land_w_finetune": common.default_schedule(allow_off=False),
        "land_w_grid": defaults.landscape_grid(common.gpu_available()),
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
    "fine-tuned on the source **θ̃ₛ*** — span a plane. On a grid over that plane we load the weights and measure "
    "the loss of the **source** task and of one **transfer** task, each through its own frozen head. If the step "
    "θ̃₀ → θ̃ₛ* goes downhill in *both* panels, the landscapes are aligned (**P2**)."
)
progress_slot = st.container()

root, names, checkpoint, c3 = common.model_and_data_pickers("land", "Source task")
if ss.get("land_w_sparsity_model") != ss["land_w_model"]:  # a new model: its own default level
    ss["land_w_sparsity_model"] = ss["land_w_model"]
    ss["land_w_sparsity"] = defaults.for_model(ss["land_w_model"]).landscape_sparsity
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
# Outside the form too: the options drawn below depend on the chosen scores.
st.multiselect(
    "Pruning scores (one row of panels each; the paper shows magnitude and the diagonal Hessian)",
    scores.available(),
    key="land_w_scores",
    format_func=figures.score_label,
)


JOB = common.PageJob("land")


def _job() -> dict:
    """The job the button queues (the form's values are in session state when this runs)."""
    if ss["land_w_transfer"] == ss["land_w_source"]:
        raise ValueError("the transfer task must differ from the source task")
    if not ss["land_w_scores"]:
        raise ValueError("choose at least one pruning score")
    specs = [
        ExperimentSpec(
            model=ss["land_w_model"],
            suite=ss["land_w_suite"],
            source=int(ss["land_w_source"]),
            score=score,
            score_options=common.score_options("land", score),
            sparsity=float(ss["land_w_sparsity"]),
            images_per_class=int(ss["land_w_ipc"]),
            finetune=ss["land_w_finetune"],
            repair="a" if ss["land_w_repair"] else None,
            data_root=root,
            device=ss["land_w_device"],
            checkpoint=checkpoint,
        )
        for score in ss["land_w_scores"]
    ]
    return {
        "specs": specs,
        "task_names": names,
        "transfer": int(ss["land_w_transfer"]),
        "grid": int(ss["land_w_grid"]),
        "extent": float(ss["land_w_extent"]),
        "images": int(ss["land_w_images"]),
    }


def _work(job: dict, panel: common.ProgressPanel):
    lands = []
    for i, spec in enumerate(job["specs"]):
        panel.start_run(i, f"landscape of {figures.score_label(spec.score)}")
        lands.append(
            landscape.compute(
                spec,
                job["transfer"],
                grid=job["grid"],
                extent=job["extent"],
                images_per_task=job["images"],
                progress=panel,
            )
        )
        yield {"landscapes": list(lands), "job": job}
    panel.finish(f"{len(lands)} landscape(s) computed")


running = JOB.running
with st.form("land_form"):
    f1, f2, f3 = st.columns(3)
    with f1:
        st.selectbox(
            "Sparsity (% of weights removed)",
            common.level_choices(ss["land_w_model"]),
            key="land_w_sparsity",
            format_func=figures.sparsity_label,
            help="The paper: 66.42 % for ResNets, 47.52 % for ViTs. The default for each offline model is where "
            f"its accuracy is falling ({defaults.for_model(ss['land_w_model']).why}).",
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
            help="Cost grows with its square: every point is a forward pass over both tasks. The three points' "
            "own coordinates are added to the grid, so each is evaluated exactly.",
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
        st.selectbox(
            "Device", ["auto", "cpu", "cuda"], key="land_w_device", help=f"auto uses: {common.device_text()}"
        )
    with st.expander("Advanced options: score options"):
        if ss["land_w_scores"]:
            common.score_option_inputs("land", ss["land_w_scores"])
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
        runs=len(job["specs"]),
        caption=f"{len(job['specs'])} landscape(s), {job['grid']}×{job['grid']} grid (plus the points' own "
        f"coordinates), {job['images']} images per task per point; "
        + common.describe_specs(job["specs"], job["task_names"])
        + ". Leaving this page pauses the computation; finished stages stay cached.",
        parent=progress_slot,
    )

out = JOB.output
if out is None:
    st.info(
        "Choose settings and press **Compute landscape**. On a 2-core CPU the defaults take several minutes "
        "(per score: fine-tuning, then one forward pass of both tasks per grid point); a finer grid costs its "
        "square. Results are cached."
    )
    st.stop()

lands, job = out["landscapes"], out["job"]
spec = job["specs"][0]


@st.cache_data(show_spinner=False, max_entries=8)
def _figure(key: str, log_scale: bool, _lands):
    return figures.landscape_figure(_lands, log_scale=log_scale)


# Outside the form: toggling redraws the stored landscapes, it never recomputes them.
st.toggle(
    "Colour by log₁₀ of the loss",
    key="land_w_log",
    help="Losses of pruned weights span decades; a log scale keeps the valley visible. Redraws only.",
)
key = (
    "|".join(s.to_json() for s in job["specs"][: len(lands)])
    + f"|{job['transfer']}|{job['grid']}|{job['extent']}"
)
fig = _figure(key + f"|{job['images']}", bool(ss["land_w_log"]), lands)
st.caption(
    f"{spec.model} at {figures.sparsity_label(spec.sparsity)}, fine-tuned with "
    f"**{common.schedule_caption(spec.finetune, long=True)}**; {spec.images_per_class} images per class."
)
st.plotly_chart(fig, key="land_fig")
with st.container(border=True):
    st.markdown("**What the planes show**")
    for land in lands:
        st.markdown(
            f"**{figures.score_label(land.spec.score)}**: " + verdicts.landscape_verdict(land.point_losses)
        )
st.caption(
    "Lighter = lower loss. ○ θ₀ (pre-trained), ✕ θ̃₀ (pruned), ★ θ̃ₛ* (pruned and fine-tuned on the source)"
    + ("; ◆ θ̃₀+δ (OBS-corrected on the source, green arrow)" if spec.repair else "")
    + "; each filled with the colour of its own exactly evaluated loss; red arrow: pruning, blue arrow: "
    "fine-tuning. " + " ".join(figures.landscape_note(land) for land in lands[:1])
)
common.figure_downloads(fig, "fig4_landscape", key="btn_land_fig")
rows = [
    {
        "score": figures.score_label(land.spec.score),
        "point": k,
        "source loss": v[0],
        "transfer loss": v[1],
    }
    for land in lands
    for k, v in (getattr(land, "point_losses", None) or {}).items()
]
if rows:
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.4g") for c in ("source loss", "transfer loss")
        },
    )
