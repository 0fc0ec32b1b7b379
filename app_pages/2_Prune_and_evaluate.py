"""Prune & evaluate (the paper's Fig. 3): prune on a source task, measure source and transfer accuracy.

Thin page: widgets build :class:`ExperimentSpec` objects, :func:`pai_core.experiment.run` does the
work (every stage cached, one file lock per spec), :mod:`pai_core.figures` draws the result.
"""

from __future__ import annotations

import time

import streamlit as st

from dashboard import common
from pai_core import experiment, figures, masks, models, scores, store
from pai_core.results import ExperimentSpec

PAPER_LEVELS = [float(q) for q in masks.PAPER_SPARSITIES]

common.page_defaults(
    {
        "prune_w_model": models.DEFAULT_MODEL,
        "prune_w_checkpoint": "",
        "prune_w_suite": "digits",
        "prune_w_root": "",
        "prune_w_source": 0,
        "prune_w_scores": [s for s in ("magnitude", "diag") if s in scores.available()],
        "prune_w_sparsity_mode": "paper",
        "prune_w_levels": [PAPER_LEVELS[len(PAPER_LEVELS) // 2], PAPER_LEVELS[-1]],
        "prune_w_custom": 50.0,
        "prune_w_finetune": common.default_schedule(),
        "prune_w_ipc": common.default_images_per_class(),
        "prune_w_holdout": False,
        "prune_w_device": "auto",
    }
)
ss = st.session_state

st.title("Prune & evaluate (Fig. 3)")
st.markdown(
    "Prune a pre-trained encoder with scores computed on the **source** task only, then measure accuracy "
    "on the source and on the **transfer** tasks it never saw (frozen ridge heads fitted on the dense "
    "encoder). Parallel solid bars in the two rows support **P1**; hatched bars (after fine-tuning on the "
    "source) above the solid ones in the *transfer* row support **P2**."
)

# -- model and data: outside the form, because the source-task list depends on the suite ---------
root, names, checkpoint, c3 = common.model_and_data_pickers(
    "prune", "Source task (pruning and fine-tuning see only this one)"
)
if names:
    with c3:
        st.caption(
            "Transfer tasks: " + ", ".join(n for k, n in enumerate(names) if k != ss["prune_w_source"])
        )
# Outside the form too: the options drawn below depend on the chosen scores.
st.multiselect(
    "Pruning scores (computed on the source task)",
    scores.available(),
    key="prune_w_scores",
    format_func=figures.score_label,
)


def _levels() -> list[float]:
    if ss["prune_w_sparsity_mode"] == "custom":
        return [round(ss["prune_w_custom"] / 100.0, 6)]
    return sorted(ss["prune_w_levels"])


JOB = common.PageJob("prune")


def _job() -> dict:
    """The job the Run button queues (the form's values are in session state when this runs)."""
    if not ss["prune_w_scores"]:
        raise ValueError("choose at least one pruning score")
    if not _levels():
        raise ValueError("choose at least one sparsity level")
    ft = ss["prune_w_finetune"]
    specs = [
        ExperimentSpec(
            model=ss["prune_w_model"],
            suite=ss["prune_w_suite"],
            source=int(ss["prune_w_source"]),
            score=score,
            score_options=common.score_options("prune", score),
            sparsity=q,
            images_per_class=int(ss["prune_w_ipc"]),
            finetune=None if ft == common.OFF else ft,
            holdout=bool(ss["prune_w_holdout"]),
            data_root=root,
            checkpoint=checkpoint,
            device=ss["prune_w_device"],
            **common.spec_option_values("prune"),
        )
        for q in _levels()
        for score in ss["prune_w_scores"]
    ]
    return {"specs": specs, "task_names": names, "started": time.time()}


def _work(job: dict, panel: common.ProgressPanel):
    """Run the specs one after another, recording each; yield the page's output after each."""
    results = []
    for i, spec in enumerate(job["specs"]):
        panel.start_run(i, figures.run_label(spec, job["task_names"]))
        results.append(experiment.run(spec, panel))
        store.record_run(results[-1])  # the Results page reads the store
        ss["overlap_output"] = ss["overlap_error"] = None  # the overlap view follows the new runs
        yield {"results": list(results), "task_names": job["task_names"]}
    panel.finish(f"{len(results)} run(s) finished")


running = JOB.running
with st.form("prune_form"):
    f1, f2, f3 = st.columns(3)
    with f1:
        st.selectbox(
            "Fine-tuning on the source task",
            common.schedule_choices(),
            key="prune_w_finetune",
            format_func=common.schedule_caption,
            help="The paper fine-tunes for 90 epochs (a GPU job). 'short' and 'smoke' keep its optimiser "
            "with fewer epochs and a larger step, for CPUs; every result records its schedule.",
        )
    with f2:
        st.radio(
            "Sparsity levels",
            ["paper", "custom"],
            key="prune_w_sparsity_mode",
            horizontal=True,
            format_func={"paper": "the paper's levels", "custom": "one custom level"}.get,
        )
        st.multiselect(
            "The paper's levels (% of weights removed)",
            PAPER_LEVELS,
            key="prune_w_levels",
            format_func=figures.sparsity_label,
        )
        st.slider(
            "Custom level (% of weights removed; used with 'one custom level')",
            1.0,
            99.0,
            step=0.5,
            key="prune_w_custom",
        )
    with f3:
        st.number_input(
            "Images per class",
            min_value=2,
            max_value=1000,
            step=5,
            key="prune_w_ipc",
            help="The paper uses 50 per class. Fewer is faster: features, scores and evaluation all "
            "scale with it.",
        )
        st.selectbox(
            "Device", ["auto", "cpu", "cuda"], key="prune_w_device", help=f"auto uses: {common.device_text()}"
        )
    if ss["prune_w_scores"]:
        with st.expander("What the chosen scores compute, and their options"):
            common.score_option_inputs("prune", ss["prune_w_scores"])
    with st.expander(
        "Advanced options: the authors' protocol and BatchNorm-aware masks (defaults: the paper)"
    ):
        common.spec_option_inputs("prune")
    st.checkbox(
        "Held-out evaluation — a deviation from the paper: heads fitted on one half of each task, accuracy "
        "measured on the other half",
        key="prune_w_holdout",
        help="The paper fits the heads and measures accuracy on the same images (its protocol, the default).",
    )
    # One keyed button whose `disabled` follows the job: a second click while a run is going cannot start another.
    st.form_submit_button(
        "Run",
        type="primary",
        on_click=JOB.submit,
        args=(_job,),
        disabled=running or not names,
        key="btn_prune_run",
        help="Running…" if running else None,
    )

common.show_error(JOB.error)

# The run resumes after an interruption (finished stages are cached), until it ends or is cancelled.
if JOB.running:
    JOB.run(
        _work,
        runs=len(JOB.job["specs"]),
        caption=common.describe_specs(JOB.job["specs"])
        + ". Leaving this page pauses the run; it picks up where it stopped when you come back.",
    )

out = JOB.output
if out is None:
    st.info(
        "Choose settings and press **Run**. The defaults (EfficientNet-Lite0 on digits, magnitude and "
        "diagonal-Hessian scores, two sparsities) take about a minute on a CPU; repeating a run is instant."
    )
    st.stop()

results = out["results"]
keys = tuple(r.spec.key() for r in results)
first = results[0].spec
task_names = out["task_names"] or []


@st.cache_data(show_spinner=False, max_entries=8)
def _fig3(keys: tuple[str, ...], _results):
    return figures.fig3_figure(_results)


@st.cache_data(show_spinner=False, max_entries=8)
def _tables(keys: tuple[str, ...], _results):
    return figures.tasks_frame(_results), figures.layer_sparsity_frame(_results)


st.subheader("Source and transfer accuracy")
ft_text = common.schedule_caption(first.finetune, long=True)
cached = sum(r.cached for r in results)
st.caption(
    f"{first.model} on {first.suite}; source task **{task_names[first.source] if task_names else first.source}**; "
    f"{first.images_per_class} images per class; fine-tuning: **{ft_text}**"
    + ("; **held-out evaluation (deviation from the paper)**" if first.holdout else "")
    + f"; ran on {results[0].device}; {cached} of {len(results)} run(s) from the cache."
)
fig = _fig3(keys, results)
st.plotly_chart(fig, key="prune_fig3")
st.caption(
    "Top: the source task; bottom: mean over the transfer tasks. Solid: zero-shot accuracy of the pruned "
    "encoder; "
    + ("hatched: after fine-tuning on the source; " if first.finetune else "")
    + "dashed line: the dense encoder. PNG: camera icon in the figure's toolbar."
)
common.figure_download(fig, "fig3_prune.html", key="btn_prune_fig3_html")
notes = sorted({n for r in results for n in r.notes if not n.startswith("layer collapse")})
for note in notes:
    st.caption(f"Note: {note}")

task_df, layer_df = _tables(keys, results)
with st.expander("Advanced: where the scores break down (diagnostics per run)", expanded=False):
    st.caption(
        "Exactly-zero scores cannot be ranked (ties go by magnitude); dead channels never fire on the "
        "source data, so every gradient-based score calls their weights free, yet removing a whole filter "
        "turns the channel on through its BatchNorm (try BN-aware filter removal)."
    )
    st.dataframe(figures.diagnostics_frame(results), hide_index=True)
with st.expander("Accuracy per task (%)", expanded=False):
    st.dataframe(
        task_df,
        hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.1f")
            for c in task_df.columns
            if task_df[c].dtype.kind == "f"
        },
    )

st.subheader("Per-layer sparsity of each mask")
st.caption(
    "A global threshold can empty whole layers (layer collapse): the network then computes nothing "
    "past that layer, whatever the other weights."
)
for r in results:
    if r.collapsed_layers:
        st.warning(
            f"**Layer collapse** with {figures.score_label(r.spec.score)} at "
            f"{figures.sparsity_label(r.spec.sparsity)}: {len(r.collapsed_layers)} layer(s) lost every "
            f"weight, e.g. {', '.join(r.collapsed_layers[:3])}.",
            icon=":material/warning:",
        )
if len(layer_df):
    layer_fig = figures.layer_sparsity_figure(layer_df)
    st.plotly_chart(layer_fig, key="prune_layers")
    common.figure_download(layer_fig, "layer_sparsity.html", key="btn_prune_layers_html")

st.subheader("Mask overlap: a direct look at P1")
st.markdown(
    "P1 says the weights a score removes for the source task are the ones the other tasks do not need either. "
    "A direct check the paper does not show: compute the masks on **different source tasks** and measure how much "
    "they overlap (Jaccard index of the removed weights; 1 = identical). High overlap across sources means the "
    "score picks task-independent weights. Different scores on one source show how much the criteria agree."
)
levels = sorted({r.spec.sparsity for r in results})
used_scores = list(dict.fromkeys(r.spec.score for r in results))
src_opts = list(range(len(task_names))) if task_names else [first.source]
# Defaults through session state (valid for the current results), never through `default=`.
if ss.get("prune_w_overlap_q") not in levels:
    ss["prune_w_overlap_q"] = levels[0]
ss["prune_w_overlap_scores"] = [
    s for s in ss.get("prune_w_overlap_scores", used_scores) if s in used_scores
] or used_scores
ss["prune_w_overlap_sources"] = [
    k for k in ss.get("prune_w_overlap_sources", src_opts) if k in src_opts
] or src_opts
with st.form("overlap_form"):
    o1, o2, o3 = st.columns(3)
    q = o1.selectbox("Sparsity", levels, format_func=figures.sparsity_label, key="prune_w_overlap_q")
    sel_scores = o2.multiselect(
        "Scores", used_scores, format_func=figures.score_label, key="prune_w_overlap_scores"
    )
    sel_sources = o3.multiselect(
        "Masks computed on source tasks",
        src_opts,
        format_func=lambda k: task_names[k] if task_names else str(k),
        key="prune_w_overlap_sources",
        help="Other sources need their own scores: computed once, then cached.",
    )
    go_overlap = st.form_submit_button("Compare masks")
if go_overlap:
    specs = {
        f"{figures.score_label(s)} · {task_names[k] if task_names else k}": first.replace(
            score=s, source=k, sparsity=q
        )
        for s in sel_scores
        for k in sel_sources
    }
    if len(specs) < 2:
        ss["overlap_error"] = common.error_record(ValueError("choose at least two masks to compare"))
    else:
        panel = common.ProgressPanel(st, runs=len(specs))
        try:
            sets = {}
            for i, (label, spec) in enumerate(specs.items()):
                panel.start_run(i, f"masks: {label}")
                sets[label] = common.mask_set(spec.to_json(), panel)
            ss["overlap_output"] = {
                "matrix": figures.jaccard_matrix(sets),
                "title": f"Overlap of removed weights at {figures.sparsity_label(q)}",
            }
            ss["overlap_error"] = None
        except Exception as exc:
            ss["overlap_error"] = common.error_record(exc)
        st.rerun()
if ss["overlap_output"] is None and ss["overlap_error"] is None and len(used_scores) >= 2:
    # The run's own masks are in the cache already: compare its scores on its source right away.
    try:
        sets = {
            figures.score_label(s): common.mask_set(first.replace(score=s, sparsity=levels[0]).to_json())
            for s in used_scores
        }
        ss["overlap_output"] = {
            "matrix": figures.jaccard_matrix(sets),
            "title": f"Scores compared on the source task at {figures.sparsity_label(levels[0])}",
        }
    except Exception as exc:
        ss["overlap_error"] = common.error_record(exc)
common.show_error(ss["overlap_error"])
if ss["overlap_output"] is not None:
    ov = ss["overlap_output"]
    overlap_fig = figures.jaccard_figure(ov["matrix"], title=ov["title"])
    st.plotly_chart(overlap_fig, key="prune_overlap", width="content")
    common.figure_download(overlap_fig, "mask_overlap.html", key="btn_prune_overlap_html")
