"""Results: every finished run as a table and as the Fig. 3 grid across models; downloads.

Thin page: the runs come from the results store (the one record of finished runs),
:mod:`pai_core.figures` turns them into frames and figures.
"""

from __future__ import annotations

import streamlit as st

from dashboard import common
from pai_core import figures, transfer_figures, verdicts

common.page_defaults({})
ss = st.session_state

st.title("Results")
st.markdown(
    "Every run that finished on this machine (from the Prune page, the command line or a sweep), read from "
    "the results store in the cache folder."
)

# A broken results store is explained (with how to move it aside); the runs whose result files are
# in the cache are still listed.
results, store_error = common.results_and_store_error(common.results_signature())
common.show_error(store_error)
if store_error is not None:
    st.caption("Showing the finished runs whose result files are in the cache folder.")
if not results:
    st.info(
        "No finished runs yet. Run one on the **Prune & evaluate** page (in the sidebar), with "
        "`python -m pai_core run`, or with a sweep."
    )
    st.stop()


@st.cache_data(show_spinner=False, max_entries=4)
def _frames(signature: tuple, _results):
    return figures.results_frame(_results), figures.results_table(_results)


sig = common.results_signature()
frame, table = _frames(sig, results)

# -- filters -----------------------------------------------------------------------------------
st.subheader("Filter")

fcols = st.columns(5)
filters = {}
for col, name, title in zip(
    fcols,
    ("model", "suite", "score", "finetune", "repair"),
    ("model", "suite", "score", "fine-tuning", "OBS correction"),
    strict=True,
):
    opts = sorted(frame[name].dropna().unique().tolist())
    key = f"results_w_{name}"
    ss[key] = [v for v in ss.get(key, opts) if v in opts] or opts
    filters[name] = col.multiselect(
        title, opts, key=key, format_func=figures.score_label if name == "score" else str
    )
mask = frame["model"].notna()
for name, vals in filters.items():
    mask &= frame[name].isin(vals)
view = table[mask.to_numpy()]
chosen = [r for r, keep in zip(results, mask.tolist(), strict=True) if keep]

st.subheader(f"Runs ({len(view)} of {len(frame)})")
st.dataframe(
    view,
    hide_index=True,
    width="stretch",
    column_config={
        **{
            c: st.column_config.NumberColumn(c, format="%.1f")
            for c in view.columns
            if c.endswith("(%)") and c != "sparsity (%)"
        },
        # As given: 59.04, not 59.0 or 59.040000000000006.
        "sparsity (%)": st.column_config.NumberColumn(format="%g"),
        "seconds": st.column_config.NumberColumn(format="%.1f"),
        "settings": st.column_config.TextColumn(width="large"),
    },
)
st.caption(
    "Click a column header to sort. Accuracies in %: zero-shot and fine-tuned first, then the dense encoder. "
    "'seconds' is the run's compute time (0 for stages read from the cache); 'key' identifies the run in the "
    "cache and the store."
)
d1, d2, _ = st.columns([1, 1, 3])
d1.download_button(
    "Download table (CSV)",
    data=frame[mask].to_csv(index=False).encode(),
    file_name="pai_results.csv",
    mime="text/csv",
    on_click="ignore",
    key="btn_results_csv",
)
d2.download_button(
    "Download runs (JSON)",
    data=lambda: common.results_json(chosen),
    file_name="pai_results.json",
    mime="application/json",
    on_click="ignore",
    key="btn_results_json",
)

# -- Fig. 3 across models ------------------------------------------------------------------------
st.subheader("Fig. 3 across models")
if not chosen:
    st.info("No runs match the filters.")
    st.stop()
groups = figures.group_by_setting(chosen)
labels = list(groups)
if len(labels) > 1:
    if ss.get("results_w_setting") not in labels:
        ss["results_w_setting"] = labels[0]
    pick = st.selectbox(
        "Runs with these settings (one figure compares like with like)", labels, key="results_w_setting"
    )
else:
    pick = labels[0]
    st.caption(f"Settings: {pick}")
group = groups[pick]


def _short_label(r) -> str:
    src = next((t.task for t in r.tasks if t.role == "source"), f"task {r.spec.source}")
    return (
        f"{r.spec.model} · {figures.score_label(r.spec.score)} · {figures.sparsity_label(r.spec.sparsity)} · "
        f"source {src}"
    )


by_key = {r.spec.key(): r for r in group}
if ss.get("results_w_overlay_group") != pick:  # a new setting: draw all of its runs
    ss["results_w_overlay_group"] = pick
    ss["results_w_overlay"] = list(by_key)
ss["results_w_overlay"] = [k for k in ss["results_w_overlay"] if k in by_key]
st.multiselect(
    "Runs drawn together in the figure (remove some to compare fewer; runs of several sources are averaged)",
    list(by_key),
    key="results_w_overlay",
    format_func=lambda k: _short_label(by_key[k]),
)
sel = [by_key[k] for k in ss["results_w_overlay"]]


@st.cache_data(show_spinner=False, max_entries=8)
def _grid(keys: tuple[str, ...], _results):
    return figures.fig3_figure(_results)


if not sel:
    st.info("Choose at least one run to draw.")
else:
    try:
        fig = _grid(tuple(sorted(r.spec.key() for r in sel)), sel)
    except ValueError as exc:
        common.show_error(exc)
    else:
        n_src = len({r.spec.source for r in sel})
        st.plotly_chart(fig, key="results_fig3")
        st.caption(
            f"One column per model; bars average over {n_src} source task(s) (error bars: ±1 s.d. across "
            "sources). Solid: zero-shot"
            + ("; hatched: fine-tuned on the source" if any(r.spec.finetune for r in sel) else "")
            + ("; crossed: OBS-corrected on the source (no SGD)" if any(r.spec.repair for r in sel) else "")
            + ("; a third row holds cross-domain tasks" if any(r.spec.transfer_suite for r in sel) else "")
            + ". Dashed: dense (how it was measured is in its label); dotted: chance."
        )
        for sentence in transfer_figures.repair_verdict(sel):
            st.markdown(sentence)
        common.figure_downloads(fig, "fig3_grid", key="btn_results_fig")
        for model in dict.fromkeys(r.spec.model for r in sel):
            runs = [r for r in sel if r.spec.model == model]
            v = verdicts.fig3_verdict(runs, label=figures.score_label)
            if not v.lines:
                continue
            with st.container(border=True):
                st.markdown(f"**{model}: what these runs say about P1 and P2** (each run judged on its own)")
                for line in v.lines:
                    st.markdown(line)
                for w in v.warnings:
                    st.warning(w, icon=":material/warning:")
                if v.contradictions:
                    st.warning(
                        "**Runs that contradict the paper:**\n\n"
                        + "\n".join(f"- {c}" for c in v.contradictions),
                        icon=":material/report:",
                    )

# -- masks of one run ----------------------------------------------------------------------------
st.subheader("Masks of a run")
st.caption(
    "The keep-masks (1 = weight kept) of every pruned layer, bit-packed, as a safetensors file; the run's spec "
    "is in the file's metadata."
)
run_labels = {r.spec.key(): figures.run_label(r.spec, [t.task for t in r.tasks]) for r in chosen}
run_key = st.selectbox("Run", list(run_labels), format_func=run_labels.get, key="results_w_mask_run")
blob = ss["results_masks"]
if st.button("Prepare masks file", key="btn_results_masks"):
    spec = next(r.spec for r in chosen if r.spec.key() == run_key)
    try:
        with st.spinner("Reading the masks (computed again if the cache was cleared)…"):
            data = common.masks_file(spec.to_json())
        ss["results_masks"] = blob = {"key": run_key, "bytes": data, "name": f"masks_{run_key}.safetensors"}
    except Exception as exc:
        common.show_error(exc)
if blob is not None and blob["key"] == run_key:
    st.download_button(
        f"Download masks ({len(blob['bytes']) / 2**20:.2f} MB)",
        data=blob["bytes"],
        file_name=blob["name"],
        mime="application/octet-stream",
        on_click="ignore",
        key="btn_results_masks_dl",
    )
