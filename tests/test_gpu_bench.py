"""bench/gpu.py runs its whole GPU path on a CPU with tiny models and writes a well-formed report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_small_on_cpu_writes_a_complete_report(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "bench/gpu.py", "--device", "cpu", "--small", "--scores", "magnitude,diag,kfac,px"]
    res = subprocess.run([*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(res.stdout)  # stdout is the same JSON
    assert report["small"] is True and report["device"].startswith("cpu")
    assert set(report["per_arch"]) == {"test_resnet", "test_vit"}
    for arch, m in report["per_arch"].items():
        assert m["unit"]["seconds"] > 0 and m["scored_weights"] > 0
        assert m["unit"]["peak_mb"] is None  # not measured on a CPU, and says so by None
        for name in ("magnitude", "diag", "kfac"):
            row = m["scores"][name]
            assert row["seconds"] >= 0 and math.isfinite(row["ratio"]), (arch, name, row)
        assert m["scores"]["diag"]["ratio"] > 0
        assert m["masks"]["sparsities"] == [0.36, 0.4752, 0.5904, 0.6642, 0.738, 0.7852, 0.8322]
        assert m["masks"]["seconds_all_seven"] > 0
        assert m["finetune"]["design_images_per_s"] > 0 and m["finetune"]["project_loop_images_per_s"] > 0
        assert m["eval_images_per_s"] > 0
    assert "ratio" in report["per_arch"]["test_resnet"]["scores"]["px"]
    assert "CNNs" in report["per_arch"]["test_vit"]["scores"]["px"]["refused"]  # as the paper: no PX on ViTs
    est = report["estimate"]
    assert est["runs"] == 5 * 10 * 7 * 6
    cnn, vit = est["per_architecture"]["resnet50"], est["per_architecture"]["vit"]
    assert len(cnn["encoders"]) + len(vit["encoders"]) == 5
    assert cnn["scores_not_measured"] == ["snip", "grasp"]  # not asked for: named, costed as the mean
    # PX skipped on ViTs makes the paper's grid cheaper than 6 scores everywhere, by ViT's share only.
    assert vit["hours_as_paper_ran"] < vit["hours_6_scores"]
    assert cnn["hours_as_paper_ran"] == pytest.approx(cnn["hours_6_scores"])
    total = est["hours_6_scores_everywhere"]
    assert total == pytest.approx(cnn["hours_6_scores"] + vit["hours_6_scores"])
    assert 0 < est["hours_as_paper_ran (PX skipped on ViTs)"] < total
    run = cnn["one_run_s"]
    assert run["total, score amortised over 7 sparsities"] > run["fine-tuning (90 epochs x 500 images)"] > 0
