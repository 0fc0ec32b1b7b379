"""Preprocessed inputs, batched feature extraction, device choice.

Inputs are preprocessed once per (task, transform) and kept in memory on the
task's :class:`~pai_core.tasks.ImageSet`; dense-encoder features are cached on
disk per (model weights, suite data, task, image size), so a second run of any
experiment never touches the dense encoder again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from . import cache
from .models import Encoder
from .tasks import DataError, Task, TaskSuite
from .validate import check_device

if TYPE_CHECKING:
    from .results import Progress

__all__ = ["pick_device", "device_label", "task_inputs", "extract", "dense_features"]


def _quiet(done: int, total: int, message: str) -> None:
    pass


def pick_device(requested: str | None = "auto") -> torch.device:
    """``"auto"`` → CUDA when present, else CPU; ``"cuda"`` without a GPU or an unknown name raises ValueError."""
    requested = check_device(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no GPU is visible to PyTorch; use 'auto' or 'cpu'")
    return dev


def device_label(device: torch.device | str | None = None) -> str:
    """Human-readable name of the device in use ("NVIDIA H100 … (cuda:0)" or "CPU, 2 threads")."""
    dev = pick_device(None if device is None else str(device))
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({dev})"
    return f"CPU, {torch.get_num_threads()} threads"


def task_inputs(
    task: Task, encoder: Encoder, image_size: int | None = None, progress: Progress | None = None
) -> tuple[Tensor, Tensor]:
    """Preprocessed images ``[n, 3, S, S]`` and labels ``[n]`` of a task (unreadable images dropped).

    Cached in memory on the task's image set, per transform.

    Raises:
        DataError: Every image of the task is unreadable, or a class kept fewer than
            :data:`pai_core.tasks.MIN_READABLE` readable images (the message names it and the files).
    """
    key = (image_size or encoder.input_size, encoder.mean, encoder.std, encoder.crop_pct)
    store = task.images.__dict__.setdefault("_inputs", {})
    if key in store:
        return store[key]
    progress = progress or _quiet
    tf = encoder.transform(image_size)
    xs, keep = [], []
    n = len(task.images)
    for i in range(n):
        im = task.images.load(i)
        if im is not None:
            xs.append(tf(im))
            keep.append(i)
        if i % 64 == 63 or i == n - 1:
            progress(i + 1, n, f"reading images of {task.name}")
    if not xs:
        raise DataError(
            f"task {task.name!r}: none of its {n} images could be read (e.g. {task.images.unreadable[:2]})"
        )
    task.check_readable(keep)  # a class that lost its images must not vanish from the task
    out = (torch.stack(xs), torch.as_tensor(task.labels[np.asarray(keep)], dtype=torch.long))
    store[key] = out
    return out


@torch.no_grad()
def extract(
    model: nn.Module,
    inputs: Tensor,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    message: str = "features",
) -> Tensor:
    """φ(x) for every row of ``inputs``, batched, in eval mode; float32 on the CPU.

    The model is moved to ``device`` for the call and its train/eval mode restored.
    """
    progress = progress or _quiet
    device = torch.device(device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(inputs), batch_size):
            xb = inputs[start : start + batch_size].to(device, non_blocking=True)
            out.append(model(xb).float().cpu())
            progress(min(start + batch_size, len(inputs)), len(inputs), message)
    finally:
        model.train(was_training)
    return torch.cat(out)


def dense_features(
    encoder: Encoder,
    suite: TaskSuite,
    task_index: int,
    *,
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: Progress | None = None,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor]:
    """Features and labels of one task under the *dense* encoder, cached on disk."""
    task = suite.tasks[task_index]
    spec = {
        "model": encoder.name,
        "weights": encoder.weights_id,
        "data": suite.identity(),
        "task": task_index,
        "image_size": image_size or encoder.input_size,
    }

    def compute() -> dict[str, Tensor]:
        x, y = task_inputs(task, encoder, image_size, progress)
        model = encoder.model.to(device)
        try:
            phi = extract(
                model,
                x,
                batch_size=batch_size,
                device=device,
                progress=progress,
                message=f"dense features of {task.name}",
            )
        finally:
            encoder.model.to("cpu")
        return {"features": phi, "labels": y}

    out = cache.cached_tensors("features", spec, compute, enabled=use_cache)
    return out["features"], out["labels"]
