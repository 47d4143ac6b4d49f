"""The model cache: exported models kept for the next run, listed, cleared, and kept under a size limit.

`export.cached_export` writes each layer set's two model files here
(``vgg19-<deepest>-<pooling>-<key>.onnx`` and ``.targets.onnx``) and touches them on every
use, so a file's modification time is when it was last used. When the cache grows past
its limit (1 GB, or ``$STYLERUN_CACHE_MAX``) the models used least recently are removed,
never the one being used nor one used in the last ten minutes (another run may be about to
load it). Only files named like stylerun's exports are ever listed or removed: the
folder may be one the user shares with other things.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from stylerun.errors import InputError
from stylerun.units import parse_bytes

CACHE_ENV = "STYLERUN_CACHE"
LIMIT_ENV = "STYLERUN_CACHE_MAX"
DEFAULT_LIMIT = 1_000_000_000
#: A model used this recently is never pruned: another run may be loading it.
IN_USE_S = 600.0
#: A temporary file of an interrupted export (killed mid-write) is a leftover after this long.
LEFTOVER_S = 3600.0

_MODEL = re.compile(r"vgg19-(?P<deepest>[a-z0-9_]+)-(?P<pooling>[a-z]+)-(?P<key>[0-9a-f]{20})\.onnx")
#: `atomic_write`'s temporaries of a model, left by a killed export (a random hex part, or an older pid).
_LEFTOVER = re.compile(r"\.vgg19-[a-z0-9_]+-[a-z]+-[0-9a-f]{20}(\.targets)?\.[0-9a-f]+\.tmp\.onnx")


def cache_dir() -> Path:
    """``$STYLERUN_CACHE``, else ``$XDG_CACHE_HOME/stylerun``, else ``~/.cache/stylerun``."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stylerun"


def cache_limit() -> int:
    """The cache's size limit in bytes: ``$STYLERUN_CACHE_MAX`` (``500M``, ``2G``, bytes), else 1 GB."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT
    try:
        return parse_bytes(text, binary=False)
    except ValueError:
        raise InputError(f"{LIMIT_ENV} must be a size such as 500M or 2G (bytes without a unit), "
                         f"got '{text}'") from None


@dataclass(frozen=True)
class Entry:
    """One cached model: its two files, what its name says, their size and when it was last used."""

    loss: Path
    targets: Path
    deepest: str
    pooling: str
    size: int
    used: float

    @property
    def files(self) -> tuple[Path, Path]:
        return self.loss, self.targets


def model_path(directory: Path, deepest: str, pooling: str, key: str) -> Path:
    return directory / f"vgg19-{deepest}-{pooling}-{key}.onnx"


def entries(directory: Path | None = None) -> list[Entry]:
    """The cached models, most recently used first."""
    directory = cache_dir() if directory is None else directory
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for path in directory.iterdir():
            match = _MODEL.fullmatch(path.name)
            if match is None:
                continue
            targets = path.with_name(path.name.removesuffix(".onnx") + ".targets.onnx")
            sizes = [_stat(p) for p in (path, targets)]
            if sizes[0] is None:
                continue  # removed meanwhile
            size = sum(s.st_size for s in sizes if s is not None)
            found.append(Entry(path, targets, match["deepest"], match["pooling"], size, sizes[0].st_mtime))
    return sorted(found, key=lambda e: e.used, reverse=True)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None


def touch(*paths: Path) -> None:
    """Mark cached files as used now (a read-only cache stays as it is)."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.utime(path)


def remove(entry: Entry) -> None:
    """Remove a cached model: the loss file first, so a loss file never lacks its targets file."""
    for path in entry.files:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InputError(f"cannot remove {path} from the model cache ({exc.strerror or exc})") from None


def leftovers(directory: Path | None = None, now: float | None = None) -> list[Path]:
    """Temporary files of exports killed mid-write, an hour old or more."""
    directory = cache_dir() if directory is None else directory
    now = time.time() if now is None else now
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return [p for p in directory.iterdir() if _LEFTOVER.fullmatch(p.name)
                and (s := _stat(p)) is not None and now - s.st_mtime >= LEFTOVER_S]
    return []


def clear(older_than_s: float | None = None, directory: Path | None = None) -> list[Entry]:
    """Remove every cached model (or those last used more than `older_than_s` ago); return them."""
    now = time.time()
    gone = [e for e in entries(directory) if older_than_s is None or now - e.used > older_than_s]
    for entry in gone:
        remove(entry)
    for path in leftovers(directory, now):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return gone


def prune(limit: int | None = None, keep: Path | None = None, directory: Path | None = None) -> list[Entry]:
    """Remove the least recently used models until the cache is within `limit` bytes; return them.

    `keep` (the model in use) and models used in the last `IN_USE_S` seconds stay, even
    if the cache is then still over the limit.
    """
    limit = cache_limit() if limit is None else limit
    found = entries(directory)
    total = sum(e.size for e in found)
    now, gone = time.time(), []
    for entry in reversed(found):  # least recently used first
        if total <= limit:
            break
        if entry.loss == keep or now - entry.used < IN_USE_S:
            continue
        try:
            remove(entry)
        except InputError:  # a cache this user may not change: leave it as it is
            continue
        total -= entry.size
        gone.append(entry)
    for path in leftovers(directory, now):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return gone
