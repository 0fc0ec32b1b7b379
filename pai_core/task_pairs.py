"""Pairs of tasks: the oracle mask (what not seeing the transfer task costs) and how aligned two tasks are.

P1 rests on the source's and a transfer task's loss landscapes being aligned at θ₀.  For every
source → transfer pair of a run this module measures both sides of that claim on the
experiment's cached stages (:mod:`pai_core.experiment`, :mod:`pai_core.transfer_stages`):

* :func:`oracle_run` — the transfer task's zero-shot accuracy pruned with the source's data vs
  with its own ("oracle", Eq. (1) with the transfer data): the price of not seeing it;
* :func:`alignment_run` — :class:`pai_core.alignment.Alignment` of the two tasks (diagonal-Fisher
  correlation, K-FAC eigenspace overlap, mask Jaccard);
* :func:`alignment_table` — every pair, with the transfer task's retention (zero-shot / dense):
  what ``python -m pai_core align`` prints and the Task alignment page plots, so a user sees
  whether alignment predicts transfer.

Tasks are numbered as in :attr:`pai_core.results.ExperimentResult.tasks`: the source suite's
``0..n-1``, then the tasks of ``spec.transfer_suite`` (cross-domain) ``n..n+m-1``.

Example:
    >>> from pai_core.results import ExperimentSpec
    >>> spec = ExperimentSpec(score="diag", sparsity=0.4, images_per_class=20)   # doctest: +SKIP
    >>> oracle_run(spec, transfer=1).price                                      # doctest: +SKIP
    >>> [(r.transfer_task, r.retention, r.a_overlap) for r in alignment_table(spec)]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from scipy import stats
from torch import Tensor

from . import alignment as al
from . import cache, masks
from . import experiment as E
from .results import ExperimentSpec, Progress, StageProgress
from .transfer_stages import STAGE_VERSION, CrossDomain, cross_spec, get_factors

__all__ = [
    # contexts of any task of a run
    "task_context",
    "run_task_names",
    "get_fisher",
    # the oracle mask
    "OracleResult",
    "oracle_run",
    # alignment
    "alignment_run",
    "PairAlignment",
    "ALIGNMENT_MEASURES",
    "alignment_table",
    "alignment_frame",
    "alignment_correlations",
]


def _quiet(*args: Any) -> None:
    pass


def _with_spec(ctx: E.Context, spec: ExperimentSpec) -> E.Context:
    """``ctx`` for another spec on the same encoder and suite, keeping its heads when they are the same."""
    out = dataclasses.replace(ctx, spec=spec)
    if "heads" in ctx.__dict__ and out.key("heads") == ctx.key("heads"):
        out.__dict__["heads"] = ctx.__dict__["heads"]  # functools.cached_property's slot
    return out


def _cross(ctx: E.Context) -> CrossDomain | None:
    if ctx.spec.transfer_suite is None:
        return None
    return CrossDomain(E.prepare(cross_spec(ctx.spec), ctx.progress))


def _domain(ctx: E.Context) -> str:
    """The data set of the context's source task (:attr:`pai_core.tasks.Task.domain`, else the suite)."""
    return ctx.suite.tasks[ctx.spec.source].domain or ctx.suite.name


def run_task_names(ctx: E.Context) -> list[str]:
    """Names of every task of the run, in :attr:`~pai_core.results.ExperimentResult.tasks` order."""
    xd = _cross(ctx)
    return [t.name for t in ctx.suite.tasks] + (xd.names if xd else [])


def task_context(ctx: E.Context, task: int) -> E.Context:
    """The context whose source is task ``task`` of the run (numbered as the result's tasks).

    For a cross-domain task it is a context on ``spec.transfer_suite`` (:func:`cross_spec`).

    Raises:
        ValueError: ``task`` out of range (the message lists the run's tasks).
    """
    n = len(ctx.suite.tasks)
    xd = _cross(ctx)
    m = len(xd.ctx.suite.tasks) if xd else 0
    if not 0 <= int(task) < n + m:
        names = ", ".join(f"{i}: {name}" for i, name in enumerate(run_task_names(ctx)))
        raise ValueError(f"task {task} out of range; the run's tasks are {names}")
    task = int(task)
    if task == ctx.spec.source:
        return ctx
    if task < n:
        return _with_spec(ctx, ctx.spec.replace(source=task))
    return _with_spec(xd.ctx, cross_spec(ctx.spec, task - n))


def get_fisher(ctx: E.Context, progress: Progress | None = None) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of the context's source task, NaN where θ₀ = 0.

    From the experiment's cached ``diag`` scores of that task (:func:`pai_core.experiment.get_scores`
    with the ``diag`` score), divided by θ₀² (:func:`pai_core.alignment.fisher_from_diag_scores`).
    """
    s = E.get_scores(_with_spec(ctx, ctx.spec.replace(score="diag", score_options=())))
    named = dict(ctx.encoder.model.named_parameters())
    return al.fisher_from_diag_scores(s, {n: named[n] for n in s})


# --------------------------------------------------------------------------------------
# The oracle mask: pruning with the transfer task's own data
# --------------------------------------------------------------------------------------


@dataclass
class OracleResult:
    """A transfer task pruned with the source's data vs with its own data (same score, sparsity).

    Attributes:
        spec: The source experiment.
        transfer: Index of the transfer task among the run's tasks; ``task`` its name.
        dense: Its dense accuracy.
        with_source: Zero-shot accuracy when pruned with the source's data (the paper's setting).
        with_own: Zero-shot accuracy when pruned with its own data (the oracle of Eq. (1)).
        jaccard: Overlap of the kept sets of the two masks.
        cross_domain: The task comes from ``spec.transfer_suite``.
    """

    spec: ExperimentSpec
    transfer: int
    task: str
    dense: float
    with_source: float
    with_own: float
    jaccard: float
    cross_domain: bool = False

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
        d["spec"] = ExperimentSpec.from_json(d["spec"])
        return cls(**d)


def _zero_shot(spec: ExperimentSpec) -> ExperimentSpec:
    return spec.replace(finetune=None, repair=None)


def oracle_run(spec: ExperimentSpec, transfer: int, progress: StageProgress | None = None) -> OracleResult:
    """Zero-shot accuracy of task ``transfer`` pruned on the source vs pruned on itself.

    Two cached experiment runs: ``spec`` (zero-shot) and the run with ``transfer`` as the source.
    For a data-free score (``magnitude``, ``random``) both masks are the same by construction.
    """
    ctx = E.prepare(spec, progress)
    own_ctx = task_context(ctx, transfer)
    src = E.run(_zero_shot(spec), progress)
    own = E.run(_zero_shot(own_ctx.spec), progress)
    t = int(transfer)
    return OracleResult(
        spec=spec,
        transfer=t,
        task=src.tasks[t].task,
        dense=src.tasks[t].dense,
        with_source=src.tasks[t].zero_shot,
        with_own=own.tasks[own_ctx.spec.source].zero_shot,
        jaccard=masks.jaccard(E.get_masks(ctx), E.get_masks(own_ctx)),
        cross_domain=src.tasks[t].role == "cross-domain",
    )


# --------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------


def alignment_run(
    spec: ExperimentSpec,
    transfer: int,
    *,
    k: int = al.DEFAULT_K,
    fisher: bool = True,
    factors: bool = True,
    mask: bool = True,
    progress: StageProgress | None = None,
) -> al.Alignment:
    """Alignment of the source and task ``transfer`` around θ₀ (:mod:`pai_core.alignment`).

    Args:
        spec: The source experiment; its score and sparsity define the two masks compared.
        transfer: Index of the transfer task among the run's tasks (may equal the source:
            everything is then 1; may be a cross-domain task of ``spec.transfer_suite``).
        k: Eigenvectors compared per K-FAC factor.
        fisher, factors, mask: Which of the three measurements to make (each costs a data
            pass per task on a cold cache: ``diag`` scores, K-FAC factors, the score).
        progress: ``progress(stage, done, total, message)``.

    Returns:
        The :class:`pai_core.alignment.Alignment`.
    """
    ctx = E.prepare(spec, progress)
    return _align(ctx, task_context(ctx, transfer), k=k, fisher=fisher, factors=factors, mask=mask)


def _align(
    src: E.Context,
    dst: E.Context,
    *,
    k: int,
    fisher: bool = True,
    factors: bool = True,
    mask: bool = True,
    memo: dict | None = None,
) -> al.Alignment:
    """Alignment of the source tasks of two contexts; ``memo`` keeps each task's eigenvectors."""
    memo = {} if memo is None else memo

    def subspaces(c: E.Context) -> dict[str, al.Subspaces]:
        key = (c.suite.name, c.spec.data_root, c.spec.source, k)
        if key not in memo:
            memo[key] = al.factor_subspaces(get_factors(c, c.stage("factors")), k)
        return memo[key]

    f_pair = s_pair = m_pair = None
    if fisher:
        f_pair = (get_fisher(src, src.stage("fisher")), get_fisher(dst, dst.stage("fisher")))
    if factors:
        s_pair = (subspaces(src), subspaces(dst))
    if mask:
        m_pair = (E.get_masks(src), E.get_masks(dst))
    res = al.compare(
        src.suite.tasks[src.spec.source].name,
        dst.suite.tasks[dst.spec.source].name,
        fisher=f_pair,
        subspaces=s_pair,
        masks=m_pair,
        k=k,
    )
    if mask and src.spec.score in ("magnitude", "random"):
        res.notes.append(
            f"{src.spec.score} is data-free: both masks are the same by construction (Jaccard 1)"
        )
    return res


@dataclass
class PairAlignment:
    """One source → transfer pair: how much transfers, what not seeing the task costs, how aligned.

    Accuracies are fractions; alignment numbers are :meth:`pai_core.alignment.Alignment.summary`'s
    (1 = identical; ``*_chance`` what two random subspaces give).

    Attributes:
        model, suite, score, sparsity: The setting.
        source, transfer: Indices among the run's tasks; ``source_task``, ``transfer_task`` names.
        domain: ``"cross-domain"`` when the two tasks' images come from different data sets
            (:attr:`pai_core.tasks.Task.domain`: a task of another suite, or the digits suite's
            Fashion-MNIST tasks against its digits), else ``"in-domain"``.
        dense, zero_shot: The transfer task's dense accuracy and its zero-shot accuracy with the
            source's mask; ``retention = zero_shot / dense``.
        with_own: Its zero-shot accuracy with its own mask (oracle); ``price = with_own − zero_shot``.
        fisher_pearson … mask_jaccard: The alignment.
        notes: What was left out and why.
    """

    model: str
    suite: str
    score: str
    sparsity: float
    source: int
    source_task: str
    transfer: int
    transfer_task: str
    domain: str
    dense: float
    zero_shot: float
    with_own: float
    fisher_pearson: float = math.nan
    fisher_spearman: float = math.nan
    a_overlap: float = math.nan
    a_chance: float = math.nan
    b_overlap: float = math.nan
    b_chance: float = math.nan
    mask_jaccard: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def retention(self) -> float:
        """Zero-shot / dense accuracy of the transfer task (NaN when the dense accuracy is 0)."""
        return self.zero_shot / self.dense if self.dense > 0 else math.nan

    @property
    def price(self) -> float:
        """``with_own − zero_shot``: accuracy lost by pruning without seeing the task."""
        return self.with_own - self.zero_shot

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "retention": self.retention, "price": self.price}

    @classmethod
    def from_dict(cls, d: Mapping) -> PairAlignment:
        return cls(**{k: v for k, v in d.items() if k not in ("retention", "price")})


#: The alignment columns of a :class:`PairAlignment`, with how they read (for tables and figures).
ALIGNMENT_MEASURES = {
    "fisher_pearson": "diagonal Fisher, Pearson r",
    "fisher_spearman": "diagonal Fisher, Spearman ρ",
    "a_overlap": "K-FAC A eigenspace overlap",
    "b_overlap": "K-FAC B eigenspace overlap",
    "mask_jaccard": "mask Jaccard (source vs own)",
}


def alignment_table(
    spec: ExperimentSpec,
    *,
    sources: list[int] | None = None,
    k: int = al.DEFAULT_K,
    progress: StageProgress | None = None,
) -> list[PairAlignment]:
    """Every source → transfer pair of the run's tasks, for one score and sparsity.

    Sources are tasks of ``spec.suite`` (all by default); transfers every other task of the run,
    cross-domain ones (``spec.transfer_suite``) included.  Each pair costs, on a cold cache, per
    task once: the ``diag`` scores, the K-FAC factors, the score and a zero-shot run; each row is
    cached, so a repeated table (or one more sparsity) is quick.

    Args:
        spec: The setting (its ``source``, ``finetune`` and ``repair`` are ignored).
        sources: Source indices; None: every task of ``spec.suite``.
        k: Eigenvectors compared per K-FAC factor.
        progress: ``progress(stage, done, total, message)``; stage ``"pairs"`` counts pairs.

    Returns:
        One :class:`PairAlignment` per ordered pair, by source then transfer.
    """
    progress = progress or _quiet
    base = _zero_shot(spec).replace(source=0)
    ctx0 = E.prepare(base, progress)
    n = len(ctx0.suite.tasks)
    names = run_task_names(ctx0)
    srcs = list(range(n)) if sources is None else [int(s) for s in sources]
    for s in srcs:
        if not 0 <= s < n:
            raise ValueError(f"source {s} out of range: suite {spec.suite!r} has {n} tasks")
    pairs = [(s, t) for s in srcs for t in range(len(names)) if t != s]
    rows: list[PairAlignment] = []
    memo: dict = {}
    for i, (s, t) in enumerate(pairs):
        progress("pairs", i, len(pairs), f"{names[s]} → {names[t]}")
        sspec = base.replace(source=s)
        key = {"spec": sspec.key(), "transfer": t, "k": int(k), "v": STAGE_VERSION}

        def build(sspec: ExperimentSpec = sspec, t: int = t) -> dict:
            ctx = E.prepare(sspec, progress)
            dst = task_context(ctx, t)
            res = _align(ctx, dst, k=k, memo=memo)
            orc = oracle_run(sspec, t, progress)
            row = PairAlignment(
                model=sspec.model,
                suite=sspec.suite,
                score=sspec.score,
                sparsity=sspec.sparsity,
                source=sspec.source,
                source_task=names[sspec.source],
                transfer=t,
                transfer_task=names[t],
                domain="cross-domain" if _domain(ctx) != _domain(dst) else "in-domain",
                dense=orc.dense,
                zero_shot=orc.with_source,
                with_own=orc.with_own,
                notes=list(res.notes),
                **res.summary(),
            )
            return row.to_dict()

        rows.append(PairAlignment.from_dict(cache.cached_json("alignment", key, build)))
    progress("pairs", len(pairs), len(pairs), f"{len(pairs)} pair(s)")
    return rows


# --------------------------------------------------------------------------------------
# Tables: does alignment predict transfer?
# --------------------------------------------------------------------------------------


def alignment_frame(rows: list[PairAlignment]) -> pd.DataFrame:
    """One row per pair: the :class:`PairAlignment` fields plus ``retention`` and ``price`` (fractions).

    Example:
        >>> alignment_frame([]).columns[:4].tolist()
        ['model', 'suite', 'score', 'sparsity']
    """
    cols = [f.name for f in dataclasses.fields(PairAlignment) if f.name != "notes"] + ["retention", "price"]
    recs = [{k: v for k, v in r.to_dict().items() if k != "notes"} for r in rows]
    return pd.DataFrame.from_records(recs, columns=cols)


def alignment_correlations(frame: pd.DataFrame, target: str = "retention") -> pd.DataFrame:
    """Spearman correlation across pairs between ``target`` and each alignment measure.

    One row per (model, suite, score, sparsity) and measure: ``rho`` (NaN with fewer than 3 pairs
    or a constant column), ``n`` pairs.  Positive ``rho`` for ``retention``: more aligned pairs
    keep more of their accuracy, as P1 implies.

    Example:
        >>> f = pd.DataFrame({"model": "m", "suite": "s", "score": "diag", "sparsity": 0.3,
        ...                   "retention": [0.2, 0.5, 0.9], "a_overlap": [0.1, 0.4, 0.8]})
        >>> alignment_correlations(f).loc[lambda d: d.measure == "a_overlap", "rho"].item()
        1.0
    """
    out = []
    for (model, suite, score, q), g in frame.groupby(["model", "suite", "score", "sparsity"], sort=True):
        for m in ALIGNMENT_MEASURES:
            if m not in g:
                continue
            d = g[[target, m]].astype(float).dropna()
            rho = math.nan
            if len(d) >= 3 and d[target].nunique() > 1 and d[m].nunique() > 1:
                rho = float(stats.spearmanr(d[target], d[m]).statistic)
            out.append(
                {
                    "model": model,
                    "suite": suite,
                    "score": score,
                    "sparsity": q,
                    "measure": m,
                    "rho": rho,
                    "n": len(d),
                }
            )
    return pd.DataFrame(out, columns=["model", "suite", "score", "sparsity", "measure", "rho", "n"])
