"""Run every benchmark in this folder, one after the other (``make bench``).

Each script follows ``_timing.py`` (one thread, CPU time, minimum over repeats) with its own
defaults; ``gpu.py`` is separate (``make bench-gpu``): on a CPU its full size takes hours.
"""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
#: Arguments of the scripts that need some (the rest run on their defaults).
ARGS = {"bench_defaults.py": ["finetune"]}

for script in sorted(here.glob("bench_*.py")):
    print(f"\n## {script.name}\n", flush=True)
    subprocess.run([sys.executable, str(script), *ARGS.get(script.name, [])], check=False)
