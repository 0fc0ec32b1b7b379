"""What an experiment is and what it returns, without torch: specs, per-task results, progress.

:class:`ExperimentSpec` is a frozen, JSON-serialisable description of a run (its :meth:`key`
names the result everywhere: cache, results store, sweeps); :class:`ExperimentResult` is what
:func:`pai_core.experiment.run` returns and :class:`pai_core.store.ResultsStore` keeps.  This
module imports no torch, so reading results (the store, tables, reports) needs no GPU stack; the
score, loss and schedule registries that a spec is checked against are imported when a spec is
built.

Example:
    >>> spec = ExperimentSpec(score="kfac", score_options={"damping": 0.01}, sparsity=0.5904)
    >>> ExperimentSpec.from_json(spec.to_json()) == spec, spec.key().startswith("results-")
    (True, True)
    >>> res = ExperimentResult(spec, [TaskResult("a", "source", 0.9, 0.8), TaskResult("b", "transfer", 0.7, 0.5)], None)
    >>> res.mean_source_zero_shot, res.mean_transfer_zero_shot
    (0.8, 0.5)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import cache
from .validate import check_device, parse_sparsity

__all__ = [
    "Progress",
    "StageProgress",
    "RESULT_VERSION",
    "SUMMARY_COLUMNS",
    "SpecOption",
    "spec_options",
    "ROLES",
    "REPAIR_FORMS",
    "ExperimentSpec",
    "TaskResult",
    "ExperimentResult",
]

#: ``progress(done, total, message)`` of one stage (features, scores, fine-tuning, …).
Progress = Callable[[int, int, str], None]

#: ``progress(stage, done, total, message)`` of a whole run; stages: "data", "features",
#: "scores", "zero-shot", "fine-tune", "evaluate", "landscape", "done".
StageProgress = Callable[[str, int, int, str], None]

#: Bump when the meaning of a result changes (keeps stale results out of the store).
#: 2: ties broken by magnitude; GraSP's temperature, Hutchinson's per-example probes and PX's
#: BatchNorm folding by default; every score option resolved in the key.
RESULT_VERSION = 2

#: Roles of a task in a run → the prefix of its summary columns: the source, the other tasks of the
#: source's suite, and the tasks of ``spec.transfer_suite`` (another data set: cross-domain).
ROLES = {"source": "source", "transfer": "transfer", "cross-domain": "cross"}

#: Accuracies of a task: dense, zero-shot (pruned), fine-tuned on the source, OBS-corrected.
_KINDS = ("dense", "zero_shot", "finetuned", "repaired")

#: The means of :meth:`ExperimentResult.summary`: (source, transfer, cross-domain) × (dense,
#: zero-shot, fine-tuned, OBS-corrected) accuracy; one column each in the results store and in
#: tables (None where a run has no such task or stage).
SUMMARY_COLUMNS = tuple(f"{prefix}_{kind}" for prefix in ROLES.values() for kind in _KINDS)

#: OBS repair forms (= :func:`pai_core.repair.available_forms`, written out because repair imports
#: torch; a test holds the two equal).
REPAIR_FORMS = ("a", "kfac")

#: Spec fields added after results were first keyed, with the value they had implicitly before:
#: at that value they stay out of :meth:`ExperimentSpec.key`, so earlier results keep their keys.
_LATER_FIELDS = {"repair": None, "repair_damping": 1e-2, "transfer_suite": None, "transfer_data_root": None}


@dataclass(frozen=True)
class SpecOption:
    """How one :class:`ExperimentSpec` field is offered to users: the one declaration from which the
    CLI flag (``--rounds``), the sweep-file key (``rounds:``) and the dashboard's widget (in the
    Prune page's "advanced options") are made, and against which values are checked.

    Attributes:
        label: Widget label.
        help: One or two sentences for ``--help``, sweep docs and the widget's tooltip.
        type: ``str``, ``int`` or ``bool``.
        choices: Allowed values of a ``str`` option (the first is not necessarily the default).
        min, max: Inclusive bounds of an ``int`` option (None: unbounded).
        none: What ``None`` means, for a field that may be None (None: not allowed).
    """

    label: str
    help: str
    type: type = str
    choices: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None
    none: str | None = None

    def check(self, name: str, value: Any) -> Any:
        """``value`` as this option's type; ValueError naming the field and the valid values.

        Example:
            >>> SpecOption("Rounds", "…", int, min=1).check("rounds", 3)
            3
            >>> SpecOption("Scope", "…", str, ("global", "layerwise")).check("mask_scope", "per-block")
            Traceback (most recent call last):
            ...
            ValueError: mask_scope must be one of 'global', 'layerwise'; got 'per-block'
        """
        if value is None:
            if self.none is None:
                raise ValueError(f"{name} may not be None")
            return None
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            value = int(value)
            if self.min is not None and value < self.min:
                raise ValueError(f"{name} must be >= {self.min}, got {value}")
            if self.max is not None and value > self.max:
                raise ValueError(f"{name} must be <= {self.max}, got {value}")
            return value
        if value not in self.choices:
            valid = ", ".join(repr(c) for c in self.choices)
            raise ValueError(f"{name} must be one of {valid}; got {value!r}")
        return value


def _option(default: Any, label: str, help: str, type: type = str, **kw: Any) -> Any:
    return field(default=default, metadata={"option": SpecOption(label, help, type, **kw)})


def spec_options() -> dict[str, tuple[SpecOption, Any]]:
    """``{field name: (SpecOption, default)}`` of every :class:`ExperimentSpec` field users set
    through a generated flag, sweep key or widget, in field order.

    Example:
        >>> list(spec_options())
        ['mask_scope', 'prune_layers', 'bn_aware', 'rounds', 'ridge', 'bn_warmup_mode']
    """
    return {
        f.name: (f.metadata["option"], f.default)
        for f in dataclasses.fields(ExperimentSpec)
        if "option" in f.metadata
    }


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that determines one experiment.

    Attributes:
        model: Encoder registry name (see :func:`pai_core.models.available`).
        suite: Task-suite registry name.
        source: Index of the source task in the suite.
        score: Pruning score name (see :func:`pai_core.scores.available`).
        score_options: Options of the score (:attr:`pai_core.scores.ScoreInfo.options`), as sorted
            ``(key, value)`` pairs; checked against the score's metadata.
        sparsity: Fraction of scored weights removed (0 ≤ q < 1), counted over *all* scored
            weights whatever ``prune_layers`` says.
        mask_scope, prune_layers, bn_aware, rounds, ridge, bn_warmup_mode: The protocol's options,
            each declared once with its :class:`SpecOption` (``spec_options()``; the help is there).
        images_per_class: Data subset per class (the paper: 50); None keeps all.
        finetune: Schedule name (``"paper"``, ``"short"``, ``"smoke"``) or None for zero-shot only.
        holdout: Fit heads on one half of each task and evaluate on the other (deviation from the paper).
        alpha: Ridge regularisation α (the paper: 1).
        loss: Loss the data-driven scores differentiate: ``"mse"`` (the paper) or ``"ce"``.
        seed: Seed for subsets, random scores, probes and mini-batch order.
        image_size: Encoder input size; None → the suite's preference, else the encoder's own.
        data_root: Folder for suites that read one.
        checkpoint: Local checkpoint file for the encoder (offline use of hub models).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``; not part of cache keys.
        repair: OBS-correct the pruned encoder with the source's curvature (no SGD;
            :mod:`pai_core.repair`): ``"a"`` (layer reconstruction, exact, the default form) or
            ``"kfac"`` (the K-FAC block, iterative); None: no OBS-corrected stage.
        repair_damping: Relative damping of the repair's curvature factors (1 % of the mean diagonal).
        transfer_suite: Another task suite whose tasks are evaluated too, as *cross-domain* transfer
            tasks (heads fitted on the dense encoder with that suite's data; pruning, fine-tuning and
            the repair still see only the source); None: the source's suite only.
        transfer_data_root: Data folder of ``transfer_suite`` when it reads one.
    """

    # = pai_core.models.DEFAULT_MODEL, written out because models imports torch (a test holds
    # the two equal).
    model: str = "efficientnet_lite0"
    suite: str = "digits"
    source: int = 0
    score: str = "magnitude"
    score_options: tuple[tuple[str, Any], ...] = ()
    sparsity: float = 0.5904
    mask_scope: str = _option(
        "global",
        "Mask scope",
        "global: one threshold over all prunable weights (the paper); layerwise: the same sparsity in "
        "every prunable layer.",
        choices=("global", "layerwise"),
    )
    # = pai_core.layers.PRUNE_LAYERS (a test holds them equal; layers imports torch).
    prune_layers: str = _option(
        "all",
        "Prunable layers",
        "all: every scored weight (the paper); pointwise: only 1x1 convolutions and Linear layers "
        "(no depthwise, stem or kxk convolution), the sparsity still counted over all scored weights.",
        choices=("all", "pointwise"),
    )
    bn_aware: bool = _option(
        False,
        "BN-aware filter removal",
        "When a mask removes a convolution's whole filter, shift the running mean of the BatchNorm "
        "after it so the channel keeps its mean output on the source data, instead of the constant "
        "beta - gamma*mu/sigma that switches dead channels on (a deviation from the paper).",
        type=bool,
    )
    rounds: int | None = _option(
        None,
        "Pruning rounds",
        "Rounds of prune-and-rescore on an exponential schedule (round r keeps (1-q)^(r/R) of the "
        "weights, as SynFlow); 1 = one-shot, as the paper's text. Default: the score's own (1; SynFlow 100).",
        type=int,
        min=1,
        max=1000,
        none="the score's default",
    )
    ridge: str = _option(
        "closed-form",
        "Ridge heads",
        "closed-form: (Phi'Phi + alpha I)^-1 Phi'Y, no intercept (the paper's text); intercept-balanced: "
        "with an intercept and class-balanced sample weights n/(C n_c), as the authors' code.",
        choices=("closed-form", "intercept-balanced"),
    )
    # = pai_core.scores.BN_WARMUP_MODES (a test holds them equal).
    bn_warmup_mode: str = _option(
        "reset-cumulative",
        "BatchNorm warm-up mode",
        "How the bn_warmup score option re-estimates BatchNorm statistics: reset-cumulative (reset, then "
        "the exact average over the passes) or running (no reset, momentum 0.1: the scalable "
        "second-order paper's code).",
        choices=("reset-cumulative", "running"),
    )
    images_per_class: int | None = 50
    finetune: str | None = None
    holdout: bool = False
    alpha: float = 1.0
    loss: str = "mse"
    seed: int = 0
    image_size: int | None = None
    data_root: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    repair: str | None = None
    repair_damping: float = 1e-2
    transfer_suite: str | None = None
    transfer_data_root: str | None = None

    def __post_init__(self) -> None:
        # The registries a spec is checked against import torch: imported when a spec is built,
        # so that importing this module (and the store) does not.
        from .finetune import SCHEDULES
        from .scores import LOSSES, info

        # Fractions in [0, 1) or "59.04%"; 1.5 is refused with an example, never read as 1.5 %.
        object.__setattr__(self, "sparsity", parse_sparsity(self.sparsity))
        if self.image_size is not None and not (isinstance(self.image_size, int) and self.image_size > 0):
            raise ValueError(
                f"image_size must be a positive number of pixels (or None), got {self.image_size!r}"
            )
        if self.images_per_class is not None and self.images_per_class < 2:
            raise ValueError(
                f"images_per_class must be at least 2 (or None for all), got {self.images_per_class}"
            )
        check_device(self.device)
        score = info(self.score)  # ValueError naming the valid scores
        if self.finetune is not None and self.finetune not in SCHEDULES:
            raise ValueError(f"unknown fine-tuning schedule {self.finetune!r}; valid: {', '.join(SCHEDULES)}")
        for name, (opt, _default) in spec_options().items():
            object.__setattr__(self, name, opt.check(name, getattr(self, name)))
        if self.rounds is None:  # the score's own default, written out so that equal runs hash equally
            object.__setattr__(self, "rounds", score.rounds)
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        self._check_later_fields()
        # Normalise options so equal specs hash equally whatever order they were given in.
        opts = self.score_options.items() if isinstance(self.score_options, dict) else self.score_options
        object.__setattr__(self, "score_options", tuple(sorted((str(k), v) for k, v in opts)))
        score.check_options(dict(self.score_options))

    def _check_later_fields(self) -> None:
        from .tasks import available as suites

        if self.repair is not None and self.repair not in REPAIR_FORMS:
            raise ValueError(
                f"unknown repair form {self.repair!r}; valid: {', '.join(REPAIR_FORMS)} (or none)"
            )
        d = self.repair_damping
        if isinstance(d, bool) or not isinstance(d, int | float) or not (0 < float(d) < float("inf")):
            raise ValueError(f"repair_damping must be a positive number, got {d!r}")
        object.__setattr__(self, "repair_damping", float(d))
        if self.transfer_suite is not None:
            if self.transfer_suite not in suites():
                raise ValueError(
                    f"unknown transfer suite {self.transfer_suite!r}; valid: {', '.join(suites())}"
                )
            if self.transfer_suite == self.suite and self.transfer_data_root == self.data_root:
                raise ValueError(
                    f"transfer_suite {self.transfer_suite!r} is the source's own suite: its other tasks are "
                    "transfer tasks already; leave transfer_suite empty, or name another suite"
                )

    @property
    def cross_domain(self) -> bool:
        """Whether the run has cross-domain transfer tasks (``transfer_suite`` set)."""
        return self.transfer_suite is not None

    # -- serialisation ------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | dict) -> ExperimentSpec:
        d = json.loads(text) if isinstance(text, str) else dict(text)
        d["score_options"] = tuple(tuple(kv) for kv in d.get("score_options", ()))
        return cls(**d)

    def replace(self, **changes: Any) -> ExperimentSpec:
        return dataclasses.replace(self, **changes)

    def resolved_score_options(self) -> dict[str, Any]:
        """Every option of the score, the defaults filled in (what the score is called with)."""
        from .scores import info

        return {**info(self.score).defaults(), **dict(self.score_options)}

    def key_fields(self) -> dict[str, Any]:
        """The fields that determine what is computed: :func:`dataclasses.asdict` without the device,
        the score's options with their defaults filled in (a changed default makes a new key), and
        without fields added later (:data:`_LATER_FIELDS`) while they keep their earlier meaning."""
        d = {**dataclasses.asdict(self), "device": None}
        d["score_options"] = sorted(self.resolved_score_options().items())
        if self.repair is None:
            d.pop("repair_damping")
        for name, before in _LATER_FIELDS.items():
            if name in d and d[name] == before:
                d.pop(name)
        return d

    def key(self) -> str:
        """Cache key of the result (device excluded: it does not change what is computed)."""
        return cache.spec_key("results", {**self.key_fields(), "v": RESULT_VERSION})


@dataclass
class TaskResult:
    """Accuracies on one task (fractions), and its number of classes (chance is ``1 / num_classes``)."""

    task: str
    role: str  # "source", "transfer" or "cross-domain" (a task of spec.transfer_suite): ROLES
    dense: float
    zero_shot: float
    finetuned: float | None = None
    repaired: float | None = None  # pruned + OBS-corrected on the source (spec.repair), no SGD
    num_classes: int | None = None  # None in results recorded before it was kept


@dataclass
class ExperimentResult:
    """What :func:`run` returns (and what the results store keeps)."""

    spec: ExperimentSpec
    tasks: list[TaskResult]
    schedule: str | None
    timings: dict[str, float] = field(default_factory=dict)
    layer_report: list[dict] = field(default_factory=list)
    collapsed_layers: list[str] = field(default_factory=list)
    finetune_log: dict | None = None
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"
    cached: bool = False
    #: Run-level diagnostics (JSON-able): share of exactly-zero scores, zero-score filters, dead
    #: channels, BN-compensated channels, and whatever the score reported (e.g. Hutchinson's spread).
    diagnostics: dict = field(default_factory=dict)

    def _mean(self, role: str, attr: str) -> float | None:
        vals = [getattr(t, attr) for t in self.tasks if t.role == role and getattr(t, attr) is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def mean_source_dense(self) -> float | None:
        return self._mean("source", "dense")

    @property
    def mean_transfer_dense(self) -> float | None:
        return self._mean("transfer", "dense")

    @property
    def mean_source_zero_shot(self) -> float | None:
        return self._mean("source", "zero_shot")

    @property
    def mean_transfer_zero_shot(self) -> float | None:
        return self._mean("transfer", "zero_shot")

    @property
    def mean_source_finetuned(self) -> float | None:
        return self._mean("source", "finetuned")

    @property
    def mean_transfer_finetuned(self) -> float | None:
        return self._mean("transfer", "finetuned")

    @property
    def mean_source_repaired(self) -> float | None:
        return self._mean("source", "repaired")

    @property
    def mean_transfer_repaired(self) -> float | None:
        return self._mean("transfer", "repaired")

    def summary(self) -> dict[str, float | None]:
        """The means of :data:`SUMMARY_COLUMNS` (source/transfer/cross-domain × dense/zero-shot/
        fine-tuned/OBS-corrected; None where no task has the value)."""
        return {
            f"{prefix}_{kind}": self._mean(role, kind) for role, prefix in ROLES.items() for kind in _KINDS
        }

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["spec"] = dataclasses.asdict(self.spec)
        d["summary"] = self.summary()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentResult:
        d = {k: v for k, v in d.items() if k != "summary"}
        d["spec"] = ExperimentSpec.from_json(d["spec"])
        d["tasks"] = [TaskResult(**t) for t in d["tasks"]]
        return cls(**d)
