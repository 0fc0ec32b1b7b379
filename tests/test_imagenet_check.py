"""pai_core.imagenet_check: the 20 real ImageNet photos of foolbox, classified by the offline encoders."""

from __future__ import annotations

import pytest
import torch

from pai_core import imagenet_check as ic
from pai_core import masks
from pai_core.errors import DataError
from pai_core.experiment import get_encoder
from pai_core.scores import compute


def test_photos_are_the_twenty_labelled_imagenet_files() -> None:
    photos = ic.imagenet_photos()
    assert len(photos) == 20
    assert all(p.path.is_file() and 0 <= p.label < 1000 for p in photos)
    assert [p.name for p in photos] == sorted(p.name for p in photos)
    assert photos[0].label == 243  # imagenet_00_243.jpg


def test_empty_folder_is_a_data_error(tmp_path) -> None:
    (tmp_path / "cat.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no ImageNet photos"):
        ic.imagenet_photos(tmp_path)


@pytest.mark.slow
def test_real_weights_classify_real_photos_and_pruning_costs_photos() -> None:
    enc = get_encoder("efficientnet_lite0")
    dense = ic.imagenet_check(enc)
    # Measured: 18 of 20 (the two misses are plausible neighbours); random weights would get ~0.
    assert dense.correct == 18 and dense.total == 20 and dense.accuracy == pytest.approx(0.9)
    # Global magnitude pruning: harmless at 10 %, fatal at 59 % (checked by hand: 0/20).
    sc = compute("magnitude", enc.model, None)
    light = ic.imagenet_check(enc, masks.global_topk(sc, 0.10), sparsity=0.10)
    heavy = ic.imagenet_check(enc, masks.global_topk(sc, 0.5904), sparsity=0.5904)
    assert light.correct >= 16 and heavy.correct <= 2 and heavy.sparsity == 0.5904
    # The encoder itself is never pruned.
    assert ic.imagenet_check(enc).correct == 18


def test_encoder_without_imagenet_head_is_refused() -> None:
    enc = get_encoder("test_resnet").copy()
    enc.classifier = None
    with pytest.raises(ValueError, match="no ImageNet-1k head"):
        ic.classify(enc)


def test_random_weights_run_end_to_end() -> None:
    enc = get_encoder("test_resnet")
    preds = ic.classify(enc)
    assert len(preds) == 20 and all(0 <= p < 1000 for _, _, p in preds)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    keep = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in enc.model.named_parameters() if p.dim() > 1}
    ic.imagenet_check(enc, keep, sparsity=0.99)
    assert all(torch.equal(v, enc.model.state_dict()[k]) for k, v in before.items())


def test_for_runs_checks_each_runs_own_mask(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PAI_CACHE_DIR", str(tmp_path))
    from pai_core.results import ExperimentSpec

    base = ExperimentSpec(model="test_resnet", images_per_class=3, score="magnitude")
    specs = [base.replace(sparsity=0.2), base.replace(sparsity=0.9), base.replace(sparsity=0.9)]
    checks = ic.for_runs(specs)
    assert [(c.score, c.sparsity) for c in checks] == [(None, 0.0), ("magnitude", 0.2), ("magnitude", 0.9)]
    assert all(c.total == 20 for c in checks)
    with pytest.raises(ValueError, match="several"):
        ic.for_runs([base, base.replace(model="test_vit")])
