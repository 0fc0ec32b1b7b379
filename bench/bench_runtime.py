"""End-to-end CLI run before and after :mod:`pai_core.runtime` (threads and allocator), side by side.

Each configuration runs the same CLI command in a fresh subprocess with an empty cache (so every
stage is computed), interleaved (A B C D A B C D …) so that load from other processes hits them
alike; reported per configuration: the minimum over repeats of CPU time, wall time, minor page
faults (``os.wait4``'s rusage of the child) and peak resident memory.

Configurations:

* ``before``: what the project did before: PyTorch's default threads (one per CPU) and glibc's
  default allocator (``PAI_THREADS=torch PAI_MALLOC=default``);
* ``after``: the new defaults (threads: physical cores not busy at start; tuned allocator);
* ``1 thread, default allocator`` and ``1 thread, tuned allocator``: the allocator's effect alone.

``--load K`` runs K busy-looping processes throughout (after a warm-up long enough for the load
average, which the default thread count reads, to see them): the "under load" comparison.

    python bench/bench_runtime.py [--repeats 2] [--load 0] [-- CLI ARGS…]

Default CLI command: ``run --model efficientnet_lite0 --suite digits --score diag --finetune smoke``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import ROOT, run_child  # noqa: E402

DEFAULT_CMD = [
    "run",
    "--model",
    "efficientnet_lite0",
    "--suite",
    "digits",
    "--score",
    "diag",
    "--finetune",
    "smoke",
]

CONFIGS = {
    "before (torch threads, glibc default)": {"PAI_THREADS": "torch", "PAI_MALLOC": "default"},
    "after (new defaults)": {},
    "1 thread, glibc default": {"PAI_THREADS": "1", "PAI_MALLOC": "default"},
    "1 thread, tuned allocator": {"PAI_THREADS": "1"},
}


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--load", type=int, default=0, help="busy processes running alongside (under-load comparison)"
    )
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds the load runs before the first run")
    ap.add_argument(
        "--configs", default="", help="comma-separated indices into the configurations (default all)"
    )
    ap.add_argument("--json", default=None, help="also write the raw figures here")
    ap.add_argument("cli", nargs="*", help="CLI arguments after -- (default: the smoke diag run)")
    args = ap.parse_args()
    cli = args.cli or DEFAULT_CMD
    names = list(CONFIGS)
    if args.configs:
        names = [names[int(i)] for i in args.configs.split(",")]

    spinners = [_spinner() for _ in range(args.load)]
    try:
        if spinners:
            time.sleep(args.warmup)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for r in range(args.repeats):
            for name in names:
                with tempfile.TemporaryDirectory(prefix="pai-bench-runtime-") as tmp:
                    env = {k: v for k, v in os.environ.items() if k not in {"PAI_THREADS", "PAI_MALLOC"}}
                    env |= {"PAI_CACHE_DIR": tmp, "PAI_RESULTS_DB": str(Path(tmp) / "results.sqlite")}
                    env |= CONFIGS[name]
                    load = os.getloadavg()[0]
                    fig = run_child(
                        [sys.executable, "-m", "pai_core", *cli, "--device", "cpu"], env=env, cwd=ROOT
                    )
                    fig["load_at_start"] = load
                    runs[name].append(fig)
                    print(
                        f"  [{r + 1}/{args.repeats}] {name}: cpu {fig['cpu_s']:.1f}s wall {fig['wall_s']:.1f}s "
                        f"minflt {fig['minflt'] / 1e6:.2f}M rss {fig['maxrss_mb']:.0f}MB (load {load:.1f})",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for p in spinners:
            p.kill()
            p.wait()

    print(
        f"command: python -m pai_core {' '.join(cli)} --device cpu; {os.cpu_count()} CPUs; extra load {args.load}"
    )
    print(f"minimum over {args.repeats} interleaved runs per configuration, fresh cache each\n")
    print("| configuration | CPU s | wall s | minor faults | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in names:
        rs = runs[name]
        print(
            f"| {name} | {min(x['cpu_s'] for x in rs):.1f} | {min(x['wall_s'] for x in rs):.1f} | "
            f"{min(x['minflt'] for x in rs) / 1e6:.2f} M | {min(x['maxrss_mb'] for x in rs):.0f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"cli": cli, "load": args.load, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
