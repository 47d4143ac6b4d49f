"""Caffe's VGG_ILSVRC_19_layers.caffemodel: protobuf read field by field, without protobuf.

Payloads are located, not read, so a 400 MB fc6 blob costs a seek; only the convolution
blobs are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from stylerun.errors import WeightsError
from stylerun.weights.vgg19 import CAFFE, CONV_NAME, Convs, VGG19Weights, bias_vector, finish, oihw

# caffe.proto field numbers. NetParameter: name 1, layers 2 (V1LayerParameter), input 3,
# input_dim 4, force_backward 5, state 6, debug_info 7, input_shape 8, layer 100.
_NET_FIELDS = {1: 2, 2: 2, 3: 2, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 100: 2}  # field -> wire type
#: (name field, blobs field) of LayerParameter (layer, 100), V1LayerParameter (layers, 2)
#: and the V0LayerParameter that very old V1 layers nest as their field 1.
_LAYER_FIELDS = {100: (1, 7), 2: (4, 6), "v0": (1, 50)}


class _Overflow(Exception):
    """A length or value runs past the end of its message: the file is truncated or corrupt.

    ``args``, when present, are (field number, payload start) of a length-delimited field
    whose declared length overruns, so that a truncated layer can still be named.
    """


def _varint(f: BinaryIO, end: int) -> int:
    result = shift = 0
    while True:
        if f.tell() >= end or shift > 63:
            raise _Overflow
        byte = f.read(1)
        if not byte:
            raise _Overflow
        result |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 0x80:
            return result


def _fields(f: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Protobuf wire fields in ``[start, end)``: (number, wire type, value or payload start, payload end).

    Payloads are not read, only located and checked to fit in the enclosing message, so
    a 400 MB fc6 blob costs a seek.
    """
    pos = start
    while pos < end:
        f.seek(pos)
        tag = _varint(f, end)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _Overflow
        if wire == 0:
            value = _varint(f, end)
            pos = f.tell()
            yield number, wire, value, pos
            continue
        if wire == 2:
            length = _varint(f, end)
            begin = f.tell()
        elif wire in (1, 5):
            length, begin = (8 if wire == 1 else 4), f.tell()
        else:  # groups (3, 4) are not in caffe.proto
            raise _Overflow
        if begin + length > end:
            raise _Overflow(number, begin)
        pos = begin + length
        yield number, wire, begin, pos


def looks_like_caffe(path: Path) -> bool:
    """True when the file opens with NetParameter fields and reaches a layer with a name.

    Protobuf has no magic number; requiring known field numbers with their wire types and
    then a named layer makes random bytes fail quickly, while a truncated file still passes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            pos, seen = 0, 0
            while pos < size and seen < 64:
                f.seek(pos)
                tag = _varint(f, size)
                number, wire = tag >> 3, tag & 7
                if _NET_FIELDS.get(number) != wire and not (number == 4 and wire == 2):
                    return False
                if number in (2, 100):
                    length = _varint(f, size)
                    return bool(_peek_name(f, number, f.tell(), min(size, f.tell() + length)))
                if wire == 0:
                    _varint(f, size)
                    pos = f.tell()
                else:
                    length = _varint(f, size)
                    pos = f.tell() + length
                seen += 1
        except _Overflow:
            return False
    return False


def load_caffe(path: Path) -> VGG19Weights:
    """VGG_ILSVRC_19_layers.caffemodel: conv blobs are already OIHW and expect BGR minus the mean.

    Both the current ``layer`` (LayerParameter) and the legacy ``layers``
    (V1LayerParameter, which the released VGG files use) are read.
    """
    source = str(path)
    size = path.stat().st_size
    convs: Convs = {}
    with open(path, "rb") as f:
        top = _fields(f, 0, size)
        while True:
            try:
                field = next(top, None)
            except _Overflow as exc:
                name = _peek_name(f, exc.args[0], exc.args[1], size) if exc.args and exc.args[0] in (2, 100) else ""
                where = f" inside layer '{name}'" if name else ""
                raise WeightsError(f"{source}: the file is truncated or corrupt{where}") from None
            if field is None:
                break
            number, wire, begin, end = field
            if number not in (2, 100) or wire != 2:
                continue
            name, blobs = _caffe_layer(f, number, begin, end, source)
            if not CONV_NAME.fullmatch(name):
                continue
            if len(blobs) != 2:
                raise WeightsError(f"{source}: layer '{name}' holds {len(blobs)} blobs, expected kernel and bias")
            kernel, bias = (_caffe_blob(f, blob, name, source) for blob in blobs)
            convs[name] = (oihw(kernel, name, source), bias_vector(bias, name, source))
    return finish(path, convs, CAFFE, "Caffe .caffemodel")


def _peek_name(f: BinaryIO, number: int | str, begin: int, end: int) -> str:
    """The name of a layer whose record may be cut short; "" when none can be read.

    Names precede blobs in caffe's serialisation, so a truncated layer still shows it.
    """
    name_field = _LAYER_FIELDS[number][0]
    try:
        for field, wire, start, stop in _fields(f, begin, end):
            if field == name_field and wire == 2 and stop - start <= 256:
                f.seek(start)
                text = f.read(stop - start).decode("utf-8", "replace")
                return text if text.isprintable() else ""
            if number == 2 and field == 1 and wire == 2:
                return _peek_name(f, "v0", start, stop)
    except _Overflow as exc:
        if number == 2 and exc.args and exc.args[0] == 1:
            return _peek_name(f, "v0", exc.args[1], end)
    return ""


def _caffe_layer(
    f: BinaryIO, number: int | str, begin: int, end: int, source: str
) -> tuple[str, list[tuple[int, int]]]:
    """(name, blob payload spans) of one layer message; blobs are located, not read."""
    name_field, blobs_field = _LAYER_FIELDS[number]
    name, blobs = "", []
    try:
        for field, wire, start, stop in _fields(f, begin, end):
            if wire != 2:
                continue
            if field == name_field:
                f.seek(start)
                name = f.read(stop - start).decode("utf-8", "replace")
            elif field == blobs_field:
                blobs.append((start, stop))
            elif number == 2 and field == 1:  # V1 layer wrapping a V0 layer
                name, blobs = _caffe_layer(f, "v0", start, stop, source)
    except _Overflow:
        # The layer's record fits in the file but its fields do not fit in the record.
        raise WeightsError(f"{source}: layer '{name or '?'}' is corrupt") from None
    return name, blobs


def _caffe_blob(f: BinaryIO, span: tuple[int, int], layer: str, source: str) -> np.ndarray:
    """A BlobProto: shape (``shape.dim`` or legacy num/channels/height/width) and packed float data."""
    legacy = {1: 1, 2: 1, 3: 1, 4: 1}
    dims: list[int] | None = None
    data: np.ndarray | None = None
    try:
        for field, wire, start, stop in _fields(f, *span):
            if field in legacy and wire == 0:
                legacy[field] = start
            elif field == 7 and wire == 2:
                dims = []
                for dim_field, dim_wire, a, b in _fields(f, start, stop):
                    if dim_field != 1:
                        continue
                    if dim_wire == 0:
                        dims.append(a)
                    elif dim_wire == 2:  # packed
                        f.seek(a)
                        while f.tell() < b:
                            dims.append(_varint(f, b))
            elif field in (5, 8) and wire == 2:  # data (float) or double_data
                itemsize = 4 if field == 5 else 8
                if (stop - start) % itemsize:
                    raise WeightsError(f"{source}: layer '{layer}' blob data is not a whole number of values")
                f.seek(start)
                data = np.frombuffer(f.read(stop - start), dtype="<f4" if field == 5 else "<f8")
            elif field in (5, 8):
                raise WeightsError(f"{source}: layer '{layer}' stores unpacked blob data, which is not supported")
    except _Overflow:
        raise WeightsError(f"{source}: layer '{layer}' has a truncated or corrupt blob") from None
    shape = tuple(dims) if dims is not None else tuple(legacy[i] for i in (1, 2, 3, 4))
    if data is None:
        raise WeightsError(f"{source}: layer '{layer}' blob has no data")
    if data.size != int(np.prod(shape, dtype=object)):
        raise WeightsError(f"{source}: layer '{layer}' blob holds {data.size} values, its shape {shape} does not")
    return data.astype(np.float32).reshape(shape)
