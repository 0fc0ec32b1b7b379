"""What a from-scratch PaI run is and what it returns (plain dataclasses; importing this needs no torch).

The scalable second-order paper's own protocol (Gollini Navarrete et al., 2025, arXiv
2502.11450; code github.com/Gollini/Scalable_Second_Order_PaI): initialise a network from a
seed, optionally warm up its BatchNorm statistics, score its weights on a few labelled examples,
prune once to a global sparsity, train the sparse network from scratch with the mask kept
applied, report test accuracy.  :class:`ScratchSpec` says everything that determines one run,
:class:`ScratchResult` is what :func:`pai_core.scratch.run_scratch` returns and caches,
:class:`TrainSchedule` / :data:`SCHEDULES` are the training recipes, each labelled.

Kept torch-free so figures, the results store and the dashboard can read results without the
engine.  Names of networks, datasets and scores are checked by
:func:`pai_core.scratch.validate` (their registries need torch).

Example:
    >>> spec = ScratchSpec(score="snip", sparsity=0.98, bn_warmup="paper")
    >>> ScratchSpec.from_json(spec.to_json()) == spec
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BN_WARMUPS",
    "MASK_SCOPES",
    "PRUNE_LAYERS",
    "EXTREME_SPARSITIES",
    "PAPER_SCORES",
    "DATA_FREE_SCORES",
    "RESULT_VERSION",
    "TrainSchedule",
    "SCHEDULES",
    "schedule",
    "ScratchSpec",
    "ScratchResult",
]

#: BatchNorm warm-up before scoring.  ``"off"``: none (the statistics stay at their initial
#: mean 0, variance 1, so eval-mode scoring sees un-normalised activations); ``"paper"``: one
#: train-mode pass over the training set updating the running statistics with momentum 0.1,
#: no reset (the authors' ``warmup_step``); ``"reset"``: reset the statistics, then one pass
#: with a cumulative average (:func:`pai_core.scores.warmup_batchnorm`, this project's own
#: variant for the transfer protocol).
BN_WARMUPS = ("off", "paper", "reset")
#: How the pruning budget is spread: one global threshold (the paper) or the same sparsity per layer.
MASK_SCOPES = ("global", "layerwise")
#: Which weights a mask covers: Conv weights only (the paper's code keeps the final linear layer,
#: biases and BatchNorm dense) or Conv and Linear weights.
PRUNE_LAYERS = ("conv", "conv+linear")
#: Sparsities where PaI criteria separate (log-spaced in remaining density: 10 %, 5 %, 2 %, 1 %, 0.5 %).
EXTREME_SPARSITIES = (0.9, 0.95, 0.98, 0.99, 0.995)
#: The criteria the paper compares, by this project's score names, in display order (a name
#: missing from :func:`pai_core.scores.available` is skipped; ``synflow`` joins when registered).
#: ``diag`` is the paper's FP (θ²·diag Fisher), ``fisher_taylor`` its FTS, ``hutchinson`` its HP.
PAPER_SCORES = ("random", "magnitude", "synflow", "snip", "grasp", "diag", "fisher_taylor", "hutchinson")
#: Scores that look at no data: the BatchNorm warm-up cannot change their mask.
DATA_FREE_SCORES = ("random", "magnitude", "synflow")
#: Bump when the meaning of a result changes (keeps stale results out of caches and stores).
RESULT_VERSION = 1


@dataclass(frozen=True)
class TrainSchedule:
    """One training recipe (SGD with momentum, cross-entropy), labelled wherever it is used.

    Attributes:
        name: Registry name.
        label: What it is, shown next to every number it produced.
        epochs: Passes over the training set.
        batch_size: Mini-batch size (also the warm-up's batch size).
        lr: Initial step size.
        momentum, weight_decay, nesterov: SGD settings (weight decay on every parameter).
        lr_schedule: ``"step"`` (× ``gamma`` at each of ``milestones``, in epochs) or
            ``"cosine"`` (to 0 over ``epochs``), stepped once per epoch.
        milestones, gamma: For ``"step"``.
        augment: Use the dataset's training augmentation (CIFAR: crop + flip; Fashion-MNIST: none).
    """

    name: str
    label: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    lr_schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"schedule {self.name!r}: epochs, batch_size and lr must be positive")
        if self.lr_schedule not in ("step", "cosine"):
            raise ValueError(f"schedule {self.name!r}: lr_schedule must be 'step' or 'cosine'")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))


#: Named schedules.  ``paper`` is for GPUs; ``cpu-short`` and ``smoke`` are CPU deviations, labelled.
SCHEDULES: dict[str, TrainSchedule] = {
    "paper": TrainSchedule(
        name="paper",
        label="paper (GPU): 160 epochs, SGD lr 0.03, momentum 0.9, wd 5e-4, batch 512, "
        "lr x0.2 at epochs 80 and 120, crop+flip on CIFAR",
        epochs=160,
        batch_size=512,
        lr=0.03,
        momentum=0.9,
        weight_decay=5e-4,
        lr_schedule="step",
        milestones=(80, 120),
        gamma=0.2,
        augment=True,
    ),
    "cpu-short": TrainSchedule(
        name="cpu-short",
        label="CPU short (deviation): 3 epochs, SGD lr 0.05 cosine, momentum 0.9, wd 5e-4, batch 128, "
        "no augmentation",
        epochs=3,
        batch_size=128,
        lr=0.05,
        lr_schedule="cosine",
        augment=False,
    ),
    "smoke": TrainSchedule(
        name="smoke",
        label="smoke test (deviation): 1 epoch, SGD lr 0.05, batch 64",
        epochs=1,
        batch_size=64,
        lr=0.05,
        lr_schedule="cosine",
        augment=False,
    ),
}


def schedule(name: str) -> TrainSchedule:
    """A named schedule; unknown name → ``ValueError`` listing the valid ones."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]


def _choice(field_name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{field_name} must be one of {', '.join(valid)}; got {value!r}")


def _positive_or_none(field_name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{field_name} must be a positive integer or None, got {value!r}")


@dataclass(frozen=True)
class ScratchSpec:
    """Everything that determines one prune-at-init-then-train-from-scratch run.

    Attributes:
        model: Network name (:func:`pai_core.nets.available`).
        width: Channel multiplier of the network.
        init: Initialisation (:data:`pai_core.nets.INITS`).
        dataset: Dataset name (:func:`pai_core.datasets.available`).
        data_root: Folder for datasets that need one (CIFAR); ``None`` for Fashion-MNIST's default.
        train_size: Balanced subset of the training set (``None``: all of it).
        test_size: Balanced subset of the test set (``None``: all of it).
        score: Pruning criterion (:func:`pai_core.scores.available`).
        score_options: Extra options of the score as sorted ``(key, value)`` pairs.
        score_per_class: Labelled training examples per class that data-driven scores see
            (the paper's code: 10, i.e. 100 images for CIFAR-10).
        sparsity: Fraction of the covered weights removed, in ``[0, 1)``; 0 trains the dense network.
        mask_scope: One of :data:`MASK_SCOPES`.
        prune_layers: One of :data:`PRUNE_LAYERS`.
        bn_warmup: One of :data:`BN_WARMUPS`.
        seed: Seed of the initial weights, the data subsets, the scoring examples, the random
            score and Hutchinson probes (unless given in ``score_options``), and the batch order.
        schedule: Training recipe (:data:`SCHEDULES`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; not part of the cache key.
    """

    model: str = "resnet20"
    width: float = 1.0
    init: str = "kaiming_normal"
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    score: str = "diag"
    score_options: tuple[tuple[str, Any], ...] = ()
    score_per_class: int = 10
    sparsity: float = 0.9
    mask_scope: str = "global"
    prune_layers: str = "conv"
    bn_warmup: str = "off"
    seed: int = 0
    schedule: str = "cpu-short"
    device: str = "auto"

    def __post_init__(self) -> None:
        if not (isinstance(self.sparsity, int | float) and 0.0 <= self.sparsity < 1.0):
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if not (isinstance(self.width, int | float) and math.isfinite(self.width) and self.width > 0):
            raise ValueError(f"width must be a positive number, got {self.width!r}")
        _choice("mask_scope", self.mask_scope, MASK_SCOPES)
        _choice("prune_layers", self.prune_layers, PRUNE_LAYERS)
        _choice("bn_warmup", self.bn_warmup, BN_WARMUPS)
        _choice("schedule", self.schedule, tuple(SCHEDULES))
        _positive_or_none("train_size", self.train_size)
        _positive_or_none("test_size", self.test_size)
        _positive_or_none("score_per_class", self.score_per_class)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        # Normalise so equal specs hash equally whatever form or order they were given in.
        object.__setattr__(self, "sparsity", float(self.sparsity))
        object.__setattr__(self, "width", float(self.width))
        opts = self.score_options.items() if isinstance(self.score_options, dict) else self.score_options
        object.__setattr__(self, "score_options", tuple(sorted((str(k), v) for k, v in opts)))

    @property
    def density(self) -> float:
        """Fraction of the covered weights kept (``1 − sparsity``)."""
        return 1.0 - self.sparsity

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["score_options"] = [list(kv) for kv in self.score_options]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> ScratchSpec:
        """Inverse of :meth:`to_json` (also accepts the dict of :meth:`to_dict`)."""
        d = json.loads(text) if isinstance(text, str) else dict(text)
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown ScratchSpec field(s) {unknown}")
        d["score_options"] = tuple(tuple(kv) for kv in d.get("score_options", ()))
        return cls(**d)

    def replace(self, **changes: Any) -> ScratchSpec:
        return dataclasses.replace(self, **changes)

    def key(self) -> str:
        """Stable identity of the run (``"scratch-<24 hex>"``): the device is left out, as it
        does not change what is computed; :data:`RESULT_VERSION` is in."""
        from . import cache  # lazily: keeps this module torch-free at import

        return cache.spec_key("scratch", {**self.to_dict(), "device": None, "v": RESULT_VERSION})


@dataclass
class ScratchResult:
    """What one run produced.

    Accuracies are fractions in ``[0, 1]``.  ``final_acc`` is the test accuracy after the last
    epoch (the headline number).  ``best_acc`` is the highest per-epoch test accuracy: the
    paper's code also reports this ("best val" with the test set as validation set), which picks
    the epoch on the test set and is optimistic; it is kept for comparison only.

    Attributes:
        spec: The run.
        final_acc: Test accuracy after training.
        best_acc, best_epoch: Highest per-epoch test accuracy and its epoch (1-based).
        curve: One dict per epoch: ``epoch``, ``lr``, ``train_loss``, ``train_acc``,
            ``test_loss``, ``test_acc``.
        layer_density: One dict per covered weight tensor, in network order: ``name``,
            ``numel``, ``kept``, ``density``.
        collapsed_layers: Covered tensors with no weight kept.
        kept, total: Covered weights kept and in all.
        pruned_nonzero: Pruned weights not exactly zero after training (a check; must be 0).
        schedule: The :class:`TrainSchedule` as a dict.
        train_examples, test_examples, score_examples: Data sizes actually used.
        timings: Wall-clock seconds per stage (``total`` for the whole run, ``epoch`` the mean
            epoch), and ``cpu``: CPU seconds of the process over the whole run.
        notes: Deviations and warnings to show with the numbers.
        device: Where it ran.
        cached: Read from the cache rather than computed now.
    """

    spec: ScratchSpec
    final_acc: float
    best_acc: float
    best_epoch: int
    curve: list[dict[str, float]]
    layer_density: list[dict[str, Any]]
    collapsed_layers: list[str]
    kept: int
    total: int
    pruned_nonzero: int
    schedule: dict[str, Any]
    train_examples: int
    test_examples: int
    score_examples: int
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"
    cached: bool = False

    @property
    def density(self) -> float:
        """Fraction of covered weights kept (measured on the mask)."""
        return self.kept / self.total if self.total else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spec"] = self.spec.to_dict()
        d["version"] = RESULT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScratchResult:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: Written by another :data:`RESULT_VERSION`.
        """
        d = dict(d)
        version = d.pop("version", None)
        if version != RESULT_VERSION:
            raise ValueError(f"result format {version!r} is not {RESULT_VERSION}")
        d["spec"] = ScratchSpec.from_json(d["spec"])
        return cls(**d)
