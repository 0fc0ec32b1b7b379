"""Time of every pruning score on EfficientNet-Lite0, as a ratio to one batched forward+backward.

Model: ``pai_core.models.load_encoder("efficientnet_lite0")`` (real ImageNet weights; timm's
random init if unavailable) followed by a ridge head to 5 classes fitted on the source task
(Eq. (7), α = 1).  Source task: the first ``--n`` images of the ``digits`` suite's first task
at 112x112 px (random-normal images if the suite is unavailable).  The unit is one batched
forward+backward pass (MSE loss, parameter gradients) over the same images and batch size,
measured in the same process, interleaved with the scores; every number is the minimum
over ``--repeats`` runs, which filters out time stolen by other processes.  A naive
per-example loop for ``diag`` (one backward per image) is timed too.

    python bench/bench_scores.py [--n 500] [--batch-size 50] [--threads 1] [--scores diag,kfac]

Targets: diag and kfac <= 3x, hutchinson (10 probes) <= 50x.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from pai_core import scores  # noqa: E402

TARGETS = {"diag": 3.0, "kfac": 3.0, "hutchinson": 50.0}


def load_model() -> tuple[nn.Module, str]:
    try:
        from pai_core import models

        enc = models.load_encoder("efficientnet_lite0")
        return enc.model, f"efficientnet_lite0 ({enc.weights_id})"
    except Exception as exc:  # noqa: BLE001 - any failure means: fall back to random init
        import timm

        print(f"(real weights unavailable: {exc}; using timm random init)", file=sys.stderr)
        return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0), "random init"


def load_data(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from pai_core import features, models, tasks

        suite = tasks.load_suite("digits")
        enc = models.load_encoder("efficientnet_lite0")
        x, y = features.task_inputs(suite.tasks[0], enc, size)
        if len(x) >= n:
            return x[:n], y[:n], f"digits '{suite.tasks[0].name}'"
        print(f"(digits task has only {len(x)} images; using random data)", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001
        print(f"(digits unavailable: {exc}; using random data)", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 5, (n,), generator=g), "random-normal"


def ridge_head(encoder: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int) -> nn.Linear:
    """ξ = (ΦᵀΦ + I)⁻¹ΦᵀY (Eq. (7)), as a bias-free Linear."""
    with torch.no_grad():
        phi = torch.cat([encoder(x[i : i + bs]) for i in range(0, len(x), bs)]).double()
        target = nn.functional.one_hot(y, 5).double()
        xi = torch.linalg.solve(phi.T @ phi + torch.eye(phi.shape[1], dtype=phi.dtype), phi.T @ target)
    head = nn.Linear(phi.shape[1], 5, bias=False)
    head.weight.data.copy_(xi.T.float())
    return head


def fwd_bwd(model: nn.Module, batches) -> None:
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        scores.per_example_loss(model(x), y).mean().backward()
    model.zero_grad(set_to_none=True)


def naive_diag(model: nn.Module, batches, names) -> None:
    """The slow way: one backward per example, squared gradients accumulated."""
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    acc = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        for i in range(len(x)):
            gs = torch.autograd.grad(scores.per_example_loss(model(x[i : i + 1]), y[i : i + 1]).sum(), params)
            for a, g in zip(acc, gs):
                a += g * g


CLOCK = time.perf_counter


def timed(fn) -> float:
    t = CLOCK()
    fn()
    return CLOCK() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="source-task images")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--repeats", type=int, default=1, help="runs per score; the minimum is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--scores", default=",".join(scores.available()))
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument(
        "--probe-batch",
        type=int,
        default=0,
        help="hutchinson's probe_batch (0: one probe set for all the data, the README's row; "
        "bench/bench_hutchinson.py measures the per-example scheme)",
    )
    ap.add_argument("--no-naive", action="store_true", help="skip the per-example loop")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this process's CPU time (with --threads 1, immune to other jobs on a shared box)",
    )
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    encoder, weights = load_model()
    x, y, data = load_data(args.n, args.size)
    bs = args.batch_size
    model = nn.Sequential(encoder, ridge_head(encoder.eval(), x, y, bs)).eval()
    for p in model.parameters():  # load_encoder freezes them; the baseline must form every gradient
        p.requires_grad_(True)
    names = [f"0.{n}" for n in scores.default_params(encoder)]
    batches = [(x[i : i + bs], y[i : i + bs]) for i in range(0, len(x), bs)]
    print(
        f"model: {weights} + ridge head (5 classes), {sum(model.get_parameter(n).numel() for n in names):,} "
        f"scored weights; data: {data}, n={len(x)}, {args.size}px, batch {bs}; "
        f"threads {torch.get_num_threads()}; {args.clock} clock, min of {args.repeats} runs\n",
        flush=True,
    )

    fwd_bwd(model, batches[:1])  # warm-up
    base: list[float] = []
    rows = []
    for name in [s for s in args.scores.split(",") if s]:
        opts = {"probes": args.probes, "probe_batch": args.probe_batch} if name == "hutchinson" else {}
        t_score = float("inf")
        for _ in range(args.repeats):
            base.append(timed(lambda: fwd_bwd(model, batches)))  # interleaved: same conditions
            t_score = min(
                t_score, timed(lambda n=name, o=opts: scores.compute(n, model, batches, params=names, **o))
            )
        rows.append((name + (f" ({args.probes} probes)" if name == "hutchinson" else ""), t_score, name))
        print(f"  {rows[-1][0]}: {t_score:.2f}s", file=sys.stderr, flush=True)
    if not args.no_naive:
        base.append(timed(lambda: fwd_bwd(model, batches)))
        rows.append(
            ("diag, naive per-example loop", timed(lambda: naive_diag(model, batches, names)), "naive")
        )
    unit = min(base)

    print(f"one batched forward+backward over the {len(x)} images: {unit:.2f}s\n")
    print("| score | seconds | ratio to fwd+bwd | target |")
    print("|---|---:|---:|---|")
    for label, t, key in rows:
        target = TARGETS.get(key)
        mark = "" if target is None else (f"<= {target:g}x {'ok' if t / unit <= target else 'MISSED'}")
        print(f"| {label} | {t:.2f} | {t / unit:.2f} | {mark} |")


if __name__ == "__main__":
    main()
