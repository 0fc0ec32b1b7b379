"""What pruning does to an encoder's *own* ImageNet predictions, on 20 real ImageNet photos.

``foolbox`` (a requirement) ships 20 real ILSVRC2012 validation photos, labelled by their 1k class
index in the file name (``foolbox/data/imagenet_NN_<label>.jpg``).  Every encoder whose original
ImageNet head is kept (:attr:`pai_core.models.Encoder.classifier`: the offline EfficientNet-Lite0
and MobileNetV2, and timm models) can then be checked end to end: preprocessing at its native size,
its weights, and, with a run's mask applied, how much of its ImageNet competence the pruning left.
It is a sanity check, not a benchmark: 20 images, so one image is 5 percentage points.

Example:
    >>> photos = imagenet_photos()
    >>> len(photos), photos[0].label, photos[0].name
    (20, 243, 'imagenet_00_243.jpg')
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from . import masks as masks_mod
from .errors import DataError
from .models import Encoder
from .results import ExperimentSpec

__all__ = ["Photo", "ImageNetCheck", "imagenet_photos", "classify", "imagenet_check", "for_runs"]

_NAME = re.compile(r"imagenet_(\d+)_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


@dataclass(frozen=True)
class Photo:
    """One labelled ImageNet photo: file name, path and ImageNet-1k class index."""

    name: str
    path: Path
    label: int


@dataclass
class ImageNetCheck:
    """Top-1 correctness of one encoder (dense, or with a mask applied) on the photos.

    Attributes:
        model: Encoder name.
        sparsity: Fraction of scored weights removed (0 for the dense encoder).
        score: The score whose mask was applied (None for the dense encoder).
        correct: Photos classified correctly (top-1).
        total: Photos classified.
        predictions: ``[(file name, true label, predicted label)]`` in file order.
    """

    model: str
    sparsity: float
    correct: int
    total: int
    predictions: list[tuple[str, int, int]] = field(default_factory=list)
    score: str | None = None

    @property
    def accuracy(self) -> float:
        """``correct / total`` (one photo = ``1 / total``, 5 points for the 20 photos)."""
        return self.correct / self.total if self.total else float("nan")


def imagenet_photos(folder: str | Path | None = None) -> list[Photo]:
    """The labelled ImageNet photos of ``folder`` (default: foolbox's ``data/`` folder), in name order.

    Raises:
        DataError: foolbox is not installed, or the folder holds no ``imagenet_NN_<label>.jpg`` file.
    """
    if folder is None:
        spec = importlib.util.find_spec("foolbox")
        if spec is None or spec.origin is None:
            raise DataError("the ImageNet check needs foolbox's 20 photos: pip install foolbox==3.3.4")
        folder = Path(spec.origin).parent / "data"
    folder = Path(folder)
    photos = []
    for p in sorted(folder.glob("*")) if folder.is_dir() else []:
        if m := _NAME.match(p.name):
            photos.append(Photo(p.name, p, int(m.group(2))))
    if not photos:
        raise DataError(f"no ImageNet photos (imagenet_NN_<label>.jpg) found in {folder}")
    return photos


@torch.no_grad()
def classify(
    encoder: Encoder, model: nn.Module | None = None, photos: list[Photo] | None = None
) -> list[tuple[str, int, int]]:
    """Top-1 ImageNet predictions of ``model`` (default: the encoder's own) followed by its ImageNet head.

    Args:
        encoder: Supplies the preprocessing (native input size and normalisation) and the head.
        model: The feature extractor to judge, e.g. a pruned copy of ``encoder.model``.
        photos: Default :func:`imagenet_photos`.

    Returns:
        ``[(file name, true label, predicted label)]``.

    Raises:
        ValueError: The encoder kept no ImageNet head (self-supervised and CLIP encoders have none).
    """
    if encoder.classifier is None:
        raise ValueError(
            f"{encoder.name} has no ImageNet-1k head (self-supervised or CLIP weights), so its own "
            "ImageNet predictions cannot be checked"
        )
    photos = photos if photos is not None else imagenet_photos()
    model = encoder.model if model is None else model
    tf = encoder.transform()
    x = torch.stack([tf(Image.open(p.path).convert("RGB")) for p in photos])
    was = model.training
    model.eval()
    try:
        logits = encoder.classifier.eval()(model(x))
    finally:
        model.train(was)
    pred = logits.argmax(dim=1).tolist()
    return [(p.name, p.label, int(c)) for p, c in zip(photos, pred, strict=True)]


def imagenet_check(
    encoder: Encoder,
    keep_masks: dict[str, torch.Tensor] | None = None,
    *,
    sparsity: float = 0.0,
    score: str | None = None,
) -> ImageNetCheck:
    """Classify the photos with ``encoder`` (dense), or with ``keep_masks`` applied to a copy of it.

    Args:
        encoder: An encoder with its ImageNet head (never mutated).
        keep_masks: ``{parameter name: bool keep-mask}`` of ``encoder.model`` (e.g.
            :func:`pai_core.experiment.load_masks` of a run); None judges the dense encoder.
        sparsity: The masks' sparsity, recorded in the result.
        score: The score that made the masks, recorded in the result.

    Example:
        >>> from pai_core.experiment import get_encoder
        >>> enc = get_encoder("efficientnet_lite0")
        >>> imagenet_check(enc).correct
        18
    """
    model = None
    if keep_masks is not None:
        model = masks_mod.prune_(encoder.copy().model, keep_masks)
    preds = classify(encoder, model)
    correct = sum(int(t == p) for _, t, p in preds)
    return ImageNetCheck(encoder.name, float(sparsity), correct, len(preds), preds, score)


def for_runs(specs: Sequence[ExperimentSpec]) -> list[ImageNetCheck]:
    """The ImageNet check of one model, dense and with the mask of each run (one per score and sparsity).

    The masks are the runs' own (:func:`pai_core.experiment.load_masks`: read from the cache,
    computed when missing), so the check shows what the pruning chosen on the source task did to
    the encoder's ImageNet competence.

    Args:
        specs: Runs of one encoder (the first one's model and checkpoint are used).

    Returns:
        The dense check first, then one per distinct (score, sparsity), in the given order.

    Raises:
        ValueError: No specs, specs of several models, or an encoder without an ImageNet head.
    """
    from .experiment import get_encoder, load_masks  # the experiment stack, only when asked

    if not specs:
        raise ValueError("no runs to check")
    if len({(s.model, s.checkpoint) for s in specs}) > 1:
        raise ValueError("the ImageNet check compares runs of one encoder; these name several")
    enc = get_encoder(specs[0].model, specs[0].checkpoint)
    out = [imagenet_check(enc)]
    seen: set[tuple] = set()
    for s in specs:
        ident = (s.score, s.score_options, s.sparsity, s.source)
        if ident in seen:
            continue
        seen.add(ident)
        out.append(imagenet_check(enc, load_masks(s), sparsity=s.sparsity, score=s.score))
    return out
