"""How long the dashboard makes people wait: Run → figure on the Prune page, and a toy-page slider move.

Drives the real pages with Streamlit's AppTest (the same script runs, widgets and caches as in the
browser, without the websocket and the browser's drawing):

* Prune & evaluate on its defaults (EfficientNet-Lite0, digits, magnitude + diagonal Hessian, two
  sparsities, no fine-tuning on a CPU / the paper's on a GPU) in an empty cache folder (cold: features,
  scores, masks and evaluation all computed), then again in a new session with the same cache (warm:
  every result read back);
* the toy page: time to re-run after a slider move (the page recomputes and redraws on every move).

Timing follows ``bench/_timing.py``: one thread, the CPU time of this process (AppTest runs the
page in it; the work itself), the minimum over ``--repeats`` (each cold run in a fresh cache
folder); the wall time a user waits on this machine is printed beside it (on a shared machine it
includes other processes' time; the load average is printed with the table).

    python bench/bench_dashboard.py [--images-per-class 20] [--finetune off] [--moves 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _timing  # noqa: E402

ROOT = _timing.ROOT


def _run_prune(ipc: int | None, finetune: str | None) -> tuple[float, float, int]:
    """One Run click on the Prune page in a new session; (CPU s, wall s from click to figure, bar traces)."""
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
    c0, t0 = _timing.clock(), time.perf_counter()
    at.run(timeout=1800)
    cpu, seconds = _timing.clock() - c0, time.perf_counter() - t0
    if at.exception or at.error:
        raise SystemExit(f"the run failed: {[e.value for e in at.error]} {at.exception}")
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart") if "prune_fig3" in c.proto.id]
    if not charts:
        raise SystemExit("no figure after the run")
    return cpu, seconds, sum(t["type"] == "bar" for t in charts[0]["data"])


def _toy_moves(n: int) -> list[float]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Toy_landscapes.py"), default_timeout=60)
    at.run()
    times = []
    for i in range(n):
        value = float(5 * ((i % 18) + 1))  # 5°, 10°, …: every move is a new figure
        t0 = _timing.clock()
        at.slider(key="toy_rotation_deg").set_value(value).run()
        times.append(_timing.clock() - t0)
        assert not at.exception, at.exception
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-class", type=int, default=None, help="default: the page's own default")
    ap.add_argument("--finetune", default=None, help="off | smoke | short | paper (default: the page's own)")
    ap.add_argument("--moves", type=int, default=10, help="toy-page slider moves to time")
    _timing.add_args(ap, repeats=2)
    args = ap.parse_args()
    conditions = _timing.setup(args.threads)

    load0 = os.getloadavg()[0]
    os.environ.pop("PAI_RESULTS_DB", None)
    cold, warm = [], []
    for _ in range(max(1, args.repeats)):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["PAI_CACHE_DIR"] = tmp
            from dashboard import common

            settings = (
                f"images/class {args.images_per_class or common.default_images_per_class()}, fine-tuning "
                f"{args.finetune or common.default_schedule()}, device {common.device_text()}"
            )
            *c, bars = _run_prune(args.images_per_class, args.finetune)
            cold.append(c)
            *w, _ = _run_prune(args.images_per_class, args.finetune)
            warm.append(w)
    toy = _toy_moves(args.moves)
    load1 = os.getloadavg()[0]

    print(f"Prune page defaults ({settings}); {bars} bar traces in the figure.\n{conditions}\n")
    print(f"| what | CPU s (min of {len(cold)}) | wall s (min) |")
    print("| --- | ---: | ---: |")
    print(
        f"| Prune & evaluate: Run → figure, cold cache | {min(c for c, _ in cold):.1f} | {min(w for _, w in cold):.1f} |"
    )
    print(
        f"| Prune & evaluate: Run → figure, warm cache (new session) | {min(c for c, _ in warm):.2f} | "
        f"{min(w for _, w in warm):.2f} |"
    )
    print(f"| Toy page: re-run after a slider move, median of {len(toy)} | {statistics.median(toy):.3f} | |")
    print(f"| Toy page: slowest slider move | {max(toy):.3f} | |")
    print(f"\nLoad average (1 min) before/after: {load0:.1f} / {load1:.1f} on {os.cpu_count()} CPU(s).")


if __name__ == "__main__":
    main()
