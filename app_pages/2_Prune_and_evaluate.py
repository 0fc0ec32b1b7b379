"""Prune & evaluate (the paper's Fig. 3): prune on a source task, measure source and transfer accuracy.

Thin page: widgets build :class:`ExperimentSpec` objects, :func:`pai_core.experiment.run` does the
work (every stage cached, one file lock per spec); :mod:`pai_core.figures` draws the result,
:mod:`pai_core.verdicts` says what it means for P1 and P2, :mod:`pai_core.reference` gives the
reference lines and :mod:`pai_core.imagenet_check` the real-ImageNet panel.  First values come
from :mod:`pai_core.defaults` (per model), never from this page.
"""

from __future__ import annotations

import time

import streamlit as st

from dashboard import common
from pai_core import (
    defaults,
    experiment,
    figures,
    imagenet_check,
    models,
    reference,
    scores,
    store,
    transfer_figures,
    verdicts,
)
from pai_core.results import ExperimentSpec
from pai_core.validate import parse_sparsity

common.page_defaults(
    {
        "prune_w_model": models.DEFAULT_MODEL,
        "prune_w_checkpoint": "",
        "prune_w_suite": common.default_suite(),
        "prune_w_root": "",
        "prune_w_source": 0,
        "prune_w_scores": [s for s in defaults.scores() if s in scores.available()],
        "prune_w_extra_levels": "",
        "prune_w_finetune": common.default_schedule(),
        "prune_w_ipc": common.default_images_per_class(),
        "prune_w_holdout": False,
        "prune_w_device": "auto",
    }
)
ss = st.session_state

st.title("Prune & evaluate (Fig. 3)")
st.markdown(
    "Prune a pre-trained encoder with scores computed on the **source** task only, then measure accuracy on "
    "the source and on **transfer** tasks it never saw (frozen ridge heads fitted on the dense encoder). "
    "**P1**: the transfer bars fall no further than the source bars. **P2**: the hatched bars (after "
    "fine-tuning on the source) stand above the solid ones in the *transfer* row. The verdict under the "
    "figure is computed from the numbers."
)
# The running job's progress is drawn here, at the top, where it is seen without scrolling.
progress_slot = st.container()

# -- model and data: outside the form, because the source-task list depends on the suite ---------
root, names, checkpoint, c3 = common.model_and_data_pickers(
    "prune", "Source task (pruning and fine-tuning see only this one)"
)
common.apply_model_defaults("prune", ss["prune_w_model"])
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
    """The chosen levels plus the typed ones ("12.5, 25": percentages), sorted and unique."""
    extra = [
        parse_sparsity(f"{v.strip().rstrip('%')}%")
        for v in ss["prune_w_extra_levels"].split(",")
        if v.strip()
    ]
    return sorted({round(q, 6) for q in [*ss["prune_w_levels"], *extra]})


JOB = common.PageJob("prune")


def _job() -> dict:
    """The job the Run button queues (the form's values are in session state when this runs)."""
    if not ss["prune_w_scores"]:
        raise ValueError("choose at least one pruning score")
    levels = _levels()
    if not levels:
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
            **common.beyond_options("prune"),
        )
        for q in levels
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
model_defaults = defaults.for_model(ss["prune_w_model"])
with st.form("prune_form"):
    f1, f2, f3 = st.columns([1, 1.3, 1])
    with f1:
        st.selectbox(
            "Fine-tuning on the source task",
            common.schedule_choices(),
            key="prune_w_finetune",
            format_func=common.schedule_caption,
            help="The paper fine-tunes for 90 epochs (a GPU job). On a CPU the default is 'cpu': the paper's "
            "optimiser, 5 epochs, lr 3e-4 (measured not to diverge on the offline models, where 'short' and "
            "'smoke' at lr 1e-3 can). Every result records its schedule; the loss curves are shown below.",
        )
    with f2:
        st.multiselect(
            "Sparsity levels (% of weights removed)",
            common.level_choices(ss["prune_w_model"]),
            key="prune_w_levels",
            format_func=figures.sparsity_label,
            help=f"Default for {ss['prune_w_model']}: {model_defaults.why}.",
        )
        st.text_input(
            "More levels (%, comma-separated)",
            key="prune_w_extra_levels",
            placeholder="e.g. 12.5, 25",
        )
    with f3:
        st.number_input(
            "Images per class",
            min_value=2,
            max_value=1000,
            step=5,
            key="prune_w_ipc",
            help="The paper uses 50 per class. Fewer is faster: features, scores, fine-tuning and evaluation "
            "all scale with it.",
        )
        st.selectbox(
            "Device", ["auto", "cpu", "cuda"], key="prune_w_device", help=f"auto uses: {common.device_text()}"
        )
    # One area for everything that changes the protocol itself; new spec-level options slot in here.
    with st.expander("Advanced options (defaults: the paper's protocol)"):
        st.checkbox(
            "Held-out evaluation — a deviation from the paper: heads fitted on one half of each task, accuracy "
            "measured on the other half",
            key="prune_w_holdout",
            help="The paper fits the heads and measures accuracy on the same images (its protocol, the "
            "default). The figure shows the held-out dense accuracy as a reference line either way.",
        )
        if ss["prune_w_scores"]:
            st.markdown("**Score options**")
            common.score_option_inputs("prune", ss["prune_w_scores"])
        st.markdown("**The authors' protocol and BatchNorm-aware masks**")
        common.spec_option_inputs("prune")
        st.markdown("**Beyond the paper**")
        common.beyond_inputs("prune")
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
        caption=common.describe_specs(JOB.job["specs"], JOB.job["task_names"])
        + ". Leaving this page pauses the run; it picks up where it stopped when you come back.",
        parent=progress_slot,
    )

out = JOB.output
if out is None:
    n_runs = max(len(_levels()), 1) * max(len(ss["prune_w_scores"]), 1)
    st.info(
        f"Choose settings and press **Run**. The defaults ({ss['prune_w_model']} on {ss['prune_w_suite']}, "
        f"{n_runs} runs: magnitude and diagonal-Hessian scores at {len(_levels())} sparsities chosen for this "
        "model, fine-tuned on the source) take a few minutes on a 2-core CPU; repeating a run is instant."
    )
    st.stop()

results = out["results"]
keys = tuple(r.spec.key() for r in results)
first = results[0].spec
task_names = out["task_names"] or []


@st.cache_data(show_spinner=False, max_entries=8)
def _heldout(spec_json: str) -> dict | None:
    try:
        return reference.heldout_dense_means(ExperimentSpec.from_json(spec_json))
    except ValueError:  # a class with a single image: nothing to hold out
        return None


@st.cache_data(show_spinner=False, max_entries=8)
def _fig3(keys: tuple[str, ...], heldout: dict | None, _results):
    return figures.fig3_figure(_results, heldout=heldout)


@st.cache_data(show_spinner=False, max_entries=8)
def _tables(keys: tuple[str, ...], _results):
    return figures.tasks_frame(_results), figures.layer_sparsity_frame(_results)


@st.cache_data(show_spinner="Classifying the 20 ImageNet photos…", max_entries=8)
def _imagenet(keys: tuple[str, ...], _specs):
    return imagenet_check.for_runs(_specs)


st.subheader("Source and transfer accuracy")
ft_text = common.schedule_caption(first.finetune, long=True)
cached = sum(r.cached for r in results)
src_name = task_names[first.source] if task_names else f"task {first.source}"
st.caption(
    f"{first.model} on {first.suite}; source task **{src_name}**; "
    f"{first.images_per_class} images per class; fine-tuning: **{ft_text}**"
    + ("; **held-out evaluation (deviation from the paper)**" if first.holdout else "")
    + f"; ran on {results[0].device}; {cached} of {len(results)} run(s) from the cache."
)
# The heads depend on the model, data and split only: one held-out fit serves every run shown.
heads_spec = first.replace(score="magnitude", score_options=(), sparsity=0.0, finetune=None)
held = None if first.holdout else _heldout(heads_spec.to_json())
enc = common.encoder(first.model, first.checkpoint)
if warn := reference.few_images_warning(reference.fit_images(results[0]), enc.feature_dim):
    st.warning(warn, icon=":material/info:")
fig = _fig3(keys, {first.model: held} if held else None, results)
fig_col, inet_col = st.columns([3, 1])
with fig_col:
    st.plotly_chart(fig, key="prune_fig3")
with inet_col:
    try:
        checks = _imagenet(keys, [r.spec for r in results])
    except ValueError as exc:  # an encoder without its ImageNet head
        st.caption(f"ImageNet check: {exc}.")
    else:
        st.plotly_chart(figures.imagenet_figure(checks), key="prune_imagenet")
        st.caption(
            "The same masks on the encoder's *own* ImageNet task: top-1 on the 20 real ImageNet validation "
            "photos shipped with foolbox, through its original head. 20 images: one image = 5 points."
        )
st.caption(
    "Top: the source task; bottom: mean over the transfer tasks. Solid: zero-shot accuracy of the pruned "
    "encoder; "
    + ("hatched: after fine-tuning on the source; " if first.finetune else "")
    + ("crossed: OBS-corrected on the source, no SGD; " if first.repair else "")
    + (f"third row: cross-domain tasks of {first.transfer_suite}; " if first.transfer_suite else "")
    + "dashed: the dense encoder, "
    + ("held out" if first.holdout else "heads fitted and scored on the same images as in the paper")
    + ("; dash-dotted: the dense encoder held out (fit on one half, scored on the other)" if held else "")
    + "; dotted: chance."
)
common.figure_downloads(fig, "fig3_prune", key="btn_prune_fig3")
for sentence in transfer_figures.repair_verdict(results):
    st.markdown(sentence)

# -- the verdict -------------------------------------------------------------------------------------
verdict = verdicts.fig3_verdict(results, label=figures.score_label)
with st.container(border=True):
    st.markdown("**What these runs say about the paper's predictions**")
    for line in verdict.lines:
        st.markdown(line)
    if not first.finetune:
        st.caption("No fine-tuning: P2 is not tested. Choose a fine-tuning schedule to test it.")
    for w in verdict.warnings:
        st.warning(w, icon=":material/warning:")
    if verdict.contradictions:
        st.warning(
            "**Runs that contradict the paper** (beyond the noise floor: twice the standard error of the "
            "difference for this many images):\n\n" + "\n".join(f"- {c}" for c in verdict.contradictions),
            icon=":material/report:",
        )
    elif verdict.lines:
        st.success("No run contradicts the paper beyond the noise floor.", icon=":material/check:")
notes = sorted({n for r in results for n in r.notes if not n.startswith("layer collapse")})
for note in notes:
    st.caption(f"Note: {note}")

# -- fine-tuning curves --------------------------------------------------------------------------------
tuned = [r for r in results if verdicts.finetune_losses(r.finetune_log) is not None]
if tuned:
    st.subheader("Fine-tuning on the source: loss per epoch")
    st.caption(
        "Every fine-tuned run's source loss: before fine-tuning (epoch 0), the mean of each epoch, and the "
        "final weights (open circle). A run whose final loss is above its first has failed, and its hatched "
        "bars test nothing."
    )
    ft_fig = figures.finetune_figure(tuned)
    st.plotly_chart(ft_fig, key="prune_finetune")
    common.figure_downloads(ft_fig, "finetune_loss", key="btn_prune_ft")

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
            if task_df[c].dtype.kind == "f" and c != "sparsity (%)"
        }
        | {"sparsity (%)": st.column_config.NumberColumn(format="%g")},
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
    common.figure_downloads(layer_fig, "layer_sparsity", key="btn_prune_layers")

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
    common.figure_downloads(overlap_fig, "mask_overlap", key="btn_prune_overlap")
