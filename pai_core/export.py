"""Static files of every figure (PNG, SVG) without a browser window, plus the interactive HTML.

Plotly draws in a browser; a static image needs one too.  ``kaleido`` (pinned in requirements.txt,
with plotly 7.1) drives a headless Chromium through the DevTools protocol and returns the bytes.
It does not bundle a browser: it finds an installed Chromium or Chrome (here Debian's
``/usr/bin/chromium``, installed by ``scripts/system-deps.sh``; ``$BROWSER_PATH`` names another one).
Nothing is downloaded: plotly.js comes from the plotly package.  Each image starts the browser
once (about 3 s on 2 CPU cores).  Without a browser, :func:`renderer_status` says so and the HTML
(which opens offline and has a camera button for PNG) is the closest thing.

Example:
    >>> import plotly.graph_objects as go
    >>> ok, why = renderer_status()
    >>> data = figure_image(go.Figure(go.Bar(y=[1, 2])), "svg") if ok else b"<svg"
    >>> data[:4]
    b'<svg'
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "MIME", "renderer_status", "figure_image", "write_figure", "ExportUnavailable"]

#: Static formats offered next to the HTML.
FORMATS = ("png", "svg")

#: MIME types of the formats (and of the HTML).
MIME = {"png": "image/png", "svg": "image/svg+xml", "html": "text/html"}

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class ExportUnavailable(RuntimeError):
    """No static renderer here: kaleido is missing or finds no Chromium (the message says which)."""


@functools.lru_cache(maxsize=1)
def renderer_status() -> tuple[bool, str]:
    """Whether PNG/SVG export works here, and what it uses or what is missing (checked once per process)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False, "kaleido is not installed (pip install kaleido==1.5.0)"
    path = os.environ.get("BROWSER_PATH") or next(filter(None, map(shutil.which, _BROWSERS)), None)
    if path is None:
        return False, (
            "kaleido needs a Chromium or Chrome and none is installed: apt-get install chromium "
            "(scripts/system-deps.sh), or set BROWSER_PATH"
        )
    return True, f"kaleido with {path}"


def figure_image(
    fig: Any, fmt: str = "png", *, scale: float = 2.0, width: int | None = None, height: int | None = None
) -> bytes:
    """The figure as PNG or SVG bytes.

    Args:
        fig: A plotly figure.
        fmt: ``"png"`` or ``"svg"``.
        scale: Pixel density of a PNG (2 = sharp on slides and high-DPI screens).
        width, height: Pixel size; default the figure's own height and 1,100 px wide (a figure
            without a width would otherwise get kaleido's 700 px).

    Raises:
        ValueError: Unknown format.
        ExportUnavailable: No renderer here (see :func:`renderer_status`), or it failed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; valid: {', '.join(FORMATS)}")
    ok, why = renderer_status()
    if not ok:
        raise ExportUnavailable(f"cannot write {fmt.upper()}: {why}. The HTML file has the same figure.")
    width = width or fig.layout.width or 1100
    height = height or fig.layout.height or 500
    try:
        return fig.to_image(format=fmt, width=width, height=height, scale=scale if fmt == "png" else 1)
    except Exception as exc:  # the browser crashed or refused: one message, not a DevTools traceback
        raise ExportUnavailable(f"the {fmt.upper()} renderer failed ({type(exc).__name__}: {exc})") from exc


def write_figure(
    fig: Any, stem: str | os.PathLike, formats: Sequence[str] = ("html", *FORMATS)
) -> dict[str, Path]:
    """Write ``<stem>.html`` (self-contained, opens offline) and ``<stem>.png`` / ``.svg``.

    A format that cannot be written here (no renderer) is skipped; the HTML always is.

    Returns:
        ``{format: path}`` of the files written.

    Raises:
        pai_core.errors.StorageError: The folder cannot be written (read-only, disk full…).
    """
    from .cache import atomic_write_bytes
    from .figures import figure_html

    stem = Path(stem)
    out: dict[str, Path] = {}
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "html":
            data = figure_html(fig).encode()
        else:
            try:
                data = figure_image(fig, fmt)
            except ExportUnavailable:
                continue
        atomic_write_bytes(path, data, what=f"output file {path.name}")
        out[fmt] = path
    return out
