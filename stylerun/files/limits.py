"""Bounds on the work done for outside bytes: what a file may make stylerun read, allocate or wait for.

Images, masks, checkpoints and weight files come from anywhere, and a few hundred crafted
bytes can claim terabytes (a zip member, an npy header, a pickled array) or never end (a
FIFO). Every reader of outside bytes checks against a cap *before* it allocates, so a
hostile file costs at most that bound and ends in one `StylerunError` line. The guards
here know nothing of what a file holds; its reader passes the caps, the error type and
the words (`weights.bounds` for VGG19's):

* only regular files are opened (`check_regular_file`): a FIFO, socket or device would
  block or stream forever;
* arrays read from one file are charged to a `Budget` before they are allocated;
* zip members are read only when expected, their declared size checked first and their
  inflated bytes counted while streaming (`read_zip_member`, `read_exactly`), so a lying
  header gains nothing, and an encrypted member is refused in words (`open_zip_member`);
* an npy header is parsed before any of its data is read (`read_npy_header`);
* walks over unpickled objects visit each object once and at most `MAX_PICKLE_NODES` times
  in all (`Walk`, `rebuild`), so a pickle that refers to one list again and again stays linear.
"""

from __future__ import annotations

import os
import stat
import tokenize
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from stylerun.errors import InputError, StylerunError

#: The most bytes of pickle (a torch zip's data.pkl) read into memory; real ones are kilobytes.
MAX_PICKLE_BYTES = 64 << 20
#: The most objects a walk over one unpickled file may visit (a VGG19 state dict has about 100).
MAX_PICKLE_NODES = 1_000_000
#: The deepest nesting a walk over unpickled data follows (state dicts nest 2 or 3 levels).
MAX_PICKLE_DEPTH = 64

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)

Error = type[StylerunError]


def check_regular_file(path: str | Path, error: Error = InputError, what: str = "file") -> os.stat_result:
    """Refuse anything but an existing regular file, in one line naming it.

    Opening a FIFO blocks until a writer comes, and a device can stream forever; `stat`
    (which follows links, as `open` would) tells them apart without opening anything.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
        raise error(f"{path}: is {kind}, not a regular {what}; refusing to read it")
    return st


class Budget:
    """Bytes a reader may still allocate for one file; `spend` refuses the first byte too many.

    `beyond` says, in the reader's words, why the limit is where it is ("more than VGG19 needs").
    """

    def __init__(self, limit: int, source: str, error: Error = InputError, beyond: str = "over the limit") -> None:
        self.left = limit
        self.limit = limit
        self.source = source
        self.error = error
        self.beyond = beyond

    def spend(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise self.error(
                f"{self.source}: {what} would take the arrays read from this file past {self.limit:,} bytes, "
                f"{self.beyond}; refusing to read it"
            )
        self.left -= nbytes


class Walk:
    """Counts the objects a walk over unpickled data visits, refusing too many or too deep.

    Walkers also memoize by object identity (`seen`), so a pickle that references one list
    from many places costs one visit per reference, never a re-walk of the whole subtree.
    `verdict` ends the refusal in the reader's words ("not VGG19").
    """

    def __init__(self, source: str, limit: int = MAX_PICKLE_NODES, depth: int = MAX_PICKLE_DEPTH,
                 error: Error = InputError, verdict: str = "refusing to read it") -> None:
        self.source = source
        self.limit = limit
        self.left = limit
        self.depth = depth
        self.error = error
        self.verdict = verdict
        self.seen: dict[int, object] = {}
        self._keep: list[object] = []  # the originals stay alive, so no id in `seen` is reused

    def visit(self, depth: int) -> None:
        """Count one object at nesting `depth`; `error` past the caps."""
        self.left -= 1
        if self.left < 0:
            raise self.error(f"{self.source}: the pickle holds more than {self.limit:,} objects; {self.verdict}")
        if depth > self.depth:
            raise self.error(f"{self.source}: the pickle is nested more than {self.depth} levels deep; {self.verdict}")

    def remember(self, obj: object, result: object) -> object:
        """Record `result` as what `obj` became, before its children are walked (cycles end here)."""
        self._keep.append(obj)
        self.seen[id(obj)] = result
        return result


def read_zip_member(
    zf: zipfile.ZipFile, name: str, size: int, limit: int, label: str, budget: Budget, kind: str = "file"
) -> bytes:
    """Exactly `size` bytes of member `name`, when the archive says so and `size` is within `limit`.

    The declared size (central directory) is checked before anything is inflated, and the
    member is then read with a cap, so a member whose header lies cannot inflate further.
    `budget` is charged before reading; its error type and words are used for every refusal,
    and `kind` names the archive as `open_zip_member` does.
    """
    if size > limit:
        raise budget.error(f"{label} would hold {size:,} bytes, {budget.beyond} ({limit:,}); refusing to read it")
    info = zf.getinfo(name)
    if info.file_size != size:
        raise budget.error(f"{label} holds {info.file_size} bytes, expected {size}")
    budget.spend(size, f"member {name!r}")
    with open_zip_member(zf, info, label, budget.error, kind) as stream:
        return read_exactly(stream, size, label, budget.error)


def open_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, error: Error = InputError,
                    kind: str = "file") -> BinaryIO:
    """A member's stream, refusing an encrypted one (zipfile would raise a RuntimeError asking for a password).

    `kind` names what the archive is meant to be (``weights file``, ``stylerun checkpoint``): none is ever encrypted.
    """
    if info.flag_bits & 0x1:
        raise error(f"{label} is encrypted; a {kind} never is")
    return zf.open(info)


def read_exactly(stream: BinaryIO, size: int, label: str, error: Error = InputError) -> bytes:
    """`size` bytes and then the end of `stream`: never more than ``size + 1`` bytes are inflated or held."""
    data = stream.read(size + 1)
    if len(data) != size:
        raise error(f"{label} holds {'more' if len(data) > size else 'fewer'} bytes than its header says")
    return data


def read_npy_header(f: BinaryIO, label: str, error: Error = InputError) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from an npy header, read before any of its data.

    numpy parses the header as a Python literal (no pickle, nothing allocated but the
    header itself, at most 10,000 bytes), so a claimed shape can be checked first.
    """
    version = np.lib.format.read_magic(f)
    if version not in ((1, 0), (2, 0)):
        raise error(f"{label}: .npy format version {version} is not supported")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        return read(f)
    except (ValueError, SyntaxError, TypeError, tokenize.TokenError, RecursionError, MemoryError) as exc:
        # numpy tokenizes and literal_evals the header: a mangled one fails in any of these ways.
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise error(f"{label}: malformed .npy header ({detail})") from None


def rebuild(obj: Any, leaf: Callable[[Any, str, int], Any], walk: Walk, path: str = "", depth: int = 0) -> Any:
    """A copy of the dicts, lists and tuples in unpickled `obj`, with `leaf(value, path, depth)` for the rest.

    Every pickle walk goes through here: each object is visited once (a shared subtree is
    rebuilt once and shared again in the result, so a "billion laughs" pickle stays as
    small as its file), cycles end at the memo, and `walk` caps the visits and the depth.
    `path` names the value as ``key.key[index]``, for messages.
    """
    walk.visit(depth)
    if id(obj) in walk.seen:
        return walk.seen[id(obj)]
    if isinstance(obj, dict):
        out: dict = walk.remember(obj, {})  # type: ignore[assignment]
        for key, value in obj.items():
            out[key] = rebuild(value, leaf, walk, f"{path}.{key}" if path else str(key), depth + 1)
        return out
    if isinstance(obj, list):
        items: list = walk.remember(obj, [])  # type: ignore[assignment]
        items.extend(rebuild(value, leaf, walk, f"{path}[{i}]", depth + 1) for i, value in enumerate(obj))
        return items
    if isinstance(obj, tuple):
        return walk.remember(obj, tuple(rebuild(v, leaf, walk, f"{path}[{i}]", depth + 1) for i, v in enumerate(obj)))
    return walk.remember(obj, leaf(obj, path, depth))
