"""One experiment of the paper's protocol: prune → zero-shot → fine-tune → re-evaluate.

:func:`run` executes an :class:`~pai_core.results.ExperimentSpec` and returns an
:class:`~pai_core.results.ExperimentResult` with, for every task of the suite, the dense
accuracy, the zero-shot accuracy of the pruned encoder (heads fitted on the dense encoder and
frozen) and, when asked for, the accuracy after fine-tuning on the source task, each flagged
source or transfer.  :func:`prepare` builds what every stage shares (encoder, suite, device,
heads) once, as a :class:`Context`; the landscape of :mod:`pai_core.landscape` uses it too.

Every stage is cached on disk by what determines it: dense features and heads, scores (one pass
per score, whatever the sparsity), channel statistics of the source task, bit-packed masks,
fine-tuned weights and results.  Re-running a spec is a cache hit; changing only the sparsity
reuses features, heads and scores (:func:`build_masks` makes the masks of several sparsities from
one read of the scores and one partition).  Recording a finished run in the results store is the
caller's step (:func:`pai_core.store.record_run`): the CLI, the dashboard and sweeps do it.

The protocol's options (:func:`pai_core.results.spec_options`) act here: ``rounds`` (iterative
pruning on SynFlow's exponential schedule, re-scoring the masked model each round),
``prune_layers`` and ``mask_scope`` (which weights a mask may remove, and how the threshold is
taken), ``bn_aware`` (:func:`pai_core.layers.compensate_bn_` on the pruned encoder), ``ridge``
(the heads) and ``bn_warmup_mode``.  Ties between scores are broken by magnitude (``θ²``).  Each
result carries ``diagnostics``: the share of exactly-zero scores, filters whose scores are all
zero, dead channels on the source data, compensated channels, and what the score reported.

Example:
    >>> spec = ExperimentSpec(score="magnitude", sparsity=0.5904)   # doctest: +SKIP
    >>> res = run(spec)                                                # doctest: +SKIP
    >>> res.mean_source_zero_shot, res.mean_transfer_zero_shot        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from . import cache, layers, masks, runtime, scores, transfer_stages
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
    "get_score_diagnostics",
    "get_channels",
    "get_masks",
    "build_masks",
    "pruned_encoder",
    "round_sparsities",
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
        """Cache key of a stage: ``"heads"``, ``"channels"``, ``"scores"``, ``"masks"`` or ``"finetuned"``.

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
            "ridge": s.ridge,
        }
        if stage == "heads":
            return key
        key["source"] = s.source
        if stage == "channels":
            return key
        # Every option with its default filled in: a changed default is a new key.
        options = s.resolved_score_options()
        key |= {
            "score": s.score,
            "options": sorted(options.items()),
            "loss": s.loss,
            # the mode matters only when there is a warm-up
            "bn_warmup_mode": s.bn_warmup_mode if options.get(scores.BN_WARMUP.name) else None,
        }
        if stage == "scores":
            return key
        key |= {
            "sparsity": s.sparsity,
            "scope": s.mask_scope,
            "layers": s.prune_layers,
            "rounds": s.rounds,
            "bn_aware": s.bn_aware,
            "ties": "magnitude",
        }
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
                ridge_kind=s.ridge,
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
            intercept=s.ridge == "intercept-balanced",
        )

    def source_batches(self, size: int = 32) -> list[tuple[Tensor, Tensor]]:
        """The source task's fit images in batches of ``size``, on the device (what scores see)."""
        x, y = self.split(self.spec.source, "fit")
        return [
            (x[i : i + size].to(self.device), y[i : i + size].to(self.device)) for i in range(0, len(x), size)
        ]


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


def _blob(value: Any) -> Tensor:
    return torch.tensor(list(json.dumps(value).encode()), dtype=torch.uint8)


def _unblob(t: Tensor) -> Any:
    return json.loads(bytes(t.tolist()).decode())


_DIAG = "__diagnostics__"  # the scores file's entry that holds the score's diagnostics (JSON bytes)

# The last score sets read in this process, by cache key: building the masks of seven sparsities
# one run after another reads (and checksums) a 94 MB scores file once, not seven times.
_SCORES: dict[str, tuple[dict[str, Tensor], dict]] = {}


def _score_model(ctx: Context, mask: dict[str, Tensor] | None = None) -> nn.Module:
    """Encoder (pruned by ``mask``, BN-compensated when the spec asks) followed by the source head."""
    enc = ctx.encoder.copy().model if mask is None else pruned_encoder(ctx, mask)[0]
    return _EncoderWithHead(enc, ctx.heads.module(ctx.spec.source)).to(ctx.device)


def _scored_names(ctx: Context) -> list[str]:
    """The encoder's weight matrices (:func:`~pai_core.scores.default_params`), functional ones included.

    One blank image at the fed size finds the weights the encoder applies functionally (open_clip's
    raw ViT projection ``x @ proj``); which weights a pass applies does not depend on pixel values.
    """
    enc = ctx.encoder.model
    p = next(enc.parameters())
    example = torch.zeros(1, 3, ctx.image_size, ctx.image_size, dtype=p.dtype, device=p.device)
    return scores.default_params(enc, example)


def _compute_scores(ctx: Context, model: _EncoderWithHead, diagnostics: dict) -> dict[str, Tensor]:
    spec = ctx.spec
    # The encoder's weight matrices only: the paper prunes W, never the heads ξ.
    names = [f"encoder.{n}" for n in _scored_names(ctx)]
    opts = dict(spec.score_options)
    if scores.info(spec.score).stochastic:
        opts.setdefault("seed", spec.seed)
    out = scores.compute(
        spec.score,
        model,
        ctx.source_batches(),
        params=names,
        loss=spec.loss,
        progress=ctx.stage("scores"),
        diagnostics=diagnostics,
        bn_warmup_mode=spec.bn_warmup_mode,
        **opts,
    )
    return {k.removeprefix("encoder."): v.detach().float().cpu() for k, v in out.items()}


def _scores_entry(ctx: Context) -> tuple[dict[str, Tensor], dict]:
    key = str(cache.cache_dir() / cache.spec_key("scores", ctx.key("scores")))  # a path: one per cache folder
    if key in _SCORES:
        return _SCORES[key]

    def compute() -> dict[str, Tensor]:
        diag: dict = {}
        out = _compute_scores(ctx, _score_model(ctx), diag)
        return {**out, _DIAG: _blob(diag)}

    stored = dict(_cached_scores(ctx.key("scores"), compute))
    blob = stored.pop(_DIAG, None)
    entry = (stored, _unblob(blob) if blob is not None else {})
    while len(_SCORES) >= 2:
        _SCORES.pop(next(iter(_SCORES)))
    _SCORES[key] = entry
    return entry


def get_scores(ctx: Context) -> dict[str, Tensor]:
    """Scores of the encoder's weights on the source task (cached; independent of the sparsity).

    The one-shot scores of the dense encoder: with ``rounds > 1`` they are the first round's.
    Callers must not modify the returned tensors (they are shared within the process).
    """
    return _scores_entry(ctx)[0]


def get_score_diagnostics(ctx: Context) -> dict:
    """What the score reported while computing :func:`get_scores` (cached with the scores)."""
    return _scores_entry(ctx)[1]


def get_channels(ctx: Context) -> tuple[dict[str, str], layers.ChannelStats]:
    """Conv→BatchNorm pairs of the encoder and its channel statistics on the source task (cached).

    Returns:
        ``(pairs, stats)``: :func:`pai_core.layers.conv_bn_pairs` and
        :func:`pai_core.layers.channel_stats` of the dense encoder on the source task's fit images.
    """

    def compute() -> dict[str, Tensor]:
        enc = ctx.encoder.copy().model.to(ctx.device)
        batches = ctx.source_batches()
        pairs = layers.conv_bn_pairs(enc, batches[0][0][:1])
        stats = layers.channel_stats(enc, batches, sorted(set(pairs.values())))
        return {
            "__pairs__": _blob(pairs),
            **{f"mean/{n}": t for n, t in stats.bn_input_mean.items()},
            **{f"dead/{n}": t for n, t in stats.dead.items()},
        }

    d = cache.cached_tensors("channels", ctx.key("channels"), compute)
    pairs = _unblob(d["__pairs__"])
    means = {k.removeprefix("mean/"): v for k, v in d.items() if k.startswith("mean/")}
    dead = {k.removeprefix("dead/"): v for k, v in d.items() if k.startswith("dead/")}
    return pairs, layers.ChannelStats(means, dead)


def pruned_encoder(ctx: Context, mask: dict[str, Tensor]) -> tuple[nn.Module, dict[str, int]]:
    """A pruned copy of the encoder, BN-compensated when ``spec.bn_aware`` (on the CPU).

    Returns:
        ``(model, {BatchNorm name: channels compensated})``.
    """
    model = masks.prune_(ctx.encoder.copy().model, mask)
    done: dict[str, int] = {}
    if ctx.spec.bn_aware:
        pairs, stats = get_channels(ctx)
        done = layers.compensate_bn_(model, mask, pairs, stats.bn_input_mean)
    return model, done


def round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """SynFlow's exponential schedule: round ``r`` of ``R`` removes ``1 − (1 − q)^(r/R)``; the last is ``q``.

    Example:
        >>> [round(q, 4) for q in round_sparsities(0.75, 2)]
        [0.5, 0.75]
    """
    return [1.0 - (1.0 - sparsity) ** (r / rounds) for r in range(1, rounds)] + [sparsity]


def _mask_inputs(ctx: Context) -> tuple[dict[str, Tensor], list[str]]:
    """(tie-break values θ², eligible names) of the encoder's scored weights."""
    enc = ctx.encoder.model
    names = _scored_names(ctx)
    params = dict(enc.named_parameters())
    tiebreak = {n: params[n].detach().float().cpu() ** 2 for n in names}
    return tiebreak, layers.prunable(enc, names, ctx.spec.prune_layers)


def _topk(ctx: Context, sc: dict[str, Tensor], sparsities: Sequence[float]) -> list[dict[str, Tensor]]:
    tiebreak, eligible = _mask_inputs(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # collapse is reported in the result, not as noise here
        if ctx.spec.mask_scope == "global":
            return masks.global_topk_many(sc, sparsities, tiebreak=tiebreak, eligible=eligible)
        return [masks.layerwise_topk(sc, q, tiebreak=tiebreak, eligible=eligible) for q in sparsities]


def _iterative_masks(ctx: Context) -> dict[str, Tensor]:
    """``spec.rounds`` rounds of prune-and-rescore on the exponential schedule (SynFlow's).

    Round 1 uses the cached one-shot scores; each later round scores the encoder pruned by the
    previous round's mask (BN-compensated when asked), and the weights already removed stay
    removed (their scores are set to −∞, so masks are nested whatever the score's sign).
    """
    spec = ctx.spec
    mask: dict[str, Tensor] | None = None
    qs = round_sparsities(spec.sparsity, spec.rounds)
    for r, q in enumerate(qs, start=1):
        ctx.progress("masks", r - 1, len(qs), f"round {r}/{len(qs)}: {100 * q:.2f}% removed")
        if mask is None:
            sc = get_scores(ctx)
        else:
            sc = _compute_scores(ctx, _score_model(ctx, mask), {})
            sc = {n: torch.where(mask[n], v, torch.tensor(-math.inf)) for n, v in sc.items()}
        (mask,) = _topk(ctx, sc, [q])
    ctx.progress("masks", len(qs), len(qs), f"{len(qs)} rounds")
    assert mask is not None
    return mask


def get_masks(ctx: Context) -> dict[str, Tensor]:
    """Keep-masks of the encoder's scored weights at the spec's sparsity (cached)."""

    def compute() -> dict[str, Tensor]:
        if ctx.spec.rounds > 1:
            return _iterative_masks(ctx)
        return _topk(ctx, get_scores(ctx), [ctx.spec.sparsity])[0]

    return _cached_masks(ctx.key("masks"), compute)


def build_masks(
    spec: ExperimentSpec, sparsities: Sequence[float], progress: StageProgress | None = None
) -> list[dict[str, Tensor]]:
    """The masks of ``spec`` at several sparsities, each cached as :func:`get_masks` would.

    One-shot masks not cached yet all come from one read of the scores and one partition
    (:func:`pai_core.masks.global_topk_many`); iterative ones (``rounds > 1``) are built one by one.
    """
    ctx = prepare(spec, progress)
    ctxs = [dataclasses.replace(ctx, spec=spec.replace(sparsity=q)) for q in sparsities]
    if spec.rounds == 1:
        todo = [
            c
            for c in ctxs
            if not (
                cache.cache_dir() / "masks" / f"{cache.spec_key('masks', c.key('masks'))}.safetensors"
            ).exists()
        ]
        if todo:
            made = _topk(ctx, get_scores(ctx), [c.spec.sparsity for c in todo])
            for c, m in zip(todo, made):
                _cached_masks(c.key("masks"), lambda m=m: m)
    return [get_masks(c) for c in ctxs]


def _diagnostics(ctx: Context, mask: dict[str, Tensor], compensated: dict[str, int]) -> dict:
    """Run-level diagnostics: where second-order scores break down, shown (see the module doc)."""
    sc = get_scores(ctx)
    total = sum(v.numel() for v in sc.values())
    zero = sum(int((v == 0).sum()) for v in sc.values())
    kinds = layers.layer_kinds(ctx.encoder.model, list(sc))
    filters: dict[str, dict[str, int]] = {}
    for n, v in sc.items():
        dead = layers.filters_removed(v != 0)  # filters whose every score is exactly 0
        if dead.any():
            k = filters.setdefault(kinds[n], {"filters": 0, "weights": 0, "removed_whole": 0})
            k["filters"] += int(dead.sum())
            k["weights"] += int(dead.sum()) * (v[0].numel())
            k["removed_whole"] += int((dead & layers.filters_removed(mask[n])).sum())
    _pairs, stats = get_channels(ctx)
    out: dict[str, Any] = {
        "zero_score_share": zero / total if total else 0.0,
        "zero_score_weights": zero,
        "scored_weights": total,
        "zero_score_filters": filters,
        **stats.dead_summary(),
        "filters_removed_whole": sum(int(layers.filters_removed(m).sum()) for m in mask.values()),
        "rounds": ctx.spec.rounds,
    }
    if ctx.spec.bn_aware:
        out["bn_compensated_channels"] = sum(compensated.values())
    out["score"] = get_score_diagnostics(ctx)
    return out


def get_finetuned(ctx: Context, mask: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict]:
    """State dict of the pruned encoder after fine-tuning on the source task (cached) and its log."""
    spec = ctx.spec
    log: dict = {}

    def compute() -> dict[str, Tensor]:
        model, _ = pruned_encoder(ctx, mask)
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
        try:
            res = _run(spec, progress)
        finally:
            # Freed buffers the tuned allocator kept for reuse go back to the kernel, so a
            # long-lived process (dashboard, sweep) does not hold one run's memory into the next.
            runtime.release_memory()
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


#: Clock of the stage timings (wall time; the benchmarks switch it to ``time.process_time``).
stage_clock = time.perf_counter


def _run(spec: ExperimentSpec, progress: StageProgress) -> ExperimentResult:
    timings: dict[str, float] = {}
    t0 = stage_clock()

    def tick(name: str) -> None:
        nonlocal t0
        now = stage_clock()
        timings[name] = timings.get(name, 0.0) + now - t0
        t0 = now

    ctx = prepare(spec, progress)
    tick("load")

    dense = ctx.heads.dense

    mask = get_masks(ctx)
    report = masks.sparsity_report(mask)
    collapsed = masks.collapsed_layers(mask)
    tick("scores+masks")
    pruned, compensated = pruned_encoder(ctx, mask)
    diagnostics = _diagnostics(ctx, mask, compensated)
    tick("diagnostics")

    # Tasks of spec.transfer_suite (cross-domain), evaluated after the suite's own at every stage.
    xdom = None
    if spec.transfer_suite is not None:
        xdom = transfer_stages.CrossDomain(prepare(transfer_stages.cross_spec(spec), progress))
    if xdom is not None:
        dense = dense + xdom.dense
    tick("features+heads")

    def accuracies(model: nn.Module, stage: str) -> list[float]:
        accs = evaluate(
            model,
            ctx.encoder,
            ctx.suite,
            ctx.heads,
            image_size=ctx.image_size,
            device=ctx.device,
            progress=ctx.stage(stage),
        )
        return accs + (xdom.evaluate(model, stage) if xdom is not None else [])

    zs = accuracies(pruned, "zero-shot")
    tick("zero-shot")

    n_tasks = len(zs)
    ft_accs: list[float | None] = [None] * n_tasks
    ft_log = None
    if spec.finetune:
        state, ft_log = get_finetuned(ctx, mask)
        tick("fine-tune")
        tuned = ctx.encoder.copy().model
        tuned.load_state_dict(state)
        ft_accs = accuracies(tuned, "evaluate")
        tick("evaluate")

    # OBS-corrected: the pruned encoder with the source's optimal update δ of Eq. (3), no SGD.
    rep_accs: list[float | None] = [None] * n_tasks
    rep_report = None
    if spec.repair:
        state, rep_report = transfer_stages.get_repaired(ctx, mask)
        tick("repair")
        fixed = ctx.encoder.copy().model
        fixed.load_state_dict(state)
        rep_accs = accuracies(fixed, "repaired")
        tick("evaluate repaired")

    n = len(ctx.suite.tasks)
    names = [t.name for t in ctx.suite.tasks] + (xdom.names if xdom is not None else [])
    classes = [t.num_classes for t in ctx.suite.tasks] + (
        [t.num_classes for t in xdom.ctx.suite.tasks] if xdom is not None else []
    )
    tasks = [
        TaskResult(
            task=name,
            role="source" if k == spec.source else "transfer" if k < n else "cross-domain",
            dense=dense[k],
            zero_shot=zs[k],
            finetuned=ft_accs[k],
            num_classes=classes[k],
            repaired=rep_accs[k],
        )
        for k, name in enumerate(names)
    ]
    notes = list(ctx.suite.notes)
    if ctx.suite.image_size and ctx.image_size != ctx.suite.image_size and not spec.image_size:
        notes.append(
            f"images fed at {ctx.image_size} px, the size {spec.model}'s position embeddings are "
            f"learned for (the suite's {ctx.suite.image_size} px would not fit)"
        )
    if xdom is not None:
        notes += [xdom.note(), *xdom.ctx.suite.notes]
    if rep_report is not None:
        notes += rep_report.notes()
    if collapsed:
        notes.append(f"layer collapse: {len(collapsed)} layer(s) lost every weight, e.g. {collapsed[:3]}")
    if ctx.suite.skipped:
        notes.append(f"{ctx.suite.skipped} unreadable image file(s) skipped")
    if spec.holdout:
        notes.append(
            "held-out split: heads fitted on one half, evaluated on the other (deviation from the paper)"
        )
    notes += _option_notes(spec, diagnostics)
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
        diagnostics=diagnostics,
    )


def _option_notes(spec: ExperimentSpec, diag: dict) -> list[str]:
    """One line per deviation from the paper's protocol, and per breakdown the diagnostics show."""
    notes = []
    if spec.rounds > 1:
        notes.append(
            f"iterative pruning: {spec.rounds} rounds on an exponential schedule (re-scored each round)"
        )
    if spec.prune_layers != "all":
        notes.append(f"only {spec.prune_layers} layers pruned (a deviation from the paper)")
    if spec.bn_aware:
        notes.append(
            f"BN-aware: {diag.get('bn_compensated_channels', 0)} channel(s) whose whole filter was removed "
            "keep their mean output (a deviation from the paper)"
        )
    if spec.ridge != "closed-form":
        notes.append(
            "ridge heads with intercept and class-balanced weights (the authors' code, not the text)"
        )
    if diag.get("zero_score_share", 0) > 0.01:
        notes.append(
            f"{100 * diag['zero_score_share']:.1f}% of the scores are exactly 0 "
            f"({diag.get('dead_channels', 0)} dead channels on the source data): the score cannot rank them"
        )
    return notes


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
