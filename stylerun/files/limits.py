"""Bounds on the work done for outside bytes: what a file may make stylerun read, allocate or wait for.

Images, masks and weight files come from anywhere, and a few hundred crafted bytes can
claim terabytes (a zip member, an npy header, a torch tensor over a one-element storage)
or never end (a FIFO). Every reader of outside bytes checks against the caps here
*before* it allocates, so a hostile file costs at most these bounds and ends in one
`StylerunError` line:

* only regular files are opened (`check_regular_file`): a FIFO, socket or device would
  block or stream forever;
* one array read from a weights file holds at most `MAX_TENSOR_BYTES` (VGG19's largest
  convolution kernel, 512 x 512 x 3 x 3, at 8 bytes a value), and all arrays read from one
  file at most `MAX_WEIGHTS_BYTES` (every VGG19 convolution at 8 bytes a value, read and copied);
  fully connected layers are never read, except in the formats read whole (a MATLAB
  variable, tensorflow-vgg's pickled dict), which may take `MAX_WHOLE_NET_BYTES` (the
  whole VGG19 net, fc6 included, at 4 bytes a value, plus a quarter);
* zip members are read only when expected, their declared size checked first and their
  inflated bytes counted while streaming (`read_zip_member`), so a lying header gains nothing;
* walks over unpickled objects visit each object once and at most `MAX_PICKLE_NODES` times
  in all (`Walk`), so a pickle that refers to one list again and again stays linear.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from stylerun.errors import StylerunError, WeightsError
from stylerun.vgg import CONV_SHAPES

#: Elements of VGG19's largest convolution kernel (conv4_2 ... conv5_4: 512 x 512 x 3 x 3).
LARGEST_CONV_ELEMENTS = max(math.prod(shape) for shape in CONV_SHAPES.values())
#: Kernels and biases of all 16 convolutions: what a weights file must provide.
CONV_PARAMETERS = sum(math.prod(shape) + shape[0] for shape in CONV_SHAPES.values())
#: Parameters of the whole VGG19, its three fully connected layers included (fc6 is 25088 x 4096).
VGG19_PARAMETERS = CONV_PARAMETERS + 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000
#: The most bytes one array read from a weights file may hold (float64 of the largest kernel).
MAX_TENSOR_BYTES = LARGEST_CONV_ELEMENTS * 8
#: The most bytes all arrays read from one weights file may hold together: every convolution at
#: 8 bytes a value, twice (a torch storage as read, and the tensor copied out of it).
MAX_WEIGHTS_BYTES = 2 * CONV_PARAMETERS * 8
#: The most bytes the formats read whole (MATLAB variables, tensorflow-vgg's pickled dict) may
#: take: their fully connected layers are read too.
MAX_WHOLE_NET_BYTES = VGG19_PARAMETERS * 4 * 5 // 4
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


def check_regular_file(
    path: str | Path, error: type[StylerunError] = WeightsError, what: str = "file"
) -> os.stat_result:
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
    """Bytes a reader may still allocate for one file; `spend` refuses the first byte too many."""

    def __init__(self, limit: int, source: str) -> None:
        self.left = limit
        self.limit = limit
        self.source = source

    def spend(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise WeightsError(
                f"{self.source}: {what} would take the arrays read from this file past {self.limit:,} bytes, "
                "more than VGG19 needs; refusing to read it"
            )
        self.left -= nbytes


class Walk:
    """Counts the objects a walk over unpickled data visits, refusing too many or too deep.

    Walkers also memoize by object identity (`seen`), so a pickle that references one list
    from many places costs one visit per reference, never a re-walk of the whole subtree.
    """

    def __init__(self, source: str, limit: int = MAX_PICKLE_NODES, depth: int = MAX_PICKLE_DEPTH) -> None:
        self.source = source
        self.left = limit
        self.depth = depth
        self.seen: dict[int, object] = {}
        self._keep: list[object] = []  # the originals stay alive, so no id in `seen` is reused

    def visit(self, depth: int) -> None:
        """Count one object at nesting `depth`; WeightsError past the caps."""
        self.left -= 1
        if self.left < 0:
            raise WeightsError(f"{self.source}: the pickle holds more than {MAX_PICKLE_NODES:,} objects; not VGG19")
        if depth > self.depth:
            raise WeightsError(f"{self.source}: the pickle is nested more than {self.depth} levels deep; not VGG19")

    def remember(self, obj: object, result: object) -> object:
        """Record `result` as what `obj` became, before its children are walked (cycles end here)."""
        self._keep.append(obj)
        self.seen[id(obj)] = result
        return result


def read_zip_member(
    zf: zipfile.ZipFile, name: str, size: int, limit: int, label: str, budget: Budget | None = None
) -> bytes:
    """Exactly `size` bytes of member `name`, when the archive says so and `size` is within `limit`.

    The declared size (central directory) is checked before anything is inflated, and the
    member is then read with a cap, so a member whose header lies cannot inflate further.
    `budget`, if given, is charged before reading.
    """
    if size > limit:
        raise WeightsError(f"{label} would hold {size:,} bytes, more than VGG19 needs ({limit:,}); refusing to read it")
    info = zf.getinfo(name)
    if info.file_size != size:
        raise WeightsError(f"{label} holds {info.file_size} bytes, expected {size}")
    if budget is not None:
        budget.spend(size, f"member {name!r}")
    with open_zip_member(zf, info, label) as stream:
        return read_exactly(stream, size, label)


def open_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> BinaryIO:
    """A member's stream, refusing an encrypted one (zipfile would raise a RuntimeError asking for a password)."""
    if info.flag_bits & 0x1:
        raise WeightsError(f"{label} is encrypted; weights never are")
    return zf.open(info)


def read_exactly(stream: BinaryIO, size: int, label: str) -> bytes:
    """`size` bytes and then the end of `stream`: never more than ``size + 1`` bytes are inflated or held."""
    data = stream.read(size + 1)
    if len(data) != size:
        raise WeightsError(f"{label} holds {'more' if len(data) > size else 'fewer'} bytes than its header says")
    return data


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
