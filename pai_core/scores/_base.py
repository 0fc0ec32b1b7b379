"""What every score shares: the loss, the data, which weights are scored, and the model's state.

Conventions (every data-driven score follows them):

* ``model`` maps a batch of inputs to ``C`` outputs (encoder + frozen ridge head in the
  pipeline).  It is evaluated in **eval mode** (BatchNorm uses its running statistics), so
  example ``i``'s output depends on ``x_i`` only and per-example gradients are well defined.
* Per-example loss, ``loss="mse"`` (the paper's squared error, Eq. (6)):
  ``ℓ(x, y) = ‖f(x) − onehot(y)‖²`` summed over the ``C`` classes, **without** a ½.
  ``loss="ce"``: ``ℓ(x, y) = −log softmax(f(x))_y``.
  The data loss is the mean ``L = (1/N) Σ_i ℓ(x_i, y_i)`` over all ``N`` examples of
  ``batches`` (batches of any size are weighted by their size, not averaged per batch).
* The scored weights default to :func:`default_params`.
* A score leaves the model exactly as it found it (parameters, ``.grad``, ``requires_grad``,
  train/eval flag of every module, buffers, hooks), unless asked for a BatchNorm warm-up
  (:func:`warmup_batchnorm`), whose re-estimated statistics stay: that is its point.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    >>> default_params(net)
    ['0.weight', '3.weight']
    >>> per_example_loss(torch.zeros(2, 3), torch.tensor([0, 2]))  # ‖0 − onehot‖² = 1 per example
    tensor([1., 1.])
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._sites import weight_operands

if TYPE_CHECKING:
    from ..results import Progress

__all__ = [
    "Batches",
    "Named",
    "Scores",
    "ScoreCall",
    "LOSSES",
    "per_example_loss",
    "default_params",
    "warmup_batchnorm",
    "BN_WARMUP_MODES",
]

#: Re-iterable ``(inputs, integer labels)`` batches, e.g. a list or a DataLoader.
Batches = Iterable[tuple[Tensor, Tensor]]
#: The scored parameters of a model, ``{name: parameter}`` in ``named_parameters()`` order.
Named = dict[str, nn.Parameter]
#: What a score returns: ``{parameter name: tensor of the parameter's shape}``, higher = keep.
Scores = dict[str, Tensor]

#: Loss names accepted by every data-driven score (and by ``ExperimentSpec.loss``).
LOSSES = ("mse", "ce")


@dataclasses.dataclass
class Coverage:
    """Which scored parameters a data-driven score's pass actually saw (see ``compute``).

    A score that reports (:meth:`ScoreCall.cover`) must account for every scored parameter:
    ``seen`` (its statistics come from the data) or ``unreached`` (no path from it to the loss:
    its gradient, and so its data-driven score, is exactly zero).  ``compute`` refuses to return
    a score for any other parameter, rather than let a missed tensor score zero.
    """

    seen: set[str] = dataclasses.field(default_factory=set)
    unreached: set[str] = dataclasses.field(default_factory=set)
    reported: bool = False


@dataclasses.dataclass(frozen=True)
class ScoreCall:
    """What one call of a score function gets (besides its options); built by ``compute``.

    Attributes:
        model: Network mapping a batch of inputs to ``(B, C)`` outputs.
        batches: Re-iterable ``(x, y)`` batches; None for scores that use no data.
        named: The scored parameters, ``{name: parameter}`` in ``model.named_parameters()`` order.
        loss: One of :data:`LOSSES`.
        progress: ``progress(done, total, message)`` or None.
        diagnostics: Where a score reports what its caller should see next to the scores
            (JSON-able entries keyed by diagnostic name, e.g.
            ``d["hutchinson_rel_se_median"] = 0.3``); a dict, never None (the caller's own when it
            passed one to ``compute``).  Write with :meth:`diagnose` or directly.
        diagnostics_wanted: Whether the caller passed a dict to ``compute``; a score skips the
            diagnostics that cost time (e.g. K-FAC's curvature-scale ratio) when it did not.
        coverage: What the score's pass saw (:meth:`cover`; checked by ``compute``).
    """

    model: nn.Module
    batches: Batches | None
    named: Named
    loss: str = "mse"
    progress: Progress | None = None
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    diagnostics_wanted: bool = False
    coverage: Coverage = dataclasses.field(default_factory=Coverage)

    def report(self, done: int, total: int, message: str) -> None:
        """Report progress, if anyone listens."""
        if self.progress:
            self.progress(done, total, message)

    def diagnose(self, name: str, value: Any) -> None:
        """Record diagnostic ``name`` (a JSON-able value) in :attr:`diagnostics`."""
        self.diagnostics[name] = value

    def cover(self, seen: Iterable[str] = (), unreached: Iterable[str] = ()) -> None:
        """Report parameters the pass saw, and parameters with no path to the loss."""
        self.coverage.seen.update(seen)
        self.coverage.unreached.update(unreached)
        self.coverage.reported = True


# --------------------------------------------------------------------------------------
# Losses, data, parameters
# --------------------------------------------------------------------------------------


def per_example_loss(out: Tensor, y: Tensor, loss: str = "mse") -> Tensor:
    """Per-example losses ``ℓ_i`` (shape ``(B,)``).

    Args:
        out: Model outputs, shape ``(B, C)``.
        y: Integer labels, shape ``(B,)``.
        loss: ``"mse"``: ``‖f(x) − onehot(y)‖²`` summed over classes (no ½);
            ``"ce"``: cross-entropy of the logits ``f(x)``.

    Returns:
        Tensor of shape ``(B,)``.
    """
    if out.dim() != 2:
        raise ValueError(f"the model must return (batch, classes) outputs, got shape {tuple(out.shape)}")
    if loss == "mse":
        # Comparison instead of F.one_hot, which checks labels with .item() and breaks vmap.
        target = (torch.arange(out.shape[1], device=out.device) == y.long()[:, None]).to(out.dtype)
        return (out - target).pow(2).sum(1)
    if loss == "ce":
        return F.cross_entropy(out, y.long(), reduction="none")
    raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")


def _loss_sum(out: Tensor, y: Tensor, loss: str) -> Tensor:
    # Summed, not averaged: row i of any gradient at the outputs is then ∇ℓ_i itself.
    return per_example_loss(out, y, loss).sum()


def _param_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _batches(batches: Batches, model: nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
    device, dtype = _param_device_dtype(model)
    for x, y in batches:
        x = x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
        yield x, torch.as_tensor(y).to(device).long()


def _num_batches(batches: Batches) -> int:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return 0  # unknown: progress reports total=0


def default_params(model: nn.Module, example: Tensor | None = None) -> list[str]:
    """The weights a pruning run scores: every weight matrix of the network.

    The one place that decides it (the experiment scores exactly these weights of the encoder;
    the paper prunes ``W``, never the heads ``ξ``).  A weight matrix is

    * the ``weight`` of an ``nn.Linear`` or of any ``nn.Conv1d/2d/3d`` / ``nn.ConvTranspose1d/2d/3d``
      (subclasses included: timm's same-padding convs, attention's ``out_proj``);
    * ``nn.MultiheadAttention``'s ``in_proj_weight`` (q, k, v stacked) or its separate
      ``q/k/v_proj_weight``, which the module applies functionally;
    * with ``example`` (a batch of inputs): every other parameter of two or more dimensions that
      the forward pass of ``example`` applies as the weight of ``F.linear``, ``F.conv1d/2d`` or
      a matrix product, e.g. open_clip's raw ViT projection ``proj`` (``x @ proj``).  Position
      and class embeddings, which are added rather than applied, are not weight matrices.

    Biases, normalisation affine parameters and embeddings are not scored (they are not pruned).
    Every score covers every weight matrix: the hook scores (``diag``, ``fisher_taylor``,
    ``kfac``) find them wherever the network applies them (:mod:`~pai_core.scores.hooks`), with
    exact ``torch.func`` per-example gradients for the few the hooks cannot explain
    (``Conv3d``, transposed convs), which ``kfac`` refuses by name; the gradient and
    Hessian-vector scores use autograd.

    Args:
        model: Any ``nn.Module``.
        example: Optional input batch (one example is enough) to find functional weights.

    Returns:
        Parameter names, in ``model.named_parameters()`` order (a weight shared by two layers
        once).
    """
    wanted = set()
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd) and m._parameters.get("weight") is not None:
            wanted.add(id(m._parameters["weight"]))
        if isinstance(m, nn.MultiheadAttention):
            for key in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if m._parameters.get(key) is not None:
                    wanted.add(id(m._parameters[key]))
    if example is not None:
        named = dict(model.named_parameters())
        wanted |= {id(named[n]) for n in weight_operands(model, example) if named[n].dim() >= 2}
    return [n for n, p in model.named_parameters() if id(p) in wanted]


def _resolve_params(model: nn.Module, params: Sequence[str] | None) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    names = default_params(model) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"unknown parameter name(s) {unknown}; valid: {', '.join(named)}")
    if not names:
        raise ValueError("no parameters to score")
    return {n: named[n] for n in names}


def _grad_full(c: ScoreCall, label: str, done: int = 0, total: int = 0) -> tuple[list[Tensor], int]:
    """``(∇_θ L, N)``: gradient of the mean data loss (autograd per batch, summed, divided by N)."""
    params = list(c.named.values())
    acc = [torch.zeros_like(p) for p in params]
    reached = [False] * len(params)
    n = 0
    for x, y in _batches(c.batches, c.model):
        gs = torch.autograd.grad(_loss_sum(c.model(x), y, c.loss), params, allow_unused=True)
        for i, (a, g) in enumerate(zip(acc, gs)):
            if g is not None:
                a += g
                reached[i] = True
        n += x.shape[0]
        done += 1
        c.report(done, total, label)
    if n == 0:
        raise ValueError("batches is empty")
    # Autograd misses nothing: a parameter without a gradient has no path to the loss.
    names = list(c.named)
    c.cover([m for m, r in zip(names, reached) if r], [m for m, r in zip(names, reached) if not r])
    return [a / n for a in acc], n


def _reach(c: ScoreCall, names: Sequence[str]) -> dict[str, str]:
    """``{name: "unreached" | "zero" | "nonzero"}``: whether the data loss's gradient w.r.t.
    each parameter does not exist, is exactly zero on every batch, or is not."""
    named = {n: c.named[n] for n in names}
    state = {n: "unreached" for n in names}
    with _scoring_state(c.model, named.values()):
        for x, y in _batches(c.batches, c.model):
            gs = torch.autograd.grad(
                _loss_sum(c.model(x), y, c.loss), list(named.values()), allow_unused=True
            )
            for n, g in zip(named, gs):
                if g is not None and state[n] != "nonzero":
                    state[n] = "nonzero" if bool(g.any()) else "zero"
    return state


# --------------------------------------------------------------------------------------
# Model state: eval mode, requires_grad, BatchNorm warm-up
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _scoring_state(model: nn.Module, need_grad: Iterable[nn.Parameter] = ()) -> Iterator[None]:
    """Eval mode (+ ``requires_grad`` on ``need_grad``) inside; the exact prior state after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in need_grad]
    try:
        for m, _ in modes:
            m.training = False  # per module, not model.eval(): restore must be exact
        for p, _ in flags:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for m, t in modes:
            m.training = t
        for p, f in flags:
            p.requires_grad_(f)


#: How :func:`warmup_batchnorm` re-estimates the statistics: ``"reset-cumulative"`` (reset, then the
#: exact average of the per-batch statistics over the passes) or ``"running"`` (the scalable
#: second-order PaI paper's code: no reset, an exponential running average with momentum 0.1).
BN_WARMUP_MODES = ("reset-cumulative", "running")


def warmup_batchnorm(
    model: nn.Module,
    batches: Batches,
    passes: int = 1,
    progress: Progress | None = None,
    mode: str = "reset-cumulative",
) -> None:
    """Re-estimate BatchNorm running statistics on ``batches`` (in place, kept).

    Runs ``passes`` train-mode forward passes without gradients.  Only BatchNorm layers are put in
    train mode, so dropout and stochastic depth stay off.  Momentum and every module's train/eval
    flag are restored afterwards; the new statistics stay.

    * ``mode="reset-cumulative"``: every BatchNorm's running mean/var is reset first and updated
      with ``momentum=None``, i.e. the statistics become the plain average of the per-batch means
      and (unbiased) variances over all batches of all passes; the pre-trained statistics are gone.
    * ``mode="running"`` (Gollini Navarrete et al., 2025, their code's warm-up): no reset, momentum
      0.1: after each batch ``μ ← 0.9 μ + 0.1 μ_batch`` (same for the variance), so the pre-trained
      statistics decay by ``0.9`` per batch.  Their code also switches dropout on during the
      warm-up; here only BatchNorm layers train, since dropout adds noise, not statistics.

    Args:
        model: Model to update.
        batches: Re-iterable ``(x, y)`` batches (labels unused).
        passes: Number of passes over ``batches``.
        progress: Optional ``progress(done, total, message)``.
        mode: One of :data:`BN_WARMUP_MODES`.

    Raises:
        ValueError: Unknown ``mode``.
    """
    if mode not in BN_WARMUP_MODES:
        raise ValueError(f"unknown BatchNorm warm-up mode {mode!r}; valid: {', '.join(BN_WARMUP_MODES)}")
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    if passes <= 0 or not bns:
        return
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in bns]
    total = _num_batches(batches) * passes
    done = 0
    try:
        for m, _ in modes:
            m.training = False
        for m in bns:
            if mode == "reset-cumulative":
                m.reset_running_stats()
                m.momentum = None
            else:
                m.momentum = 0.1
            m.training = True
        with torch.no_grad():
            for _ in range(passes):
                for x, _y in _batches(batches, model):
                    model(x)
                    done += 1
                    if progress:
                        progress(done, total, f"BatchNorm warm-up ({mode})")
    finally:
        for m, t in modes:
            m.training = t
        for m, mom in momenta:
            m.momentum = mom


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    # Fused CPU/GPU attention kernels have no double backward; HVP scores need the math path.
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield
