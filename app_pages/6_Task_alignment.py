"""Task alignment (beyond the paper): does the alignment of two tasks at θ₀ predict how well pruning transfers?

Thin page: widgets build an :class:`ExperimentSpec`, :func:`pai_core.task_pairs.alignment_table`
measures every source → transfer pair (every stage cached), :mod:`pai_core.transfer_figures`
draws retention against alignment and the price of not seeing the transfer task.
"""

from __future__ import annotations

import streamlit as st

from dashboard import common
from pai_core import alignment, figures, models, scores, task_pairs, transfer_figures
from pai_core.results import ExperimentSpec

common.page_defaults(
    {
        "align_w_model": models.DEFAULT_MODEL,
        "align_w_checkpoint": "",
        "align_w_suite": common.default_suite(),
        "align_w_root": "",
        "align_w_source": 0,
        "align_w_all_sources": False,
        "align_w_score": "diag",
        "align_w_sparsity": 30.0,
        "align_w_ipc": common.default_images_per_class(),
        "align_w_k": alignment.DEFAULT_K,
        "align_w_device": "auto",
        "align_w_measure": "a_overlap",
    }
)
ss = st.session_state

st.title("Task alignment (P1's assumption, measured)")
st.markdown(
    "**P1** rests on the source's and the transfer task's loss landscapes being *aligned* around the pre-trained "
    "weights θ₀. This page measures that directly for every source → transfer pair — the correlation of the two "
    "tasks' diagonal Fisher, the overlap of the top eigenvectors of their K-FAC factors, the overlap of the masks "
    "each task gives on its own data — and sets it against what transfers: the transfer task's accuracy kept "
    "after pruning on the source (retention), and its accuracy pruned on **its own** data (the oracle mask of "
    "Eq. (1)): the price of not seeing it. If alignment predicts transfer, the points rise to the right. "
    "Beyond the paper; see `docs/REPAIR_ALIGNMENT.md`."
)

root, names, checkpoint, c3 = common.model_and_data_pickers("align", "Source task")
with c3:
    st.checkbox("Every task as the source (all ordered pairs)", key="align_w_all_sources")
st.selectbox(
    "Pruning score (defines the masks)",
    scores.available(),
    key="align_w_score",
    format_func=figures.score_label,
)

JOB = common.PageJob("align")


def _job() -> dict:
    """The job the button queues (the form's values are in session state when this runs)."""
    spec = ExperimentSpec(
        model=ss["align_w_model"],
        suite=ss["align_w_suite"],
        source=int(ss["align_w_source"]),
        score=ss["align_w_score"],
        score_options=common.score_options("align", ss["align_w_score"]),
        sparsity=round(float(ss["align_w_sparsity"]) / 100.0, 6),
        images_per_class=int(ss["align_w_ipc"]),
        data_root=root,
        checkpoint=checkpoint,
        device=ss["align_w_device"],
        **{k: v for k, v in common.beyond_options("align").items() if k.startswith("transfer")},
    )
    sources = list(range(len(names or []))) if ss["align_w_all_sources"] else [spec.source]
    return {"spec": spec, "sources": sources, "k": int(ss["align_w_k"])}


def _work(job: dict, panel: common.ProgressPanel):
    rows = []
    for i, source in enumerate(job["sources"]):
        panel.start_run(i, f"pairs with source task {names[source] if names else source}")
        rows += task_pairs.alignment_table(job["spec"], sources=[source], k=job["k"], progress=panel)
        yield {"rows": list(rows), "spec": job["spec"]}
    panel.finish(f"{len(rows)} pair(s) measured")


running = JOB.running
with st.form("align_form"):
    f1, f2, f3 = st.columns(3)
    f1.slider("Sparsity (% of weights removed)", 1.0, 95.0, step=0.5, key="align_w_sparsity")
    f2.number_input(
        "Images per class",
        min_value=2,
        max_value=1000,
        step=5,
        key="align_w_ipc",
        help="Every task needs its diagonal Fisher, K-FAC factors, scores and a zero-shot run: fewer is faster.",
    )
    f3.number_input(
        "Eigenvectors compared per K-FAC factor (k)",
        min_value=1,
        max_value=100,
        key="align_w_k",
        help="The overlap of two random k-dimensional subspaces is k/d; the figure marks it.",
    )
    common.beyond_inputs("align", repair=False)
    st.selectbox(
        "Device", ["auto", "cpu", "cuda"], key="align_w_device", help=f"auto uses: {common.device_text()}"
    )
    with st.expander("What the chosen score computes, and its options"):
        common.score_option_inputs("align", [ss["align_w_score"]])
    st.form_submit_button(
        "Measure alignment",
        type="primary",
        on_click=JOB.submit,
        args=(_job,),
        key="btn_align_run",
        disabled=running
        or not names
        or len(names) < 2
        and ss.get("align_w_xsuite", common.OFF) == common.OFF,
        help="Measuring…" if running else None,
    )

common.show_error(JOB.error)

if JOB.running:
    JOB.run(
        _work,
        runs=len(JOB.job["sources"]),
        caption="Each task's Fisher, factors, masks and zero-shot run are computed once and cached; every pair "
        "row too. Leaving this page pauses the job.",
    )

out = JOB.output
if out is None:
    st.info(
        "Choose settings and press **Measure alignment**. With the defaults (one source, digits) it takes a few "
        "minutes on a CPU the first time; repeating it, or another sparsity of the same score, is much quicker."
    )
    st.stop()

rows, spec = out["rows"], out["spec"]
frame = task_pairs.alignment_frame(rows)
st.subheader(
    f"{len(frame)} pair(s): {figures.score_label(spec.score)} at {figures.sparsity_label(spec.sparsity)}"
)
st.caption(
    f"{spec.model} on {spec.suite}"
    + (f" with cross-domain tasks of {spec.transfer_suite}" if spec.transfer_suite else "")
    + f"; {spec.images_per_class} images per class. ● in-domain pairs, ✕ cross-domain pairs (images from "
    "another data set)."
)
measures = list(transfer_figures.MEASURES)
if ss["align_w_measure"] not in measures:
    ss["align_w_measure"] = measures[0]
st.selectbox(
    "Alignment measure (x axis)", measures, key="align_w_measure", format_func=transfer_figures.MEASURES.get
)


@st.cache_data(show_spinner=False, max_entries=16)
def _figures(key: str, measure: str, _frame):
    return transfer_figures.alignment_figure(_frame, measure), transfer_figures.price_figure(_frame)


key = f"{spec.key()}|{len(frame)}|{','.join(map(str, frame['source'].unique()))}"
fig, price = _figures(key, ss["align_w_measure"], frame)
left, right = st.columns(2)
with left:
    st.plotly_chart(fig, key="align_fig")
    st.caption(
        "One point per ordered pair; the title gives Spearman's ρ across pairs (n small: read it as a hint). "
        "Dotted: the overlap two random subspaces would have."
    )
with right:
    st.plotly_chart(price, key="align_price")
    st.caption(
        "Above the diagonal: the transfer task would have kept more accuracy pruned on its own data. Below: it "
        "fares better pruned on another task's data — then the score, not the missing data, limits transfer."
    )
common.figure_downloads(fig, "alignment", key="btn_align_fig")

corr = task_pairs.alignment_correlations(frame)
by_domain = frame.groupby("domain")[
    ["retention", "price", "a_overlap", "fisher_spearman", "mask_jaccard"]
].mean()
with st.expander("Does alignment predict transfer? Rank correlations and means by domain", expanded=True):
    st.dataframe(
        corr.assign(measure=corr["measure"].map(transfer_figures.MEASURES)),
        hide_index=True,
        column_config={"rho": st.column_config.NumberColumn("Spearman ρ with retention", format="%+.2f")},
    )
    st.dataframe(
        by_domain, column_config={c: st.column_config.NumberColumn(format="%.3f") for c in by_domain}
    )

st.subheader("Every pair")
pct = ["dense", "zero_shot", "with_own", "retention", "price"]
st.dataframe(
    frame.drop(columns=["model", "suite", "source", "transfer"]),
    hide_index=True,
    column_config={
        **{c: st.column_config.NumberColumn(c.replace("_", " "), format="%.3f") for c in frame.columns},
        **{c: st.column_config.NumberColumn(c.replace("_", " ") + " (fraction)", format="%.3f") for c in pct},
    },
)
st.download_button(
    "Download pairs (CSV)",
    data=frame.to_csv(index=False).encode(),
    file_name="task_alignment.csv",
    mime="text/csv",
    on_click="ignore",
    key="btn_align_csv",
)
st.subheader("Per layer, for one pair")
pair_labels = {i: f"{r.source_task} → {r.transfer_task} ({r.domain})" for i, r in enumerate(rows)}
if ss.get("align_w_pair") not in pair_labels:
    ss["align_w_pair"] = 0
st.selectbox("Pair", list(pair_labels), key="align_w_pair", format_func=pair_labels.get)
if st.button("Show per-layer alignment", key="btn_align_layers"):
    row = rows[ss["align_w_pair"]]
    try:
        with st.spinner("Reading the two tasks' cached Fisher, factors and masks…"):
            ss["align_layers"] = task_pairs.alignment_run(
                spec.replace(source=row.source), row.transfer, k=int(ss["align_w_k"])
            )
    except Exception as exc:
        common.show_error(exc)
if ss.get("align_layers") is not None:
    layer_fig = transfer_figures.layer_alignment_figure(ss["align_layers"])
    st.plotly_chart(layer_fig, key="align_layers_fig")
    st.caption("Depthwise convolutions have 1-dimensional B blocks: their B overlap is undefined (gaps).")

notes = sorted({n for r in rows for n in r.notes})
for note in notes:
    st.caption(f"Note: {note}")
