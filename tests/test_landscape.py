import numpy as np
import pytest

from pai_core import landscape, masks
from pai_core.experiment import get_finetuned, get_masks, prepare
from pai_core.results import ExperimentSpec


def test_pca_plane_reconstructs_three_points_exactly():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(3, 500))
    mean, basis, coords = landscape.pca_plane(pts)
    np.testing.assert_allclose(mean + coords @ basis, pts, atol=1e-10)
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-12)


def test_landscape_on_the_offline_default():
    spec = ExperimentSpec(
        score="magnitude", sparsity=0.5, finetune="smoke", images_per_class=6, image_size=48
    )
    events = []
    ls = landscape.compute(
        spec, transfer=1, grid=3, extent=1.2, images_per_task=10, progress=lambda *e: events.append(e)
    )
    # 3 evenly spaced lines per axis plus the three points' own coordinates (fewer where they coincide).
    assert 3 < len(ls.xs) <= 6 and 3 < len(ls.ys) <= 6
    assert np.all(np.diff(ls.xs) > 0) and np.all(np.diff(ls.ys) > 0)
    assert ls.source_loss.shape == ls.transfer_loss.shape == (len(ls.ys), len(ls.xs))
    assert np.isfinite(ls.source_loss).all()
    assert [e for e in events if e[0] == "landscape"][-1][1:3] == (len(ls.ys), len(ls.ys))
    assert set(ls.points) == set(landscape.LABELS)
    # Every point lies on a grid node, where the surface holds its exactly evaluated losses.
    for lab, (x, y) in ls.points.items():
        i, j = int(np.flatnonzero(ls.ys == y)[0]), int(np.flatnonzero(ls.xs == x)[0])
        np.testing.assert_allclose(
            (ls.source_loss[i, j], ls.transfer_loss[i, j]), ls.point_losses[lab], rtol=1e-4, atol=1e-6
        )
    d = ls.to_dict()
    assert d["point_losses"].keys() == ls.points.keys() and len(d["xs"]) == len(ls.xs)
    # the three points are the dense, pruned and fine-tuned weights: rebuild them and check
    ctx = prepare(spec.replace(device="cpu"))
    mask = get_masks(ctx)
    tuned, _ = get_finetuned(ctx, mask)
    model = ctx.encoder.copy().model
    names = [n for n, _ in model.named_parameters()]
    theta0 = landscape._flat(model, names)
    masks.prune_(model, mask)
    pruned = landscape._flat(model, names)
    model.load_state_dict(tuned)
    vecs = np.stack([theta0, pruned, landscape._flat(model, names)])
    mean, basis, coords = landscape.pca_plane(vecs)
    np.testing.assert_allclose(mean + coords @ basis, vecs, atol=1e-6)
    got = np.array([ls.points[lab] for lab in landscape.LABELS])
    np.testing.assert_allclose(np.abs(got), np.abs(coords), rtol=1e-6, atol=1e-9)
    # pruning raised the source loss; fine-tuning on the source lowered it again
    src = {lab: ls.point_losses[lab][0] for lab in landscape.LABELS}
    assert src[landscape.LABELS[1]] > src[landscape.LABELS[0]]
    assert src[landscape.LABELS[2]] < src[landscape.LABELS[1]]
    # cached: a second call is instant and equal
    again = landscape.compute(spec, transfer=1, grid=3, extent=1.2, images_per_task=10)
    np.testing.assert_array_equal(again.source_loss, ls.source_loss)


def test_landscape_bad_transfer():
    with pytest.raises(ValueError, match="another task"):
        landscape.compute(ExperimentSpec(images_per_class=6, image_size=48), transfer=0)


def test_landscape_with_the_obs_corrected_point():
    spec = ExperimentSpec(
        score="magnitude", sparsity=0.5, finetune="smoke", images_per_class=6, image_size=48, repair="a"
    )
    ls = landscape.compute(spec, transfer=1, grid=3, extent=1.2, images_per_task=10)
    assert set(ls.points) == {*landscape.LABELS, landscape.REPAIRED_LABEL}
    # the three points span the plane; the corrected one is projected and its distance reported
    assert all(ls.off_plane[lab] == 0.0 for lab in landscape.LABELS)
    assert ls.off_plane[landscape.REPAIRED_LABEL] > 0.0
    # its projection and distance rebuild it: ‖θ̃₀+δ − θ̃₀‖² = (in-plane distance)² + (off-plane)²
    from pai_core import transfer_stages

    ctx = prepare(spec.replace(device="cpu"))
    mask = get_masks(ctx)
    state, _ = transfer_stages.get_repaired(ctx, mask)
    model = ctx.encoder.copy().model
    names = [n for n, _ in model.named_parameters()]
    masks.prune_(model, mask)
    pruned = landscape._flat(model, names)
    model.load_state_dict(state)
    fixed = landscape._flat(model, names)
    in_plane = np.subtract(ls.points[landscape.REPAIRED_LABEL], ls.points[landscape.LABELS[1]])
    want = np.linalg.norm(fixed - pruned) ** 2
    got = float(in_plane @ in_plane) + ls.off_plane[landscape.REPAIRED_LABEL] ** 2
    assert got == pytest.approx(want, rel=1e-6)
    # losses at the exact corrected point: the source loss below the pruned one (the correction's aim)
    assert ls.point_losses[landscape.REPAIRED_LABEL][0] < ls.point_losses[landscape.LABELS[1]][0]
    # the plane and the other points are those of the same landscape without the fourth point
    plain = landscape.compute(spec.replace(repair=None), transfer=1, grid=3, extent=1.2, images_per_task=10)
    for lab in landscape.LABELS:
        np.testing.assert_allclose(plain.points[lab], ls.points[lab], rtol=1e-9)
