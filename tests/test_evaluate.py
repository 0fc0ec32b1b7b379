import subprocess
import sys

import numpy as np
import torch

from pai_core import evaluate
from pai_core.experiment import get_encoder, get_suite


def test_split_indices():
    y = np.array([0] * 10 + [1] * 6)
    fit, ev = evaluate.split_indices(y, holdout=False)
    assert (fit == ev).all() and len(fit) == 16
    fit, ev = evaluate.split_indices(y, holdout=True, seed=3)
    assert not set(fit) & set(ev) and len(fit) + len(ev) == 16
    assert np.bincount(y[fit]).tolist() == [5, 3]


def test_offline_default_dense_accuracy_at_least_95_percent():
    """The issue's bar: EfficientNet-Lite0 + digits, fit = evaluate images (the paper's protocol)."""
    enc = get_encoder("efficientnet_lite0")
    suite = get_suite("digits", images_per_class=50)
    heads = evaluate.fit_heads(enc, suite, image_size=suite.image_size)
    accs = evaluate.evaluate_dense(enc, suite, heads, image_size=suite.image_size)
    assert len(accs) == len(suite.tasks) >= 2
    assert min(accs) >= 0.95, accs
    assert heads.dense == accs  # measured while fitting, from the same features
    # evaluating the dense encoder itself (not the cached features) gives the same numbers
    sub = evaluate.evaluate(enc.model, enc, suite, heads, image_size=suite.image_size, tasks=[0])
    assert sub[0] == accs[0]
    # a pruned-to-zero encoder cannot keep that accuracy: the evaluation does look at the weights
    dead = enc.copy().model
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()
    assert evaluate.evaluate(dead, enc, suite, heads, image_size=suite.image_size, tasks=[0])[0] < 0.5


def test_cli_evaluate_prints_per_task_accuracy():
    out = subprocess.run(
        [sys.executable, "-m", "pai_core", "evaluate", "--model", "efficientnet_lite0", "--suite", "digits"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith(("digits", "fashion"))]
    assert len(rows) >= 2
    assert all(float(r.split()[-1]) >= 95.0 for r in rows), out.stdout


def test_cli_reports_expected_problems_without_traceback():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pai_core",
            "evaluate",
            "--suite",
            "imagenet10",
            "--data-root",
            "/nonexistent",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
