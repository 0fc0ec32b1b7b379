"""Experiment stages beyond the paper: the K-FAC factors, the OBS repair and cross-domain tasks.

:func:`pai_core.experiment.run` calls these for the specs that ask for them (``spec.repair``,
``spec.transfer_suite``); they work on its :class:`~pai_core.experiment.Context` and cache like
its other stages.  (This module does not import :mod:`pai_core.experiment`; the pair-wise
analyses that need whole runs, the oracle mask and the alignment, are in :mod:`pai_core.task_pairs`.)

* :func:`get_factors` — K-FAC factors at θ₀ of a context's source task, through that task's own
  frozen head (cached on disk per task; the one home of the factors the repair and the
  alignment use).
* :func:`get_repaired` — the encoder pruned by the spec's mask and corrected by the OBS update of
  :mod:`pai_core.repair` with the *source* task's factors (``spec.repair``; cached like
  fine-tuned weights).  :func:`pai_core.experiment.run` evaluates it as the "OBS-corrected" stage.
* :func:`cross_spec`, :class:`CrossDomain` — the tasks of ``spec.transfer_suite`` with heads fitted
  on the dense encoder with that suite's data, evaluated beside the source suite's (role
  ``"cross-domain"``).

Why the factors are not shared with the ``kfac`` score: the score computes its own inside
:func:`pai_core.scores.compute` (and may use another Kronecker approximation, e.g. K-FAC-reduce for
CNN convolutions, and another damping), while the OBS update's layer-reconstruction form needs
the "expand" factor ``A = E_{n,t}[a aᵀ]`` over every position.  Reading them out of the score would
mean changing its internals; so the factors are their own cached stage, one extra pass per task
(about two forward+backward passes; ``docs/REPAIR_ALIGNMENT.md``) that the repair of every
sparsity and score, and the alignment of every pair, then share.

Example:
    >>> from pai_core.results import ExperimentSpec
    >>> spec = ExperimentSpec(score="diag", sparsity=0.4, images_per_class=20, repair="a")
    >>> repair_options(spec)["form"], cross_spec(spec.replace(transfer_suite="fashion-mnist")).suite
    ('a', 'fashion-mnist')
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from . import cache, repair, scores
from .evaluate import evaluate
from .results import ExperimentSpec, Progress

if TYPE_CHECKING:
    from .experiment import Context

__all__ = [
    "STAGE_VERSION",
    "KFAC_MAX_ITER",
    "REPAIR_TOL",
    # cached stages
    "get_factors",
    "repair_options",
    "get_repaired",
    # cross-domain tasks
    "cross_spec",
    "CrossDomain",
]

#: Bump when the meaning of a cached factor, repaired-weight or alignment file changes.
STAGE_VERSION = 2
#: PCG iterations of the ``"kfac"`` repair form in an experiment (it does not converge on real
#: encoders at a usable cost, so its budget is fixed; every iterate is a valid correction).
KFAC_MAX_ITER = 30
#: Relative residual asked of the repair's solves.
REPAIR_TOL = 1e-6


# --------------------------------------------------------------------------------------
# K-FAC factors
# --------------------------------------------------------------------------------------


def _expand() -> dict[str, str]:
    # The layer-reconstruction A must average a aᵀ over every position ("expand"); a kfac_factors
    # that offers other approximations is asked for it by name.
    return {"approx": "expand"} if "approx" in inspect.signature(scores.kfac_factors).parameters else {}


def get_factors(ctx: Context, progress: Progress | None = None) -> dict[str, scores.KFactors]:
    """K-FAC factors at θ₀ of the context's source task through its frozen head (cached on disk).

    ``A`` and ``B`` of Eq. (5) in the "expand" form (:func:`pai_core.scores.kfac_factors`), for the
    encoder weights it can factor (:func:`pai_core.repair.factor_params`); keys are encoder
    parameter names.  For another task, use :func:`pai_core.task_pairs.task_context` first.
    """
    spec = ctx.spec
    t = spec.source
    key = {**ctx.key("heads"), "task": t, "loss": spec.loss, "approx": "expand", "v": STAGE_VERSION}

    def compute() -> dict[str, Tensor]:
        x, y = ctx.split(t, "fit")
        # Named "encoder.…" and "head", like the model the scores differentiate.
        model = nn.Sequential(OrderedDict(encoder=ctx.encoder.copy().model, head=ctx.heads.module(t)))
        model.to(ctx.device)
        wanted = [f"encoder.{n}" for n in scores.default_params(model.encoder)]
        names = repair.factor_params(model, wanted)
        batches = [(x[i : i + 32].to(ctx.device), y[i : i + 32].to(ctx.device)) for i in range(0, len(x), 32)]
        f = scores.kfac_factors(model, batches, params=names, loss=spec.loss, progress=progress, **_expand())
        out = {}
        for n, kf in f.items():
            base = n.removeprefix("encoder.")
            out[f"{base}|A"] = kf.A.detach().float().cpu()
            out[f"{base}|B"] = kf.B.detach().float().cpu()
        return out

    flat = cache.cached_tensors("kfac_factors", key, compute)
    names = sorted({k.rpartition("|")[0] for k in flat})
    return {n: scores.KFactors(flat[f"{n}|A"], flat[f"{n}|B"]) for n in names}


# --------------------------------------------------------------------------------------
# The OBS-corrected stage
# --------------------------------------------------------------------------------------


def repair_options(spec: ExperimentSpec) -> dict[str, Any]:
    """What determines the OBS correction besides the mask: form, damping and the solver's settings.

    Raises:
        ValueError: The spec asks for no repair.
    """
    if spec.repair is None:
        raise ValueError("this spec asks for no repair (spec.repair is None)")
    return {
        "form": repair.RepairForm(spec.repair).value,
        "damping": float(spec.repair_damping),
        "tol": REPAIR_TOL,
        "max_iter": KFAC_MAX_ITER,
    }


def get_repaired(
    ctx: Context, mask: Mapping[str, Tensor], progress: Progress | None = None
) -> tuple[dict[str, Tensor], repair.RepairReport]:
    """State dict of the encoder pruned by ``mask`` and OBS-corrected on the source (cached), and its report.

    The source task's K-FAC factors at θ₀ (:func:`get_factors`) define the curvature; the form and
    damping are the spec's (:func:`repair_options`).  The cache key extends the masks' key by the
    repair's options, so another sparsity or score reuses the factors and solves again.
    """
    opts = repair_options(ctx.spec)
    progress = progress or ctx.stage("repair")

    def compute() -> dict[str, Tensor]:
        factors = get_factors(ctx, progress)
        model = ctx.encoder.copy().model.to(ctx.device)
        rep = repair.repair_(model, mask, factors, progress=progress, **opts)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        state["__report__"] = torch.tensor(list(json.dumps(rep.to_dict()).encode()), dtype=torch.uint8)
        return state

    key = {**ctx.key("masks"), "repair": opts, "v": STAGE_VERSION}
    state = dict(cache.cached_tensors("repaired", key, compute))
    blob = state.pop("__report__")
    return state, repair.RepairReport.from_dict(json.loads(bytes(blob.tolist()).decode()))


# --------------------------------------------------------------------------------------
# Cross-domain transfer tasks (spec.transfer_suite)
# --------------------------------------------------------------------------------------


def cross_spec(spec: ExperimentSpec, task: int = 0) -> ExperimentSpec:
    """The spec on ``spec.transfer_suite`` with its task ``task`` as the source (zero-shot only).

    What the cross-domain tasks' heads (and, in :mod:`pai_core.task_pairs`, their own masks,
    factors and oracle runs) are computed with.

    Raises:
        ValueError: The spec has no transfer suite.
    """
    if spec.transfer_suite is None:
        raise ValueError("this spec has no transfer suite (spec.transfer_suite is None)")
    return spec.replace(
        suite=spec.transfer_suite,
        data_root=spec.transfer_data_root,
        source=task,
        transfer_suite=None,
        transfer_data_root=None,
        finetune=None,
        repair=None,
    )


@dataclass(frozen=True)
class CrossDomain:
    """The tasks of ``spec.transfer_suite``, judged by heads fitted on the dense encoder with their data.

    Attributes:
        ctx: A context on the transfer suite (:func:`pai_core.experiment.prepare` of
            :func:`cross_spec`): its heads and image size are that suite's.
    """

    ctx: Context

    @property
    def names(self) -> list[str]:
        """Task names, prefixed with their suite (so they never collide with the source suite's)."""
        return [f"{self.ctx.suite.name}: {t.name}" for t in self.ctx.suite.tasks]

    @property
    def dense(self) -> list[float]:
        """Dense accuracy per task (cached with the heads)."""
        return list(self.ctx.heads.dense)

    def evaluate(self, model: nn.Module, stage: str) -> list[float]:
        """Accuracy of ``model`` (an encoder: dense, pruned, fine-tuned or corrected) on every task."""
        c = self.ctx
        return evaluate(
            model,
            c.encoder,
            c.suite,
            c.heads,
            image_size=c.image_size,
            device=c.device,
            progress=c.stage(stage),
        )

    def note(self) -> str:
        """The sentence a result carries about its cross-domain tasks."""
        return (
            f"cross-domain transfer tasks from {self.ctx.suite.name} ({len(self.ctx.suite.tasks)}): heads "
            "fitted on the dense encoder with that suite's data; pruning, fine-tuning and repair saw only "
            "the source"
        )
