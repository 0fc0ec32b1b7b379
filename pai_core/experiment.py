"""One experiment of the paper's protocol: prune → zero-shot → fine-tune → re-evaluate.

:func:`run` executes an :class:`~pai_core.results.ExperimentSpec` and returns an
:class:`~pai_core.results.ExperimentResult` with, for every task of the suite, the dense
accuracy, the zero-shot accuracy of the pruned encoder (heads fitted on the dense encoder and
frozen) and, when asked for, the accuracy after fine-tuning on the source task, each flagged
source or transfer.  :func:`prepare` builds what every stage shares (encoder, suite, device,
heads) once, as a :class:`Context`; the landscape of :mod:`pai_core.landscape` uses it too.

Every stage is cached on disk by what determines it: dense features and heads, scores (one pass
per score, whatever the sparsity), bit-packed masks, fine-tuned weights and results.  Re-running
a spec is a cache hit; changing only the sparsity reuses features, heads and scores.  Recording a
finished run in the results store is the caller's step (:func:`pai_core.store.record_run`): the
CLI, the dashboard and sweeps do it.

Example:
    >>> spec = ExperimentSpec(score="magnitude", sparsity=0.5904)   # doctest: +SKIP
    >>> res = run(spec)                                                # doctest: +SKIP
    >>> res.mean_source_zero_shot, res.mean_transfer_zero_shot        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from . import cache, masks, scores
from .evaluate import Heads, evaluate, fit_heads, split_indices
from .features import pick_device, task_inputs
from .finetune import finetune, schedule
from .models import Encoder, load_encoder
from .results import ExperimentResult, ExperimentSpec, Progress, StageProgress, TaskResult
from .tasks import TaskSuite, load_suite

__all__ = [
    # running
    "run",
    "run_all_sources",
    "average_over_sources",
    "load_masks",
    # the shared context and the cached stages
    "Context",
    "prepare",
    "get_scores",
    "get_masks",
    "get_finetuned",
    # in-process reuse
    "get_encoder",
    "get_suite",
    # the result types (defined in pai_core.results, re-exported for convenience)
    "ExperimentSpec",
    "TaskResult",
    "ExperimentResult",
    "StageProgress",
]


def _quiet(stage: str, done: int, total: int, message: str) -> None:
    pass


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


# ----------------------------------------------------------------------------- the shared context


@dataclass(frozen=True)
class Context:
    """What every stage of one experiment shares; built by :func:`prepare`.

    Attributes:
        spec: The experiment.
        encoder: Its encoder (shared in-process: never mutate it, ``.copy()`` first).
        suite: Its task suite.
        device: Where stages compute.
        progress: The run's ``progress(stage, done, total, message)``.
    """

    spec: ExperimentSpec
    encoder: Encoder
    suite: TaskSuite
    device: torch.device
    progress: StageProgress = _quiet

    @property
    def image_size(self) -> int:
        """Encoder input size: the spec's, else the suite's preference, else the encoder's own;
        always the encoder's own when its architecture fixes it (:meth:`Encoder.size_for`)."""
        return self.encoder.size_for(self.spec.image_size or self.suite.image_size)

    def stage(self, name: str) -> Progress:
        """The progress callback of one stage."""
        return partial(self.progress, name)

    def inputs(self, task: int) -> tuple[Tensor, Tensor]:
        """All images of a task (encoder-ready) and their labels."""
        return task_inputs(self.suite.tasks[task], self.encoder, self.image_size)

    def split(self, task: int, part: str) -> tuple[Tensor, Tensor]:
        """The ``"fit"`` or ``"eval"`` images of a task (the same unless ``spec.holdout``)."""
        x, y = self.inputs(task)
        fit_idx, eval_idx = split_indices(y, self.spec.holdout, self.spec.seed)
        idx = fit_idx if part == "fit" else eval_idx
        return x[idx], y[idx]

    def key(self, stage: str) -> dict[str, Any]:
        """Cache key of a stage: ``"heads"``, ``"scores"``, ``"masks"`` or ``"finetuned"``.

        Each stage's key extends the previous one's by what the stage adds (so changing only
        the sparsity keeps the heads' and the scores' keys).
        """
        s = self.spec
        key: dict[str, Any] = {
            "model": s.model,
            "weights": self.encoder.weights_id,
            "data": self.suite.identity(),
            "image_size": self.image_size,
            "holdout": s.holdout,
            "alpha": s.alpha,
            "seed": s.seed,
        }
        if stage == "heads":
            return key
        key |= {"source": s.source, "score": s.score, "options": list(s.score_options), "loss": s.loss}
        if stage == "scores":
            return key
        key |= {"sparsity": s.sparsity, "scope": s.mask_scope}
        if stage == "masks":
            return key
        if stage == "finetuned":
            return key | {"finetune": dataclasses.asdict(schedule(s.finetune))}
        raise ValueError(f"unknown stage {stage!r}")

    @functools.cached_property
    def heads(self) -> Heads:
        """Frozen ridge heads of every task, fitted on the dense encoder (cached on disk)."""
        s = self.spec

        def compute() -> dict[str, Tensor]:
            h = fit_heads(
                self.encoder,
                self.suite,
                alpha=s.alpha,
                holdout=s.holdout,
                seed=s.seed,
                image_size=self.image_size,
                device=self.device,
                progress=self.stage("features"),
            )
            return {
                **{str(k): xi for k, xi in enumerate(h.xi)},
                "dense": torch.tensor(h.dense, dtype=torch.float64),
            }

        xi = cache.cached_tensors("heads", self.key("heads"), compute)
        return Heads(
            [xi[str(k)] for k in range(len(self.suite.tasks))],
            s.holdout,
            s.seed,
            s.alpha,
            xi["dense"].tolist(),
        )


def prepare(spec: ExperimentSpec, progress: StageProgress | None = None) -> Context:
    """Load the encoder and the suite and check that the spec can run on them (cheap).

    The heads are fitted (or read from the cache) when first used: :attr:`Context.heads`.

    Raises:
        ValueError: Source index out of range, or a score that refuses the encoder's family.
        pai_core.models.ModelUnavailable: The encoder's weights cannot be had.
        pai_core.tasks.DataError: The suite's data is missing or unusable.
    """
    progress = progress or _quiet
    device = pick_device(spec.device)
    progress("data", 0, 1, f"loading {spec.model} and {spec.suite}")
    enc = get_encoder(spec.model, spec.checkpoint)
    suite = get_suite(spec.suite, spec.data_root, spec.images_per_class, spec.seed)
    if not 0 <= spec.source < len(suite.tasks):
        raise ValueError(
            f"source task {spec.source} out of range: suite {spec.suite!r} has {len(suite.tasks)} tasks"
        )
    if refusal := scores.info(spec.score).refusal(enc.family):
        raise ValueError(refusal)
    if enc.fixed_size and spec.image_size not in (None, enc.input_size):
        raise ValueError(
            f"{spec.model} takes {enc.input_size} px inputs only (its position embeddings are learned "
            f"for that size), not {spec.image_size} px: leave the image size unset"
        )
    progress("data", 1, 1, "data ready")
    return Context(spec, enc, suite, device, progress)


# ----------------------------------------------------------------------------- cached stages


class _EncoderWithHead(nn.Module):
    """f(x) = φ(x)ᵀξ_s: what data-driven scores differentiate."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def _cached_scores(key: Any, compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """Scores for ``key`` from the on-disk cache (kind ``"scores"``), computed on a miss.

    ``key`` must identify everything that determines the scores (:meth:`Context.key`).  A corrupt
    or truncated file is detected by :mod:`pai_core.cache`, deleted and recomputed.
    """
    return cache.cached_tensors("scores", key, compute)


def _cached_masks(key: Any, compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
    """Masks for ``key`` from the cache (kind ``"masks"``, stored bit-packed), computed on a miss."""
    return masks.unpack(cache.cached_tensors("masks", key, lambda: masks.pack(compute())))


def get_scores(ctx: Context) -> dict[str, Tensor]:
    """Scores of the encoder's weights on the source task (cached; independent of the sparsity)."""
    spec = ctx.spec

    def compute() -> dict[str, Tensor]:
        x, y = ctx.split(spec.source, "fit")
        model = _EncoderWithHead(ctx.encoder.copy().model, ctx.heads.module(spec.source)).to(ctx.device)
        # The encoder's weight matrices only (the paper prunes W, never the heads ξ); one image
        # finds those the encoder applies functionally (open_clip's ViT projection).
        names = [f"encoder.{n}" for n in scores.default_params(model.encoder, x[:1].to(ctx.device))]
        batches = [(x[i : i + 32].to(ctx.device), y[i : i + 32].to(ctx.device)) for i in range(0, len(x), 32)]
        opts = dict(spec.score_options)
        if scores.info(spec.score).stochastic:
            opts.setdefault("seed", spec.seed)
        out = scores.compute(
            spec.score, model, batches, params=names, loss=spec.loss, progress=ctx.stage("scores"), **opts
        )
        return {k.removeprefix("encoder."): v.detach().float().cpu() for k, v in out.items()}

    return _cached_scores(ctx.key("scores"), compute)


def get_masks(ctx: Context) -> dict[str, Tensor]:
    """Keep-masks of the encoder's scored weights at the spec's sparsity (cached)."""
    spec = ctx.spec

    def compute() -> dict[str, Tensor]:
        sc = get_scores(ctx)
        fn = masks.global_topk if spec.mask_scope == "global" else masks.layerwise_topk
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # collapse is reported in the result, not as noise here
            return fn(sc, spec.sparsity)

    return _cached_masks(ctx.key("masks"), compute)


def get_finetuned(ctx: Context, mask: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict]:
    """State dict of the pruned encoder after fine-tuning on the source task (cached) and its log."""
    spec = ctx.spec
    log: dict = {}

    def compute() -> dict[str, Tensor]:
        model = ctx.encoder.copy().model
        masks.prune_(model, mask)
        x, y = ctx.split(spec.source, "fit")
        log.update(
            finetune(
                model,
                ctx.heads.module(spec.source),
                x,
                y,
                mask,
                schedule(spec.finetune),
                model_name=spec.model,
                device=ctx.device,
                seed=spec.seed,
                progress=ctx.stage("fine-tune"),
            )
        )
        state = dict(model.state_dict())
        state["__log__"] = torch.tensor(list(json.dumps(log).encode()), dtype=torch.uint8)
        return state

    state = dict(cache.cached_tensors("finetuned", ctx.key("finetuned"), compute))
    blob = state.pop("__log__", None)
    if blob is not None:
        log = json.loads(bytes(blob.tolist()).decode())
    return state, log


def load_masks(spec: ExperimentSpec, progress: StageProgress | None = None) -> dict[str, Tensor]:
    """The keep-masks of a spec (from the cache when computed before), for overlap views and downloads."""
    return get_masks(prepare(spec, progress))


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
    progress = progress or _quiet
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
        res = _run(spec, progress)
        cache.save_json(path, res.to_dict())
        progress("done", 1, 1, "finished")
        return res


def _cached_result(path) -> ExperimentResult | None:
    try:
        res = ExperimentResult.from_dict(cache.load_json(path))
    except (FileNotFoundError, cache.CacheCorrupt, TypeError, KeyError):
        return None
    res.cached = True
    return res


def _run(spec: ExperimentSpec, progress: StageProgress) -> ExperimentResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def tick(name: str) -> None:
        nonlocal t0
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - t0
        t0 = now

    ctx = prepare(spec, progress)
    tick("load")

    dense = ctx.heads.dense
    tick("features+heads")

    mask = get_masks(ctx)
    report = masks.sparsity_report(mask)
    collapsed = masks.collapsed_layers(mask)
    tick("scores+masks")

    def accuracies(model: nn.Module, stage: str) -> list[float]:
        return evaluate(
            model,
            ctx.encoder,
            ctx.suite,
            ctx.heads,
            image_size=ctx.image_size,
            device=ctx.device,
            progress=ctx.stage(stage),
        )

    pruned = masks.prune_(ctx.encoder.copy().model, mask)
    zs = accuracies(pruned, "zero-shot")
    tick("zero-shot")

    ft_accs: list[float | None] = [None] * len(ctx.suite.tasks)
    ft_log = None
    if spec.finetune:
        state, ft_log = get_finetuned(ctx, mask)
        tick("fine-tune")
        tuned = ctx.encoder.copy().model
        tuned.load_state_dict(state)
        ft_accs = accuracies(tuned, "evaluate")
        tick("evaluate")

    tasks = [
        TaskResult(
            task=t.name,
            role="source" if k == spec.source else "transfer",
            dense=dense[k],
            zero_shot=zs[k],
            finetuned=ft_accs[k],
        )
        for k, t in enumerate(ctx.suite.tasks)
    ]
    notes = list(ctx.suite.notes)
    if ctx.suite.image_size and ctx.image_size != ctx.suite.image_size and not spec.image_size:
        notes.append(
            f"images fed at {ctx.image_size} px, the size {spec.model}'s position embeddings are "
            f"learned for (the suite's {ctx.suite.image_size} px would not fit)"
        )
    if collapsed:
        notes.append(f"layer collapse: {len(collapsed)} layer(s) lost every weight, e.g. {collapsed[:3]}")
    if ctx.suite.skipped:
        notes.append(f"{ctx.suite.skipped} unreadable image file(s) skipped")
    if spec.holdout:
        notes.append(
            "held-out split: heads fitted on one half, evaluated on the other (deviation from the paper)"
        )
    if ft_log:
        notes += ft_log.get("notes", [])
    return ExperimentResult(
        spec=spec,
        tasks=tasks,
        schedule=spec.finetune,
        timings=timings,
        layer_report=report,
        collapsed_layers=collapsed,
        finetune_log=ft_log,
        notes=notes,
        device=str(ctx.device),
    )


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
