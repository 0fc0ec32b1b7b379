"""How long the dashboard makes people wait: Run → figure on the Prune page, and a toy-page slider move.

Drives the real pages with Streamlit's AppTest (the same script runs, widgets and caches as in the
browser, without the websocket and the browser's drawing):

* Prune & evaluate on its defaults (``pai_core.defaults``: EfficientNet-Lite0 on Fashion-MNIST where
  installed, magnitude + diagonal Hessian, the model's three CPU sparsities, the ``cpu`` fine-tuning
  schedule; on a GPU the paper's schedule) in an empty cache folder (cold: features, scores, masks,
  fine-tuning and evaluation all computed, plus the held-out dense fit and the ImageNet check the page
  draws), then again in a new session with the same cache (warm: every result read back);
* the toy page: time to re-run after a slider move (the page recomputes and redraws on every move).

The machine's load average is printed with the table: on a shared machine it explains outliers.

    python bench/bench_dashboard.py [--images-per-class 20] [--finetune off] [--moves 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


_CPU: list[float] = []


def _cpu() -> float:
    """CPU seconds of this process (all threads): what the run cost, whatever else the machine runs."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _run_prune(ipc: int | None, finetune: str | None) -> tuple[float, int, list]:
    """One Run click on the Prune page in a new session; (seconds from click to figure, bar traces, results)."""
    import json

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Prune_and_evaluate.py"), default_timeout=1800)
    at.run()
    if ipc is not None:
        at.number_input(key="prune_w_ipc").set_value(ipc)
    if finetune is not None:
        at.selectbox(key="prune_w_finetune").set_value(finetune)
    run = next(b for b in at.button if b.label == "Run")
    run.click()
    t0 = time.perf_counter()
    c0 = _cpu()
    at.run(timeout=1800)
    seconds = time.perf_counter() - t0
    _CPU.append(_cpu() - c0)
    if at.exception or at.error:
        raise SystemExit(f"the run failed: {[e.value for e in at.error]} {at.exception}")
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "prune_fig3" in c.proto.id]
    if not charts:
        raise SystemExit("no figure after the run")
    return (
        seconds,
        sum(t["type"] == "bar" for t in charts[0]["data"]),
        at.session_state["prune_output"]["results"],
    )


def _toy_moves(n: int) -> list[float]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Toy_landscapes.py"), default_timeout=60)
    at.run()
    times = []
    for i in range(n):
        value = float(5 * ((i % 18) + 1))  # 5°, 10°, …: every move is a new figure
        t0 = time.perf_counter()
        at.slider(key="toy_rotation_deg").set_value(value).run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-class", type=int, default=None, help="default: the page's own default")
    ap.add_argument(
        "--finetune", default=None, help="off | cpu | smoke | short | paper (default: the page's own)"
    )
    ap.add_argument("--moves", type=int, default=10, help="toy-page slider moves to time")
    ap.add_argument(
        "--cache",
        default=None,
        help="an empty folder to use as the cache and keep (default: a temporary one)",
    )
    args = ap.parse_args()

    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        if args.cache:
            Path(args.cache).mkdir(parents=True, exist_ok=True)
            if any(Path(args.cache).iterdir()):
                raise SystemExit(f"--cache {args.cache} is not empty: the cold run would not be cold")
        os.environ["PAI_CACHE_DIR"] = args.cache or tmp
        os.environ.pop("PAI_RESULTS_DB", None)
        from dashboard import common

        settings = (
            f"images/class {args.images_per_class or common.default_images_per_class()}, fine-tuning "
            f"{args.finetune or common.default_schedule()}, device {common.device_text()}"
        )
        cold, bars, results = _run_prune(args.images_per_class, args.finetune)
        warm, _, _ = _run_prune(args.images_per_class, args.finetune)
    toy = _toy_moves(args.moves)
    load1 = os.getloadavg()[0]

    print(f"Prune page defaults ({settings}); {bars} bar traces in the figure.\n")
    print("| what | seconds |")
    print("| --- | ---: |")
    print(f"| Prune & evaluate: Run → figure, cold cache | {cold:.1f} (CPU time {_CPU[0]:.1f}) |")
    print(
        f"| Prune & evaluate: Run → figure, warm cache (new session) | {warm:.2f} (CPU time {_CPU[1]:.2f}) |"
    )
    print(f"| Toy page: re-run after a slider move, median of {len(toy)} | {statistics.median(toy):.3f} |")
    print(f"| Toy page: slowest slider move | {max(toy):.3f} |")
    print(f"\nLoad average (1 min) before/after: {load0:.1f} / {load1:.1f} on {os.cpu_count()} CPU(s).")
    _print_figure(results)


def _print_figure(results: list) -> None:
    """The default figure's numbers and the verdict the page prints under it."""
    from pai_core import figures, verdicts

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    r0 = results[0]
    print(
        f"\nThe default figure ({r0.spec.model}, {r0.spec.suite}, source {r0.tasks[r0.spec.source].task}):\n"
    )
    print(
        "| score | sparsity | source zero-shot → fine-tuned | transfer zero-shot → fine-tuned | fine-tuning loss |"
    )
    print("| --- | ---: | --- | --- | --- |")
    for r in results:
        m = r.summary()
        loss = verdicts.finetune_losses(r.finetune_log)
        lt = (
            "–"
            if loss is None
            else f"{loss[0]:.3f} → {loss[1]:.3f}" + (" DIVERGED" if loss[1] > loss[0] else "")
        )
        print(
            f"| {figures.score_label(r.spec.score)} | {figures.sparsity_label(r.spec.sparsity)} | "
            f"{pct(m['source_zero_shot'])} → {pct(m['source_finetuned'])} | "
            f"{pct(m['transfer_zero_shot'])} → {pct(m['transfer_finetuned'])} | {lt} |"
        )
    m = r0.summary()
    print(f"\nDense (fit = evaluate): source {pct(m['source_dense'])}, transfer {pct(m['transfer_dense'])}.")
    v = verdicts.fig3_verdict(results, label=figures.score_label)
    print("\nVerdict:")
    for line in v.lines + v.warnings:
        print("- " + line.replace("**", ""))
    for c in v.contradictions:
        print("- contradicts the paper: " + c)


if __name__ == "__main__":
    main()
