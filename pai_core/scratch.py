"""Prune a randomly initialised network once, then train it from scratch (the scalable paper's protocol).

Gollini Navarrete et al. (2025, arXiv 2502.11450; code github.com/Gollini/Scalable_Second_Order_PaI,
``batch_exp/experiments/pbt.py``) ask the classic PaI question: which criterion, computed on a
randomly initialised network and a few labelled examples, keeps the weights that train best?
One run (:func:`run_scratch`, described by a :class:`~pai_core.scratch_spec.ScratchSpec`):

1. **init**: the network from :mod:`pai_core.nets`, seeded by ``spec.seed``;
2. **BatchNorm warm-up** (``spec.bn_warmup``): ``"paper"`` runs one train-mode pass over the
   training set updating the running statistics with momentum 0.1, without resetting them
   (:func:`pai_core.scores.warmup_batchnorm` with ``mode="running"``, the authors' ``warmup_step``); ``"reset"`` uses this
   project's :func:`pai_core.scores.warmup_batchnorm` (reset, then a cumulative average);
   ``"off"`` leaves the statistics at mean 0, variance 1;
3. **score** (:func:`pai_core.scores.compute`) with the cross-entropy of the network's own
   logits, on ``score_per_class`` training examples per class (the paper: 10), in eval mode
   (BatchNorm uses its running statistics, which is why the warm-up matters);
4. **mask**: global (or layer-wise) top-k over the covered weights (``prune_layers``: Conv
   weights only, as the paper's code, which keeps biases, BatchNorm and the final linear layer
   dense);
5. **train** from the initial weights (with the warmed-up statistics) with the mask applied by
   :func:`pai_core.masks.apply_masks`, so pruned weights stay exactly zero through SGD momentum
   and weight decay; test accuracy after every epoch.

Every stage is cached through :mod:`pai_core.cache`: scores once per (network, seed, data,
score, warm-up), whatever the sparsity (with the BatchNorm buffers after the warm-up, so a run
that reuses cached scores trains from exactly the same state); masks per sparsity; the final
result as JSON.

Deviations from the paper's code, on purpose: the training batches are shuffled every epoch
(its training loader is not shuffled); scoring examples go through the network in batches of
:data:`SCORE_BATCH` rather than one by one (the per-example maths of every score is unchanged;
see :mod:`pai_core.scores`); its Hutchinson pass divides the logits by a temperature T = 200,
this project's ``hutchinson`` does not; its scoring examples are augmented, ours are not.

The command line is ``python -m pai_core scratch {list,run,grid}`` (:mod:`pai_core.scratch_cli`);
grids of runs are sweeps of the ``scratch`` kind (:mod:`pai_core.scratch_sweep`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cache, datasets, masks, nets, scores
from .features import pick_device
from .scratch_spec import (
    BN_WARMUPS,
    DATA_FREE_SCORES,
    PAPER_SCORES,
    RESULT_VERSION,
    SCHEDULES,
    ScratchResult,
    ScratchSpec,
    TrainSchedule,
    schedule,
)

__all__ = [
    # run
    "ScratchSpec",
    "ScratchResult",
    "TrainSchedule",
    "SCHEDULES",
    "StageProgress",
    "run_scratch",
    "validate",
    # grids
    "default_scores",
    "is_data_free",
    "plan_grid",
    "run_grid",
    # building blocks (tests, benchmarks, the dashboard)
    "SCORE_BATCH",
    "TEST_SUBSET_SEED",
    "Batches",
    "prepare_data",
    "build_model",
    "get_scored_state",
    "get_masks",
    "train_masked",
    "evaluate",
]

#: ``progress(stage, done, total, message)``; stages: "data", "warm-up", "scores", "masks", "train".
StageProgress = Callable[[str, int, int, str], None]

#: Scoring examples per forward/backward batch (the paper's code: 1; scores are per-example exact).
SCORE_BATCH = 50
#: Seed of the train/test subsets: fixed, so that every seed and score of a grid trains and is
#: tested on the same images, as the paper's runs share the full CIFAR splits.
TEST_SUBSET_SEED = 0
_EVAL_BATCH = 1000


def _derive(seed: int, tag: str) -> int:
    """Independent seeds for independent random streams of one run (init, order, scoring, ...)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}/{tag}".encode()).digest()[:7], "big")


def _quiet(stage: str, done: int, total: int, message: str) -> None:
    pass


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------


class Batches:
    """Re-iterable normalised ``(x, y)`` batches of ``data`` at ``indices`` (in that order).

    Args:
        data: The dataset.
        indices: Training-set indices (``split="train"``) or test-set indices.
        batch_size: Batch size; a last batch of one example is merged into the previous one
            (train-mode BatchNorm cannot normalise a single example).
        device: Where the batches go.
        split: ``"train"`` or ``"test"``.
        augment: Generator for :func:`pai_core.datasets.crop_flip`, or ``None`` for none.
    """

    def __init__(
        self,
        data: datasets.ImageData,
        indices: Tensor,
        batch_size: int,
        device: torch.device | str = "cpu",
        split: str = "train",
        augment: torch.Generator | None = None,
    ) -> None:
        self.data, self.indices, self.batch_size = data, indices, int(batch_size)
        self.device, self.augment = torch.device(device), augment
        self.x, self.y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
        self.starts = list(range(0, len(indices), self.batch_size))
        if len(self.starts) > 1 and len(indices) - self.starts[-1] == 1:
            self.starts.pop()

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for i, s in enumerate(self.starts):
            end = self.starts[i + 1] if i + 1 < len(self.starts) else len(self.indices)
            idx = self.indices[s:end]
            xb = self.x[idx].to(self.device)
            if self.augment is not None:
                xb = datasets.crop_flip(xb, self.augment)
            yield self.data.normalise(xb), self.y[idx].to(self.device)


def prepare_data(spec: ScratchSpec) -> tuple[datasets.ImageData, Tensor, Tensor, Tensor]:
    """The dataset and the run's training, test and scoring indices.

    Training and test subsets (``train_size``, ``test_size``) are balanced per class and drawn
    with :data:`TEST_SUBSET_SEED` (the same images for every seed); the scoring examples are
    ``score_per_class`` per class drawn from the training subset with the run's seed.

    Raises:
        pai_core.tasks.DataError: The data are missing or malformed.
    """
    data = datasets.load(spec.dataset, spec.data_root)
    c = data.num_classes
    train_idx = datasets.balanced_indices(data.train_y, spec.train_size, TEST_SUBSET_SEED, c)
    test_idx = datasets.balanced_indices(data.test_y, spec.test_size, TEST_SUBSET_SEED + 1, c)
    pick = datasets.balanced_indices(
        data.train_y[train_idx], spec.score_per_class * c, _derive(spec.seed, "score-data"), c
    )
    return data, train_idx, test_idx, train_idx[pick]


def build_model(spec: ScratchSpec, data: datasets.ImageData) -> nn.Module:
    """The freshly initialised network of ``spec`` for ``data`` (seeded by ``spec.seed``)."""
    return nets.create(
        spec.model,
        in_channels=data.channels,
        num_classes=data.num_classes,
        width=spec.width,
        seed=spec.seed,
        init=spec.init,
    )


# --------------------------------------------------------------------------------------
# BatchNorm warm-up (the paper's variant)
# --------------------------------------------------------------------------------------


def _warmup(
    spec: ScratchSpec,
    model: nn.Module,
    data: datasets.ImageData,
    train_idx: Tensor,
    device: torch.device,
    progress: Callable[[int, int, str], None],
) -> None:
    sched = schedule(spec.schedule)
    # As the paper: one pass over the training set in its stored order, with the training transform.
    aug = (
        torch.Generator().manual_seed(_derive(spec.seed, "warm-up"))
        if sched.augment and data.augmentation == "crop+flip"
        else None
    )
    batches = Batches(data, train_idx, sched.batch_size, device, "train", aug)
    if spec.bn_warmup == "paper":
        scores.warmup_batchnorm(model, batches, 1, progress, mode="running")
    elif spec.bn_warmup == "reset":
        scores.warmup_batchnorm(model, batches, 1, progress, mode="reset-cumulative")


# --------------------------------------------------------------------------------------
# scores and masks (cached)
# --------------------------------------------------------------------------------------

_BUFFER_PREFIX = "__buffer__/"


def _score_key(spec: ScratchSpec, data: datasets.ImageData) -> dict[str, Any]:
    sched = schedule(spec.schedule)
    warm = spec.bn_warmup != "off"
    return {
        "v": RESULT_VERSION,
        "model": spec.model,
        "width": spec.width,
        "init": spec.init,
        "data": data.identity,
        "train_size": spec.train_size,
        "score": spec.score,
        "options": [list(kv) for kv in spec.score_options],
        "score_per_class": spec.score_per_class,
        "score_batch": SCORE_BATCH,
        "prune_layers": spec.prune_layers,
        "bn_warmup": spec.bn_warmup,
        # the warm-up reads the training set in the schedule's batches (and augmentation)
        "warmup_batch": sched.batch_size if warm else None,
        "warmup_augment": (sched.augment and data.augmentation == "crop+flip") if warm else None,
        "loss": "ce",
        "seed": spec.seed,
    }


def _score_options(spec: ScratchSpec) -> dict[str, Any]:
    opts = dict(spec.score_options)
    # Stochastic scores (the registry says which) follow the run's seed unless the options fix one,
    # as the transfer protocol does (pai_core.experiment.get_scores).
    if scores.info(spec.score).stochastic:
        opts.setdefault("seed", spec.seed)
    return opts


def get_scored_state(
    spec: ScratchSpec,
    model: nn.Module,
    data: datasets.ImageData,
    train_idx: Tensor,
    score_idx: Tensor,
    device: torch.device,
    progress: StageProgress = _quiet,
) -> tuple[dict[str, Tensor] | None, dict[str, float]]:
    """Warm up ``model`` (in place) and score it; both cached independently of the sparsity.

    On a cache miss the warm-up runs on ``model`` and the scores are computed; on a hit the
    cached BatchNorm buffers are loaded into ``model``.  Either way ``model`` leaves in the same
    state.  A dense run (``sparsity == 0``) computes no scores.

    Returns:
        ``(scores or None, timings)`` with scores keyed by parameter name, on the CPU.
    """
    timings: dict[str, float] = {}
    if spec.sparsity == 0.0:
        t0 = time.perf_counter()
        if spec.bn_warmup != "off":
            _warmup(spec, model, data, train_idx, device, lambda d, t, m: progress("warm-up", d, t, m))
        timings["warm-up"] = time.perf_counter() - t0
        return None, timings
    computed = False

    def compute() -> dict[str, Tensor]:
        nonlocal computed
        computed = True
        t0 = time.perf_counter()
        if spec.bn_warmup != "off":
            _warmup(spec, model, data, train_idx, device, lambda d, t, m: progress("warm-up", d, t, m))
        t1 = time.perf_counter()
        names = nets.prunable_weights(model, spec.prune_layers)
        batches = Batches(data, score_idx, SCORE_BATCH, device, "train", None)
        out = scores.compute(
            spec.score,
            model,
            batches,
            params=names,
            loss="ce",
            progress=lambda d, t, m: progress("scores", d, t, m),
            **_score_options(spec),
        )
        timings["warm-up"] = t1 - t0
        timings["scores"] = time.perf_counter() - t1
        state = {n: s.detach().float().cpu() for n, s in out.items()}
        if spec.bn_warmup != "off":
            state.update({_BUFFER_PREFIX + n: b.detach().cpu() for n, b in model.named_buffers()})
        return state

    state = cache.cached_tensors("scratch-scores", _score_key(spec, data), compute)
    if not computed:
        buffers = {
            k.removeprefix(_BUFFER_PREFIX): v for k, v in state.items() if k.startswith(_BUFFER_PREFIX)
        }
        own = dict(model.named_buffers())
        with torch.no_grad():
            for n, b in buffers.items():
                own[n].copy_(b)
    return {k: v for k, v in state.items() if not k.startswith(_BUFFER_PREFIX)}, timings


def get_masks(
    spec: ScratchSpec, score_state: dict[str, Tensor] | None, model: nn.Module, data: datasets.ImageData
) -> dict[str, Tensor]:
    """Keep-masks at ``spec.sparsity`` (cached, bit-packed); all-True for a dense run.

    Layer collapse is not warned about here: :func:`run_scratch` reports it in the result.
    """
    if score_state is None:
        params = dict(model.named_parameters())
        return {
            n: torch.ones_like(params[n], dtype=torch.bool)
            for n in nets.prunable_weights(model, spec.prune_layers)
        }
    key = {**_score_key(spec, data), "sparsity": spec.sparsity, "scope": spec.mask_scope}

    def compute() -> dict[str, Tensor]:
        # NOTE(synflow): the paper's SynFlow prunes iteratively (100 rounds, exponential
        # schedule), so its mask depends on the sparsity and is not a top-k of one score.
        # When the registry's synflow is iterative, its mask function goes here instead.
        fn = masks.global_topk if spec.mask_scope == "global" else masks.layerwise_topk
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return masks.pack(fn(score_state, spec.sparsity))

    return masks.unpack(cache.cached_tensors("scratch-masks", key, compute))


# --------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module, data: datasets.ImageData, indices: Tensor, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on test-set ``indices`` (eval mode; the mode is restored)."""
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    try:
        for x, y in Batches(data, indices, _EVAL_BATCH, device, "test"):
            out = model(x).float()
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    finally:
        for m, t in was:
            m.training = t
    return loss_sum / max(n, 1), correct / max(n, 1)


def _lr_scheduler(opt: torch.optim.Optimizer, sched: TrainSchedule) -> torch.optim.lr_scheduler.LRScheduler:
    if sched.lr_schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, list(sched.milestones), gamma=sched.gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sched.epochs, eta_min=0.0)


def _pruned_nonzero(model: nn.Module, mask: dict[str, Tensor]) -> int:
    params = dict(model.named_parameters())
    return sum(int((params[n].detach()[~m.to(params[n].device)] != 0).sum()) for n, m in mask.items())


def train_masked(
    model: nn.Module,
    mask: dict[str, Tensor],
    data: datasets.ImageData,
    train_idx: Tensor,
    test_idx: Tensor,
    sched: TrainSchedule,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[list[dict[str, float]], int, list[str]]:
    """Train ``model`` (in place) from its current weights with ``mask`` applied throughout.

    SGD with momentum and weight decay on every parameter, cross-entropy, the schedule's step
    sizes stepped per epoch; batches reshuffled every epoch from ``seed``; on CUDA, bf16
    autocast.  :func:`pai_core.masks.apply_masks` zeroes the pruned weights, masks their
    gradients (so momentum and weight decay add exactly zero there) and re-zeroes them before
    every forward; the masks are removed (zeros baked in) at the end, also on error.  After each
    epoch's last step, before any further forward, the pruned weights are checked to be exactly
    zero; the count of any that are not is returned.  Training stops early when the loss is
    not finite (said in the notes).

    Args:
        model: Network (train mode is set; the flag is left in train mode).
        mask: ``{parameter name: bool keep-mask}``.
        data, train_idx, test_idx: Data and the indices to train and test on.
        sched: The recipe.
        seed: Seed of the batch order and augmentation.
        device: Where to train.
        progress: ``progress(done_steps, total_steps, message)``.

    Returns:
        ``(curve, pruned_nonzero, notes)``: one dict per epoch (``epoch``, ``lr``,
        ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``), the largest number of
        nonzero pruned weights seen at an epoch's end (0 when the mask held), notes.
    """
    device = torch.device(device)
    model.to(device)
    model.train()
    order_gen = torch.Generator().manual_seed(_derive(seed, "order"))
    aug_gen = (
        torch.Generator().manual_seed(_derive(seed, "augment"))
        if sched.augment and data.augmentation == "crop+flip"
        else None
    )
    opt = torch.optim.SGD(
        model.parameters(),
        lr=sched.lr,
        momentum=sched.momentum,
        weight_decay=sched.weight_decay,
        nesterov=sched.nesterov,
    )
    lr_sched = _lr_scheduler(opt, sched)
    amp = device.type == "cuda"
    dev_mask = {n: m.to(device) for n, m in mask.items()}
    handle = masks.apply_masks(model, dev_mask)
    curve: list[dict[str, float]] = []
    notes: list[str] = []
    worst = 0
    steps_per_epoch = len(Batches(data, train_idx, sched.batch_size))
    total, step = steps_per_epoch * sched.epochs, 0
    try:
        for epoch in range(1, sched.epochs + 1):
            perm = train_idx[torch.randperm(len(train_idx), generator=order_gen)]
            lr = opt.param_groups[0]["lr"]
            loss_sum, correct, seen, finite = 0.0, 0, 0, True
            for x, y in Batches(data, perm, sched.batch_size, device, "train", aug_gen):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(x)
                loss = F.cross_entropy(out.float(), y)
                if not torch.isfinite(loss):
                    finite = False
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += float(loss.detach()) * len(y)
                correct += int((out.detach().argmax(1) == y).sum())
                seen += len(y)
                step += 1
                if progress:
                    progress(step, total, f"training ({sched.name}), epoch {epoch}/{sched.epochs}")
            lr_sched.step()
            worst = max(worst, _pruned_nonzero(model, dev_mask))
            test_loss, test_acc = evaluate(model, data, test_idx, device)
            curve.append(
                {
                    "epoch": epoch,
                    "lr": lr,
                    "train_loss": loss_sum / max(seen, 1),
                    "train_acc": correct / max(seen, 1),
                    "test_loss": test_loss,
                    "test_acc": test_acc,
                }
            )
            if not finite:
                notes.append(f"training stopped in epoch {epoch}: the loss was not finite")
                break
    finally:
        masks.remove_masks(model, handle)
    return curve, worst, notes


# --------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------


def validate(spec: ScratchSpec) -> None:
    """Check the names that need the registries (network, dataset, score, device).

    Raises:
        ValueError: Unknown name (the message lists the valid ones) or an unusable device.
    """
    nets.info(spec.model)
    datasets.info(spec.dataset)
    if spec.score not in scores.available():
        raise ValueError(f"unknown score {spec.score!r}; valid: {', '.join(scores.available())}")
    pick_device(spec.device)


def _result_path(spec: ScratchSpec, data: datasets.ImageData) -> Path:
    key = cache.spec_key(
        "scratch-results",
        {**spec.to_dict(), "device": None, "data": data.identity, "v": RESULT_VERSION},
    )
    return cache.cache_dir() / "scratch-results" / f"{key}.json"


def _load_result(path: Path) -> ScratchResult | None:
    try:
        res = ScratchResult.from_dict(cache.load_json(path))
    except (FileNotFoundError, cache.CacheCorrupt, TypeError, KeyError, ValueError):
        return None
    res.cached = True
    return res


def run_scratch(
    spec: ScratchSpec, progress: StageProgress | None = None, *, use_cache: bool = True
) -> ScratchResult:
    """Run one prune-at-init-then-train-from-scratch experiment (module docstring), cached.

    Args:
        spec: What to run.
        progress: ``progress(stage, done, total, message)``.
        use_cache: Return a finished result for the same spec and data when there is one
            (the score and mask stages are cached regardless).

    Returns:
        The :class:`ScratchResult`.

    Raises:
        ValueError: Unknown names or options.
        pai_core.tasks.DataError: The dataset is missing or malformed.
    """
    progress = progress or _quiet
    validate(spec)
    progress("data", 0, 1, f"loading {spec.dataset}")
    data = datasets.load(spec.dataset, spec.data_root)
    path = _result_path(spec, data)
    if use_cache and (hit := _load_result(path)) is not None:
        progress("done", 1, 1, "result from cache")
        return hit
    with cache.locked(path):  # a second identical run waits, then reuses the first one's result
        if use_cache and (hit := _load_result(path)) is not None:
            progress("done", 1, 1, "result from cache (computed meanwhile by another run)")
            return hit
        res = _run(spec, progress)
        cache.save_json(path, res.to_dict())
    progress("done", 1, 1, "finished")
    return res


def _run(spec: ScratchSpec, progress: StageProgress) -> ScratchResult:
    t_start, cpu_start = time.perf_counter(), time.process_time()
    timings: dict[str, float] = {}
    device = pick_device(spec.device)
    sched = schedule(spec.schedule)
    data, train_idx, test_idx, score_idx = prepare_data(spec)
    progress("data", 1, 1, "data ready")
    timings["data"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    model = build_model(spec, data).to(device)
    timings["init"] = time.perf_counter() - t0

    score_state, t = get_scored_state(spec, model, data, train_idx, score_idx, device, progress)
    timings.update(t)
    t0 = time.perf_counter()
    progress("masks", 0, 1, "masks")
    mask = get_masks(spec, score_state, model, data)
    progress("masks", 1, 1, "masks ready")
    timings["masks"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    curve, nonzero, train_notes = train_masked(
        model,
        mask,
        data,
        train_idx,
        test_idx,
        sched,
        seed=spec.seed,
        device=device,
        progress=lambda d, tot, m: progress("train", d, tot, m),
    )
    timings["train"] = time.perf_counter() - t0
    timings["epoch"] = timings["train"] / max(len(curve), 1)
    timings["total"] = time.perf_counter() - t_start
    # CPU seconds of this process (all its threads): on a shared machine the honest cost, as wall
    # time grows with whatever else runs there.
    timings["cpu"] = time.process_time() - cpu_start

    order = {n: i for i, (n, _p) in enumerate(model.named_parameters())}
    layer_density = [
        {"name": n, "numel": m.numel(), "kept": int(m.sum()), "density": float(m.sum()) / m.numel()}
        for n, m in sorted(mask.items(), key=lambda kv: order[kv[0]])
    ]
    collapsed = masks.collapsed_layers(mask)
    kept = sum(r["kept"] for r in layer_density)
    total = sum(r["numel"] for r in layer_density)
    best = max(range(len(curve)), key=lambda i: curve[i]["test_acc"])
    notes = _notes(spec, sched, data, train_idx, test_idx, collapsed, nonzero) + train_notes
    return ScratchResult(
        spec=spec,
        final_acc=curve[-1]["test_acc"],
        best_acc=curve[best]["test_acc"],
        best_epoch=int(curve[best]["epoch"]),
        curve=curve,
        layer_density=layer_density,
        collapsed_layers=collapsed,
        kept=kept,
        total=total,
        pruned_nonzero=nonzero,
        schedule={**dataclasses.asdict(sched), "milestones": list(sched.milestones)},
        train_examples=len(train_idx),
        test_examples=len(test_idx),
        score_examples=len(score_idx) if score_state is not None else 0,
        timings=timings,
        notes=notes,
        device=str(device),
    )


def _notes(spec, sched, data, train_idx, test_idx, collapsed, nonzero) -> list[str]:
    notes = []
    if sched.name != "paper":
        notes.append(f"schedule: {sched.label}")
    if len(train_idx) < len(data.train_y):
        notes.append(f"trained on a balanced subset: {len(train_idx)} of {len(data.train_y)} training images")
    if len(test_idx) < len(data.test_y):
        notes.append(f"tested on a balanced subset: {len(test_idx)} of {len(data.test_y)} test images")
    if spec.sparsity == 0.0:
        notes.append("dense network (sparsity 0): no score computed, nothing pruned")
    elif spec.bn_warmup != "off" and is_data_free(spec.score):
        notes.append(f"{spec.score} looks at no data: the BatchNorm warm-up cannot change its mask")
    if spec.score == "hutchinson" and spec.sparsity > 0:
        notes.append("hutchinson on the plain logits (the paper's code divides them by T = 200 first)")
    if collapsed:
        notes.append(f"layer collapse: {len(collapsed)} layer(s) kept no weight, e.g. {collapsed[:3]}")
    if nonzero:
        notes.append(f"BUG: {nonzero} pruned weight(s) were nonzero after an epoch")
    return notes


# --------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------


def is_data_free(score: str) -> bool:
    """Whether a score looks at no data (so the BatchNorm warm-up cannot change its mask).

    From the registry's metadata (:attr:`pai_core.scores.ScoreInfo.data_driven`); a name it
    does not hold falls back to :data:`~pai_core.scratch_spec.DATA_FREE_SCORES`.
    """
    if score in scores.available():
        return not scores.info(score).data_driven
    return score in DATA_FREE_SCORES


def default_scores() -> list[str]:
    """The paper's criteria that the score registry has (:data:`PAPER_SCORES` order)."""
    have = scores.available()
    return [s for s in PAPER_SCORES if s in have]


def plan_grid(
    base: ScratchSpec,
    score_names: Sequence[str],
    sparsities: Sequence[float],
    bn_warmups: Sequence[str] = ("off", "paper"),
    seeds: Sequence[int] = (0,),
    *,
    dense: bool = False,
) -> list[ScratchSpec]:
    """Specs of a score × sparsity × warm-up × seed grid.

    Data-free scores (:func:`is_data_free`) run with ``bn_warmup="off"`` only when
    ``"off"`` is in the grid: the warm-up cannot change their mask, so the other variants would
    repeat the same training.  With ``dense``, one unpruned run per seed (score ignored) is added.
    """
    for w in bn_warmups:
        if w not in BN_WARMUPS:
            raise ValueError(f"unknown bn_warmup {w!r}; valid: {', '.join(BN_WARMUPS)}")
    specs = []
    if dense:
        specs += [base.replace(sparsity=0.0, score="magnitude", bn_warmup="off", seed=s) for s in seeds]
    for score, q, w, s in itertools.product(score_names, sparsities, bn_warmups, seeds):
        if is_data_free(score) and w != "off" and "off" in bn_warmups:
            continue
        specs.append(base.replace(score=score, sparsity=float(q), bn_warmup=w, seed=int(s)))
    return specs


def run_grid(
    specs: Sequence[ScratchSpec],
    progress: StageProgress | None = None,
    on_result: Callable[[int, ScratchResult], None] | None = None,
) -> list[ScratchResult]:
    """Run specs one after another (cached); ``on_result(i, result)`` after each."""
    out = []
    for i, spec in enumerate(specs):
        res = run_scratch(spec, progress)
        out.append(res)
        if on_result:
            on_result(i, res)
    return out
