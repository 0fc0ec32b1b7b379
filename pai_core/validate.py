"""Checks of values that users type (CLI flags, sweep files, specs), with messages that show an example.

Nothing here reinterprets a value silently: a sparsity is a fraction in [0, 1) or a percentage
written with ``%``; ``1.5`` is refused rather than read as 1.5 %.  Torch-free.

Example:
    >>> parse_sparsity("0.5904"), parse_sparsity("59.04%"), parse_sparsity(0.36)
    (0.5904, 0.5904, 0.36)
    >>> parse_sparsity(59.04)
    Traceback (most recent call last):
    ...
    ValueError: sparsity 59.04 is not a fraction in [0, 1): write 0.5904 or 59.04% for 59.04 % of the weights removed
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "parse_sparsity",
    "check_device",
    "DEVICES",
    "arg_int_at_least",
    "arg_positive_float",
    "arg_device",
    "arg_sparsity",
]

#: Device names a user may ask for (``cuda:N`` too).
DEVICES = ("auto", "cpu", "cuda")

_EXAMPLE = "write 0.5904 or 59.04% for 59.04 % of the weights removed"


def parse_sparsity(value: Any) -> float:
    """A sparsity as a fraction: ``0.5904`` or ``"0.5904"`` as is, ``"59.04%"`` divided by 100.

    Args:
        value: A number in [0, 1), or a string holding one, or a string ending in ``%``.

    Returns:
        The fraction of weights removed, in [0, 1).

    Raises:
        ValueError: Anything else (``1.5``, ``59``, ``"paper"``, ``-0.1``, ``"100%"``), with an example.
    """
    if isinstance(value, bool):
        raise ValueError(f"sparsity {value!r} is not a number: {_EXAMPLE}")
    text = str(value).strip() if isinstance(value, str) else None
    try:
        if text is not None and text.endswith("%"):
            pct = float(text[:-1])
            if not (math.isfinite(pct) and 0 <= pct < 100):
                raise ValueError(f"sparsity {value!r} is not a percentage in [0, 100): {_EXAMPLE}")
            return round(pct / 100, 10)
        q = float(text if text is not None else value)
    except (TypeError, ValueError) as exc:
        if "sparsity" in str(exc):
            raise
        raise ValueError(f"sparsity {value!r} is not a number: {_EXAMPLE}") from exc
    if not (math.isfinite(q) and 0 <= q < 1):
        raise ValueError(f"sparsity {value!r} is not a fraction in [0, 1): {_EXAMPLE}")
    return q


_CUDA_N = re.compile(r"cuda:\d+")


def check_device(value: Any) -> str:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (returned stripped); anything else is refused."""
    text = "auto" if value is None else str(value).strip()
    if text in ("", "auto"):
        return "auto"
    if text in DEVICES or _CUDA_N.fullmatch(text):
        return text
    raise ValueError(f"unknown device {value!r}; valid: auto (GPU when present), cpu, cuda, cuda:N")


# ----------------------------------------------------------------------------- argparse types
# argparse turns the ValueError of a type function into "invalid … value"; these raise
# ArgumentTypeError so that the one line argparse prints says what is allowed.


def arg_int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse ``type=`` for whole numbers ≥ ``low`` (``what`` names the flag in the message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{what} must be at least {low}, got {value}")
        return value

    return parse


def arg_positive_float(text: str) -> float:
    """An argparse ``type=`` for finite numbers > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def arg_device(text: str) -> str:
    """An argparse ``type=`` for :func:`check_device` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    try:
        return check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def arg_sparsity(text: str) -> float:
    """An argparse ``type=`` for one sparsity (:func:`parse_sparsity`: ``0.5904`` or ``59.04%``)."""
    try:
        return parse_sparsity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
