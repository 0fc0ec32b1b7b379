"""Reference points for reading an accuracy figure: chance, held-out dense accuracy, sample size.

The paper fits each task's ridge head and measures its accuracy on the *same* images (Sec. 3.3).
With a few hundred images and a 1,280- or 2,048-dimensional feature space, a ridge head can fit
almost any labelling, so the dense encoder reads 100 % whatever its features are worth, and every
pruned bar reads as a fall from a perfect model.  This module gives the numbers that put a bar in
context:

* :func:`chance_levels`: 1 / #classes, the accuracy of guessing (mean over the transfer tasks);
* :func:`heldout_dense`: the dense encoder's accuracy with heads fitted on one half of each task
  and measured on the other half (from the cached dense features: one ridge fit per task);
* :func:`few_images_warning`: a sentence when the images a head is fitted on are few against the
  feature dimension (n ≤ h: the head can interpolate its fit images).

Example:
    >>> from pai_core.results import ExperimentResult, ExperimentSpec, TaskResult
    >>> res = ExperimentResult(ExperimentSpec(), [TaskResult("a", "source", 1.0, 0.9, num_classes=5),
    ...                                           TaskResult("b", "transfer", 1.0, 0.5, num_classes=2)], None)
    >>> chance_levels(res)
    {'source': 0.2, 'transfer': 0.5}
    >>> few_images_warning(images_per_task=100, feature_dim=1280)[:39]
    'Each head is fitted on 100 images in a '
"""

from __future__ import annotations

from collections.abc import Sequence

from .results import ExperimentResult, ExperimentSpec

__all__ = ["chance_levels", "heldout_dense", "heldout_dense_means", "few_images_warning", "fit_images"]


def _task_classes(result: ExperimentResult) -> list[int | None]:
    out = [t.num_classes for t in result.tasks]
    if all(c is not None for c in out):
        return out
    # Results recorded before tasks carried their class count: read the suite's (cheap offline;
    # None when its data is gone).
    try:
        from .experiment import get_suite

        s = result.spec
        suite = get_suite(s.suite, s.data_root, s.images_per_class, s.seed)
        by_name = {t.name: t.num_classes for t in suite.tasks}
        return [by_name.get(t.task) for t in result.tasks]
    except Exception:  # noqa: BLE001 - no data, no chance line; the figure says so
        return out


def chance_levels(result: ExperimentResult) -> dict[str, float | None]:
    """Chance accuracy ``1 / C`` of the source task and the mean over the transfer (and cross-domain) tasks.

    Returns:
        ``{"source": …, "transfer": …}`` (fractions), and ``"cross-domain"`` for a run with a
        transfer suite; None where the class counts are unknown or the role has no task.
    """
    classes = _task_classes(result)
    out: dict[str, float | None] = {}
    roles = ("source", "transfer") + (
        ("cross-domain",) if any(t.role == "cross-domain" for t in result.tasks) else ()
    )
    for role in roles:
        cs = [c for t, c in zip(result.tasks, classes, strict=True) if t.role == role]
        out[role] = sum(1.0 / c for c in cs) / len(cs) if cs and all(c for c in cs) else None
    return out


def heldout_dense(spec: ExperimentSpec) -> list[float]:
    """Dense accuracy per task with heads fitted on one half of each task and measured on the other.

    Reuses the cached dense features of ``spec``'s encoder and suite (the split does not change
    them): the cost is one ridge fit per task.  The split is :func:`pai_core.evaluate.split_indices`
    (stratified, seeded by ``spec.seed``), the same one ``--holdout`` runs use.

    Raises:
        ValueError: A class has fewer than 2 images (nothing to hold out).
    """
    from .experiment import prepare  # torch

    return list(prepare(spec.replace(holdout=True)).heads.dense)


def heldout_dense_means(spec: ExperimentSpec) -> dict[str, float | None]:
    """:func:`heldout_dense` as ``{"source": …, "transfer": mean over the transfer tasks}``."""
    accs = heldout_dense(spec)
    transfer = [a for k, a in enumerate(accs) if k != spec.source]
    return {"source": accs[spec.source], "transfer": sum(transfer) / len(transfer) if transfer else None}


def fit_images(result: ExperimentResult, class_counts: Sequence[int] | None = None) -> int | None:
    """Images the source head is fitted on: all of them, or half with ``holdout`` (None when unknown)."""
    per_class = result.spec.images_per_class
    src = next((t for t in result.tasks if t.role == "source"), None)
    classes = (class_counts or [None])[0] if src is None else src.num_classes
    if per_class is None or not classes:
        return None
    n = per_class * classes
    return n // 2 if result.spec.holdout else n


def few_images_warning(images_per_task: int | None, feature_dim: int | None) -> str | None:
    """A warning when a head's fit images are few against the feature dimension, else None.

    With ``n`` images and ``h ≥ n`` features, a ridge head (α = 1) can fit any labelling of its fit
    images almost exactly, so accuracy measured on those same images says little about the encoder.

    Args:
        images_per_task: Images a head is fitted on (``n``).
        feature_dim: The encoder's feature dimension (``h``).
    """
    if not images_per_task or not feature_dim or images_per_task > feature_dim:
        return None
    return (
        f"Each head is fitted on {images_per_task} images in a {feature_dim}-dimensional feature space "
        f"(n ≤ h): a ridge head can fit almost any labelling of so few images, so the dense accuracy "
        "measured on its own fit images is near 100 % whatever the features are worth. Read the "
        "held-out dense accuracy for what the features carry, or use more images per class."
    )
