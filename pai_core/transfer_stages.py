"""Experiment stages beyond the paper: OBS repair, the oracle mask and task alignment (issue 13).

Built on :mod:`pai_core.experiment`'s cached stages (encoder, suite, heads, scores, masks,
results), which are called, never copied:

* :func:`get_factors` — K-FAC factors at θ₀ of any task of the suite, through that task's own
  frozen head (cached on disk per task; shared by the repair and the alignment).
* :func:`get_fisher` — the diagonal empirical Fisher of any task, from the experiment's cached
  ``diag`` scores of that task (``F = s/θ²``).
* :func:`get_repaired` — the encoder pruned by the spec's mask and corrected by the OBS update
  of :mod:`pai_core.repair` with the *source* task's factors (cached like fine-tuned weights).
* :func:`repair_run` — zero-shot vs OBS-corrected accuracy on every task (P2 without SGD).
* :func:`oracle_run` — a transfer task's zero-shot accuracy pruned with the source's data vs
  with its own ("oracle", Eq. (1) with the transfer data): the price of not seeing it.
* :func:`alignment_run` — :class:`pai_core.alignment.Alignment` of the source and a transfer task.

The result types are plain dataclasses of numbers (no tensors) with ``to_dict``/``from_dict``.

Example:
    >>> from pai_core.experiment import ExperimentSpec                     # doctest: +SKIP
    >>> spec = ExperimentSpec(score="diag", sparsity=0.4, images_per_class=20)  # doctest: +SKIP
    >>> repair_run(spec).mean("transfer", "repaired")                       # doctest: +SKIP
    >>> oracle_run(spec, transfer=1).price                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from . import alignment as al
from . import cache, masks, repair, scores
from . import experiment as E
from .evaluate import Heads, evaluate
from .features import pick_device
from .models import Encoder
from .tasks import TaskSuite

__all__ = [
    # cached stages
    "get_factors",
    "get_fisher",
    "get_repaired",
    # runs
    "RepairTask",
    "RepairResult",
    "repair_run",
    "OracleResult",
    "oracle_run",
    "alignment_run",
]

Progress = Callable[[int, int, str], None]
#: Bump when the meaning of a cached factor or repaired-weight file changes.
STAGE_VERSION = 1


def _quiet(*args) -> None:
    pass


def _context(spec: E.ExperimentSpec) -> tuple[Encoder, TaskSuite, torch.device]:
    enc = E.get_encoder(spec.model, spec.checkpoint)
    suite = E.get_suite(spec.suite, spec.data_root, spec.images_per_class, spec.seed)
    if not 0 <= spec.source < len(suite.tasks):
        raise ValueError(
            f"source task {spec.source} out of range: suite {spec.suite!r} has {len(suite.tasks)} tasks"
        )
    return enc, suite, pick_device(spec.device)


def _check_task(suite: TaskSuite, task: int, what: str = "task") -> int:
    if not 0 <= int(task) < len(suite.tasks):
        names = ", ".join(f"{i}: {t.name}" for i, t in enumerate(suite.tasks))
        raise ValueError(f"{what} {task} out of range; the suite's tasks are {names}")
    return int(task)


# --------------------------------------------------------------------------------------
# Cached stages
# --------------------------------------------------------------------------------------


def get_factors(
    spec: E.ExperimentSpec,
    enc: Encoder,
    suite: TaskSuite,
    heads: Heads,
    device,
    task: int | None = None,
    progress: Progress | None = None,
) -> dict[str, scores.KFactors]:
    """K-FAC factors at θ₀ of task ``task`` (default: the source) through its frozen head (cached).

    Covers the encoder weights that :func:`pai_core.scores.kfac_factors` can factor (see
    :func:`pai_core.repair.factor_params`); keys are encoder parameter names.
    """
    t = spec.source if task is None else _check_task(suite, task)
    tspec = spec.replace(source=t)
    key = {**E._data_spec(tspec, enc, suite), "task": t, "loss": spec.loss, "v": STAGE_VERSION}

    def compute() -> dict[str, Tensor]:
        model = E._EncoderWithHead(enc.copy().model, heads.module(t)).to(device)
        wanted = [f"encoder.{n}" for n in E._scored_names(model.encoder)]
        names = repair.factor_params(model, wanted)
        batches = [(x.to(device), y.to(device)) for x, y in E._source_batches(tspec, enc, suite)]
        f = scores.kfac_factors(model, batches, params=names, loss=spec.loss, progress=progress)
        out = {}
        for n, kf in f.items():
            base = n.removeprefix("encoder.")
            out[f"{base}|A"] = kf.A.detach().float().cpu()
            out[f"{base}|B"] = kf.B.detach().float().cpu()
        return out

    flat = cache.cached_tensors("kfac_factors", key, compute)
    names = sorted({k.rpartition("|")[0] for k in flat})
    return {n: scores.KFactors(flat[f"{n}|A"], flat[f"{n}|B"]) for n in names}


def get_fisher(
    spec: E.ExperimentSpec,
    enc: Encoder,
    suite: TaskSuite,
    heads: Heads,
    device,
    task: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of task ``task`` (default: the source), NaN where θ₀ = 0.

    From the experiment's cached ``diag`` scores of that task (:func:`pai_core.experiment.get_scores`
    with the task as source), divided by θ₀² (:func:`pai_core.alignment.fisher_from_diag_scores`).
    """
    t = spec.source if task is None else _check_task(suite, task)
    dspec = spec.replace(source=t, score="diag", score_options=())
    s = E.get_scores(dspec, enc, suite, heads, device, progress)
    named = dict(enc.model.named_parameters())
    return al.fisher_from_diag_scores(s, {n: named[n] for n in s})


def _repair_key(spec: E.ExperimentSpec, enc: Encoder, suite: TaskSuite, opts: dict) -> dict:
    return {
        **E._score_spec(spec, enc, suite),
        "sparsity": spec.sparsity,
        "scope": spec.mask_scope,
        "repair": opts,
        "v": STAGE_VERSION,
    }


def get_repaired(
    spec: E.ExperimentSpec,
    enc: Encoder,
    suite: TaskSuite,
    heads: Heads,
    mask: Mapping[str, Tensor],
    device,
    *,
    form: str = "a",
    damping: float = repair.DEFAULT_DAMPING,
    tol: float = 1e-6,
    max_iter: int = 300,
    progress: Progress | None = None,
) -> tuple[dict[str, Tensor], repair.RepairReport]:
    """State dict of the encoder pruned by ``mask`` and OBS-corrected on the source (cached), and its report.

    The source task's K-FAC factors at θ₀ (:func:`get_factors`) define the curvature; ``form``,
    ``damping``, ``tol`` and ``max_iter`` are :func:`pai_core.repair.repair_`'s.
    """
    opts = {
        "form": repair.RepairForm(form).value,
        "damping": float(damping),
        "tol": float(tol),
        "max_iter": int(max_iter),
    }

    def compute() -> dict[str, Tensor]:
        factors = get_factors(spec, enc, suite, heads, device, progress=progress)
        model = enc.copy().model.to(device)
        rep = repair.repair_(model, mask, factors, progress=progress, **opts)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        state["__report__"] = torch.tensor(list(json.dumps(rep.to_dict()).encode()), dtype=torch.uint8)
        return state

    state = dict(cache.cached_tensors("repaired", _repair_key(spec, enc, suite, opts), compute))
    blob = state.pop("__report__")
    return state, repair.RepairReport.from_dict(json.loads(bytes(blob.tolist()).decode()))


# --------------------------------------------------------------------------------------
# Zero-shot vs OBS-corrected
# --------------------------------------------------------------------------------------


@dataclass
class RepairTask:
    """Accuracies on one task: dense, pruned (zero-shot) and pruned + OBS-corrected."""

    task: str
    role: str  # "source" or "transfer"
    dense: float
    zero_shot: float
    repaired: float


@dataclass
class RepairResult:
    """What :func:`repair_run` returns.

    Attributes:
        spec: The experiment (its mask is the one corrected).
        form, damping: The repair's curvature block and damping.
        tasks: Per-task accuracies, the source first as in the suite order.
        report: The repair's per-layer report, as :meth:`pai_core.repair.RepairReport.to_dict`.
        seconds: Wall time of the stages run here (``factors+repair`` is 0 on a cache hit).
        notes: Caveats from the repair (layers skipped, solves stopped early).
    """

    spec: E.ExperimentSpec
    form: str
    damping: float
    tasks: list[RepairTask]
    report: dict
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def mean(self, role: str, kind: str) -> float | None:
        """Mean of ``kind`` (``"dense"``, ``"zero_shot"``, ``"repaired"``) over tasks of ``role``."""
        vals = [getattr(t, kind) for t in self.tasks if t.role == role]
        return sum(vals) / len(vals) if vals else None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["spec"] = dataclasses.asdict(self.spec)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> RepairResult:
        d = dict(d)
        d["spec"] = E.ExperimentSpec.from_json(d["spec"])
        d["tasks"] = [RepairTask(**t) for t in d["tasks"]]
        return cls(**d)


def repair_run(
    spec: E.ExperimentSpec,
    *,
    form: str = "a",
    damping: float = repair.DEFAULT_DAMPING,
    tol: float = 1e-6,
    max_iter: int = 300,
    progress: E.StageProgress | None = None,
) -> RepairResult:
    """Zero-shot vs OBS-corrected accuracy of the spec's pruned encoder on every task.

    The zero-shot numbers are :func:`pai_core.experiment.run`'s (cached; its fine-tuning, if
    the spec asks for it, runs too); the correction uses only the source task's data.
    """
    progress = progress or _quiet
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    base = E.run(spec, progress)
    times["experiment"] = time.perf_counter() - t0
    enc, suite, device = _context(spec)
    heads = E.get_heads(spec, enc, suite, device, partial(progress, "features"))
    mask = E.get_masks(spec, enc, suite, heads, device, partial(progress, "scores"))
    t0 = time.perf_counter()
    state, rep = get_repaired(
        spec,
        enc,
        suite,
        heads,
        mask,
        device,
        form=form,
        damping=damping,
        tol=tol,
        max_iter=max_iter,
        progress=partial(progress, "repair"),
    )
    times["factors+repair"] = time.perf_counter() - t0
    model = enc.copy().model
    model.load_state_dict(state)
    t0 = time.perf_counter()
    accs = evaluate(
        model,
        enc,
        suite,
        heads,
        image_size=E._image_size(spec, suite),
        device=device,
        progress=partial(progress, "evaluate"),
    )
    times["evaluate"] = time.perf_counter() - t0
    tasks = [RepairTask(t.task, t.role, t.dense, t.zero_shot, accs[k]) for k, t in enumerate(base.tasks)]
    return RepairResult(spec, rep.form, rep.damping, tasks, rep.to_dict(), times, rep.notes())


# --------------------------------------------------------------------------------------
# The oracle mask: pruning with the transfer task's own data
# --------------------------------------------------------------------------------------


@dataclass
class OracleResult:
    """A transfer task pruned with the source's data vs with its own data (same score, sparsity).

    Attributes:
        spec: The source experiment.
        transfer: Index of the transfer task in the suite; ``task`` its name.
        dense: Its dense accuracy.
        with_source: Zero-shot accuracy when pruned with the source's data (the paper's setting).
        with_own: Zero-shot accuracy when pruned with its own data (the oracle of Eq. (1)).
        jaccard: Overlap of the kept sets of the two masks.
    """

    spec: E.ExperimentSpec
    transfer: int
    task: str
    dense: float
    with_source: float
    with_own: float
    jaccard: float

    @property
    def price(self) -> float:
        """Accuracy lost by not seeing the transfer task: ``with_own − with_source`` (negative: none)."""
        return self.with_own - self.with_source

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["spec"] = dataclasses.asdict(self.spec)
        d["price"] = self.price
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> OracleResult:
        d = {k: v for k, v in d.items() if k != "price"}
        d["spec"] = E.ExperimentSpec.from_json(d["spec"])
        return cls(**d)


def oracle_run(
    spec: E.ExperimentSpec, transfer: int, progress: E.StageProgress | None = None
) -> OracleResult:
    """Zero-shot accuracy of task ``transfer`` pruned on the source vs pruned on itself.

    Two cached experiment runs: ``spec`` and ``spec`` with ``transfer`` as the source.  For a
    data-free score (``magnitude``, ``random``) both masks are the same by construction.
    """
    enc, suite, device = _context(spec)
    t = _check_task(suite, transfer, "transfer task")
    own_spec = spec.replace(source=t, finetune=None)
    src = E.run(spec.replace(finetune=None), progress)
    own = E.run(own_spec, progress)
    heads = E.get_heads(spec, enc, suite, device)
    m_src = E.get_masks(spec, enc, suite, heads, device)
    m_own = E.get_masks(own_spec, enc, suite, heads, device)
    return OracleResult(
        spec=spec,
        transfer=t,
        task=suite.tasks[t].name,
        dense=src.tasks[t].dense,
        with_source=src.tasks[t].zero_shot,
        with_own=own.tasks[t].zero_shot,
        jaccard=masks.jaccard(m_src, m_own),
    )


# --------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------


def alignment_run(
    spec: E.ExperimentSpec,
    transfer: int,
    *,
    k: int = al.DEFAULT_K,
    fisher: bool = True,
    factors: bool = True,
    mask: bool = True,
    progress: E.StageProgress | None = None,
) -> al.Alignment:
    """Alignment of the source and task ``transfer`` around θ₀ (:mod:`pai_core.alignment`).

    Args:
        spec: The source experiment; its score and sparsity define the two masks compared.
        transfer: Index of the transfer task (may equal the source: everything is then 1).
        k: Eigenvectors compared per K-FAC factor.
        fisher, factors, mask: Which of the three measurements to make (each costs a data
            pass per task on a cold cache: ``diag`` scores, K-FAC factors, the score).
        progress: ``progress(stage, done, total, message)``.

    Returns:
        The :class:`pai_core.alignment.Alignment`.
    """
    progress = progress or _quiet
    enc, suite, device = _context(spec)
    t = _check_task(suite, transfer, "transfer task")
    heads = E.get_heads(spec, enc, suite, device, partial(progress, "features"))
    f_pair = s_pair = m_pair = None
    if fisher:
        f_pair = tuple(
            get_fisher(spec, enc, suite, heads, device, task, partial(progress, "fisher"))
            for task in (spec.source, t)
        )
    if factors:
        subs = {
            task: al.factor_subspaces(
                get_factors(spec, enc, suite, heads, device, task, partial(progress, "factors")), k
            )
            for task in {spec.source, t}  # once when the transfer task is the source
        }
        s_pair = (subs[spec.source], subs[t])
    if mask:
        m_pair = (
            E.get_masks(spec, enc, suite, heads, device, partial(progress, "scores")),
            E.get_masks(spec.replace(source=t), enc, suite, heads, device, partial(progress, "scores")),
        )
    res = al.compare(
        suite.tasks[spec.source].name,
        suite.tasks[t].name,
        fisher=f_pair,
        subspaces=s_pair,
        masks=m_pair,
        k=k,
    )
    if mask and spec.score in ("magnitude", "random"):
        res.notes.append(f"{spec.score} is data-free: both masks are the same by construction (Jaccard 1)")
    return res
