"""On-disk cache shared by every stage of the pipeline.

Every expensive artefact (features, ridge heads, scores, masks, fine-tuned
weights, results, landscapes) is stored under ``cache_dir()`` in a file named by
a hash of the *spec* that determines it.  A spec is any JSON-serialisable value
(frozen dataclasses are converted with :func:`dataclasses.asdict`); the key is
the SHA-256 of its sorted JSON plus :data:`FORMAT_VERSION`, so bumping the
version invalidates every entry at once.

Writes go to a temporary file in the same folder and are renamed into place,
so a crash never leaves half a file that a later run trusts.  Tensor files are
safetensors with a SHA-256 of the payload in their metadata: a truncated or
corrupt file fails verification, is deleted and recomputed.  Every entry also
records the key it was written under (its file name), and the reader checks it:
a valid file copied or renamed to another spec's name is recomputed, never
served as that spec's result.  Two processes that
compute the same key at once each write their own temporary file; the rename
is atomic, so readers see one complete file either way.  :func:`cached_tensors`
also takes an advisory ``fcntl`` lock so the second process usually waits and
reuses the first one's result instead of computing it again.

A cache folder that cannot be used (``$PAI_CACHE_DIR`` names a file, the folder is
read-only, the disk is full) raises :class:`~pai_core.errors.CacheError` naming
the file and what to do; a half-written entry is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

if TYPE_CHECKING:  # torch is imported where tensors are read or written: the store needs none
    import torch

from .errors import CacheError, StorageError, storage_error

__all__ = [
    "FORMAT_VERSION",
    "CacheCorrupt",
    "CacheError",
    "cache_dir",
    "spec_key",
    "atomic_write_bytes",
    "save_tensors",
    "load_tensors",
    "save_json",
    "load_json",
    "cached_tensors",
    "cached_json",
    "locked",
    "usage",
    "clear",
]

log = logging.getLogger(__name__)

#: Bump when the meaning or layout of any cached artefact changes.
FORMAT_VERSION = 2


class CacheCorrupt(RuntimeError):
    """A cache file exists but fails verification (truncated, edited, wrong format)."""


_HINT = "point $PAI_CACHE_DIR at a writable folder with free space"


def cache_dir() -> Path:
    """Root of the on-disk cache: ``$PAI_CACHE_DIR`` or ``./cache`` next to the repo.

    Raises:
        CacheError: The folder cannot be created (a file stands there, no permission, read-only).
    """
    root = os.environ.get("PAI_CACHE_DIR")
    path = Path(root).expanduser() if root else Path(__file__).resolve().parent.parent / "cache"
    what = "the cache folder ($PAI_CACHE_DIR)" if root else "the cache folder"
    if path.exists() and not path.is_dir():
        raise CacheError(
            f"cannot use {what} {path}: it is a file, not a folder",
            path=path,
            reason="not-a-folder",
            hint=_HINT,
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, what, path, cls=CacheError, hint=_HINT) from None
    return path


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    raise TypeError(f"cannot put {type(value).__name__} in a cache key: {value!r}")


def spec_key(kind: str, spec: Any) -> str:
    """Stable hash of a spec.

    Args:
        kind: Artefact family ("features", "scores", ...); part of the key so two
            kinds never collide.
        spec: JSON-able value, dataclass or dict describing everything that
            determines the artefact.

    Returns:
        ``"<kind>-<24 hex chars>"``.

    Example:
        >>> spec_key("scores", {"b": 1, "a": 2}) == spec_key("scores", {"a": 2, "b": 1})
        True
    """
    payload = json.dumps(
        {"kind": kind, "format": FORMAT_VERSION, "spec": _jsonable(spec)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"


def atomic_write_bytes(path: Path, data: bytes, *, what: str = "cache file") -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename.

    Raises:
        StorageError: (:class:`CacheError` for cache files) the folder is read-only, the disk is
            full…; the temporary file is removed and ``path`` keeps its old content.
    """
    cls = CacheError if what.startswith("cache") else StorageError
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise storage_error(exc, what, path, cls=cls) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise storage_error(exc, what, path, cls=cls) from None
        raise


def _payload(blob: bytes) -> bytes:
    """The tensor bytes of a safetensors blob (everything after its JSON header)."""
    header_len = int.from_bytes(blob[:8], "little")
    return blob[8 + header_len :]


def _key_of(path: Path) -> str:
    """The key an entry is stored under: its file name without the extension."""
    return Path(path).name.split(".", 1)[0]


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    """Save a dict of tensors as safetensors with a payload checksum and the entry's key in the header."""
    from safetensors.torch import save as st_save

    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    digest = hashlib.sha256(_payload(st_save(flat))).hexdigest()
    metadata = {
        "sha256": digest,
        "format": str(FORMAT_VERSION),
        "key": _key_of(path),
        "meta": json.dumps(_jsonable(meta or {})),
    }
    atomic_write_bytes(path, st_save(flat, metadata=metadata))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify a file written by :func:`save_tensors`.

    Raises:
        FileNotFoundError: No such file.
        CacheCorrupt: The file is truncated, not safetensors, its checksum fails, or it was
            written under another key (copied or renamed from another entry).
    """
    from safetensors.torch import load as st_load

    data = Path(path).read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise CacheCorrupt(f"{path}: unreadable cache file ({exc})") from exc
    metadata = header.get("__metadata__") or {}
    if "sha256" not in metadata:
        raise CacheCorrupt(f"{path}: no checksum in header")
    if hashlib.sha256(_payload(data)).hexdigest() != metadata["sha256"]:
        raise CacheCorrupt(f"{path}: checksum mismatch")
    _check_key(path, metadata.get("key"))
    return tensors, json.loads(metadata.get("meta", "{}"))


def _check_key(path: Path, key: Any) -> None:
    if key is None:
        raise CacheCorrupt(f"{path}: no key recorded (written by an older version): recomputed once")
    if key != _key_of(path):
        raise CacheCorrupt(f"{path}: written for key {key!r}, not for {_key_of(path)!r} (copied or renamed)")


def save_json(path: Path, value: Any) -> None:
    """Atomically write ``value`` as JSON with an embedded checksum and the entry's key."""
    body = json.dumps(_jsonable(value), sort_keys=True)
    wrapper = {"sha256": hashlib.sha256(body.encode()).hexdigest(), "key": _key_of(path), "body": body}
    atomic_write_bytes(path, json.dumps(wrapper).encode())


def load_json(path: Path) -> Any:
    """Load and verify a file written by :func:`save_json` (checksum, and the key it was written under)."""
    try:
        wrapper = json.loads(Path(path).read_bytes())
        body = wrapper["body"]
        ok = hashlib.sha256(body.encode()).hexdigest() == wrapper["sha256"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheCorrupt(f"{path}: unreadable cache file ({exc})") from exc
    if not ok:
        raise CacheCorrupt(f"{path}: checksum mismatch")
    _check_key(path, wrapper.get("key"))
    return json.loads(body)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Advisory inter-process lock next to ``path`` (so identical work is done once).

    Raises:
        CacheError: The lock file cannot be created (read-only or full cache folder).
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(lock_path, "a+b")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise storage_error(
            exc, "the cache folder (lock file)", lock_path, cls=CacheError, hint=_HINT
        ) from None
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cached(
    path: Path,
    load: Callable[[Path], Any],
    save: Callable[[Path, Any], None],
    compute: Callable[[], Any],
    enabled: bool,
) -> Any:
    if not enabled:
        return compute()

    def try_load() -> Any:
        try:
            return load(path)
        except FileNotFoundError:
            return None
        except CacheCorrupt as exc:
            log.warning("discarding corrupt cache entry: %s", exc)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None

    hit = try_load()
    if hit is not None:
        return hit
    with locked(path):
        hit = try_load()  # another process may have finished while we waited
        if hit is not None:
            return hit
        value = compute()
        save(path, value)
        return value


def cached_tensors(
    kind: str, spec: Any, compute: Callable[[], dict[str, torch.Tensor]], *, enabled: bool = True
) -> dict[str, torch.Tensor]:
    """Return the tensors for ``spec`` from the cache, computing and storing them on a miss."""
    path = cache_dir() / kind / f"{spec_key(kind, spec)}.safetensors"
    return _cached(
        path,
        lambda p: load_tensors(p)[0],
        lambda p, v: save_tensors(p, v, meta={"spec": spec}),
        compute,
        enabled,
    )


def cached_json(kind: str, spec: Any, compute: Callable[[], Any], *, enabled: bool = True) -> Any:
    """Return the JSON value for ``spec`` from the cache, computing and storing it on a miss."""
    path = cache_dir() / kind / f"{spec_key(kind, spec)}.json"
    return _cached(path, load_json, save_json, compute, enabled)


def usage() -> dict[str, dict[str, int]]:
    """Number of entries and bytes per artefact kind, for the dashboard's overview."""
    out: dict[str, dict[str, int]] = {}
    root = cache_dir()
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [f for f in sub.rglob("*") if f.is_file() and not f.name.endswith((".lock", ".tmp"))]
        out[sub.name] = {"entries": len(files), "bytes": sum(f.stat().st_size for f in files)}
    return out


def clear(kind: str | None = None) -> int:
    """Delete cached entries (of one kind, or all). Returns the number of files removed."""
    root = cache_dir()
    targets = [root / kind] if kind else [p for p in root.iterdir() if p.is_dir()]
    n = 0
    for sub in targets:
        for f in sub.rglob("*"):
            if f.is_file():
                f.unlink()
                n += 1
    return n
