"""Results: every finished run as a table and as the Fig. 3 grid across models; downloads.

Thin page: the runs come from the results store (the one record of finished runs),
:mod:`pai_core.figures` turns them into frames and figures.
"""

from __future__ import annotations

import streamlit as st

from dashboard import common
from pai_core import figures
from pai_core.results import SUMMARY_COLUMNS

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
def _frame(signature: tuple, _results):
    return figures.results_frame(_results)


sig = common.results_signature()
frame = _frame(sig, results)

# -- filters -----------------------------------------------------------------------------------
st.subheader("Filter")
fcols = st.columns(4)
filters = {}
for col, name in zip(fcols, ("model", "suite", "score", "finetune"), strict=True):
    opts = sorted(frame[name].dropna().unique().tolist())
    key = f"results_w_{name}"
    ss[key] = [v for v in ss.get(key, opts) if v in opts] or opts
    filters[name] = col.multiselect(name.replace("finetune", "fine-tuning"), opts, key=key)
mask = frame["model"].notna()
for name, vals in filters.items():
    mask &= frame[name].isin(vals)
view = frame[mask]
chosen = [r for r, keep in zip(results, mask.tolist(), strict=True) if keep]

st.subheader(f"Runs ({len(view)} of {len(frame)})")
st.dataframe(
    view.drop(columns=["key", "sparsity"]),
    hide_index=True,
    width="stretch",
    column_config={
        **{
            c: st.column_config.NumberColumn(c.replace("_", " ") + " (%)", format="%.1f")
            for c in SUMMARY_COLUMNS
        },
        "sparsity (%)": st.column_config.NumberColumn(format="%.2f"),
        "seconds": st.column_config.NumberColumn(format="%.1f"),
    },
)
st.caption(
    "Click a column header to sort. Accuracies in %; 'seconds' is the run's compute time (0 for stages read "
    "from the cache)."
)
d1, d2, _ = st.columns([1, 1, 3])
d1.download_button(
    "Download table (CSV)",
    data=view.to_csv(index=False).encode(),
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
        "Runs with these settings (one panel compares like with like)", labels, key="results_w_setting"
    )
else:
    pick = labels[0]
sel = groups[pick]


@st.cache_data(show_spinner=False, max_entries=8)
def _grid(keys: tuple[str, ...], _results):
    return figures.fig3_figure(_results)


try:
    fig = _grid(tuple(sorted(r.spec.key() for r in sel)), sel)
except ValueError as exc:
    common.show_error(exc)
else:
    n_src = len({r.spec.source for r in sel})
    st.plotly_chart(fig, key="results_fig3")
    st.caption(
        f"One column per model; bars average over {n_src} source task(s) (error bars: ±1 s.d. across "
        "sources). PNG: camera icon in the toolbar."
    )
    common.figure_download(fig, "fig3_grid.html", key="btn_results_fig_html")

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
