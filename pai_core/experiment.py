"""One experiment of the paper's protocol: prune → zero-shot → fine-tune → re-evaluate.

:class:`ExperimentSpec` is a frozen, JSON-serialisable description of a run;
:func:`run` executes it and returns an :class:`ExperimentResult` with, for every
task of the suite, the dense accuracy, the zero-shot accuracy of the pruned
encoder (heads fitted on the dense encoder and frozen) and, when asked for, the
accuracy after fine-tuning on the source task, each flagged source or transfer.

Every stage is cached on disk by what determines it: dense features and heads,
scores (one pass per score, whatever the sparsity), masks, fine-tuned weights
and results.  Re-running a spec is a cache hit; changing only the sparsity
reuses features, heads and scores.

Example:
    >>> spec = ExperimentSpec(score="magnitude", sparsity=0.5904)   # doctest: +SKIP
    >>> res = run(spec)                                                # doctest: +SKIP
    >>> res.mean_source_zero_shot, res.mean_transfer_zero_shot        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from . import cache, masks, scores
from .evaluate import Heads, evaluate, fit_heads, split_indices
from .features import pick_device, task_inputs
from .finetune import SCHEDULES, finetune, schedule
from .models import DEFAULT_MODEL, Encoder, load_encoder
from .tasks import TaskSuite, load_suite
from .validate import check_device, parse_sparsity

__all__ = [
    "ExperimentSpec",
    "TaskResult",
    "ExperimentResult",
    "StageProgress",
    "run",
    "run_all_sources",
    "average_over_sources",
    "get_encoder",
    "get_suite",
    "get_heads",
    "get_scores",
    "get_masks",
    "get_finetuned",
    "load_masks",
]

#: ``progress(stage, done, total, message)``; stages: "data", "features", "scores", "masks",
#: "zero-shot", "fine-tune", "evaluate".
StageProgress = Callable[[str, int, int, str], None]

#: Bump when the meaning of a result changes (keeps stale results out of the store).
RESULT_VERSION = 1


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that determines one experiment.

    Attributes:
        model: Encoder registry name (see :func:`pai_core.models.available`).
        suite: Task-suite registry name.
        source: Index of the source task in the suite.
        score: Pruning score name (see :func:`pai_core.scores.available`).
        score_options: Extra options of the score, as sorted ``(key, value)`` pairs.
        sparsity: Fraction of scored weights removed (0 ≤ q < 1).
        mask_scope: ``"global"`` (the paper) or ``"layerwise"`` (uniform per layer).
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
    """

    model: str = DEFAULT_MODEL
    suite: str = "digits"
    source: int = 0
    score: str = "magnitude"
    score_options: tuple[tuple[str, Any], ...] = ()
    sparsity: float = 0.5904
    mask_scope: str = "global"
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

    def __post_init__(self) -> None:
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
        if self.score not in scores.available():
            raise ValueError(f"unknown score {self.score!r}; valid: {', '.join(scores.available())}")
        if self.finetune is not None and self.finetune not in SCHEDULES:
            raise ValueError(f"unknown fine-tuning schedule {self.finetune!r}; valid: {', '.join(SCHEDULES)}")
        if self.mask_scope not in ("global", "layerwise"):
            raise ValueError(f"mask_scope must be 'global' or 'layerwise', got {self.mask_scope!r}")
        if self.loss not in ("mse", "ce"):
            raise ValueError(f"loss must be 'mse' or 'ce', got {self.loss!r}")
        # Normalise options so equal specs hash equally whatever order they were given in.
        opts = self.score_options.items() if isinstance(self.score_options, dict) else self.score_options
        object.__setattr__(self, "score_options", tuple(sorted((str(k), v) for k, v in opts)))

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

    def key(self) -> str:
        """Cache key of the result (device excluded: it does not change what is computed)."""
        return cache.spec_key("results", {**dataclasses.asdict(self), "device": None, "v": RESULT_VERSION})


@dataclass
class TaskResult:
    """Accuracies on one task."""

    task: str
    role: str  # "source" or "transfer"
    dense: float
    zero_shot: float
    finetuned: float | None = None


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

    def summary(self) -> dict[str, float | None]:
        """The six means (source/transfer × dense/zero-shot/fine-tuned)."""
        return {
            f"{role}_{kind}": self._mean(role, kind)
            for role in ("source", "transfer")
            for kind in ("dense", "zero_shot", "finetuned")
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


# ----------------------------------------------------------------------------- in-process reuse
# Loading an encoder or reading a suite is cheap next to scoring, but the
# dashboard and sweeps call these many times per process; keep the last few.

_ENCODERS: dict[tuple, Encoder] = {}
_SUITES: dict[tuple, TaskSuite] = {}


def get_encoder(name: str, checkpoint: str | None = None) -> Encoder:
    """Load (once per process) an encoder. Never mutate the returned one: use ``.copy()``."""
    key = (name, checkpoint)
    if key not in _ENCODERS:
        if len(_ENCODERS) >= 3:
            _ENCODERS.pop(next(iter(_ENCODERS)))
        _ENCODERS[key] = load_encoder(name, checkpoint=checkpoint)
    return _ENCODERS[key]


def get_suite(
    name: str, data_root: str | None = None, images_per_class: int | None = 50, seed: int = 0
) -> TaskSuite:
    """Build (once per process) a task suite."""
    key = (name, data_root, images_per_class, seed)
    if key not in _SUITES:
        if len(_SUITES) >= 4:
            _SUITES.pop(next(iter(_SUITES)))
        _SUITES[key] = load_suite(name, root=data_root, images_per_class=images_per_class, seed=seed)
    return _SUITES[key]


def _image_size(spec: ExperimentSpec, suite: TaskSuite) -> int | None:
    return spec.image_size or suite.image_size


def _data_spec(spec: ExperimentSpec, enc: Encoder, suite: TaskSuite) -> dict:
    return {
        "model": spec.model,
        "weights": enc.weights_id,
        "data": suite.identity(),
        "image_size": _image_size(spec, suite),
        "holdout": spec.holdout,
        "alpha": spec.alpha,
        "seed": spec.seed,
    }


def get_heads(spec: ExperimentSpec, enc: Encoder, suite: TaskSuite, device, progress=None) -> Heads:
    """Frozen ridge heads of every task, fitted on the dense encoder (cached on disk)."""
    key = {**_data_spec(spec, enc, suite)}

    def compute() -> dict[str, Tensor]:
        h = fit_heads(
            enc,
            suite,
            alpha=spec.alpha,
            holdout=spec.holdout,
            seed=spec.seed,
            image_size=_image_size(spec, suite),
            device=device,
            progress=progress,
        )
        return {
            **{str(k): xi for k, xi in enumerate(h.xi)},
            "dense": torch.tensor(h.dense, dtype=torch.float64),
        }

    xi = cache.cached_tensors("heads", key, compute)
    return Heads(
        [xi[str(k)] for k in range(len(suite.tasks))],
        spec.holdout,
        spec.seed,
        spec.alpha,
        xi["dense"].tolist(),
    )


class _EncoderWithHead(nn.Module):
    """f(x) = φ(x)ᵀξ_s: what data-driven scores differentiate."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def _scored_names(model: nn.Module) -> list[str]:
    """Every weight of a Conv or Linear layer of the encoder (the paper prunes W, never ξ)."""
    names = []
    for mname, mod in model.named_modules():
        if (
            isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
            and getattr(mod, "weight", None) is not None
        ):
            names.append(f"{mname}.weight" if mname else "weight")
    return names


def _source_batches(spec: ExperimentSpec, enc: Encoder, suite: TaskSuite, batch_size: int = 32):
    x, y = task_inputs(suite.tasks[spec.source], enc, _image_size(spec, suite))
    fit_idx, _ = split_indices(y, spec.holdout, spec.seed)
    x, y = x[fit_idx], y[fit_idx]
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def _score_spec(spec: ExperimentSpec, enc: Encoder, suite: TaskSuite) -> dict:
    return {
        **_data_spec(spec, enc, suite),
        "source": spec.source,
        "score": spec.score,
        "options": list(spec.score_options),
        "loss": spec.loss,
    }


def get_scores(
    spec: ExperimentSpec, enc: Encoder, suite: TaskSuite, heads: Heads, device, progress=None
) -> dict[str, Tensor]:
    """Scores of the encoder's weights on the source task (cached; independent of the sparsity)."""

    def compute() -> dict[str, Tensor]:
        model = _EncoderWithHead(enc.copy().model, heads.module(spec.source)).to(device)
        names = [f"encoder.{n}" for n in _scored_names(model.encoder)]
        batches = [(x.to(device), y.to(device)) for x, y in _source_batches(spec, enc, suite)]
        opts = dict(spec.score_options)
        if spec.score in ("random", "hutchinson"):
            opts.setdefault("seed", spec.seed)
        out = scores.compute(
            spec.score, model, batches, params=names, loss=spec.loss, progress=progress, **opts
        )
        return {k.removeprefix("encoder."): v.detach().float().cpu() for k, v in out.items()}

    return masks.cached_scores(_score_spec(spec, enc, suite), compute)


def get_masks(
    spec: ExperimentSpec, enc: Encoder, suite: TaskSuite, heads: Heads, device, progress=None
) -> dict[str, Tensor]:
    """Keep-masks of the encoder's scored weights at the spec's sparsity (cached)."""
    mspec = {**_score_spec(spec, enc, suite), "sparsity": spec.sparsity, "scope": spec.mask_scope}

    def compute() -> dict[str, Tensor]:
        sc = get_scores(spec, enc, suite, heads, device, progress)
        fn = masks.global_topk if spec.mask_scope == "global" else masks.layerwise_topk
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # collapse is reported in the result, not as noise here
            return fn(sc, spec.sparsity)

    return masks.cached_masks(mspec, compute)


def get_finetuned(
    spec: ExperimentSpec,
    enc: Encoder,
    suite: TaskSuite,
    heads: Heads,
    mask: dict[str, Tensor],
    device,
    progress=None,
) -> tuple[dict[str, Tensor], dict]:
    """State dict of the pruned encoder after fine-tuning on the source task (cached) and its log."""
    fspec = {
        **_score_spec(spec, enc, suite),
        "sparsity": spec.sparsity,
        "scope": spec.mask_scope,
        "finetune": dataclasses.asdict(schedule(spec.finetune)),
    }
    log: dict = {}

    def compute() -> dict[str, Tensor]:
        model = enc.copy().model
        masks.prune_(model, mask)
        x, y = task_inputs(suite.tasks[spec.source], enc, _image_size(spec, suite))
        fit_idx, _ = split_indices(y, spec.holdout, spec.seed)
        log.update(
            finetune(
                model,
                heads.module(spec.source),
                x[fit_idx],
                y[fit_idx],
                mask,
                schedule(spec.finetune),
                model_name=spec.model,
                device=device,
                seed=spec.seed,
                progress=progress,
            )
        )
        state = dict(model.state_dict())
        state["__log__"] = torch.tensor(list(json.dumps(log).encode()), dtype=torch.uint8)
        return state

    state = cache.cached_tensors("finetuned", fspec, compute)
    state = dict(state)
    blob = state.pop("__log__", None)
    if blob is not None:
        log = json.loads(bytes(blob.tolist()).decode())
    return state, log


# ----------------------------------------------------------------------------- run


def run(
    spec: ExperimentSpec, progress: StageProgress | None = None, *, use_cache: bool = True
) -> ExperimentResult:
    """Run one experiment (every stage cached; see the module docstring).

    Args:
        spec: What to run.
        progress: ``progress(stage, done, total, message)`` for progress bars.
        use_cache: Reuse a finished result for the same spec (stages are cached regardless).

    Returns:
        Accuracies per task, means, timings, the per-layer sparsity report and notes.

    Raises:
        ValueError: Bad spec (unknown names, source index out of range).
        pai_core.models.ModelUnavailable: The encoder's weights cannot be had.
        pai_core.tasks.DataError: The suite's data is missing or unusable.
    """

    def quiet(stage: str, done: int, total: int, message: str) -> None:
        pass

    progress = progress or quiet
    path = cache.cache_dir() / "results" / f"{spec.key()}.json"
    if use_cache and (hit := _cached_result(path)) is not None:
        progress("done", 1, 1, "result from cache")
        return hit
    # A second identical run (another click, another session, another sweep worker)
    # waits here for the first and then reuses its result.
    with cache.locked(path):
        if use_cache and (hit := _cached_result(path)) is not None:
            progress("done", 1, 1, "result from cache (computed meanwhile by another run)")
            return hit
        return _run(spec, progress, path)


def _cached_result(path) -> ExperimentResult | None:
    try:
        res = ExperimentResult.from_dict(cache.load_json(path))
    except (FileNotFoundError, cache.CacheCorrupt, TypeError, KeyError):
        return None
    res.cached = True
    return res


def load_masks(spec: ExperimentSpec, progress: StageProgress | None = None) -> dict[str, Tensor]:
    """The keep-masks of a spec (from the cache when computed before), for overlap views and downloads."""
    progress = progress or (lambda *a: None)
    device = pick_device(spec.device)
    enc = get_encoder(spec.model, spec.checkpoint)
    suite = get_suite(spec.suite, spec.data_root, spec.images_per_class, spec.seed)
    heads = get_heads(spec, enc, suite, device, partial(progress, "features"))
    return get_masks(spec, enc, suite, heads, device, partial(progress, "scores"))


def _run(spec: ExperimentSpec, progress: StageProgress, path) -> ExperimentResult:

    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name: str):
        return partial(progress, name)

    def tick(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - t0
        t0 = now

    device = pick_device(spec.device)
    progress("data", 0, 1, f"loading {spec.model} and {spec.suite}")
    enc = get_encoder(spec.model, spec.checkpoint)
    suite = get_suite(spec.suite, spec.data_root, spec.images_per_class, spec.seed)
    if not 0 <= spec.source < len(suite.tasks):
        raise ValueError(
            f"source task {spec.source} out of range: suite {spec.suite!r} has {len(suite.tasks)} tasks"
        )
    if spec.score == "px" and enc.family == "vit":
        raise ValueError(
            "PX is defined for CNNs only: its path-kernel argument assumes the NTK regime, which "
            "self-attention breaks (the paper skips PX on ViTs); choose another score"
        )
    progress("data", 1, 1, "data ready")
    tick("load")

    heads = get_heads(spec, enc, suite, device, stage("features"))
    dense = heads.dense
    tick("features+heads")

    mask = get_masks(spec, enc, suite, heads, device, stage("scores"))
    report = masks.sparsity_report(mask)
    collapsed = masks.collapsed_layers(mask)
    tick("scores+masks")

    pruned = enc.copy().model
    masks.prune_(pruned, mask)
    zs = evaluate(
        pruned,
        enc,
        suite,
        heads,
        image_size=_image_size(spec, suite),
        device=device,
        progress=stage("zero-shot"),
    )
    tick("zero-shot")

    ft_accs: list[float | None] = [None] * len(suite.tasks)
    ft_log = None
    if spec.finetune:
        state, ft_log = get_finetuned(spec, enc, suite, heads, mask, device, stage("fine-tune"))
        tick("fine-tune")
        tuned = enc.copy().model
        tuned.load_state_dict(state)
        ft_accs = evaluate(
            tuned,
            enc,
            suite,
            heads,
            image_size=_image_size(spec, suite),
            device=device,
            progress=stage("evaluate"),
        )
        tick("evaluate")

    tasks = [
        TaskResult(
            task=t.name,
            role="source" if k == spec.source else "transfer",
            dense=dense[k],
            zero_shot=zs[k],
            finetuned=ft_accs[k],
        )
        for k, t in enumerate(suite.tasks)
    ]
    notes = list(suite.notes)
    if collapsed:
        notes.append(f"layer collapse: {len(collapsed)} layer(s) lost every weight, e.g. {collapsed[:3]}")
    if suite.skipped:
        notes.append(f"{suite.skipped} unreadable image file(s) skipped")
    if spec.holdout:
        notes.append(
            "held-out split: heads fitted on one half, evaluated on the other (deviation from the paper)"
        )
    if ft_log:
        notes += ft_log.get("notes", [])
    res = ExperimentResult(
        spec=spec,
        tasks=tasks,
        schedule=spec.finetune,
        timings=timings,
        layer_report=report,
        collapsed_layers=collapsed,
        finetune_log=ft_log,
        notes=notes,
        device=str(device),
    )
    cache.save_json(path, res.to_dict())
    try:  # the results store only indexes finished runs: a store problem must never fail a run
        from .store import record_run  # here, not at the top: store imports experiment lazily too

        record_run(res)
    except Exception as exc:
        warnings.warn(f"result not recorded in the results store: {exc}", stacklevel=2)
    progress("done", 1, 1, "finished")
    return res


def run_all_sources(spec: ExperimentSpec, progress: StageProgress | None = None) -> list[ExperimentResult]:
    """The paper's protocol: run ``spec`` once with each task of the suite as the source."""
    suite = get_suite(spec.suite, spec.data_root, spec.images_per_class, spec.seed)
    return [run(spec.replace(source=k), progress) for k in range(len(suite.tasks))]


def average_over_sources(results: list[ExperimentResult]) -> dict[str, float | None]:
    """Mean of each summary figure over runs (the paper averages over its 10 sources)."""
    out: dict[str, float | None] = {}
    for key in results[0].summary():
        vals = [r.summary()[key] for r in results if r.summary()[key] is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    return out
