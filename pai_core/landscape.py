"""PCA loss-landscape projections for a source/transfer task pair (the paper's Fig. 4).

Three flattened encoder weight vectors — θ₀ (dense), θ̃₀ (pruned on the source)
and θ̃ₛ* (pruned and fine-tuned on the source) — span an affine plane.  Their
top two principal directions (scikit-learn PCA on the three rows) are an
orthonormal basis of exactly that plane, so the three points reconstruct
exactly from their 2-D coordinates.  On a grid over the plane we load
θ = mean + a·u₁ + b·u₂ into the encoder and measure the source and the transfer
loss (each task through its own frozen ridge head, the paper's squared error).
The encoder stays in eval mode (BatchNorm uses its running statistics), as in
fine-tuning.

With ``spec.repair`` a fourth point joins them: θ̃₀ + δ, the pruned weights OBS-corrected on the
source (:mod:`pai_core.repair`, no SGD).  It is generally *not* in the plane of the other three;
it is shown at its orthogonal projection, its distance from the plane is reported
(:attr:`Landscape.off_plane`), and its losses are measured at the exact point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import Tensor, nn

from . import cache, masks, transfer_stages
from .experiment import get_finetuned, get_masks, prepare
from .finetune import mse_loss
from .results import ExperimentSpec, StageProgress

__all__ = ["Landscape", "pca_plane", "compute"]

LABELS = ("θ₀ (dense)", "θ̃₀ (pruned)", "θ̃ₛ* (pruned + fine-tuned)")
#: The fourth point, with ``spec.repair``.
REPAIRED_LABEL = "θ̃₀+δ (OBS-corrected, projected)"


@dataclass
class Landscape:
    """Losses over the PCA plane of (θ₀, θ̃₀, θ̃ₛ*).

    Attributes:
        xs, ys: Grid coordinates along the first and second principal direction (increasing; they
            include the three points' coordinates).
        source_loss, transfer_loss: ``[len(ys), len(xs)]`` mean squared errors.
        points: Label → (x, y) coordinates of the three weight vectors.
        point_losses: Label → (source loss, transfer loss) at the exact points.
        source_name, transfer_name: Task names.
        explained_variance: Fractions of variance of the two directions.
        spec: The experiment (its ``finetune`` must be set).
        off_plane: Label → Euclidean distance of a point from the plane (0 for the three that
            span it; the OBS-corrected point's, with ``spec.repair``).
    """

    xs: np.ndarray
    ys: np.ndarray
    source_loss: np.ndarray
    transfer_loss: np.ndarray
    points: dict[str, tuple[float, float]]
    point_losses: dict[str, tuple[float, float]]
    source_name: str
    transfer_name: str
    explained_variance: tuple[float, float]
    spec: ExperimentSpec | None = None
    off_plane: dict[str, float] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-able: the grid, both loss surfaces, the points and their exact losses, the spec."""
        return {
            "spec": None if self.spec is None else dataclasses.asdict(self.spec),
            "source_name": self.source_name,
            "transfer_name": self.transfer_name,
            "xs": np.asarray(self.xs).tolist(),
            "ys": np.asarray(self.ys).tolist(),
            "source_loss": np.asarray(self.source_loss).tolist(),
            "transfer_loss": np.asarray(self.transfer_loss).tolist(),
            "points": {k: list(v) for k, v in self.points.items()},
            "point_losses": {k: list(v) for k, v in self.point_losses.items()},
            "explained_variance": list(self.explained_variance),
        }


def pca_plane(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, basis and coordinates of the plane through the rows of ``vectors``.

    Args:
        vectors: ``[3, p]`` (any number of rows ≥ 2 works).

    Returns:
        ``(mean [p], basis [2, p] orthonormal rows, coords [rows, 2])`` with
        ``mean + coords @ basis == vectors`` whenever the rows span at most a plane.
    """
    pca = PCA(n_components=2, svd_solver="full")
    coords = pca.fit_transform(vectors)
    return pca.mean_, pca.components_, coords


def _flat(model: nn.Module, names: list[str]) -> np.ndarray:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1).double() for n in names]).numpy()


def _load_flat(model: nn.Module, names: list[str], flat: np.ndarray) -> None:
    params = dict(model.named_parameters())
    offset = 0
    with torch.no_grad():
        for n in names:
            p = params[n]
            p.copy_(torch.from_numpy(flat[offset : offset + p.numel()]).view_as(p).to(p.dtype))
            offset += p.numel()


@torch.no_grad()
def _loss(model: nn.Module, head: nn.Module, x: Tensor, y: Tensor, device, batch_size: int = 128) -> float:
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        total += float(mse_loss(head(model(xb)), yb)) * len(xb)
    return total / len(x)


def compute(
    spec: ExperimentSpec,
    transfer: int,
    *,
    grid: int = 9,
    extent: float = 1.5,
    images_per_task: int = 50,
    progress: StageProgress | None = None,
) -> Landscape:
    """Source and transfer loss over the PCA plane of (θ₀, θ̃₀, θ̃ₛ*).

    Args:
        spec: The experiment: its source, score, sparsity and fine-tuning schedule
            (``spec.finetune`` None means the "short" schedule).
        transfer: Index of the transfer task.
        grid: Evenly spaced points per axis; the three points' own coordinates are added to each
            axis, so the grid has up to ``grid + 3`` lines per axis and holds every point exactly.
        extent: Half-width of the grid along each direction, in units of the
            largest |coordinate| of the three points along it (1.0 = just enclosing
            them); the two axes are scaled separately, so read their units.
        images_per_task: Images per task used for each loss evaluation (speed).
        progress: ``progress(stage, done, total, message)``, one call per grid row.

    Returns:
        A :class:`Landscape` (cached on disk).
    """
    if spec.finetune is None:
        spec = spec.replace(finetune="short")
    if grid < 2:
        raise ValueError(f"grid must be at least 2, got {grid}")
    ctx = prepare(spec, progress)
    suite, device = ctx.suite, ctx.device
    if not 0 <= transfer < len(suite.tasks) or transfer == spec.source:
        raise ValueError(
            f"transfer task must be another task of the suite (0..{len(suite.tasks) - 1}, "
            f"not the source {spec.source}); got {transfer}"
        )
    key = {
        "spec": spec.key_fields(),
        "transfer": transfer,
        "grid": grid,
        "extent": extent,
        "n": images_per_task,
        "points_on_grid": True,
    }

    def build() -> dict:
        mask = get_masks(ctx)
        tuned_state, _ = get_finetuned(ctx, mask)
        model = ctx.encoder.copy().model
        names = [n for n, _ in model.named_parameters()]
        theta0 = _flat(model, names)
        masks.prune_(model, mask)
        theta_pruned = _flat(model, names)
        model.load_state_dict(tuned_state)
        theta_tuned = _flat(model, names)
        mean, basis, coords = pca_plane(np.stack([theta0, theta_pruned, theta_tuned]))
        vectors = {lab: v for lab, v in zip(LABELS, (theta0, theta_pruned, theta_tuned), strict=True)}
        points = {lab: [float(c[0]), float(c[1])] for lab, c in zip(LABELS, coords, strict=True)}
        off_plane = dict.fromkeys(LABELS, 0.0)
        if spec.repair:
            state, _ = transfer_stages.get_repaired(ctx, mask)
            model.load_state_dict(state)
            theta_rep = _flat(model, names)
            c = (theta_rep - mean) @ basis.T
            vectors[REPAIRED_LABEL] = theta_rep
            points[REPAIRED_LABEL] = [float(c[0]), float(c[1])]
            off_plane[REPAIRED_LABEL] = float(np.linalg.norm(theta_rep - mean - c @ basis))
            model.load_state_dict(tuned_state)  # buffers as without the fourth point
        pca_var = np.var(coords, axis=0)
        ev = pca_var / pca_var.sum() if pca_var.sum() > 0 else np.zeros(2)
        coords = np.array(list(points.values()))  # the grid encloses the projected fourth point too
        # One half-width per axis: the pruning step (first direction) is often orders of
        # magnitude longer than the fine-tuning step (second), which a square grid would hide.
        half = extent * np.maximum(np.abs(coords).max(axis=0), 1e-12)
        # The three points' own coordinates join the grid lines, so the surface is evaluated exactly
        # at θ₀, θ̃₀ and θ̃ₛ* (a plain grid can put θ₀ between nodes and draw it off the valley floor).
        xs = np.unique(np.concatenate([np.linspace(-half[0], half[0], grid), coords[:, 0]]))
        ys = np.unique(np.concatenate([np.linspace(-half[1], half[1], grid), coords[:, 1]]))
        data = {}
        for role, k in (("source", spec.source), ("transfer", transfer)):
            x, y = ctx.split(k, "eval")
            sel = np.linspace(0, len(x) - 1, min(images_per_task, len(x))).astype(int)
            data[role] = (x[sel], y[sel], ctx.heads.module(k).to(device))
        model.to(device).eval()
        surf = {"source": np.zeros((len(ys), len(xs))), "transfer": np.zeros((len(ys), len(xs)))}
        for i, b in enumerate(ys):
            for j, a in enumerate(xs):
                _load_flat(model, names, mean + a * basis[0] + b * basis[1])
                for role, (x, y, head) in data.items():
                    surf[role][i, j] = _loss(model, head, x, y, device)
            ctx.progress("landscape", i + 1, len(ys), f"loss grid row {i + 1}/{len(ys)}")
        point_losses = {}
        for label, vec in vectors.items():
            _load_flat(model, names, vec)
            point_losses[label] = [_loss(model, head, x, y, device) for (x, y, head) in data.values()]
        return {
            "xs": xs.tolist(),
            "ys": ys.tolist(),
            "source_loss": surf["source"].tolist(),
            "transfer_loss": surf["transfer"].tolist(),
            "points": points,
            "point_losses": point_losses,
            "off_plane": off_plane,
            "explained_variance": [float(v) for v in ev],
        }

    d = cache.cached_json("landscapes", key, build)
    return Landscape(
        xs=np.asarray(d["xs"]),
        ys=np.asarray(d["ys"]),
        source_loss=np.asarray(d["source_loss"]),
        transfer_loss=np.asarray(d["transfer_loss"]),
        points={k: tuple(v) for k, v in d["points"].items()},
        point_losses={k: tuple(v) for k, v in d["point_losses"].items()},
        source_name=suite.tasks[spec.source].name,
        transfer_name=suite.tasks[transfer].name,
        explained_variance=tuple(d["explained_variance"]),
        spec=spec,
        off_plane=dict(d.get("off_plane", {})),
    )
