"""From scratch: the scalable second-order paper's own protocol (prune a random init, train it).

Thin page: widgets build :class:`~pai_core.scratch_spec.ScratchSpec` s with
:func:`pai_core.scratch.plan_grid`, :func:`pai_core.scratch.run_scratch` does the work (every stage
cached), each finished run is recorded in the results store, :mod:`pai_core.scratch_figures` draws
the figures.
"""

from __future__ import annotations

import json
import time

import streamlit as st

from dashboard import common
from pai_core import datasets, errors, figures, nets, scores, scratch, store
from pai_core import scratch_figures as sf
from pai_core.scratch_spec import BN_WARMUPS, EXTREME_SPARSITIES, SCHEDULES, ScratchSpec

GPU = common.gpu_available()
LEVELS = sorted({0.5, 0.8, *EXTREME_SPARSITIES})

common.page_defaults(
    {
        "scratch_job": None,
        "scratch_output": None,
        "scratch_error": None,
        # On a CPU: the narrow VGG-11 of sweeps/scratch_cpu.yaml on a subset, the short schedule,
        # two scores at two sparsities (7 runs, a minute or two); on a GPU the paper's recipe.
        "scratch_w_model": "resnet20" if GPU else "vgg11",
        "scratch_w_width": 1.0 if GPU else 0.25,
        "scratch_w_dataset": "fashion-mnist",
        "scratch_w_root": "",
        "scratch_w_train": 0 if GPU else 2500,
        "scratch_w_test": 0 if GPU else 2000,
        "scratch_w_scores": [s for s in ("magnitude", "snip") if s in scores.available()],
        "scratch_w_levels": [0.9, 0.99],
        "scratch_w_warmups": ["off", "paper"],
        "scratch_w_seeds": 1,
        "scratch_w_dense": True,
        "scratch_w_schedule": "paper" if GPU else "cpu-short",
        "scratch_w_device": "auto",
    }
)
ss = st.session_state

st.title("From scratch: prune at initialisation, then train")
st.markdown(
    "The question of the scalable second-order PaI paper (Gollini Navarrete et al., 2025): score a **randomly "
    "initialised** network on a few labelled images (10 per class), remove a fraction of its weights **once**, "
    "train the sparse network from scratch with the mask kept, and compare final test accuracy across "
    "criteria and sparsities. At extreme sparsities (90–99.5 %) a criterion can empty whole layers "
    "(**layer collapse**), after which the network cannot learn; the paper's **BatchNorm warm-up** (one "
    "pass over the training data to set the running statistics before scoring) is meant to prevent it."
)
with st.expander("What the paper did, and what runs here (CPU deviations)", expanded=not GPU):
    st.markdown(
        """
* **The paper**: VGG-19 and ResNet-18 on CIFAR-10/100 (and Tiny-ImageNet), 160 epochs of SGD (lr 0.03,
  momentum 0.9, weight decay 5e-4, batch 512, lr ×0.2 at epochs 80 and 120) — schedule *paper* here,
  a GPU job.
* **On a CPU** (this page's defaults when no GPU is visible): a VGG-11 narrowed to a quarter
  of its channels or a ResNet-20, Fashion-MNIST (offline) at 28 px, a balanced subset of 2,500 training and
  2,000 test images, and the *cpu-short* schedule (3 epochs). These are **deviations**: every result names
  its schedule and subsets in its notes, and numbers from them are not the paper's numbers.
* CIFAR-10/100 run when you give the folder holding their official **binary** version.
* `sweeps/scratch_cpu.yaml` is the full CPU grid (183 runs); it ran in 27.5 CPU-minutes here; its measured results are in the README ("From scratch") and `docs/SCRATCH.md`. There the paper's BatchNorm warm-up *lowered* accuracy at 99–99.5 % for every data-driven criterion, contradicting the paper.
"""
    )

# -- settings ---------------------------------------------------------------------------------
c1, c2, c3 = st.columns(3)
with c1:
    st.selectbox(
        "Network (random initialisation)",
        nets.available(),
        key="scratch_w_model",
        format_func=lambda n: f"{n} (tests only)" if nets.info(n).test_only else n,
        help="ResNet-20/32/56 (CIFAR ResNets) and VGG-11/16 with BatchNorm; the test_* networks are tiny.",
    )
    st.number_input(
        "Width (channel multiplier)",
        min_value=0.05,
        max_value=4.0,
        step=0.25,
        key="scratch_w_width",
        help="0.25 narrows a VGG for CPUs (a deviation from the paper's full-width networks).",
    )
with c2:
    dataset = st.selectbox("Dataset", datasets.available(), key="scratch_w_dataset")
    info = datasets.info(dataset)
    if not info.offline:
        st.text_input("Data folder", key="scratch_w_root", help=info.needs)
    st.caption(f"Needs: {info.needs}")
with c3:
    st.number_input(
        "Training images (0 = all)",
        min_value=0,
        step=500,
        key="scratch_w_train",
        help="A balanced subset, the same images for every run (a CPU deviation; the paper trains on all).",
    )
    st.number_input("Test images (0 = all)", min_value=0, step=500, key="scratch_w_test")
st.multiselect(
    "Pruning criteria",
    scores.available(),
    key="scratch_w_scores",
    format_func=figures.score_label,
    help="random and magnitude are the data-free baselines; diag is the paper's FP (θ² · empirical Fisher), "
    "fisher_taylor its FTS, hutchinson its HP.",
)


def _levels_label(q: float) -> str:
    return f"{figures.sparsity_label(q)} (keep {figures.sparsity_label(1 - q)})"


JOB = common.PageJob("scratch")


def _job() -> dict:
    """The runs the Run button queues (the form's values are in session state when this runs)."""
    if not ss["scratch_w_scores"] and not ss["scratch_w_dense"]:
        raise ValueError("choose at least one pruning criterion (or the dense network)")
    if ss["scratch_w_scores"] and not ss["scratch_w_levels"]:
        raise ValueError("choose at least one sparsity")
    if ss["scratch_w_scores"] and not ss["scratch_w_warmups"]:
        raise ValueError("choose at least one BatchNorm warm-up mode")
    base = ScratchSpec(
        model=ss["scratch_w_model"],
        width=float(ss["scratch_w_width"]),
        dataset=ss["scratch_w_dataset"],
        data_root=(ss["scratch_w_root"] or None)
        if not datasets.info(ss["scratch_w_dataset"]).offline
        else None,
        train_size=int(ss["scratch_w_train"]) or None,
        test_size=int(ss["scratch_w_test"]) or None,
        schedule=ss["scratch_w_schedule"],
        device=ss["scratch_w_device"],
    )
    scratch.validate(base)
    specs = scratch.plan_grid(
        base,
        ss["scratch_w_scores"],
        sorted(ss["scratch_w_levels"]) if ss["scratch_w_scores"] else [],
        ss["scratch_w_warmups"] or ["off"],
        list(range(int(ss["scratch_w_seeds"]))),
        dense=bool(ss["scratch_w_dense"]),
    )
    return {"specs": specs, "started": time.time()}


with st.form("scratch_form"):
    f1, f2, f3 = st.columns(3)
    with f1:
        st.multiselect(
            "Sparsities (% of the conv weights removed)",
            LEVELS,
            key="scratch_w_levels",
            format_func=_levels_label,
        )
        st.checkbox("Add the dense (unpruned) network", key="scratch_w_dense")
    with f2:
        st.multiselect(
            "BatchNorm warm-up before scoring",
            list(BN_WARMUPS),
            key="scratch_w_warmups",
            format_func=sf.WARMUP_LABELS.get,
            help="paper: one train-mode pass updating the running statistics (momentum 0.1, no reset), as the "
            "paper's code; reset: this project's reset + cumulative average; off: statistics at mean 0, "
            "variance 1. Data-free criteria run without it (it cannot change their mask).",
        )
        st.number_input(
            "Seeds (mean and spread over them)",
            min_value=1,
            max_value=10,
            key="scratch_w_seeds",
            help="Each seed draws new initial weights, scoring images and batch order.",
        )
    with f3:
        st.selectbox(
            "Training schedule",
            list(SCHEDULES),
            key="scratch_w_schedule",
            format_func=lambda n: SCHEDULES[n].label,
        )
        st.selectbox(
            "Device",
            ["auto", "cpu", "cuda"],
            key="scratch_w_device",
            help=f"auto uses: {common.device_text()}",
        )
    st.form_submit_button(
        "Run",
        type="primary",
        on_click=JOB.submit,
        args=(_job,),
        disabled=JOB.running,
        key="btn_scratch_run",
    )


def _label(spec: ScratchSpec) -> str:
    if spec.sparsity == 0:
        return f"dense {spec.model} · seed {spec.seed}"
    return (
        f"{figures.score_label(spec.score)} · {figures.sparsity_label(spec.sparsity)} · "
        f"{sf.WARMUP_LABELS[spec.bn_warmup]} · seed {spec.seed}"
    )


def _work(job: dict, panel: common.ProgressPanel):
    """Run the specs one after another, recording each in the store; yield the runs so far."""
    results = []
    for i, spec in enumerate(job["specs"]):
        panel.start_run(i, _label(spec))
        results.append(scratch.run_scratch(spec, panel))
        store.record_run(results[-1])  # the one record of finished runs
        yield {"results": list(results)}
    panel.finish(f"{len(results)} run(s) finished")


common.show_error(JOB.error)
if JOB.running:
    n = len(JOB.job["specs"])
    JOB.run(
        _work,
        runs=n,
        caption=f"{n} run(s): {SCHEDULES[JOB.job['specs'][0].schedule].label}. Leaving this page pauses the job; "
        "it picks up where it stopped when you come back (finished runs are cached).",
    )

with st.expander("Every from-scratch run in the results store (this page, the CLI, sweeps)"):
    try:
        stored = store.ResultsStore().scratch_frame()
    except errors.StorageError as exc:  # a corrupt or unreadable store: said, the page goes on
        common.show_error(exc)
    else:
        if stored.empty:
            st.caption("None yet.")
        else:
            st.dataframe(
                stored.drop(columns=["key", "score_options", "data_root"]),
                hide_index=True,
                key="scratch_stored",
                column_config={
                    c: st.column_config.NumberColumn(format="%.4f")
                    for c in ("final_acc", "best_acc", "density")
                },
            )
            st.caption(
                f"{len(stored)} run(s); accuracies as fractions. `python -m pai_core report --kind scratch` "
                "draws their figures, for any subset."
            )
            st.download_button(
                "Download all (CSV)",
                data=stored.to_csv(index=False).encode(),
                file_name="scratch_store.csv",
                mime="text/csv",
                on_click="ignore",
                key="btn_scratch_store_csv",
            )

out = JOB.output
if out is None:
    st.info(
        "Choose settings and press **Run**. On a CPU the defaults (7 runs of a narrow VGG-11 for 3 epochs on 2,500 "
        "images) take a minute or two; repeating a run is instant."
    )
    st.stop()

# -- results -----------------------------------------------------------------------------------
results = out["results"]
frame = sf.results_frame(results)
first = results[0]
cached = sum(r.cached for r in results)
st.subheader("Accuracy after training from scratch")
st.caption(
    f"{len(results)} run(s), {cached} from the cache; ran on {first.device}. Schedule: **{first.schedule['label']}**."
)
for note in sorted({n for r in results for n in r.notes if not n.startswith(("layer collapse", "BUG"))}):
    st.caption(f"Note: {note}")
bad = [r for r in results if r.pruned_nonzero]
if bad:
    st.error(f"{len(bad)} run(s) found pruned weights that were not exactly zero after training: a bug.")

pruned = frame[frame["sparsity"] > 0]
if pruned.empty:
    st.info("Only dense runs: add criteria and sparsities to compare them.")
else:
    fig = sf.accuracy_vs_sparsity_figure(frame)
    st.plotly_chart(fig, key="scratch_acc")
    st.caption(
        "Mean over seeds, error bars ±1 standard deviation; the x axis is the fraction of weights kept on a "
        "log scale (sparsity grows to the right); solid: with a warm-up, dashed: without."
    )
    common.figure_downloads(fig, "scratch_accuracy_vs_sparsity", key="btn_scratch_acc")
    if pruned["bn_warmup"].nunique() > 1:
        wfig = sf.warmup_figure(frame)
        st.plotly_chart(wfig, key="scratch_warmup")
        common.figure_downloads(wfig, "scratch_warmup", key="btn_scratch_warmup")

    st.subheader("Per-layer density: layer collapse")
    levels = sorted(pruned["sparsity"].unique())
    if ss.get("scratch_w_density_q") not in levels:
        ss["scratch_w_density_q"] = levels[-1]
    q = st.selectbox("Sparsity", levels, key="scratch_w_density_q", format_func=figures.sparsity_label)
    dfig = sf.layer_density_figure(results, sparsity=q)
    st.plotly_chart(dfig, key="scratch_layers")
    common.figure_downloads(dfig, "scratch_layer_density", key="btn_scratch_layers")
    for r in results:
        if r.collapsed_layers and r.spec.sparsity == q:
            st.warning(
                f"**Layer collapse** with {_label(r.spec)}: {len(r.collapsed_layers)} layer(s) kept no weight, "
                f"e.g. {', '.join(r.collapsed_layers[:3])}.",
                icon=":material/warning:",
            )

with st.expander("Test accuracy per epoch"):
    st.plotly_chart(sf.training_curves_figure(results), key="scratch_curves")

st.subheader("Runs")
st.dataframe(
    frame.drop(columns=["cached"]),
    hide_index=True,
    width="stretch",
    column_config={
        "final_acc": st.column_config.NumberColumn("final acc. (%)", format="%.1f"),
        "best_acc": st.column_config.NumberColumn("best epoch's acc. (%, optimistic)", format="%.1f"),
        "density": st.column_config.NumberColumn(format="%.4f"),
        "seconds": st.column_config.NumberColumn(format="%.1f"),
    },
)
if len(frame) > 1 and not pruned.empty:
    st.markdown(sf.summary_markdown(frame))
d1, d2, _ = st.columns([1, 1, 3])
d1.download_button(
    "Download table (CSV)",
    data=frame.to_csv(index=False).encode(),
    file_name="scratch_results.csv",
    mime="text/csv",
    on_click="ignore",
    key="btn_scratch_csv",
)
d2.download_button(
    "Download runs (JSON)",
    data=lambda: json.dumps([r.to_dict() for r in results], indent=1),
    file_name="scratch_results.json",
    mime="application/json",
    on_click="ignore",
    key="btn_scratch_json",
)
st.caption(
    "Every run is also in the results store (`python -m pai_core report --kind scratch` draws the same "
    "figures from it, for any subset)."
)
