"""The settings a first run starts from, per model: the one place the pages and the CLI read them.

A default must *show* something: the paper's sparsities (36 … 83 %) suit ResNet-50 and ViT-B/16,
but the two offline mobile encoders are dead long before (measured with
``bench/bench_defaults.py``, Fashion-MNIST, 20 images per class, global magnitude, zero-shot;
README "Defaults"):

=================  =========  ==============  ============  ===============
model              sparsity   source / trans  ImageNet 20   verdict
=================  =========  ==============  ============  ===============
EfficientNet-Lite0 30 %       100 / 100 %     17/20         holds
EfficientNet-Lite0 47.52 %    62 / 75 %       0/20          breaking
EfficientNet-Lite0 59.04 %    43 / 43 %       0/20          broken
MobileNetV2        20 %       100 / 100 %     18/20         holds
MobileNetV2        36 %       83 / 33 %       10/20         breaking
MobileNetV2        47.52 %    29 / 35 %       0/20          broken (chance 20 %)
=================  =========  ==============  ============  ===============

So each mobile model gets a grid from 10 % to 59.04 % and a default selection that spans where it
holds and where it breaks; the paper's models keep the paper's seven levels.  The defaults were
chosen from where the models break, not from whether the paper's predictions then hold: where
they do not (MobileNetV2's transfer tasks fall much further than its source), the page says so.

Fine-tuning is on by default.  On a GPU it is the paper's schedule; on a CPU the ``cpu`` schedule
of :data:`pai_core.finetune.SCHEDULES` (the paper's optimiser, 5 epochs, lr 3e-4; measured safe on
both offline models, where the older ``short`` schedule's lr 1e-3 was reported to diverge).

Example:
    >>> for_model("mobilenet_v2").cpu_selection
    (0.2, 0.36, 0.4752)
    >>> for_model("resnet50").sparsities == PAPER_SPARSITIES
    True
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .masks import PAPER_SPARSITIES

__all__ = [
    "PAPER_SPARSITIES",
    "MOBILE_SPARSITIES",
    "CPU_SCHEDULE",
    "ModelDefaults",
    "for_model",
    "suite",
    "schedule",
    "images_per_class",
    "scores",
    "landscape_grid",
]

#: The grid offered for the offline mobile encoders: where they hold (10-30 %) to where they are
#: dead (47.52 %, 59.04 %), with the paper's two lowest levels included for comparison.
MOBILE_SPARSITIES = (0.10, 0.20, 0.30, 0.36, 0.40, 0.4752, 0.5904)

#: Fine-tuning schedule of a CPU-only machine (see :data:`pai_core.finetune.SCHEDULES`).
CPU_SCHEDULE = "cpu"


@dataclass(frozen=True)
class ModelDefaults:
    """What a first run of one model starts from.

    Attributes:
        model: Registry name.
        sparsities: The levels offered (fractions), in increasing order.
        cpu_selection: Levels selected by default on a CPU (few: each is a fine-tuning run).
        gpu_selection: Levels selected by default on a GPU.
        landscape_sparsity: The Fig. 4 default (the paper: 66.42 % for ResNets, 47.52 % for ViTs).
        why: The measurement behind the choice, one sentence, for captions.
        spec_options: Protocol options (``ExperimentSpec`` fields) to preset for this model where a
            page offers them, e.g. a mask option that matters for depthwise networks; a field the
            spec does not have is ignored.  Empty: every option at the paper's default.
    """

    model: str
    sparsities: tuple[float, ...]
    cpu_selection: tuple[float, ...]
    gpu_selection: tuple[float, ...]
    landscape_sparsity: float
    why: str
    spec_options: Mapping[str, Any] = field(default_factory=dict)

    def selection(self, gpu: bool) -> tuple[float, ...]:
        """The levels selected by default on this machine."""
        return self.gpu_selection if gpu else self.cpu_selection


_PAPER = ModelDefaults(
    model="",
    sparsities=PAPER_SPARSITIES,
    cpu_selection=(0.36, 0.5904, 0.8322),
    gpu_selection=PAPER_SPARSITIES,
    landscape_sparsity=0.6642,
    why="the paper's seven levels (Fig. 3)",
)

_MODELS: dict[str, ModelDefaults] = {
    "efficientnet_lite0": ModelDefaults(
        model="efficientnet_lite0",
        sparsities=MOBILE_SPARSITIES,
        cpu_selection=(0.30, 0.4752, 0.5904),
        gpu_selection=MOBILE_SPARSITIES,
        landscape_sparsity=0.4752,
        why=(
            "measured on Fashion-MNIST: global magnitude pruning leaves it intact up to 30 % "
            "(ImageNet check 17/20), breaking at 47.52 % (0/20) and near chance-level use at 59.04 %"
        ),
    ),
    "mobilenet_v2": ModelDefaults(
        model="mobilenet_v2",
        sparsities=MOBILE_SPARSITIES,
        cpu_selection=(0.20, 0.36, 0.4752),
        gpu_selection=MOBILE_SPARSITIES,
        landscape_sparsity=0.36,
        why=(
            "measured on Fashion-MNIST: global magnitude pruning leaves it intact up to 20 % "
            "(ImageNet check 18/20), breaking at 36 % (10/20) and dead at 47.52 % (0/20)"
        ),
    ),
}


def for_model(name: str) -> ModelDefaults:
    """The defaults of a model (the paper's levels for any model not measured here)."""
    if name in _MODELS:
        return _MODELS[name]
    return ModelDefaults(
        name,
        _PAPER.sparsities,
        _PAPER.cpu_selection,
        _PAPER.gpu_selection,
        _PAPER.landscape_sparsity,
        _PAPER.why,
    )


@functools.lru_cache(maxsize=1)
def suite() -> str:
    """``"fashion-mnist"`` where Debian's Fashion-MNIST is installed, else ``"digits"``.

    Fashion-MNIST's photos of clothing behave like natural images for ImageNet encoders; the 8x8
    digits upscaled to 112 px leave 11.6 % of EfficientNet-Lite0's channels dead (issue 12), so
    they are the fallback that always works offline.
    """
    from .tasks import DataError, load_suite

    try:
        load_suite("fashion-mnist", images_per_class=2)
    except DataError:
        return "digits"
    return "fashion-mnist"


def schedule(gpu: bool) -> str:
    """The paper's fine-tuning schedule on a GPU, :data:`CPU_SCHEDULE` on a CPU."""
    return "paper" if gpu else CPU_SCHEDULE


def images_per_class(gpu: bool) -> int:
    """The paper's 50 images per class on a GPU; 20 on a CPU (each run then takes about a minute)."""
    return 50 if gpu else 20


def scores() -> list[str]:
    """The scores a first run compares: magnitude (H ≈ I) and the diagonal Hessian (the paper's pair)."""
    return ["magnitude", "diag"]


def landscape_grid(gpu: bool) -> int:
    """Points per axis of the Fig. 4 grid (at least 9, as the issue asks; 15 on a GPU)."""
    return 15 if gpu else 9
