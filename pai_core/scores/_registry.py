"""The score registry: one decorator carries everything about a score.

``@register_score(name, label=..., description=..., ...)`` on a :class:`ScoreFn` fills the
registry with a :class:`ScoreInfo`: what the figures call the score and colour it, whether it
needs data or a seed, which architectures it refuses and why, and its options (type, default,
range, help).  The CLI, the sweep, the experiment, the figures and the dashboard read this
metadata; nothing else lists scores.  :func:`compute` validates a call against it and dispatches.

Example:
    >>> import torch
    >>> from torch import nn
    >>> @register_score("example_abs", label="|θ|", data_driven=False)
    ... def example_abs(c):
    ...     "|θ|: an example (ranks as magnitude does)."  # its docstring: formula and paper
    ...     c.diagnose("zero_weights", sum(int((p == 0).sum()) for p in c.named.values()))
    ...     return {n: p.detach().abs() for n, p in c.named.items()}
    >>> info("example_abs").label, info("example_abs").description
    ('|θ|', '|θ|: an example (ranks as magnitude does).')
    >>> compute("example_abs", nn.Linear(2, 1, bias=False), None)["weight"].shape
    torch.Size([1, 2])

A score reports diagnostics (JSON-able values keyed by diagnostic name) to a caller that asks for
them with ``compute(..., diagnostics=d)``; it writes them with :meth:`ScoreCall.diagnose`:

    >>> d = {}
    >>> _ = compute("example_abs", nn.Linear(2, 1, bias=False), None, diagnostics=d)
    >>> d
    {'zero_weights': 0}
    >>> _REGISTRY.pop("example_abs").name  # tests and examples clean up after themselves
    'example_abs'
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from torch import Tensor, nn

from ._base import BN_WARMUP_MODES, LOSSES, Batches, ScoreCall, _reach, _resolve_params, warmup_batchnorm

if TYPE_CHECKING:
    from ..results import Progress

__all__ = [
    "ScoreFn",
    "ScoreOption",
    "ScoreInfo",
    "BN_WARMUP",
    "register_score",
    "available",
    "info",
    "infos",
    "compute",
]


class ScoreFn(Protocol):
    """What :func:`register_score` decorates (called by :func:`compute`, never directly).

    Its docstring opens with the formula and the paper it comes from (the first paragraph is the
    score's :attr:`ScoreInfo.description` unless one is given), then says more.

    Args:
        call: The model, the data, the scored parameters, the loss and the progress callback.
        **options: The score's own options (validated, defaults filled in), plus ``seed`` for
            stochastic scores.

    Returns:
        ``{name: score tensor of the parameter's shape}`` for every name of ``call.named``
        (higher = keep); the model left as it was found.
    """

    def __call__(self, call: ScoreCall, /, **options: Any) -> dict[str, Tensor]: ...


_F = TypeVar("_F", bound=Callable[..., dict[str, Tensor]])


@dataclasses.dataclass(frozen=True)
class ScoreOption:
    """One option of a score: what the CLI's JSON, a sweep file and the dashboard's widgets set.

    A number (``int``/``float``, optionally bounded: the dashboard draws a number input) or a
    choice among named strings (``str`` with ``choices``: the dashboard draws a select box).

    Attributes:
        name: Keyword passed to the score function.
        type: ``int``, ``float`` or ``str`` (``str`` needs ``choices``).
        default: Value when not given.
        min, max: Inclusive bounds of a number (None: unbounded).
        help: One sentence for widgets and ``--help``.
        choices: The allowed values of a ``str`` option, in display order.

    Example:
        >>> o = ScoreOption("approx", str, "auto", choices=("auto", "reduce", "expand"))
        >>> o.check("reduce"), o.describe()
        ('reduce', 'approx (one of auto|reduce|expand, default auto): ')
        >>> o.check("exact")
        Traceback (most recent call last):
        ...
        ValueError: option 'approx' must be one of 'auto', 'reduce', 'expand', got 'exact'
    """

    name: str
    type: type
    default: int | float | str
    min: int | float | None = None
    max: int | float | None = None
    help: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in (int, float, str):
            raise TypeError(f"option {self.name!r}: type must be int, float or str, got {self.type!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.type is str:
            if not self.choices or not all(isinstance(c, str) for c in self.choices):
                raise TypeError(f"option {self.name!r}: a str option needs its choices (strings)")
            if self.min is not None or self.max is not None:
                raise TypeError(f"option {self.name!r}: a str option has no bounds")
        elif self.choices:
            raise TypeError(f"option {self.name!r}: only str options have choices")
        else:
            # Bounds and default of the option's own type (widgets want one numeric type).
            for bound in ("min", "max"):
                if getattr(self, bound) is not None:
                    object.__setattr__(self, bound, self.type(getattr(self, bound)))
        object.__setattr__(self, "default", self.check(self.default))

    def check(self, value: Any) -> int | float | str:
        """The value as the option's type; ValueError naming the option when it does not fit.

        Example:
            >>> ScoreOption("probes", int, 10, min=1).check(3.0)
            3
            >>> ScoreOption("probes", int, 10, min=1).check(0)
            Traceback (most recent call last):
            ...
            ValueError: option 'probes' must be >= 1, got 0
        """
        if self.type is str:
            if value not in self.choices:
                raise ValueError(
                    f"option {self.name!r} must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
                )
            return str(value)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (self.type is int and float(value) != int(value)):
            raise ValueError(
                f"option {self.name!r} must be {'an integer' if self.type is int else 'a number'}, "
                f"got {value!r}"
            )
        v = self.type(value)
        if self.min is not None and v < self.min:
            raise ValueError(f"option {self.name!r} must be >= {self.min}, got {value!r}")
        if self.max is not None and v > self.max:
            raise ValueError(f"option {self.name!r} must be <= {self.max}, got {value!r}")
        return v

    def describe(self) -> str:
        """``name (type, default …, range …): help`` for ``--help`` and tables."""
        if self.type is str:
            return f"{self.name} (one of {'|'.join(self.choices)}, default {self.default}): {self.help}"
        lo = "-∞" if self.min is None else f"{self.min:g}"
        hi = "∞" if self.max is None else f"{self.max:g}"
        return f"{self.name} ({self.type.__name__}, default {self.default:g}, {lo}..{hi}): {self.help}"


#: Common option of every data-driven score, declared once (register_score appends it).
BN_WARMUP = ScoreOption(
    "bn_warmup",
    int,
    0,
    min=0,
    max=100,
    help="Passes over the source data that re-estimate the BatchNorm statistics before scoring "
    "(0: off; the scalable second-order PaI paper's warm-up). The new statistics stay in the model.",
)


@dataclasses.dataclass(frozen=True)
class ScoreInfo:
    """Everything about one registered score.

    Attributes:
        name: Registry name (``ExperimentSpec.score``, ``--score``, sweep files).
        label: Display name (figures, widgets).
        description: One line: the formula and the paper it comes from.
        fn: The :class:`ScoreFn`.
        data_driven: Uses the source task's data (and so takes :data:`BN_WARMUP`).
        stochastic: Takes a ``seed`` (the experiment passes its own ``spec.seed``).
        refuses: ``{encoder family: reason}`` of the architectures it does not apply to.
        options: Its options, the common ones included.
        color: Its colour in figures (None: a stable colour derived from the name).
        order: Position in lists and in a figure's bar clusters (lower first; ties keep
            registration order).
        rounds: Pruning rounds by default (1: one-shot; SynFlow is iterative by definition), what
            ``ExperimentSpec.rounds = None`` resolves to.
    """

    name: str
    label: str
    description: str
    fn: ScoreFn
    data_driven: bool
    stochastic: bool = False
    refuses: Mapping[str, str] = dataclasses.field(default_factory=dict)
    options: tuple[ScoreOption, ...] = ()
    color: str | None = None
    order: int = 100
    rounds: int = 1

    def option(self, name: str) -> ScoreOption:
        """The option called ``name``; ValueError listing the valid ones."""
        by_name = {o.name: o for o in self.options}
        if name not in by_name:
            raise ValueError(
                f"unknown option {name!r} for score {self.name!r}; valid: {', '.join(by_name) or 'none'}"
            )
        return by_name[name]

    def defaults(self) -> dict[str, int | float | str]:
        """``{option: default}``."""
        return {o.name: o.default for o in self.options}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate options (names, types, ranges; ``seed`` for stochastic scores), typed.

        Raises:
            ValueError: Unknown option (the message lists the valid ones) or a value out of range.
        """
        valid = [o.name for o in self.options] + (["seed"] if self.stochastic else [])
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for score {self.name!r}; valid: {sorted(valid) or 'none'}"
            )
        out: dict[str, Any] = {}
        for key, value in options.items():
            try:
                out[key] = _SEED.check(value) if key == "seed" else self.option(key).check(value)
            except ValueError as exc:
                raise ValueError(f"score {self.name!r}: {exc}") from None
        return out

    def refusal(self, family: str | None) -> str | None:
        """Why the score does not apply to an encoder family (``"cnn"``, ``"vit"``), or None."""
        return self.refuses.get(family) if family is not None else None


_SEED = ScoreOption("seed", int, 0, min=0)
# compute()'s own keyword arguments: no option may take these names.
_RESERVED = {"name", "model", "batches", "params", "loss", "progress", "diagnostics"}

_REGISTRY: dict[str, ScoreInfo] = {}


def _summary(doc: str | None) -> str:
    """The first paragraph of a docstring on one line, without reST's double backquotes."""
    first = inspect.cleandoc(doc or "").split("\n\n")[0]
    return " ".join(first.split()).replace("``", "")


def register_score(
    name: str,
    *,
    label: str,
    data_driven: bool,
    description: str | None = None,
    stochastic: bool = False,
    refuses: Mapping[str, str] | None = None,
    options: Sequence[ScoreOption] = (),
    color: str | None = None,
    order: int = 100,
    rounds: int = 1,
) -> Callable[[_F], _F]:
    """Register a score function with its metadata (see :class:`ScoreInfo` for the fields).

    ``description`` defaults to the first paragraph of the function's docstring (its formula and
    paper), so that the formula is written once.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: The name is taken, or an option repeats or shadows a common one.
    """

    def decorate(fn: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"score {name!r} is registered already")
        opts = tuple(options) + ((BN_WARMUP,) if data_driven else ())
        names = [o.name for o in opts] + (["seed"] if stochastic else [])
        if len(set(names)) != len(names):
            raise ValueError(f"score {name!r}: repeated option names {names}")
        if clash := sorted(set(names) & _RESERVED):
            raise ValueError(f"score {name!r}: option names {clash} are compute()'s own arguments")
        about = description or _summary(fn.__doc__)
        if not about:
            raise ValueError(f"score {name!r}: give a description or a docstring (its formula and paper)")
        refused = dict(refuses or {})
        _REGISTRY[name] = ScoreInfo(
            name, label, about, fn, data_driven, stochastic, refused, opts, color, order, rounds
        )
        return fn

    return decorate


def infos() -> list[ScoreInfo]:
    """Every registered score, in display order (:attr:`ScoreInfo.order`, then registration)."""
    ranked = sorted(enumerate(_REGISTRY.values()), key=lambda iv: (iv[1].order, iv[0]))
    return [i for _, i in ranked]


def available() -> list[str]:
    """Names accepted by :func:`compute`, in display order."""
    return [i.name for i in infos()]


def info(name: str) -> ScoreInfo:
    """The metadata of score ``name``.

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown score {name!r}; valid: {', '.join(available())}")
    return _REGISTRY[name]


def compute(
    name: str,
    model: nn.Module,
    batches: Batches | None,
    *,
    params: Sequence[str] | None = None,
    loss: str = "mse",
    progress: Progress | None = None,
    diagnostics: dict[str, Any] | None = None,
    bn_warmup_mode: str = "reset-cumulative",
    **options: Any,
) -> dict[str, Tensor]:
    """Compute saliency score ``name`` for the parameters ``params`` of ``model`` (higher = keep).

    The formulas and references are in each score's docstring and :attr:`ScoreInfo.description`
    (``python -m pai_core scores`` lists them); the conventions (loss, eval mode, the model left
    as found) in :mod:`pai_core.scores._base`.

    Args:
        name: One of :func:`available`.
        model: Network mapping a batch of inputs to ``(B, C)`` outputs.
        batches: Re-iterable sequence of ``(x, y)`` with integer labels ``y``; may be ``None``
            for scores that use no data.
        params: Names (as in ``model.named_parameters()``) to score; default
            :func:`~pai_core.scores.default_params`.
        loss: One of :data:`LOSSES` (default ``"mse"``, the paper's).
        progress: Optional callable ``progress(done, total, message)``, called per batch.
        diagnostics: Optional dict that the score fills with what it measured on the way, as
            JSON-able values keyed by diagnostic name (e.g. ``d["kfac_scale_ratio"] =
            {layer: ratio}``, ``d["hutchinson_rel_se_median"]``; each score's docstring lists its
            own).  None: not collected, and scores skip the diagnostics that cost time.
        bn_warmup_mode: How the ``bn_warmup`` option re-estimates BatchNorm statistics
            (:data:`~pai_core.scores._base.BN_WARMUP_MODES`).
        **options: The score's options (:attr:`ScoreInfo.options`: ``bn_warmup`` for every
            data-driven score, ``damping``, ``probes``, …) and ``seed`` for stochastic scores.

    Returns:
        ``{parameter name: score tensor of the parameter's shape}``, detached.

    Raises:
        ValueError: Unknown score, loss, option or parameter name; an option out of range; no data
            for a data-driven score.
        RuntimeError: A data-driven score has no statistics for a parameter that reaches the
            loss (its pass missed the tensor: no silent zero is ever returned), named; or the
            score wrote a diagnostic that is not JSON-able (a bug in the score).

    No silent zero: a data-driven score either reports what its pass saw
    (:meth:`ScoreCall.cover`), and every scored parameter must be seen or have no path to the
    loss, or it does not, and every tensor it scores all-zero (with a non-zero weight) is checked
    against the data loss's gradient, which must then be zero or absent.  Parameters with no
    path to the loss (their data-driven score is exactly zero) are listed in the diagnostic
    ``unreached_params``.
    """
    spec = info(name)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    if bn_warmup_mode not in BN_WARMUP_MODES:
        raise ValueError(
            f"unknown BatchNorm warm-up mode {bn_warmup_mode!r}; valid: {', '.join(BN_WARMUP_MODES)}"
        )
    opts = {**spec.defaults(), **spec.check_options(options)}
    warm = int(opts.pop(BN_WARMUP.name, 0))
    named = _resolve_params(model, params)
    if spec.data_driven and batches is None:
        raise ValueError(f"score {name!r} needs data (batches)")
    if warm > 0:
        warmup_batchnorm(model, batches, warm, progress, mode=bn_warmup_mode)
    diag = diagnostics if diagnostics is not None else {}
    call = ScoreCall(model, batches, named, loss, progress, diag, diagnostics_wanted=diagnostics is not None)
    scores = spec.fn(call, **opts)
    if spec.data_driven:
        _check_coverage(name, call, scores)
    try:
        json.dumps(diag)
    except (TypeError, ValueError) as exc:
        raise RuntimeError(f"score {name!r} wrote a diagnostic that is not JSON-able: {exc}") from None
    return {n: scores[n].detach() for n in named}


def _check_coverage(name: str, call: ScoreCall, scores: Mapping[str, Tensor]) -> None:
    """Refuse a score for a tensor the score's pass missed; report unreached ones (see compute)."""
    cov = call.coverage
    if cov.reported:
        missed = [n for n in call.named if n not in cov.seen and n not in cov.unreached]
        unreached = [n for n in call.named if n in cov.unreached]
    else:
        zero = [n for n, p in call.named.items() if not bool(scores[n].any()) and bool(p.detach().any())]
        state = _reach(call, zero) if zero else {}
        missed = [n for n in zero if state[n] == "nonzero"]
        unreached = [n for n in zero if state[n] == "unreached"]
    if missed:
        raise RuntimeError(
            f"score {name!r} has no statistics for {missed}, which reach the loss: its pass never "
            "saw them (a layer it does not recognise?); refusing to score them zero"
        )
    if unreached:
        call.diagnose("unreached_params", unreached)
