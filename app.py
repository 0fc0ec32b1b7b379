"""PaI Explorer: entry point (``streamlit run app.py``).

Sets the page layout, creates the shared session state once, and routes to the pages.  The
Overview page is drawn here; the others live in ``app_pages/`` (not ``pages/``: that folder name
switches on Streamlit's legacy auto-discovery, which ``st.navigation`` apps must avoid) and stay
runnable on their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from dashboard import common
from pai_core import cache, errors, models, scores, tasks

st.set_page_config(page_title="PaI Explorer", page_icon=":material/content_cut:", layout="wide")
common.init_state()


@dataclass(frozen=True)
class PageEntry:
    """One page of the app: its script, navigation title and icon, and its card on the Overview
    (title, one-line description; None: no card)."""

    path: str
    title: str
    icon: str
    card: tuple[str, str] | None = None


#: The app's pages after the Overview, in navigation order: a new page is one entry here.
PAGES = [
    PageEntry(
        "app_pages/1_Toy_landscapes.py",
        "Toy landscapes",
        ":material/toys:",
        (
            "Toy landscapes (Fig. 1–2)",
            "Two weights, two quadratic losses: move sliders and watch pruning and retraining on the source act "
            "on an aligned or misaligned transfer task. Instant.",
        ),
    ),
    PageEntry(
        "app_pages/2_Prune_and_evaluate.py",
        "Prune & evaluate",
        ":material/content_cut:",
        (
            "Prune & evaluate (Fig. 3)",
            "Prune a real encoder with several scores and sparsities, fine-tune on the source, compare source and "
            "transfer accuracy, and read the verdict on P1 and P2 computed from the numbers.",
        ),
    ),
    PageEntry(
        "app_pages/3_Loss_landscape.py",
        "Loss landscape",
        ":material/landscape:",
        (
            "Loss landscape (Fig. 4)",
            "Source and transfer loss over the plane through the pre-trained, pruned and fine-tuned weights, "
            "magnitude and diagonal Hessian side by side.",
        ),
    ),
    PageEntry(
        "app_pages/4_Results.py",
        "Results",
        ":material/table_chart:",
        (
            "Results",
            "Every finished run as a table and as the Fig. 3 grid across models; downloads (CSV, JSON, masks).",
        ),
    ),
    PageEntry(
        "app_pages/6_Task_alignment.py",
        "Task alignment",
        ":material/compare_arrows:",
        (
            "Task alignment (beyond the paper)",
            "P1's assumption measured: how aligned each source → transfer pair is at θ₀, against how much "
            "transfers and what not seeing the transfer task costs.",
        ),
    ),
    PageEntry(
        "app_pages/5_From_scratch.py",
        "From scratch",
        ":material/restart_alt:",
        (
            "From scratch (the scalable second-order paper)",
            "Prune a randomly initialised small network before training, train it, and compare scores across "
            "sparsities, the way the scalable second-order PaI paper does.",
        ),
    ),
]


def overview() -> None:
    """What the app is for, what each page does, what runs here and how to bring your own data."""
    st.title("PaI Explorer: pruning pre-trained encoders, and what it does to other tasks")
    st.markdown(
        """
**Pruning at initialization (PaI)** removes weights from a network *once*, before any further
training, using a score computed on a little data. Here the "initialization" is a **pre-trained
encoder**: we prune it with scores computed on one small **source** task, then measure accuracy on the
source and on **transfer** tasks the pruning never saw (each task read out by a frozen linear head
fitted on the dense encoder). The scores range from the weights' magnitude to second-order
(Hessian-based) estimates of how much the loss grows when a weight is removed.

The paper behind this app, *second-order PaI and transfer*, makes two predictions:

- **P1: what the source task does not need, the transfer tasks do not need either.** If the loss
  landscapes of the tasks are aligned around the pre-trained weights, a score computed on the source
  alone removes weights that are unimportant for every task, so zero-shot transfer accuracy falls no
  faster than source accuracy as sparsity grows.
- **P2: repairing the pruned model on the source also repairs it on the transfer tasks.** Briefly
  fine-tuning the pruned encoder on the source task moves it back towards a low-loss region that the
  tasks share, so transfer accuracy goes up (or at least not down).

Beyond the paper: the Prune page can also repair the pruned encoder **without SGD**, by the optimal
update δ of Eq. (3) computed on the source (OBS-corrected, crossed bars), and add tasks from another
data set as **cross-domain** transfer tasks; the Task alignment page measures P1's assumption directly.
"""
    )

    st.subheader("Pages")
    cards = [p for p in PAGES if p.card]
    per_row = 3  # six cards in one row truncate their titles at 1280 px
    for start in range(0, len(cards), per_row):
        row = cards[start : start + per_row]
        for col, p in zip(st.columns(per_row), row, strict=False):
            with col:
                st.page_link(p.path, label=f"**{p.card[0]}**")
                st.caption(p.card[1])

    st.subheader("This machine")
    c1, c2 = st.columns(2)
    with c1:
        gpu = common.gpu_available()
        st.markdown(
            f"**Device in use:** {common.device_text()}" + ("" if gpu else " — no GPU visible to PyTorch.")
        )
        st.caption(
            "On a GPU the pages default to the paper's fine-tuning schedule and 50 images per class; on a "
            "CPU to the 'cpu' schedule (5 epochs, lr 3e-4) and 20 images per class, so the default Prune run "
            "takes a few minutes. Sparsity levels default per model (pai_core.defaults). Every run page has a "
            "device override (auto / cpu / cuda)."
        )
    with c2:
        try:
            usage = cache.usage()
            where = cache.cache_dir()
        except errors.StorageError as exc:  # $PAI_CACHE_DIR names a file, or cannot be created
            common.show_error(exc)
            usage, where = {}, os.environ.get("PAI_CACHE_DIR", "cache/")
        st.markdown(
            f"**Cache** (`{where}`, set `PAI_CACHE_DIR` to move it): every stage — dense "
            "features, heads, scores, masks, fine-tuned weights, results, landscapes — is stored "
            "by what determines it, so repeating or extending a run is fast."
        )
        if usage:
            st.dataframe(
                pd.DataFrame(
                    [
                        {"artefact": k, "entries": v["entries"], "MB": v["bytes"] / 2**20}
                        for k, v in usage.items()
                    ]
                ),
                hide_index=True,
                column_config={"MB": st.column_config.NumberColumn(format="%.1f")},
            )
        else:
            st.caption("The cache is empty.")

    st.subheader("Models")
    rows = [
        {
            "model": e.name,
            "family": e.family.upper(),
            "in the paper's Fig. 3": e.paper,
            "works offline here": e.offline,
            "weights": ("random (tests only)" if e.random_weights else e.source),
            "description": e.description,
        }
        for e in models.entries()
    ]
    checks = st.session_state.get("overview_checks") or {}
    if checks:
        for row in rows:
            ok, msg = checks.get(row["model"], (None, ""))
            row["check here"] = "✅ " + msg if ok else ("❌ " + msg if ok is not None else "")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    st.caption(
        "Models marked offline install with the project's own requirements. The others download from "
        "their hubs the first time (Hugging Face, OpenAI, the authors' URLs); without internet, give a local "
        "checkpoint file on the run pages, or put it at `$PAI_CHECKPOINT_DIR/<model>.safetensors` (or `.pth` "
        "holding plain tensors; files that would run code when loaded are refused). Any timm or "
        "open_clip model also works by name (`timm:<name>`, `open_clip:<arch>/<tag>`)."
    )
    if st.button(
        "Check which models load here",
        key="btn_overview_check",
        help="Tries to load each model (offline ones load in seconds; the others fail fast without internet).",
    ):
        with st.spinner("Loading each model once…"):
            st.session_state["overview_checks"] = {
                e.name: common.model_check(e.name) for e in models.entries()
            }
        st.rerun()

    st.subheader("Task suites and data")
    srows = []
    for name in tasks.available():
        info = tasks.info(name)
        env = common.suite_env_var(name)
        srows.append(
            {
                "suite": name,
                "works offline here": info.offline,
                "needs a data folder": info.needs_root,
                "needs": info.needs,
                "environment variable": env,
                "set now": os.environ.get(env, ""),
                "description": info.description,
            }
        )
    st.dataframe(pd.DataFrame(srows), hide_index=True, width="stretch")
    st.markdown(
        """
**Pointing the app at ImageNet (the paper's ImageNet-10) or your own images.**
Suites that read a folder take it from the *data folder* field on the run pages, or from their
environment variable when the app starts, e.g.

```bash
PAI_IMAGENET10_ROOT=/data/imagenet/val streamlit run app.py
```

ImageNet-10 reads the ILSVRC2012 **validation** folder, flat (`ILSVRC2012_val_00000001.JPEG`, …) or one
sub-folder per WordNet id (`n01440764/…`); it uses 10 tasks × 10 classes × 50 images, as in the paper.
The `folder` suite takes any folder of class sub-folders plus a `tasks.json` grouping classes into tasks.
The run pages start on `fashion-mnist` when Debian's `dataset-fashion-mnist` is installed (photos of
clothing, which ImageNet encoders read like natural images), and otherwise on `digits` (handwritten
digits, which always work offline).
"""
    )
    st.caption(f"Pruning scores available: {', '.join(scores.available())}.")


pages = [st.Page(overview, title="Overview", icon=":material/home:", default=True)] + [
    st.Page(p.path, title=p.title, icon=p.icon) for p in PAGES
]
st.navigation(pages).run()
